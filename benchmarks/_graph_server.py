"""The fake Graph server in its own process, so its CPU is not the client's.

``GraphServerProcess(users=..., groups=...)`` starts ``python -m
benchmarks._graph_server``, which serves the synthetic tenant
``generate_tenant(users, groups, seed=seed)`` (the client regenerates the
same tenant for its configuration) and takes one JSON command per stdin
line: ``stats``, ``clear``, ``latency``, ``throttle`` and ``quit``.

Latency is drawn per request, uniformly between ``latency_low`` and
``latency_high`` seconds: the server's ``latency`` attribute is read once
per request, so a subclass answers it with a fresh draw.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import subprocess
import sys
import threading
from collections import Counter
from types import TracebackType
from typing import Any

from benchmarks._common import child_env

__all__ = ["GraphServerProcess"]


class GraphServerProcess:
    """A fake Graph server process serving a synthetic tenant; a context manager."""

    def __init__(
        self,
        *,
        users: int,
        groups: int,
        latency_low: float = 0.0,
        latency_high: float = 0.0,
        seed: int = 1,
    ) -> None:
        self.command = [
            sys.executable, "-m", "benchmarks._graph_server", "--users", str(users), "--groups", str(groups),
            "--latency-low", str(latency_low), "--latency-high", str(latency_high), "--seed", str(seed),
        ]  # fmt: skip
        self._process: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> GraphServerProcess:
        self._process = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env()
        )
        self.base_url = self._read()["base_url"]
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        process = self._process
        if process is None:
            return
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            self.call("quit")
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def call(self, op: str, **arguments: Any) -> dict[str, Any]:
        """Send one command and return the server's JSON answer."""
        assert self._process is not None
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        self._process.stdin.flush()
        return self._read()

    def _read(self) -> dict[str, Any]:
        assert self._process is not None
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fake Graph server process exited ({self._process.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer


# -- the server process ------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> None:
    from calm_azure_sync.testing.fake_graph import FakeGraphServer, Fault
    from calm_azure_sync.testing.synthetic import generate_tenant

    latency_range = [args.latency_low, args.latency_high]
    draw = random.Random(args.seed).uniform
    draw_lock = threading.Lock()

    class JitteredServer(FakeGraphServer):
        @property  # type: ignore[override]
        def latency(self) -> float:
            low, high = latency_range
            if high <= 0:
                return 0.0
            with draw_lock:
                return draw(low, high)

        @latency.setter
        def latency(self, value: float) -> None:
            pass  # the range above is the latency

    tenant = generate_tenant(users=args.users, groups=args.groups, seed=args.seed)
    with JitteredServer(tenant.fixture) as server:
        print(json.dumps({"base_url": server.base_url}), flush=True)
        for line in sys.stdin:
            command = json.loads(line)
            op = command.pop("op")
            if op == "quit":
                print(json.dumps({"ok": True}), flush=True)
                return
            if op == "clear":
                server.clear_log()
                server.clear_faults()
                answer: dict[str, Any] = {"ok": True}
            elif op == "latency":
                latency_range[:] = [float(command["low"]), float(command["high"])]
                answer = {"ok": True}
            elif op == "throttle":
                # One 429 (with a fractional Retry-After) every `every` matching requests.
                every, count = int(command["every"]), int(command["count"])
                for index in range(1, count + 1):
                    server.inject(
                        Fault.throttle(retry_after=str(command["retry_after"])),
                        path=command.get("path"),
                        skip=index * every,
                    )
                answer = {"ok": True}
            elif op == "stats":
                log = server.requests
                answer = {
                    "requests": len(log),
                    "resource_units": sum(record.resource_units for record in log),
                    "statuses": dict(Counter(str(record.status) for record in log)),
                    "next_pages": sum(1 for record in log if record.is_next_page),
                    "peak_concurrency": server.peak_concurrency,
                    "pending_faults": server.pending_faults,
                }
            else:
                answer = {"error": f"unknown op {op!r}"}
            print(json.dumps(answer), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--groups", type=int, required=True)
    parser.add_argument("--latency-low", type=float, default=0.0)
    parser.add_argument("--latency-high", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    _serve(parser.parse_args(argv))


if __name__ == "__main__":
    main()
