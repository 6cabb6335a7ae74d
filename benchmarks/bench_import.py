"""Import cost: ``import calm_azure_sync`` in fresh processes, and that it leaves the Graph SDK alone.

Run: ``python -m benchmarks.bench_import [--repeats 7]``.

Each statement runs as ``python -X importtime -c STATEMENT`` in a fresh
process, the runs interleaved so the load on the machine falls on all of
them alike. Reported per statement: the median wall time of the whole
process, the median cumulative import time ``-X importtime`` gives the
package's top-level modules, the number of modules imported, and whether any
``msgraph`` / ``kiota`` / ``azure`` module was imported. ``python -c pass``
is the interpreter's own start-up, for scale.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks._common import median, print_table

STATEMENTS = [
    ("interpreter start-up", "pass"),
    ("import calm_azure_sync", "import calm_azure_sync"),
    (
        "+ Reconciler, SqliteUserStore, SqliteAuditSink",
        "import calm_azure_sync as c; c.Reconciler; c.SqliteUserStore; c.SqliteAuditSink",
    ),
    ("+ GraphDirectory (the Graph SDK)", "import calm_azure_sync as c; c.GraphDirectory"),
]
SDK_PREFIXES = ("msgraph", "kiota", "azure", "opentelemetry")


def _once(statement: str) -> tuple[float, float, int, list[str]]:
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{statement!r} failed:\n{completed.stderr[-3000:]}")
    cumulative_us = 0
    modules: list[str] = []
    for line in completed.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
            continue
        _self, cumulative, name = line.removeprefix("import time:").split("|")
        indent = len(name) - len(name.lstrip())
        name = name.strip()
        modules.append(name)
        # Top-level entries (indent 1) only, so nothing is counted twice.
        if indent == 1 and not name.startswith(("encodings", "site", "_")) and statement != "pass":
            cumulative_us += int(cumulative)
    sdk = sorted({m.split(".")[0] for m in modules if m.startswith(SDK_PREFIXES)})
    return wall, cumulative_us / 1e6, len(modules), sdk


def run(repeats: int) -> None:
    results: dict[str, list[tuple[float, float, int, list[str]]]] = {label: [] for label, _ in STATEMENTS}
    for _ in range(repeats):
        for label, statement in STATEMENTS:
            results[label].append(_once(statement))
    rows: list[list[object]] = []
    for label, statement in STATEMENTS:
        runs = results[label]
        sdk = sorted({name for run_ in runs for name in run_[3]})
        rows.append([
            label,
            f"`{statement}`",
            f"{median([r[0] for r in runs]) * 1000:.0f}",
            f"{median([r[1] for r in runs]) * 1000:.0f}" if statement != "pass" else "-",
            f"{median([r[2] for r in runs]):.0f}",
            ", ".join(sdk) if sdk else "none",
        ])  # fmt: skip
    print_table(
        f"Import cost: fresh processes, median of {repeats} (target: `import calm_azure_sync` ≤ 1 s)",
        ["what", "statement", "process wall ms", "import time ms (-X importtime)", "modules imported",
         "Graph SDK modules"],
        rows,
        command=f"python -m benchmarks --only import --repeats {repeats}",
    )  # fmt: skip
    if results["import calm_azure_sync"][0][3]:
        raise RuntimeError("import calm_azure_sync imported the Graph SDK")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size", type=int, help="ignored: import cost has no size")
    parser.add_argument("--smoke", action="store_true", help="one run of each statement")
    args = parser.parse_args(argv)
    run(1 if args.smoke else args.repeats)


if __name__ == "__main__":
    main()
