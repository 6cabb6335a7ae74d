"""What the sync remembers about a trust between runs: pending holds, group baselines, leavers.

A run's safety decisions must not depend on that run alone (a hold that the
next run forgets is no hold), so each trust has a small :class:`SyncState`,
kept by the user store (:class:`SyncStateStore`) in the same database as the
users and written only under the trust's run lock. It is plain data with a
versioned JSON-safe form (:func:`state_to_json`, the text a store keeps); a state this library cannot read (corrupt, or
written by a newer version) is a :class:`~calm_azure_sync.ConfigError`,
never a silent reset that would forget a hold.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from ..errors import ConfigError
from .plan import (
    HOLD_REASON_TEXT,
    Assign,
    Change,
    DeactivateUser,
    RemoveGroupMember,
    Unassign,
    UserLabel,
    change_from_dict,
    change_to_dict,
    is_removal,
    removal_slot,
)

__all__ = [
    "Hold",
    "HoldKind",
    "HoldScope",
    "RunningImport",
    "SyncState",
    "SyncStateStore",
    "new_hold_id",
    "removal_key",
    "state_from_json",
    "state_to_json",
]

STATE_FORMAT_VERSION = 1

HoldKind = Literal["mass_removal", "group_shrank"]
"""The reasons a pending hold can have: :data:`~calm_azure_sync.core.plan.HoldReason` less ``partial_read``."""


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


def _sorted_map(value: Mapping[str, Any]) -> dict[str, Any]:
    return dict(sorted(value.items()))


Pair = tuple[str, str]


def removal_key(change: Change, owners: Mapping[str, str]) -> tuple[str, ...]:
    """What a removal takes away *in the store*: its slot with the store user in place of the Azure id.

    A hold is keyed by what it protects (API §11): the store user and the
    slot, so a relinked or re-created account (a new Entra object id on the
    same store user) keeps its pending removals held. ``owners`` maps an
    external id to its store user id; an id the store does not know yet keys
    by itself.
    """
    slot = removal_slot(change)
    external_id = change.external_id
    owner = owners.get(external_id)
    who = f"user:{owner}" if owner is not None else f"azure:{external_id}"
    if slot[0] == "member":
        return ("member", slot[1], who)
    return (slot[0], who, *slot[2:])


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(value)))


@attrs.frozen
class HoldScope:
    """Which held removals a partial confirmation applies (API §12).

    Each field given narrows the scope (a removal must match every field
    given); ``None`` means "any". ``group_ids``: removals a mapped group
    explains (its member removals, and grant removals on the (site, module)
    pairs it maps to); ``site_ids``: grant removals at those sites and member
    removals of groups mapped to them; ``user_ids``: removals of those users,
    by store user id or Entra object id. A user's deactivation is inside the
    scope only when every other held removal of theirs is.
    """

    group_ids: tuple[str, ...] | None = attrs.field(default=None, converter=attrs.converters.optional(_str_tuple))
    site_ids: tuple[str, ...] | None = attrs.field(default=None, converter=attrs.converters.optional(_str_tuple))
    user_ids: tuple[str, ...] | None = attrs.field(default=None, converter=attrs.converters.optional(_str_tuple))

    def __attrs_post_init__(self) -> None:
        given = (self.group_ids, self.site_ids, self.user_ids)
        if all(field is None for field in given):
            raise ConfigError("confirm_only: a HoldScope names at least one of group_ids, site_ids, user_ids")
        for name, field in zip(("group_ids", "site_ids", "user_ids"), given, strict=True):
            if field is not None and not all(isinstance(item, str) and item for item in field):
                raise ConfigError(f"confirm_only.{name}: expected non-empty strings")

    def describe(self) -> str:
        parts = [
            f"{label} {', '.join(values)}"
            for label, values in (("groups", self.group_ids), ("sites", self.site_ids), ("users", self.user_ids))
            if values is not None
        ]
        return "; ".join(parts)


@attrs.frozen
class Hold:
    """Removals the sync will not apply until an admin confirms this hold by its ``id``.

    ``reason`` is ``"mass_removal"`` (too many users at once) or
    ``"group_shrank"`` (a mapped group lost most of its members; ``group_ids``
    names them). ``changes`` are the held removals, in plan order. ``id``
    changes whenever the held set grows, so a confirmation covers exactly what
    the admin reviewed; it stays when removals drop out (Azure no longer
    implies them).

    What the hold protects is keyed by store user (``owners``: external id ->
    store user id, see :func:`removal_key`). For people to read, a hold also
    keeps how to name them: ``people`` (external id -> name and email),
    ``group_names`` and ``site_names``; and ``mapped``, each involved group's
    (site, module) pairs when the hold was made, which :meth:`by_group`,
    :meth:`by_site` and :class:`HoldScope` use.
    """

    id: str
    trust_site_id: str
    reason: HoldKind
    changes: tuple[Change, ...] = attrs.field(converter=_changes, validator=_removals)
    created_at: dt.datetime = attrs.field(converter=_aware)
    run_id: str
    group_ids: tuple[str, ...] = attrs.field(default=(), converter=_group_ids)
    owners: Mapping[str, str] = attrs.field(factory=dict, converter=_sorted_map, repr=False)
    people: Mapping[str, UserLabel] = attrs.field(factory=dict, converter=_sorted_map, repr=False)
    group_names: Mapping[str, str] = attrs.field(factory=dict, converter=_sorted_map, repr=False)
    site_names: Mapping[str, str] = attrs.field(factory=dict, converter=_sorted_map, repr=False)
    mapped: Mapping[str, tuple[Pair, ...]] = attrs.field(factory=dict, converter=_sorted_map, repr=False)

    @property
    def slots(self) -> frozenset[tuple[str, ...]]:
        """What the held removals take away in the store (see :func:`removal_key`)."""
        return frozenset(removal_key(change, self.owners) for change in self.changes)

    @property
    def users(self) -> frozenset[str]:
        """External ids of the users who would lose something."""
        return frozenset(change.external_id for change in self.changes)

    # -- review ------------------------------------------------------------------

    def groups_of(self, change: Change) -> tuple[str, ...]:
        """The mapped groups that explain a held removal (a deactivation: those of the user's others)."""
        if isinstance(change, RemoveGroupMember):
            return (change.group_external_id,)
        if isinstance(change, (Assign, Unassign)):
            pair = (change.site_id, change.module)
            return tuple(group for group, pairs in self.mapped.items() if pair in pairs)
        found: set[str] = set()
        for other in self.changes:
            if other.external_id == change.external_id and not isinstance(other, DeactivateUser):
                found.update(self.groups_of(other))
        return tuple(sorted(found))

    def sites_of(self, change: Change) -> tuple[str, ...]:
        """The sites where a held removal takes something away (a deactivation: all of the user's)."""
        if isinstance(change, (Assign, Unassign)):
            return (change.site_id,)
        if isinstance(change, RemoveGroupMember):
            return tuple(sorted({site for site, _ in self.mapped.get(change.group_external_id, ())}))
        found: set[str] = set()
        for other in self.changes:
            if other.external_id == change.external_id and not isinstance(other, DeactivateUser):
                found.update(self.sites_of(other))
        return tuple(sorted(found))

    def by_group(self) -> dict[str, tuple[Change, ...]]:
        """The held removals by the mapped group that explains them (one may be under several)."""
        return self._grouped(self.groups_of)

    def by_site(self) -> dict[str, tuple[Change, ...]]:
        """The held removals by the site where they take something away."""
        return self._grouped(self.sites_of)

    def _grouped(self, keys_of: Callable[[Change], tuple[str, ...]]) -> dict[str, tuple[Change, ...]]:
        grouped: dict[str, list[Change]] = {}
        for change in self.changes:
            for key in keys_of(change) or ("",):
                grouped.setdefault(key, []).append(change)
        return {key: tuple(grouped[key]) for key in sorted(grouped)}

    def in_scope(self, change: Change, scope: HoldScope) -> bool:
        """Whether a partial confirmation with ``scope`` covers this held removal."""
        if isinstance(change, DeactivateUser):
            others = [o for o in self.changes if o.external_id == change.external_id and not isinstance(o, DeactivateUser)]
            return self._matches_user(change, scope) and all(self.in_scope(other, scope) for other in others)
        if scope.group_ids is not None and not set(self.groups_of(change)) & set(scope.group_ids):
            return False
        if scope.site_ids is not None and not set(self.sites_of(change)) & set(scope.site_ids):
            return False
        return self._matches_user(change, scope)

    def _matches_user(self, change: Change, scope: HoldScope) -> bool:
        if scope.user_ids is None:
            return True
        owner = self.owners.get(change.external_id)
        return change.external_id in scope.user_ids or (owner is not None and owner in scope.user_ids)

    def person(self, external_id: str) -> str:
        """How a person reads a held user: name and email, else the id."""
        label = self.people.get(external_id)
        return str(label) if label is not None and (label.display_name or label.email) else external_id

    def describe_change(self, change: Change) -> str:
        """One held removal in words, with names (``Ann Smith <ann@…> loses Member on Risk at Birch High``)."""
        who = self.person(change.external_id)
        if isinstance(change, Unassign):
            return f"{who} loses {change.previous.value} on {change.module} at {self._site(change.site_id)}"
        if isinstance(change, Assign):
            previous = change.previous.value if change.previous is not None else "?"
            return (
                f"{who} goes from {previous} to {change.role.value} on {change.module} "
                f"at {self._site(change.site_id)}"
            )
        if isinstance(change, RemoveGroupMember):
            return f"{who} leaves group {self.group_names.get(change.group_external_id, change.group_external_id)}"
        return f"{who} is deactivated"

    def _site(self, site_id: str) -> str:
        return self.site_names.get(site_id, site_id)

    def __str__(self) -> str:
        users = len(self.users)
        why = HOLD_REASON_TEXT[self.reason]
        if self.group_ids:
            why += " (" + ", ".join(self.group_names.get(group, group) for group in self.group_ids) + ")"
        lines = [
            f"Hold {self.id}: {len(self.changes)} removals for {users} users held since "
            f"{self.created_at:%Y-%m-%d %H:%M} UTC: {why}."
        ]
        lines.extend(f"  - {self.describe_change(change)}" for change in self.changes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "trust_site_id": self.trust_site_id,
            "reason": self.reason,
            "changes": [change_to_dict(change) for change in self.changes],
            "created_at": self.created_at.isoformat(),
            "run_id": self.run_id,
            "group_ids": list(self.group_ids),
            "owners": dict(self.owners),
            "people": {key: [label.display_name, label.email] for key, label in self.people.items()},
            "group_names": dict(self.group_names),
            "site_names": dict(self.site_names),
            "mapped": {group: [list(pair) for pair in pairs] for group, pairs in self.mapped.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Hold:
        """Read a stored hold; a v0.3 hold (no owners, names or mapping) reads with those empty."""
        return cls(
            id=_string(data, "id"),
            trust_site_id=_string(data, "trust_site_id"),
            reason=_choice(data, "reason", ("mass_removal", "group_shrank")),  # type: ignore[arg-type]
            changes=tuple(change_from_dict(item) for item in _list(data, "changes")),
            created_at=dt.datetime.fromisoformat(_string(data, "created_at")),
            run_id=_string(data, "run_id"),
            group_ids=tuple(_string({"id": item}, "id") for item in _list(data, "group_ids")),
            owners=_string_map(data, "owners"),
            people={key: _label(key, value) for key, value in _object(data, "people").items()},
            group_names=_string_map(data, "group_names"),
            site_names=_string_map(data, "site_names"),
            mapped={key: _pairs(key, value) for key, value in _object(data, "mapped").items()},
        )


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
    - ``skips_logged``: external id -> a short digest of the skip the Import
      Log last told about that user (category and reason). A run logs a
      ``user_skipped`` / ``user_excluded`` entry only for a skip that is new
      or changed, so a quiet run's log does not repeat every left-out user;
      the run's end entry still counts them all. (Optional in the JSON, like
      ``running``: an older state reads as empty, and its first run logs every
      skip once.)
    """

    hold: Hold | None = None
    baselines: Mapping[str, int] = attrs.field(factory=dict, converter=_sorted_map)
    left_scope: Mapping[str, bool] = attrs.field(factory=dict, converter=_sorted_map)
    delta: Mapping[str, Any] = attrs.field(factory=dict)
    version: int = STATE_FORMAT_VERSION
    running: RunningImport | None = None
    skips_logged: Mapping[str, str] = attrs.field(factory=dict, converter=_sorted_map, repr=False)

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
        if self.skips_logged:  # absent when empty, as running is
            data["skips_logged"] = dict(self.skips_logged)
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
            skips_logged = data.get("skips_logged") or {}
            if not isinstance(skips_logged, Mapping) or not all(
                isinstance(key, str) and isinstance(value, str) for key, value in skips_logged.items()
            ):
                raise ValueError("skips_logged: expected an object of external id -> text")
        except ConfigError as error:
            raise ConfigError([f"{where}: {problem}" for problem in error.problems]) from None
        except (ValueError, TypeError, KeyError) as error:
            raise ConfigError(f"{where}: unreadable ({error})") from None
        return cls(
            hold=hold, baselines=baselines, left_scope=left_scope, delta=dict(delta), running=running,
            skips_logged=skips_logged,
        )


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


def _object(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{key}: expected an object")
    return value


def _string_map(data: Mapping[str, Any], key: str) -> dict[str, str]:
    value = _object(data, key)
    if not all(isinstance(item, str) for item in value.values()):
        raise ValueError(f"{key}: expected an object of strings")
    return dict(value)


def _label(key: str, value: Any) -> UserLabel:
    if not isinstance(value, list) or len(value) != 2 or not all(v is None or isinstance(v, str) for v in value):
        raise ValueError(f"people.{key}: expected [name, email]")
    return UserLabel(value[0], value[1])


def _pairs(key: str, value: Any) -> tuple[Pair, ...]:
    if not isinstance(value, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, str) for v in pair) for pair in value
    ):
        raise ValueError(f"mapped.{key}: expected a list of [site, module]")
    return tuple((pair[0], pair[1]) for pair in value)


def _choice(data: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = _string(data, key)
    if value not in choices:
        raise ValueError(f"{key}: {value!r} is not one of {', '.join(choices)}")
    return value


# -- the text a store keeps (every shipped store; store.rules re-exports these) --


def state_to_json(state: SyncState, *, where: str = "sync state") -> str:
    """The text a store keeps for ``state``: the JSON of :meth:`SyncState.to_dict`.

    ASCII-only JSON (any text stores), keys sorted. Raises
    :class:`~calm_azure_sync.ConfigError` naming ``where`` for a state that is
    not JSON-safe or that :func:`state_from_json` would refuse (say, a newer
    ``version``): a store never writes a state it could not read back.
    """
    try:
        text = json.dumps(state.to_dict(), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as error:
        raise ConfigError(f"{where}: not JSON-safe ({error})") from None
    state_from_json(text, where=where)
    return text


def state_from_json(text: str, *, where: str = "sync state") -> SyncState:
    """Read back what :func:`state_to_json` wrote; :class:`~calm_azure_sync.ConfigError` if unreadable.

    Corrupt text and a state of another format version are refused, never
    read as an empty state (that would forget a pending hold).
    """
    try:
        data = json.loads(text)
    except (TypeError, ValueError, RecursionError) as error:
        raise ConfigError(f"{where}: not JSON ({error})") from None
    return SyncState.from_dict(data, where=where)
