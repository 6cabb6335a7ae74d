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


def _python(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.wire
def test_every_benchmark_runs_at_smoke_size() -> None:
    names = _python("-m", "benchmarks", "--list", timeout=60).stdout.split()
    assert len(names) == 9
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
