"""on_attention: what is new at the end of a run reaches the host once; a broken callback never fails a run."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import smtplib
from collections.abc import Sequence
from email.message import EmailMessage
from typing import Any

import httpx
import pytest

from calm_azure_sync import (
    Attention,
    AuditEvent,
    AuditKind,
    DirectoryAccessError,
    GroupMapping,
    InMemoryAuditSink,
    InMemoryDirectory,
    InMemoryUserStore,
    Reconciler,
    SyncConfig,
)
from calm_azure_sync.testing.notify import SmtpServer, WebhookServer

from .helpers import OAK_TRUST_BIRCH_HIGH as HIERARCHY
from .helpers import SYSTEM as ACTOR

STAFF = "10000000-0000-4000-8000-0000000000a1"
CONFIG = SyncConfig("oak", [GroupMapping(STAFF, "birch", {"Risk": "Member"})])


def tenant(users: int = 12) -> InMemoryDirectory:
    people = [
        {"id": f"00000000-0000-4000-8000-{index:012d}", "displayName": f"Person {index}", "mail": f"p{index}@oak.org"}
        for index in range(users)
    ]
    return InMemoryDirectory.from_dict({
        "users": people,
        "groups": [{"id": STAFF, "displayName": "Birch All Staff"}],
        "members": {STAFF: [person["id"] for person in people]},
    })


class Collect:
    def __init__(self) -> None:
        self.calls: list[tuple[Attention, ...]] = []

    def __call__(self, items: Sequence[Attention]) -> None:
        self.calls.append(tuple(items))


async def test_a_new_hold_is_told_once_and_a_hold_that_stays_is_not_told_again() -> None:
    directory, store, told = tenant(), InMemoryUserStore(), Collect()
    sync = Reconciler(directory, store, InMemoryAuditSink(), HIERARCHY, on_attention=told)
    await sync.run(CONFIG, actor=ACTOR)
    assert told.calls == []  # nothing new
    directory.members[STAFF] = directory.members[STAFF][:2]
    report = await sync.run(CONFIG, actor=ACTOR)
    [[item]] = told.calls
    assert item.kind == "hold_waiting" and report.hold_id is not None and report.hold_id in item.message
    assert "20 removals for 10 people" in item.message  # a grant and a group membership each
    await sync.run(CONFIG, actor=ACTOR)  # the same hold, still waiting: not news
    assert len(told.calls) == 1
    directory.members[STAFF] = directory.members[STAFF][:1]  # it grows
    grown = await sync.run(CONFIG, actor=ACTOR)
    assert len(told.calls) == 2 and told.calls[1][0].kind == "hold_waiting"
    assert "now holds 22 removals for 11 people" in told.calls[1][0].message and grown.hold_id in told.calls[1][0].message


async def test_a_raising_callback_is_logged_and_the_run_stays_ok(caplog: pytest.LogCaptureFixture) -> None:
    directory, store = tenant(), InMemoryUserStore()

    def broken(items: Sequence[Attention]) -> None:
        raise RuntimeError("the webhook is down")

    sync = Reconciler(directory, store, InMemoryAuditSink(), HIERARCHY, on_attention=broken)
    await sync.run(CONFIG, actor=ACTOR)
    directory.members[STAFF] = ()
    with caplog.at_level(logging.ERROR, logger="calm_azure_sync"):
        report = await sync.run(CONFIG, actor=ACTOR)
    assert report.ok and report.hold_id is not None
    assert any("on_attention callback failed" in record.getMessage() for record in caplog.records)


async def test_the_runs_callback_overrides_the_reconcilers_and_may_be_async() -> None:
    directory, store = tenant(), InMemoryUserStore()
    default, given = Collect(), Collect()

    async def async_given(items: Sequence[Attention]) -> None:
        await asyncio.sleep(0)
        given(items)

    sync = Reconciler(directory, store, InMemoryAuditSink(), HIERARCHY, on_attention=default)
    await sync.run(CONFIG, actor=ACTOR)
    directory.members[STAFF] = ()
    await sync.run(CONFIG, actor=ACTOR, on_attention=async_given)
    assert default.calls == [] and [item.kind for item in given.calls[0]] == ["hold_waiting"]


class Failing(InMemoryDirectory):
    async def group_members(self, group_id: str) -> Any:
        raise DirectoryAccessError("Graph answered 403", status=403)


async def test_a_failure_streak_is_told_when_it_reaches_three_only() -> None:
    store, sink, told = InMemoryUserStore(), InMemoryAuditSink(), Collect()
    failing = Failing.from_dict(tenant().to_dict())
    sync = Reconciler(failing, store, sink, HIERARCHY, on_attention=told)
    kinds = []
    for _ in range(5):
        before = len(told.calls)
        report = await sync.run(CONFIG, actor=ACTOR)
        assert not report.ok
        kinds.append([item.kind for call in told.calls[before:] for item in call])
    assert kinds == [[], [], ["repeated_failures"], [], []]


async def test_a_refusal_is_told_but_a_busy_lock_is_not() -> None:
    told = Collect()
    sync = Reconciler(tenant(), InMemoryUserStore(), InMemoryAuditSink(), HIERARCHY, on_attention=told)
    with pytest.raises(Exception, match="confirm_hold"):
        await sync.run(CONFIG, actor=ACTOR, confirm_hold="not-a-hold")
    [[item]] = told.calls
    assert item.kind == "import_refused" and "An import of Oak Trust was refused (hold mismatch)" in item.message
    store = InMemoryUserStore()
    busy = Reconciler(tenant(), store, InMemoryAuditSink(), HIERARCHY, on_attention=told)
    async with store.run_lock("oak"):
        with pytest.raises(Exception, match="already"):
            await busy.run(CONFIG, actor=ACTOR)
    assert len(told.calls) == 1


class ClosingSink(InMemoryAuditSink):
    """Stands in for the run that closes a dead one: logs ``import_abandoned`` when a run starts."""

    async def record(self, events: Sequence[AuditEvent]) -> None:
        await super().record(events)
        for event in events:
            if event.kind == AuditKind.IMPORT_STARTED:
                await super().record([AuditEvent(
                    at=event.at, trust_site_id=event.trust_site_id, kind=AuditKind.IMPORT_ABANDONED,
                    message="Import dead-1 (started 2026-07-19 02:00 UTC) stopped without an end",
                    run_id=event.run_id, detail={"abandoned_run_id": "dead-1"},
                )])


async def test_an_abandoned_run_closed_by_this_one_is_told() -> None:
    told = Collect()
    sync = Reconciler(tenant(), InMemoryUserStore(), ClosingSink(), HIERARCHY, on_attention=told)
    report = await sync.run(CONFIG, actor=ACTOR)
    assert report.ok
    [[item]] = told.calls
    assert item.kind == "run_abandoned" and "dead-1" in item.message


# --- the worked examples of docs/admin-questions.md, against local servers --------------------------------


def post_to_webhook(url: str) -> Any:
    """A Teams or Slack incoming webhook: one message per item (both take ``{"text": ...}``)."""

    async def on_attention(items: Sequence[Attention]) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            for item in items:
                response = await client.post(url, json={"text": f"CalmCompliance sync: {item.message}"})
                response.raise_for_status()

    return on_attention


def email_admin(host: str, port: int, sender: str, to: str) -> Any:
    """One email listing the items, sent with smtplib in a worker thread (it blocks)."""

    def send(items: Sequence[Attention]) -> None:
        message = EmailMessage()
        message["Subject"] = f"CalmCompliance sync needs attention ({len(items)})"
        message["From"], message["To"] = sender, to
        message.set_content("\n\n".join(f"- {item.message}" for item in items))
        with smtplib.SMTP(host, port, timeout=10) as smtp:
            smtp.send_message(message)

    async def on_attention(items: Sequence[Attention]) -> None:
        await asyncio.to_thread(send, items)

    return on_attention


async def _held_run(**kwargs: Any) -> Any:
    directory, store = tenant(), InMemoryUserStore()
    sync = Reconciler(directory, store, InMemoryAuditSink(), HIERARCHY, **kwargs)
    await sync.run(CONFIG, actor=ACTOR)
    directory.members[STAFF] = ()
    return await sync.run(CONFIG, actor=ACTOR)


async def test_the_webhook_example_posts_each_item() -> None:
    with WebhookServer() as webhook:
        report = await _held_run(on_attention=post_to_webhook(webhook.url))
    assert report.ok
    [body] = webhook.received
    assert body["text"].startswith("CalmCompliance sync: A hold holds 24 removals for 12 people")
    assert report.hold_id in body["text"]


async def test_a_webhook_that_answers_500_is_logged_and_the_run_stays_ok(caplog: pytest.LogCaptureFixture) -> None:
    with WebhookServer(status=500) as webhook, caplog.at_level(logging.ERROR, logger="calm_azure_sync"):
        report = await _held_run(on_attention=post_to_webhook(webhook.url))
    assert report.ok and len(webhook.received) == 1
    assert any("on_attention" in record.getMessage() for record in caplog.records)


async def test_the_email_example_sends_one_message() -> None:
    with SmtpServer() as smtp:
        report = await _held_run(on_attention=email_admin(smtp.host, smtp.port, "sync@oak.org", "it@oak.org"))
    assert report.ok
    [message] = smtp.messages
    assert message["Subject"] == "CalmCompliance sync needs attention (1)"
    assert smtp.envelopes == [("sync@oak.org", ["it@oak.org"])]
    assert f"confirm hold {report.hold_id}" in message.get_content()


def test_attention_reads_as_its_message() -> None:
    item = Attention("hold_waiting", "A hold\u202e waits", dt.datetime(2026, 7, 20, tzinfo=dt.UTC))
    assert str(item) == "A hold\\u202e waits"
    assert item.to_dict() == {"kind": "hold_waiting", "message": "A hold\u202e waits", "since": "2026-07-20T00:00:00+00:00"}
