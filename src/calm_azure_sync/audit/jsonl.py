"""The JSON Lines Import Log: append-only, one event a line, durable per call."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import attrs

from .._async_closing import AsyncClosing
from .._text import clean_text
from .events import AuditEvent, AuditKind
from .protocol import select_events

__all__ = ["JsonlAuditSink"]


@attrs.define
class JsonlAuditSink(AsyncClosing):
    """An :class:`~calm_azure_sync.AuditSink` appending one JSON object a line to ``path``.

    Each line is :meth:`AuditEvent.to_dict`. Every :meth:`record` call writes
    its events at once, then flushes and fsyncs, so what it returned for is on
    disk. Parent directories are created. A crash mid-write can leave a torn
    last line; the next :meth:`record` starts a fresh line after it, and
    :meth:`read` skips it, so one torn write never hides another event.
    Text UTF-8 cannot encode (a lone surrogate) is written as U+FFFD.
    The file is opened per call, so there is nothing to close; ``aclose()``
    and ``async with`` work as on every shipped sink.
    """

    path: Path = attrs.field(converter=Path)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    async def record(self, events: Sequence[AuditEvent]) -> None:
        """Append ``events``, durably."""
        if not events:
            return
        # clean_text: a lone surrogate (from Graph JSON) becomes U+FFFD
        # rather than failing the UTF-8 encoding of the whole batch.
        text = "".join(clean_text(json.dumps(event.to_dict(), ensure_ascii=False)) + "\n" for event in events)
        await asyncio.to_thread(self._append, text.encode("utf-8"))

    def _append(self, data: bytes) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            with self.path.open("ab") as file:
                if file.tell() > 0 and not self._ends_with_newline():
                    # The last write was torn by a crash: end that fragment so
                    # our first event starts on a line of its own.
                    data = b"\n" + data
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            if created:
                _fsync_directory(self.path.parent)

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as file:
            file.seek(-1, os.SEEK_END)
            return file.read(1) == b"\n"

    def iter_events(self) -> Iterator[AuditEvent]:
        """Yield the events in the file, oldest first; a line torn by a crash is skipped.

        A missing file has no events.
        """
        try:
            file = self.path.open("rb")
        except FileNotFoundError:
            return
        with file:
            for line in file:
                event = _parse_line(line)
                if event is not None:
                    yield event

    def read(self) -> list[AuditEvent]:
        """Every event in the file, oldest first (see :meth:`iter_events`)."""
        return list(self.iter_events())

    def iter_newest_first(self) -> Iterator[AuditEvent]:
        """Yield the events newest first, reading the file backwards in blocks (a torn line is skipped).

        Reading stops where the caller stops: the last few events of a
        large log cost a block or two, not the whole file.
        """
        try:
            file = self.path.open("rb")
        except FileNotFoundError:
            return
        with file:
            position = file.seek(0, os.SEEK_END)
            tail = b""
            while position > 0:
                step = min(_BLOCK, position)
                position -= step
                file.seek(position)
                chunk = file.read(step) + tail
                lines = chunk.split(b"\n")
                tail = lines[0]  # may start before this block: kept for the next one
                for line in reversed(lines[1:]):
                    event = _parse_line(line)
                    if event is not None:
                        yield event
            event = _parse_line(tail)
            if event is not None:
                yield event

    async def query(
        self,
        trust_site_id: str,
        run_id: str | None = None,
        kinds: Collection[AuditKind | str] | None = None,
        limit: int | None = 100,
    ) -> list[AuditEvent]:
        """The trust's events newest first, as :class:`~calm_azure_sync.audit.protocol.ImportLogQuery` says.

        The file is read backwards and only as far as ``limit`` needs.
        """
        return await asyncio.to_thread(
            lambda: select_events(self.iter_newest_first(), trust_site_id, run_id, kinds, limit)
        )


_BLOCK = 64 * 1024


def _parse_line(line: bytes) -> AuditEvent | None:
    """The event on ``line``, or ``None`` for a blank or torn line."""
    if not line.strip():
        return None
    try:
        data = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError: a partial write
        return None
    if not isinstance(data, dict):
        return None
    return AuditEvent.from_dict(data)


def _fsync_directory(directory: Path) -> None:
    # A new file's directory entry is only durable once its directory is synced.
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms that cannot open a directory
        return
    try:
        os.fsync(descriptor)
    except OSError:  # pragma: no cover - some filesystems refuse; the data itself is synced
        pass
    finally:
        os.close(descriptor)
