"""How an ImportReport reads: duration, the plan's vocabulary, held changes with the hold id, records."""

from __future__ import annotations

import json
import re

import attrs

from calm_azure_sync import Actor, InMemoryAuditSink, InMemoryUserStore, Reconciler
from calm_azure_sync.demo import load_sample, seed_invited_users

from .review_plans import ATTACK, CHANGES, HELD, review_plan, review_report


def _line_with(lines: list[str], *words: str) -> str:
    found = [line for line in lines if all(word in line for word in words)]
    assert len(found) == 1, (words, lines)
    return found[0]


def test_text_says_outcome_duration_and_counts_in_the_plans_words():
    headline = str(review_report()).splitlines()[0]
    # counts say skipped=3 (the conflict among them); the plan has 2 skipped and 1 conflict, and so does the report.
    assert headline == (
        "Import run-7 of trust oak: ok in 12.5s (create_user=2, assign=3, unassign=1; "
        "held 2 removals for 2 people for review; skipped=2, excluded=1, conflict=1)"
    )


def test_repr_counts_in_the_plans_words():
    assert repr(review_report()) == (
        "<ImportReport run=run-7 trust='oak' ok=True (create_user=2, assign=3, unassign=1, skipped=2, "
        "excluded=1, conflict=1, held=2), errors=0, held=2>"
    )


def test_text_lists_held_changes_with_the_hold_id_stale_groups_and_conflicts():
    lines = str(review_report()).splitlines()
    assert "  Held removals (2): mass_removal: the run would remove access from many synced users at once" in lines
    assert "    To apply them once reviewed: run(config, actor=..., confirm_hold='hold-42')" in lines
    assert re.search(r"unassign\s+Gus Grey\s+gus@birch.sch.uk\s+birch\s+Risk\s+was Member", _line_with(lines, "Gus"))
    assert re.search(r"assign\s+Hal Hart\s+hal@ash.sch.uk\s+ash\s+Risk\s+Member\s+was Admin",
                     _line_with(lines, "Hal"))
    assert re.search(r"Former Staff\s+gid-gone\s+3$", _line_with(lines, "Former Staff"))
    assert _line_with(lines, "Conflicts").startswith("  Conflicts") and _line_with(lines, "Lee Lamb")
    assert "Ann Archer" not in str(review_report())  # the text report lists what needs a person, not every change


def test_a_failed_report_lists_its_errors():
    report = review_report(ok=False, errors=("group gid-ash: Graph timed out", f"store refused {ATTACK}"))
    text = str(report)
    assert text.splitlines()[0].startswith("Import run-7 of trust oak: FAILED in 12.5s")
    assert "  error: group gid-ash: Graph timed out" in text.splitlines()
    page = report._repr_html_()
    assert "<h5>Errors (2)</h5>" in page and "<script>" not in page and "store refused &lt;script&gt;" in page


def test_html_shows_duration_counts_holds_and_the_planned_changes_by_name():
    page = review_report()._repr_html_()
    assert page.startswith("<h4>Import run-7 of trust oak: ok</h4><p>Started 2025-03-01T09:00:00+00:00, took 12.5 s.</p>")
    for word, count in (("create_user", 2), ("skipped", 2), ("excluded", 1), ("conflict", 1), ("held", 2)):
        assert f"<tr><td>{word}</td><td>{count}</td></tr>" in page
    assert "<h5>Held removals (2)</h5>" in page and "confirm_hold=&#x27;hold-42&#x27;" in page
    assert '<td title="oid-gus">Gus Grey</td>' in page and "Former Staff" in page and "Lee Lamb" in page
    assert "<details><summary>Planned changes (14)</summary>" in page and '<td title="oid-ann">Ann Archer</td>' in page
    assert "<script>" not in page and "Eve &lt;script&gt;" in page


def test_a_report_without_a_plan_still_lists_its_held_removals():
    report = attrs.evolve(review_report(), plan=None)  # a run that stopped before it planned
    text = str(report)
    assert "skipped=2" not in text and "skipped=3, excluded=1, conflict=0" in text  # only the counts to go by
    assert "oid-gus" in _line_with(text.splitlines(), "unassign ")  # no names to go by either
    assert "confirm_hold" not in text
    assert report.to_records() == []
    assert "oid-gus" in report._repr_html_()
    with_id = attrs.evolve(report, hold_id="hold-43")
    assert "confirm_hold='hold-43'" in str(with_id) and "confirm_hold=&#x27;hold-43&#x27;" in with_id._repr_html_()


def test_the_reports_hold_id_is_the_one_to_confirm():
    report = review_report(hold_id="hold-43")  # the plan said hold-42; the run's hold is what a person confirms
    assert "confirm_hold='hold-43'" in str(report) and "hold-42" not in str(report)


def test_a_cleared_hold_is_said_in_plan_and_report():
    plan = review_plan(held_removals=(), hold_reason=None, hold_id=None, hold_cleared="hold-41")
    line = "Hold 'hold-41' is cleared: none of its removals is held any more (confirmed, or no longer planned)"
    assert line in str(plan).splitlines()
    assert f"  {line}" in str(review_report(plan)).splitlines()
    assert "Hold &#x27;hold-41&#x27; is cleared" in plan._repr_html_()


def test_records_are_the_plans_with_the_run_id():
    report = review_report()
    records = report.to_records()
    assert [{k: v for k, v in record.items() if k != "run_id"} for record in records] == review_plan().to_records()
    assert all(next(iter(record)) == "run_id" and record["run_id"] == "run-7" for record in records)
    assert len(records) == len(CHANGES) + len(HELD) and json.loads(json.dumps(records)) == records


async def test_plan_and_report_of_one_run_say_skipped_and_excluded_alike():
    sample = load_sample()
    store, audit = InMemoryUserStore(), InMemoryAuditSink()
    await seed_invited_users(store, sample)
    reconciler = Reconciler(sample.directory, store, audit, sample.hierarchy)
    admin = Actor("head-of-it", {"oak-trust"})
    plan = await reconciler.plan(sample.config, actor=admin)
    report = await reconciler.run(sample.config, actor=admin)
    words = re.compile(r"skipped=\d+, excluded=\d+, conflict=\d+")
    said_by_plan = words.findall(str(plan).splitlines()[0])
    assert said_by_plan and said_by_plan == words.findall(str(report).splitlines()[0])
    assert said_by_plan != ["skipped=0, excluded=0, conflict=0"]  # the sample leaves people out
