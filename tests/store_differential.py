"""The store differential: one driver that runs the same steps on several shipped stores and compares them.

API.md §11: "the same changes give the same rows in the in-memory, SQLite and
PostgreSQL stores, for any text Graph can send". :func:`check_stores_agree`
runs a Hypothesis state machine over any set of stores (the test picks the
pairs): each step is applied to every store, and after each one every
:class:`ChangeResult`, the full :class:`StoreState` of each trust, the host
views (``users()``, ``groups()``), the sync state and the delta cache must
be the same in all of them.

The alphabet, over small pools so collisions are common:

- change batches of every kind: creates, links, relinks, updates (with
  reactivation), assigns (upgrades and downgrades), unassigns, deactivations,
  group upserts, member adds and removes, retires;
- a relink followed by membership changes of the new object id in the same
  batch, and in later ones (the new id stays in the pool);
- host helpers: a manual user, a manual grant, a person (de)activating a user;
- sync-state saves, with a hold of removals, baselines, leavers and delta data;
- delta cache writes (whole and as a difference from the stored cache) and clears;
- odd text everywhere Graph can send it: NUL, lone surrogates, the PostgreSQL
  codec's own escape character, right-to-left overrides, emoji sequences,
  long strings and case-folding pairs in emails (``ß``/``SS``, the Kelvin
  sign and ``K``), in names, emails, ids, sites and trusts.

A spec names users by external id, as a planner does, and is resolved
against each store's own rows, so stores that make their own user ids get the
same changes; states are compared with each synced user named by its
external id. Error texts are compared with the user ids replaced the same way.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from calm_azure_sync import (
    AddGroupMember,
    Assign,
    ChangeResult,
    CreateUser,
    DeactivateUser,
    DirectoryUser,
    Hold,
    LinkUser,
    RelinkUser,
    RemoveGroupMember,
    RetireGroup,
    Role,
    StoreState,
    SyncState,
    Unassign,
    UpdateUser,
    UpsertGroup,
)
from calm_azure_sync.core.plan import Change
from calm_azure_sync.incremental import DeltaCache, cache_write

StoreFactory = Callable[[AsyncExitStack], Awaitable[Any]]
"""Opens one fresh, empty store for an example (closing it through the exit stack)."""

T0 = dt.datetime(2026, 9, 1, 8, 0, tzinfo=dt.UTC)
MODULE = "risk"

# -- the pools -------------------------------------------------------------------------

TRUSTS = ("trust-oak", "trust\x00elm")
EXTERNAL_IDS = ("e0", "e1", "e\x00", "e\uffff0", "e\ud800", "r1", "r\x00")  # e\ud800: no store can keep it
# What a re-created account is relinked to (mostly ids no create has taken yet).
RELINK_IDS = ("r1", "r\x00", "r1", "r\x00", "e1", "e\ud800")
RELINK_EMAILS = ("ann.new@oak.example", "nul\x00@new.example", "zo\ud83d@new.example", "ANN@oak.example")
MANUAL_IDS = ("m0", "m1", "m2", "m\x00")
EMAILS = (
    "ann@oak.example",
    "ANN@oak.example",
    " ann@oak.example ",
    "kim@oak.example",
    "\u212aim@oak.example",  # KELVIN SIGN: lower() makes it "kim"
    "stra\u00dfe@oak.example",
    "STRASSE@oak.example",  # not the same mailbox: email_key lowers, it does not casefold
    "zo\ud83d@oak.example",  # a lone surrogate: stored as U+FFFD
    "ZO\ud83d@oak.example",
    "nul\x00@oak.example",
    "\u202eevil@oak.example",
    "x" * 300 + "@oak.example",
    "",
)
NAMES = (
    "Ann",
    "\u00c9mile",
    "Zo\ud83d",
    "\udc00x",
    "nul\x00name",
    "\uffff0",  # what the PostgreSQL codec writes for a NUL, as text
    "\u202eRTL\u202c",
    "\U0001f469\u200d\U0001f52c",
    "\u01c5",  # a titlecase letter
    "y" * 4000,
)
SITES = ("s1", "s2", "s\x00", "s\ud800")
GROUPS = ("g1", "g2", "g\x00", "g\udc01")
ODD_TEXT = ("", "plain", "nul\x00", "\ud83d", "\uffff", "\u202e", "\U0001f469\u200d\U0001f52c", "z" * 2000)
# Tenant ids (API §13): two plain ones, and odd text the PostgreSQL codec must
# keep and a lone surrogate no store can (that change fails alone).
TENANTS = ("tenant-a", "tenant-b", "t\x00", "t\uffff0", "t\ud800")
# Ids Graph sends for the delta cache: full reads refuse one holding a surrogate.
CACHE_IDS = ("u1", "u2", "u\x00", "u\uffff", "g1", "g\x00")

ROLES = st.sampled_from(Role)


def _pick(pool: Sequence[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(tuple(pool))


def change_specs(
    *,
    external_ids: Sequence[str] = EXTERNAL_IDS,
    manual_ids: Sequence[str] = MANUAL_IDS,
    emails: Sequence[str] = EMAILS,
    names: Sequence[str] = NAMES,
    sites: Sequence[str] = SITES,
    groups: Sequence[str] = GROUPS,
) -> st.SearchStrategy[tuple[object, ...]]:
    """Specs of every change kind over small pools, so collisions, relinks and re-creates are common."""
    ids, manual, mail, name = _pick(external_ids), _pick(manual_ids), _pick(emails), _pick(names)
    site, group, tenant = _pick(sites), _pick(groups), st.none() | _pick(TENANTS)
    return st.one_of(
        st.tuples(st.just("create"), ids, mail, name, tenant),
        st.tuples(st.just("link"), ids, manual, mail, tenant),
        st.tuples(st.just("update"), ids, mail, st.booleans(), name, tenant),
        st.tuples(st.just("relink"), ids, ids, mail, tenant),
        st.tuples(st.just("assign"), ids, site, ROLES, st.none() | ROLES),
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
    # A user change's tenant, last in its spec when it names one.
    at = {"create": 4, "link": 4, "update": 5, "relink": 4}.get(str(kind), len(spec))
    tenant = spec[at] if at < len(spec) else None
    assert tenant is None or isinstance(tenant, str)
    if kind == "create":
        return CreateUser(external_id, str(spec[2]), str(spec[3]), given_name=str(spec[3]), tenant_id=tenant)
    if kind == "link":
        return LinkUser(external_id, str(spec[2]), str(spec[3]), f"Linked {external_id}", tenant_id=tenant)
    if kind == "update":
        return UpdateUser(
            external_id, user_id, str(spec[2]), str(spec[4]), surname=str(spec[4]), reactivate=bool(spec[3]),
            tenant_id=tenant,
        )  # fmt: skip
    if kind == "relink":
        return RelinkUser(str(spec[2]), user_id, external_id, str(spec[3]), f"Relinked {spec[2]}", tenant_id=tenant)
    if kind == "assign":
        role, previous = spec[3], spec[4] if len(spec) > 4 else None
        assert isinstance(role, Role) and (previous is None or isinstance(previous, Role))
        return Assign(external_id, str(spec[2]), MODULE, role, previous=previous)
    if kind == "unassign":
        return Unassign(external_id, str(spec[2]), MODULE, previous=Role.MEMBER)
    return DeactivateUser(external_id, user_id)


def comparable(state: StoreState, manual_ids: Sequence[str] = MANUAL_IDS) -> object:
    """The whole state with each user named independently of the store's ids (synced ones by external id)."""

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
            user.tenant_id,
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


def _names(state: StoreState, manual_ids: Sequence[str]) -> dict[str, str]:
    return {
        user_id: user_id if user_id in manual_ids else f"azure:{user.external_id}"
        for user_id, user in state.users.items()
    }


def comparable_results(
    results: Sequence[ChangeResult], state: StoreState, manual_ids: Sequence[str] = MANUAL_IDS
) -> list[tuple[str, str | None]]:
    """Each result's outcome and error, the store's own user ids in the error replaced by their names."""
    names = {user_id: name for user_id, name in _names(state, manual_ids).items() if user_id != name}
    shown: list[tuple[str, str | None]] = []
    for result in results:
        error = result.error
        if error is not None:
            for user_id, name in names.items():
                error = error.replace(user_id, name)
        shown.append((result.outcome, error))
    return shown


# -- what else a step can do --------------------------------------------------------------


@st.composite
def sync_states(draw: st.DrawFn) -> SyncState:
    """A sync state as a run saves it: maybe a hold of removals, baselines, leavers, delta data; odd text."""
    ids, text = _pick(EXTERNAL_IDS), _pick(ODD_TEXT)
    removals = st.one_of(
        st.builds(Unassign, ids, _pick(SITES), st.just(MODULE), previous=ROLES),
        st.builds(RemoveGroupMember, _pick(GROUPS), ids),
        st.builds(DeactivateUser, ids, text.filter(bool)),
        st.builds(lambda e, s, r: Assign(e, s, MODULE, Role.MEMBER, previous=r), ids, _pick(SITES),
                  st.sampled_from((Role.MANAGER, Role.ADMIN))),
    )
    hold = draw(
        st.none()
        | st.builds(
            Hold,
            id=st.sampled_from(("h1", "h\x00")),
            trust_site_id=_pick(TRUSTS),
            reason=st.sampled_from(("mass_removal", "group_shrank")),
            changes=st.lists(removals, min_size=1, max_size=4),
            created_at=st.just(T0),
            run_id=_pick(ODD_TEXT).filter(bool),
            group_ids=st.lists(_pick(GROUPS), max_size=2),
        )
    )
    return SyncState(
        hold=hold,
        baselines=draw(st.dictionaries(_pick(GROUPS), st.integers(0, 10**6), max_size=3)),
        left_scope=draw(st.dictionaries(ids, st.booleans(), max_size=3)),
        delta=draw(st.dictionaries(text, text, max_size=2)),
    )


@st.composite
def directory_users(draw: st.DrawFn, user_id: str) -> DirectoryUser:
    """A user as Graph sends it (through ``from_graph``, which makes its text storable)."""
    text = st.none() | _pick(ODD_TEXT) | _pick(NAMES)
    return DirectoryUser.from_graph(
        {
            "id": user_id,
            "displayName": draw(text),
            "mail": draw(st.none() | _pick(EMAILS)),
            "userPrincipalName": draw(text),
            "givenName": draw(text),
            "surname": draw(text),
            "accountEnabled": draw(st.booleans()),
            "userType": draw(st.sampled_from(("Member", "Guest", "g\x00"))),
            "creationType": draw(text),
            "onPremisesSyncEnabled": draw(st.none() | st.booleans()),
            "assignedLicenses": draw(st.none() | st.lists(st.just({"skuId": "x"}), max_size=2)),
        }
    )


@st.composite
def delta_caches(draw: st.DrawFn) -> DeltaCache:
    """A delta cache over a small pool of ids (groups nest), with odd text in the cursor and the users."""
    ids = _pick(CACHE_IDS)
    groups = draw(st.dictionaries(ids, st.frozensets(ids, max_size=3), max_size=3))
    user_ids = draw(st.frozensets(ids, max_size=3))
    users = {user_id: draw(directory_users(user_id)) for user_id in sorted(user_ids)}
    return DeltaCache(
        {"link": draw(_pick(ODD_TEXT)), "round": draw(st.integers(0, 3))},
        groups,
        users,
        draw(st.frozensets(ids, max_size=2)),
        T0 + dt.timedelta(hours=draw(st.integers(0, 48))),
    )


# -- the driver -----------------------------------------------------------------------------


class StoresAgree(RuleBasedStateMachine):
    """Every step on every store; after each, everything the stores answer must be the same."""

    factories: Sequence[tuple[str, StoreFactory]] = ()

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.exits = AsyncExitStack()
        self.stores: list[tuple[str, Any]] = [
            (name, self.run(factory(self.exits))) for name, factory in self.factories
        ]
        self.steps: list[str] = []

    def run(self, awaitable: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(awaitable)

    def teardown(self) -> None:
        try:
            self.run(self.exits.aclose())
        finally:
            self.loop.close()

    def _same(self, what: str, answers: Sequence[object]) -> None:
        first_name = self.stores[0][0]
        for (name, _store), answer in zip(self.stores[1:], answers[1:], strict=True):
            assert answer == answers[0], f"{what}: {name} differs from {first_name} after {self.steps[-1:]}"

    def _each(self, call: Callable[[Any], Awaitable[Any]]) -> list[tuple[str, Any]]:
        """``call(store)`` on every store: ``("returned", value)`` or ``("raised", the error's type)``.

        Only the type of an error is compared: messages name the store ("in
        postgres schema …"); the results of ``apply`` are compared in full.
        """
        answers: list[tuple[str, Any]] = []
        for _name, store in self.stores:
            try:
                answers.append(("returned", self.run(call(store))))
            except Exception as error:
                answers.append(("raised", type(error).__name__))
        return answers

    @initialize()
    def invited_users(self) -> None:
        async def invite(store: Any) -> None:
            await store.add_user("ann@oak.example", "Ann", user_id="m0")
            await store.add_user("eve@oak.example", "Eve \x00", user_id="m1")
            await store.grant("m1", "s1", MODULE, "Member")

        for _name, store in self.stores:
            self.run(invite(store))

    @rule(trust=_pick(TRUSTS), specs=st.lists(change_specs(), min_size=1, max_size=8))
    def apply_a_batch(self, trust: str, specs: list[tuple[object, ...]]) -> None:
        self.steps.append(f"apply {specs!r:.300} to {trust!r}")
        self._apply(trust, lambda state: [resolve(spec, state) for spec in specs])

    @rule(
        trust=_pick(TRUSTS),
        old=_pick(EXTERNAL_IDS[:4]),
        new=_pick(RELINK_IDS),
        email=_pick(RELINK_EMAILS),
        group=_pick(GROUPS[:3]),
        joined=st.booleans(),
        after=st.lists(st.sampled_from(("add_member", "remove_member")), min_size=1, max_size=3),
        elsewhere=st.lists(st.tuples(st.sampled_from(("add_member", "remove_member")), _pick(GROUPS)), max_size=2),
        tenants=st.tuples(st.none() | _pick(TENANTS), st.none() | _pick(TENANTS)),
    )
    def relink_then_change_memberships(
        self,
        trust: str,
        old: str,
        new: str,
        email: str,
        group: str,
        joined: bool,
        after: list[str],
        elsewhere: list[tuple[str, str]],
        tenants: tuple[str | None, str | None],
    ) -> None:
        """A re-created account: the store user takes the new object id, then joins or leaves groups by it.

        First (one batch) the user with the old id exists and is, or is not,
        a member of ``group``, as earlier runs left it; then, in one batch,
        the relink and membership changes naming the new id. Later batches
        name the new id too (it stays in the pool). The old and the new
        account each have a tenant (or none), maybe another one.
        """
        self.steps.append(
            f"{old!r} ({tenants[0]!r}) in {group!r} ({joined}), relinked to {new!r} ({tenants[1]!r}) in {trust!r}, "
            f"then {after!r}"
        )
        setup = [("upsert_group", group, "Staff", ["s1"]), ("create", old, email, "Ann", tenants[0])]
        setup.append(("add_member" if joined else "remove_member", group, old))
        self._apply(trust, lambda state: [resolve(spec, state) for spec in setup])
        self._apply(
            trust,
            lambda state: [
                resolve(("relink", old, new, email, tenants[1]), state),
                *(resolve((kind, group, new), state) for kind in after),
                *(resolve((kind, other, new), state) for kind, other in elsewhere),
            ],
        )

    def _apply(self, trust: str, changes_for: Callable[[StoreState], list[Change]]) -> None:
        async def apply(store: Any) -> list[tuple[str, str | None]]:
            changes = changes_for(await store.load(trust))
            results = await store.apply(trust, changes)  # never raises: a change fails alone
            assert [result.change for result in results] == changes, "one result per change, in order"
            return comparable_results(results, await store.load(trust))

        self._same("results", [self.run(apply(store)) for _name, store in self.stores])

    @rule(email=_pick(EMAILS), name=_pick(NAMES), user_id=st.sampled_from(("m2", "m\x00", "m1", "m\ud800")))
    def invite_a_user(self, email: str, name: str, user_id: str) -> None:
        self.steps.append(f"add_user {email!r} {user_id!r}")
        self._same("add_user", self._each(lambda store: store.add_user(email, name, user_id=user_id)))

    @rule(
        user=st.sampled_from(MANUAL_IDS) | _pick(EXTERNAL_IDS),
        site=_pick(SITES),
        role=st.sampled_from(("Member", "admin", "Owner")),
    )
    def grant_by_hand(self, user: str, site: str, role: str) -> None:
        self.steps.append(f"grant {user!r} {site!r} {role!r}")

        async def grant(store: Any) -> None:
            state = await store.load(TRUSTS[0])
            await store.grant(user if user in MANUAL_IDS else _holder(state, user), site, MODULE, role)

        self._same("grant", self._each(grant))

    @rule(user=st.sampled_from(MANUAL_IDS) | _pick(EXTERNAL_IDS), active=st.booleans())
    def a_person_sets_active(self, user: str, active: bool) -> None:
        self.steps.append(f"set_active {user!r} {active}")

        async def set_active(store: Any) -> None:
            state = await store.load(TRUSTS[0])
            await store.set_active(user if user in MANUAL_IDS else _holder(state, user), active)

        self._same("set_active", self._each(set_active))

    @rule(trust=_pick(TRUSTS), state=sync_states())
    def save_a_sync_state(self, trust: str, state: SyncState) -> None:
        self.steps.append(f"save_state {trust!r} {state!r:.300}")
        self._same("save_state", self._each(lambda store: store.save_state(trust, state)))

    @rule(trust=_pick(TRUSTS), cache=delta_caches(), whole=st.booleans())
    def save_a_delta_cache(self, trust: str, cache: DeltaCache, whole: bool) -> None:
        """The write a run makes: from the cache stored now (every store holds the same), or whole."""
        self.steps.append(f"save_delta {trust!r} whole={whole} {cache!r:.300}")
        previous = None if whole else self.run(self.stores[0][1].load_delta(trust))
        write = cache_write(previous, cache)
        self._same("save_delta", self._each(lambda store: store.save_delta(trust, write)))

    @rule(trust=_pick(TRUSTS))
    def clear_a_delta_cache(self, trust: str) -> None:
        self.steps.append(f"clear_delta {trust!r}")
        self._same("clear_delta", self._each(lambda store: store.clear_delta(trust)))

    @invariant()
    def everything_the_stores_answer_is_the_same(self) -> None:
        if not self.steps:
            return

        async def everything(store: Any) -> dict[str, object]:
            states = {trust: await store.load(trust) for trust in TRUSTS}
            names = _names(states[TRUSTS[0]], MANUAL_IDS)
            answer: dict[str, object] = {
                "users": [names[user.user_id] for user in await store.users()],
            }
            for trust, trust_state in states.items():
                answer[f"state {trust!r}"] = comparable(trust_state)
                answer[f"groups {trust!r}"] = await store.groups(trust)
                answer[f"sync state {trust!r}"] = await _or_error(store.load_state(trust))
                answer[f"delta {trust!r}"] = await store.load_delta(trust)
                answer[f"delta head {trust!r}"] = await store.load_delta_head(trust)
            for user_id, name in sorted(names.items(), key=lambda item: item[1]):
                answer[f"grants of {name}"] = await store.grants(user_id)
            return answer

        answers = [self.run(everything(store)) for _name, store in self.stores]
        for key in answers[0]:
            self._same(key, [answer[key] for answer in answers])


async def _or_error(awaitable: Awaitable[Any]) -> object:
    try:
        return await awaitable
    except Exception as error:
        return type(error).__name__


def check_stores_agree(factories: Sequence[tuple[str, StoreFactory]], *, examples: int, steps: int) -> None:
    """Run the state machine over ``factories`` (the first is the reference the others are compared with)."""
    machine = type("StoresAgreeOn_" + "_".join(name for name, _ in factories), (StoresAgree,), {"factories": factories})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
