"""The review module: the access table, the skip vocabulary, and the table builders every view uses."""

from __future__ import annotations

import html

import pytest

from calm_azure_sync import Assign, Plan, Role, Skip, Unassign
from calm_azure_sync._html import Cell, html_table, text_table, visible
from calm_azure_sync.core.plan import UserLabel
from calm_azure_sync.review import AccessRow, AccessTable, skip_category, skip_counts

from .review_plans import ACCESS_BEFORE, ATTACK, SKIPPED, review_plan


def _rows(table: AccessTable) -> dict[tuple[str, str, str], AccessRow]:
    return {(row.external_id, row.site_id, row.module): row for row in table}


# --- the skip vocabulary ---


def test_each_skip_is_skipped_excluded_or_conflict():
    assert [skip.category for skip in SKIPPED] == ["skipped", "skipped", "excluded", "conflict"]
    assert [skip_category(skip) for skip in SKIPPED] == [skip.category for skip in SKIPPED]  # the v0.3 name
    assert skip_counts(SKIPPED) == {"skipped": 2, "excluded": 1, "conflict": 1}
    assert skip_counts(()) == {"skipped": 0, "excluded": 0, "conflict": 0}
    # A conflict is a conflict even if a caller also flagged it excluded: it needs a person either way.
    assert Skip("x", "x@y", "both", excluded=True, conflict=True).category == "conflict"


# --- the access table ---


def test_access_table_gives_the_role_after_the_run_and_what_changed():
    rows = _rows(review_plan().access_table())
    ann = rows["oid-ann", "birch", "Policies"]
    assert (ann.role, ann.before, ann.change, ann.status, ann.groups) == (
        Role.MEMBER, None, "added", "added", ("Birch Staff",))
    bob = rows["oid-bob", "birch", "Risk"]
    assert (bob.role, bob.before, bob.change, bob.status) == (Role.MANAGER, Role.MEMBER, "changed", "changed from Member")
    assert bob.groups == ("Birch SLT", "Birch Staff")
    fay = rows["oid-fay", "ash", "Policies"]
    assert (fay.role, fay.before, fay.change, fay.status) == (None, Role.MEMBER, "removed", "removed (was Member)")
    eve = rows["oid-eve", "ash", "Risk"]
    assert (eve.role, eve.change, eve.name) == (Role.ADMIN, "added", f"Eve {ATTACK}")
    for slot, role in ACCESS_BEFORE["oid-max"].items():
        max_ = rows[("oid-max", *slot)]
        assert (max_.role, max_.before, max_.change, max_.status) == (role, role, "unchanged", "")
    assert len(rows) == 8  # Ann, Bob, Eve, Fay, Gus, Hal, and Max twice: nobody else has synced access


def test_held_removals_keep_the_role_they_would_take_away():
    rows = _rows(review_plan().access_table())
    gus = rows["oid-gus", "birch", "Risk"]
    assert (gus.role, gus.before, gus.planned, gus.change) == (Role.MEMBER, Role.MEMBER, None, "held")
    assert gus.status == "held: would be removed" and gus.cell() == "Member (held: would be removed)"
    hal = rows["oid-hal", "ash", "Risk"]
    assert (hal.role, hal.before, hal.planned) == (Role.ADMIN, Role.ADMIN, Role.MEMBER)
    assert hal.cell() == "Admin (held: would change to Member)"


def test_access_table_filters_by_site_and_by_change():
    plan = review_plan()
    birch = plan.access_table("birch")
    assert {row.site_id for row in birch} == {"birch"} and birch.site_id == "birch"
    assert {row.external_id for row in birch} == {"oid-ann", "oid-bob", "oid-gus", "oid-max"}
    changed = plan.access_table(changed_only=True)
    assert all(row.change != "unchanged" for row in changed) and "oid-max" not in {r.external_id for r in changed}
    assert plan.access_table().counts() == {"unchanged": 2, "added": 2, "changed": 1, "removed": 1, "held": 2}
    assert len(plan.access_table("nowhere")) == 0


def test_access_table_is_sorted_by_name_then_site_and_module():
    names = [(row.name, row.site_id, row.module) for row in review_plan().access_table()]
    assert names == sorted(names, key=lambda n: (n[0].casefold(), n[1], n[2]))
    assert names[0][0] == "Ann Archer" and names[-2:] == [("Max Moss", "ash", "Risk"), ("Max Moss", "birch", "Policies")]


def test_without_access_before_the_changes_previous_roles_stand_in():
    plan = review_plan(access_before={})
    rows = _rows(plan.access_table())
    assert rows["oid-bob", "birch", "Risk"].status == "changed from Member"
    assert rows["oid-fay", "ash", "Policies"].before == Role.MEMBER
    assert rows["oid-hal", "ash", "Risk"].role == Role.ADMIN  # a held downgrade keeps what it would lower
    assert all(row.external_id != "oid-max" for row in rows.values())  # nothing says what Max had


def test_access_table_shows_as_a_pivot_of_users_by_site_and_module():
    table = review_plan().access_table()
    lines = str(table).splitlines()
    assert lines[0] == (
        "Access after the run (trust oak): 7 users; 2 unchanged, 2 added, 1 changed, 1 removed, 2 held"
    )
    header = lines[1].split()
    assert header[:2] == ["user", "email"] and "ash / Risk" in lines[1] and "birch / Policies" in lines[1]
    bob = next(line for line in lines if "Bob Baker" in line)
    assert "bob@birch.sch.uk" in bob and "Manager (changed from Member)" in bob
    assert "removed (was Member)" in next(line for line in lines if "Fay Ford" in line)
    assert not any("oid-" in line for line in lines)
    page = table._repr_html_()
    assert "<script>" not in page and f'<td title="oid-eve">{html.escape("Eve " + ATTACK)}</td>' in page
    assert "<th>user</th><th>email</th><th>ash / Policies</th><th>ash / Risk</th><th>birch / Policies</th>" in page
    assert ('<tr><td title="oid-max">Max Moss</td><td>max@ash.sch.uk</td>'
            "<td></td><td>Member</td><td>Manager</td><td></td></tr>") in page
    assert "<th>Risk</th>" in review_plan().access_table("birch")._repr_html_()  # one site: the module is enough


def test_access_table_records_are_plain_dicts_with_the_same_keys():
    records = review_plan().access_table().to_records()
    assert len(records) == 8
    keys = ["external_id", "name", "email", "site_id", "module", "role", "before", "change", "status", "groups"]
    for record in records:
        assert list(record) == keys
        assert all(value is None or isinstance(value, str) for value in record.values()), record
    fay = next(record for record in records if record["external_id"] == "oid-fay")
    assert fay == {"external_id": "oid-fay", "name": "Fay Ford", "email": "fay@ash.sch.uk", "site_id": "ash",
                   "module": "Policies", "role": None, "before": "Member", "change": "removed",
                   "status": "removed (was Member)", "groups": None}


def test_access_table_records_make_a_pandas_dataframe():
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame(review_plan().access_table().to_records())
    pivot = frame.pivot(index="name", columns=["site_id", "module"], values="role")
    assert pivot.loc["Bob Baker", ("birch", "Risk")] == "Manager"


def test_a_user_without_a_label_is_named_by_the_object_id():
    plan = Plan("oak", changes=(Assign("oid-zed", "birch", "Risk", Role.MEMBER),),
                people={"oid-amy": UserLabel(None, "amy@x.org")},
                held_removals=(Unassign("oid-amy", "birch", "Risk", Role.ADMIN),), hold_reason="mass_removal")
    rows = _rows(plan.access_table())
    assert (rows["oid-zed", "birch", "Risk"].name, rows["oid-zed", "birch", "Risk"].email) == ("oid-zed", None)
    assert (rows["oid-amy", "birch", "Risk"].name, rows["oid-amy", "birch", "Risk"].email) == ("amy@x.org", "amy@x.org")


# --- the table builders ---


def test_html_table_escapes_cells_titles_and_headers():
    page = html_table([ATTACK], [[Cell(ATTACK, title='"><script>x</script>'), None, 3]])
    assert "<script>" not in page
    assert '<td title="&quot;&gt;&lt;script&gt;x&lt;/script&gt;">&lt;script&gt;' in page
    assert "<td></td><td>3</td>" in page


def test_html_table_says_how_many_rows_it_left_out():
    page = html_table(["n"], ([index] for index in range(205)))
    assert page.count("<tr>") == 201 and page.endswith("<p>… and 5 more</p>")


def test_visible_spells_out_controls_and_bidi_overrides_but_keeps_joiners():
    assert visible("a\nb\x1b[0m\u202ec\u2066") == "a\\nb\\x1b[0m\\u202ec\\u2066"
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # a zero-width non-joiner belongs in the word
    assert visible(persian) == persian and visible("👩\u200d💻") == "👩\u200d💻"


def test_text_table_aligns_cuts_and_drops_empty_columns():
    lines = text_table(["a", "empty", "last"], [["x" * 50, None, "y" * 130], ["short", "", "z"]], limit=1)
    assert lines[0] == "a" + " " * 41 + "last"
    assert lines[1] == "x" * 39 + "…" + "  " + "y" * 119 + "…"
    assert lines[2] == "… and 1 more"
    assert text_table(["a"], []) == []


def test_given_the_total_a_table_reads_no_further_than_it_shows():
    def rows():
        yield from ([index] for index in range(200))
        raise AssertionError("read past the shown rows")

    assert html_table(["n"], rows(), total=1000).endswith("<p>… and 800 more</p>")
    assert text_table(["n"], rows(), limit=3, total=1000)[-1] == "… and 997 more"


def test_a_long_plan_shows_its_first_rows_and_counts_the_rest():
    many = tuple(Assign(f"oid-{index}", "birch", "Risk", Role.MEMBER) for index in range(500))
    plan = Plan("oak", changes=many)
    assert str(plan).splitlines()[-1] == "  … and 450 more"
    assert plan._repr_html_().endswith("<p>… and 300 more</p>")
    table = plan.access_table()
    assert str(table).splitlines()[-1] == "  … and 450 more" and table._repr_html_().endswith("<p>… and 300 more</p>")


def test_a_long_html_table_scrolls_in_its_own_box():
    short = html_table(["n"], ([index] for index in range(20)))
    assert short.startswith("<table>")
    long = html_table(["n"], ([index] for index in range(21)))
    assert long.startswith('<div style="max-height: 32em; overflow-y: auto"><table>') and long.endswith("</table></div>")
