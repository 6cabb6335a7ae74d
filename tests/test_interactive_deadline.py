"""Interactive calls give up on an unreachable Graph within ``Reconciler.interactive_timeout`` (5 s).

``discover``, ``check`` and ``suggest_exclusions`` are clicks on the Group
Mapping screen: with Graph unreachable they used to take 23 s (six
attempts) before their ``DirectoryError``. Now each Graph request they make
must be answered within the deadline, retries included; once one times out
the rest of the call fails at once. ``run`` keeps its patient retries. The
wire is real: a closed port (connection refused) and a black hole (a socket
that accepts connections and never answers) on 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from calm_azure_sync import (
    Actor,
    ConfigError,
    DirectoryError,
    DirectoryGroup,
    DirectoryUser,
    GraphDirectory,
    GroupMapping,
    InMemoryAuditSink,
    InMemoryDirectory,
    InMemoryUserStore,
    Reconciler,
    SyncConfig,
)
from calm_azure_sync.directory._deadline import answer_within, current_deadline
from calm_azure_sync.directory.graph import RetryPolicy
from calm_azure_sync.testing import FakeCredential, FakeGraphServer

from .helpers import OAK_TRUST_BIRCH as HIERARCHY

pytestmark = pytest.mark.wire

ADMIN = Actor.system("screen")


def _config(groups: int = 1) -> SyncConfig:
    return SyncConfig("oak", [GroupMapping(f"g{n}", "birch", {"Risk": "Member"}) for n in range(groups)])


@pytest.fixture
def closed_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()  # nothing listens there now: connections are refused
    return port


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that completes TCP handshakes (the kernel's backlog) and never answers a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()


def _reconciler(port: int, **options: Any) -> Reconciler:
    directory = GraphDirectory.from_credential(FakeCredential(), base_url=f"http://127.0.0.1:{port}/v1.0")
    return Reconciler(directory, InMemoryUserStore(), InMemoryAuditSink(), HIERARCHY, **options)


async def test_discover_fails_within_five_seconds_by_default_when_graph_refuses_connections(closed_port: int) -> None:
    reconciler = _reconciler(closed_port)
    assert reconciler.interactive_timeout == dt.timedelta(seconds=5)
    started = time.monotonic()
    with pytest.raises(DirectoryError) as raised:
        await reconciler.discover("oak", actor=ADMIN)
    elapsed = time.monotonic() - started
    await reconciler.directory.aclose()  # type: ignore[attr-defined]
    assert raised.value.code == "timeout", raised.value
    assert "did not answer within 5 s" in str(raised.value)
    assert 4.5 <= elapsed < 6.0, elapsed  # was 23 s: six attempts with backoff


@pytest.mark.parametrize("call", ["discover", "check", "suggest_exclusions"])
async def test_every_interactive_call_fails_at_the_deadline_on_a_black_hole(black_hole: int, call: str) -> None:
    reconciler = _reconciler(black_hole, interactive_timeout=dt.timedelta(seconds=0.5))
    calls = {
        "discover": lambda: reconciler.discover("oak", actor=ADMIN),
        "check": lambda: reconciler.check(_config(), actor=ADMIN),
        "suggest_exclusions": lambda: reconciler.suggest_exclusions(_config(), actor=ADMIN),
    }
    started = time.monotonic()
    with pytest.raises(DirectoryError, match=r"did not answer within 0\.5 s"):
        await calls[call]()
    elapsed = time.monotonic() - started
    await reconciler.directory.aclose()  # type: ignore[attr-defined]
    assert elapsed < 1.5, elapsed  # the httpx timeout alone is 60 s


async def test_one_timeout_fails_the_whole_call_not_one_wait_per_group(black_hole: int) -> None:
    # 60 mapped groups, 16 read at a time: once the first requests time out, the queued ones fail at once.
    reconciler = _reconciler(black_hole, interactive_timeout=dt.timedelta(seconds=0.5))
    started = time.monotonic()
    with pytest.raises(DirectoryError) as raised:
        await reconciler.suggest_exclusions(_config(groups=60), actor=ADMIN)
    elapsed = time.monotonic() - started
    await reconciler.directory.aclose()  # type: ignore[attr-defined]
    assert raised.value.code == "unreadable_groups" and "60 mapped group(s)" in str(raised.value)
    assert elapsed < 1.5, elapsed


async def test_a_slow_graph_that_answers_is_not_cut_short() -> None:
    # Every request answers within the deadline; the whole call takes longer than it, and succeeds.
    users = [{"id": f"u{n}", "displayName": f"Noreply {n}", "mail": f"noreply{n}@oak.org"} for n in range(12)]
    fixture = {"users": users, "groups": [{"id": "g0", "displayName": "Staff"}], "members": {"g0": [u["id"] for u in users]}}
    with FakeGraphServer(fixture, page_cap=2, latency=0.1) as graph:
        directory = GraphDirectory.from_credential(FakeCredential(), base_url=graph.base_url)
        reconciler = Reconciler(
            directory, InMemoryUserStore(), InMemoryAuditSink(), HIERARCHY,
            interactive_timeout=dt.timedelta(seconds=0.4),
        )  # fmt: skip
        started = time.monotonic()
        suggestions = await reconciler.suggest_exclusions(_config(), actor=ADMIN)
        elapsed = time.monotonic() - started
        await directory.aclose()
    assert elapsed > 0.4, elapsed  # six pages one after another
    assert len(suggestions) == 12


async def test_run_keeps_its_patient_retries(black_hole: int) -> None:
    # The same unreachable Graph: run() is not bounded by the interactive deadline, only by the
    # directory's own timeout and retry policy (here one attempt of at most 1.5 s).
    directory = GraphDirectory.from_credential(
        FakeCredential(), base_url=f"http://127.0.0.1:{black_hole}/v1.0", timeout=1.5, retry=RetryPolicy(max_attempts=1)
    )
    reconciler = Reconciler(
        directory, InMemoryUserStore(), InMemoryAuditSink(), HIERARCHY, interactive_timeout=dt.timedelta(seconds=0.2)
    )
    started = time.monotonic()
    report = await reconciler.run(_config(), actor=ADMIN, mode="full")
    elapsed = time.monotonic() - started
    await directory.aclose()
    assert not report.ok
    assert elapsed >= 1.4, elapsed


class _RecordingDirectory(InMemoryDirectory):
    """Records the deadline in force at each read."""

    seen: list[tuple[str, float | None]]

    async def list_groups(self, search: str | None = None) -> Sequence[DirectoryGroup]:
        self.seen.append(("list_groups", current_deadline()))
        return await super().list_groups(search)

    async def group_members(self, group_id: str) -> Sequence[DirectoryUser]:
        self.seen.append(("group_members", current_deadline()))
        return await super().group_members(group_id)


async def test_the_deadline_reaches_every_read_of_an_interactive_call_and_no_read_of_a_run() -> None:
    directory = _RecordingDirectory.from_dict(
        {"users": [{"id": "u1", "mail": "ann@oak.org"}], "groups": [{"id": "g0"}], "members": {"g0": ["u1"]}}
    )
    directory.seen = []
    reconciler = Reconciler(directory, InMemoryUserStore(), InMemoryAuditSink(), HIERARCHY)
    await reconciler.discover("oak", actor=ADMIN)
    await reconciler.check(_config(), actor=ADMIN)
    await reconciler.suggest_exclusions(_config(), actor=ADMIN)
    interactive = list(directory.seen)
    assert interactive and {deadline for _, deadline in interactive} == {5.0}, interactive
    directory.seen.clear()
    await reconciler.run(_config(), actor=ADMIN, mode="full")
    await reconciler.plan(_config(), actor=ADMIN)
    assert directory.seen and {deadline for _, deadline in directory.seen} == {None}, directory.seen
    assert current_deadline() is None


async def test_the_deadline_is_one_adjustable_setting(closed_port: int) -> None:
    directory = _RecordingDirectory.from_dict({"users": [], "groups": [{"id": "g0"}], "members": {}})
    directory.seen = []
    await Reconciler(
        directory, InMemoryUserStore(), InMemoryAuditSink(), HIERARCHY, interactive_timeout=dt.timedelta(seconds=30)
    ).discover("oak", actor=ADMIN)
    await Reconciler(
        directory, InMemoryUserStore(), InMemoryAuditSink(), HIERARCHY, interactive_timeout=None
    ).discover("oak", actor=ADMIN)
    assert [deadline for _, deadline in directory.seen] == [30.0, None]
    for bad in (dt.timedelta(0), dt.timedelta(seconds=-1), 5):
        with pytest.raises(ConfigError, match="interactive_timeout"):
            Reconciler(directory, InMemoryUserStore(), InMemoryAuditSink(), HIERARCHY, interactive_timeout=bad)


async def test_the_helper_bounds_any_directory_request_in_its_scope(black_hole: int) -> None:
    # What a future interactive call (explain) uses: one `with answer_within(...)` around its reads.
    directory = GraphDirectory.from_credential(FakeCredential(), base_url=f"http://127.0.0.1:{black_hole}/v1.0")
    started = time.monotonic()
    with answer_within(0.3), pytest.raises(DirectoryError, match=r"did not answer within 0\.3 s"):
        await directory.lookup_users(["u1"])
    with answer_within(0.3), pytest.raises(DirectoryError, match=r"did not answer within 0\.3 s"):
        await directory.group_member_count("g0")
    await directory.aclose()
    assert time.monotonic() - started < 1.5
