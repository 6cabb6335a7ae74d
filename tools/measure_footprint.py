"""What calm-azure-sync costs to install, to import, and to use GraphDirectory for the first time.

    python tools/measure_footprint.py [--repeat 3]

- install: the bytes on disk of calm-azure-sync's core dependencies (the
  installed distributions it pulls in, extras aside), from their own
  metadata, and the share of msgraph-sdk;
- import: ``import calm_azure_sync`` in a fresh interpreter: wall time and
  peak RSS, against a bare interpreter;
- first GraphDirectory use: ``from calm_azure_sync import GraphDirectory``
  (which imports msgraph-sdk, kiota and azure-identity) and a first
  ``list_groups()`` against the fake Graph server running in another process.

Medians of ``--repeat`` fresh interpreters. The figures in
docs/getting-started.md ("Install footprint") come from this script.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_SERVER = """
import sys, time
from calm_azure_sync.demo import load_sample
from calm_azure_sync.testing import FakeGraphServer
with FakeGraphServer(load_sample().graph_fixture) as graph:
    print(graph.base_url, flush=True)
    sys.stdin.read()
"""

_CLIENT = """
import json, sys, time
def rss():  # peak RSS of this process's memory since exec (getrusage's maxrss counts the parent's at fork)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
marks = {"start": (time.process_time(), rss(), time.perf_counter())}
if STAGE >= 1:
    import calm_azure_sync
    marks["import"] = (time.process_time(), rss(), time.perf_counter())
if STAGE >= 2:
    import asyncio
    from calm_azure_sync import GraphDirectory
    from calm_azure_sync.testing import FakeCredential
    marks["graph_import"] = (time.process_time(), rss(), time.perf_counter())
    async def first_read():
        async with GraphDirectory.from_credential(FakeCredential(), base_url=sys.argv[1]) as directory:
            return len(await directory.list_groups())
    groups = asyncio.run(first_read())
    marks["first_read"] = (time.process_time(), rss(), time.perf_counter())
print(json.dumps(marks))
"""


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def install_sizes() -> tuple[float, float, dict[str, tuple[float, float]]]:
    """MB of calm-azure-sync and every distribution its core requirements pull in: (bytes, disk use) each.

    Disk use counts whole blocks, as ``du`` does (msgraph-sdk is thousands of
    small files); both leave out bytecode that pip compiles after installing.
    """
    seen: dict[str, tuple[float, float]] = {}
    todo = ["calm-azure-sync"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        size = blocks = 0
        for file in distribution.files or []:
            path = Path(str(distribution.locate_file(file)))
            if path.is_file():
                stat = path.stat()
                size += stat.st_size
                blocks += stat.st_blocks * 512
        seen[name] = (size / 1e6, blocks / 1e6)
        todo.extend(_requirement_name(r) for r in distribution.requires or [] if "extra ==" not in r)
    return sum(size for size, _ in seen.values()), sum(disk for _, disk in seen.values()), seen


def _client(stage: int, url: str, cold: bool) -> dict[str, tuple[float, float, float]]:
    code = _CLIENT.replace("STAGE", str(stage))
    with tempfile.TemporaryDirectory() as empty:
        # --cold: no bytecode cache, as right after an install that compiled none (uv's default).
        options = ["-X", f"pycache_prefix={empty}"] if cold else []
        out = subprocess.run(
            [sys.executable, *options, "-c", code, url], capture_output=True, text=True, check=True, timeout=300
        )
    marks: dict[str, tuple[float, float, float]] = json.loads(out.stdout)
    return marks


def measure(repeat: int, cold: bool = False) -> dict[str, float]:
    server = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        runs = [(_client(0, url, cold), _client(2, url, cold)) for _ in range(repeat)]
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=30)

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 1)

    return {
        "bare_rss_mb": median([bare["start"][1] for bare, _ in runs]),
        "import_cpu_ms": median([(m["import"][0] - m["start"][0]) * 1000 for _, m in runs]),
        "import_wall_ms": median([(m["import"][2] - m["start"][2]) * 1000 for _, m in runs]),
        "import_rss_mb": median([m["import"][1] for _, m in runs]),
        "graph_import_cpu_ms": median([(m["graph_import"][0] - m["import"][0]) * 1000 for _, m in runs]),
        "graph_import_wall_ms": median([(m["graph_import"][2] - m["import"][2]) * 1000 for _, m in runs]),
        "graph_import_rss_mb": median([m["graph_import"][1] for _, m in runs]),
        "first_read_cpu_ms": median([(m["first_read"][0] - m["graph_import"][0]) * 1000 for _, m in runs]),
        "first_read_wall_ms": median([(m["first_read"][2] - m["graph_import"][2]) * 1000 for _, m in runs]),
        "first_read_rss_mb": median([m["first_read"][1] for _, m in runs]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="What calm-azure-sync costs to install, import and first use.")
    parser.add_argument("--repeat", type=int, default=3, help="fresh interpreters per figure (median)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--cold", action="store_true", help="with no bytecode cache (a first run after uv's install)")
    options = parser.parse_args(argv)
    total, disk, sizes = install_sizes()
    msgraph = sizes.get("msgraph-sdk", (0.0, 0.0))
    figures = {
        "install_mb": round(total, 1),
        "install_disk_mb": round(disk, 1),
        "msgraph_sdk_mb": round(msgraph[0], 1),
        "msgraph_sdk_disk_mb": round(msgraph[1], 1),
    }
    figures.update(measure(options.repeat, options.cold))
    if options.json:
        print(json.dumps(figures))
        return 0
    print(
        f"installed (core dependencies, no bytecode): {figures['install_mb']} MB "
        f"({figures['install_disk_mb']} MB on disk), of which msgraph-sdk {figures['msgraph_sdk_mb']} MB "
        f"({figures['msgraph_sdk_disk_mb']} MB on disk)"
    )
    print(f"bare interpreter: {figures['bare_rss_mb']} MB RSS")
    for label, key in (
        ("import calm_azure_sync", "import"),
        ("+ from calm_azure_sync import GraphDirectory", "graph_import"),
        ("+ a first list_groups()", "first_read"),
    ):
        print(
            f"{label}: {figures[key + '_cpu_ms']} ms CPU ({figures[key + '_wall_ms']} ms wall), "
            f"peak RSS {figures[key + '_rss_mb']} MB"
        )
    for name, (size, on_disk) in sorted(sizes.items(), key=lambda item: -item[1][0])[:6]:
        print(f"  {name:28} {size:8.1f} MB  ({on_disk:.1f} MB on disk)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
