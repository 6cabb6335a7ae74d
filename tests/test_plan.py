"""How a Plan reads: repr, text, HTML and records name people and groups, and say who was left out how."""

from __future__ import annotations

import html
import json
import re

import pytest

from calm_azure_sync import Assign, CreateUser, Plan, Role, Skip, Unassign
from calm_azure_sync.core.plan import UserLabel, describe_change

from .review_plans import ATTACK, CHANGES, HELD, PEOPLE, review_plan


def _mentions_id(text: str, external_id: str) -> bool:
    # "oid-dan" inside "oid-dan-old" (the deleted account a relink replaces) is not a mention of Dan.
    return re.search(re.escape(external_id) + r"(?![-\w])", text) is not None


def _section(text: str, title: str) -> list[str]:
    """The indented lines under the line that starts with ``title``."""
    lines = text.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith(title))
    section = []
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        section.append(line)
    return section


def _line_with(lines: list[str], *words: str) -> str:
    found = [line for line in lines if all(word in line for word in words)]
    assert len(found) == 1, (words, lines)
    return found[0]


def test_repr_counts_skipped_excluded_and_conflict_apart():
    assert repr(review_plan()) == (
        "<Plan trust='oak' changes=14 (create_user=2, link_user=1, relink_user=1, update_user=1, assign=3, "
        "unassign=1, deactivate_user=1, upsert_group=1, add_group_member=1, remove_group_member=1, "
        "retire_group=1), skipped=2, excluded=1, conflict=1, held=2 (mass_removal)>"
    )


def test_repr_of_a_plan_with_only_out_of_scope_skips_keeps_its_short_form():
    plan = Plan("oak", changes=CHANGES[:2], skipped=(Skip("x", None, "no usable email address in Azure"),))
    assert repr(plan) == "<Plan trust='oak' changes=2 (create_user=1, assign=1), skipped=1>"


def test_text_names_people_and_groups_never_their_ids():
    text = str(review_plan())
    for external_id, label in PEOPLE.items():
        if external_id == "oid-max":  # unchanged access: the plan's text has nothing to say about Max
            continue
        assert label.display_name in text and label.email in text, external_id
        assert not _mentions_id(text, external_id), external_id
    for name in ("Birch Staff", "Birch SLT", "Ash Teachers", "Old Governors", "Former Staff"):
        assert name in text
    for group_id in ("gid-staff", "gid-slt", "gid-ash", "gid-old"):
        assert group_id not in text


def test_text_headline_uses_the_three_words_for_who_was_left_out():
    headline = str(review_plan()).splitlines()[0]
    assert headline.startswith("Plan for trust oak: 14 changes (create_user=2, ")
    assert headline.endswith("; skipped=2, excluded=1, conflict=1, held=2")


def test_conflicts_have_their_own_section_apart_from_skipped_and_excluded():
    text = str(review_plan())
    conflicts = _section(text, "Conflicts")
    assert _line_with(conflicts, "Lee Lamb", "lee@birch.sch.uk", "email conflict")
    skipped = _section(text, "Skipped (out of scope): 2")
    assert _line_with(skipped, "Ida Inch", "disabled") and _line_with(skipped, "Jon Jay", "guest")
    assert not any("Lee Lamb" in line or "Kim Kent" in line for line in skipped)
    excluded = _section(text, "Excluded (exclusion policy): 1")
    assert _line_with(excluded, "Kim Kent", "kim@*") and not any("Lee Lamb" in line for line in excluded)


def test_held_removals_list_who_what_site_module_and_the_hold_to_confirm():
    held = _section(str(review_plan()), "Held removals (2): mass_removal")
    assert "  To apply them once reviewed: run(config, actor=..., confirm_hold='hold-42')" in held
    assert "  groups: Birch SLT" in held
    gus = _line_with(held, "Gus Grey")
    assert re.search(r"unassign\s+Gus Grey\s+gus@birch.sch.uk\s+birch\s+Risk\s+was Member", gus)
    hal = _line_with(held, "Hal Hart")
    assert re.search(r"assign\s+Hal Hart\s+hal@ash.sch.uk\s+ash\s+Risk\s+Member\s+was Admin", hal)


def test_a_partial_read_hold_has_no_id_to_confirm():
    plan = review_plan(hold_reason="partial_read", hold_id=None, held_groups=(),
                       unreadable_groups={"gid-ash": "Graph timed out"})
    text = str(plan)
    held = _section(text, "Held removals (2): partial_read: a mapped group could not be read completely")
    assert "confirm_hold" not in text
    assert "  They wait for a run that reads every mapped group completely" in held
    assert _line_with(_section(text, "Groups not read completely"), "Ash Teachers", "gid-ash", "Graph timed out")


def test_stale_groups_are_named_with_the_removals_they_keep_held():
    stale = _section(str(review_plan()), "Stale mappings")
    assert re.search(r"Former Staff\s+gid-gone\s+3$", _line_with(stale, "Former Staff"))


def test_group_changes_and_relinks_are_described():
    changes = _section(str(review_plan()), "Changes (14)")
    assert re.search(r"upsert_group\s+Birch Staff\s+maps to birch$", _line_with(changes, "upsert_group"))
    assert re.search(r"add_group_member\s+Ann Archer\s+ann@birch.sch.uk\s+Birch Staff$",
                     _line_with(changes, "add_group_member"))
    assert re.search(r"remove_group_member\s+Fay Ford\s+fay@ash.sch.uk\s+Ash Teachers$",
                     _line_with(changes, "remove_group_member"))
    assert "Old Governors" in _line_with(changes, "retire_group")
    relink = _line_with(changes, "relink_user")
    assert "Dan Dale" in relink and "store user store-9" in relink and "oid-dan-old" in relink
    assert "Birch SLT, Birch Staff" in _line_with(changes, "Bob Baker", "assign")


def test_without_people_the_plan_names_users_from_its_changes_and_falls_back_to_ids():
    text = str(review_plan(people={}, group_names={}))
    assert "Ann Archer" in _line_with(_section(text, "Changes"), "create_user", "ann@birch.sch.uk")
    assert "Kim Kent" not in text  # a skip carries an email, not a name: the email names Kim, once
    assert _line_with(_section(text, "Excluded"), "kim@ash.sch.uk").count("kim@ash.sch.uk") == 1
    assert _mentions_id(text, "oid-fay") and "gid-ash" in text  # nothing names Fay or the Ash group
    assert "Birch Staff" in text  # the UpsertGroup names its group


def test_html_escapes_names_and_keeps_ids_as_titles():
    page = review_plan()._repr_html_()
    assert "<script>" not in page and f"Eve {html.escape(ATTACK)}" in page
    assert '<td title="oid-ann">Ann Archer</td><td>ann@birch.sch.uk</td>' in page
    assert '<td title="gid-slt, gid-staff">Birch SLT, Birch Staff</td>' in page
    assert ">oid-ann<" not in page and ">gid-staff<" not in page


def test_html_has_sections_for_holds_conflicts_and_counts():
    page = review_plan()._repr_html_()
    assert "<h5>Held removals (2)</h5>" in page and "confirm_hold=&#x27;hold-42&#x27;" in page
    assert "<h5>Conflicts" in page and "<h5>Skipped (out of scope): 2</h5>" in page
    assert "<h5>Excluded (exclusion policy): 1</h5>" in page and "Former Staff" in page
    for word, count in (("skipped", 2), ("excluded", 1), ("conflict", 1), ("held", 2)):
        assert f"<tr><td>{word}</td><td>{count}</td></tr>" in page


def test_control_and_bidi_characters_in_names_are_spelled_out():
    sneaky = "Zed\x1b[2J\u202eevil\nsecond line"
    plan = Plan("oak", changes=(CreateUser("oid-zed", "zed@x.org", sneaky),
                                Assign("oid-zed", "birch", "Risk", Role.MEMBER)),
                people={"oid-zed": UserLabel(sneaky, "zed@x.org")})
    for shown in (str(plan), plan._repr_html_(), str(plan.access_table())):
        assert "\x1b" not in shown and "\u202e" not in shown and "evil\nsecond" not in shown
        assert "Zed\\x1b[2J\\u202eevil\\nsecond line" in shown
    assert len(str(plan).splitlines()) == 5  # headline, section title, header, two rows


def test_records_are_plain_dicts_with_the_same_keys():
    plan = review_plan()
    records = plan.to_records()
    assert len(records) == len(CHANGES) + len(HELD)
    keys = list(records[0])
    assert keys == ["kind", "external_id", "name", "email", "site_id", "module", "role", "previous", "groups",
                    "group_ids", "held", "detail"]
    for record in records:
        assert list(record) == keys
        assert all(value is None or isinstance(value, (str, bool)) for value in record.values()), record
    assert json.loads(json.dumps(records)) == records
    assert [record["held"] for record in records] == [False] * len(CHANGES) + [True] * len(HELD)


def test_records_carry_names_roles_and_groups():
    records = review_plan().to_records()
    bob = next(r for r in records if r["kind"] == "assign" and r["external_id"] == "oid-bob")
    assert bob == {"kind": "assign", "external_id": "oid-bob", "name": "Bob Baker", "email": "bob@birch.sch.uk",
                   "site_id": "birch", "module": "Risk", "role": "Manager", "previous": "Member",
                   "groups": "Birch SLT, Birch Staff", "group_ids": "gid-slt, gid-staff", "held": False,
                   "detail": "was Member"}
    upsert = next(r for r in records if r["kind"] == "upsert_group")
    assert upsert["external_id"] is None and upsert["groups"] == "Birch Staff" and upsert["group_ids"] == "gid-staff"
    gus = next(r for r in records if r["external_id"] == "oid-gus")
    assert gus["held"] is True and gus["kind"] == "unassign" and gus["previous"] == "Member" and gus["role"] is None


def test_records_make_a_pandas_dataframe():
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame(review_plan().to_records())
    assert len(frame) == len(CHANGES) + len(HELD)
    assert set(frame[frame["held"]]["name"]) == {"Gus Grey", "Hal Hart"}


def test_describe_change_names_the_user_from_the_change_or_the_plan():
    create = CreateUser("oid-ann", "ann@birch.sch.uk", "Ann Archer")
    assert describe_change(create)[:3] == ["create_user", "Ann Archer", "ann@birch.sch.uk"]
    unassign = Unassign("oid-fay", "ash", "Policies", Role.MEMBER)
    assert describe_change(unassign) == ["unassign", "oid-fay", "", "ash", "Policies", "", "", "was Member"]
    assert describe_change(unassign, review_plan())[:3] == ["unassign", "Fay Ford", "fay@ash.sch.uk"]
    assign = Assign("oid-ann", "birch", "Risk", Role.ADMIN, because=("gid-slt",))
    assert describe_change(assign, review_plan())[5:7] == ["Admin", "Birch SLT"]
