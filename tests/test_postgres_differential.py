"""Differential: random change sequences give the same results and the same state on SQLite and PostgreSQL.

Both stores decide changes with the same shared rules; what could differ is
everything around them: which rows a batch loads, how writes are ordered and
collapsed (COPY, executemany), email-key and boolean round trips, the slow
path. Hypothesis drives batches over a small pool of ids and emails (so
collisions, case clashes, relinks of taken emails, re-creates,
deactivations with grants left, and memberships of groups that do not exist
yet or were retired are common) and compares every result's
outcome and error presence, and the loaded state, after every batch.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calm_azure_sync import (
    AddGroupMember,
    Assign,
    CreateUser,
    DeactivateUser,
    LinkUser,
    RemoveGroupMember,
    RetireGroup,
    Role,
    SqliteUserStore,
    StoreState,
    Unassign,
    UpdateUser,
    UpsertGroup,
)
from calm_azure_sync.plan import Change

from .conftest import budget

psycopg = pytest.importorskip("psycopg", reason="the postgres extra is not installed")

from calm_azure_sync.postgres import PostgresUserStore  # noqa: E402

TRUSTS = ("trust-oak", "trust-elm")
EXTERNAL_IDS = ("e0", "e1", "e2", "e3")
MANUAL_IDS = ("m0", "m1")
GROUP_IDS = ("g1", "g2")
EMAILS = ("ann@oak.example", "ANN@oak.example", "bob@oak.example", "cat@oak.example", "Cat@Oak.Example", "dan@oak.example")

_change_specs = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(EXTERNAL_IDS), st.sampled_from(EMAILS)),
    st.tuples(st.just("link"), st.sampled_from(EXTERNAL_IDS), st.sampled_from(MANUAL_IDS), st.sampled_from(EMAILS)),
    st.tuples(st.just("update"), st.sampled_from(EXTERNAL_IDS), st.sampled_from(EMAILS), st.booleans()),
    st.tuples(st.just("assign"), st.sampled_from(EXTERNAL_IDS), st.sampled_from(("s1", "s2")), st.sampled_from(Role)),
    st.tuples(st.just("unassign"), st.sampled_from(EXTERNAL_IDS), st.sampled_from(("s1", "s2"))),
    st.tuples(st.just("deactivate"), st.sampled_from(EXTERNAL_IDS)),
    st.tuples(st.just("upsert_group"), st.sampled_from(GROUP_IDS), st.sampled_from(("Staff", "SLT")), st.sampled_from((("s1",), ("s1", "s2")))),
    st.tuples(st.just("add_member"), st.sampled_from(EXTERNAL_IDS), st.sampled_from(GROUP_IDS)),
    st.tuples(st.just("remove_member"), st.sampled_from(EXTERNAL_IDS), st.sampled_from(GROUP_IDS)),
    st.tuples(st.just("retire_group"), st.sampled_from(GROUP_IDS)),
)  # fmt: skip
_batches = st.lists(
    st.tuples(st.sampled_from(TRUSTS), st.lists(_change_specs, min_size=1, max_size=10)), min_size=1, max_size=5
)


def _resolve(spec: tuple[object, ...], state: StoreState) -> Change:
    """A change from a spec, naming store users by their external id, as a planner would."""
    kind, external_id = spec[0], str(spec[1])
    if kind == "upsert_group":
        return UpsertGroup(external_id, str(spec[2]), tuple(spec[3]))  # type: ignore[arg-type]
    if kind == "add_member":
        return AddGroupMember(str(spec[2]), external_id)
    if kind == "remove_member":
        return RemoveGroupMember(str(spec[2]), external_id)
    if kind == "retire_group":
        return RetireGroup(external_id)
    user_id = next((u.user_id for u in state.users.values() if u.external_id == external_id), "no-such-user")
    if kind == "create":
        return CreateUser(external_id, str(spec[2]), f"Name {external_id}", "Given", None)
    if kind == "link":
        return LinkUser(external_id, str(spec[2]), str(spec[3]), f"Linked {external_id}")
    if kind == "update":
        return UpdateUser(external_id, user_id, str(spec[2]), f"Updated {external_id}", reactivate=bool(spec[3]))
    if kind == "assign":
        role = spec[3]
        assert isinstance(role, Role)
        return Assign(external_id, str(spec[2]), "risk", role)
    if kind == "unassign":
        return Unassign(external_id, str(spec[2]), "risk", previous=Role.MEMBER)
    return DeactivateUser(external_id, user_id)


def _comparable(state: StoreState) -> object:
    """The state with generated user ids replaced by what they stand for."""

    def name(user_id: str) -> str:
        return user_id if user_id in MANUAL_IDS else f"azure:{state.users[user_id].external_id}"

    users = {
        name(user.user_id): (
            user.email,
            user.display_name,
            user.external_id,
            user.given_name,
            user.surname,
            user.active,
            user.deactivated_by_sync,
        )
        for user in state.users.values()
    }
    return (
        users,
        {key: dict(value) for key, value in state.synced_access.items() if value},
        sorted(map(name, state.manual_access_user_ids)),
        dict(state.groups),
        dict(state.group_members),
    )


async def _compare(batches: Sequence[tuple[str, Sequence[tuple[object, ...]]]], conninfo: str, schema: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as connection:
        # Emptying the tables is much faster than a new schema per example.
        if connection.execute("SELECT to_regclass(%s)", (f'"{schema}".users',)).fetchone() != (None,):
            connection.execute(f'TRUNCATE "{schema}".users, "{schema}".grants, "{schema}".sync_states, "{schema}".synced_groups CASCADE')
    with tempfile.TemporaryDirectory() as folder:
        async with SqliteUserStore(Path(folder) / "calm.db") as sqlite_store, PostgresUserStore(
            conninfo, schema=schema, pool_size=1
        ) as postgres_store:
            for store in (sqlite_store, postgres_store):
                await store.add_user("ann@oak.example", "Ann", user_id="m0")
                await store.add_user("eve@oak.example", "Eve", user_id="m1")
                await store.grant("m1", "s1", "risk", "Member")
            for trust, specs in batches:
                answers = []
                for store in (sqlite_store, postgres_store):
                    state = await store.load(trust)
                    results = await store.apply(trust, [_resolve(spec, state) for spec in specs])
                    answers.append([(result.outcome, result.error is None) for result in results])
                assert answers[0] == answers[1], f"batch {specs} of {trust}"
                for each in TRUSTS:
                    assert _comparable(await postgres_store.load(each)) == _comparable(
                        await sqlite_store.load(each)
                    ), f"state of {each} after batch {specs}"


def test_sqlite_and_postgres_give_the_same_results_and_state(postgres_url: str, postgres_schema: str) -> None:
    @settings(
        max_examples=budget("CALM_PG_DIFFERENTIAL_EXAMPLES", 25, 300),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(batches=_batches)
    def check(batches: list[tuple[str, list[tuple[object, ...]]]]) -> None:
        asyncio.run(_compare(batches, postgres_url, postgres_schema))

    check()
