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
    rng = random.Random(2026)
    users: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    members: dict[str, list[str]] = {}
    taken: set[str] = set()

    def group(group_id: str, name: str, description: str) -> str:
        groups.append({"id": group_id, "displayName": name, "description": description, "mail": None})
        members[group_id] = []
        return group_id

    def user(display: str, mail: str | None, upn: str, **extra: Any) -> str:
        user_id = f"{len(users) + 1:08x}-0000-4000-8000-{rng.getrandbits(48):012x}"
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
        users.append(record)
        return user_id

    trust_it = group("grp-trust-it", "Trust IT", "Central IT team: admin everywhere")
    trust_central = group("grp-trust-central", "Trust Central Team", "Finance, HR and compliance")
    group("grp-students", "All Students", "Not mapped: students are not synced")
    for site_id, (name, domain, size) in SCHOOLS.items():
        short = site_id.split("-")[0].capitalize()
        all_staff = group(f"grp-{site_id}-all", f"{short} All Staff", f"Everyone at {name}")
        teachers = group(f"grp-{site_id}-teachers", f"{short} Teachers", "Teaching staff")
        support = group(f"grp-{site_id}-support", f"{short} Support Staff", "Support staff")
        slt = group(f"grp-{site_id}-slt", f"{short} Senior Leadership", "SLT")
        members[all_staff] += [teachers, support]  # nested groups
        for index in range(size):
            first, last = rng.choice(FIRST_NAMES), rng.choice(SURNAMES)
            local = f"{first}.{last}".lower()
            while f"{local}@{domain}" in taken:
                local = f"{first}.{last}{rng.randint(2, 99)}".lower()
            taken.add(f"{local}@{domain}")
            user_id = user(f"{first} {last}", f"{local}@{domain}", f"{local}@{domain}")
            members[teachers if index % 3 else support].append(user_id)
            if index % 25 == 0:
                members[slt].append(user_id)
        # Leavers: disabled in Azure but still in the groups.
        for index in range(2):
            first, last = rng.choice(FIRST_NAMES), rng.choice(SURNAMES)
            leaver = user(f"{first} {last}", f"{first}.{last}.leaver{index}@{domain}".lower(),
                          f"{first}.{last}.leaver{index}@{domain}".lower(), accountEnabled=False)
            members[teachers].append(leaver)
        # System accounts that "All Staff"-style dynamic groups tend to sweep in.
        members[all_staff] += [
            user(f"{short} Reception", f"reception@{domain}", f"reception@{domain}", givenName=None, surname=None,
                 assignedLicenses=[]),
            user(f"{short} Main Office Scanner", f"scanner.mainoffice@{domain}", f"scanner.mainoffice@{domain}",
                 givenName=None, surname=None, assignedLicenses=[]),
            user("No Reply", f"noreply@{domain}", f"noreply@{domain}", givenName=None, surname=None),
        ]
    # A teacher the auto-detect must not take for a bot, and someone called Servicedesk by colleagues.
    members["grp-birch-high-teachers"].append(user("Robert Botham", "robert.botham@birch.sch.uk", "robert.botham@birch.sch.uk"))
    members["grp-elm-academy-support"].append(
        user("Servicedesk Sarah", "sarah.jones@elm.sch.uk", "sarah.jones@elm.sch.uk", givenName="Sarah", surname="Jones")
    )
    # Central team and IT.
    for index in range(12):
        first, last = rng.choice(FIRST_NAMES), rng.choice(SURNAMES)
        members[trust_central if index > 3 else trust_it].append(
            user(f"{first} {last}", f"{first}.{last}@oaktrust.org.uk".lower(), f"{first}.{last}@oaktrust.org.uk".lower())
        )
    members[trust_it] += [
        user("On-Premises Directory Synchronization Service Account", None,
             "Sync_DC01_5f2c9a7e1b3d@oaktrust.onmicrosoft.com", givenName=None, surname=None, assignedLicenses=[],
             onPremisesSyncEnabled=None),
        user("Backup Service", "svc-backup@oaktrust.org.uk", "svc-backup@oaktrust.org.uk", givenName=None,
             surname=None, assignedLicenses=[]),
    ]
    # Guests: external consultants invited into Teams.
    for _ in range(4):
        first, last = rng.choice(FIRST_NAMES), rng.choice(SURNAMES)
        home = f"{first}.{last}@consultancy.co.uk".lower()
        members[trust_central].append(
            user(f"{first} {last} (Guest)", home, home.replace("@", "_") + "#EXT#@oaktrust.onmicrosoft.com",
                 userType="Guest", creationType="Invitation", assignedLicenses=[])
        )
    # Someone invited by hand before Azure was connected: linked by email, never duplicated.
    invited_email = users[5]["mail"]
    return {
        "sites": [
            {"id": "oak-trust", "name": "Oak Learning Trust", "parent_id": None},
            *({"id": site_id, "name": name, "parent_id": "oak-trust"} for site_id, (name, _, _) in SCHOOLS.items()),
        ],
        "directory": {"users": users, "groups": groups, "members": members},
        "config": {
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
        },
        "invited": [{"email": invited_email.upper(), "display_name": users[5]["displayName"],
                     "grants": [{"site_id": "birch-high", "module": "Risk", "role": "Admin"}]}],
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")
