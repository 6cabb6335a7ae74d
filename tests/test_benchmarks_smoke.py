"""The benchmarks still run: ``python -m benchmarks --smoke`` at tiny sizes, in a subprocess.

Nothing here is timed; a benchmark that breaks (an import, an API it uses,
a check it makes, such as the no-change re-run writing nothing) fails it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python(*args: str, timeout: float, drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in drop}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.wire
def test_every_benchmark_runs_at_smoke_size() -> None:
    names = _python("-m", "benchmarks", "--list", timeout=60).stdout.split()
    assert len(names) == 10
    completed = _python("-m", "benchmarks", "--smoke", timeout=240)
    assert completed.returncode == 0, completed.stderr[-4000:]
    for name in names:
        assert f"## {name}" in completed.stdout
    # every benchmark printed at least one markdown table
    assert completed.stdout.count("|---") >= len(names)


def test_a_broken_benchmark_fails_the_smoke_run() -> None:
    completed = _python(
        "-c",
        "import sys, benchmarks.__main__ as m; "
        "m.BENCHMARKS = {'broken': 'benchmarks.no_such_module'}; sys.exit(m.main(['--smoke']))",
        timeout=60,
    )
    assert completed.returncode == 1
    assert "FAILED: broken" in completed.stderr


@pytest.mark.wire
def test_the_cost_benchmark_reports_every_row_of_the_issue_at_a_tiny_scale() -> None:
    # Without a PostgreSQL server named, its row says it was skipped, and the rest still runs.
    completed = _python("-m", "benchmarks.bench_cost", "--scale", "0.01", "--repeats", "1", timeout=240,
                        drop=("CALM_TEST_POSTGRES",))  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-4000:]
    table = completed.stdout
    for measure in (
        "incremental run after 10 membership changes", "growth", "Import Log rows written by a no-change run",
        "PostgreSQL first import | skipped | CALM_TEST_POSTGRES is not set", "planner, ", "planner with group mirroring",
        "Graph read of", "peak RSS",
    ):  # fmt: skip
        assert measure in table, measure
    # Not a timing: a settled run writes its start, its one discovery summary and its end.
    assert " 3 (settled) |" in table, table
    settled_rows = [line for line in table.splitlines() if "| settled |" in line]
    assert settled_rows and all(line.split("|")[7].strip() == "3" for line in settled_rows), settled_rows
