"""What the sync remembers about a trust between runs: pending holds, group baselines, leavers.

A run's safety decisions must not depend on that run alone (a hold that the
next run forgets is no hold), so each trust has a small :class:`SyncState`,
kept by the user store (:class:`SyncStateStore`) in the same database as the
users and written only under the trust's run lock. It is plain data with a
versioned JSON-safe form; a state this library cannot read (corrupt, or
written by a newer version) is a :class:`~calm_azure_sync.ConfigError`,
never a silent reset that would forget a hold.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from .errors import ConfigError
from .plan import Change, change_from_dict, change_to_dict, is_removal, removal_slot

__all__ = ["Hold", "HoldKind", "RunningImport", "SyncState", "SyncStateStore", "new_hold_id"]

STATE_FORMAT_VERSION = 1

HoldKind = Literal["mass_removal", "group_shrank"]


def new_hold_id() -> str:
    """A fresh hold id: a hold gets a new one whenever the set it holds grows."""
    return uuid.uuid4().hex


def _aware(value: dt.datetime) -> dt.datetime:
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise ConfigError(f"created_at: must be a timezone-aware datetime, got {value!r:.60}")
    return value.astimezone(dt.UTC)


def _changes(value: Iterable[Change]) -> tuple[Change, ...]:
    return tuple(value)


def _group_ids(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(value)))


def _removals(instance: Hold, attribute: attrs.Attribute[Any], value: tuple[Change, ...]) -> None:
    for index, change in enumerate(value):
        if not is_removal(change):
            raise ConfigError(f"changes[{index}]: a hold holds removals only, got {type(change).__name__}")


@attrs.frozen
class Hold:
    """Removals the sync will not apply until an admin confirms this hold by its ``id``.

    ``reason`` is ``"mass_removal"`` (too many users at once) or
    ``"group_shrank"`` (a mapped group lost most of its members; ``group_ids``
    names them). ``changes`` are the held removals, in plan order. ``id``
    changes whenever the held set grows, so a confirmation covers exactly what
    the admin reviewed; it stays when removals drop out (Azure no longer
    implies them).
    """

    id: str
    trust_site_id: str
    reason: HoldKind
    changes: tuple[Change, ...] = attrs.field(converter=_changes, validator=_removals)
    created_at: dt.datetime = attrs.field(converter=_aware)
    run_id: str
    group_ids: tuple[str, ...] = attrs.field(default=(), converter=_group_ids)

    @property
    def slots(self) -> frozenset[tuple[str, ...]]:
        """What the held removals take away (see :func:`~calm_azure_sync.plan.removal_slot`)."""
        return frozenset(removal_slot(change) for change in self.changes)

    @property
    def users(self) -> frozenset[str]:
        """External ids of the users who would lose something."""
        return frozenset(change.external_id for change in self.changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "trust_site_id": self.trust_site_id,
            "reason": self.reason,
            "changes": [change_to_dict(change) for change in self.changes],
            "created_at": self.created_at.isoformat(),
            "run_id": self.run_id,
            "group_ids": list(self.group_ids),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Hold:
        return cls(
            id=_string(data, "id"),
            trust_site_id=_string(data, "trust_site_id"),
            reason=_choice(data, "reason", ("mass_removal", "group_shrank")),  # type: ignore[arg-type]
            changes=tuple(change_from_dict(item) for item in _list(data, "changes")),
            created_at=dt.datetime.fromisoformat(_string(data, "created_at")),
            run_id=_string(data, "run_id"),
            group_ids=tuple(_string({"id": item}, "id") for item in _list(data, "group_ids")),
        )


def _sorted_map(value: Mapping[str, Any]) -> dict[str, Any]:
    return dict(sorted(value.items()))


@attrs.frozen
class RunningImport:
    """The import that holds (or held) the trust's run lock and has not ended yet.

    Saved when a run starts and cleared once its end is in the Import Log:
    a run that finds one left behind knows that run died without an end
    (SIGKILL, power loss, a lost lock) and closes it with ``import_abandoned``.
    """

    run_id: str
    started_at: dt.datetime = attrs.field(converter=_aware)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "started_at": self.started_at.isoformat()}

    @classmethod
    def from_dict(cls, data: object) -> RunningImport:
        if not isinstance(data, Mapping):
            raise ValueError("running: expected an object or null")
        return cls(_string(data, "run_id"), dt.datetime.fromisoformat(_string(data, "started_at")))


@attrs.frozen
class SyncState:
    """One trust's memory between runs.

    - ``hold``: the pending :class:`Hold`, or ``None``.
    - ``baselines``: mapped group id -> the number of users it had at its last
      complete read that no guard disputed (the per-group shrink guard compares
      against it).
    - ``left_scope``: external id -> whether the sync has deactivated that user
      since they left scope (``True``) or not yet (``False``: say, the trust was
      in ``unassign`` mode then). ``deactivate`` mode deactivates the ``False``
      ones, so switching modes converges; a user a person re-activates after
      that stays ``True`` and is not deactivated again until they re-enter and
      leave scope. Entries go when the user is back in scope.
    - ``delta``: opaque JSON-safe data of incremental sync (delta links and
      what they need), owned by the reconciler; empty when there is none.
    - ``running``: the :class:`RunningImport` that started and has not ended
      yet, or ``None``. (Optional in the JSON: a state saved without it reads
      as ``None``, so the format's version is unchanged.)
    """

    hold: Hold | None = None
    baselines: Mapping[str, int] = attrs.field(factory=dict, converter=_sorted_map)
    left_scope: Mapping[str, bool] = attrs.field(factory=dict, converter=_sorted_map)
    delta: Mapping[str, Any] = attrs.field(factory=dict)
    version: int = STATE_FORMAT_VERSION
    running: RunningImport | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; :meth:`from_dict` reads it back."""
        data = {
            "version": self.version,
            "hold": None if self.hold is None else self.hold.to_dict(),
            "baselines": dict(self.baselines),
            "left_scope": dict(self.left_scope),
            "delta": dict(self.delta),
        }
        if self.running is not None:  # absent, not null, when no run is open: older states read the same
            data["running"] = self.running.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: object, *, where: str = "sync state") -> SyncState:
        """Read a stored state; raises :class:`ConfigError` naming ``where`` on anything unreadable.

        A state written by a newer version of this library is refused, not
        guessed at: forgetting its hold would be the one unsafe answer.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
        version = data.get("version")
        if version != STATE_FORMAT_VERSION or isinstance(version, bool):
            raise ConfigError(
                f"{where}: version {version!r:.20} is not readable by this calm-azure-sync "
                f"(it reads version {STATE_FORMAT_VERSION}); upgrade the library, never delete the state"
            )
        try:
            hold_data = data.get("hold")
            baselines = data.get("baselines") or {}
            left_scope = data.get("left_scope") or {}
            delta = data.get("delta") or {}
            if not isinstance(baselines, Mapping) or not all(
                isinstance(key, str) and isinstance(value, int) and not isinstance(value, bool) and value >= 0
                for key, value in baselines.items()
            ):
                raise ValueError("baselines: expected an object of group id -> member count")
            if not isinstance(left_scope, Mapping) or not all(
                isinstance(key, str) and isinstance(value, bool) for key, value in left_scope.items()
            ):
                raise ValueError("left_scope: expected an object of external id -> true/false")
            if not isinstance(delta, Mapping):
                raise ValueError("delta: expected an object")
            if hold_data is not None and not isinstance(hold_data, Mapping):
                raise ValueError("hold: expected an object or null")
            hold = None if hold_data is None else Hold.from_dict(hold_data)
            running_data = data.get("running")
            running = None if running_data is None else RunningImport.from_dict(running_data)
        except ConfigError as error:
            raise ConfigError([f"{where}: {problem}" for problem in error.problems]) from None
        except (ValueError, TypeError, KeyError) as error:
            raise ConfigError(f"{where}: unreadable ({error})") from None
        return cls(hold=hold, baselines=baselines, left_scope=left_scope, delta=dict(delta), running=running)


@runtime_checkable
class SyncStateStore(Protocol):
    """Keeps each trust's :class:`SyncState`. Implemented by both shipped user stores.

    ``save_state`` replaces the whole state atomically (all or nothing, across
    a crash). The reconciler calls both only while it holds the trust's run
    lock. ``load_state`` of a trust never saved returns ``SyncState()``; a
    stored state it cannot read raises :class:`~calm_azure_sync.ConfigError`.
    """

    async def load_state(self, trust_site_id: str) -> SyncState:
        """The trust's state (``SyncState()`` when none was saved)."""
        ...

    async def save_state(self, trust_site_id: str, state: SyncState) -> None:
        """Replace the trust's state, atomically."""
        ...


def _string(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key}: expected a non-empty string")
    return value


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise ValueError(f"{key}: expected a list")
    return value


def _choice(data: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = _string(data, key)
    if value not in choices:
        raise ValueError(f"{key}: {value!r} is not one of {', '.join(choices)}")
    return value
