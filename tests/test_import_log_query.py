"""The Import Log screen's query, the same on both sinks that page: SQLite and PostgreSQL.

Newest first (ties: last recorded first), filtered by trust, run and kinds,
paged by a ``before`` datetime in any zone or by the page's own cursor
(which never skips or repeats events that share a time). The PostgreSQL
half skips without a server outside CI.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest

from calm_azure_sync import AuditEvent, AuditKind, ConfigError, SqliteAuditSink

T0 = dt.datetime(2026, 9, 1, 8, 0, tzinfo=dt.UTC)
TRUST = "trust-oak"


def _event(minute: int, kind: AuditKind = AuditKind.USER_CREATED, **fields: Any) -> AuditEvent:
    values: dict[str, Any] = {
        "at": T0 + dt.timedelta(minutes=minute),
        "trust_site_id": TRUST,
        "kind": kind,
        "message": f"{kind.value} at minute {minute}",
        "run_id": "run-1",
        "actor_id": "admin-1",
        "subject": f"user-{minute}",
        "detail": {"minute": minute, "groups": ["g1", "g2"], "name": "Zoë"},
    }
    values.update(fields)
    return AuditEvent(**values)


@pytest.fixture(params=["sqlite", "postgres"])
async def sink(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Any]:
    if request.param == "sqlite":
        async with SqliteAuditSink(tmp_path / "log" / "calm.db") as made:
            yield made
        return
    pytest.importorskip("psycopg", reason="the postgres extra is not installed")
    from calm_azure_sync.postgres import PostgresAuditSink

    url, schema = request.getfixturevalue("postgres_url"), request.getfixturevalue("postgres_schema")
    async with PostgresAuditSink(url, schema=schema) as made:
        yield made


async def test_query_is_newest_first_with_ties_last_recorded_first(sink: Any) -> None:
    tied = [_event(5, subject=f"tied-{index}") for index in range(3)]
    await sink.record([_event(1), _event(9), *tied])
    await sink.record([_event(3)])
    page = await sink.query(TRUST)
    assert [event.subject for event in page] == ["user-9", "tied-2", "tied-1", "tied-0", "user-3", "user-1"]


async def test_query_filters_by_trust_run_and_kinds_and_refuses_what_it_cannot_read(sink: Any) -> None:
    await sink.record(
        [
            _event(0, AuditKind.IMPORT_STARTED),
            _event(1, AuditKind.USER_CREATED),
            _event(2, AuditKind.ERROR),
            _event(3, AuditKind.USER_CREATED, run_id="run-2"),
            _event(4, AuditKind.USER_CREATED, trust_site_id="trust-elm"),
        ]
    )
    assert [e.at.minute for e in await sink.query(TRUST)] == [3, 2, 1, 0]
    assert [e.at.minute for e in await sink.query(TRUST, run_id="run-1")] == [2, 1, 0]
    assert [e.at.minute for e in await sink.query(TRUST, kinds=[AuditKind.USER_CREATED, "error"])] == [3, 2, 1]
    assert [e.at.minute for e in await sink.query(TRUST, run_id="run-1", kinds={"user_created"})] == [1]
    assert await sink.query(TRUST, kinds=[]) == []
    assert [e.at.minute for e in await sink.query(TRUST, kinds="error")] == [2]
    assert [e.trust_site_id for e in await sink.query("trust-elm")] == ["trust-elm"]
    with pytest.raises(ConfigError, match="no_such_kind"):
        await sink.query(TRUST, kinds=["no_such_kind"])
    with pytest.raises(ConfigError, match="limit"):
        await sink.query(TRUST, limit=0)
    with pytest.raises(ConfigError, match="timezone-aware"):
        await sink.query(TRUST, before=dt.datetime(2025, 1, 1))  # naive: the point of the test


BAD_QUERIES = [
    # (arguments, the argument the error must name, text it must hold)
    ({"kinds": ["nope"]}, "kinds", "hold_confirmed"),  # names the allowed values, the v0.4 kinds too
    ({"kinds": ["user_created", 7]}, "kinds", "7"),
    ({"kinds": 7}, "kinds", "list of Import Log kinds"),
    ({"limit": 0}, "limit", "at least 1"),
    ({"limit": -5}, "limit", "at least 1"),
    ({"limit": True}, "limit", "True"),
    ({"limit": "50"}, "limit", "'50'"),
    ({"limit": 2.5}, "limit", "2.5"),
    ({"before": dt.datetime(2025, 1, 1)}, "before", "timezone-aware"),
    ({"before": "2025-01-01"}, "before", "ImportLogCursor"),
    ({"before": 1700000000}, "before", "ImportLogCursor"),
    ({"run_id": 12}, "run_id", "string"),
    ({"trust_site_id": None}, "trust_site_id", "string"),
    ({"trust_site_id": ["trust-oak"]}, "trust_site_id", "string"),
]


@pytest.mark.parametrize(("arguments", "name", "text"), BAD_QUERIES, ids=lambda v: repr(v)[:40])
async def test_every_bad_query_argument_is_a_config_error_naming_it(
    sink: Any, arguments: dict[str, Any], name: str, text: str
) -> None:
    await sink.record([_event(1)])
    call = {"trust_site_id": TRUST, **arguments}
    with pytest.raises(ConfigError) as raised:
        await sink.query(**call)
    message = str(raised.value)
    assert message.startswith(f"{name}:") and text in message, message


async def test_an_unknown_kind_lists_every_allowed_kind(sink: Any) -> None:
    with pytest.raises(ConfigError) as raised:
        await sink.query(TRUST, kinds=["hold_confirmd"])
    message = str(raised.value)
    assert "'hold_confirmd' is not an Import Log kind" in message
    assert all(kind.value in message for kind in AuditKind)
    # The v0.4 kinds are kinds: no error.
    assert await sink.query(TRUST, kinds=["removals_deferred", "import_abandoned", "hold_confirmed"]) == []


async def test_a_cursor_from_a_page_is_checked_too(sink: Any) -> None:
    from calm_azure_sync.audit.sqlite import ImportLogCursor

    with pytest.raises(ConfigError, match=r"^before\.at: must be a timezone-aware"):
        await sink.query(TRUST, before=ImportLogCursor(at=dt.datetime(2025, 1, 1), seq=3))
    with pytest.raises(ConfigError, match=r"^before\.seq: must be an integer"):
        await sink.query(TRUST, before=ImportLogCursor(at=T0, seq="3"))  # type: ignore[arg-type]


async def test_pages_with_a_before_datetime_in_any_zone(sink: Any) -> None:
    await sink.record([_event(minute) for minute in range(10)])
    first = await sink.query(TRUST, limit=4)
    assert [e.at.minute for e in first] == [9, 8, 7, 6]
    second = await sink.query(TRUST, limit=4, before=first[-1].at)
    assert [e.at.minute for e in second] == [5, 4, 3, 2]
    last = await sink.query(TRUST, limit=4, before=second[-1].at)
    assert [e.at.minute for e in last] == [1, 0]
    assert last.next_before is None
    in_paris = (T0 + dt.timedelta(minutes=3)).astimezone(dt.timezone(dt.timedelta(hours=1)))
    assert [e.at.minute for e in await sink.query(TRUST, before=in_paris)] == [2, 1, 0]


async def test_paging_by_cursor_never_skips_or_repeats_events_with_one_time(sink: Any) -> None:
    await sink.record([_event(minute) for minute in range(10)])
    tied = [_event(30, subject=f"s{index:02d}") for index in range(25)]  # one batch, one time
    await sink.record(tied)
    seen: list[AuditEvent] = []
    page = await sink.query(TRUST, limit=10)
    seen.extend(page)
    while page.next_before is not None:
        page = await sink.query(TRUST, limit=10, before=page.next_before)
        seen.extend(page)
    assert seen[:25] == list(reversed(tied)) and len(seen) == 35
    assert [e.at.minute for e in seen[25:]] == list(range(9, -1, -1))
