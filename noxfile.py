"""Development sessions: ``nox -s demo``, ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``…"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = ["3.11", "3.12", "3.13"]



@nox.session
def demo(session: nox.Session) -> None:
    """Run the demo import of the bundled sample trust into a SQLite file."""
    session.install("-e", ".")
    session.run("python", "-m", "calm_azure_sync.demo", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (quick budgets of the fuzz and crash tests included).

    The Postgres and Celery tests need the servers of ``.ci/services.sh start``
    (``CALM_TEST_POSTGRES``, ``CALM_TEST_REDIS``); without them they skip.
    """
    session.install("-e", ".[test,postgres,celery]")
    session.run("pytest", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """Run the long variants: many SIGKILLs, big hypothesis budgets (Postgres and Celery ones too)."""
    session.install("-e", ".[test,postgres,celery]")
    session.run("pytest", "-m", "slow", "--run-slow", *session.posargs, env={"CALM_SOAK": "1"})


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and common mistakes with ruff."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "tools", "examples/celery", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """Type-check the package with mypy --strict."""
    session.install("-e", ".[test,postgres]", "mypy")
    session.run("mypy", "--strict")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the benchmarks (--smoke for a quick check, --only NAME for one)."""
    session.install("-e", ".[test,postgres,celery]", "httpx")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def notebook(session: nox.Session) -> None:
    """Execute examples/first_sync.ipynb, render it in headless Chromium and check the page.

    Needs Chromium (Debian: ``apt-get install chromium``; or ``$CHROMIUM``).
    ``-- --screenshot docs/img/first-sync-notebook.png`` refreshes the picture in
    docs/getting-started.md; ``-- --out DIR`` keeps the page and screenshot there.
    """
    session.install("-e", ".[test]")
    session.run("python", "-m", "tests.notebook_render", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site with warnings as errors."""
    session.install(".", "mkdocs>=1.6,<2", "mkdocstrings[python]>=1.0", "ruff")
    session.run("mkdocs", "build", "--strict", *session.posargs)
