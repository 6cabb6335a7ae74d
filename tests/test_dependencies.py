"""Declared dependencies: sniffio, which httpcore imports on every request.

httpcore asks ``sniffio`` which async library runs, for each connection-pool
lock it takes; without sniffio every request pays failed ``import sniffio``
attempts (a full ``sys.path`` search each: measured 4 per request, about
0.15 ms of CPU each). anyio no longer pulls sniffio in, so the library
declares it.
"""

from __future__ import annotations

import builtins
import importlib.metadata
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from calm_azure_sync import GraphDirectory
from calm_azure_sync.testing import FakeCredential, FakeGraphServer

ROOT = Path(__file__).resolve().parent.parent
USERS = [
    {"id": f"u{n}", "mail": f"u{n}@oak.org", "userPrincipalName": f"u{n}@oak.org", "accountEnabled": True}
    for n in range(200)
]
FIXTURE = {"users": USERS, "groups": [{"id": "g"}], "members": {"g": [user["id"] for user in USERS]}}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower() for requirement in requirements}


def test_sniffio_is_a_declared_and_installed_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    assert "sniffio" in _names(project["dependencies"])
    installed = importlib.metadata.requires("calm-azure-sync") or []
    assert "sniffio" in _names([r for r in installed if "extra ==" not in r])


async def _failed_sniffio_imports(monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """(failed ``import sniffio`` attempts, requests) of one 10-page member read over real HTTP."""
    failed = 0
    real_import = builtins.__import__

    def counting(name: str, *args: Any, **kwargs: Any) -> Any:
        nonlocal failed
        try:
            return real_import(name, *args, **kwargs)
        except ImportError:
            failed += name == "sniffio"
            raise

    with FakeGraphServer(FIXTURE, page_cap=20) as graph:
        async with GraphDirectory.from_credential(FakeCredential(), base_url=graph.base_url) as directory:
            monkeypatch.setattr(builtins, "__import__", counting)
            members = await directory.group_members("g")
            monkeypatch.setattr(builtins, "__import__", real_import)
        assert len(members) == 200
        return failed, len(graph.requests)


@pytest.mark.wire
async def test_no_failed_sniffio_import_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    failed, requests = await _failed_sniffio_imports(monkeypatch)
    assert requests == 10
    assert failed == 0


@pytest.mark.wire
async def test_without_sniffio_every_request_pays_failed_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    # What declaring it saves: with sniffio unimportable, httpcore tries it again on every request.
    monkeypatch.setitem(__import__("sys").modules, "sniffio", None)
    failed, requests = await _failed_sniffio_imports(monkeypatch)
    assert failed >= requests == 10
