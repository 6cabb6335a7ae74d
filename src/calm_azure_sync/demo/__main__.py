"""The demo: ``python -m calm_azure_sync.demo [--out DIR]`` (``nox -s demo``).

Imports the bundled Oak Learning Trust into a SQLite file, the way the
CalmCompliance screen does: auto-detect suggestions, the plan, Start Import,
the Import Log, then Start Import again to show that nothing changes.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import textwrap
import time
from pathlib import Path

import attrs

from .. import Actor, AuditKind, ExclusionPolicy, Reconciler, SqliteAuditSink, SqliteUserStore
from ..plan import describe_change
from . import load_sample, seed_invited_users


def _heading(text: str) -> None:
    print(f"\n== {text} " + "=" * max(0, 70 - len(text)))


async def main(out: Path) -> int:
    sample = load_sample()
    store = SqliteUserStore(out / "calm.sqlite")
    audit = SqliteAuditSink(out / "import-log.sqlite")
    await seed_invited_users(store, sample)
    reconciler = Reconciler(sample.directory, store, audit, sample.hierarchy)
    admin = Actor("head-of-it", {"oak-trust"})
    config = sample.config

    _heading("Discovery: Azure groups for the Group Mapping tab")
    for group in await reconciler.discover("oak-trust", admin):
        print(f"  {group.display_name:28} {group.id}")

    _heading("Exclusions tab: auto-detect suggestions")
    by_pattern: dict[str, list[str]] = {}
    for suggestion in await reconciler.suggest_exclusions(config):
        by_pattern.setdefault(suggestion.pattern, []).append(suggestion.reasons[0])
    for pattern, reasons in by_pattern.items():
        print(f"  {pattern:28} {len(reasons)} account(s): {reasons[0]}")
    # The admin accepts every suggestion.
    config = attrs.evolve(
        config, exclusions=ExclusionPolicy([*config.exclusions.patterns, *by_pattern], config.exclusions.user_ids)
    )
    print(f"  -> exclusion patterns now: {', '.join(config.exclusions.patterns)}")

    _heading("Plan (nothing written yet)")
    plan = await reconciler.plan(config)
    print(" ", repr(plan))
    for change in plan.changes[:8]:
        print("   ", " | ".join(str(cell) for cell in describe_change(change, plan) if cell))
    print(f"    … {len(plan.changes) - 8} more")
    for skip in plan.skipped[:6]:
        print(f"    skipped {skip.email or skip.external_id}: {skip.reason}")

    _heading("Start Import")
    started = time.perf_counter()
    report = await reconciler.run(config, admin)
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
    refresh = await reconciler.run(config, admin)
    print(textwrap.indent(str(refresh), "  "))
    for event in await audit.query("oak-trust", run_id=refresh.run_id, limit=10):
        if event.kind not in {AuditKind.DISCOVERY, AuditKind.USER_SKIPPED, AuditKind.USER_EXCLUDED}:
            print(f"  {event.kind.value:18} {event.message}")

    _heading("Start Import again: nothing changed in Azure, so nothing changes")
    again = await reconciler.run(config, admin)
    print(textwrap.indent(str(again), "  "))
    changed = sum(count for kind, count in again.counts.items() if kind not in {"skipped", "excluded"})
    return 0 if report.ok and refresh.ok and again.ok and changed == 0 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="where to write the SQLite files")
    out = parser.parse_args().out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    raise SystemExit(asyncio.run(main(out)))
