"""Local stand-ins for where ``on_attention`` sends: an incoming webhook and an SMTP server, on 127.0.0.1.

A host tests its ``on_attention`` callback against these instead of Teams,
Slack or a mail relay::

    with WebhookServer() as webhook, SmtpServer() as smtp:
        ...  # run with on_attention posting to webhook.url, mailing smtp.host:smtp.port
        assert webhook.received[0]["text"].startswith("CalmCompliance")
        assert "hold" in smtp.messages[0]["Subject"]

:class:`WebhookServer` answers every ``POST`` with ``200`` (or ``status``)
and keeps each JSON body; :class:`SmtpServer` speaks just enough SMTP for
:mod:`smtplib` (``EHLO``/``HELO``, ``MAIL``, ``RCPT``, ``DATA``, ``RSET``,
``NOOP``, ``QUIT``) and keeps each message, parsed. Both serve from a thread
and stop when the ``with`` block ends.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import http.server
import json
import socketserver
import threading
from typing import Any, cast

__all__ = ["SmtpServer", "WebhookServer"]


class _Serving:
    """A server of the standard library, run in a thread for a ``with`` block."""

    _server: socketserver.TCPServer
    _thread: threading.Thread | None = None

    def __enter__(self) -> Any:
        self._thread = threading.Thread(target=self._server.serve_forever, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def host(self) -> str:
        return str(cast("tuple[str, int]", self._server.server_address)[0])

    @property
    def port(self) -> int:
        return int(cast("tuple[str, int]", self._server.server_address)[1])


class WebhookServer(_Serving):
    """An incoming webhook on 127.0.0.1: ``url`` takes JSON ``POST`` s; ``received`` has their bodies."""

    def __init__(self, *, status: int = 200) -> None:
        self.status = status
        self.received: list[Any] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                try:
                    owner.received.append(json.loads(body))
                except ValueError:
                    owner.received.append(body.decode("utf-8", "replace"))
                self.send_response(owner.status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "1")
                self.end_headers()
                self.wfile.write(b"1")  # what Teams' incoming webhooks answer

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/webhook"


class SmtpServer(_Serving):
    """An SMTP server on 127.0.0.1 (``host``, ``port``); ``messages`` has each message received, parsed."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        owner = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write(line.encode("ascii") + b"\r\n")
                self.wfile.flush()

            def handle(self) -> None:
                self.reply("220 127.0.0.1 ESMTP test server")
                sender, recipients = "", list[str]()
                while True:
                    raw = self.rfile.readline()
                    if not raw:
                        return
                    command = raw.decode("ascii", "replace").strip()
                    verb = command[:4].upper()
                    if verb in ("EHLO", "HELO"):
                        self.reply("250 127.0.0.1")
                    elif verb == "MAIL":
                        sender, recipients = command.partition(":")[2].strip(" <>"), []
                        self.reply("250 OK")
                    elif verb == "RCPT":
                        recipients.append(command.partition(":")[2].strip(" <>"))
                        self.reply("250 OK")
                    elif verb == "DATA":
                        self.reply("354 End data with <CR><LF>.<CR><LF>")
                        lines = []
                        while (line := self.rfile.readline()) not in (b".\r\n", b".\n", b""):
                            lines.append(line[1:] if line.startswith(b"..") else line)
                        message = email.message_from_bytes(b"".join(lines), policy=email.policy.default)
                        owner.messages.append(message)
                        owner.envelopes.append((sender, recipients))
                        self.reply("250 OK: queued")
                    elif verb in ("RSET", "NOOP"):
                        self.reply("250 OK")
                    elif verb == "QUIT":
                        self.reply("221 Bye")
                        return
                    else:
                        self.reply("502 Command not implemented")

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
