"""Plans built by hand for the review tests (test_plan, test_report, test_review): no planner involved.

One trust ``oak`` with sites ``birch`` and ``ash``; every kind of change,
every kind of skip, a mass-removal hold with an id, a stale group, and a
display name that is an HTML attack.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from calm_azure_sync import (
    AddGroupMember,
    Assign,
    CreateUser,
    DeactivateUser,
    LinkUser,
    Plan,
    RelinkUser,
    RemoveGroupMember,
    RetireGroup,
    Role,
    Skip,
    Unassign,
    UpdateUser,
    UpsertGroup,
)
from calm_azure_sync.core.plan import UserLabel
from calm_azure_sync.review.report import ImportReport

ATTACK = "<script>alert('x')</script>"

PEOPLE = {
    "oid-ann": UserLabel("Ann Archer", "ann@birch.sch.uk"),
    "oid-bob": UserLabel("Bob Baker", "bob@birch.sch.uk"),
    "oid-cat": UserLabel("Cat Cole", "cat@ash.sch.uk"),
    "oid-dan": UserLabel("Dan Dale", "dan@birch.sch.uk"),
    "oid-eve": UserLabel(f"Eve {ATTACK}", "eve@birch.sch.uk"),
    "oid-fay": UserLabel("Fay Ford", "fay@ash.sch.uk"),
    "oid-gus": UserLabel("Gus Grey", "gus@birch.sch.uk"),
    "oid-hal": UserLabel("Hal Hart", "hal@ash.sch.uk"),
    "oid-ida": UserLabel("Ida Inch", "ida@birch.sch.uk"),
    "oid-jon": UserLabel("Jon Jay", "jon@birch.sch.uk"),
    "oid-kim": UserLabel("Kim Kent", "kim@ash.sch.uk"),
    "oid-lee": UserLabel("Lee Lamb", "lee@birch.sch.uk"),
    "oid-max": UserLabel("Max Moss", "max@ash.sch.uk"),
}

GROUP_NAMES = {
    "gid-staff": "Birch Staff",
    "gid-slt": "Birch SLT",
    "gid-ash": "Ash Teachers",
    "gid-old": "Old Governors",
    "gid-gone": "Former Staff",
}

CHANGES = (
    CreateUser("oid-ann", "ann@birch.sch.uk", "Ann Archer"),
    Assign("oid-ann", "birch", "Policies", Role.MEMBER, because=("gid-staff",)),
    LinkUser("oid-bob", "store-7", "bob@birch.sch.uk", "Bob Baker"),
    Assign("oid-bob", "birch", "Risk", Role.MANAGER, previous=Role.MEMBER, because=("gid-slt", "gid-staff")),
    UpdateUser("oid-cat", "store-8", "cat@ash.sch.uk", "Cat Cole", changed=("email",)),
    RelinkUser("oid-dan", "store-9", "oid-dan-old", "dan@birch.sch.uk", "Dan Dale"),
    CreateUser("oid-eve", "eve@birch.sch.uk", f"Eve {ATTACK}"),
    Assign("oid-eve", "ash", "Risk", Role.ADMIN, because=("gid-ash",)),
    Unassign("oid-fay", "ash", "Policies", Role.MEMBER),
    DeactivateUser("oid-fay", "store-10"),
    UpsertGroup("gid-staff", "Birch Staff", ("birch",)),
    AddGroupMember("gid-staff", "oid-ann"),
    RemoveGroupMember("gid-ash", "oid-fay"),
    RetireGroup("gid-old"),
)

HELD = (
    Unassign("oid-gus", "birch", "Risk", Role.MEMBER),
    Assign("oid-hal", "ash", "Risk", Role.MEMBER, previous=Role.ADMIN),
)

SKIPPED = (
    Skip("oid-ida", "ida@birch.sch.uk", "account is disabled in Azure"),
    Skip("oid-jon", "jon@birch.sch.uk", "guest account (guests are not synced)"),
    Skip("oid-kim", "kim@ash.sch.uk", "matches exclusion pattern kim@*", excluded=True),
    Skip(
        "oid-lee",
        "lee@birch.sch.uk",
        "email conflict: lee@birch.sch.uk is already used by store user store-3",
        keeps_access=True,
        conflict=True,
    ),
)

ACCESS_BEFORE = {
    "oid-bob": {("birch", "Risk"): Role.MEMBER},
    "oid-fay": {("ash", "Policies"): Role.MEMBER},
    "oid-gus": {("birch", "Risk"): Role.MEMBER},
    "oid-hal": {("ash", "Risk"): Role.ADMIN},
    "oid-max": {("birch", "Policies"): Role.MANAGER, ("ash", "Risk"): Role.MEMBER},
}


def review_plan(**overrides: Any) -> Plan:
    """The hand-built plan, with any field replaced."""
    fields: dict[str, Any] = {
        "trust_site_id": "oak",
        "changes": CHANGES,
        "skipped": SKIPPED,
        "held_removals": HELD,
        "hold_reason": "mass_removal",
        "hold_id": "hold-42",
        "held_groups": ("gid-slt",),
        "stale_groups": {"gid-gone": 3},
        "people": PEOPLE,
        "group_names": GROUP_NAMES,
        "access_before": ACCESS_BEFORE,
        "users_in_scope": 9,
        "synced_users": 5,
    }
    fields.update(overrides)
    return Plan(**fields)


STARTED = dt.datetime(2025, 3, 1, 9, 0, 0, tzinfo=dt.UTC)


def review_report(plan: Plan | None = None, **overrides: Any) -> ImportReport:
    """A report of a run of ``plan`` that took 12.5 s; ``counts`` as the reconciler gives them today."""
    plan = review_plan() if plan is None else plan
    fields: dict[str, Any] = {
        "run_id": "run-7",
        "trust_site_id": plan.trust_site_id,
        "started_at": STARTED,
        "finished_at": STARTED + dt.timedelta(seconds=12.5),
        # Today's reconciler counts a conflict as skipped: the report must still say what the plan says.
        "counts": {"create_user": 2, "assign": 3, "unassign": 1, "skipped": 3, "excluded": 1, "failed": 0,
                   "held": len(plan.held_removals)},
        "errors": (),
        "held_removals": plan.held_removals,
        "ok": True,
        "hold_reason": plan.hold_reason,
        "plan": plan,
    }
    fields.update(overrides)
    return ImportReport(**fields)
