"""Regenerate ``sample_trust.json``: ``python -m calm_azure_sync.demo.build_sample``.

The sample is the Oak Learning Trust: a Trust and three schools, a few hundred
staff in nested Azure groups, some guests, leavers (disabled), system
accounts, one teacher the auto-detect must not flag, and a user invited by
hand before Azure was connected.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from ..testing.synthetic import FIRST_NAMES, SURNAMES

SCHOOLS = {
    "birch-high": ("Birch High School", "birch.sch.uk", 130),
    "ash-primary": ("Ash Primary School", "ash.sch.uk", 70),
    "elm-academy": ("Elm Academy", "elm.sch.uk", 100),
}
OUT = Path(__file__).with_name("sample_trust.json")


def build() -> dict[str, Any]:
    """The sample trust as written to ``sample_trust.json``: sites, directory, config, invited users."""
    directory = _Directory(random.Random(2026))
    trust_it = directory.group("grp-trust-it", "Trust IT", "Central IT team: admin everywhere")
    trust_central = directory.group("grp-trust-central", "Trust Central Team", "Finance, HR and compliance")
    directory.group("grp-students", "All Students", "Not mapped: students are not synced")
    # The order of the steps below is the order of the rng draws: keep it, or the sample changes.
    for site_id, (name, domain, size) in SCHOOLS.items():
        _add_school(directory, site_id, name, domain, size)
    _add_lookalikes(directory)
    _add_central_team(directory, trust_it, trust_central)
    _add_guests(directory, trust_central)
    # Someone invited by hand before Azure was connected: linked by email, never duplicated.
    invited = directory.users[5]
    return {
        "sites": [
            {"id": "oak-trust", "name": "Oak Learning Trust", "parent_id": None},
            *({"id": site_id, "name": name, "parent_id": "oak-trust"} for site_id, (name, _, _) in SCHOOLS.items()),
        ],
        "directory": {"users": directory.users, "groups": directory.groups, "members": directory.members},
        "config": _config(),
        "invited": [{"email": invited["mail"].upper(), "display_name": invited["displayName"],
                     "grants": [{"site_id": "birch-high", "module": "Risk", "role": "Admin"}]}],
    }


class _Directory:
    """The Graph-shaped users, groups and members being built, and the rng that draws them."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.users: list[dict[str, Any]] = []
        self.groups: list[dict[str, Any]] = []
        self.members: dict[str, list[str]] = {}

    def group(self, group_id: str, name: str, description: str) -> str:
        """Add an empty group; returns its id."""
        self.groups.append({"id": group_id, "displayName": name, "description": description, "mail": None})
        self.members[group_id] = []
        return group_id

    def user(self, display: str, mail: str | None, upn: str, **extra: Any) -> str:
        """Add a licensed, enabled member user (``extra`` overrides fields); returns its id."""
        user_id = f"{len(self.users) + 1:08x}-0000-4000-8000-{self.rng.getrandbits(48):012x}"
        given, _, surname = display.partition(" ")
        record = {
            "id": user_id,
            "displayName": display,
            "givenName": extra.pop("givenName", given or None),
            "surname": extra.pop("surname", surname or None),
            "mail": mail,
            "userPrincipalName": upn,
            "accountEnabled": True,
            "userType": "Member",
            "assignedLicenses": [{"disabledPlans": [], "skuId": "94763226-9b3c-4e75-a931-5c89701abe66"}],
        }
        record.update(extra)
        self.users.append(record)
        return user_id

    def name(self) -> tuple[str, str]:
        """A random first name and surname."""
        return self.rng.choice(FIRST_NAMES), self.rng.choice(SURNAMES)


def _add_school(directory: _Directory, site_id: str, name: str, domain: str, size: int) -> None:
    """One school's four groups (All Staff nests Teachers and Support), its staff, leavers and system accounts."""
    short = site_id.split("-")[0].capitalize()
    all_staff = directory.group(f"grp-{site_id}-all", f"{short} All Staff", f"Everyone at {name}")
    teachers = directory.group(f"grp-{site_id}-teachers", f"{short} Teachers", "Teaching staff")
    support = directory.group(f"grp-{site_id}-support", f"{short} Support Staff", "Support staff")
    slt = directory.group(f"grp-{site_id}-slt", f"{short} Senior Leadership", "SLT")
    members = directory.members
    members[all_staff] += [teachers, support]  # nested groups
    taken: set[str] = set()  # each school has its own domain, so uniqueness is per school
    for index in range(size):
        first, last = directory.name()
        local = f"{first}.{last}".lower()
        while f"{local}@{domain}" in taken:
            local = f"{first}.{last}{directory.rng.randint(2, 99)}".lower()
        taken.add(f"{local}@{domain}")
        user_id = directory.user(f"{first} {last}", f"{local}@{domain}", f"{local}@{domain}")
        members[teachers if index % 3 else support].append(user_id)
        if index % 25 == 0:
            members[slt].append(user_id)
    # Leavers: disabled in Azure but still in the groups.
    for index in range(2):
        first, last = directory.name()
        address = f"{first}.{last}.leaver{index}@{domain}".lower()
        members[teachers].append(directory.user(f"{first} {last}", address, address, accountEnabled=False))
    # System accounts that "All Staff"-style dynamic groups tend to sweep in.
    members[all_staff] += [
        directory.user(f"{short} Reception", f"reception@{domain}", f"reception@{domain}", givenName=None,
                       surname=None, assignedLicenses=[]),
        directory.user(f"{short} Main Office Scanner", f"scanner.mainoffice@{domain}",
                       f"scanner.mainoffice@{domain}", givenName=None, surname=None, assignedLicenses=[]),
        directory.user("No Reply", f"noreply@{domain}", f"noreply@{domain}", givenName=None, surname=None),
    ]


def _add_lookalikes(directory: _Directory) -> None:
    """A teacher the auto-detect must not take for a bot, and someone called Servicedesk by colleagues."""
    directory.members["grp-birch-high-teachers"].append(
        directory.user("Robert Botham", "robert.botham@birch.sch.uk", "robert.botham@birch.sch.uk")
    )
    directory.members["grp-elm-academy-support"].append(
        directory.user("Servicedesk Sarah", "sarah.jones@elm.sch.uk", "sarah.jones@elm.sch.uk",
                       givenName="Sarah", surname="Jones")
    )


def _add_central_team(directory: _Directory, trust_it: str, trust_central: str) -> None:
    """Four in Trust IT and eight in the Central Team, then IT's two service accounts."""
    for index in range(12):
        first, last = directory.name()
        address = f"{first}.{last}@oaktrust.org.uk".lower()
        directory.members[trust_central if index > 3 else trust_it].append(
            directory.user(f"{first} {last}", address, address)
        )
    directory.members[trust_it] += [
        directory.user("On-Premises Directory Synchronization Service Account", None,
                       "Sync_DC01_5f2c9a7e1b3d@oaktrust.onmicrosoft.com", givenName=None, surname=None,
                       assignedLicenses=[], onPremisesSyncEnabled=None),
        directory.user("Backup Service", "svc-backup@oaktrust.org.uk", "svc-backup@oaktrust.org.uk",
                       givenName=None, surname=None, assignedLicenses=[]),
    ]


def _add_guests(directory: _Directory, trust_central: str) -> None:
    """Guests: four external consultants invited into Teams."""
    for _ in range(4):
        first, last = directory.name()
        home = f"{first}.{last}@consultancy.co.uk".lower()
        directory.members[trust_central].append(
            directory.user(f"{first} {last} (Guest)", home, home.replace("@", "_") + "#EXT#@oaktrust.onmicrosoft.com",
                           userType="Guest", creationType="Invitation", assignedLicenses=[])
        )


def _config() -> dict[str, Any]:
    """The sample's Group Mapping, exclusions and removal policy, as ``SyncConfig.from_dict`` reads it."""
    return {
        "trust_site_id": "oak-trust",
        "modules": ["Incidents", "Policies", "Risk"],
        "mappings": [
            {"group_id": "grp-trust-it", "site_id": site_id, "roles": {"Risk": "Admin", "Policies": "Admin", "Incidents": "Admin"}}
            for site_id in ["oak-trust", *SCHOOLS]
        ]
        + [{"group_id": "grp-trust-central", "site_id": "oak-trust", "roles": {"Policies": "Manager", "Risk": "Member"}}]
        + [
            mapping
            for site_id in SCHOOLS
            for mapping in (
                {"group_id": f"grp-{site_id}-all", "site_id": site_id, "roles": {"Policies": "Member", "Incidents": "Member"}},
                {"group_id": f"grp-{site_id}-teachers", "site_id": site_id, "roles": {"Risk": "Member"}},
                {"group_id": f"grp-{site_id}-slt", "site_id": site_id, "roles": {"Risk": "Manager", "Incidents": "Manager"}},
            )
        ],
        "exclusions": {"patterns": ["noreply@*"], "user_ids": []},
        "removal": {"mode": "deactivate", "max_removal_ratio": 0.2, "min_removals_to_hold": 10},
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")
