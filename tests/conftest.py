"""Shared test plumbing: the ``slow`` marker, soak budgets, and the reliability figures.

- Tests marked ``slow`` are skipped unless pytest runs with ``--run-slow``
  (``nox -s soak`` does, with ``CALM_SOAK=1``).
- :func:`budget` reads how many cases a fault or fuzz test runs: an explicit
  environment variable wins, else the soak figure when ``CALM_SOAK=1``, else
  the quick figure CI runs.
- The ``figures`` fixture counts the cases each fault or input class ran and
  survived, with the data lost and wrongful removals seen. When
  ``CALM_FIGURES=path.json`` is set, the session writes them there
  (docs/reliability.md is built from that file).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

SOAK = os.environ.get("CALM_SOAK", "") not in ("", "0")


def budget(name: str, quick: int, soak: int) -> int:
    """How many cases to run: ``$name`` if set, else ``soak`` under ``CALM_SOAK=1``, else ``quick``."""
    raw = os.environ.get(name)
    if raw:
        return max(1, int(raw))
    return soak if SOAK else quick


def scaled(name: str, quick: int, soak: int) -> list[Any]:
    """Parameters for a budgeted test: the quick figure CI runs, and the soak figure marked ``slow``.

    ``$name`` overrides both; ``CALM_SOAK=1`` raises the quick one to the soak figure too.
    """
    return [
        pytest.param(budget(name, quick, soak), id="quick"),
        pytest.param(budget(name, soak, soak), id="soak", marks=pytest.mark.slow),
    ]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fault_class(name): the fault or input class a test counts toward")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (nox -s soak)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


class Case:
    """One case of a class: set ``data_lost`` / ``wrongful_removals`` as the checks find them."""

    def __init__(self) -> None:
        self.data_lost = 0
        self.wrongful_removals = 0


class Figures:
    """Cases per fault or input class: ran, survived, data lost, wrongful removals."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def case(self, name: str) -> Iterator[Case]:
        """Count one case of class ``name``; it survived if the block ends without an exception."""
        case = Case()
        survived = False
        try:
            yield case
            survived = case.data_lost == 0 and case.wrongful_removals == 0
        finally:
            with self._lock:
                row = self.rows.setdefault(
                    name, {"cases": 0, "survived": 0, "data_lost": 0, "wrongful_removals": 0, "tests": set()}
                )
                row["cases"] += 1
                row["survived"] += int(survived)
                row["data_lost"] += case.data_lost
                row["wrongful_removals"] += case.wrongful_removals
                if _CURRENT_TEST:
                    row["tests"].add(_CURRENT_TEST[-1])


_FIGURES = Figures()
_CURRENT_TEST: list[str] = []


@pytest.fixture(scope="session")
def figures() -> Figures:
    """The session's reliability figures (session-scoped, so hypothesis tests may use it)."""
    return _FIGURES


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    _CURRENT_TEST.append(item.nodeid.split("[")[0])
    try:
        yield
    finally:
        _CURRENT_TEST.pop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get("CALM_FIGURES")
    if not target or not _FIGURES.rows:
        return
    rows = {
        name: {**row, "tests": sorted(row["tests"])} for name, row in sorted(_FIGURES.rows.items())
    }
    Path(target).write_text(json.dumps({"soak": SOAK, "classes": rows}, indent=2, ensure_ascii=False) + "\n")


# -- servers started by .ci/services.sh ------------------------------------------------------


def _service_url(variable: str, what: str) -> str:
    """The URL in ``$variable``; skip without it, but fail in CI, where .ci/run must have started it."""
    url = os.environ.get(variable)
    if url:
        return url
    message = (
        f"{variable} is not set: no {what} server to test against. "
        'Start the throwaway servers with `eval "$(.ci/services.sh start)"` (see docs/stores.md)'
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; in CI .ci/run starts them, so this is a broken CI set-up")
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A conninfo for the throwaway PostgreSQL server (``$CALM_TEST_POSTGRES``)."""
    pytest.importorskip("psycopg", reason="the postgres extra is not installed (pip install -e '.[postgres]')")
    return _service_url("CALM_TEST_POSTGRES", "PostgreSQL")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A URL for the throwaway Redis server (``$CALM_TEST_REDIS``)."""
    return _service_url("CALM_TEST_REDIS", "Redis")


@pytest.fixture
def postgres_schema(postgres_url: str) -> Iterator[str]:
    """A fresh, empty Postgres schema name for one test; dropped afterwards."""
    import uuid

    import psycopg

    name = f"calm_test_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
