"""The Celery example runs from its documented install, and its worker logs what it should.

- The ``celery`` extra with the ``postgres`` extra and the core dependencies
  covers every module ``examples/celery`` imports (kombu's Redis transport
  imports ``packaging`` without declaring it), judged from the installed
  distributions' own metadata.
- ``examples/celery/smoke.py`` (what CI runs in a fresh virtual environment)
  runs here in the test environment: a worker, two tasks, their results, and
  a worker log with one INFO line per task and no delta or skip token.
- Its log check fails on a log that leaks a token or misses a task line.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "celery"


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-") for requirement in requirements}


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    extras = project["optional-dependencies"]
    return _requirement_names(project["dependencies"] + extras["celery"] + extras["postgres"])


def _closure(names: set[str]) -> set[str]:
    """The distributions ``names`` pull in, following each installed one's own requirements (extras aside)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo.extend(_requirement_names([r for r in requires if "extra ==" not in r]))
    return seen


def test_the_celery_extra_declares_what_the_example_and_kombus_redis_transport_import() -> None:
    pytest.importorskip("celery")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["optional-dependencies"]
    assert {"celery", "redis", "packaging"} <= _requirement_names(extras["celery"])
    imported: set[str] = {"kombu.transport.redis"}  # the broker transport the worker loads at start
    for path in EXAMPLE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module)
    import kombu.transport.redis as redis_transport

    for node in ast.walk(ast.parse(Path(redis_transport.__file__).read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    providers = importlib.metadata.packages_distributions()
    available = _closure(_declared() | {"calm-azure-sync"})
    missing = {}
    for module in sorted(imported):
        top = module.split(".")[0]
        if top in sys.stdlib_module_names or top in ("calm_worker", "calm_azure_sync"):
            continue
        distributions = {d.lower().replace("_", "-") for d in providers.get(top, [])}
        if distributions and not distributions & available:
            missing[module] = sorted(distributions)
    assert not missing, f"imported by examples/celery but not installed by '.[celery,postgres]': {missing}"


@pytest.mark.wire
def test_the_smoke_run_ci_makes_in_a_fresh_environment_passes_here(postgres_url: str, redis_url: str) -> None:
    pytest.importorskip("celery")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    finished = subprocess.run(
        [sys.executable, str(EXAMPLE / "smoke.py"), "--postgres", postgres_url, "--redis", redis_url, "--budget", "90"],
        capture_output=True, text=True, timeout=150, env=env, check=False,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-6000:]
    lines = [line for line in finished.stdout.splitlines() if "imported oak-trust: run " in line]
    assert len(lines) == 2, finished.stdout
    assert ", full, " in lines[0] and "create_user=" in lines[0] and re.search(r", in [\d.]+ s$", lines[0])
    assert ", incremental, " in lines[1]


def _smoke_module():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(EXAMPLE))
    try:
        import smoke
    finally:
        sys.path.remove(str(EXAMPLE))
    return smoke


RESULT = {"run_id": "r1", "mode": "full", "counts": {"create_user": 3}, "trust_site_id": "oak-trust", "ok": True}
GOOD = "[2026-12-07 05:45:13,817: INFO/MainProcess] imported oak-trust: run r1, full, create_user=3, in 0.97 s\n"


@pytest.mark.parametrize(
    ("log", "complaint"),
    [
        (GOOD + "INFO HTTP Request: GET http://127.0.0.1:1/v1.0/users/delta?$deltatoken=abc\n", "delta or skip"),
        (GOOD + "INFO HTTP Request: GET http://127.0.0.1:1/v1.0/groups?$skiptoken=abc\n", "delta or skip"),
        ("[INFO] nothing of the library\n", "one INFO line per task"),
        (GOOD.replace("create_user=3", "create_user=4"), "counts"),
        (GOOD.replace(", full,", ", incremental,"), "trust and mode"),
    ],
)
def test_the_smoke_log_check_fails_on_a_leak_or_a_missing_task_line(log: str, complaint: str) -> None:
    smoke = _smoke_module()
    assert smoke.check_log(GOOD, [RESULT]) == [GOOD.strip()]
    with pytest.raises(smoke.SmokeFailure, match=complaint):
        smoke.check_log(log, [RESULT])
