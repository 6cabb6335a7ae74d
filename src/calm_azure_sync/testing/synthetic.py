"""Synthetic tenants: Graph-shaped fixtures of any size, deterministic by seed.

Used by the demo, the benchmarks and the tests. The fixture is the format of
:meth:`calm_azure_sync.InMemoryDirectory.from_dict` (and of the fake Graph
server): ``{"users": [...], "groups": [...], "members": {...}}``.
"""

from __future__ import annotations

import random
from typing import Any

import attrs

from ..model import Site
from ..policies.config import SyncConfig
from ..policies.hierarchy import TrustHierarchy
from ..policies.mapping import GroupMapping

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
    sites = _sites(schools)
    group_ids = [f"g{index:05d}" for index in range(groups)]
    members: dict[str, list[str]] = {group_id: [] for group_id in group_ids}
    kinds = _AccountMix(guest_ratio, disabled_ratio, service_ratio)
    fixture_users: list[dict[str, Any]] = []
    memberships = 0
    # One user at a time, names, kind and groups drawn in that order: the
    # order of the rng draws is what makes a seed reproduce a tenant.
    for index in range(users):
        first, last = rng.choice(FIRST_NAMES), rng.choice(SURNAMES)
        fixture_users.append(_user_record(index, first, last, kinds.kind(rng.random()), domain))
        for group_id in rng.sample(group_ids, min(memberships_per_user, len(group_ids))):
            members[group_id].append(fixture_users[-1]["id"])
            memberships += 1
    if nesting:
        _nest_every_third_group(members, group_ids)
    fixture = {"users": fixture_users, "groups": _group_records(group_ids), "members": members}
    return SyntheticTenant(
        hierarchy=TrustHierarchy(sites),
        fixture=fixture,
        config=SyncConfig("trust", _mappings(group_ids[:mapped_groups], sites, schools)),
        memberships=memberships,
    )


def _sites(schools: int) -> list[Site]:
    """The trust and its ``schools`` schools (``school-1``...), the trust first."""
    return [Site("trust", "Oak Learning Trust")] + [
        Site(f"school-{index}", f"School {index}", "trust") for index in range(1, schools + 1)
    ]


@attrs.frozen
class _AccountMix:
    """The share of guests, disabled accounts and service accounts, tried in that order."""

    guest: float
    disabled: float
    service: float

    def kind(self, roll: float) -> str:
        """``"guest"``, ``"disabled"``, ``"service"`` or ``"member"`` for one ``random()`` roll."""
        if roll < self.guest:
            return "guest"
        if roll < self.guest + self.disabled:
            return "disabled"
        if roll < self.guest + self.disabled + self.service:
            return "service"
        return "member"


def _user_record(index: int, first: str, last: str, kind: str, domain: str) -> dict[str, Any]:
    """The Graph user object of the ``index``-th user, shaped by its ``kind`` (see :class:`_AccountMix`)."""
    local = f"{first}.{last}.{index}".lower()
    user: dict[str, Any] = {
        "id": f"u{index:07d}",
        "displayName": f"{first} {last}",
        "givenName": first,
        "surname": last,
        "mail": f"{local}@{domain}",
        "userPrincipalName": f"{local}@{domain}",
        "accountEnabled": True,
        "userType": "Member",
    }
    if kind == "guest":
        user.update(
            userType="Guest",
            mail=f"{local}@partner.org",
            userPrincipalName=f"{local}_partner.org#EXT#@oaktrust.onmicrosoft.com",
            creationType="Invitation",
        )
    elif kind == "disabled":
        user["accountEnabled"] = False
    elif kind == "service":
        user.update(
            displayName=f"Scanner {index}",
            givenName=None,
            surname=None,
            mail=f"scanner.{index}@{domain}",
            userPrincipalName=f"scanner.{index}@{domain}",
        )
    return user


def _nest_every_third_group(members: dict[str, list[str]], group_ids: list[str]) -> None:
    """Nest groups: every third group gets the next group as a member (so transitive reads matter)."""
    for index in range(0, len(group_ids) - 1, 3):
        members[group_ids[index]].append(group_ids[index + 1])


def _group_records(group_ids: list[str]) -> list[dict[str, Any]]:
    """The Graph group objects, named ``Staff group N``."""
    return [
        {"id": group_id, "displayName": f"Staff group {index}", "description": None, "mail": None}
        for index, group_id in enumerate(group_ids)
    ]


def _mappings(group_ids: list[str], sites: list[Site], schools: int) -> list[GroupMapping]:
    """Map each group to a school in turn (the trust when there are none).

    Risk is Member for 7 groups in 10, Manager for 2 and Admin for 1; Policies is always Member.
    """
    roles = ("Member", "Manager", "Admin")
    mappings = []
    for index, group_id in enumerate(group_ids):
        site = sites[1 + index % schools] if schools else sites[0]
        role = roles[0] if index % 10 < 7 else roles[1] if index % 10 < 9 else roles[2]
        mappings.append(GroupMapping(group_id, site.id, {"Risk": role, "Policies": roles[0]}))
    return mappings
