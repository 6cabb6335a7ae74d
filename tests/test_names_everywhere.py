"""Where a person reads, people, groups and sites have names: never an Entra object id where a name is known.

One sample trust (object ids are GUIDs, as Entra's are) goes through a first
import, a re-run that holds a mass removal, and every screen an admin reads:
the reports, the plan previews, the access table, an explanation, the status
and the Import Log's messages. Ids stay where a program reads (``to_dict``,
records, an HTML cell's hover title).
"""

from __future__ import annotations

import re
from typing import Any

from calm_azure_sync import (
    Actor,
    ExclusionPolicy,
    GroupMapping,
    InMemoryAuditSink,
    InMemoryDirectory,
    InMemoryUserStore,
    Reconciler,
    RemovalPolicy,
    SyncConfig,
)

from .helpers import OAK_TRUST_BIRCH_HIGH as HIERARCHY

GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
TITLE = re.compile(r'\stitle="[^"]*"')
ACTOR = Actor.system("nightly")
STAFF = "10000000-0000-4000-8000-0000000000a1"
SLT = "10000000-0000-4000-8000-0000000000a3"
CONFIG = SyncConfig(
    "oak",
    [GroupMapping(STAFF, "birch", {"Risk": "Member"}), GroupMapping(SLT, "birch", {"Risk": "Manager"})],
    exclusions=ExclusionPolicy(["scanner@*"]),
    # A mass removal, not a shrink, holds the leavers below (the removals_held entry of a shrink names
    # its groups, which the hold entries' own change covers).
    removal=RemovalPolicy(max_group_shrink_ratio=0.95),
)


def directory() -> InMemoryDirectory:
    people = [
        {"id": f"00000000-0000-4000-8000-{index:012d}", "displayName": f"Teacher {index}", "mail": f"t{index}@birch.sch.uk"}
        for index in range(14)
    ]
    people += [
        {"id": "00000000-0000-4000-8000-0000000000c1", "displayName": "Carol Singh", "mail": "carol@birch.sch.uk"},
        {"id": "00000000-0000-4000-8000-0000000000d1", "displayName": "Dan Poole", "mail": "dan@birch.sch.uk",
         "accountEnabled": False},
        {"id": "00000000-0000-4000-8000-0000000000f1", "displayName": "Scanner", "mail": "scanner@birch.sch.uk"},
    ]
    return InMemoryDirectory.from_dict({
        "users": people,
        "groups": [{"id": STAFF, "displayName": "Birch All Staff"}, {"id": SLT, "displayName": "Birch SLT"}],
        "members": {STAFF: [person["id"] for person in people], SLT: ["00000000-0000-4000-8000-0000000000c1"]},
    })


def visible_text(page: str) -> str:
    """What a reader sees of an HTML page: the ids in hover titles are for programs."""
    return TITLE.sub("", page)


def assert_named(label: str, text: str) -> None:
    found = GUID.findall(text)
    assert not found, f"{label} shows object ids {found[:3]}: {text[:600]}"


async def test_every_rendered_text_of_a_sample_run_names_people_groups_and_sites() -> None:
    tenant, store, sink = directory(), InMemoryUserStore(), InMemoryAuditSink()
    sync = Reconciler(tenant, store, sink, HIERARCHY)
    shown: dict[str, Any] = {}
    shown["first plan"] = await sync.plan(CONFIG, actor=ACTOR)
    first = await sync.run(CONFIG, actor=ACTOR)
    shown["first report"] = first
    shown["access after the first import"] = (await sync.plan(CONFIG, actor=ACTOR)).access_table()
    tenant.members[STAFF] = tenant.members[STAFF][12:]  # twelve teachers leave at once: held
    shown["held plan"] = await sync.plan(CONFIG, actor=ACTOR)
    held = await sync.run(CONFIG, actor=ACTOR)
    assert held.hold_id is not None and held.ok
    shown["held report"] = held
    shown["held access table"] = held.plan.access_table() if held.plan else None
    for who in ("carol@birch.sch.uk", "t3@birch.sch.uk", "dan@birch.sch.uk", "scanner@birch.sch.uk"):
        shown[f"explanation of {who}"] = await sync.explain(CONFIG, who, actor=ACTOR)
    shown["status"] = await sync.status("oak", actor=ACTOR)
    for label, value in shown.items():
        assert value is not None, label
        assert_named(f"str of {label}", str(value))
        assert_named(f"HTML of {label}", visible_text(value._repr_html_()))
    for event in sink.events:
        assert_named(f"Import Log {event.kind}", event.message)
    # What the admin reads says where and what, by name.
    assert "Birch High" in str(shown["first report"]) or "Birch High" in str(shown["first plan"])
    assert "Import" in str(held) and "held 24 removals for 12 people for review" in str(held)
    assert any("at Birch High" in event.message for event in sink.events)
    # One discovery entry per run (the quiet Import Log): its figures, no per-group rows.
    assert any(event.message.startswith("Read the directory") for event in sink.events)
    assert not any(event.message.startswith("Read group") for event in sink.events)
    table = str(shown["access after the first import"])
    assert "Carol Singh" in table and "Teacher 3" in table


async def test_ids_stay_where_programs_read() -> None:
    tenant, store, sink = directory(), InMemoryUserStore(), InMemoryAuditSink()
    sync = Reconciler(tenant, store, sink, HIERARCHY)
    report = await sync.run(CONFIG, actor=ACTOR)
    assert report.plan is not None
    records = report.plan.to_records()
    assert {record["site_id"] for record in records if record["site_id"]} == {"birch"}
    assert any(record["external_id"] == "00000000-0000-4000-8000-0000000000c1" for record in records)
    explanation = await sync.explain(CONFIG, "carol@birch.sch.uk", actor=ACTOR)
    assert explanation.to_dict()["external_id"] == "00000000-0000-4000-8000-0000000000c1"
    assert any(event.subject == STAFF for event in sink.events)


async def test_a_preview_leads_with_people_not_group_rows() -> None:
    sync = Reconciler(directory(), InMemoryUserStore(), InMemoryAuditSink(), HIERARCHY)
    plan = await sync.plan(CONFIG, actor=ACTOR)
    assert plan.changes[0].__class__.__name__ == "UpsertGroup"  # the order they apply in
    lines = str(plan).splitlines()
    first_row = lines[lines.index(next(line for line in lines if line.startswith("Changes"))) + 2]
    assert first_row.strip().startswith("create_user")
    assert plan.to_records()[0]["kind"] == "create_user"
    assert [record["kind"] for record in plan.to_records()][-2:] == ["upsert_group", "upsert_group"]
