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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..directory._search import name_matches
from ..directory.protocol import Directory, GroupDiscovery, UserLookup
from ..errors import GroupNotFoundError
from ..model import DirectoryGroup, DirectoryUser

__all__ = [
    "LOOKUP_SAMPLE",
    "DirectorySnapshot",
    "SEARCHES",
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
    nothing for, a device id among the members, a group with no members, and
    a group of ``big_group_size`` users (make it larger than a page).
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
    return {"users": users, "groups": groups, "members": members}


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
