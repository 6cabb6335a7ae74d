"""The shipped Import Log sinks: in memory, JSON Lines and SQLite."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from calm_azure_sync import (
    AuditEvent,
    AuditKind,
    AuditSink,
    InMemoryAuditSink,
    JsonlAuditSink,
    SqliteAuditSink,
)
from calm_azure_sync.audit.sqlite import ImportLogPage

T0 = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)
TRUST = "trust-oak"


def _event(
    minute: int,
    kind: AuditKind = AuditKind.USER_CREATED,
    *,
    trust: str = TRUST,
    run_id: str | None = "run-1",
    subject: str | None = None,
) -> AuditEvent:
    return AuditEvent(
        at=T0 + dt.timedelta(minutes=minute),
        trust_site_id=trust,
        kind=kind,
        message=f"{kind.value} at minute {minute}",
        run_id=run_id,
        actor_id="admin-1",
        subject=subject or f"user-{minute}",
        detail={"minute": minute, "groups": ["g1", "g2"], "name": "Zoë"},
    )


@pytest.fixture
async def sqlite_sink(tmp_path: Path) -> AsyncIterator[SqliteAuditSink]:
    sink = SqliteAuditSink(tmp_path / "log" / "calm.db")
    yield sink
    sink.close()


def test_every_shipped_sink_is_an_audit_sink(tmp_path: Path) -> None:
    sqlite_sink = SqliteAuditSink(tmp_path / "calm.db")
    try:
        for sink in (InMemoryAuditSink(), JsonlAuditSink(tmp_path / "log.jsonl"), sqlite_sink):
            assert isinstance(sink, AuditSink)
    finally:
        sqlite_sink.close()


async def test_in_memory_sink_keeps_events_in_order() -> None:
    sink = InMemoryAuditSink()
    await sink.record([_event(0), _event(1)])
    await sink.record([_event(2)])
    assert sink.events == [_event(0), _event(1), _event(2)]


# -- JSON Lines -------------------------------------------------------------------------------


async def test_jsonl_round_trips_one_object_a_line(tmp_path: Path) -> None:
    sink = JsonlAuditSink(tmp_path / "nested" / "dir" / "log.jsonl")
    await sink.record([_event(0), _event(1, AuditKind.ERROR, subject="e9")])
    await sink.record([_event(2, run_id=None)])
    lines = (tmp_path / "nested" / "dir" / "log.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["user_created", "error", "user_created"]
    assert sink.read() == [_event(0), _event(1, AuditKind.ERROR, subject="e9"), _event(2, run_id=None)]


async def test_jsonl_appends_to_an_existing_log(tmp_path: Path) -> None:
    await JsonlAuditSink(tmp_path / "log.jsonl").record([_event(0)])
    reopened = JsonlAuditSink(tmp_path / "log.jsonl")
    await reopened.record([_event(1)])
    assert reopened.read() == [_event(0), _event(1)]


async def test_jsonl_a_torn_last_line_is_skipped_and_never_swallows_the_next_event(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    sink = JsonlAuditSink(path)
    await sink.record([_event(0), _event(1)])
    whole = path.read_bytes()
    # A crash in the middle of writing the second line.
    path.write_bytes(whole[: len(whole) - 25])
    assert sink.read() == [_event(0)]
    await sink.record([_event(2)])
    assert sink.read() == [_event(0), _event(2)]


async def test_jsonl_a_line_torn_inside_a_multibyte_character_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    sink = JsonlAuditSink(path)
    await sink.record([_event(0)])
    line = json.dumps(_event(1).to_dict(), ensure_ascii=False).encode("utf-8")
    cut = line.index("ë".encode()) + 1  # half of the two bytes of "ë"
    with path.open("ab") as file:
        file.write(line[:cut])
    assert sink.read() == [_event(0)]


def test_jsonl_a_missing_file_has_no_events(tmp_path: Path) -> None:
    assert JsonlAuditSink(tmp_path / "never.jsonl").read() == []


async def test_jsonl_concurrent_records_lose_nothing_and_never_interleave(tmp_path: Path) -> None:
    sink = JsonlAuditSink(tmp_path / "log.jsonl")
    batches = [[_event(batch * 10 + index) for index in range(10)] for batch in range(20)]
    await asyncio.gather(*(sink.record(batch) for batch in batches))
    read = sink.read()
    assert sorted(read, key=lambda event: event.at) == [event for batch in batches for event in batch]
    # Each record() call's events stay together, in their order.
    for batch in batches:
        start = read.index(batch[0])
        assert read[start : start + 10] == batch


async def test_jsonl_an_empty_record_writes_nothing(tmp_path: Path) -> None:
    await JsonlAuditSink(tmp_path / "log.jsonl").record([])
    assert not (tmp_path / "log.jsonl").exists()


# -- SQLite -------------------------------------------------------------------------------------


async def test_sqlite_round_trips_every_field(sqlite_sink: SqliteAuditSink) -> None:
    event = AuditEvent(
        at=dt.datetime(2025, 3, 1, 10, 0, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        trust_site_id=TRUST,
        kind=AuditKind.REMOVALS_HELD,
        message="12 removals held",
        run_id="run-7",
        actor_id=None,
        subject=None,
        detail={"count": 12, "nested": {"ratio": 0.5, "ids": ["a", "b"]}, "none": None},
    )
    await sqlite_sink.record([event])
    [back] = await sqlite_sink.query(TRUST)
    assert back == event
    assert back.at.tzinfo is not None


async def test_sqlite_stores_detail_as_json(sqlite_sink: SqliteAuditSink, tmp_path: Path) -> None:
    import sqlite3

    await sqlite_sink.record([_event(0)])
    connection = sqlite3.connect(tmp_path / "log" / "calm.db")
    try:
        [(detail,)] = connection.execute("SELECT detail FROM audit_events").fetchall()
    finally:
        connection.close()
    assert json.loads(detail) == {"minute": 0, "groups": ["g1", "g2"], "name": "Zoë"}


async def test_sqlite_no_write_is_lost_under_concurrent_records(tmp_path: Path) -> None:
    sinks = [SqliteAuditSink(tmp_path / "calm.db") for _ in range(3)]
    try:
        await asyncio.gather(
            *(sink.record([_event(index * 100 + n)]) for index, sink in enumerate(sinks) for n in range(30))
        )
        everything = await sinks[0].query(TRUST, limit=None)
    finally:
        for sink in sinks:
            sink.close()
    assert len(everything) == 90
    assert len({event.at for event in everything}) == 90


async def test_sqlite_query_page_prints_as_text_and_html(sqlite_sink: SqliteAuditSink) -> None:
    await sqlite_sink.record([_event(0, subject="<script>")])
    page = await sqlite_sink.query(TRUST)
    assert isinstance(page, ImportLogPage)
    assert "user_created" in str(page)
    assert "&lt;script&gt;" in page._repr_html_()
    assert str(ImportLogPage()) == "(no Import Log events)"


async def test_sqlite_sink_shares_a_file_with_the_user_store(tmp_path: Path) -> None:
    from calm_azure_sync import SqliteUserStore

    async with SqliteUserStore(tmp_path / "calm.db") as store, SqliteAuditSink(tmp_path / "calm.db") as sink:
        await store.add_user("ann@oak.example", "Ann")
        await sink.record([_event(0)])
        assert len(await sink.query(TRUST)) == 1
        assert len((await store.load(TRUST)).users) == 1
