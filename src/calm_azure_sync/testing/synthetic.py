"""Synthetic tenants: Graph-shaped fixtures of any size, deterministic by seed.

Used by the demo, the benchmarks and the tests. The fixture is the format of
:meth:`calm_azure_sync.InMemoryDirectory.from_dict` (and of the fake Graph
server): ``{"users": [...], "groups": [...], "members": {...}}``.
"""

from __future__ import annotations

import random
from typing import Any

import attrs

from ..config import SyncConfig
from ..hierarchy import TrustHierarchy
from ..mapping import GroupMapping
from ..model import Site

__all__ = ["SyntheticTenant", "generate_tenant"]

FIRST_NAMES = (  # noqa: SIM905 - a name list reads best as prose
    "Amelia Oliver Isla George Ava Noah Mia Arthur Ivy Muhammad Freya Leo Lily Harry Florence Oscar "
    "Willow Archie Sophia Jack Grace Henry Evie Charlie Ella Theo Aria Freddie Rosie Alfie Millie "
    "Thomas Sienna Jacob Daisy Joshua Poppy William Phoebe James Emily Lucas Alice Edward Chloe Samuel "
    "Priya Aisha Tomasz Zofia Chidi Ngozi Siobhan Ciaran Rhys Cerys Fatima Yusuf Mei Hiroshi"
).split()
SURNAMES = (  # noqa: SIM905
    "Smith Jones Taylor Brown Williams Wilson Johnson Davies Patel Wright Robinson Thompson Evans Walker "
    "White Roberts Green Hall Thomas Clarke Jackson Wood Harris Edwards Turner Martin Cooper Hill Ward "
    "Hughes Moore Clark King Harrison Lewis Baker Lee Allen Morris Khan Scott Watson Davis Parker James "
    "Bennett Young Phillips Richardson Mitchell Bailey Carter Cook Singh Shaw Bell Collins Kowalski "
    "Okafor Murphy Kelly Nguyen Ahmed"
).split()


@attrs.frozen
class SyntheticTenant:
    """A generated trust: its sites, its directory fixture and a ready configuration."""

    hierarchy: TrustHierarchy
    fixture: dict[str, Any]
    config: SyncConfig
    memberships: int


def generate_tenant(
    users: int = 1000,
    groups: int = 40,
    *,
    schools: int = 3,
    memberships_per_user: int = 3,
    guest_ratio: float = 0.02,
    disabled_ratio: float = 0.02,
    service_ratio: float = 0.01,
    nesting: bool = True,
    seed: int = 1,
    domain: str = "oak.sch.uk",
    mapped_groups: int | None = None,
) -> SyntheticTenant:
    """Generate a trust of ``schools`` schools with ``users`` staff in ``groups`` groups.

    Every user is a direct member of about ``memberships_per_user`` groups;
    every third group also nests the next one (so transitive reads matter).
    Every group is mapped to a school with roles on two modules. A few percent
    of users are guests, disabled, or service accounts.

    ``mapped_groups`` maps only the first that many groups (a real tenant
    holds many groups no trust maps: classes, teams, distribution lists);
    by default every group is mapped.
    """
    rng = random.Random(seed)
    sites = [Site("trust", "Oak Learning Trust")] + [
        Site(f"school-{index}", f"School {index}", "trust") for index in range(1, schools + 1)
    ]
    group_ids = [f"g{index:05d}" for index in range(groups)]
    fixture_users: list[dict[str, Any]] = []
    members: dict[str, list[str]] = {group_id: [] for group_id in group_ids}
    memberships = 0
    for index in range(users):
        user_id = f"u{index:07d}"
        first, last = rng.choice(FIRST_NAMES), rng.choice(SURNAMES)
        local = f"{first}.{last}.{index}".lower()
        roll = rng.random()
        user: dict[str, Any] = {
            "id": user_id,
            "displayName": f"{first} {last}",
            "givenName": first,
            "surname": last,
            "mail": f"{local}@{domain}",
            "userPrincipalName": f"{local}@{domain}",
            "accountEnabled": True,
            "userType": "Member",
        }
        if roll < guest_ratio:
            user.update(
                userType="Guest",
                mail=f"{local}@partner.org",
                userPrincipalName=f"{local}_partner.org#EXT#@oaktrust.onmicrosoft.com",
                creationType="Invitation",
            )
        elif roll < guest_ratio + disabled_ratio:
            user["accountEnabled"] = False
        elif roll < guest_ratio + disabled_ratio + service_ratio:
            user.update(
                displayName=f"Scanner {index}",
                givenName=None,
                surname=None,
                mail=f"scanner.{index}@{domain}",
                userPrincipalName=f"scanner.{index}@{domain}",
            )
        fixture_users.append(user)
        for group_id in rng.sample(group_ids, min(memberships_per_user, len(group_ids))):
            members[group_id].append(user_id)
            memberships += 1
    if nesting:
        for index in range(0, len(group_ids) - 1, 3):
            members[group_ids[index]].append(group_ids[index + 1])
    roles = ("Member", "Manager", "Admin")
    mappings = []
    for index, group_id in enumerate(group_ids[:mapped_groups]):
        site = sites[1 + index % schools] if schools else sites[0]
        role = roles[0] if index % 10 < 7 else roles[1] if index % 10 < 9 else roles[2]
        mappings.append(GroupMapping(group_id, site.id, {"Risk": role, "Policies": roles[0]}))
    fixture = {
        "users": fixture_users,
        "groups": [
            {"id": group_id, "displayName": f"Staff group {index}", "description": None, "mail": None}
            for index, group_id in enumerate(group_ids)
        ],
        "members": members,
    }
    return SyntheticTenant(
        hierarchy=TrustHierarchy(sites),
        fixture=fixture,
        config=SyncConfig("trust", mappings),
        memberships=memberships,
    )
