"""A settled trust: nothing to plan until something changes. Pure.

An incremental run whose delta round reports no change has nothing new from
the directory; whether it has anything to *plan* depends on the rest of the
plan's inputs too. Those are: the configuration, the hierarchy, the trust's
sync state, what the store holds, and the directory (the delta cache and
its cursor). A run that planned **nothing** (no change, no hold, no skip
that needs a person, every group read) records a :class:`Settled` whose
``key`` digests all of them, with the store's
:meth:`~calm_azure_sync.store.protocol.VersionedStore.data_version` read
*before* the run loaded the store. The next run compares: when the key is
the same and the delta is empty, planning again could only plan nothing
(the planner is a function of those inputs, and idempotent), so the run
skips the store load and the planner and says so in the report and the
Import Log. Anything else, a store write by anyone included, changes the
key and the run plans in full as usual.

The record lives in ``SyncState.delta["settled"]``, so a state saved by a
run that settled nothing drops it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .._gc import collector_paused, without_collector
from ..core.plan import Skip
from ..core.state import SyncState
from ..model import DirectorySnapshot, Site
from ..policies.config import SyncConfig

if TYPE_CHECKING:  # the read imports nothing of the planner's plan at run time
    from ..core.plan import Plan

__all__ = ["Settled", "leaves_no_question", "plans_nothing", "run_key", "settled_key", "settled_record"]

KEY_VERSION = 1


def settled_key(
    config: SyncConfig,
    sites: Sequence[Site],
    *,
    mirror_groups: bool,
    sync_state: SyncState,
    data_version: int,
    cursor: Mapping[str, Any],
    library_version: str,
) -> str:
    """A digest of every input of a plan but the directory's content (the cursor stands for that).

    The library's version is one of them: a release that plans differently
    must not find its trusts settled by the one before.
    """
    state = sync_state.to_dict()
    state.pop("delta", None)
    material = [
        KEY_VERSION,
        library_version,
        config.to_dict(),
        [[site.id, site.name, site.parent_id] for site in sites],
        mirror_groups,
        state,
        data_version,
        cursor,
    ]
    text = json.dumps(material, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def run_key(
    config: SyncConfig,
    sites: Sequence[Site],
    *,
    mirror_groups: bool,
    sync_state: SyncState,
    data_version: int | None,
    confirming: bool,
    cursor: Mapping[str, Any],
    library_version: str,
) -> str | None:
    """The settled key of one run's inputs, or ``None`` when the run can settle nothing.

    Nothing settles while a hold is pending or being confirmed (a person has
    something to do), nor on a store that keeps no data version (a write by
    anyone would go unseen). Which run is open is no input of a plan.
    """
    if data_version is None or sync_state.hold is not None or confirming:
        return None
    return settled_key(
        config, sites, mirror_groups=mirror_groups, sync_state=attrs.evolve(sync_state, running=None),
        data_version=data_version, cursor=cursor, library_version=library_version,
    )


def plans_nothing(plan: Plan, snapshot: DirectorySnapshot, *, errors: bool) -> bool:
    """Whether a run that made ``plan`` may settle the trust: no change, and :func:`leaves_no_question`."""
    return not plan.changes and leaves_no_question(plan, snapshot, errors=errors)


def leaves_no_question(plan: Plan, snapshot: DirectorySnapshot, *, errors: bool) -> bool:
    """No hold, every group read, no conflict (a person must look) and no error: what any record needs."""
    return not (
        plan.held_removals or plan.hold is not None or plan.unreadable_groups
        or snapshot.unreadable or errors or any(skip.conflict for skip in plan.skipped)
    )


def settled_record(
    key: str, run_id: str, plan: Plan, group_users: Mapping[str, int], *, quiet: bool = True
) -> Settled:
    """What a run leaves for the next: the key, and what its report and log said (``group_users``: users per mapped group read).

    ``quiet``: the run planned nothing (else it applied every change it
    planned, and the next run may plan by difference).
    """
    return Settled(
        key, run_id, plan.skipped, plan.users_in_scope, plan.synced_users, dict(group_users), quiet=quiet,
    )


@attrs.frozen
class Settled:
    """What the run that left the trust as it is planned: who it left out, and whether it changed anything.

    ``skipped``: that plan's skips (excluded and skipped users, never a
    conflict: a run with one leaves no record), so a settled run's report and
    Import Log say what that run's said; ``users_in_scope`` /
    ``synced_users``: the plan's figures; ``group_users``: users per mapped
    group as read. ``quiet``: that run planned nothing, so a round that
    brings nothing needs no plan at all (the trust is *settled*); when false,
    that run applied every change it planned, so the next run plans only the
    people its round touched (:mod:`calm_azure_sync.incremental.difference`).
    """

    key: str
    run_id: str
    skipped: tuple[Skip, ...]
    users_in_scope: int
    synced_users: int
    group_users: Mapping[str, int]
    quiet: bool = True

    @without_collector  # thousands of skips: see _gc.py
    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "run_id": self.run_id,
            "skipped": [
                {"external_id": skip.external_id, "email": skip.email, "reason": skip.reason, "excluded": skip.excluded,
                 "keeps_access": skip.keeps_access, "conflict": skip.conflict}
                for skip in self.skipped
            ],
            "users_in_scope": self.users_in_scope,
            "synced_users": self.synced_users,
            "group_users": dict(sorted(self.group_users.items())),
            "quiet": self.quiet,
        }

    @classmethod
    def from_state(cls, state: SyncState) -> Settled | None:
        """The record kept in ``state``, or ``None`` (none, or unreadable: the run then plans in full)."""
        data = state.delta.get("settled")
        if not isinstance(data, Mapping):
            return None
        try:
            with collector_paused():  # thousands of skips: see _gc.py
                return cls._from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any]) -> Settled | None:
        groups = data["group_users"]
        if not all(isinstance(v, int) for v in groups.values()):
            return None
        skipped = tuple(_skip(item) for item in data["skipped"])
        quiet = data.get("quiet", True)  # records before 0.4 were all of quiet runs
        if type(quiet) is not bool:
            return None
        return cls(
            str(data["key"]), str(data["run_id"]), skipped, int(data["users_in_scope"]),
            int(data["synced_users"]), dict(groups), quiet=quiet,
        )

    def kept_in(self, state: SyncState, delta: Mapping[str, Any] | None = None) -> SyncState:
        """``state`` with this record (and ``delta``'s other keys, when given) as its delta data."""
        rest = dict(state.delta if delta is None else delta)
        rest["settled"] = self.to_dict()
        return attrs.evolve(state, delta=rest)


def _skip(item: Mapping[str, Any]) -> Skip:
    email = item["email"]
    flags = [item[name] for name in ("excluded", "keeps_access", "conflict")]
    if type(item["external_id"]) is not str or type(item["reason"]) is not str:
        raise ValueError("a skip needs an external id and a reason")
    if (email is not None and type(email) is not str) or not all(type(flag) is bool for flag in flags):
        raise ValueError("a skip's email is text or null, its flags true or false")
    return Skip(item["external_id"], email, item["reason"], *flags)


def without_settled(state: SyncState) -> SyncState:
    """``state`` with no settled record (its other delta data kept)."""
    if "settled" not in state.delta:
        return state
    return attrs.evolve(state, delta={k: v for k, v in state.delta.items() if k != "settled"})
