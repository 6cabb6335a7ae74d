"""A configuration checked against the live directory, for the Group Mapping screen. Pure.

:meth:`Reconciler.check <calm_azure_sync.Reconciler.check>` gathers the facts
(the directory's groups, the mapped groups' member counts, which groups the
sync has read before) and :func:`config_problems` turns them into a list of
:class:`ConfigProblem`, each with the path of the mapping it is about. A typo'd
group id ("never existed", with the closest names) is told apart from a group
that existed and was deleted (a stale mapping).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import attrs

from ..model import DirectoryGroup
from .config import SyncConfig

__all__ = ["ConfigProblem", "ProblemKind", "config_problems"]

ProblemKind = Literal["invalid", "unknown_group", "stale_group", "empty_group"]


@attrs.frozen
class ConfigProblem:
    """One thing wrong with a configuration, as the settings screen shows it.

    ``path`` is where (``mappings[2].group_id``); ``kind`` one of ``invalid``
    (the configuration itself: a site outside the trust, an unknown module, a
    duplicate), ``unknown_group`` (no such group, and the sync never saw one:
    a typo), ``stale_group`` (the group existed and is gone from Azure) or
    ``empty_group`` (it exists but has no user members). ``suggestions`` holds
    the closest groups for an unknown id, as ``"Display Name (id)"``.
    """

    path: str
    kind: ProblemKind
    message: str
    group_id: str | None = None
    suggestions: tuple[str, ...] = ()


def _label(group: DirectoryGroup) -> str:
    return f"{group.display_name or group.id} ({group.id})"


def _closest(group_id: str, groups: Sequence[DirectoryGroup], limit: int = 3) -> tuple[str, ...]:
    """The groups whose id or display name is closest to ``group_id``."""
    by_key: dict[str, DirectoryGroup] = {}
    for group in groups:
        by_key.setdefault(group.id.lower(), group)
        if group.display_name:
            by_key.setdefault(group.display_name.lower(), group)
    found: list[str] = []
    for key in difflib.get_close_matches(group_id.lower(), list(by_key), n=limit * 2, cutoff=0.5):
        label = _label(by_key[key])
        if label not in found:
            found.append(label)
    return tuple(found[:limit])


def config_problems(
    config: SyncConfig,
    *,
    invalid: Iterable[str],
    groups: Sequence[DirectoryGroup],
    member_counts: Mapping[str, int],
    seen_before: Iterable[str],
) -> list[ConfigProblem]:
    """Every problem of ``config`` given what the directory holds.

    ``invalid``: the problems :meth:`SyncConfig.validate` found (each starts
    with its path); ``groups``: every group of the directory; ``member_counts``:
    user members of each mapped group that exists; ``seen_before``: group ids
    the sync has read or mirrored for this trust before (a missing one is stale).
    """
    problems = [
        ConfigProblem(path=problem.split(":", 1)[0], kind="invalid", message=problem) for problem in invalid
    ]
    known = {group.id.lower(): group for group in groups}
    seen = {group_id.lower() for group_id in seen_before}
    reported: set[str] = set()
    for index, mapping in enumerate(config.mappings.mappings):
        group_id = mapping.group_id
        path = f"mappings[{index}].group_id"
        if group_id in reported:
            continue
        reported.add(group_id)
        group = known.get(group_id.lower())
        if group is None and group_id.lower() in seen:
            problems.append(ConfigProblem(
                path, "stale_group",
                f"{path}: group {group_id!r} no longer exists in Azure (it was synced before); "
                "remove the mapping or map the group that replaced it",
                group_id,
            ))
        elif group is None:
            suggestions = _closest(group_id, groups)
            hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
            problems.append(ConfigProblem(
                path, "unknown_group", f"{path}: no group {group_id!r} in this directory{hint}", group_id, suggestions
            ))
        elif member_counts.get(group.id) == 0:
            problems.append(ConfigProblem(
                path, "empty_group",
                f"{path}: group {_label(group)} has no user members, so this mapping gives nobody access",
                group_id,
            ))
    return problems
