"""What every benchmark shares: the machine line, medians, tables, child processes."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

__all__ = [
    "BenchCredential",
    "REPO_ROOT",
    "child_env",
    "child_json",
    "machine_line",
    "median",
    "peak_rss_mb",
    "print_table",
]


def machine_line() -> str:
    """The machine and its load right now, to print above every table."""
    load = os.getloadavg()
    return (
        f"_Machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()} "
        f"({platform.system()}); load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)._"
    )


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env() -> dict[str, str]:
    """The environment for child processes: ``benchmarks`` importable from any working directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
    return env


def child_json(module: str, *args: str, timeout: float | None = None) -> Any:
    """Run ``python -m module *args`` in a fresh process; its last stdout line is JSON."""
    completed = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True, text=True, timeout=timeout, check=False, env=child_env(),
    )  # fmt: skip
    if completed.returncode != 0:
        raise RuntimeError(
            f"{module} {' '.join(args)} exited with {completed.returncode}:\n{completed.stderr[-4000:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]], *, command: str) -> None:
    """A markdown table: a heading, the command that made it, the machine, then the rows.

    Numeric columns are right-aligned.
    """
    print(f"\n### {title}\n")
    print(f"`{command}`  ")
    print(machine_line())
    print()
    print("| " + " | ".join(header) + " |")
    aligns = []
    for index in range(len(header)):
        cells = [row[index] for row in rows if str(row[index]) not in ("-", "")]
        numeric = bool(cells) and all(_looks_numeric(cell) for cell in cells)
        aligns.append("---:" if numeric else "---")
    print("|" + "|".join(aligns) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    sys.stdout.flush()


def _looks_numeric(cell: object) -> bool:
    if isinstance(cell, int | float):
        return True
    text = str(cell).replace(",", "").rstrip("x%s").strip()
    try:
        float(text)
    except ValueError:
        return False
    return True


class BenchCredential:
    """An azure-identity-shaped async credential with a fixed token, for the fake server."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        import time

        from azure.core.credentials import AccessToken

        return AccessToken("benchmark-token", int(time.time()) + 3600)

    async def close(self) -> None:
        return None
