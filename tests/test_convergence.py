"""Stateful property test: random Azure changes between runs.

After every clean run: the store's synced access equals an independently
computed expectation (convergence), a re-plan is empty (idempotence), no
manual grant was touched, no user was deleted. After a run in which a mapped
group could not be read: nothing was removed or downgraded.
"""

from __future__ import annotations

import asyncio
import os

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from calm_azure_sync import (
    DirectoryError,
    DirectoryUser,
    ExclusionPolicy,
    GroupMapping,
    InMemoryAuditSink,
    InMemoryDirectory,
    InMemoryUserStore,
    Reconciler,
    RemovalPolicy,
    Role,
    Site,
    SyncConfig,
    TrustHierarchy,
)
from calm_azure_sync.directory.in_memory import InMemoryDirectory as _Directory
from calm_azure_sync.model import email_key

from .helpers import SYSTEM, FlakyDirectory, expected_access, synced_access_of

USERS = [f"u{i}" for i in range(8)]
GROUPS = ["g0", "g1", "g2", "g3"]
HIERARCHY = TrustHierarchy([Site("oak"), Site("birch", parent_id="oak"), Site("ash", parent_id="oak")])
MAPPINGS = [
    GroupMapping("g0", "birch", {"Risk": "Member", "Policies": "Member"}),
    GroupMapping("g1", "birch", {"Risk": "Manager"}),
    GroupMapping("g2", "ash", {"Risk": "Admin"}),
    GroupMapping("g3", "ash", {"Risk": "Member", "Policies": "Manager"}),
]
EXAMPLES = int(os.environ.get("CALM_STATEFUL_EXAMPLES", "150"))


def _machine_settings(examples: int, *, steps: int) -> settings:
    """Every machine's settings: ``examples`` runs of up to ``steps`` rules, no deadline."""
    return settings(
        max_examples=examples, stateful_step_count=steps, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


def _kept(directory: InMemoryDirectory, config: SyncConfig, state) -> set[str]:
    """Users whose access must stay as it was: duplicate emails in Azure, and
    email conflicts in the store that no move in this run resolves."""
    expected = expected_access(directory, config)
    in_groups = set()
    for mapping in config.mappings.mappings:
        in_groups |= {u.id for u in directory.transitive_members(mapping.group_id)}
    candidates = [
        directory.users[u] for u in in_groups
        if directory.users[u].account_enabled and directory.users[u].email
        and not directory.users[u].is_guest and config.exclusions.reason_excluded(directory.users[u]) is None
    ]
    counts: dict[str, int] = {}
    for user in candidates:
        counts[email_key(user.email)] = counts.get(email_key(user.email), 0) + 1
    duplicates = {user.id for user in candidates if counts[email_key(user.email)] > 1}
    holder_of = {email_key(s.email): s for s in state.users.values()}
    synced = {s.external_id: s for s in state.users.values() if s.external_id}
    unresolved, freed = set(expected), set()
    progress = True
    while progress:  # an address becomes free once the user holding it moves away in this run
        progress = False
        for user_id in sorted(unresolved):
            key = email_key(directory.users[user_id].email)
            holder, mine = holder_of.get(key), synced.get(user_id)
            if (holder is None or key in freed or (mine is not None and holder.user_id == mine.user_id)
                    or (mine is None and holder.external_id is None)):
                unresolved.discard(user_id)
                progress = True
                if mine is not None and email_key(mine.email) != key:
                    freed.add(email_key(mine.email))
    return duplicates | unresolved


class SyncMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.users = {u: DirectoryUser(u, display_name=u.upper(), mail=f"{u}@oak.sch.uk") for u in USERS}
        self.members: dict[str, list[str]] = {g: [] for g in [*GROUPS, "nested"]}
        self.store = InMemoryUserStore()
        self.audit = InMemoryAuditSink()
        self.mode = "unassign"
        self.manual: dict[str, set] = {}
        self.known_user_ids: set[str] = set()
        self.renames = 0

    def teardown(self) -> None:
        self.loop.close()

    def run_async(self, coroutine):
        return self.loop.run_until_complete(coroutine)

    def directory(self) -> InMemoryDirectory:
        from calm_azure_sync import DirectoryGroup

        return _Directory(
            self.users.values(),
            [DirectoryGroup(g) for g in self.members],
            {g: list(m) for g, m in self.members.items()},
        )

    def config(self) -> SyncConfig:
        return SyncConfig(
            "oak",
            MAPPINGS,
            exclusions=ExclusionPolicy(["*.svc@*"]),
            removal=RemovalPolicy(self.mode, max_removal_ratio=1.0, min_removals_to_hold=1000),
        )

    # ---------------------------------------------------------------- Azure changes

    @rule(group=st.sampled_from([*GROUPS, "nested"]), user=st.sampled_from(USERS))
    def join(self, group, user):
        if user not in self.members[group]:
            self.members[group].append(user)

    @rule(group=st.sampled_from([*GROUPS, "nested"]), data=st.data())
    def leave(self, group, data):
        if self.members[group]:
            self.members[group].remove(data.draw(st.sampled_from(self.members[group])))

    @rule(parent=st.sampled_from(GROUPS), child=st.sampled_from([*GROUPS, "nested"]))
    def nest(self, parent, child):
        if child not in self.members[parent]:
            self.members[parent].append(child)  # cycles allowed

    @rule(user=st.sampled_from(USERS), change=st.sampled_from(["disable", "enable", "guest", "member", "svc", "no-mail"]))
    def flip(self, user, change):
        old = self.users[user]
        self.users[user] = {
            "disable": lambda: attrs.evolve(old, account_enabled=False),
            "enable": lambda: attrs.evolve(old, account_enabled=True),
            "guest": lambda: attrs.evolve(old, user_type="Guest"),
            "member": lambda: attrs.evolve(old, user_type="Member"),
            "svc": lambda: attrs.evolve(old, mail=f"{user}.svc@oak.sch.uk"),
            "no-mail": lambda: attrs.evolve(old, mail=None),
        }[change]()

    @rule(user=st.sampled_from(USERS), upper=st.booleans())
    def rename(self, user, upper):
        self.renames += 1
        mail = f"{user}.v{self.renames}@oak.sch.uk"
        self.users[user] = attrs.evolve(self.users[user], mail=mail.upper() if upper else mail,
                                        display_name=f"{user} v{self.renames}")

    @rule(user=st.sampled_from(USERS), other=st.sampled_from(USERS))
    def share_email(self, user, other):
        if user != other and self.users[other].mail:
            self.users[user] = attrs.evolve(self.users[user], mail=self.users[other].mail.upper())

    @rule(mode=st.sampled_from(["unassign", "deactivate"]))
    def switch_mode(self, mode):
        self.mode = mode

    # ---------------------------------------------------------------- host changes

    @rule(user=st.sampled_from(USERS))
    def invite_by_hand(self, user):
        email = self.users[user].email
        state = self.run_async(self.store.load("oak"))
        if email and all(email_key(s.email) != email_key(email) for s in state.users.values()):
            user_id = self.run_async(self.store.add_user(email.swapcase(), "Invited"))
            self.known_user_ids.add(user_id)

    @rule(data=st.data(), role=st.sampled_from(list(Role)))
    def manual_grant(self, data, role):
        state = self.run_async(self.store.load("oak"))
        if state.users:
            user_id = data.draw(st.sampled_from(sorted(state.users)))
            self.run_async(self.store.grant(user_id, "birch", "Risk", role))
            self.manual[user_id] = {(g.site_id, g.module, g.role) for g in self.run_async(self.store.grants(user_id))
                                    if g.source == "manual"}

    # ---------------------------------------------------------------- imports

    @rule()
    def clean_run(self):
        self._run_and_check(confirm=False)

    @rule()
    def confirm_the_pending_hold(self):
        self._run_and_check(confirm=True)

    def _run_and_check(self, *, confirm):
        directory, config = self.directory(), self.config()
        self.restart()
        before = self.run_async(self.store.load("oak"))
        kept = _kept(directory, config, before)
        reconciler = Reconciler(self.reader(directory), self.store, self.audit, HIERARCHY)  # new each run: a restart
        pending = self.run_async(reconciler.pending_hold("oak", actor=SYSTEM))
        confirm_hold = pending.id if confirm and pending is not None else None
        held_anyway = set()
        if confirm_hold is not None:
            preview = self.run_async(reconciler.plan(config, actor=SYSTEM))  # what an unconfirmed run would hold
            held_anyway = {_slot(c) for c in preview.held_removals}
        report = self.run_async(reconciler.run(config, actor=SYSTEM, confirm_hold=confirm_hold))
        assert report.ok, report.errors
        after = self.run_async(self.store.load("oak"))
        expected = expected_access(directory, config)
        actual = synced_access_of(after)
        previous = synced_access_of(before)
        for user_id in kept:
            expected.pop(user_id, None)
            if previous.get(user_id):
                expected[user_id] = previous[user_id]
        # Held removals keep what the user had: nothing held and unconfirmed is ever applied.
        for change in report.held_removals:
            key = (getattr(change, "site_id", None), getattr(change, "module", None))
            if key in previous.get(change.external_id, {}):
                expected.setdefault(change.external_id, {})[key] = previous[change.external_id][key]
        assert actual == expected
        self._check_groups(directory, config, before, after, kept, report)
        if pending is not None and confirm_hold is None:
            # Every pending slot still planned stays as it was.
            for change in pending.changes:
                key = (getattr(change, "site_id", None), getattr(change, "module", None))
                if key in previous.get(change.external_id, {}) and key in expected.get(change.external_id, {}):
                    assert actual.get(change.external_id, {}).get(key) is not None
        if confirm_hold is not None:
            # A confirmation applies nothing outside the confirmed hold: what went was in it.
            reviewed = {(c.external_id, getattr(c, "site_id", None), getattr(c, "module", None)) for c in pending.changes}
            for user_id, access in previous.items():
                for key, role in access.items():
                    now = actual.get(user_id, {}).get(key)
                    if (now is None or now < role) and ("grant", user_id, *key) in held_anyway:
                        assert (user_id, *key) in reviewed, f"{user_id} lost {key} outside the confirmed hold"
        replan = self.run_async(
            Reconciler(self.reader(directory), self.store, InMemoryAuditSink(), HIERARCHY).plan(config, actor=SYSTEM)
        )
        assert not [c for c in replan.changes if not _is_removal(c)], replan.changes
        self.known_user_ids |= set(after.users)

    @rule(group=st.sampled_from(GROUPS))
    def run_with_an_unreadable_group(self, group):
        self._run_unreadable([group])

    def _run_unreadable(self, groups):
        directory, config = self.directory(), self.config()
        before = synced_access_of(self.run_async(self.store.load("oak")))
        failures = {group: DirectoryError("Service unavailable", status=503) for group in groups}
        flaky = self.reader(directory, failures)
        report = self.run_async(Reconciler(flaky, self.store, self.audit, HIERARCHY).run(config, actor=SYSTEM))
        assert not report.ok
        after = synced_access_of(self.run_async(self.store.load("oak")))
        pairs = {(m.site_id, module) for m in config.mappings.mappings if m.group_id in groups for module in m.roles}
        for user_id, access in before.items():
            for key, role in access.items():
                if key not in pairs:
                    continue  # the read groups decide those
                assert key in after.get(user_id, {}), f"{user_id} lost {key} after a partial read"
                assert after[user_id][key] >= role, f"{user_id} downgraded on {key} after a partial read"
        self.known_user_ids |= set(self.run_async(self.store.load("oak")).users)

    @staticmethod
    def _check_groups(directory, config, before, after, kept, report) -> None:
        """Mirrored groups hold exactly their in-scope members (conflicts and held removals keep theirs)."""
        from calm_azure_sync import RemoveGroupMember

        in_scope = set(expected_access(directory, config)) - set(kept)
        held = {(c.group_external_id, c.external_id) for c in report.held_removals if isinstance(c, RemoveGroupMember)}
        for group_id in config.mappings.group_ids:
            want = {u.id for u in directory.transitive_members(group_id) if u.id in in_scope}
            had = before.group_members.get(group_id, frozenset())
            want |= {member for member in had if member in kept or (group_id, member) in held}
            assert set(after.group_members.get(group_id, frozenset())) == want, group_id
        assert {g.external_id for g in after.groups.values() if not g.retired} == set(config.mappings.group_ids)

    def restart(self) -> None:
        """Between runs the host process may restart: the in-memory store lives on, only the Reconciler is new."""

    def reader(self, directory: InMemoryDirectory, failures: dict | None = None):
        """What the Reconciler reads: the directory (``failures``: those groups' reads fail)."""
        return FlakyDirectory(directory, failures) if failures else directory

    # ---------------------------------------------------------------- always

    @invariant()
    def no_user_is_ever_deleted_and_manual_grants_are_untouched(self):
        state = self.run_async(self.store.load("oak"))
        assert self.known_user_ids <= set(state.users)
        for user_id, grants in self.manual.items():
            now = {(g.site_id, g.module, g.role) for g in self.run_async(self.store.grants(user_id)) if g.source == "manual"}
            assert now == grants


def _is_removal(change):
    from calm_azure_sync.core.plan import is_removal

    return is_removal(change)


def _slot(change):
    from calm_azure_sync.core.plan import removal_slot

    return removal_slot(change)


SyncMachine.TestCase.settings = _machine_settings(EXAMPLES, steps=25)
TestSyncConvergence = SyncMachine.TestCase


A, B = "tenant-a", "tenant-b"
TENANT_OF = {"g0": A, "g1": A, "nested": A, "g2": B, "g3": B}


class TwoTenantMachine(SyncMachine):
    """The same rules for a Trust with two tenants (API §13): g0, g1 and the nested group live in tenant A,
    g2 and g3 in tenant B. Tenant B's accounts are copies of the same people (``b-u3`` beside ``u3``) with
    emails at another domain, unless ``same_email_in_both`` gave one the same address in both tenants;
    a group only holds its own tenant's users and groups. The oracle reads the two tenants merged into one
    directory (ids never collide), the reconciler reads ``{tenant: directory}``; a whole tenant can be
    unreadable for a run."""

    def __init__(self) -> None:
        super().__init__()
        self.same_email: set[str] = set()

    @rule(user=st.sampled_from(USERS))
    def same_email_in_both(self, user):
        self.same_email ^= {user}

    @rule(tenant=st.sampled_from([A, B]))
    def run_with_an_unreadable_tenant(self, tenant):
        self._run_unreadable([group for group in GROUPS if TENANT_OF[group] == tenant])

    def _copy(self, user: DirectoryUser) -> DirectoryUser:
        mail = user.mail if user.id in self.same_email or not user.mail else user.mail.replace("@oak.", "@ash.")
        return attrs.evolve(user, id=f"b-{user.id}", mail=mail)

    def _tenant(self, tenant: str):
        from calm_azure_sync import DirectoryGroup

        groups = [g for g in self.members if TENANT_OF[g] == tenant]
        users = list(self.users.values()) if tenant == A else [self._copy(u) for u in self.users.values()]
        ours = (lambda m: m) if tenant == A else (lambda m: m if m in TENANT_OF else f"b-{m}")
        members = {g: [ours(m) for m in self.members[g] if TENANT_OF.get(m, tenant) == tenant] for g in groups}
        return _Directory(users, [DirectoryGroup(g) for g in groups], members, tenant_id=tenant)

    def directory(self) -> InMemoryDirectory:
        a, b = self._tenant(A), self._tenant(B)
        return _Directory([*a.users.values(), *b.users.values()], [*a.groups.values(), *b.groups.values()],
                          {**a.members, **b.members})

    def reader(self, directory: InMemoryDirectory, failures: dict | None = None):
        tenants = {A: self._tenant(A), B: self._tenant(B)}
        if failures:
            return {t: FlakyDirectory(d, {g: e for g, e in failures.items() if TENANT_OF[g] == t}) for t, d in tenants.items()}
        return tenants

    def config(self) -> SyncConfig:
        two = [attrs.evolve(mapping, tenant_id=TENANT_OF[mapping.group_id]) for mapping in MAPPINGS]
        return attrs.evolve(super().config(), mappings=two, tenants=(A, B))


TwoTenantMachine.TestCase.settings = _machine_settings(max(10, EXAMPLES // 3), steps=25)
TestTwoTenantConvergence = TwoTenantMachine.TestCase


class SqliteRestartMachine(SyncMachine):
    """The same rules against a SqliteUserStore re-opened from its file before every run (a process restart):
    a pending hold, the baselines and who left scope must all survive it."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        from calm_azure_sync import SqliteUserStore

        self._folder = tempfile.TemporaryDirectory()
        self._path = os.path.join(self._folder.name, "calm.sqlite")
        self._open = SqliteUserStore
        self.store = SqliteUserStore(self._path)

    def restart(self) -> None:
        self.store.close()
        self.store = self._open(self._path)

    def teardown(self) -> None:
        self.store.close()
        self._folder.cleanup()
        super().teardown()


SqliteRestartMachine.TestCase.settings = _machine_settings(max(10, EXAMPLES // 5), steps=20)
TestSyncConvergenceAcrossRestarts = SqliteRestartMachine.TestCase


class TwoTenantSqliteMachine(TwoTenantMachine, SqliteRestartMachine):
    """The two-tenant rules against a SqliteUserStore re-opened before every run: tenants, holds and
    baselines survive a restart."""


TwoTenantSqliteMachine.TestCase.settings = _machine_settings(max(5, EXAMPLES // 10), steps=20)
TestTwoTenantConvergenceAcrossRestarts = TwoTenantSqliteMachine.TestCase
