"""Graph economy: requests and resource units for one full read, against the minimum and two other ways.

Run: ``python -m benchmarks.bench_graph_economy [--size N]``.

For a synthetic tenant (``generate_tenant(users, groups, mapped_groups=...)``)
served by the fake Graph server, side by side:

- **calm-azure-sync**: one ``Reconciler.run`` through ``GraphDirectory``
  (every request the run makes, counted in the server's request log);
- **paging minimum**: Σ⌈users/999⌉ per mapped group (at least one request
  per group) of ``transitiveMembers/microsoft.graph.user`` with ``$select``;
- **list everything** (ssosync's way): list every user, list every group,
  then every group's direct ``members`` (``$select=id``), nesting resolved
  by the client. Run for real against the fake with bare httpx, and
  checked to find the same memberships as ours;
- **per-user memberOf**: list every user, then each user's
  ``transitiveMemberOf`` (``$select=id``). Computed (the fake does not
  serve it): ⌈users/999⌉ + one request per user.

Resource units follow the cost table Graph documents (``users`` 2,
``members`` 3, ``transitiveMembers`` 5, other GETs 1;  -1 with ``$select``),
as :func:`calm_azure_sync.testing.fake_graph.resource_units` implements it;
``transitiveMemberOf`` is not in the table and is costed as a ``users``
request (a lower bound).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from collections.abc import Mapping
from typing import Any

from benchmarks._common import BenchCredential, print_table
from calm_azure_sync import Actor as _Actor

SYSTEM = _Actor.system("tests")

PAGE = 999
SELECT_USER = "id,displayName,mail,userPrincipalName,givenName,surname,accountEnabled,userType"

# (users, groups in the tenant, mapped groups)
DEFAULT_CASES = [(10_000, 2_000, 200), (100_000, 2_000, 200), (100_000, 200, 20)]


def _transitive_users(members: Mapping[str, list[str]], users: set[str], group_id: str) -> set[str]:
    found: set[str] = set()
    seen = {group_id}
    pending = [group_id]
    while pending:
        current = pending.pop()
        for member in members.get(current, ()):
            if member in users:
                found.add(member)
            elif member in members and member not in seen:
                seen.add(member)
                pending.append(member)
    return found


def _pages(count: int) -> int:
    return max(1, math.ceil(count / PAGE))


def _list_everything(base_url: str) -> dict[str, set[str]]:
    """ssosync's way, with bare httpx: every user, every group, every group's direct members."""
    import httpx

    headers = {"Authorization": "Bearer benchmark-token"}

    def paged(client: httpx.Client, url: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        next_url: str | None = url
        while next_url:
            response = client.get(next_url, headers=headers)
            response.raise_for_status()
            page = json.loads(response.content)
            items += page["value"]
            next_url = page.get("@odata.nextLink")
        return items

    with httpx.Client(timeout=60) as client:
        users = {u["id"] for u in paged(client, f"{base_url}/users?$select={SELECT_USER}&$top={PAGE}")}
        groups = [g["id"] for g in paged(client, f"{base_url}/groups?$select=id,displayName&$top={PAGE}")]
        direct = {
            group_id: [m["id"] for m in paged(client, f"{base_url}/groups/{group_id}/members?$select=id&$top={PAGE}")]
            for group_id in groups
        }
    return {group_id: _transitive_users(direct, users, group_id) for group_id in groups}


async def _our_read(base_url: str, tenant: Any) -> None:
    from calm_azure_sync import GraphDirectory, InMemoryAuditSink, InMemoryUserStore, Reconciler

    async with GraphDirectory.from_credential(BenchCredential(), base_url=base_url) as directory:
        reconciler = Reconciler(directory, InMemoryUserStore(), InMemoryAuditSink(), tenant.hierarchy)
        report = await reconciler.run(tenant.config, actor=SYSTEM)
        if not report.ok:
            raise RuntimeError(f"the import failed: {report.errors[:3]}")


def measure(users: int, groups: int, mapped: int) -> list[list[object]]:
    from calm_azure_sync.testing.fake_graph import FakeGraphServer, resource_units
    from calm_azure_sync.testing.synthetic import generate_tenant

    tenant = generate_tenant(users=users, groups=groups, mapped_groups=mapped)
    fixture = tenant.fixture
    members: dict[str, list[str]] = fixture["members"]
    user_ids = {u["id"] for u in fixture["users"]}
    mapped_ids = sorted(tenant.config.mappings.group_ids)
    mapped_users = {g: _transitive_users(members, user_ids, g) for g in mapped_ids}
    member_query = {"$select": SELECT_USER, "$top": str(PAGE), "$count": "true"}
    member_cost = resource_units("GET", "/groups/g/transitiveMembers/microsoft.graph.user", member_query)
    minimum = sum(_pages(len(found)) for found in mapped_users.values())
    rows: list[list[object]] = []

    with FakeGraphServer(fixture) as server:
        asyncio.run(_our_read(server.base_url, tenant))
        log = server.requests
        pages = [(r.path, r.query.get("$skiptoken")) for r in log]
        if len(set(pages)) != len(pages):
            raise RuntimeError("GraphDirectory asked for the same page twice")
        member_requests = sum(1 for r in log if "/transitiveMembers" in r.path)
        ours = len(log)
        ours_ru = sum(r.resource_units for r in log)
        rows.append(["calm-azure-sync (measured)", f"{ours:,}", f"{member_requests:,}", f"{ours_ru:,}",
                     f"{ours / minimum:.2f}x", f"{ours_ru / (minimum * member_cost):.2f}x"])
        rows.append(["paging minimum Σ⌈members/999⌉ (computed)", f"{minimum:,}", f"{minimum:,}",
                     f"{minimum * member_cost:,}", "1.00x", "1.00x"])

        server.clear_log()
        found = _list_everything(server.base_url)
        for group_id in mapped_ids:
            if found[group_id] != mapped_users[group_id]:
                raise RuntimeError(f"list-everything found other members for {group_id}")
        log = server.requests
        listed = len(log)
        listed_ru = sum(r.resource_units for r in log)
        expected = (
            _pages(len(user_ids))
            + _pages(len(fixture["groups"]))
            + sum(_pages(len(members.get(g["id"], ()))) for g in fixture["groups"])
        )
        if listed != expected:
            raise RuntimeError(f"list-everything made {listed} requests, {expected} computed")
        rows.append(["list every user, every group's members (measured)", f"{listed:,}",
                     f"{sum(1 for r in log if r.path.endswith('/members')):,}", f"{listed_ru:,}",
                     f"{listed / minimum:.2f}x", f"{listed_ru / (minimum * member_cost):.2f}x"])

    list_users_cost = resource_units("GET", "/users", {"$select": SELECT_USER, "$top": str(PAGE)})
    member_of_cost = resource_units("GET", "/users/u/transitiveMemberOf", {"$select": "id"})
    per_user = _pages(len(user_ids)) + len(user_ids)
    per_user_ru = _pages(len(user_ids)) * list_users_cost + len(user_ids) * member_of_cost
    rows.append(["per-user transitiveMemberOf (computed)", f"{per_user:,}", f"{len(user_ids):,}",
                 f"{per_user_ru:,}", f"{per_user / minimum:.2f}x", f"{per_user_ru / (minimum * member_cost):.2f}x"])
    return rows


def run(cases: list[tuple[int, int, int]]) -> None:
    for users, groups, mapped in cases:
        rows = measure(users, groups, mapped)
        print_table(
            f"Graph economy: {users:,} users, {groups:,} groups in the tenant, {mapped} mapped",
            ["strategy", "requests", "member requests", "resource units", "requests / minimum", "RU / minimum"],
            rows,
            command=f"python -m benchmarks.bench_graph_economy --size {users} --groups {groups} --mapped {mapped}",
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, help="users (default: the three cases in DEFAULT_CASES)")
    parser.add_argument("--groups", type=int, default=2_000, help="groups in the tenant, with --size")
    parser.add_argument("--mapped", type=int, default=200, help="mapped groups, with --size")
    parser.add_argument("--repeats", type=int, default=1, help="ignored: counts do not vary")
    parser.add_argument("--smoke", action="store_true", help="a tiny, fast run that only checks it works")
    args = parser.parse_args(argv)
    if args.smoke:
        cases = [(200, 40, 8)]
    elif args.size:
        cases = [(args.size, args.groups, min(args.mapped, args.groups))]
    else:
        cases = DEFAULT_CASES
    run(cases)


if __name__ == "__main__":
    main()
