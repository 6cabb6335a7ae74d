"""The directory's side of the stateful machines: members join and leave groups, users are deleted.

``edited_user`` is how the machines' ``edit`` rules change a user.
``membership_rules(users, groups)`` is a ``RuleBasedStateMachine`` base whose
rules edit ``self.directory`` (an ``InMemoryDirectory``): a user or a group
(``nested``, ``g1``: nesting, cycles allowed) joins a group, a direct member
leaves one, a user is deleted (softly or for good). The incremental machine
(``test_incremental.py``) and the planning-by-difference machine
(``test_difference.py``) both build on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule


def edited_user(old, change: str, version: int, other: str = ""):
    """``old`` after one edit: ``rename``, ``re-email``, ``take-email`` (``other``'s address, in another case),
    ``own-email``, ``disable``, ``enable`` or ``guest``; ``version`` makes names and addresses new."""
    user = old.id
    return {
        "rename": lambda: attrs.evolve(old, display_name=f"{user} v{version}"),
        "re-email": lambda: attrs.evolve(old, mail=f"{user}.v{version}@oak.sch.uk"),
        "take-email": lambda: attrs.evolve(old, mail=f"{other.upper()}@Oak.sch.uk"),  # shared, any case
        "own-email": lambda: attrs.evolve(old, mail=f"{user}@oak.sch.uk"),
        "disable": lambda: attrs.evolve(old, account_enabled=False),
        "enable": lambda: attrs.evolve(old, account_enabled=True),
        "guest": lambda: attrs.evolve(old, user_type="Guest"),
    }[change]()


def membership_rules(users: Sequence[str], groups: Sequence[str]) -> type[RuleBasedStateMachine]:
    """A machine base with ``join``, ``leave`` and ``delete`` rules over these users and groups."""

    class MembershipRules(RuleBasedStateMachine):
        directory: object

        @rule(group=st.sampled_from(list(groups)), member=st.sampled_from([*users, "nested", "g1"]))
        def join(self, group, member):
            directory = self.directory
            if group in directory.groups and member != group and member in {**directory.users, **directory.groups}:
                directory.add_member(group, member)  # cycles allowed

        @rule(group=st.sampled_from(list(groups)), data=st.data())
        def leave(self, group, data):
            members = self.directory.members.get(group, ())
            if members:
                self.directory.remove_member(group, data.draw(st.sampled_from(members)))

        @rule(user=st.sampled_from(list(users)), soft=st.booleans())
        def delete(self, user, soft):
            self.directory.delete_user(user, soft=soft)

    return MembershipRules
