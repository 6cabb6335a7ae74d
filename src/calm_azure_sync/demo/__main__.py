"""The demo: ``python -m calm_azure_sync.demo [--out DIR]`` (``nox -s demo``).

Imports the bundled Oak Learning Trust into a SQLite file, the way the
CalmCompliance screen does: auto-detect suggestions, the plan, Start Import,
the Import Log, then Start Import again to show that nothing changes.

``--out`` (default ``demo-output``) must be a new or empty folder, or one an
earlier demo run made (it leaves a ``.calm-azure-sync-demo`` marker file
there). The demo never deletes what it did not create: a re-run replaces
only its own two SQLite files, and a folder holding anything else without
the marker is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

from .. import Actor, AuditKind, ExclusionPolicy, Reconciler, SqliteAuditSink, SqliteUserStore
from ..core.plan import describe_change
from . import load_sample, seed_invited_users

#: The file the demo writes into every folder it uses, so a re-run knows the folder is its own.
MARKER = ".calm-azure-sync-demo"
_DATABASES = ("calm.sqlite", "import-log.sqlite")
# SQLite's side files: a stale -wal next to a fresh database would be replayed into it.
_SIDE_FILES = ("", "-wal", "-shm", "-journal")


def prepare_output(out: Path) -> str | None:
    """Make ``out`` ready for a demo run, or say why not (``None``: ready).

    A missing folder is made and an empty one taken; either gets the marker.
    A folder with the marker gets its old demo databases removed, and
    nothing else. Anything else is refused.
    """
    if out.exists() and not out.is_dir():
        return f"--out {out}: is a file, not a folder"
    if out.is_dir() and not (out / MARKER).is_file() and any(out.iterdir()):
        return (
            f"--out {out}: the folder is not empty and was not made by the demo "
            f"(no {MARKER} file); pick a new or empty folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(
        "Written by python -m calm_azure_sync.demo: a re-run may replace its databases here.\n", "utf-8"
    )
    for database in _DATABASES:
        for suffix in _SIDE_FILES:
            (out / (database + suffix)).unlink(missing_ok=True)
    return None


def _heading(text: str) -> None:
    print(f"\n== {text} " + "=" * max(0, 70 - len(text)))


async def main(out: Path) -> int:
    """Run the demo into ``out`` (prepared by :func:`prepare_output`); 0 when every run was clean."""
    store = SqliteUserStore(out / _DATABASES[0])
    audit = SqliteAuditSink(out / _DATABASES[1])
    try:
        return await _story(out, store, audit)
    finally:
        store.close()
        audit.close()


async def _story(out: Path, store: SqliteUserStore, audit: SqliteAuditSink) -> int:
    sample = load_sample()
    await seed_invited_users(store, sample)
    reconciler = Reconciler(sample.directory, store, audit, sample.hierarchy)
    admin = Actor("head-of-it", {"oak-trust"})
    config = sample.config

    _heading("Discovery: Azure groups for the Group Mapping tab")
    for group in await reconciler.discover("oak-trust", actor=admin):
        print(f"  {group.display_name:28} {group.id}")

    _heading("Exclusions tab: auto-detect suggestions")
    by_pattern: dict[str, list[str]] = {}
    for suggestion in await reconciler.suggest_exclusions(config, actor=admin):
        by_pattern.setdefault(suggestion.pattern, []).append(suggestion.reasons[0])
    for pattern, reasons in by_pattern.items():
        print(f"  {pattern:28} {len(reasons)} account(s): {reasons[0]}")
    # The admin accepts every suggestion.
    config = attrs.evolve(
        config, exclusions=ExclusionPolicy([*config.exclusions.patterns, *by_pattern], config.exclusions.user_ids)
    )
    print(f"  -> exclusion patterns now: {', '.join(config.exclusions.patterns)}")

    _heading("Plan (nothing written yet)")
    plan = await reconciler.plan(config, actor=admin)
    print(" ", repr(plan))
    for change in plan.changes[:8]:
        print("   ", " | ".join(str(cell) for cell in describe_change(change, plan) if cell))
    print(f"    … {len(plan.changes) - 8} more")
    for skip in plan.skipped[:6]:
        print(f"    {skip.category} {skip.email or skip.external_id}: {skip.reason}")

    _heading("Start Import")
    started = time.perf_counter()
    report = await reconciler.run(config, actor=admin)
    print(textwrap.indent(str(report), "  "))
    print(f"  ({time.perf_counter() - started:.2f}s, store: {out / 'calm.sqlite'})")

    invited = sample.invited[0]["email"]
    user = next(u for u in (await store.load("oak-trust")).users.values() if u.email.lower() == invited.lower())
    print(f"\n  Invited by hand, then linked (not duplicated): {user.email} -> Azure {user.external_id}")
    for grant in sorted(await store.grants(user.user_id), key=lambda g: (g.site_id, g.module, g.source)):
        print(f"    {grant.source:6} {grant.role.value:8} {grant.module} at {grant.site_id}")

    _heading("Import Log (newest first; assignments left out here)")
    kinds = [kind for kind in AuditKind if not kind.value.startswith("assignment_")]
    for event in await audit.query("oak-trust", run_id=report.run_id, kinds=kinds, limit=12):
        print(f"  {event.at:%H:%M:%S} {event.kind.value:18} {event.message}")

    _heading("Meanwhile in Azure: a teacher joins the SLT, another leaves")
    directory = sample.directory
    teacher, leaver = directory.members["grp-birch-high-teachers"][1:3]
    directory.members["grp-birch-high-slt"] += (teacher,)
    directory.users[leaver] = attrs.evolve(directory.users[leaver], account_enabled=False)
    refresh = await reconciler.run(config, actor=admin)
    print(textwrap.indent(str(refresh), "  "))
    for event in await audit.query("oak-trust", run_id=refresh.run_id, limit=10):
        if event.kind not in {AuditKind.DISCOVERY, AuditKind.USER_SKIPPED, AuditKind.USER_EXCLUDED}:
            print(f"  {event.kind.value:18} {event.message}")

    _heading("Start Import again: nothing changed in Azure, so nothing changes")
    again = await reconciler.run(config, actor=admin)
    print(textwrap.indent(str(again), "  "))
    changed = sum(count for kind, count in again.counts.items() if kind not in {"skipped", "excluded"})
    return 0 if report.ok and refresh.ok and again.ok and changed == 0 else 1


def cli(argv: Sequence[str] | None = None) -> int:
    """The command line: parse ``argv``, prepare ``--out``, run the demo; the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="where to write the SQLite files")
    out = parser.parse_args(argv).out
    problem = prepare_output(out)
    if problem is not None:
        print(f"calm_azure_sync.demo: {problem}", file=sys.stderr)
        return 2
    return asyncio.run(main(out))


if __name__ == "__main__":
    raise SystemExit(cli())
