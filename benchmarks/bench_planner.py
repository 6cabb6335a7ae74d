"""Planner: ``plan()`` time and peak RSS at each size, next to a bare-Python floor.

Run: ``python -m benchmarks --only planner [--size 100000]`` (or ``nox -s bench``).

The floor is one bare-Python pass over the same memberships with dicts: for
each mapped group, for each member, keep the highest role per (site, module).
It does none of the planner's other work (scope rules, identity, diffing,
ordering), so the ratio says what that work costs. Each measurement runs in
a fresh subprocess so peak RSS is its own.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from typing import Any

from benchmarks._common import child_json, peak_rss_mb, print_table


def _measure(kind: str, size: int, repeats: int, mirror_groups: bool = False) -> dict[str, Any]:
    from calm_azure_sync import InMemoryDirectory, Role, StoredUser, StoreState, SyncedGroup
    from calm_azure_sync.core.plan import AddGroupMember, UpsertGroup
    from calm_azure_sync.core.planner import DirectorySnapshot, PlanContext, build_plan
    from calm_azure_sync.testing.synthetic import generate_tenant

    context = PlanContext(mirror_groups=True) if mirror_groups else None

    tenant = generate_tenant(users=size, groups=max(20, size // 50))
    directory = InMemoryDirectory.from_dict(tenant.fixture)
    config = tenant.config
    members = {g: directory.transitive_members(g) for g in sorted(config.mappings.group_ids)}
    snapshot = DirectorySnapshot(members=members)
    memberships = sum(len(m) for m in members.values())
    state = StoreState()
    if kind == "rerun":
        first = build_plan(config, snapshot, state, context)
        users: dict[str, StoredUser] = {}
        access: dict[str, dict[tuple[str, str], Role]] = {}
        groups: dict[str, SyncedGroup] = {}
        group_members: dict[str, set[str]] = {}
        for change in first.changes:
            if isinstance(change, UpsertGroup):
                groups[change.external_id] = SyncedGroup(
                    change.external_id, config.trust_site_id, change.display_name, change.site_ids
                )
            elif isinstance(change, AddGroupMember):
                group_members.setdefault(change.group_external_id, set()).add(change.external_id)
            elif hasattr(change, "role"):
                access.setdefault(change.external_id, {})[(change.site_id, change.module)] = change.role
            else:
                users[f"s{len(users)}"] = StoredUser(f"s{len(users)}", change.email, change.display_name,
                                                      change.external_id, change.given_name, change.surname)
        state = StoreState(
            users=users,
            synced_access=access,
            groups=groups,
            group_members={group: frozenset(ids) for group, ids in group_members.items()},
        )
        del first
    grants = [(m.group_id, m.site_id, module, role) for m in config.mappings.mappings for module, role in m.roles.items()]
    by_group: dict[str, list[tuple[str, str, Role]]] = {}
    for group_id, site_id, module, role in grants:
        by_group.setdefault(group_id, []).append((site_id, module, role))

    def floor() -> int:
        best: dict[str, dict[tuple[str, str], Role]] = {}
        for group_id, users_in_group in members.items():
            for site_id, module, role in by_group[group_id]:
                key = (site_id, module)
                for user in users_in_group:
                    access = best.setdefault(user.id, {})
                    current = access.get(key)
                    if current is None or current < role:
                        access[key] = role
        return len(best)

    timings: dict[str, list[float]] = {"plan": [], "floor": []}
    cpu: dict[str, list[float]] = {"plan": [], "floor": []}
    changes = 0
    for _ in range(repeats):
        for name in ("floor", "plan"):
            gc.collect()
            started, started_cpu = time.perf_counter(), time.process_time()
            if name == "plan":
                changes = len(build_plan(config, snapshot, state, context).changes)
            else:
                # build_plan pauses the cyclic collector while it runs; give the floor the same.
                gc.disable()
                floor()
                gc.enable()
            timings[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
    return {
        "kind": kind,
        "users": size,
        "groups": len(members),
        "memberships": memberships,
        "changes": changes,
        "plan_s": statistics.median(timings["plan"]),
        "floor_s": statistics.median(timings["floor"]),
        "plan_cpu": statistics.median(cpu["plan"]),
        "floor_cpu": statistics.median(cpu["floor"]),
        "peak_rss_mb": peak_rss_mb(),
    }


def run(sizes: list[int], repeats: int, mirror_groups: bool = True) -> list[dict[str, Any]]:
    """Each size's first plan and no-change re-plan; with ``mirror_groups`` (what the shipped stores
    do) also without, side by side, so the cost of the group diff reads off one run."""
    rows = []
    for size in sizes:
        for kind in ("first", "rerun"):
            for mirror in ((False, True) if mirror_groups else (False,)):
                extra = ["--mirror-groups"] if mirror else []
                row = child_json(
                    "benchmarks.bench_planner", "--child", kind, "--size", str(size), "--repeats", str(repeats), *extra
                )
                row["kind"] = f"{kind}{' + groups' if mirror else ''}"
                rows.append(row)
    return rows


def print_rows(rows: list[dict[str, Any]], repeats: int) -> None:
    sizes = " ".join(f"--size {size}" for size in dict.fromkeys(r["users"] for r in rows))
    print_table(
        f"Planner: build_plan vs a bare-dict floor, same process, median of {repeats} "
        "(target at 100k users: ≤ 3x the floor, peak RSS ≤ 500 MB)",
        ["users", "groups", "memberships", "plan", "changes", "plan s", "floor s", "plan / floor", "peak RSS MB"],
        [
            [f"{r['users']:,}", f"{r['groups']:,}", f"{r['memberships']:,}", r["kind"], f"{r['changes']:,}",
             f"{r['plan_s']:.3f}", f"{r['floor_s']:.3f}", f"{r['plan_s'] / r['floor_s']:.2f}x",
             f"{r['peak_rss_mb']:.0f}"]
            for r in rows
        ],
        command=f"python -m benchmarks.bench_planner {sizes} --repeats {repeats}",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, action="append", help="users (repeatable); default 1k, 10k, 100k")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="a tiny, fast run that only checks it works")
    parser.add_argument("--child", choices=["first", "rerun"], help=argparse.SUPPRESS)
    parser.add_argument("--mirror-groups", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-groups", action="store_true", help="only plans without the group mirror")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size, args.repeats = [500], 1
    if args.child:
        print(json.dumps(_measure(args.child, args.size[0], args.repeats, args.mirror_groups)))
        return
    print_rows(run(args.size or [1_000, 10_000, 100_000], args.repeats, not args.no_groups), args.repeats)


if __name__ == "__main__":
    main()
