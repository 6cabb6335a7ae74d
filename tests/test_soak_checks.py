"""The soak's checks (tests/soak_checks.py) on hand-made Import Logs: each one fails when its property is broken.

The soak itself is slow (``nox -s soak``); these run in CI so that a check
that could never fail would show here.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from calm_azure_sync import AuditEvent, AuditKind, Role, StoredUser

from . import soak_checks as checks

T0 = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
PERSON_OF = {"p1-a0": "p1", "p1-a1": "p1", "p2-a0": "p2"}
SLOT = ("grant", "p1", "s0", "Risk")


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def event(
    seconds: float, kind: AuditKind, run: str, job: int, *, detail: dict[str, Any] | None = None, message: str = ""
) -> AuditEvent:
    return AuditEvent(
        at=at(seconds), trust_site_id="t", kind=kind, message=message or kind.value, run_id=run,
        actor_id=f"system:soak-job-{job}", detail=detail or {},
    )  # fmt: skip


def run(start: float, end: float | None, run_id: str, job: int) -> list[AuditEvent]:
    events = [event(start, AuditKind.IMPORT_STARTED, run_id, job)]
    if end is not None:
        events.append(event(end, AuditKind.IMPORT_COMPLETED, run_id, job))
    return events


def unassign(seconds: float, run_id: str, job: int, external_id: str = "p1-a1") -> AuditEvent:
    change = {"kind": "unassign", "external_id": external_id, "site_id": "s0", "module": "Risk", "previous": "Member"}
    return event(seconds, AuditKind.ASSIGNMENT_REMOVED, run_id, job, detail=change)


def version(*, gives: bool) -> checks.Version:
    grants = {("p1", "s0", "Risk"): Role.MEMBER} if gives else {}
    return checks.Version(grants, frozenset(), frozenset({"p1"} if gives else ()))


def test_a_run_without_an_end_fails_unless_an_abandoned_entry_names_it():
    finished = run(0, 1, "r1", 1)
    assert checks.runs_end("t", finished).failed == 0
    dead = run(2, None, "r2", 2)
    result = checks.runs_end("t", finished + dead)
    assert (result.passed, result.failed) == (1, 1)
    assert "r2" in result.examples[0] and "job 2" in result.examples[0]
    closed = [*run(5, 6, "r3", 3), event(5.1, AuditKind.IMPORT_ABANDONED, "r3", 3, detail={"abandoned_run_id": "r2"})]
    assert checks.runs_end("t", finished + dead + closed).failed == 0
    refused = [event(7, AuditKind.IMPORT_REFUSED, "r4", 4)]  # never started: nothing to end
    assert checks.runs_end("t", refused).passed == 0


def test_runs_that_overlap_in_time_fail_and_a_later_abandoned_entry_does_not_stretch_a_run():
    apart = run(0, 1, "r1", 1) + run(2, 3, "r2", 2)
    assert checks.runs_overlap("t", apart).failed == 0
    late = [*run(0, None, "r1", 1), event(4, AuditKind.ERROR, "r1", 1)]
    result = checks.runs_overlap("t", late + run(2, 3, "r2", 2))
    assert result.failed == 1 and "r1" in result.examples[0] and "error" in result.examples[0]
    # The next run closes the dead one under the dead run's id: not an overlap.
    closed = [*run(0, None, "r1", 1), event(2.5, AuditKind.IMPORT_ABANDONED, "r1", 2)]
    assert checks.runs_overlap("t", closed + run(2, 3, "r2", 2)).failed == 0
    # A run that lost its lock may log its own import_failed late, and nothing else.
    fenced = [*run(0, None, "r1", 1), event(0.5, AuditKind.DISCOVERY, "r1", 1), event(4, AuditKind.IMPORT_FAILED, "r1", 1)]
    assert checks.runs_overlap("t", fenced + run(2, 3, "r2", 2)).failed == 0
    unfenced = [*fenced[:-1], event(3.5, AuditKind.ERROR, "r1", 1), fenced[-1]]
    assert checks.runs_overlap("t", unfenced + run(2, 3, "r2", 2)).failed == 1


def test_a_held_removal_applied_without_confirmation_fails_even_through_a_relinked_account():
    hold = checks.HoldSeen("t", at(1), "h1", {SLOT: Role.MEMBER})
    jobs = {2: checks.Job(2, "t", "unassign")}
    history = [(at(0), version(gives=False))]
    # Held for object p1-a0; removed from the re-created account p1-a1 (the same person).
    events = [*run(2, 4, "r2", 2), unassign(3, "r2", 2, external_id="p1-a1")]
    result = checks.held_removals("t", events, [hold], jobs, history, PERSON_OF)
    assert result.failed == 1 and "h1" in result.examples[0] and "p1" in result.examples[0]


def test_a_held_removal_is_fine_once_a_started_run_confirmed_the_hold():
    hold = checks.HoldSeen("t", at(1), "h1", {SLOT: Role.MEMBER})
    jobs = {2: checks.Job(2, "t", "unassign", confirm="h1", confirm_slots=frozenset({SLOT}))}
    events = [*run(2, 4, "r2", 2), unassign(3, "r2", 2)]
    result = checks.held_removals("t", events, [hold], jobs, [(at(0), version(gives=False))], PERSON_OF)
    assert (result.passed, result.failed) == (1, 0)
    # The hold stays pending while its confirmation runs: a poll then does not make the run's own removals wrongful.
    polled_meanwhile = checks.HoldSeen("t", at(2.5), "h1", {SLOT: Role.MEMBER})
    result = checks.held_removals("t", events, [hold, polled_meanwhile], jobs, [(at(0), version(gives=False))], PERSON_OF)
    assert (result.passed, result.failed) == (1, 0)
    # ... nor the removal of a later run when the confirming run did not apply it (its mode did not plan it):
    # the admin confirmed it with the hold (fault soak, stop 26: a held deactivation confirmed in unassign mode).
    later = [*run(2, 4, "r2", 2), *run(5, 7, "r3", 3), unassign(6, "r3", 3)]
    jobs[3] = checks.Job(3, "t", "deactivate")
    result = checks.held_removals("t", later, [hold, polled_meanwhile], jobs, [(at(0), version(gives=False))], PERSON_OF)
    assert (result.passed, result.failed) == (1, 0)
    # A hold seen again after its confirming run ended (the confirmation died before saving) still protects.
    polled_after = checks.HoldSeen("t", at(4.5), "h1", {SLOT: Role.MEMBER})
    result = checks.held_removals("t", later, [hold, polled_after], jobs, [(at(0), version(gives=False))], PERSON_OF)
    assert result.failed == 1
    # A confirmation that was refused (never started) confirms nothing.
    refused = [event(2, AuditKind.IMPORT_REFUSED, "r2", 2), *run(5, 7, "r3", 3), unassign(6, "r3", 3)]
    jobs[3] = checks.Job(3, "t", "unassign")
    result = checks.held_removals("t", refused, [hold], jobs, [(at(0), version(gives=False))], PERSON_OF)
    assert result.failed == 1


def test_a_held_removal_may_apply_after_the_directory_gave_the_access_back():
    hold = checks.HoldSeen("t", at(1), "h1", {SLOT: Role.MEMBER})
    jobs = {3: checks.Job(3, "t", "unassign")}
    history = [(at(0), version(gives=False)), (at(1.5), version(gives=True)), (at(2), version(gives=False))]
    events = [*run(3, 5, "r3", 3), unassign(4, "r3", 3)]
    assert checks.held_removals("t", events, [hold], jobs, history, PERSON_OF).failed == 0
    # Given back only after the removal: no excuse.
    history = [(at(0), version(gives=False)), (at(4.5), version(gives=True))]
    assert checks.held_removals("t", events, [hold], jobs, history, PERSON_OF).failed == 1


def test_a_downgrade_counts_as_a_removal_and_an_upgrade_does_not():
    down = {"kind": "assign", "external_id": "p1-a0", "site_id": "s0", "module": "Risk", "role": "Member",
            "previous": "Manager"}  # fmt: skip
    assert checks.removal_slot(down, PERSON_OF) == (SLOT, Role.MANAGER)
    assert checks.removal_slot({**down, "role": "Admin"}, PERSON_OF) is None
    assert checks.removal_slot({**down, "previous": None}, PERSON_OF) is None
    member = {"kind": "remove_group_member", "group_external_id": "g1", "external_id": "p2-a0"}
    assert checks.removal_slot(member, PERSON_OF) == (("member", "g1", "p2"), None)
    assert checks.removal_slot({"kind": "deactivate_user", "external_id": "p2-a0"}, PERSON_OF) == (("active", "p2"), None)


def test_a_removal_in_keep_mode_fails():
    jobs = {1: checks.Job(1, "t", "keep"), 2: checks.Job(2, "t", "unassign")}
    events = [*run(0, 2, "r1", 1), unassign(1, "r1", 1), *run(3, 5, "r2", 2), unassign(4, "r2", 2)]
    result = checks.keep_removes_nothing("t", events, jobs, PERSON_OF)
    assert (result.passed, result.failed) == (0, 1) and "r1" in result.examples[0]


def test_duplicate_emails_or_object_ids_fail():
    users = [StoredUser("1", "Ann@x.org", "Ann", "a0"), StoredUser("2", "ann@x.org", "Ann", "a1")]
    result = checks.duplicates(users)
    assert result.failed == 1 and result.failed_by == {"ann@x.org": 1}
    assert checks.duplicates([StoredUser("1", "a@x.org", "A", "a0"), StoredUser("2", "b@x.org", "B", "a0")]).failed == 1
    assert checks.duplicates([StoredUser("1", "a@x.org", "A", "a0"), StoredUser("2", "b@x.org", "B")]).failed == 0


def test_grants_must_equal_the_directory_bar_what_the_pending_hold_keeps():
    expected = {("p1", "s0", "Risk"): Role.MEMBER}
    assert checks.grants_match("t", expected, expected, {}).failed == 0
    extra = {**expected, ("p2", "s0", "Risk"): Role.ADMIN}
    assert checks.grants_match("t", extra, expected, {}).failed == 1
    assert checks.grants_match("t", extra, expected, {("grant", "p2", "s0", "Risk"): Role.ADMIN}).failed == 0
    missing = checks.grants_match("t", {}, expected, {SLOT: Role.MEMBER})
    assert missing.failed == 1 and "wrongful removal" in missing.examples[0]
    higher = {("p1", "s0", "Risk"): Role.ADMIN}
    assert checks.grants_match("t", higher, expected, {}).failed == 1
    assert checks.grants_match("t", higher, expected, {SLOT: Role.ADMIN}).failed == 0


def test_group_members_must_equal_the_directory_bar_held_removals():
    assert checks.members_match("t", {("g1", "p1")}, {("g1", "p1")}, {}).failed == 0
    assert checks.members_match("t", {("g1", "p1")}, set(), {}).failed == 1
    assert checks.members_match("t", {("g1", "p1")}, set(), {("member", "g1", "p1"): None}).failed == 0
    assert checks.members_match("t", set(), {("g1", "p1")}, {}).failed == 1
