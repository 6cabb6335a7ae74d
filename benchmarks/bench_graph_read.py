"""Reading N users' memberships: GraphDirectory (msgraph-sdk pipeline, raw pages) vs bare httpx + json.loads.

Both readers fetch the same pages from the same fake Graph server (run in its
own process, so its CPU is not counted): the transitive user members of
``--groups`` groups holding ``--size`` users in all, ``$top=999``, with the
advanced-query header on every page. Each reader runs in a fresh subprocess
so its CPU time and peak RSS are its own. The runs alternate and the median
of ``--repeat`` runs is reported.

    python -m benchmarks --only graph_read                # 100k users
    python benchmarks/bench_graph_read.py --size 20000 --repeat 5
    python benchmarks/bench_graph_read.py --batch 200     # the $batch measurement

``--batch K`` measures instead whether JSON batching helps: K small groups
(one page each) over a server with ``--latency`` seconds per HTTP round trip,
read (a) by GraphDirectory with its bounded concurrency, (b) by bare httpx
one request per group at the same concurrency, and (c) by bare httpx in
``$batch`` requests of 20 at the same concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make the benchmarks package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import child_env, print_table

SELECT = (
    "id,displayName,mail,userPrincipalName,givenName,surname,accountEnabled,userType,"
    "assignedLicenses,onPremisesSyncEnabled,creationType"
)
TOKEN = "benchmark-token"


def build_fixture(size: int, groups: int, users_per_small_group: int = 0) -> dict[str, Any]:
    users = [
        {
            "id": f"{index:08d}-0000-4000-8000-000000000000",
            "displayName": f"Staff Member {index}",
            "givenName": "Staff",
            "surname": f"Member{index}",
            "mail": f"staff.member{index}@school.example",
            "userPrincipalName": f"staff.member{index}@school.example",
            "accountEnabled": index % 50 != 0,
            "userType": "Guest" if index % 97 == 0 else "Member",
            "assignedLicenses": [{"disabledPlans": [], "skuId": "94763226-9b3c-4e75-a931-5c89701abe66"}],
            "onPremisesSyncEnabled": index % 3 == 0 or None,
            "creationType": None,
        }
        for index in range(size)
    ]
    ids = [u["id"] for u in users]
    group_ids = [f"group-{index:04d}" for index in range(groups)]
    if users_per_small_group:
        members = {
            gid: ids[(i * users_per_small_group) % size : (i * users_per_small_group) % size + users_per_small_group]
            for i, gid in enumerate(group_ids)
        }
    else:
        share = -(-size // groups)
        members = {gid: ids[i * share : (i + 1) * share] for i, gid in enumerate(group_ids)}
    return {"users": users, "groups": [{"id": g, "displayName": g} for g in group_ids], "members": members}


# -- the server process --------------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    from calm_azure_sync.testing.fake_graph import FakeGraphServer

    fixture = build_fixture(args.size, args.groups, args.small_group_size)
    with FakeGraphServer(fixture, latency=args.latency) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()  # until the parent closes our stdin
        print(json.dumps({"requests": len(server.requests), "resource_units": server.resource_units_used}), flush=True)


# -- the reader processes --------------------------------------------------------------


class _Credential:
    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken(TOKEN, int(time.time()) + 3600)


async def read_with_graph_directory(base_url: str, group_ids: list[str], concurrency: int) -> int:
    from calm_azure_sync.directory.graph import GraphDirectory

    async with GraphDirectory.from_credential(_Credential(), base_url=base_url, max_concurrency=concurrency) as directory:
        answers = await asyncio.gather(*(directory.group_members(g) for g in group_ids))
    return sum(len(a) for a in answers)


async def read_with_httpx(base_url: str, group_ids: list[str], concurrency: int, *, model: bool = False) -> int:
    import httpx

    from calm_azure_sync.model import DirectoryUser

    headers = {"Authorization": f"Bearer {TOKEN}", "ConsistencyLevel": "eventual", "Accept": "application/json"}
    limit = asyncio.Semaphore(concurrency)

    async def read(client: httpx.AsyncClient, group_id: str) -> list[Any]:
        link: str | None = (
            f"{base_url}/groups/{group_id}/transitiveMembers/microsoft.graph.user"
            f"?$select={SELECT}&$top=999&$count=true"
        )
        users: list[Any] = []
        while link:
            async with limit:
                response = await client.get(link, headers=headers)
            response.raise_for_status()
            page = json.loads(response.content)
            users += [DirectoryUser.from_graph(item) for item in page["value"]] if model else page["value"]
            link = page.get("@odata.nextLink")
        return users

    async with httpx.AsyncClient(timeout=60) as client:
        answers = await asyncio.gather(*(read(client, g) for g in group_ids))
    return sum(len(a) for a in answers)


async def read_with_httpx_batch(base_url: str, group_ids: list[str], concurrency: int) -> int:
    """First pages only, 20 per $batch (enough for the one-page groups of --batch)."""
    import httpx

    headers = {"Authorization": f"Bearer {TOKEN}"}
    limit = asyncio.Semaphore(concurrency)
    chunks = [group_ids[i : i + 20] for i in range(0, len(group_ids), 20)]

    async def send(client: httpx.AsyncClient, chunk: list[str]) -> int:
        body = {
            "requests": [
                {
                    "id": str(index),
                    "method": "GET",
                    "url": f"/groups/{g}/transitiveMembers/microsoft.graph.user?$select={SELECT}&$top=999&$count=true",
                    "headers": {"ConsistencyLevel": "eventual"},
                }
                for index, g in enumerate(chunk)
            ]
        }
        async with limit:
            response = await client.post(f"{base_url}/$batch", headers=headers, json=body)
        answer = json.loads(response.content)
        found = 0
        for item in answer["responses"]:
            if item["status"] != 200 or "@odata.nextLink" in item["body"]:
                raise RuntimeError("the batch reader handles single-page groups only")
            found += len(item["body"]["value"])
        return found

    async with httpx.AsyncClient(timeout=60) as client:
        return sum(await asyncio.gather(*(send(client, chunk) for chunk in chunks)))


async def read_with_httpx_and_model(base_url: str, group_ids: list[str], concurrency: int) -> int:
    """Bare httpx + json.loads, then our own model objects: isolates the SDK pipeline's share."""
    return await read_with_httpx(base_url, group_ids, concurrency, model=True)


READERS = {
    "graph": read_with_graph_directory,
    "httpx": read_with_httpx,
    "httpx+model": read_with_httpx_and_model,
    "batch": read_with_httpx_batch,
}


def read(args: argparse.Namespace) -> None:
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if args.reader == "graph":
        import calm_azure_sync.directory.graph
    else:
        import httpx  # noqa: F401

        import calm_azure_sync.model  # noqa: F401
    imported_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    group_ids = [f"group-{index:04d}" for index in range(args.groups)]
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    users = asyncio.run(READERS[args.reader](args.base_url, group_ids, args.concurrency))
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "users": users,
                "wall": wall,
                "cpu": cpu,
                "peak_rss_mb": peak_rss / 1024,
                "read_rss_mb": (peak_rss - imported_rss) / 1024,
                "start_rss_mb": baseline_rss / 1024,
            }
        )
    )


# -- the driver ----------------------------------------------------------------------


def run_reader(reader: str, base_url: str, args: argparse.Namespace) -> dict[str, float]:
    command = [
        sys.executable, __file__, "--read", reader, "--base-url", base_url,
        "--groups", str(args.groups), "--concurrency", str(args.concurrency),
    ]  # fmt: skip
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=child_env()).stdout
    return json.loads(output.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000, help="users in all (default 100000)")
    parser.add_argument("--groups", type=int, default=20, help="groups the users are spread over (default 20)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument(
        "--repeat", "--repeats", type=int, default=3, help="runs per reader; the median is shown (default 3)"
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny, fast run that only checks it works")
    parser.add_argument("--batch", type=int, default=0, metavar="K", help="measure $batch over K one-page groups")
    parser.add_argument("--latency", type=float, default=0.0, help="server seconds per HTTP round trip")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--read", dest="reader", choices=sorted(READERS), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--small-group-size", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.groups, args.repeat = min(args.size, 2_000), min(args.groups, 4), 1
    if args.serve:
        return serve(args)
    if args.reader:
        return read(args)

    readers = ["graph", "httpx", "httpx+model"]
    if args.batch:
        args.groups, args.small_group_size = args.batch, 10
        args.size = max(args.size if args.size != 100_000 else 0, args.batch * 10)
        args.latency = args.latency or 0.03
        readers = ["graph", "httpx", "batch"]
    medians, server_stats = measure(args, readers)
    base = medians["httpx"]
    rows: list[list[object]] = []
    for reader in readers:
        ours = medians[reader]
        rows.append([
            reader,
            f"{int(ours['users']):,}",
            f"{ours['wall']:.3f}",
            f"{ours['cpu']:.3f}",
            f"{ours['peak_rss_mb']:.1f}",
            f"{ours['read_rss_mb']:.1f}",
            f"{ours['wall'] / base['wall']:.2f}x",
            f"{ours['cpu'] / base['cpu']:.2f}x",
            f"{ours['peak_rss_mb'] / base['peak_rss_mb']:.2f}x",
            f"{ours['read_rss_mb'] / max(base['read_rss_mb'], 0.1):.2f}x",
        ])  # fmt: skip
    print_table(
        f"SDK overhead: {args.size:,} users in {args.groups} groups, concurrency {args.concurrency}, "
        f"latency {args.latency}s, median of {args.repeat} (server: {server_stats.get('requests')} requests, "
        f"{server_stats.get('resource_units')} RU in all runs)",
        ["reader", "users", "wall s", "CPU s", "peak RSS MB", "RSS for read MB", "wall / httpx", "CPU / httpx",
         "peak RSS / httpx", "read RSS / httpx"],
        rows,
        command=f"python -m benchmarks.bench_graph_read --size {args.size} --groups {args.groups} "
        f"--repeat {args.repeat}" + (f" --batch {args.batch} --latency {args.latency}" if args.batch else ""),
    )  # fmt: skip
    return None


def measure(args: argparse.Namespace, readers: list[str]) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Each reader's medians (``users``, ``wall``, ``cpu``, RSS) over ``args.repeat`` alternated runs, each in a
    fresh process, and the server's counts. ``args`` as :func:`main` parses them (``size``, ``groups``,
    ``concurrency``, ``repeat``, ``latency``, ``small_group_size``)."""
    server_command = [
        sys.executable, __file__, "--serve", "--size", str(args.size), "--groups", str(args.groups),
        "--latency", str(args.latency), "--small-group-size", str(args.small_group_size),
    ]  # fmt: skip
    server = subprocess.Popen(
        server_command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env()
    )
    assert server.stdout is not None
    assert server.stdin is not None
    base_url = server.stdout.readline().strip()
    results: dict[str, list[dict[str, float]]] = {reader: [] for reader in readers}
    try:
        for _ in range(args.repeat):
            for reader in readers:
                results[reader].append(run_reader(reader, base_url, args))
    finally:
        server.stdin.close()
        server_stats = json.loads(server.stdout.readline() or "{}")
        server.wait(timeout=30)

    medians = {
        reader: {key: statistics.median(run[key] for run in runs) for key in runs[0]} for reader, runs in results.items()
    }
    return medians, server_stats


if __name__ == "__main__":
    main()
