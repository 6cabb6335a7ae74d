"""Planner CPU seconds (``process_time``) at N users: the first plan and a no-change re-plan, median of R.

Run: ``python -m benchmarks.bench_planner_cpu 100000 3 0`` (the last argument: 1 mirrors groups).

On a machine shared with other work, wall time swings by half; CPU time of
one process moves far less, so before/after comparisons of the planner use
this, run alternately against two checkouts (``PYTHONPATH=<tree>/src``).
It also runs against v0.1, which has no ``PlanContext``.
"""
import gc
import statistics
import sys
import time

from calm_azure_sync import InMemoryDirectory, StoredUser, StoreState
from calm_azure_sync.core.planner import DirectorySnapshot, build_plan
from calm_azure_sync.testing.synthetic import generate_tenant

try:
    from calm_azure_sync.core.planner import PlanContext
except ImportError:
    PlanContext = None
size, repeats, mirror = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
tenant = generate_tenant(users=size, groups=max(20, size // 50))
directory = InMemoryDirectory.from_dict(tenant.fixture)
config = tenant.config
members = {g: directory.transitive_members(g) for g in sorted(config.mappings.group_ids)}
snapshot = DirectorySnapshot(members=members)
args = (PlanContext(mirror_groups=mirror),) if PlanContext else ()
first = build_plan(config, snapshot, StoreState(), *args)
users, access = {}, {}
groups, gm = {}, {}
for c in first.changes:
    n = type(c).__name__
    if n == "UpsertGroup":
        from calm_azure_sync import SyncedGroup
        groups[c.external_id] = SyncedGroup(c.external_id, config.trust_site_id, c.display_name, c.site_ids)
    elif n == "AddGroupMember":
        gm.setdefault(c.group_external_id, set()).add(c.external_id)
    elif hasattr(c, "role"):
        access.setdefault(c.external_id, {})[(c.site_id, c.module)] = c.role
    else:
        users[f"s{len(users)}"] = StoredUser(f"s{len(users)}", c.email, c.display_name, c.external_id, c.given_name, c.surname)
extra = {"groups": groups, "group_members": {g: frozenset(v) for g, v in gm.items()}} if groups else {}
rerun_state = StoreState(users=users, synced_access=access, **extra)
del first
out = {}
for kind, state in (("first", StoreState()), ("rerun", rerun_state)):
    times = []
    for _ in range(repeats):
        gc.collect()
        t = time.process_time()
        build_plan(config, snapshot, state, *args)
        times.append(time.process_time() - t)
    out[kind] = statistics.median(times)
print(f"first {out['first']:.3f} rerun {out['rerun']:.3f}")
