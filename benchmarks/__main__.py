"""Run the benchmarks: ``python -m benchmarks [--size N] [--only NAME] [--repeats R] [--smoke]``.

Each benchmark prints markdown tables (the command, the machine and its
load above each). ``--size`` is the number of users (each benchmark has its
own default; ``import`` ignores it; for ``cost`` it is the users at scale 1,
see ``python -m benchmarks.bench_cost --help`` for its ``--scale``). ``--only`` may be repeated.
``--smoke`` runs every benchmark at a tiny size, once, to check that they
all still work (CI runs it); it exits non-zero when one breaks, never
because of a timing.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

BENCHMARKS = {
    "planner": "benchmarks.bench_planner",
    "graph_economy": "benchmarks.bench_graph_economy",
    "graph_read": "benchmarks.bench_graph_read",
    "graph_delta": "benchmarks.bench_graph_delta",
    "end_to_end": "benchmarks.bench_end_to_end",
    "store": "benchmarks.bench_store",
    "import": "benchmarks.bench_import",
    "postgres": "benchmarks.bench_postgres",
    "celery": "benchmarks.bench_celery",
    "cost": "benchmarks.bench_cost",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--size", type=int, help="users (default: each benchmark's own)")
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), help="run just this one")
    parser.add_argument("--repeats", type=int, help="runs per measurement; medians are shown")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one run each: does everything work?")
    parser.add_argument("--list", action="store_true", help="print the benchmarks' names and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(BENCHMARKS))
        return 0

    failed: list[str] = []
    for name in args.only or BENCHMARKS:
        forwarded: list[str] = []
        if args.smoke:
            forwarded.append("--smoke")
        if args.size is not None:
            forwarded += ["--size", str(args.size)]
        if args.repeats is not None:
            forwarded += ["--repeats", str(args.repeats)]
        print(f"\n## {name}", flush=True)
        started = time.perf_counter()
        try:
            importlib.import_module(BENCHMARKS[name]).main(forwarded)
        except (Exception, SystemExit) as error:
            if isinstance(error, SystemExit) and not error.code:
                pass
            else:
                traceback.print_exc()
                failed.append(name)
        print(f"\n_{name}: {time.perf_counter() - started:.1f} s_", flush=True)
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
