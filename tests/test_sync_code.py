"""docs/sync-code.md: the async API from synchronous code, each documented path run.

The page's blocks are taken from the page itself and run in order: the
shared part (``run_sync`` and ``start_import``), then the Django view, the
Flask handler and the Celery task. Django and Flask are not dependencies, so
their few names come from small stand-ins put in ``sys.modules`` (the code
path under test is the page's own); Celery runs for real, in eager mode.
``run_sync`` is checked on its own too: without a loop, inside a running
loop, from many threads at once, and that errors come through.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from calm_azure_sync import CalmAzureSyncError, NotAuthorizedError

from .test_docs import ROOT, _close_loop, _new_loop, python_blocks, run_source

PAGE = ROOT / "docs" / "sync-code.md"


def _block(containing: str) -> str:
    return next(block.code for block in python_blocks(PAGE) if containing in block.code)


@pytest.fixture
def page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The namespace after the page's shared part, run as a script would (no loop running)."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    loop = _new_loop()
    try:
        run_source(_block("def run_sync("), namespace, loop, str(PAGE), 1)
    finally:
        _close_loop(loop)
    assert namespace["result"]["ok"] and namespace["result"]["counts"]["create_user"] == 322
    for leftover in tmp_path.glob("calm.sqlite*"):  # each path below starts from an empty store
        leftover.unlink()
    return namespace


def _stand_in(monkeypatch: pytest.MonkeyPatch, name: str, **attributes: Any) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    monkeypatch.setitem(sys.modules, name, module)


class _JsonResponse:
    def __init__(self, data: dict[str, Any], status: int = 200) -> None:
        self.data, self.status_code = data, status


def _require_post(view: Any) -> Any:
    def checked(request: Any, *args: Any, **kwargs: Any) -> Any:
        assert request.method == "POST", "require_POST"
        return view(request, *args, **kwargs)

    return checked


def test_the_shared_part_imports_and_a_rerun_inside_a_loop_creates_nobody(page: dict[str, Any]) -> None:
    for expected in (322, 0):  # the fixture emptied the store; then a re-run creates nobody
        loop = _new_loop()
        try:
            run_source(_block("async def an_async_caller("), page, loop, str(PAGE), 1)
        finally:
            _close_loop(loop)
        assert page["again"]["ok"] and page["again"]["counts"]["create_user"] == expected


def test_django_view(page: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("django", "django.views", "django.views.decorators"):
        _stand_in(monkeypatch, name)
    _stand_in(monkeypatch, "django.http", JsonResponse=_JsonResponse)
    _stand_in(monkeypatch, "django.views.decorators.http", require_POST=_require_post)
    exec(compile(_block("def start_import_view("), str(PAGE), "exec"), page)
    view = page["start_import_view"]
    request = types.SimpleNamespace(method="POST", user=types.SimpleNamespace(pk=42))
    # A WSGI server calls views from its worker threads, where no event loop runs.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as server_thread:
        response = server_thread.submit(view, request, "oak-trust").result(timeout=120)
    assert response.status_code == 200 and response.data["ok"], response.data
    assert response.data["counts"]["create_user"] == 322
    page["admin_sites_of"] = lambda user: set()  # not an Admin of the trust now
    refused = view(request, "oak-trust")
    assert refused.status_code == 403 and "Admin" in refused.data["error"]


def test_django_view_says_409_when_an_import_of_the_trust_runs(page: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("django", "django.views", "django.views.decorators"):
        _stand_in(monkeypatch, name)
    _stand_in(monkeypatch, "django.http", JsonResponse=_JsonResponse)
    _stand_in(monkeypatch, "django.views.decorators.http", require_POST=_require_post)
    exec(compile(_block("def start_import_view("), str(PAGE), "exec"), page)
    from calm_azure_sync import SqliteUserStore

    request = types.SimpleNamespace(method="POST", user=types.SimpleNamespace(pk=42))

    async def while_locked() -> Any:
        async with SqliteUserStore("calm.sqlite") as holder, holder.run_lock("oak-trust"):
            return page["start_import_view"](request, "oak-trust")  # sync code inside a running loop

    response = asyncio.run(while_locked())
    assert response.status_code == 409, response.data


def test_flask_handler(page: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    routes: dict[str, Any] = {}

    class Flask:
        def __init__(self, name: str) -> None:
            self.name = name

        def post(self, rule: str) -> Any:
            def register(view: Any) -> Any:
                routes[rule] = view
                return view

            return register

    _stand_in(monkeypatch, "flask", Flask=Flask, jsonify=lambda data: dict(data))
    exec(compile(_block("def start_import_route("), str(PAGE), "exec"), page)
    body, status = routes["/trusts/<trust_id>/import"]("oak-trust")
    assert status == 200 and body["ok"] and body["counts"]["create_user"] == 322


def test_celery_task_in_eager_mode(page: dict[str, Any]) -> None:
    pytest.importorskip("celery", reason="the celery extra is not installed")
    exec(compile(_block("def import_trust_task("), str(PAGE), "exec"), page)
    page["celery_app"].conf.task_always_eager = True  # run in this process: no broker needed
    result = page["import_trust_task"].delay("oak-trust").get(timeout=120)
    assert result["ok"] and result["counts"]["create_user"] == 322


def test_run_sync_without_a_loop_inside_a_loop_and_from_threads(page: dict[str, Any]) -> None:
    run_sync = page["run_sync"]

    async def answer(value: int) -> int:
        await asyncio.sleep(0)
        return value

    assert run_sync(answer(1)) == 1

    async def from_inside_a_running_loop() -> int:
        return int(run_sync(answer(2)))

    assert asyncio.run(from_inside_a_running_loop()) == 2
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as threads:
        assert sorted(threads.map(lambda n: run_sync(answer(n)), range(8))) == list(range(8))


def test_run_sync_passes_errors_through(page: dict[str, Any]) -> None:
    from calm_azure_sync import Actor

    with pytest.raises(NotAuthorizedError):
        page["run_sync"](page["start_import"]("oak-trust", Actor("nobody", set())))
    assert issubclass(NotAuthorizedError, CalmAzureSyncError)


def test_asgiref_async_to_sync_is_the_same_job() -> None:
    asgiref_sync = pytest.importorskip("asgiref.sync", reason="asgiref (Django's) is not installed")

    async def answer() -> int:
        return 3

    assert asgiref_sync.async_to_sync(answer)() == 3
