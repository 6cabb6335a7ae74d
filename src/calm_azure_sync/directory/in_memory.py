"""A directory held in memory: for tests, notebooks and the demo."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from .._async_closing import AsyncClosing
from ..errors import ConfigError, DeltaExpiredError, DirectoryError, GroupNotFoundError
from ..model import DirectoryGroup, DirectoryUser, transitive_users
from ._nesting import groups_holding
from ._search import name_matches
from .delta import (
    DeltaCursor,
    DeltaStart,
    DirectoryDelta,
    GroupDelta,
    RemovedUser,
    build_delta,
    round_group_ids,
)
from .protocol import lookup_ids

__all__ = ["InMemoryDirectory"]

_Method = TypeVar("_Method", bound=Callable[..., None])


def _logged(method: _Method) -> _Method:
    """A change made through the log: catch up on direct edits first, and remember what was seen after."""

    @functools.wraps(method)
    def logged(self: InMemoryDirectory, *args: Any, **kwargs: Any) -> None:
        self._catch_up()
        method(self, *args, **kwargs)
        self._take_shadow()

    return logged  # type: ignore[return-value]


class InMemoryDirectory(AsyncClosing):
    """A :class:`~calm_azure_sync.Directory` over plain Python data.

    ``members`` maps a group id to the ids of its direct members: users or
    nested groups (cycles are fine; other ids, such as devices, are ignored).
    It answers exactly as :class:`~calm_azure_sync.GraphDirectory` does over
    the same data, which the directory conformance suite checks.

    >>> import asyncio
    >>> d = InMemoryDirectory.from_dict({
    ...     "users": [{"id": "u1", "mail": "ann@school.org"}],
    ...     "groups": [{"id": "g1"}, {"id": "g2"}],
    ...     "members": {"g1": ["g2"], "g2": ["u1"]},
    ... })
    >>> [u.email for u in asyncio.run(d.group_members("g1"))]
    ['ann@school.org']
    """

    def __init__(
        self,
        users: Iterable[DirectoryUser],
        groups: Iterable[DirectoryGroup],
        members: Mapping[str, Iterable[str]],
        *,
        tenant_id: str | None = None,
    ) -> None:
        self.users: dict[str, DirectoryUser] = {}
        for user in users:
            self.users.setdefault(user.id, user)
        self.groups: dict[str, DirectoryGroup] = {}
        for group in groups:
            self.groups.setdefault(group.id, group)
        self.members: dict[str, tuple[str, ...]] = {
            group_id: tuple(member_ids) for group_id, member_ids in members.items()
        }
        unknown = sorted(set(self.members) - set(self.groups))
        if unknown:
            raise DirectoryError(
                f"members lists groups that are not in groups: {', '.join(map(repr, unknown[:5]))}",
                code="invalid_data",
            )
        self.tenant_id = tenant_id
        # The change log behind changes() (delta): (seq, kind, id, detail, op).
        self._log: list[tuple[int, str, str, str, str]] = []
        self._seq = 0
        self._generation = 0
        self._epoch = uuid.uuid4().hex
        self._take_shadow()

    # What the log last saw. Tests, notebooks and the demo also change ``users``,
    # ``groups`` and ``members`` directly; ``_catch_up`` logs those changes too,
    # so an incremental run never misses an edit the full read would see.
    def _take_shadow(self) -> None:
        self._shadow_users = dict(self.users)
        self._shadow_groups = set(self.groups)
        self._shadow_members = dict(self.members)

    def _catch_up(self) -> None:
        """Log every change made to ``users``, ``groups`` or ``members`` behind the log's back."""
        for user_id in self._shadow_users.keys() - self.users.keys():
            self._record("user", user_id, "deleted", "delete")
        shadow = self._shadow_users
        # Most users are the very objects the log last saw: find the others in one pass (100k at a time).
        for user_id in [user_id for user_id, user in self.users.items() if shadow.get(user_id) is not user]:
            before = shadow.get(user_id)
            if before is None:
                self._record("user", user_id, "", "create")
            elif before != self.users[user_id]:
                self._record("user", user_id, "", "update")
        for group_id in self._shadow_groups - self.groups.keys():
            self._record("group", group_id, "", "delete")
        for group_id in self.groups.keys() - self._shadow_groups:
            self._record("group", group_id, "", "create")
        for group_id in self._shadow_members.keys() | self.members.keys():
            before_ids = self._shadow_members.get(group_id, ())
            after_ids = self.members.get(group_id, ())
            if before_ids is after_ids or before_ids == after_ids:
                continue
            before_set, after_set = set(before_ids), set(after_ids)
            for member_id in sorted(before_set ^ after_set):
                kind = self._kind(member_id)
                if kind == "other":  # deleted in the same edit: it was what the log last saw it as
                    kind = (
                        "user" if member_id in self._shadow_users
                        else "group" if member_id in self._shadow_groups
                        else "other"
                    )
                self._record("member", group_id, f"{kind}:{member_id}", "add" if member_id in after_set else "remove")
        self._take_shadow()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, tenant_id: str | None = None) -> InMemoryDirectory:
        """Read the fixture format the fake Graph server also serves::

            {"users": [graph user JSON…], "groups": [graph group JSON…],
             "members": {group_id: [member ids…]}}

        A member id that is neither a user nor a group (a device, a contact:
        the fake Graph's optional ``"others"`` list, ignored here) is a member
        of no kind we read: never a user, never a nested group, in full reads
        and in deltas alike.
        """
        if not isinstance(data, Mapping):
            raise DirectoryError("a directory fixture must be a JSON object", code="invalid_data")
        users = [DirectoryUser.from_graph(item) for item in _list(data, "users")]
        groups = [DirectoryGroup.from_graph(item) for item in _list(data, "groups")]
        members = data.get("members") or {}
        if not isinstance(members, Mapping) or not all(
            isinstance(ids, list) and all(isinstance(i, str) for i in ids) for ids in members.values()
        ):
            raise DirectoryError(
                "fixture 'members' must map group ids to lists of member ids", code="invalid_data"
            )
        return cls(users, groups, members, tenant_id=tenant_id or data.get("tenant_id"))

    def to_dict(self) -> dict[str, Any]:
        """The fixture form of this directory (see :meth:`from_dict`)."""
        return {
            "users": [user.to_graph() for user in self.users.values()],
            "groups": [group.to_graph() for group in self.groups.values()],
            "members": {group_id: list(ids) for group_id, ids in self.members.items()},
        }

    async def list_groups(self, search: str | None = None) -> Sequence[DirectoryGroup]:
        """Every group, or those whose name ``search`` finds (Graph's tokenized search).

        Each word of ``search`` must start a word of the display name,
        ignoring case, as with :meth:`GraphDirectory.list_groups`.
        """
        if search is not None and not isinstance(search, str):
            raise ConfigError(f"list_groups: search must be a string or None, got {type(search).__name__}")
        if search is None or not search.strip():
            return list(self.groups.values())
        return [group for group in self.groups.values() if name_matches(group.display_name, search)]

    async def group_member_count(self, group_id: str) -> int:
        """How many users the group has, nested groups resolved."""
        return len(await self.group_members(group_id))

    async def group_members(self, group_id: str) -> Sequence[DirectoryUser]:
        if group_id not in self.groups:
            raise GroupNotFoundError(group_id, code="Request_ResourceNotFound")
        return self.transitive_members(group_id)

    async def lookup_users(self, ids: Iterable[str]) -> Mapping[str, DirectoryUser | None]:
        """Each id to its user, ``None`` when no user has it (see :class:`~calm_azure_sync.UserLookup`)."""
        return {user_id: self.users.get(user_id) for user_id in lookup_ids(ids, "user")}

    async def lookup_groups(self, ids: Iterable[str]) -> Mapping[str, DirectoryGroup | None]:
        """Each id to its group, ``None`` when no group has it."""
        return {group_id: self.groups.get(group_id) for group_id in lookup_ids(ids, "group")}

    # -- one person (PersonLookup) ------------------------------------------------

    async def users_by_email(self, email: str) -> Sequence[DirectoryUser]:
        """The users whose ``mail`` (else principal name) is ``email``, ignoring case, as Graph's ``$filter`` finds them."""
        if not isinstance(email, str) or not email.strip():
            raise ConfigError(f"users_by_email: email must be a non-empty string, got {email!r:.60}")
        wanted = email.strip().casefold()
        by_mail = [user for user in self.users.values() if (user.mail or "").casefold() == wanted]
        if by_mail:
            return by_mail
        return [user for user in self.users.values() if (user.user_principal_name or "").casefold() == wanted]

    async def user_groups(self, user_id: str, *, transitive: bool) -> Sequence[DirectoryGroup]:
        """The groups the user is in, directly or (``transitive``) through nesting too."""
        if user_id not in self.users:
            raise DirectoryError(f"user {user_id!r} does not exist", code="not_found", status=404)
        holding = groups_holding(self.members, self.groups, user_id, transitive=transitive)
        return [self.groups[group_id] for group_id in holding]

    async def group_parents(self, group_id: str) -> Sequence[DirectoryGroup]:
        """The groups ``group_id`` is a direct member of."""
        if group_id not in self.groups:
            raise GroupNotFoundError(group_id, code="Request_ResourceNotFound")
        holding = groups_holding(self.members, self.groups, group_id, transitive=False)
        return [self.groups[parent] for parent in holding]

    # -- changes that the delta log records --------------------------------------------

    @_logged
    def put_user(self, user: DirectoryUser) -> None:
        """Add, change or restore a user (recorded for :meth:`changes`)."""
        self._record("user", user.id, "", "update" if user.id in self.users else "create")
        self.users[user.id] = user

    @_logged
    def delete_user(self, user_id: str, *, soft: bool = False) -> None:
        """Delete a user and its memberships; ``soft`` is Entra's restorable deletion (reason ``"changed"``)."""
        if self.users.pop(user_id, None) is None:
            return
        self._record("user", user_id, "changed" if soft else "deleted", "delete")
        for group_id, ids in list(self.members.items()):
            if user_id in ids:
                self._set_members(group_id, tuple(i for i in ids if i != user_id), kinds={user_id: "user"})

    @_logged
    def add_member(self, group_id: str, member_id: str) -> None:
        """Make ``member_id`` (a user or a group) a direct member of ``group_id``."""
        if group_id not in self.groups:
            raise GroupNotFoundError(group_id, code="Request_ResourceNotFound")
        ids = self.members.get(group_id, ())
        if member_id not in ids:
            self._set_members(group_id, (*ids, member_id))

    @_logged
    def remove_member(self, group_id: str, member_id: str) -> None:
        """End a direct membership."""
        ids = self.members.get(group_id, ())
        if member_id in ids:
            self._set_members(group_id, tuple(i for i in ids if i != member_id))

    @_logged
    def put_group(self, group: DirectoryGroup, members: Iterable[str] | None = None) -> None:
        """Add or change a group, and with ``members`` set its direct members."""
        if group.id not in self.groups:
            self._record("group", group.id, "", "create")
        self.groups[group.id] = group
        if members is not None:
            self._set_members(group.id, tuple(dict.fromkeys(members)))

    @_logged
    def delete_group(self, group_id: str) -> None:
        """Delete a group (a 404 from then on), its own direct memberships and its memberships in other groups.

        As in Entra, the deleted group's members are its members no more: a
        group restored or re-created with the same id (:meth:`put_group`)
        has only the members it is given then, and a delta read says so
        (each former member removed, each member it comes back with added).
        """
        if group_id not in self.groups:
            return
        self._set_members(group_id, ())  # logged: the memberships end with the group
        self.groups.pop(group_id)
        self._record("group", group_id, "", "delete")
        self.members.pop(group_id, None)
        for other, ids in list(self.members.items()):
            if group_id in ids:
                self._set_members(other, tuple(i for i in ids if i != group_id), kinds={group_id: "group"})

    def expire_delta_tokens(self) -> None:
        """Make every cursor given out so far raise :class:`~calm_azure_sync.DeltaExpiredError`."""
        self._generation += 1

    def _kind(self, member_id: str) -> str:
        return "user" if member_id in self.users else "group" if member_id in self.groups else "other"

    def _set_members(self, group_id: str, ids: tuple[str, ...], *, kinds: Mapping[str, str] | None = None) -> None:
        before = set(self.members.get(group_id, ()))
        after = set(ids)
        for member_id in sorted(before ^ after):
            kind = (kinds or {}).get(member_id) or self._kind(member_id)
            self._record("member", group_id, f"{kind}:{member_id}", "add" if member_id in after else "remove")
        self.members[group_id] = ids

    def _record(self, kind: str, object_id: str, detail: str, op: str) -> None:
        self._seq += 1
        self._log.append((self._seq, kind, object_id, detail, op))


    # -- the DeltaDirectory protocol -----------------------------------------------------

    async def changes(
        self,
        cursor: Mapping[str, Any] | None,
        group_ids: Iterable[str],
        *,
        start: DeltaStart = "initial",
    ) -> tuple[DirectoryDelta, DeltaCursor]:
        """What changed since ``cursor``, from this directory's change log (see ``DeltaDirectory``).

        Changes made through :meth:`put_user`, :meth:`delete_user`,
        :meth:`add_member`, :meth:`remove_member`, :meth:`put_group` and
        :meth:`delete_group` are logged as they happen; changes made by
        assigning to ``users``, ``groups`` or ``members`` directly are found
        by comparing with what the log last saw (a deletion found that way has
        the reason ``"deleted"``).
        """
        self._catch_up()
        wanted = round_group_ids(group_ids, start)
        seq, tracked, users_tracked = self._read_cursor(cursor)
        events = [event for event in self._log if event[0] > seq] if cursor is not None else []
        users = self._user_changes(events) if users_tracked else {}
        if not users_tracked and start == "initial":
            users = dict(self.users)
        groups: dict[str, GroupDelta] = {}
        removed: set[str] = set()
        member_events = self._member_events(events)
        for group_id in wanted:
            if group_id in tracked:
                self._group_changes(group_id, member_events, events, groups, removed)
            elif start == "initial":
                if group_id in self.groups:
                    ids = [m for m in self.members.get(group_id, ()) if m in self.users or m in self.groups]
                    groups[group_id] = GroupDelta(
                        group_id,
                        added_users=frozenset(m for m in ids if m in self.users),
                        added_groups=frozenset(m for m in ids if m in self.groups),
                        complete=True,
                    )
                else:
                    removed.add(group_id)
        delta = build_delta(users, groups, removed, users_complete=not users_tracked and start == "initial")
        next_cursor: DeltaCursor = {
            "version": 1,
            "kind": "memory",
            "epoch": self._epoch,
            "generation": self._generation,
            "seq": self._seq,
            "groups": wanted,
            "users": True,
        }
        return delta, next_cursor

    def _read_cursor(self, cursor: Mapping[str, Any] | None) -> tuple[int, set[str], bool]:
        if cursor is None:
            return self._seq, set(), False
        seq = cursor.get("seq") if isinstance(cursor, Mapping) else None
        if (
            not isinstance(cursor, Mapping)
            or cursor.get("version") != 1
            or cursor.get("kind") != "memory"
            or cursor.get("epoch") != self._epoch
            or not isinstance(seq, int)
            or not isinstance(cursor.get("groups"), list)
        ):
            raise DeltaExpiredError("the delta cursor was not made by this directory; read in full", code="invalid_cursor")
        if cursor.get("generation") != self._generation:
            raise DeltaExpiredError("the delta cursor has expired; read in full", code="syncStateNotFound", status=410)
        return seq, set(cursor["groups"]), bool(cursor.get("users"))

    def _user_changes(self, events: list[tuple[int, str, str, str, str]]) -> dict[str, DirectoryUser | RemovedUser]:
        first: dict[str, str] = {}
        reason: dict[str, str] = {}
        for _, kind, user_id, detail, op in events:
            if kind == "user":
                first.setdefault(user_id, op)
                if op == "delete":
                    reason[user_id] = detail
        found: dict[str, DirectoryUser | RemovedUser] = {}
        for user_id, op in first.items():
            existed = op != "create"
            if user_id in self.users:
                found[user_id] = self.users[user_id]
            elif existed:
                found[user_id] = RemovedUser(user_id, reason.get(user_id, "deleted"))
        return found

    @staticmethod
    def _member_events(events: list[tuple[int, str, str, str, str]]) -> dict[str, dict[str, tuple[str, str]]]:
        """Per group, per member: (kind, first op) in the window."""
        found: dict[str, dict[str, tuple[str, str]]] = {}
        for _, kind, group_id, detail, op in events:
            if kind == "member":
                member_kind, _, member_id = detail.partition(":")
                found.setdefault(group_id, {}).setdefault(member_id, (member_kind, op))
        return found

    def _group_changes(
        self,
        group_id: str,
        member_events: Mapping[str, Mapping[str, tuple[str, str]]],
        events: list[tuple[int, str, str, str, str]],
        groups: dict[str, GroupDelta],
        removed: set[str],
    ) -> None:
        ops = [op for _, kind, object_id, _, op in events if kind == "group" and object_id == group_id]
        if not ops and group_id not in member_events:
            return  # nothing happened to it since the cursor
        existed = not ops or ops[0] != "create"  # at the cursor
        if group_id not in self.groups:
            if ops and existed:
                removed.add(group_id)  # it existed at the cursor and is gone now
            return
        current = set(self.members.get(group_id, ()))
        if not existed:
            # Created or restored since the cursor (after a round that said it was deleted, or
            # when it did not exist yet): Graph lists it again, with its whole direct membership,
            # even when that is empty, so the caller tracks it again.
            groups[group_id] = GroupDelta(
                group_id,
                added_users=frozenset(m for m in current if m in self.users),
                added_groups=frozenset(m for m in current if m in self.groups),
            )
            return
        added: dict[str, set[str]] = {"user": set(), "group": set(), "other": set()}
        gone: dict[str, set[str]] = {"user": set(), "group": set(), "other": set()}
        for member_id, (kind, first_op) in member_events.get(group_id, {}).items():
            kind = self._kind(member_id) if member_id in current else kind
            if kind not in added:
                continue
            was_member = first_op == "remove"
            if member_id in current and not was_member:
                added[kind].add(member_id)
            elif member_id not in current and was_member:
                gone[kind].add(member_id)
        # Listed when its direct membership differs from the cursor's, as Graph lists a group whose
        # members@delta has anything, even only devices or contacts (which are no users nor groups).
        if any(added.values()) or any(gone.values()):
            groups[group_id] = GroupDelta(
                group_id, frozenset(added["user"]), frozenset(gone["user"]), frozenset(added["group"]), frozenset(gone["group"])
            )

    def transitive_members(self, group_id: str) -> list[DirectoryUser]:
        """The users under ``group_id``, breadth first, each once (synchronous)."""
        return transitive_users(group_id, self.members, self.users, self.groups)


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise DirectoryError(f"fixture {key!r} must be a list", code="invalid_data")
    return value
