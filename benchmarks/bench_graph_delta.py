"""Graph delta: what a delta round costs against a full member read, at a round-trip latency.

Run: ``python -m benchmarks.bench_graph_delta [--size N] [--groups G] [--latency S]``.

For a synthetic tenant served by the fake Graph server (in this process,
``latency`` seconds per request), through ``GraphDirectory``:

- **seed (latest)**: ``changes(None, groups, start="latest")``, the cheap
  way to start a cursor around a full read;
- **no change**: the next round when nothing changed;
- **1 % churn**: a round after 1 % of the users were renamed and as many
  memberships added;
- **full member read**: ``group_members`` of every group, concurrently
  (what a full run reads).

Requests are counted in the server's request log. The directory level
only: the reconciler's incremental mode (planner, store) comes on top.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from benchmarks._common import BenchCredential, print_table


async def _measure(users: int, groups: int, latency: float) -> list[list[Any]]:
    from calm_azure_sync import GraphDirectory
    from calm_azure_sync.testing.fake_graph import FakeGraphServer
    from calm_azure_sync.testing.synthetic import generate_tenant

    fixture = generate_tenant(users=users, groups=groups, seed=1).fixture
    group_ids = [g["id"] for g in fixture["groups"]]
    rows: list[list[Any]] = []
    with FakeGraphServer(fixture) as server:
        async with GraphDirectory.from_credential(BenchCredential(), base_url=server.base_url) as directory:
            server.latency = latency

            async def timed(label: str, read: Any) -> Any:
                server.clear_log()
                started = time.perf_counter()
                answer = await read
                rows.append([label, len(server.requests), f"{time.perf_counter() - started:.3f}"])
                return answer

            _, cursor = await timed("seed (latest)", directory.changes(None, group_ids, start="latest"))
            delta, cursor = await timed("no change", directory.changes(cursor, group_ids))
            if not delta.empty:
                raise SystemExit("a round with no change reported changes")
            churn = max(1, users // 100)
            people = fixture["users"]
            for index in range(churn):
                server.add_member(group_ids[index % len(group_ids)], people[index]["id"])
                server.add_user({**people[-1 - index], "displayName": f"Renamed {index}"})
            delta, cursor = await timed("1 % churn", directory.changes(cursor, group_ids))
            if len(delta.users) != churn:
                raise SystemExit(f"the churn round lists {len(delta.users)} changed users, not {churn}")
            await timed("full member read", asyncio.gather(*(directory.group_members(g) for g in group_ids)))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10_000, help="users")
    parser.add_argument("--groups", type=int, default=100, help="tracked groups")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per request")
    parser.add_argument("--repeats", type=int, default=1, help="ignored: one run")
    parser.add_argument("--smoke", action="store_true", help="a tiny, fast run that only checks it works")
    args = parser.parse_args(argv)
    users, groups, latency = (200, 12, 0.0) if args.smoke else (args.size, args.groups, args.latency)
    rows = asyncio.run(_measure(users, groups, latency))
    print_table(
        f"Delta rounds: {users:,} users, {groups} tracked groups, {latency * 1000:.0f} ms per request",
        ["read", "requests", "wall s"],
        rows,
        command=f"python -m benchmarks.bench_graph_delta --size {users} --groups {groups} --latency {latency}",
    )


if __name__ == "__main__":
    main()
