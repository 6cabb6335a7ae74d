"""The soak's judgements, as pure functions over what it recorded (no IO; tested in test_soak_checks.py).

The soak (:mod:`tests.soak_harness`) records the Import Log of every trust,
every job it ran (mode, the hold it confirmed), every hold it saw pending
(via ``Reconciler.pending_hold``), and the history of each fake directory (what
it implied, version by version). These functions judge that record:

- :func:`runs_end`: every ``import_started`` has an end (``import_completed``,
  ``import_failed``, or an ``import_abandoned`` naming it);
- :func:`runs_overlap`: no two runs of one trust overlap in time (a run lasts
  from its ``import_started`` to its last own entry);
- :func:`held_removals`: no removal that was ever held is applied unless the
  test confirmed a hold holding it, or the directory implied the access again
  in between (then the hold rightly dropped it);
- :func:`keep_removes_nothing`: a run in ``keep`` mode applies no removal;
- :func:`duplicates`: no two store users share an email or an object id;
- :func:`grants_match` / :func:`members_match`: the store's synced grants and
  group members equal what the directory implies, except removals a pending
  hold still holds.

Identity is the *person* (the soak's own key for one email), not the Entra
object id: an account deleted and re-created with the same email is the same
person, so a hold on the old account protects the new one (API.md §11).
"""

from __future__ import annotations

import bisect
import collections
import datetime as dt
import itertools
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from calm_azure_sync import AuditKind, Role

Slot = tuple[str, ...]
"""("grant", person, site, module), ("active", person) or ("member", group, person)."""

REMOVAL_KINDS = frozenset(
    {AuditKind.ASSIGNMENT_REMOVED, AuditKind.ASSIGNMENT_CHANGED, AuditKind.USER_DEACTIVATED, AuditKind.GROUP_MEMBER_REMOVED}
)
END_KINDS = frozenset({AuditKind.IMPORT_COMPLETED, AuditKind.IMPORT_FAILED})
EXAMPLES = 8


@attrs.define
class CheckResult:
    """One check over the soak: how many things it judged, how many were wrong, a few of them."""

    name: str
    passed: int = 0
    failed: int = 0
    examples: list[str] = attrs.field(factory=list)
    failed_by: collections.Counter[str] = attrs.field(factory=collections.Counter)
    """Failures by what the message starts with (the trust, or the email of a duplicate)."""

    def ok(self) -> None:
        self.passed += 1

    def fail(self, what: str) -> None:
        self.failed += 1
        self.failed_by[what.split(":", 1)[0].split(" ", 1)[0]] += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(what)

    def merge(self, other: CheckResult) -> None:
        self.passed += other.passed
        self.failed += other.failed
        self.failed_by.update(other.failed_by)
        self.examples.extend(other.examples[: max(0, EXAMPLES - len(self.examples))])

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "failed": self.failed, "examples": list(self.examples)}


@attrs.frozen
class Version:
    """What one version of a trust's directory implies: grants, group memberships, active people."""

    grants: Mapping[tuple[str, str, str], Role]
    members: frozenset[tuple[str, str]]  # (group, person)
    active: frozenset[str]

    def implies(self, slot: Slot, role: Role | None) -> bool:
        """Whether this directory gives ``slot`` (at ``role`` or above for a grant)."""
        if slot[0] == "grant":
            given = self.grants.get((slot[1], slot[2], slot[3]))
            return given is not None and (role is None or given >= role)
        if slot[0] == "member":
            return (slot[1], slot[2]) in self.members
        return slot[1] in self.active


@attrs.frozen
class Job:
    """One import the soak ran: its removal mode, and the hold it confirmed (with that hold's slots)."""

    job: int
    trust: str
    mode: str
    confirm: str | None = None
    confirm_slots: frozenset[Slot] = frozenset()


@attrs.frozen
class HoldSeen:
    """A pending hold the soak saw (``Reconciler.pending_hold``, or a ``removals_held`` entry)."""

    trust: str
    at: dt.datetime
    hold_id: str
    slots: Mapping[Slot, Role | None]


def job_of(event: Any) -> int | None:
    """The soak job that wrote ``event`` (its actor is ``system:soak-job-N``)."""
    actor = event.actor_id or ""
    prefix = "system:soak-job-"
    return int(actor[len(prefix) :]) if actor.startswith(prefix) and actor[len(prefix) :].isdigit() else None


def removal_slot(change: Mapping[str, Any], person_of: Mapping[str, str]) -> tuple[Slot, Role | None] | None:
    """The slot a removal (a change as ``change_to_dict`` writes it) takes away, and the role it had; None otherwise."""
    kind = change.get("kind")
    person = person_of.get(str(change.get("external_id")), str(change.get("external_id")))
    previous = Role.parse(change["previous"]) if change.get("previous") else None
    if kind == "unassign":
        return ("grant", person, str(change["site_id"]), str(change["module"])), previous
    if kind == "assign":
        if previous is None or Role.parse(change["role"]) >= previous:
            return None  # a grant or an upgrade
        return ("grant", person, str(change["site_id"]), str(change["module"])), previous
    if kind == "deactivate_user":
        return ("active", person), None
    if kind == "remove_group_member":
        return ("member", str(change["group_external_id"]), person), None
    return None


def hold_slots(changes: Iterable[Mapping[str, Any]], person_of: Mapping[str, str]) -> dict[Slot, Role | None]:
    slots: dict[Slot, Role | None] = {}
    for change in changes:
        found = removal_slot(change, person_of)
        if found is not None:
            slots[found[0]] = found[1]
    return slots


def _runs(events: Sequence[Any]) -> dict[str, list[Any]]:
    """Each run's entries, oldest first."""
    runs: dict[str, list[Any]] = defaultdict(list)
    for event in sorted(events, key=lambda e: e.at):
        if event.run_id:
            runs[event.run_id].append(event)
    return runs


def _run_job(run_events: Sequence[Any]) -> int | None:
    """The soak job of a run: the actor of its ``import_started`` (else of its first entry)."""
    started = [event for event in run_events if event.kind == AuditKind.IMPORT_STARTED]
    return job_of((started or list(run_events))[0])


def _abandoned_names(events: Sequence[Any]) -> set[str]:
    """Run ids an ``import_abandoned`` entry names (its own run id, or any text in its detail)."""
    named: set[str] = set()
    for event in events:
        if event.kind != AuditKind.IMPORT_ABANDONED:
            continue
        named.update(str(value) for value in _strings(event.detail))
        if event.subject:
            named.add(str(event.subject))
        if event.message:
            named.update(event.message.replace(",", " ").replace(":", " ").split())
    return named


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def runs_end(trust: str, events: Sequence[Any]) -> CheckResult:
    """Every run that logged ``import_started`` has an end entry (or the next run closed it)."""
    result = CheckResult("every started run ended")
    abandoned = _abandoned_names(events)
    for run_id, run_events in _runs(events).items():
        kinds = {event.kind for event in run_events}
        if AuditKind.IMPORT_STARTED not in kinds:
            continue
        if kinds & END_KINDS or run_id in abandoned:
            result.ok()
        else:
            started = min(event.at for event in run_events if event.kind == AuditKind.IMPORT_STARTED)
            job = _run_job(run_events)
            result.fail(
                f"{trust}: run {run_id} (job {job}) started {started.isoformat()} and never ended "
                f"({len(run_events)} entries, last: {max(run_events, key=lambda e: e.at).kind.value})"
            )
    return result


def run_intervals(events: Sequence[Any]) -> list[tuple[dt.datetime, dt.datetime, str]]:
    """Each started run's (start, last entry that counts, run id).

    Not counted: an ``import_abandoned`` entry (the next run writes it about
    this one), and a final ``import_failed`` (API.md §11: after losing its lock
    a run may log at most its own ``import_failed``, whenever it notices).
    """
    intervals = []
    for run_id, run_events in _runs(events).items():
        starts = [event.at for event in run_events if event.kind == AuditKind.IMPORT_STARTED]
        if not starts:
            continue  # refused before it started: it never held the lock
        own = [event for event in run_events if event.kind != AuditKind.IMPORT_ABANDONED]
        if len(own) > 1 and own[-1].kind == AuditKind.IMPORT_FAILED:
            own = own[:-1]
        intervals.append((min(starts), max(event.at for event in own), run_id))
    return sorted(intervals)


def runs_overlap(trust: str, events: Sequence[Any]) -> CheckResult:
    """No run of ``trust`` starts before an earlier-started one has logged its last entry."""
    result = CheckResult("no overlapping runs")
    intervals = run_intervals(events)
    by_run = _runs(events)
    for index, (start, end, run_id) in enumerate(intervals):
        clash = next(
            ((s, e, r) for s, e, r in intervals[index + 1 :] if s < end),
            None,
        )
        if clash is None:
            result.ok()
            continue
        later = [event for event in by_run[run_id] if event.at > clash[0]]
        result.fail(
            f"{trust}: run {run_id} (job {_run_job(by_run[run_id])}, {start:%H:%M:%S.%f}-{end:%H:%M:%S.%f}) overlaps "
            f"run {clash[2]} (job {_run_job(by_run[clash[2]])}, started {clash[0]:%H:%M:%S.%f}); "
            f"{len(later)} entries of the first after the second started: "
            + ", ".join(sorted({event.kind.value for event in later}))
        )
    return result


def applied_removals(
    events: Sequence[Any], person_of: Mapping[str, str]
) -> list[tuple[dt.datetime, Slot, Any]]:
    """Every removal the Import Log says was applied: (when, slot, the event)."""
    found = []
    for event in events:
        if event.kind not in REMOVAL_KINDS or not isinstance(event.detail, Mapping):
            continue
        slot = removal_slot(event.detail, person_of)
        if slot is not None:
            found.append((event.at, slot[0], event))
    return sorted(found, key=lambda item: item[0])


def held_removals(
    trust: str,
    events: Sequence[Any],
    holds: Sequence[HoldSeen],
    jobs: Mapping[int, Job],
    history: Sequence[tuple[dt.datetime, Version]],
    person_of: Mapping[str, str],
) -> CheckResult:
    """No held removal is applied unless confirmed, or dropped because the directory gave the access back.

    Per slot, in time order: a hold that holds it protects it; a started run
    that confirmed a hold holding it lifts the protection; so does any
    directory version (from the one current when the hold was seen to the
    removal) that implies the access again. A removal applied while protected
    is a failure; every removal of a slot that was ever held is judged.
    """
    result = CheckResult("no held removal applied unconfirmed")
    markers: list[tuple[dt.datetime, int, str, Slot, Any]] = []
    ever_held: dict[Slot, Role | None] = {}
    by_run = _runs(events)
    confirming_runs: dict[str, list[tuple[dt.datetime, dt.datetime]]] = defaultdict(list)
    for start, end, run_id in run_intervals(events):
        number = _run_job(by_run[run_id])
        job = jobs.get(number) if number is not None else None
        if job is not None and job.confirm is not None:
            confirming_runs[job.confirm].append((start, end))
    for hold in holds:
        if any(start <= hold.at <= end for start, end in confirming_runs.get(hold.hold_id, ())):
            # Polled while a run confirming it ran: the hold is still pending until that run saves, and
            # the confirmation covers every removal it holds (one the run does not apply is forgotten).
            continue
        for slot, role in hold.slots.items():
            markers.append((hold.at, 0, "held", slot, (hold.hold_id, role)))
            ever_held.setdefault(slot, role)
    for run_events in _runs(events).values():
        number = _run_job(run_events)
        job = jobs.get(number) if number is not None else None
        if job is None or job.confirm is None:
            continue
        started = [event.at for event in run_events if event.kind == AuditKind.IMPORT_STARTED]
        if started:
            for slot in job.confirm_slots:
                markers.append((min(started), 1, "confirmed", slot, job.confirm))
    for at, slot, event in applied_removals(events, person_of):
        if slot in ever_held:
            markers.append((at, 2, "removed", slot, event))
    times = [at for at, _version in history]
    by_slot: dict[Slot, list[tuple[dt.datetime, int, str, Slot, Any]]] = defaultdict(list)
    for marker in markers:
        by_slot[marker[3]].append(marker)
    for slot, slot_markers in by_slot.items():
        slot_markers.sort(key=lambda m: (m[0], m[1]))
        protected_since: dt.datetime | None = None
        hold_id = ""
        role = ever_held.get(slot)
        for at, _order, what, _slot, payload in slot_markers:
            if what == "held":
                if protected_since is None:
                    protected_since, hold_id, role = at, payload[0], payload[1]
            elif what == "confirmed":
                protected_since = None
            elif protected_since is not None:
                number = job_of(payload)
                confirming = jobs.get(number) if number is not None else None
                if confirming is not None and slot in confirming.confirm_slots:
                    result.ok()  # applied by the very run that confirmed it (the hold stays pending until then)
                elif _implied_between(history, times, protected_since, at, slot, role):
                    result.ok()
                else:
                    mode = jobs[number].mode if number in jobs else "?"
                    result.fail(
                        f"{trust}: {payload.kind.value} {'/'.join(slot)} at {at:%H:%M:%S.%f} by run {payload.run_id} "
                        f"(job {number}, mode {mode}) was held by hold {hold_id} since {protected_since:%H:%M:%S.%f}, "
                        f"never confirmed, and the directory never gave it back: {payload.message}"
                    )
                protected_since = None
            else:
                result.ok()
    return result


def _implied_between(
    history: Sequence[tuple[dt.datetime, Version]],
    times: list[dt.datetime],
    since: dt.datetime,
    until: dt.datetime,
    slot: Slot,
    role: Role | None,
) -> bool:
    first = max(0, bisect.bisect_right(times, since) - 1)
    for _at, version in itertools.takewhile(lambda item: item[0] <= until, history[first:]):
        if version.implies(slot, role):
            return True
    return False


def keep_removes_nothing(
    trust: str, events: Sequence[Any], jobs: Mapping[int, Job], person_of: Mapping[str, str]
) -> CheckResult:
    """A run whose configuration said ``keep`` applied no removal (grants, activation, memberships)."""
    result = CheckResult("keep mode removes nothing")
    removed_by_run: dict[str, list[Any]] = defaultdict(list)
    for _at, _slot, event in applied_removals(events, person_of):
        removed_by_run[event.run_id].append(event)
    for run_id, run_events in _runs(events).items():
        number = _run_job(run_events)
        if number not in jobs or jobs[number].mode != "keep":
            continue
        if not any(event.kind == AuditKind.IMPORT_STARTED for event in run_events):
            continue
        if removed_by_run.get(run_id):
            first = removed_by_run[run_id][0]
            result.fail(
                f"{trust}: run {run_id} (job {number}) in keep mode applied {len(removed_by_run[run_id])} removals, "
                f"e.g. {first.kind.value}: {first.message}"
            )
        else:
            result.ok()
    return result


def duplicates(users: Sequence[Any]) -> CheckResult:
    """No email and no object id held by two store users."""
    result = CheckResult("no duplicate user")
    by_email: dict[str, list[str]] = defaultdict(list)
    by_external: dict[str, list[str]] = defaultdict(list)
    for user in users:
        by_email[user.email.lower()].append(user.user_id)
        if user.external_id:
            by_external[user.external_id].append(user.user_id)
    for key, ids in itertools.chain(by_email.items(), by_external.items()):
        if len(ids) > 1:
            result.fail(f"{key} is held by {len(ids)} store users: {', '.join(ids)}")
        else:
            result.ok()
    return result


def grants_match(
    trust: str,
    actual: Mapping[tuple[str, str, str], Role],
    expected: Mapping[tuple[str, str, str], Role],
    held: Mapping[Slot, Role | None],
    *,
    name: str = "every synced grant is what the mapping implies",
) -> CheckResult:
    """The store's synced grants (person, site, module) equal the directory's, bar removals still held."""
    result = CheckResult(name)
    for key in sorted(actual.keys() | expected.keys()):
        have, want = actual.get(key), expected.get(key)
        slot = ("grant", *key)
        if have == want:
            result.ok()
        elif want is None or (have is not None and have > want):
            if slot in held:
                result.ok()  # a removal or downgrade the pending hold keeps
            else:
                result.fail(f"{trust}: {'/'.join(key)} is {have.value if have else None} in the store, "
                            f"the directory gives {want.value if want else 'nothing'} (wrongful grant)")
        else:
            result.fail(f"{trust}: {'/'.join(key)} is {have.value if have else 'missing'} in the store, "
                        f"the directory gives {want.value} (wrongful removal)")
    return result


def members_match(
    trust: str,
    actual: Iterable[tuple[str, str]],
    expected: Iterable[tuple[str, str]],
    held: Mapping[Slot, Role | None],
) -> CheckResult:
    """The store's synced group members (group, person) equal the directory's, bar removals still held."""
    result = CheckResult("every synced group member is what the directory implies")
    have, want = set(actual), set(expected)
    for group, person in sorted(have | want):
        if (group, person) in have and (group, person) in want:
            result.ok()
        elif (group, person) in have:
            if ("member", group, person) in held:
                result.ok()
            else:
                result.fail(f"{trust}: {person} is a member of {group} in the store but not in the directory")
        else:
            result.fail(f"{trust}: {person} is a member of {group} in the directory but not in the store")
    return result
