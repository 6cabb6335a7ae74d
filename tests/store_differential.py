"""Random change batches for store differentials: one grammar, one way to resolve it, one way to compare.

A spec names users by external id (as a planner does) and is resolved
against each store's own state, so two stores that make their own user ids
get the same changes. Used by the SQLite-against-in-memory and the
SQLite-against-PostgreSQL differentials.
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from calm_azure_sync import (
    AddGroupMember,
    Assign,
    CreateUser,
    DeactivateUser,
    LinkUser,
    RelinkUser,
    RemoveGroupMember,
    RetireGroup,
    Role,
    StoreState,
    Unassign,
    UpdateUser,
    UpsertGroup,
)
from calm_azure_sync.plan import Change


def change_specs(
    *,
    external_ids: Sequence[str],
    manual_ids: Sequence[str],
    emails: Sequence[str],
    names: Sequence[str],
    sites: Sequence[str],
    groups: Sequence[str],
) -> st.SearchStrategy[tuple[object, ...]]:
    """Specs of every change kind over small pools, so collisions, relinks and re-creates are common."""
    ids, manual, mail, name = (st.sampled_from(tuple(pool)) for pool in (external_ids, manual_ids, emails, names))
    site, group = st.sampled_from(tuple(sites)), st.sampled_from(tuple(groups))
    return st.one_of(
        st.tuples(st.just("create"), ids, mail, name),
        st.tuples(st.just("link"), ids, manual, mail),
        st.tuples(st.just("update"), ids, mail, st.booleans(), name),
        st.tuples(st.just("relink"), ids, ids, mail),
        st.tuples(st.just("assign"), ids, site, st.sampled_from(Role)),
        st.tuples(st.just("unassign"), ids, site),
        st.tuples(st.just("deactivate"), ids),
        st.tuples(st.just("upsert_group"), group, name, st.lists(site, max_size=2, unique=True)),
        st.tuples(st.just("add_member"), group, ids),
        st.tuples(st.just("remove_member"), group, ids),
        st.tuples(st.just("retire_group"), group),
    )


def _holder(state: StoreState, external_id: str) -> str:
    return next((user.user_id for user in state.users.values() if user.external_id == external_id), "no-such-user")


def resolve(spec: tuple[object, ...], state: StoreState) -> Change:
    """Turn a spec into a change, naming store users the way a planner would (by external id)."""
    kind, external_id = spec[0], str(spec[1])
    if kind == "upsert_group":
        sites = spec[3]
        assert isinstance(sites, list)
        return UpsertGroup(external_id, str(spec[2]), tuple(sites))
    if kind == "add_member":
        return AddGroupMember(external_id, str(spec[2]))
    if kind == "remove_member":
        return RemoveGroupMember(external_id, str(spec[2]))
    if kind == "retire_group":
        return RetireGroup(external_id)
    user_id = _holder(state, external_id)
    if kind == "create":
        return CreateUser(external_id, str(spec[2]), str(spec[3]), given_name=str(spec[3]))
    if kind == "link":
        return LinkUser(external_id, str(spec[2]), str(spec[3]), f"Linked {external_id}")
    if kind == "update":
        return UpdateUser(
            external_id, user_id, str(spec[2]), str(spec[4]), surname=str(spec[4]), reactivate=bool(spec[3])
        )
    if kind == "relink":
        return RelinkUser(str(spec[2]), user_id, external_id, str(spec[3]), f"Relinked {spec[2]}")
    if kind == "assign":
        role = spec[3]
        assert isinstance(role, Role)
        return Assign(external_id, str(spec[2]), "risk", role)
    if kind == "unassign":
        return Unassign(external_id, str(spec[2]), "risk", previous=Role.MEMBER)
    return DeactivateUser(external_id, user_id)


def comparable(state: StoreState, manual_ids: Sequence[str]) -> object:
    """The state without generated user ids (a synced user is named by its external id)."""

    def name(user_id: str) -> str:
        return user_id if user_id in manual_ids else f"azure:{state.users[user_id].external_id}"

    users = {
        name(user.user_id): (
            user.email,
            user.display_name,
            user.given_name,
            user.surname,
            user.external_id,
            user.active,
            user.deactivated_by_sync,
        )
        for user in state.users.values()
    }
    return (
        users,
        state.synced_access,
        sorted(map(name, state.manual_access_user_ids)),
        sorted(map(name, state.other_access_user_ids)),
        state.groups,
        state.group_members,
    )
