"""The fault soak's machinery: its own servers, fake Graph tenants, worker processes, chaos, settle, checks.

:class:`Soak` drives one soak (``tests/test_soak_faults.py`` runs it):

1. **Servers.** Its own throwaway PostgreSQL and Redis (``.ci/services.sh
   start``), stopped at the end: it restarts PostgreSQL, so it never uses the
   shared servers.
2. **Trusts.** ``trusts`` trusts, each a Trust site with three schools, five
   groups (four mapped, one nested in a mapped one) and its own
   :class:`~calm_azure_sync.testing.fake_graph.FakeGraphServer` on 127.0.0.1.
3. **Workers.** ``workers`` processes of ``tests/soak_worker.py``, each
   running one ``Reconciler.run`` at a time against ``PostgresUserStore`` /
   ``PostgresAuditSink`` and a real ``GraphDirectory``; one driver thread per
   worker keeps it busy with imports of random trusts (so two imports of one
   trust often race for its lock).
4. **Chaos**, for ``chaos_seconds``: the directories change (joins, leaves,
   renames, accounts deleted and re-created with the same email, hires,
   disabled accounts, groups emptied and refilled), trusts switch removal
   mode (keep, unassign, deactivate), pending holds are confirmed by id,
   workers are SIGKILLed mid-import, PostgreSQL is restarted with
   ``pg_ctl restart -m immediate``, fake Graph servers storm (429 with
   Retry-After, 503, 504, connection resets, bodies cut short) and expire their
   delta links (410). Every few seconds a scripted episode (:meth:`Soak._episode`)
   walks one known side door around a hold on a trust no random import
   touches meanwhile.
5. **Settle**: faults off; each trust is run in ``unassign`` mode until a run
   changes nothing; its pending hold is then confirmed (the test's explicit
   confirmation) and it runs until quiet again; then in ``deactivate`` mode
   likewise.
6. **Checks** (:mod:`tests.soak_checks`) against a ground truth computed from
   the fake directories, the configurations and the confirmations the test
   made; the figures go to a JSON file.

Every loop is bounded in count and time; all traffic is to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import os
import queue
import random
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

from calm_azure_sync import (
    Actor,
    InMemoryAuditSink,
    InMemoryDirectory,
    Reconciler,
    Role,
    Site,
    SyncConfig,
    TrustHierarchy,
)
from calm_azure_sync.core.plan import change_to_dict
from calm_azure_sync.testing.fake_graph import FakeGraphServer, Fault

from . import soak_checks as checks
from .helpers import expected_access

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "soak_worker.py"
SCHEMA = "calm_soak"
MODES = ("keep", "unassign", "deactivate")
EPISODES = ("relink", "keep", "keep_leaver", "crash_after_apply")
# Report counts that are not applied changes (a run that only holds, skips or finds nothing to do is quiet).
QUIET_KEYS = frozenset({"skipped", "excluded", "conflict", "unchanged", "held"})


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@attrs.frozen
class Budget:
    """How big and how long one soak is (environment overrides in :func:`budget`)."""

    chaos_seconds: float
    trusts: int
    workers: int
    users: int
    seed: int
    kill_every: int  # mean imports finished between two SIGKILLs (so kills scale with the machine's speed)
    restart_every: float  # mean seconds between PostgreSQL restarts (at least 8 imports apart)
    episode_every: float = 5.0  # mean seconds between two scripted episodes (Soak._episode)
    settle_runs: int = 8  # most runs per trust to reach a quiet run, per settle step


def budget(soak: bool) -> Budget:
    """The soak budget (``CALM_SOAK=1``: 5 minutes of chaos) or the smoke one; ``CALM_SOAK_*`` override."""
    env = os.environ.get
    chaos = float(env("CALM_SOAK_SECONDS") or (300 if soak else 40))
    return Budget(
        chaos_seconds=chaos,
        trusts=int(env("CALM_SOAK_TRUSTS") or 20),
        workers=int(env("CALM_SOAK_WORKERS") or (4 if soak else 3)),
        users=int(env("CALM_SOAK_USERS") or 20),
        seed=int(env("CALM_SOAK_SEED") or random.SystemRandom().randrange(1 << 30)),
        kill_every=int(env("CALM_SOAK_KILL_EVERY") or 4),
        restart_every=float(env("CALM_SOAK_RESTART_EVERY") or (45.0 if soak else 15.0)),
        episode_every=float(env("CALM_SOAK_EPISODE_EVERY") or (6.0 if soak else 4.0)),
    )


# -- the servers --------------------------------------------------------------------------


class Services:
    """This soak's own PostgreSQL and Redis (``.ci/services.sh``); PostgreSQL restarts on demand."""

    def __init__(self) -> None:
        script = ROOT / ".ci" / "services.sh"
        started = subprocess.run(
            ["bash", str(script), "start"], capture_output=True, text=True, timeout=180, check=False
        )
        if started.returncode != 0:
            raise RuntimeError(f"services.sh start failed: {started.stderr[-2000:]}")
        values = dict(
            line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines() if line.startswith("export ")
        )
        self.dir = Path(values["CALM_SERVICES_DIR"])
        self.conninfo = values["CALM_TEST_POSTGRES"]
        self.redis = values["CALM_TEST_REDIS"]
        for url in (self.conninfo, self.redis):
            if "127.0.0.1" not in url:
                raise RuntimeError(f"services.sh gave a non-loopback server: {url}")
        self.restarts = 0

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        pg_ctl = shutil.which("pg_ctl")
        if pg_ctl is None:
            candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
            if not candidates:
                raise RuntimeError("pg_ctl not found")
            pg_ctl = str(candidates[-1])
        command = [pg_ctl, *args]
        if os.geteuid() == 0:  # PostgreSQL refuses root: services.sh runs it as postgres
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    def restart_postgres(self) -> float:
        """``pg_ctl restart -m immediate`` (no clean shutdown, crash recovery at start); seconds taken."""
        started = time.monotonic()
        done = self._pg_ctl(
            "restart", "-m", "immediate", "-w", "-t", "60",
            "-D", str(self.dir / "pg" / "data"), "-l", str(self.dir / "pg" / "server.log"),
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed: {done.stdout[-1000:]} {done.stderr[-1000:]}")
        self.restarts += 1
        return time.monotonic() - started

    def stop(self) -> None:
        subprocess.run(
            ["bash", str(ROOT / ".ci" / "services.sh"), "stop", str(self.dir)],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip


# -- one trust and its fake tenant ------------------------------------------------------------


class Tenant:
    """One trust: its sites, groups, configuration, fake Graph server, people and directory history."""

    def __init__(self, number: int, users: int, rng: random.Random, person_of: dict[str, str]) -> None:
        self.trust = f"soak-t{number:02d}"
        self.schools = [f"{self.trust}-s{index}" for index in range(3)]
        self.groups = [f"{self.trust}-g{index}" for index in range(4)]
        self.nested = f"{self.trust}-g-nested"
        self.domain = f"t{number:02d}.soak.sch.uk"
        self.rng = random.Random(rng.randrange(1 << 30))
        self.person_of = person_of
        self.mode = "unassign"
        self.min_removals = self.rng.choice((3, 10))
        self.lock = threading.RLock()
        self.accounts: dict[str, int] = {}  # person -> account incarnation
        self.deleted: dict[str, list[str]] = {}  # person -> the groups they were in
        self.emptied: dict[str, list[str]] = {}  # group -> its members before it was emptied
        self.history: list[tuple[dt.datetime, checks.Version]] = []
        self.mutations: collections.Counter[str] = collections.Counter()
        fixture: dict[str, Any] = {
            "users": [],
            "groups": [{"id": g, "displayName": f"Group {g}"} for g in (*self.groups, self.nested)],
            "members": {g: [] for g in (*self.groups, self.nested)},
        }
        fixture["members"][self.groups[2]].append(self.nested)
        for index in range(users):
            person = f"{self.trust}-p{index:03d}"
            user = self._account(person)
            fixture["users"].append(user)
            for group in self.rng.sample([*self.groups, self.nested], self.rng.choice((1, 2))):
                fixture["members"][group].append(user["id"])
        self.graph = FakeGraphServer(fixture, page_cap=7, latency=0.005)
        self.storm_until = 0.0
        self.reserved = False  # an episode runs it: no random imports or mode switches meanwhile
        self.ok_runs = 0  # episodes need a trust that was imported once (its groups have baselines)
        self.record()

    def _account(self, person: str, *, rename: str | None = None) -> dict[str, Any]:
        incarnation = self.accounts.get(person, -1) + 1
        self.accounts[person] = incarnation
        object_id = f"{person}-a{incarnation}"
        self.person_of[object_id] = person
        local = person.rsplit("-", 1)[1]
        return {
            "id": object_id,
            "displayName": rename or f"Person {local} of {self.trust}",
            "mail": f"{local}@{self.domain}",
            "userPrincipalName": f"{local}@{self.domain}",
            "accountEnabled": True,
            "userType": "Member",
        }

    def object_id(self, person: str) -> str:
        return f"{person}-a{self.accounts[person]}"

    # -- configuration --------------------------------------------------------------

    def sites(self) -> list[dict[str, Any]]:
        return [{"id": self.trust, "name": f"Trust {self.trust}"}] + [
            {"id": school, "name": school, "parent_id": self.trust} for school in self.schools
        ]

    def hierarchy(self) -> TrustHierarchy:
        return TrustHierarchy([Site(s["id"], s["name"], s.get("parent_id")) for s in self.sites()])

    def config_dict(self, mode: str | None = None) -> dict[str, Any]:
        roles = [{"Risk": "Member"}, {"Risk": "Manager"}, {"Policies": "Member", "Risk": "Member"}, {"Risk": "Admin"}]
        schools = [self.schools[0], self.schools[0], self.schools[1], self.schools[2]]
        return {
            "trust_site_id": self.trust,
            "mappings": [
                {"group_id": group, "site_id": school, "roles": role}
                for group, school, role in zip(self.groups, schools, roles, strict=True)
            ],
            "removal": {"mode": mode or self.mode, "min_removals_to_hold": self.min_removals},
        }

    def config(self) -> SyncConfig:
        return SyncConfig.from_dict(self.config_dict())

    # -- the ground truth -------------------------------------------------------------

    def version(self) -> checks.Version:
        """What the directory implies now, per person (independent of the planner: tests.helpers)."""
        directory = InMemoryDirectory.from_dict(self.graph.fixture())
        config = self.config()
        access = expected_access(directory, config)
        grants = {
            (self.person_of[oid], site, module): role for oid, slots in access.items() for (site, module), role in slots.items()
        }
        members: set[tuple[str, str]] = set()
        for group in self.groups:
            pending, seen = [group], set()
            while pending:
                current = pending.pop()
                if current in seen:
                    continue
                seen.add(current)
                for member in directory.members.get(current, ()):
                    if member in access:
                        members.add((group, self.person_of[member]))
                    elif member in directory.groups:
                        pending.append(member)
        active = frozenset(self.person_of[oid] for oid, slots in access.items() if slots)
        return checks.Version(grants, frozenset(members), active)

    def record(self) -> None:
        with self.lock:
            self.history.append((utc_now(), self.version()))

    # -- mutations (each one directory change, recorded in the history) -------------------

    def _present(self) -> list[str]:
        users = {u["id"] for u in self.graph.fixture()["users"]}
        return sorted(p for p in self.accounts if p not in self.deleted and self.object_id(p) in users)

    def mutate(self) -> str:
        """One random change of the directory; returns its kind."""
        with self.lock:
            kind = self.rng.choices(
                ["join", "leave", "rename", "delete", "recreate", "hire", "empty", "refill", "disable", "enable"],
                weights=[6, 5, 2, 2, 3, 1, 1, 2, 1, 1],
            )[0]
            done = getattr(self, f"_{kind}")()
            if done:
                self.mutations[kind] += 1
                self.record()
                return kind
            return "none"

    def _join(self) -> bool:
        people = self._present()
        if not people:
            return False
        self.graph.add_member(self.rng.choice([*self.groups, self.nested]), self.object_id(self.rng.choice(people)))
        return True

    def _leave(self) -> bool:
        fixture = self.graph.fixture()
        pairs = [(g, m) for g, ms in fixture["members"].items() for m in ms if m in self.person_of]
        if not pairs:
            return False
        group, member = self.rng.choice(pairs)
        self.graph.remove_member(group, member)
        return True

    def _user(self, person: str) -> dict[str, Any] | None:
        return next((u for u in self.graph.fixture()["users"] if u["id"] == self.object_id(person)), None)

    def _rename(self) -> bool:
        people = self._present()
        if not people:
            return False
        user = self._user(self.rng.choice(people))
        if user is None:
            return False
        user["displayName"] = f"{user['displayName'].split(' (')[0]} ({self.rng.randrange(1000)})"
        self.graph.add_user(user)
        return True

    def _delete(self) -> bool:
        people = self._present()
        if len(people) < 4:
            return False
        person = self.rng.choice(people)
        oid = self.object_id(person)
        fixture = self.graph.fixture()
        self.deleted[person] = [g for g, ms in fixture["members"].items() if oid in ms]
        self.graph.remove_user(oid, soft=self.rng.random() < 0.5)
        return True

    def _recreate(self) -> bool:
        """A deleted account made again with the same email: a new object id, the old groups (mostly)."""
        if not self.deleted:
            return False
        person = self.rng.choice(sorted(self.deleted))
        groups = self.deleted.pop(person)
        if groups and self.rng.random() < 0.3:
            groups = groups[1:]  # came back with less
        self.graph.add_user(self._account(person), groups=groups)
        return True

    def _hire(self) -> bool:
        person = f"{self.trust}-p{len(self.accounts):03d}"
        self.graph.add_user(self._account(person), groups=[self.rng.choice(self.groups)])
        return True

    def _empty(self) -> bool:
        """A mapped group read empty (everyone removed at once): the per-group guard should hold it."""
        candidates = [g for g in self.groups if g not in self.emptied]
        if not candidates:
            return False
        group = self.rng.choice(candidates)
        fixture = self.graph.fixture()
        self.emptied[group] = list(fixture["members"].get(group, []))
        for member in self.emptied[group]:
            self.graph.remove_member(group, member)
        return True

    def empty_group(self) -> str | None:
        """Empty the biggest mapped group now (an episode's first step, so the per-group guard trips)."""
        with self.lock:
            members = self.graph.fixture()["members"]
            candidates = [g for g in self.groups if g not in self.emptied]
            if not candidates:
                return None
            group = max(candidates, key=lambda g: (len(members.get(g, [])), g))
            self.emptied[group] = list(members.get(group, []))
            for member in self.emptied[group]:
                self.graph.remove_member(group, member)
            self.mutations["empty"] += 1
            self.record()
            return group

    def _in_scope(self, oid: str) -> bool:
        user = next((u for u in self.graph.fixture()["users"] if u["id"] == oid), None)
        return user is not None and bool(user.get("accountEnabled", True))

    def refill_but_recreate_one(self, group: str) -> str | None:
        """Refill emptied ``group`` but for one former member, whose account is deleted and re-created at once.

        Same email, a new object id, the person's other groups but not
        ``group``: the removal the emptied group caused is still due for them
        alone (too few to trip any guard on their own), and only the hold
        stands between them and it.
        """
        with self.lock:
            former = self.emptied.pop(group, [])
            candidates = [oid for oid in former if oid in self.person_of and self._in_scope(oid)]
            if not candidates:
                for member in former:
                    self.graph.add_member(group, member)
                self.record()
                return None
            oid = self.rng.choice(candidates)
            for member in former:
                if member != oid:
                    self.graph.add_member(group, member)
            person = self.person_of[oid]
            fixture = self.graph.fixture()
            groups = [g for g, ms in fixture["members"].items() if oid in ms and g != group]
            if not set(groups) & {*self.groups, self.nested}:
                # Keep them in scope through another mapped group, so the new account is relinked.
                groups.append(self.rng.choice([g for g in self.groups if g != group]))
            self.graph.remove_user(oid)
            self.graph.add_user(self._account(person), groups=groups)
            self.mutations["refill_but_recreate_one"] += 1
            self.record()
            return person

    def leave(self, *, every_group: bool) -> str | None:
        """An in-scope direct member of a mapped group leaves it (or every group): the person, or None."""
        with self.lock:
            members = self.graph.fixture()["members"]
            pairs = [(g, oid) for g in self.groups for oid in members.get(g, []) if oid in self.person_of
                     and self._in_scope(oid)]  # fmt: skip
            if not pairs:
                return None
            group, oid = self.rng.choice(pairs)
            for other in [g for g, ms in members.items() if oid in ms] if every_group else [group]:
                self.graph.remove_member(other, oid)
            self.mutations["leave_every_group" if every_group else "leave"] += 1
            self.record()
            return self.person_of[oid]

    def _refill(self) -> bool:
        if not self.emptied:
            return False
        group = self.rng.choice(sorted(self.emptied))
        users = {u["id"] for u in self.graph.fixture()["users"]}
        for member in self.emptied.pop(group):
            if member in users or member == self.nested:
                self.graph.add_member(group, member)
        return True

    def _disable(self) -> bool:
        people = self._present()
        user = self._user(self.rng.choice(people)) if people else None
        if user is None or not user.get("accountEnabled", True):
            return False
        user["accountEnabled"] = False
        self.graph.add_user(user)
        return True

    def _enable(self) -> bool:
        disabled = [u for u in self.graph.fixture()["users"] if not u.get("accountEnabled", True)]
        if not disabled:
            return False
        user = self.rng.choice(disabled)
        user["accountEnabled"] = True
        self.graph.add_user(user)
        return True


# -- the worker processes -------------------------------------------------------------------


class WorkerProcess:
    """One ``tests/soak_worker.py`` process (replaced when it dies)."""

    def __init__(self, index: int, env: dict[str, str], log_dir: Path) -> None:
        self.index = index
        self.env = env
        self.log_dir = log_dir
        self.job: int | None = None
        self.popen = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"worker-{self.index}.log", "ab")  # noqa: SIM115 - the child keeps it
        popen = subprocess.Popen(
            [sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=self.env,
            cwd=ROOT,
        )  # fmt: skip
        log.close()
        line = _read_line(popen, 120)
        if not line or not json.loads(line).get("ready"):
            popen.kill()
            popen.wait(10)
            for pipe in (popen.stdin, popen.stdout):
                if pipe is not None:
                    pipe.close()
            raise RuntimeError(f"soak worker {self.index} did not start; see {self.log_dir}/worker-{self.index}.log")
        return popen

    def respawn(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()
        self.popen.wait(30)
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self.popen = self._spawn()


def _read_line(popen: subprocess.Popen[bytes], timeout: float) -> bytes | None:
    """One line from the child's stdout within ``timeout`` seconds; ``b""`` when it died, None on timeout."""
    assert popen.stdout is not None
    ready, _, _ = select.select([popen.stdout], [], [], timeout)
    if not ready:
        return None
    return popen.stdout.readline()


class Pool:
    """Worker processes handed out one job at a time; SIGKILL on demand, respawned after."""

    def __init__(self, count: int, env: dict[str, str], log_dir: Path) -> None:
        with ThreadPoolExecutor(count) as starting:
            self.workers = list(starting.map(lambda index: WorkerProcess(index, env, log_dir), range(count)))
        self.idle: queue.Queue[WorkerProcess] = queue.Queue()
        for worker in self.workers:
            self.idle.put(worker)
        self.lock = threading.Lock()
        self.kills = 0
        self.kills_mid_job = 0
        self.targeted: set[int] = set()  # jobs an episode kills at a chosen point: not random victims
        self.hung = 0
        self.respawns = 0

    def call(self, job: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run ``job`` on an idle worker; ``{"outcome": "killed"}`` when the worker died under it."""
        worker = self.idle.get(timeout=timeout + 120)
        try:
            if worker.popen.poll() is not None:
                worker.respawn()
                self.respawns += 1
            with self.lock:
                worker.job = job["job"]
            assert worker.popen.stdin is not None
            try:
                worker.popen.stdin.write((json.dumps(job) + "\n").encode())
                worker.popen.stdin.flush()
                line = _read_line(worker.popen, timeout + 30)
            except OSError:  # a broken pipe: it died before it read the job
                line = b""
            with self.lock:
                worker.job = None
            if line:
                return dict(json.loads(line))
            if line is None:  # alive but silent past the job's own timeout: hung
                self.hung += 1
                outcome = "hung"
            else:
                outcome = "killed"
            worker.respawn()
            self.respawns += 1
            return {"job": job["job"], "outcome": outcome}
        finally:
            self.idle.put(worker)

    def kill_busy(self, rng: random.Random) -> int | None:
        """SIGKILL a worker in the middle of a job (None when none is busy); returns the job it was running."""
        with self.lock:
            busy = [worker for worker in self.workers
                    if worker.job is not None and worker.job not in self.targeted and worker.popen.poll() is None]  # fmt: skip
            if not busy:
                return None
            victim = rng.choice(busy)
            job = victim.job
            os.kill(victim.popen.pid, signal.SIGKILL)
            self.kills += 1
            self.kills_mid_job += 1
            return job

    def kill_job(self, job: int) -> bool:
        """SIGKILL the worker running ``job``; False when no worker runs it."""
        with self.lock:
            for worker in self.workers:
                if worker.job == job and worker.popen.poll() is None:
                    os.kill(worker.popen.pid, signal.SIGKILL)
                    self.kills += 1
                    self.kills_mid_job += 1
                    return True
        return False

    def stop(self) -> None:
        for worker in self.workers:
            if worker.popen.poll() is None:
                with contextlib.suppress(OSError):
                    assert worker.popen.stdin is not None
                    worker.popen.stdin.close()
        for worker in self.workers:
            try:
                worker.popen.wait(10)
            except subprocess.TimeoutExpired:
                worker.popen.kill()
                worker.popen.wait(10)
            if worker.popen.stdout is not None:
                with contextlib.suppress(OSError):
                    worker.popen.stdout.close()  # else each pipe is a ResourceWarning at collection


# -- the soak ----------------------------------------------------------------------------------


STORM_FAULTS = (
    Fault.throttle(retry_after="0.2"),
    Fault.throttle(retry_after="0.05"),
    Fault.unavailable(),
    Fault.gateway_timeout(),
    Fault.reset(),
    Fault.truncated(),
)


class Soak:
    """One soak: build it, :meth:`run` it (chaos, settle), then :meth:`check`; :meth:`close` in any case."""

    def __init__(self, plan: Budget, services: Services, log_dir: Path, say: Callable[[str], None] = print) -> None:
        self.plan = plan
        self.services = services
        self.log_dir = log_dir
        self.say = say
        self.rng = random.Random(plan.seed)
        self.rng_lock = threading.Lock()
        self.person_of: dict[str, str] = {}
        self.tenants = {t.trust: t for t in (Tenant(n, plan.users, self.rng, self.person_of) for n in range(plan.trusts))}
        for tenant in self.tenants.values():
            tenant.graph.start()
        self.jobs: dict[int, checks.Job] = {}
        self.results: dict[int, dict[str, Any]] = {}
        self.holds: list[checks.HoldSeen] = []
        self.confirmations: list[tuple[str, str]] = []
        self.confirm_queue: queue.Queue[tuple[str, str, frozenset[checks.Slot]]] = queue.Queue()
        self.episode_queue: queue.Queue[tuple[str, str]] = queue.Queue()
        self.episodes: collections.Counter[str] = collections.Counter()
        self.kills_after_apply = 0
        self.episode_log: list[str] = []
        self.counter = 0
        self.finished = 0
        self.lock = threading.Lock()
        self.events: dict[str, list[Any]] = {}
        self.settle_log: dict[str, list[str]] = collections.defaultdict(list)
        self.settle_checks: list[checks.CheckResult] = []
        self.poll_failures = 0
        self.restart_seconds: list[float] = []
        self.delta_expiries = 0
        self.mode_switches = 0
        self.storms = 0
        self.timings: dict[str, float] = {}
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        }
        asyncio.run(self._migrate())
        self.pool = Pool(plan.workers, env, log_dir)

    # -- helpers -------------------------------------------------------------------------

    async def _migrate(self) -> None:
        from calm_azure_sync.postgres import PostgresAuditSink, PostgresUserStore

        async with PostgresUserStore(self.services.conninfo, schema=SCHEMA) as store, PostgresAuditSink(
            self.services.conninfo, schema=SCHEMA
        ) as sink:
            await store.migrate()
            await sink.migrate()

    def _choice(self, items: list[Any]) -> Any:
        with self.rng_lock:
            return self.rng.choice(items)

    def _random(self) -> float:
        with self.rng_lock:
            return self.rng.random()

    def run_job(
        self, tenant: Tenant, *, confirm: str | None = None, confirm_slots: frozenset[checks.Slot] = frozenset(),
        mode: str | None = None, read: str = "auto", timeout: float = 90, pause_after_apply: bool = False,
    ) -> dict[str, Any]:  # fmt: skip
        """One import of ``tenant`` on a worker; its job is recorded with its mode and confirmation."""
        with self.lock:
            self.counter += 1
            number = self.counter
        removal_mode = mode or tenant.mode
        self.jobs[number] = checks.Job(number, tenant.trust, removal_mode, confirm, confirm_slots)
        job = {
            "job": number,
            "trust": tenant.trust,
            "sites": tenant.sites(),
            "config": tenant.config_dict(removal_mode),
            "graph": tenant.graph.base_url,
            "conninfo": self.services.conninfo,
            "schema": SCHEMA,
            "confirm": confirm,
            "mode": read,
            "timeout": timeout,
        }
        killer = None
        if pause_after_apply:
            self.pool.targeted.add(number)
            # The worker stops for a while once the last batch is applied (and logged) and tells us
            # through a marker file; we SIGKILL it there, before the run saves what it remembers.
            marker = self.log_dir / f"applied-{number}"
            job.update(pause_after_apply=30, marker=str(marker))
            killer = threading.Thread(target=self._kill_at_marker, args=(number, marker), daemon=True)
            killer.start()
        result = self.pool.call(job, timeout)
        if killer is not None:
            killer.join(timeout=5)
        with self.lock:
            self.finished += 1
            if result.get("outcome") == "ok":
                tenant.ok_runs += 1
        self.results[number] = {**result, "trust": tenant.trust, "removal_mode": removal_mode, "confirm": confirm}
        return result

    def _kill_at_marker(self, number: int, marker: Path) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if marker.exists():
                if self.pool.kill_job(number):
                    self.kills_after_apply += 1
                return
            if number in self.results:
                return  # it ended without applying anything
            time.sleep(0.05)

    def poll_hold(self, tenant: Tenant) -> Any:
        """The trust's pending hold, via ``Reconciler.pending_hold`` (recorded when there is one)."""
        from calm_azure_sync.postgres import PostgresUserStore

        async def pending() -> Any:
            async with PostgresUserStore(self.services.conninfo, schema=SCHEMA, pool_size=1) as store:
                reconciler = Reconciler(InMemoryDirectory.from_dict({}), store, InMemoryAuditSink(), tenant.hierarchy())
                return await reconciler.pending_hold(tenant.trust, actor=Actor.system("soak-check"))

        try:
            hold = asyncio.run(asyncio.wait_for(pending(), 20))
        except Exception:
            self.poll_failures += 1
            return None
        if hold is not None:
            slots = checks.hold_slots((change_to_dict(change) for change in hold.changes), self.person_of)
            with self.lock:
                self.holds.append(checks.HoldSeen(tenant.trust, utc_now(), hold.id, slots))
        return hold

    def confirm_slots(self, hold: Any) -> frozenset[checks.Slot]:
        return frozenset(checks.hold_slots((change_to_dict(c) for c in hold.changes), self.person_of))

    # -- chaos -----------------------------------------------------------------------------

    def _drive(self, deadline: float) -> None:
        """One driver thread: imports of random trusts (or a queued confirmation) until the deadline."""
        for _ in range(100_000):
            if time.monotonic() >= deadline:
                return
            try:
                kind, trust = self.episode_queue.get_nowait()
            except queue.Empty:
                pass
            else:
                self._episode(kind, self.tenants[trust])
                continue
            try:
                trust, hold_id, slots = self.confirm_queue.get_nowait()
            except queue.Empty:
                tenant = self._choice([t for t in self.tenants.values() if not t.reserved])
                result = self.run_job(tenant, read="full" if self._random() < 0.1 else "auto")
            else:
                tenant = self.tenants[trust]
                self.confirmations.append((trust, hold_id))
                result = self.run_job(tenant, confirm=hold_id, confirm_slots=slots)
            if result.get("outcome") != "ok" or (result.get("counts") or {}).get("held"):
                self.poll_hold(tenant)  # the run held something, or died: what does the trust hold now?

    def episode_trusts(self) -> set[str]:
        with self.episode_queue.mutex:
            return {trust for _kind, trust in self.episode_queue.queue}

    def _set_mode(self, tenant: Tenant, mode: str) -> None:
        with tenant.lock:
            if tenant.mode != mode:
                tenant.mode = mode
                self.mode_switches += 1

    def _episode(self, kind: str, tenant: Tenant) -> None:
        """A scripted sequence on one trust down a known side door around a hold (other imports run meanwhile).

        - ``relink``: a mapped group empties (the per-group guard holds its
          removals); it is refilled but for one person, whose account is
          deleted and re-created with the same email: that person's held
          removal must stay held through the relink.
        - ``keep``: a group empties (held), one run in keep mode, then
          unassign again: the held removals must stay held.
        - ``keep_leaver``: in keep mode someone leaves a mapped group: nothing
          at all may be removed, the mirrored group membership included.
        - ``crash_after_apply``: someone leaves every group, and the worker is
          SIGKILLed after the run's last batch is applied, before the run
          ends: switching to deactivate later (the settle) must still
          deactivate them.
        """
        self.episodes[kind] += 1
        first_job = self.counter + 1
        tenant.reserved = True
        try:
            self._episode_steps(kind, tenant)
        finally:
            tenant.reserved = False
            outcomes = [str(self.results.get(n, {}).get("outcome")) for n in range(first_job, self.counter + 1)
                        if self.jobs.get(n) is not None and self.jobs[n].trust == tenant.trust]  # fmt: skip
            self.episode_log.append(f"{kind} on {tenant.trust}: {', '.join(outcomes) or 'no run'}")

    def _episode_run(self, tenant: Tenant, **options: Any) -> dict[str, Any]:
        """An episode's import: tried again (5 times at most) while a random import still holds the lock."""
        for _ in range(5):
            result = self.run_job(tenant, **options)
            if result.get("outcome") != "refused":
                return result
            time.sleep(0.5)
        return result

    def _episode_steps(self, kind: str, tenant: Tenant) -> None:
        if kind == "keep_leaver":
            self._set_mode(tenant, "keep")
            tenant.leave(every_group=False)
            self._episode_run(tenant)
            return
        if kind == "crash_after_apply":
            self._set_mode(tenant, "unassign")
            if tenant.leave(every_group=True) is not None:
                self._episode_run(tenant, pause_after_apply=True)
            return
        group = tenant.empty_group()
        if group is None:
            return
        self._episode_run(tenant)
        self.poll_hold(tenant)
        if kind == "relink":
            tenant.refill_but_recreate_one(group)
            self._episode_run(tenant)
        else:
            self._set_mode(tenant, "keep")
            self._episode_run(tenant)
            self.poll_hold(tenant)
            self._set_mode(tenant, "unassign")
            self._episode_run(tenant)
        self.poll_hold(tenant)

    def chaos(self) -> None:
        plan = self.plan
        started = time.monotonic()
        deadline = started + plan.chaos_seconds
        drivers = [threading.Thread(target=self._drive, args=(deadline,), daemon=True) for _ in range(plan.workers)]
        for driver in drivers:
            driver.start()
        next_kill = self.rng.randint(1, 2 * plan.kill_every)
        next_restart = started + self.rng.uniform(0.5, 1.0) * plan.restart_every
        finished_at_restart = 0
        next_episode = started + self.rng.uniform(0.2, 1.0) * plan.episode_every
        queued_episodes = 0
        tenants = list(self.tenants.values())
        for _tick in range(int(plan.chaos_seconds / 0.1) + 10):
            now = time.monotonic()
            if now >= deadline:
                break
            if self._random() < 0.5:
                self._choice(tenants).mutate()
            if self._random() < 0.05:
                tenant = self._choice(tenants)
                if not tenant.graph.storming:
                    tenant.graph.storm(STORM_FAULTS, rate=self.rng.uniform(0.3, 0.8))
                    tenant.storm_until = now + self.rng.uniform(2, 8)
                    self.storms += 1
            for tenant in tenants:
                if tenant.graph.storming and now >= tenant.storm_until:
                    tenant.graph.calm()
            if self._random() < 0.01:
                self._choice(tenants).graph.expire_delta_tokens()
                self.delta_expiries += 1
            if self._random() < 0.015:
                tenant = self._choice(tenants)
                if not tenant.reserved:
                    self._set_mode(tenant, self._choice([m for m in MODES if m != tenant.mode]))
            if now >= next_episode and self.episode_queue.qsize() < plan.workers:
                queued = self.episode_trusts()
                free = [t for t in tenants if t.ok_runs and not t.reserved and t.trust not in queued]
                if free:
                    self.episode_queue.put((EPISODES[queued_episodes % len(EPISODES)], self._choice(free).trust))
                    queued_episodes += 1
                next_episode = now + self.rng.uniform(0.5, 1.5) * plan.episode_every
            if self._random() < 0.04:
                tenant = self._choice(tenants)
                hold = self.poll_hold(tenant)
                if hold is not None:
                    self.confirm_queue.put((tenant.trust, hold.id, self.confirm_slots(hold)))
            if self.finished >= next_kill and self.pool.kill_busy(self.rng) is not None:
                next_kill = self.finished + self.rng.randint(1, 2 * plan.kill_every)
            if now >= next_restart and self.finished - finished_at_restart >= 8:
                self.restart_seconds.append(self.services.restart_postgres())
                finished_at_restart = self.finished
                next_restart = time.monotonic() + self.rng.uniform(0.5, 1.5) * plan.restart_every
            time.sleep(0.1)
        for tenant in tenants:
            tenant.graph.calm()
            tenant.graph.clear_faults()
        for driver in drivers:
            driver.join(timeout=300)
        self.timings["chaos_seconds"] = round(time.monotonic() - started, 1)

    # -- settle ----------------------------------------------------------------------------

    def _until_quiet(self, tenant: Tenant, mode: str) -> bool:
        for _ in range(self.plan.settle_runs):
            result = self.run_job(tenant, mode=mode)
            counts = result.get("counts") or {}
            changed = sum(v for k, v in counts.items() if k not in QUIET_KEYS)
            self.settle_log[tenant.trust].append(f"{mode}: {result.get('outcome')} {changed} changes")
            if result.get("outcome") == "ok" and changed == 0:
                return True
        return False

    def _settle_mode(self, tenant: Tenant, mode: str) -> tuple[bool, Any]:
        """Run until quiet in ``mode``; returns (quiet, the pending hold before any confirmation)."""
        with tenant.lock:
            tenant.mode = mode
        quiet = self._until_quiet(tenant, mode)
        first_hold = hold = self.poll_hold(tenant)
        for _ in range(3):
            if hold is None:
                break
            self.confirmations.append((tenant.trust, hold.id))
            self.settle_log[tenant.trust].append(f"{mode}: confirm {hold.id} ({len(hold.changes)} removals)")
            self.run_job(tenant, mode=mode, confirm=hold.id, confirm_slots=self.confirm_slots(hold))
            quiet = self._until_quiet(tenant, mode)
            hold = self.poll_hold(tenant)
        return quiet and hold is None, first_hold

    def _settle_one(self, tenant: Tenant) -> list[checks.CheckResult]:
        found: list[checks.CheckResult] = []
        truth = tenant.version()
        quiet = checks.CheckResult("every trust settled (a quiet run, no pending hold)")
        # Before confirming anything: the store is the truth, bar what the pending hold holds.
        with tenant.lock:
            tenant.mode = "unassign"
        reached = self._until_quiet(tenant, "unassign")
        hold = self.poll_hold(tenant)
        held = self._held(hold)
        grants, members, _users = self.store_view(tenant)
        before = checks.grants_match(tenant.trust, grants, truth.grants, held,
                                     name="every synced grant is what the mapping implies (before confirming)")  # fmt: skip
        found.append(before)
        settled, _first = self._settle_mode(tenant, "unassign")
        grants, members, users = self.store_view(tenant)
        found.append(checks.grants_match(tenant.trust, grants, truth.grants, {}))
        found.append(checks.members_match(tenant.trust, members, truth.members, {}))
        settled_deactivate, _ = self._settle_mode(tenant, "deactivate")
        grants, members, users = self.store_view(tenant)
        active = checks.CheckResult("deactivate mode: in scope active, everyone else inactive")
        for person, is_active in sorted(users.items()):
            want = person in truth.active
            if want == is_active:
                active.ok()
            else:
                active.fail(f"{tenant.trust}: {person} is {'active' if is_active else 'inactive'} after settling "
                            f"in deactivate mode; the directory {'gives' if want else 'gives no'} access")  # fmt: skip
        found.append(active)
        if reached and settled and settled_deactivate:
            quiet.ok()
        else:
            quiet.fail(f"{tenant.trust}: did not settle: {'; '.join(self.settle_log[tenant.trust][-6:])}")
        found.append(quiet)
        return found

    def _held(self, hold: Any) -> dict[checks.Slot, Role | None]:
        if hold is None:
            return {}
        return checks.hold_slots((change_to_dict(change) for change in hold.changes), self.person_of)

    def store_view(
        self, tenant: Tenant
    ) -> tuple[dict[tuple[str, str, str], Role], set[tuple[str, str]], dict[str, bool]]:
        """The store's synced grants and group members of ``tenant``, and its users' activity, per person."""
        from calm_azure_sync.postgres import PostgresUserStore

        async def read() -> tuple[Any, dict[str, frozenset[str]], list[Any]]:
            async with PostgresUserStore(self.services.conninfo, schema=SCHEMA, pool_size=1) as store:
                state = await store.load(tenant.trust)
                members = {g: await store.group_members(g, tenant.trust) for g in tenant.groups}
                return state, members, await store.users()

        state, members, users = asyncio.run(read())
        grants = {
            (self.person_of.get(oid, oid), site, module): role
            for oid, slots in state.synced_access.items()
            for (site, module), role in slots.items()
        }
        pairs = {(g, self.person_of.get(oid, oid)) for g, oids in members.items() for oid in oids}
        mine = {u.external_id: u for u in users if u.external_id and self.person_of.get(u.external_id, "").startswith(tenant.trust + "-")}
        activity = {self.person_of[oid]: user.active for oid, user in mine.items()}
        return grants, pairs, activity

    def settle(self) -> None:
        started = time.monotonic()
        with ThreadPoolExecutor(self.plan.workers) as executor:
            for found in executor.map(self._settle_one, list(self.tenants.values())):
                self.settle_checks.extend(found)
        self.timings["settle_seconds"] = round(time.monotonic() - started, 1)

    # -- checks and figures ----------------------------------------------------------------

    def load_events(self) -> None:
        from calm_azure_sync.postgres import PostgresAuditSink

        async def read() -> dict[str, list[Any]]:
            async with PostgresAuditSink(self.services.conninfo, schema=SCHEMA, pool_size=1) as sink:
                return {trust: list(await sink.query(trust, limit=None)) for trust in self.tenants}

        self.events = asyncio.run(read())
        with open(self.log_dir / "import-log.jsonl", "w", encoding="utf-8") as dump:
            for trust, events in sorted(self.events.items()):
                for event in sorted(events, key=lambda e: e.at):
                    dump.write(json.dumps({
                        "at": event.at.isoformat(), "trust": trust, "kind": event.kind.value, "run": event.run_id,
                        "actor": event.actor_id, "subject": event.subject, "message": event.message,
                        "detail": event.detail,
                    }, default=str) + "\n")  # fmt: skip

    def held_from_log(self) -> list[checks.HoldSeen]:
        """Holds as the Import Log announced them (``removals_held`` with a hold id), with the polled hold's slots."""
        polled = {(hold.trust, hold.hold_id): hold.slots for hold in self.holds}
        seen = []
        for trust, events in self.events.items():
            for event in events:
                if event.kind.value != "removals_held" or not event.detail.get("hold_id"):
                    continue
                if event.detail.get("reason") == "partial_read":
                    continue  # decided afresh every run, not a hold
                slots = polled.get((trust, event.detail["hold_id"]))
                if slots is None:
                    slots = checks.hold_slots(event.detail.get("changes") or (), self.person_of)
                seen.append(checks.HoldSeen(trust, event.at, str(event.detail["hold_id"]), slots))
        return seen

    def check(self) -> dict[str, checks.CheckResult]:
        self.load_events()
        results: dict[str, checks.CheckResult] = {}

        def add(result: checks.CheckResult) -> None:
            results.setdefault(result.name, checks.CheckResult(result.name)).merge(result)

        holds = self.holds + self.held_from_log()
        for trust, events in self.events.items():
            tenant = self.tenants[trust]
            add(checks.runs_end(trust, events))
            add(checks.runs_overlap(trust, events))
            add(checks.held_removals(trust, events, [h for h in holds if h.trust == trust], self.jobs,
                                     tenant.history, self.person_of))  # fmt: skip
            add(checks.keep_removes_nothing(trust, events, self.jobs, self.person_of))
        for result in self.settle_checks:
            add(result)
        from calm_azure_sync.postgres import PostgresUserStore

        async def users() -> list[Any]:
            async with PostgresUserStore(self.services.conninfo, schema=SCHEMA, pool_size=1) as store:
                return list(await store.users())

        add(checks.duplicates(asyncio.run(users())))
        typed = checks.CheckResult("errors are the library's (no driver exception escapes run())")
        for number, result in sorted(self.results.items()):
            if result.get("outcome") != "exception" or result.get("typed"):
                typed.ok()
            else:
                typed.fail(f"job {number} ({result['trust']}): {result.get('exception')}: {result.get('message')}")
        add(typed)
        return results

    def figures(self, results: Mapping[str, checks.CheckResult]) -> dict[str, Any]:
        outcomes = collections.Counter(str(r.get("outcome")) + (f":{r['why']}" if r.get("why") else "")
                                       for r in self.results.values())  # fmt: skip
        exceptions = collections.Counter(str(r.get("exception")) for r in self.results.values() if r.get("exception"))
        kinds = collections.Counter(event.kind.value for events in self.events.values() for event in events)
        kinds_by_trust = {
            trust: sum(1 for event in events if event.kind.value == "import_started") for trust, events in self.events.items()
        }
        faults: collections.Counter[str] = collections.Counter()
        mutations: collections.Counter[str] = collections.Counter()
        for tenant in self.tenants.values():
            faults.update(tenant.graph.faults_fired)
            mutations.update(tenant.mutations)
        requests = sum(len(tenant.graph.requests) for tenant in self.tenants.values())
        return {
            "branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
            "commit": _git("rev-parse", "--short", "HEAD"),
            "seed": self.plan.seed,
            "budget": attrs.asdict(self.plan),
            "timings": self.timings,
            "trusts": len(self.tenants),
            "people": len(self.person_of),
            "jobs": len(self.results),
            "job_outcomes": dict(sorted(outcomes.items())),
            "job_seconds": _spread([float(r["seconds"]) for r in self.results.values() if "seconds" in r]),
            "runs_per_trust": _spread([float(kinds_by_trust[trust]) for trust in self.tenants]),
            "exceptions_escaping_run": dict(sorted(exceptions.items())),
            "import_log": {kind: kinds[kind] for kind in sorted(kinds)},
            "sigkills": self.pool.kills,
            "sigkills_after_last_batch": self.kills_after_apply,
            "worker_respawns": self.pool.respawns,
            "hung_workers_killed": self.pool.hung,
            "postgres_restarts": self.services.restarts,
            "postgres_restart_seconds": [round(s, 2) for s in self.restart_seconds],
            "graph_requests": requests,
            "graph_faults": dict(sorted(faults.items())),
            "graph_storms": self.storms,
            "delta_links_expired": self.delta_expiries,
            "directory_mutations": dict(sorted(mutations.items())),
            "mode_switches": self.mode_switches,
            "episodes": dict(sorted(self.episodes.items())),
            "episode_log": self.episode_log,
            "holds_seen": len({(h.trust, h.hold_id) for h in self.holds}),
            "confirmations": len(self.confirmations),
            "hold_polls_failed": self.poll_failures,
            "checks": {name: result.to_dict() for name, result in results.items()},
        }

    def close(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.stop()
        for tenant in self.tenants.values():
            tenant.graph.stop()


def _spread(values: list[float]) -> dict[str, float]:
    """Min, median, 90th percentile and max of ``values``."""
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "min": round(ordered[0], 2),
        "median": round(ordered[len(ordered) // 2], 2),
        "p90": round(ordered[int(len(ordered) * 0.9)], 2),
        "max": round(ordered[-1], 2),
    }


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    return done.stdout.strip() or "?"


@contextlib.contextmanager
def own_services() -> Iterator[Services]:
    """Start this soak's own PostgreSQL and Redis; stop them however the soak ends."""
    services = Services()
    try:
        yield services
    finally:
        services.stop()
