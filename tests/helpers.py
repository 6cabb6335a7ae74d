"""The set-up test modules share, test doubles that wrap the shipped ones to inject faults, and an
independent oracle."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from calm_azure_sync import Actor, DirectoryUser, InMemoryDirectory, Role, Site, SyncConfig, TrustHierarchy
from calm_azure_sync.model import email_key

# The actor of the tests' own runs, and the trust hierarchies several modules
# declare alike (each named by its sites' names; a module whose sites differ
# keeps its own). A TrustHierarchy is frozen, so one value serves them all.
SYSTEM = Actor.system("tests")
OAK_TRUST_BIRCH_HIGH = TrustHierarchy([Site("oak", "Oak Trust"), Site("birch", "Birch High", "oak")])
OAK_TRUST_BIRCH = TrustHierarchy([Site("oak", "Oak Trust"), Site("birch", "Birch", "oak")])
OAK_TRUST_BIRCH_ASH = TrustHierarchy([Site("oak", "Oak Trust"), Site("birch", "Birch", "oak"), Site("ash", "Ash", "oak")])
OAK_BIRCH = TrustHierarchy([Site("oak", "Oak"), Site("birch", "Birch", "oak")])
OAK_BIRCH_ASH = TrustHierarchy([Site("oak", "Oak"), Site("birch", "Birch", "oak"), Site("ash", "Ash", "oak")])


class FlakyDirectory:
    """Wraps a directory; ``failures[group_id]`` is raised when that group is read."""

    def __init__(self, inner: InMemoryDirectory, failures: dict[str, BaseException] | None = None) -> None:
        self.inner = inner
        self.failures = dict(failures or {})
        self.reads: list[str] = []
        self.tenant_id = inner.tenant_id

    async def list_groups(self):
        return await self.inner.list_groups()

    async def group_members(self, group_id: str) -> Sequence[DirectoryUser]:
        self.reads.append(group_id)
        if group_id in self.failures:
            raise self.failures[group_id]
        return await self.inner.group_members(group_id)


class FlakyStore:
    """Wraps a store; ``reject(change) -> str | None`` fails single changes, ``fail_apply``/``fail_load`` whole calls."""

    def __init__(self, inner: Any, reject: Callable[[Any], str | None] | None = None) -> None:
        self.inner = inner
        self.reject = reject
        self.fail_apply: BaseException | None = None
        self.fail_load: BaseException | None = None
        self.applied_batches: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def load(self, trust_site_id):
        if self.fail_load is not None:
            raise self.fail_load
        return await self.inner.load(trust_site_id)

    async def apply(self, trust_site_id, changes):
        from calm_azure_sync import ChangeResult

        if self.fail_apply is not None:
            raise self.fail_apply
        self.applied_batches.append(len(changes))
        passing = [c for c in changes if not (self.reject and self.reject(c))]
        results = {id(r.change): r for r in await self.inner.apply(trust_site_id, passing)}
        return [
            results[id(c)] if id(c) in results else ChangeResult(c, self.reject(c) if self.reject else None)
            for c in changes
        ]

    def run_lock(self, trust_site_id):
        return self.inner.run_lock(trust_site_id)


class FailingSink:
    """An audit sink that is down (or fails after ``works_for`` calls)."""

    def __init__(self, works_for: int = 0) -> None:
        self.works_for = works_for
        self.events: list[Any] = []

    async def record(self, events):
        if self.works_for <= 0:
            raise OSError("disk full")
        self.works_for -= 1
        self.events.extend(events)


def expected_access(
    directory: InMemoryDirectory, config: SyncConfig
) -> dict[str, dict[tuple[str, str], Role]]:
    """What the store's synced access should be after a clean run, computed
    without the planner: walk the groups by hand, apply the scope rules, take
    the highest role per (site, module)."""
    groups_of: dict[str, set[str]] = {}
    for mapping in config.mappings.mappings:
        pending, seen = [mapping.group_id], set()
        while pending:
            group = pending.pop()
            if group in seen:
                continue
            seen.add(group)
            for member in directory.members.get(group, ()):
                if member in directory.users:
                    groups_of.setdefault(member, set()).add(mapping.group_id)
                elif member in directory.groups:
                    pending.append(member)
    candidates = {}
    for user_id in groups_of:
        user = directory.users[user_id]
        if not user.account_enabled or user.email is None:
            continue
        if user.is_guest and not config.include_guests:
            continue
        if config.exclusions.reason_excluded(user) is not None:
            continue
        candidates[user_id] = user
    by_email: dict[str, int] = {}
    for user in candidates.values():
        by_email[email_key(user.email)] = by_email.get(email_key(user.email), 0) + 1
    result: dict[str, dict[tuple[str, str], Role]] = {}
    for user_id, user in candidates.items():
        if by_email[email_key(user.email)] > 1:
            continue
        access: dict[tuple[str, str], Role] = {}
        for mapping in config.mappings.mappings:
            if mapping.group_id in groups_of[user_id]:
                for module, role in mapping.roles.items():
                    key = (mapping.site_id, module)
                    access[key] = max(access.get(key, role), role)
        result[user_id] = access
    return result


def synced_access_of(state) -> dict[str, dict[tuple[str, str], Role]]:
    return {external_id: dict(access) for external_id, access in state.synced_access.items() if access}


def refused_only(events) -> bool:
    """The Import Log of a refused run: ``import_refused`` entries and nothing else."""
    from calm_azure_sync import AuditKind

    return bool(events) and all(event.kind is AuditKind.IMPORT_REFUSED for event in events)


CRASH_CHILD = """
import asyncio, contextlib, sys
from calm_azure_sync import Actor, InMemoryAuditSink, InMemoryDirectory, Reconciler, SqliteUserStore
from calm_azure_sync.testing.synthetic import generate_tenant

def progress(stage, done, total):
    print(stage, done, total, flush=True)

def open_store(kind, where):
    if kind == "sqlite":
        return SqliteUserStore(where[0])
    from calm_azure_sync.postgres import PostgresUserStore
    return PostgresUserStore(where[0], schema=where[1])

async def main(users, groups, kind, *where):
    tenant = generate_tenant(users=users, groups=groups)
    async with contextlib.AsyncExitStack() as exits:
        store = await exits.enter_async_context(open_store(kind, where))
        reconciler = Reconciler(InMemoryDirectory.from_dict(tenant.fixture), store, InMemoryAuditSink(),
                                tenant.hierarchy, progress=progress, batch_size=25)
        report = await reconciler.run(tenant.config, actor=Actor.system("crash-test"))
        print("done", report.ok, flush=True)

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:]))
"""
"""The one crash child, for every store: ``users groups sqlite PATH`` or ``users groups postgres CONNINFO SCHEMA``.

It imports a synthetic trust (``generate_tenant(users, groups)``) in batches
of 25 and prints the reconciler's progress, for :func:`kill_during_apply`.
"""


def kill_during_apply(script: str, args: Sequence[str], kill_after: int | None) -> bool:
    """Run ``script`` (``python -c``; usually :data:`CRASH_CHILD`) with ``args``; SIGKILL it once it has
    applied ``kill_after`` changes (None: every change of the apply stage).

    The script prints the reconciler's progress (``stage done total``) a line
    at a time. True if the child was killed (False: it finished first).
    """
    import os
    import signal
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert child.stdout is not None
    killed = False
    for line in child.stdout:
        stage, *rest = line.split()
        if stage != "apply" or rest[1] == "None":
            continue
        done, total = int(rest[0]), int(rest[1])
        if done >= (total if kill_after is None else kill_after):
            child.send_signal(signal.SIGKILL)
            killed = True
            break
    child.wait(timeout=120)
    child.stdout.close()
    return killed


def assert_whole(state, lower_emails: Sequence[str], expected: dict) -> int:
    """Every synced user holds exactly its expected grants and no email is stored twice; the synced users found."""
    assert len(lower_emails) == len(set(lower_emails)), "duplicate users"
    synced = [user for user in state.users.values() if user.external_id]
    access = synced_access_of(state)
    for user in synced:
        assert access.get(user.external_id) == expected[user.external_id], f"half-written user {user.external_id}"
    return len(synced)


def partial_reads(monkeypatch) -> list[bool]:
    """Record, run by run, whether a read planned by difference read some rows of the delta cache (True) or fell back."""
    from calm_azure_sync.incremental.reader import DirectoryReader

    taken: list[bool] = []
    read_part = DirectoryReader._read_part

    async def counted(self, *args, **kwargs):
        read = await read_part(self, *args, **kwargs)
        taken.append(read is not None)
        return read

    monkeypatch.setattr(DirectoryReader, "_read_part", counted)
    return taken
