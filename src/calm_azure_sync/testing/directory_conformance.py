"""One conformance suite for every :class:`~calm_azure_sync.Directory`.

The reconciler trusts a directory to answer the way Entra ID does. This
suite pins that down against a fixture in the ``InMemoryDirectory.from_dict``
format, and it is what keeps :class:`~calm_azure_sync.InMemoryDirectory` and
:class:`~calm_azure_sync.GraphDirectory` interchangeable::

    fixture = conformance_fixture(big_group_size=250)
    snapshot = await check_directory(InMemoryDirectory.from_dict(fixture), fixture)
    with FakeGraphServer(fixture, page_cap=100) as graph:
        async with GraphDirectory.from_credential(credential, base_url=graph.base_url) as directory:
            assert await check_directory(directory, fixture) == snapshot

A host with its own ``Directory`` can run it too. The expected answers are
computed here from the fixture, independently of any implementation:

- ``list_groups`` returns every group once, each equal to
  ``DirectoryGroup.from_graph`` of its fixture entry;
- ``group_members`` returns the users reachable through nested groups
  (cycles included), each once, each equal to ``DirectoryUser.from_graph``
  of its fixture entry; ids that are neither users nor groups (devices) are
  ignored; a group without members gives an empty answer;
- an unknown group raises :class:`~calm_azure_sync.GroupNotFoundError`
  carrying that id;
- a directory that implements :class:`~calm_azure_sync.UserLookup` answers
  ``lookup_users`` with every id given, once: the fixture's user, or
  ``None`` for an unknown id and for a group's id (checked with
  :data:`LOOKUP_SAMPLE` users and more, then one user alone, then no ids);
- a directory that implements :class:`~calm_azure_sync.GroupDiscovery`
  counts each group's users as ``group_member_count``, and
  ``list_groups(search=...)`` finds the groups Graph's tokenized search
  would (each of :data:`SEARCHES`).

Order is not part of the contract: answers are compared as sets, and the
snapshot :func:`check_directory` returns is sorted.

A directory that also implements :class:`~calm_azure_sync.DeltaDirectory`
runs :func:`check_delta` too, with a :class:`DirectoryEditor` that changes
it (:class:`InMemoryEditor`, :class:`FakeGraphEditor`, or the host's own).
It replays a history over the fixture (members leaving and joining, a
nested group joining, a device joining and leaving, users deleted softly
and for good, a group deleted, restored empty, deleted and created again
with other members in one window, a mapped group restored with members)
and checks, after every round, that the kept direct memberships folded with
:func:`~calm_azure_sync.incremental.apply_delta` resolve to exactly what a
full read gives (API §11: delta reads as strict as full reads), plus the
shape of Graph's change log: deleted users with their reason, deleted
groups in ``removed_groups``, a restored group listed again even when
empty, and a quiet round that is ``empty``::

    log = await check_delta(InMemoryDirectory.from_dict(fixture), fixture)
    with FakeGraphServer(fixture) as graph:
        async with GraphDirectory.from_credential(credential, base_url=graph.base_url) as directory:
            assert await check_delta(directory, fixture, FakeGraphEditor(graph)) == log
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from ..directory._search import name_matches
from ..directory.delta import DeltaDirectory, DirectoryDelta, RemovedUser
from ..directory.in_memory import InMemoryDirectory
from ..directory.protocol import Directory, GroupDiscovery, UserLookup
from ..errors import GroupNotFoundError
from ..incremental import apply_delta, snapshot_members
from ..model import DirectoryGroup, DirectoryUser

__all__ = [
    "LOOKUP_SAMPLE",
    "DirectoryEditor",
    "DirectorySnapshot",
    "FakeGraphEditor",
    "InMemoryEditor",
    "SEARCHES",
    "check_delta",
    "check_directory",
    "check_discovery",
    "check_lookup",
    "conformance_fixture",
    "expected_members",
]

DirectorySnapshot = dict[str, tuple[DirectoryUser, ...]]
"""Group id to that group's users, sorted by id: what a directory answered."""

UNKNOWN_GROUP_ID = "00000000-dead-beef-0000-000000000000"
UNKNOWN_USER_ID = "00000000-dead-beef-0000-0000000000ff"

LOOKUP_SAMPLE = 45
SEARCHES = ("cyc", "STAFF", "cycle b", "nothing-matches", "ycle")
"""The searches :func:`check_discovery` makes: prefixes, any case, several words, no match, mid-word."""
"""How many of the fixture's users :func:`check_lookup` asks for at once (more than two $batch requests)."""


def conformance_fixture(big_group_size: int = 250) -> dict[str, Any]:
    """A fixture with every case the suite checks.

    Nested groups three deep with a cycle back to the top, a two-group
    cycle, a B2B guest with an ``#EXT#`` UPN, users without mail (UPN only,
    and neither), a disabled and unlicensed user, a user Graph sends almost
    nothing for, a device id among the members (and another in ``others``
    for :func:`check_delta` to add), a group with no members, and a group of
    ``big_group_size`` users (make it larger than a page).
    """
    users: list[dict[str, Any]] = [
        {
            "id": f"u{index:05d}",
            "displayName": f"Staff {index}",
            "givenName": "Staff",
            "surname": str(index),
            "mail": f"staff{index}@school.example",
            "userPrincipalName": f"staff{index}@school.example",
            "accountEnabled": True,
            "userType": "Member",
            "assignedLicenses": [{"disabledPlans": [], "skuId": "94763226-9b3c-4e75-a931-5c89701abe66"}],
            "onPremisesSyncEnabled": index % 3 == 0 or None,
            "creationType": None,
        }
        for index in range(max(big_group_size, 3))
    ]
    users += [
        {
            "id": "guest-1",
            "displayName": "Ann Partner",
            "mail": None,
            "userPrincipalName": "ann_partner.example#EXT#@school.onmicrosoft.com",
            "userType": "Guest",
            "creationType": "Invitation",
            "accountEnabled": True,
        },
        {"id": "no-mail-1", "displayName": "No Mail", "mail": None, "userPrincipalName": None},
        {"id": "upn-only-1", "displayName": "Upn Only", "mail": None, "userPrincipalName": "upn.only@school.example"},
        {
            "id": "disabled-1",
            "displayName": "Leaver",
            "mail": "leaver@school.example",
            "accountEnabled": False,
            "assignedLicenses": [],
        },
        {"id": "sparse-1"},
    ]
    groups = [
        {"id": "g-staff", "displayName": "All Staff", "description": "everyone", "mail": "staff@school.example"},
        {"id": "g-teachers", "displayName": "Teachers", "description": None, "mail": None},
        {"id": "g-science", "displayName": "Science"},
        {"id": "g-cycle-a", "displayName": "Cycle A"},
        {"id": "g-cycle-b", "displayName": "Cycle B"},
        {"id": "g-empty", "displayName": "Nobody yet"},
        {"id": "g-big", "displayName": "Everyone, paged"},
    ]
    members = {
        "g-staff": ["g-teachers", "u00000", "guest-1", "device-1"],
        "g-teachers": ["g-science", "u00001", "u00000", "no-mail-1"],
        "g-science": ["u00002", "upn-only-1", "g-staff"],
        "g-cycle-a": ["g-cycle-b", "disabled-1"],
        "g-cycle-b": ["g-cycle-a", "sparse-1", "disabled-1"],
        "g-empty": [],
        "g-big": [f"u{index:05d}" for index in range(big_group_size)],
    }
    # What the member lists name that is no user and no group (the fake Graph serves them typed).
    others = [
        {"id": "device-1", "@odata.type": "#microsoft.graph.device"},
        {"id": "device-2", "@odata.type": "#microsoft.graph.device"},
    ]
    return {"users": users, "groups": groups, "members": members, "others": others}


def expected_members(fixture: Mapping[str, Any], group_id: str) -> dict[str, DirectoryUser]:
    """The users under ``group_id`` by id, computed from the fixture alone."""
    users = {str(item["id"]): item for item in fixture.get("users") or ()}
    groups = {str(item["id"]) for item in fixture.get("groups") or ()}
    members: Mapping[str, list[str]] = fixture.get("members") or {}
    found: dict[str, DirectoryUser] = {}
    seen_groups = {group_id}
    pending = [group_id]
    while pending:
        current = pending.pop()
        for member_id in members.get(current, ()):
            if member_id in users:
                found.setdefault(member_id, DirectoryUser.from_graph(users[member_id]))
            elif member_id in groups and member_id not in seen_groups:
                seen_groups.add(member_id)
                pending.append(member_id)
    return found


def _fail(message: str) -> AssertionError:
    # Not `assert`: the suite must keep checking under `python -O`.
    return AssertionError(message)


async def check_directory(
    directory: Directory, fixture: Mapping[str, Any], *, unknown_group_id: str = UNKNOWN_GROUP_ID
) -> DirectorySnapshot:
    """Check ``directory`` answers as the fixture says; return what it answered.

    Raises :class:`AssertionError` naming the first difference. The snapshot
    maps each group id to its users sorted by id, so two directories over the
    same fixture can be compared for identical answers.
    """
    expected_groups = {
        str(item["id"]): DirectoryGroup.from_graph(item) for item in fixture.get("groups") or ()
    }
    listed = list(await directory.list_groups())
    listed_ids = [group.id for group in listed]
    if len(listed_ids) != len(set(listed_ids)):
        raise _fail(f"list_groups returned a group twice: {sorted(listed_ids)}")
    if set(listed_ids) != set(expected_groups):
        missing = sorted(set(expected_groups) - set(listed_ids))
        extra = sorted(set(listed_ids) - set(expected_groups))
        raise _fail(f"list_groups: missing {missing}, unexpected {extra}")
    for group in listed:
        if group != expected_groups[group.id]:
            raise _fail(f"list_groups: {group!r} differs from the fixture's {expected_groups[group.id]!r}")

    snapshot: DirectorySnapshot = {}
    for group_id in sorted(expected_groups):
        answer = list(await directory.group_members(group_id))
        ids = [user.id for user in answer]
        if len(ids) != len(set(ids)):
            raise _fail(f"group_members({group_id!r}) returned a user twice")
        expected = expected_members(fixture, group_id)
        if set(ids) != set(expected):
            missing = sorted(set(expected) - set(ids))[:10]
            extra = sorted(set(ids) - set(expected))[:10]
            raise _fail(f"group_members({group_id!r}): missing {missing}, unexpected {extra}")
        for user in answer:
            if user != expected[user.id]:
                raise _fail(f"group_members({group_id!r}): {user!r} differs from the fixture's {expected[user.id]!r}")
        snapshot[group_id] = tuple(sorted(answer, key=lambda user: user.id))

    try:
        await directory.group_members(unknown_group_id)
    except GroupNotFoundError as error:
        if error.group_id != unknown_group_id:
            raise _fail(f"GroupNotFoundError names {error.group_id!r}, not {unknown_group_id!r}") from error
    else:
        raise _fail(f"group_members({unknown_group_id!r}) of an unknown group did not raise GroupNotFoundError")
    if isinstance(directory, UserLookup):
        await check_lookup(directory, fixture)
    if isinstance(directory, GroupDiscovery):
        await check_discovery(directory, fixture)
    return snapshot


async def check_discovery(directory: GroupDiscovery, fixture: Mapping[str, Any]) -> None:
    """Check ``group_member_count`` and ``list_groups(search=...)`` against the fixture."""
    groups = {str(item["id"]): DirectoryGroup.from_graph(item) for item in fixture.get("groups") or ()}
    for group_id in sorted(groups):
        count = await directory.group_member_count(group_id)
        expected = len(expected_members(fixture, group_id))
        if count != expected:
            raise _fail(f"group_member_count({group_id!r}) = {count}, expected {expected}")
    for search in SEARCHES:
        found = list(await directory.list_groups(search=search))
        want = {gid for gid, group in groups.items() if name_matches(group.display_name, search)}
        if {group.id for group in found} != want or len(found) != len(want):
            raise _fail(f"list_groups(search={search!r}) found {sorted(g.id for g in found)}, expected {sorted(want)}")
        for group in found:
            if group != groups[group.id]:
                raise _fail(f"list_groups(search={search!r}): {group!r} differs from the fixture's")


async def check_lookup(directory: UserLookup, fixture: Mapping[str, Any]) -> None:
    """Check ``lookup_users`` against the fixture (:func:`check_directory` calls it when it applies)."""
    users = {str(item["id"]): DirectoryUser.from_graph(item) for item in fixture.get("users") or ()}
    group_ids = [str(item["id"]) for item in fixture.get("groups") or ()]
    sample = sorted(users)[:LOOKUP_SAMPLE]
    asked = [*sample, UNKNOWN_USER_ID, *group_ids[:1], *sample[:2]]  # an unknown id, a group, repeats
    expected: dict[str, DirectoryUser | None] = {user_id: users.get(user_id) for user_id in asked}
    for ids in (asked, sample[:1], [UNKNOWN_USER_ID], []):
        answer = dict(await directory.lookup_users(list(ids)))
        want = {user_id: expected.get(user_id, users.get(user_id)) for user_id in ids}
        if set(answer) != set(want):
            missing = sorted(set(want) - set(answer))[:10]
            extra = sorted(set(answer) - set(want))[:10]
            raise _fail(f"lookup_users: missing {missing}, unexpected {extra}")
        for user_id, user in want.items():
            if answer[user_id] != user:
                raise _fail(f"lookup_users: {user_id!r} answered {answer[user_id]!r}, expected {user!r}")


# -- incremental reads -------------------------------------------------------------------


@runtime_checkable
class DirectoryEditor(Protocol):
    """Changes the directory under test, as an Entra admin would, for :func:`check_delta`."""

    def add_member(self, group_id: str, member_id: str) -> None:
        """Make ``member_id`` (a user, a group or a device id) a direct member of ``group_id``."""
        ...

    def remove_member(self, group_id: str, member_id: str) -> None:
        """End a direct membership."""
        ...

    def delete_user(self, user_id: str, *, soft: bool) -> None:
        """Delete a user and its memberships (``soft``: restorable, Graph's reason ``"changed"``)."""
        ...

    def delete_group(self, group_id: str) -> None:
        """Delete a group: its own memberships and its memberships in other groups end with it."""
        ...

    def restore_group(self, group: Mapping[str, Any], members: Sequence[str]) -> None:
        """Bring a deleted group back (restored, or created again under its id) with these direct members."""
        ...


class InMemoryEditor:
    """A :class:`DirectoryEditor` for an :class:`~calm_azure_sync.InMemoryDirectory`."""

    def __init__(self, directory: InMemoryDirectory) -> None:
        self.directory = directory

    def add_member(self, group_id: str, member_id: str) -> None:
        self.directory.add_member(group_id, member_id)

    def remove_member(self, group_id: str, member_id: str) -> None:
        self.directory.remove_member(group_id, member_id)

    def delete_user(self, user_id: str, *, soft: bool) -> None:
        self.directory.delete_user(user_id, soft=soft)

    def delete_group(self, group_id: str) -> None:
        self.directory.delete_group(group_id)

    def restore_group(self, group: Mapping[str, Any], members: Sequence[str]) -> None:
        self.directory.put_group(DirectoryGroup.from_graph(group), members)


class FakeGraphEditor:
    """A :class:`DirectoryEditor` for the fake Graph (a ``FakeGraph`` or a ``FakeGraphServer``)."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph

    def add_member(self, group_id: str, member_id: str) -> None:
        self.graph.add_member(group_id, member_id)

    def remove_member(self, group_id: str, member_id: str) -> None:
        self.graph.remove_member(group_id, member_id)

    def delete_user(self, user_id: str, *, soft: bool) -> None:
        self.graph.remove_user(user_id, soft=soft)

    def delete_group(self, group_id: str) -> None:
        self.graph.remove_group(group_id)

    def restore_group(self, group: Mapping[str, Any], members: Sequence[str]) -> None:
        self.graph.add_group(dict(group), members=list(members))


class _Model:
    """The fixture as it changes: what a full read must give after each edit (computed here, not asked)."""

    def __init__(self, fixture: Mapping[str, Any], editor: DirectoryEditor) -> None:
        self.data: dict[str, Any] = copy.deepcopy(
            {
                "users": list(fixture.get("users") or ()),
                "groups": list(fixture.get("groups") or ()),
                "members": {g: list(ids) for g, ids in (fixture.get("members") or {}).items()},
            }
        )
        self.editor = editor

    @property
    def group_ids(self) -> set[str]:
        return {str(item["id"]) for item in self.data["groups"]}

    def add_member(self, group_id: str, member_id: str) -> None:
        self.editor.add_member(group_id, member_id)
        ids = self.data["members"].setdefault(group_id, [])
        if member_id not in ids:
            ids.append(member_id)

    def remove_member(self, group_id: str, member_id: str) -> None:
        self.editor.remove_member(group_id, member_id)
        self.data["members"][group_id] = [m for m in self.data["members"].get(group_id, []) if m != member_id]

    def _drop(self, object_id: str) -> None:
        for group_id, ids in self.data["members"].items():
            self.data["members"][group_id] = [m for m in ids if m != object_id]

    def delete_user(self, user_id: str, *, soft: bool) -> None:
        self.editor.delete_user(user_id, soft=soft)
        self.data["users"] = [u for u in self.data["users"] if u["id"] != user_id]
        self._drop(user_id)

    def delete_group(self, group_id: str) -> dict[str, Any]:
        self.editor.delete_group(group_id)
        group = next(g for g in self.data["groups"] if g["id"] == group_id)
        self.data["groups"] = [g for g in self.data["groups"] if g["id"] != group_id]
        self.data["members"].pop(group_id, None)
        self._drop(group_id)
        return dict(group)

    def restore_group(self, group: Mapping[str, Any], members: Sequence[str]) -> None:
        self.editor.restore_group(group, members)
        self.data["groups"].append(dict(group))
        self.data["members"][str(group["id"])] = list(members)


class _Fold:
    """What an incremental reader keeps: direct memberships and users, folded round after round."""

    def __init__(self, directory: DeltaDirectory, tracked: list[str]) -> None:
        self.directory = directory
        self.tracked = tracked
        self.cursor: Mapping[str, Any] | None = None
        self.groups: dict[str, frozenset[str]] = {}
        self.users: dict[str, DirectoryUser] = {}
        self.log: list[DirectoryDelta] = []

    async def round(self, model: _Model, step: str) -> DirectoryDelta:
        delta, self.cursor = await self.directory.changes(self.cursor, self.tracked)
        self.log.append(delta)
        self.users.update((user.id, user) for user in delta.users)
        for removed in delta.removed_users:
            self.users.pop(removed.id, None)
        applied = apply_delta(self.groups, self.users, delta, self.tracked)
        self.groups = dict(applied.groups)
        if applied.new_groups:
            raise _fail(f"check_delta ({step}): nested groups {sorted(applied.new_groups)} were never tracked")
        if applied.missing_users:
            raise _fail(
                f"check_delta ({step}): members {sorted(applied.missing_users)[:10]} came with no user data "
                "(neither in the first round's users nor as a changed user since)"
            )
        folded = snapshot_members(self.groups, self.users, self.tracked)
        for group_id in self.tracked:
            if group_id not in model.group_ids:
                if group_id in folded:
                    raise _fail(f"check_delta ({step}): group {group_id!r} is deleted, but the delta kept it")
                continue
            if group_id not in folded:
                raise _fail(f"check_delta ({step}): group {group_id!r} exists, but the delta left it deleted")
            want = expected_members(model.data, group_id)
            got = {user.id: user for user in folded[group_id]}
            if set(got) != set(want):
                missing = sorted(set(want) - set(got))[:10]
                extra = sorted(set(got) - set(want))[:10]
                raise _fail(
                    f"check_delta ({step}): group {group_id!r} read incrementally differs from a full read: "
                    f"missing {missing}, unexpected {extra}"
                )
            for user_id, user in got.items():
                if user != want[user_id]:
                    raise _fail(f"check_delta ({step}): {user!r} differs from the fixture's {want[user_id]!r}")
        return delta


async def check_delta(
    directory: Directory, fixture: Mapping[str, Any], editor: DirectoryEditor | None = None
) -> list[DirectoryDelta]:
    """Check incremental reads against full reads over a history of edits; return the change log read.

    ``directory`` must be a :class:`~calm_azure_sync.DeltaDirectory` over
    ``fixture`` (:func:`conformance_fixture`, or one with the same groups),
    unchanged so far; ``editor`` changes it (default: an
    :class:`InMemoryEditor` when ``directory`` is an ``InMemoryDirectory``).
    Raises :class:`AssertionError` naming the first step where an incremental
    read and a full read disagree, or where the change log is not Graph's.
    Two directories over the same fixture should return equal logs.
    """
    if not isinstance(directory, DeltaDirectory):
        raise _fail(f"{type(directory).__name__} is not a DeltaDirectory: it has no changes()")
    if editor is None:
        if not isinstance(directory, InMemoryDirectory):
            raise _fail("check_delta needs a DirectoryEditor for this directory")
        editor = InMemoryEditor(directory)
    model = _Model(fixture, editor)
    needed = {"g-staff", "g-teachers", "g-science", "g-empty", "g-cycle-a", "g-cycle-b"}
    if not needed <= model.group_ids:
        raise _fail(f"check_delta needs the conformance fixture's groups {sorted(needed)}")
    fold = _Fold(directory, sorted(model.group_ids))

    first = await fold.round(model, "first round")
    if not first.complete:
        raise _fail("check_delta (first round): a round without a cursor must list everything (complete)")
    quiet = await fold.round(model, "a quiet round")
    if not quiet.empty:
        raise _fail(f"check_delta (a quiet round): nothing changed, but the delta is not empty: {quiet!r}")

    model.remove_member("g-teachers", "u00001")
    model.add_member("g-empty", "u00002")
    model.add_member("g-cycle-a", "g-science")  # a nested group joins
    model.add_member("g-staff", "device-2")  # a device is no user
    await fold.round(model, "members leave and join")
    model.remove_member("g-staff", "device-1")
    await fold.round(model, "a device leaves")

    model.delete_user("u00000", soft=True)
    model.delete_user("disabled-1", soft=False)
    delta = await fold.round(model, "users deleted")
    if set(delta.removed_users) != {RemovedUser("u00000", "changed"), RemovedUser("disabled-1", "deleted")}:
        raise _fail(
            f"check_delta (users deleted): removed_users {delta.removed_users!r}, expected u00000 "
            "'changed' (soft-deleted) and disabled-1 'deleted' (for good)"
        )

    science = model.delete_group("g-science")
    delta = await fold.round(model, "a nested group deleted")
    if "g-science" not in delta.removed_groups:
        raise _fail(f"check_delta (a nested group deleted): removed_groups {sorted(delta.removed_groups)} lacks it")

    model.restore_group(science, [])
    delta = await fold.round(model, "a group restored empty")
    if delta.group("g-science") is None or delta.empty:
        raise _fail("check_delta (a group restored empty): the group must be listed again, even with no members")

    model.delete_group("g-science")
    model.restore_group(science, ["u00003", "upn-only-1"])
    model.add_member("g-teachers", "g-science")
    await fold.round(model, "a group deleted and created again in one window, with other members")

    teachers = model.delete_group("g-teachers")
    await fold.round(model, "a group with members deleted")
    model.restore_group(teachers, ["u00001", "g-cycle-b"])
    delta = await fold.round(model, "a group restored with members")
    restored = delta.group("g-teachers")
    if restored is None or restored.added_users != {"u00001"} or restored.added_groups != {"g-cycle-b"}:
        raise _fail(f"check_delta (a group restored with members): its whole membership must be listed, got {restored!r}")
    quiet = await fold.round(model, "a quiet round at the end")
    if not quiet.empty:
        raise _fail(f"check_delta (a quiet round at the end): nothing changed, but the delta is not empty: {quiet!r}")
    return fold.log
