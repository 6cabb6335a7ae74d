"""Which groups hold a user or group, directly or through nesting: one walk for every directory double.

``InMemoryDirectory`` (``group_parents``, ``user_groups``) and the fake Graph
server (``memberOf``, ``transitiveMemberOf``) answer the same question over
the same shape of data, a members table, so they share this walk.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

__all__ = ["groups_holding"]


def groups_holding(
    members: Mapping[str, Iterable[str]], known_groups: Collection[str], object_id: str, *, transitive: bool
) -> list[str]:
    """The groups whose members include ``object_id``, nearest first, each once.

    With ``transitive`` the walk goes on breadth first through the groups
    holding those groups (Graph's ``transitiveMemberOf``); a cycle of nested
    groups ends the walk rather than looping. Groups not in ``known_groups``
    (deleted, or never created) are skipped.
    """
    parents: dict[str, list[str]] = {}
    for group_id, member_ids in members.items():
        for member_id in member_ids:
            parents.setdefault(member_id, []).append(group_id)
    found: list[str] = []
    seen = {object_id}
    pending = [object_id]
    while pending:
        following: list[str] = []
        for current in pending:
            for parent in parents.get(current, ()):
                if parent in seen or parent not in known_groups:
                    continue
                seen.add(parent)
                found.append(parent)
                following.append(parent)
        if not transitive:
            break
        pending = following
    return found
