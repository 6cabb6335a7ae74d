"""A fake Microsoft Graph v1.0 server for integration tests (public test helper).

:class:`FakeGraphServer` serves the same fixture format as
:meth:`~calm_azure_sync.InMemoryDirectory.from_dict` over real HTTP on
``127.0.0.1`` (an ephemeral port, standard library only), shaped the way
Graph documents its directory endpoints, so a host can run
:class:`~calm_azure_sync.GraphDirectory` -- or its own Graph code -- against
it::

    from calm_azure_sync.testing.fake_graph import Fault, FakeGraphServer

    with FakeGraphServer(fixture, page_cap=50) as graph:
        graph.inject(Fault.throttle(retry_after="2.128"), path="/groups/*")
        directory = GraphDirectory.from_credential(FakeCredential(), base_url=graph.base_url)
        ...
        assert graph.requests[0].resource_units == 4

What it models (each from the Graph documentation):

- ``GET /groups``, ``/groups/{id}``, ``/groups/{id}/members``,
  ``/groups/{id}/transitiveMembers`` and their user casts
  (``.../microsoft.graph.user``, or ``.../graph.user`` as the SDK spells it),
  ``/users`` and ``/users/{id}``; ``POST /$batch`` (at most 20 requests);
  ``/groups/delta`` and ``/users/delta`` (see
  :mod:`~calm_azure_sync.testing._graph_delta`: ``members@delta``,
  ``@removed``, split groups, replays, ``$deltatoken=latest``, 410).
- ``@odata.context``; ``@odata.type`` on the items of uncast member lists;
  ``@odata.count`` on the first page only, when asked for properly.
- paging: ``$top`` (default 100, at most 999, more is a 400), a server page
  cap (``page_cap``) and opaque ``$skiptoken`` next links over a snapshot
  taken at the first page (a next link may be followed again, e.g. after a
  connection reset; the oldest of 10,000 live cursors expire).
- ``$search="displayName:words"`` on ``/groups`` (Graph's tokenized match;
  400 ``Request_UnsupportedQuery`` without ``ConsistencyLevel: eventual``)
  and the ``/$count`` segment on member lists (text/plain; 400
  ``Request_BadRequest`` without the header), as documented.
- ``$select`` (selected properties are returned, ``null`` when unset;
  without ``$select`` users carry only Graph's default properties).
- the advanced-query rule: an OData cast needs ``ConsistencyLevel:
  eventual`` *and* ``$count=true`` on every page (else 400
  ``Request_UnsupportedQuery``); ``$count=true`` without the header is
  silently ignored.
- a Bearer token is required (401 ``InvalidAuthenticationToken``
  otherwise); ``granted_permissions`` turns on 403s for calls the app has
  no permission for, and without a user permission serves member users in
  the "limited information" shape (id and ``@odata.type``, all else
  ``null``). The token itself is never stored or logged.
- errors in Graph's ``{"error": {"code", "message", "innerError"}}`` shape,
  with a ``request-id`` header.
- injected faults (:class:`Fault`): 429 with a (fractional) Retry-After,
  503, 504, 401, 403, latency, a connection reset, a truncated body, a body
  that is not JSON, and a rewrite of the real answer's JSON body (for
  hostile-input tests: duplicate ids across pages, a foreign next link…);
  queued for the next matching requests (``inject``), or a storm
  (``storm(faults, rate=0.3)`` until ``calm()``) that fails a random share of
  requests with a random one of them; ``faults_fired`` counts both.
- a request log (:attr:`FakeGraphServer.requests`) with the resource-unit
  cost Graph documents for identity calls: ``users`` 2, ``members`` 3,
  ``transitiveMembers`` 5, any other GET 1; one less with ``$select``, one
  less with ``$top`` under 20, one more with ``$expand``; at least 1.

The model (:class:`FakeGraph`, no IO) also runs without a socket:
``FakeGraph.transport()`` is an ``httpx.MockTransport`` over it.

The fixture is mutable between (and during) runs: :meth:`FakeGraphServer.load`
replaces it, :meth:`FakeGraphServer.add_user` and friends change it in place.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import struct
import sys
import threading
from types import TracebackType
from typing import Any

from ._graph_model import FakeGraph, render
from ._graph_shapes import Fault, RecordedRequest, Reply, resource_units

__all__ = ["FakeGraph", "Fault", "FakeGraphServer", "RecordedRequest", "resource_units"]


class FakeGraphServer(FakeGraph):
    """A Graph-shaped HTTP server on ``127.0.0.1`` serving a directory fixture.

    Everything but the wire is :class:`~calm_azure_sync.testing._graph_model.FakeGraph`
    (same constructor, fixture methods, faults and request log); this class
    adds the socket server. ``latency`` delays every answer (a round-trip
    time). Use as a context manager (or :meth:`start` / :meth:`stop`); it
    stops its thread and closes every connection on exit.
    """

    _httpd: _HTTPServer | None = None
    _thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> FakeGraphServer:
        """Bind an ephemeral port on 127.0.0.1 and serve in a daemon thread."""
        if self._httpd is not None:
            return self
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.fake = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-graph", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every open connection and the listening socket."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd = self._thread = None
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FakeGraphServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self._httpd is not None else "stopped"
        return f"FakeGraphServer({where}, users={len(self._users)}, groups={len(self._groups)})"

    @property
    def port(self) -> int:
        """The port the server listens on (it must be started)."""
        if self._httpd is None:
            raise RuntimeError("the fake Graph server is not running")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """The Graph root to configure clients with: ``http://127.0.0.1:PORT/v1.0``."""
        return f"http://127.0.0.1:{self.port}/v1.0"

    def _root(self) -> str:
        # Read once: a slow answer may still be written while the server stops.
        httpd = self._httpd
        if httpd is None:
            return self.root
        return f"http://127.0.0.1:{httpd.server_address[1]}/v1.0"


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # socketserver's default backlog of 5 drops the SYNs of a concurrent client's
    # sixth connection, which then waits a full second for the retransmit.
    request_queue_size = 128
    fake: FakeGraphServer

    def __init__(self, address: tuple[str, int], handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A keep-alive client that hangs up is normal, not worth a traceback.
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            open_sockets = list(self._connections)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Graph clients pool connections
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server: _HTTPServer
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        # Silence the default stderr access log; the request log is the record.
        return

    def do_GET(self) -> None:
        self._serve(b"")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._serve(self.rfile.read(length) if length else b"")

    def do_PATCH(self) -> None:
        self._serve(b"")

    do_PUT = do_DELETE = do_PATCH

    def _serve(self, body: bytes) -> None:
        self._write(self.server.fake.serve(self.command, self.path, dict(self.headers.items()), body))

    def _write(self, reply: Reply) -> None:
        if reply.wire_fault == "reset":
            self.close_connection = True
            with contextlib.suppress(OSError):
                # SO_LINGER 0: the client sees a reset, not a clean close.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        status, payload, headers = render(reply)
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        if reply.wire_fault == "truncated":
            self.send_header("Connection", "close")
            self.close_connection = True
            payload = payload[: len(payload) // 2]
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(payload)
