"""Which Azure group gives which access, and how overlapping groups combine.

Each :class:`GroupMapping` gives the members of one Azure group a role per
module at one site. A user in several mapped groups gets, for every
(site, module), the highest role any of their groups gives there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from .._text import show
from ..errors import ConfigError
from ..model import Role

__all__ = ["Access", "GroupMapping", "MappingPolicy"]

# (site_id, module) -> Role: the access one user holds or should hold.
Access = dict[tuple[str, str], Role]


def _parse_roles(roles: object) -> dict[str, Role]:
    if not isinstance(roles, Mapping):
        raise ConfigError(
            f"roles: expected a mapping of module to role, got {type(roles).__name__} {show(roles)}"
        )
    parsed: dict[str, Role] = {}
    problems: list[str] = []
    for module, role in roles.items():
        if not isinstance(module, str) or not module.strip():
            problems.append(f"roles: module names must be non-empty strings, got {show(module)}")
            continue
        try:
            parsed[module.strip()] = Role.parse(role)
        except ConfigError as error:
            problems.append(f"roles.{module}: {error.problems[0]}")
    if problems:
        raise ConfigError(problems)
    return dict(sorted(parsed.items()))


def _check_id(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{attribute.name}: must be a non-empty string, got {show(value)}")


def _check_tenant(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"tenant_id: must be a non-empty string or None, got {show(value)}")


def _check_roles(instance: object, attribute: attrs.Attribute[Any], value: dict[str, Role]) -> None:
    if not value:
        raise ConfigError("roles: a mapping needs at least one module")


@attrs.frozen(hash=False)
class GroupMapping:
    """Members of Azure group ``group_id`` get ``roles`` (module -> Role) at ``site_id``.

    Role names are parsed case-insensitively:

    >>> GroupMapping("g-staff", "birch", {"Risk": "manager"}).roles
    {'Risk': <Role.MANAGER: 'Manager'>}

    ``tenant_id`` names the Microsoft tenant the group lives in; it is needed
    only when the trust connects several (``SyncConfig.tenants``, API §13).
    """

    group_id: str = attrs.field(validator=_check_id)
    site_id: str = attrs.field(validator=_check_id)
    roles: dict[str, Role] = attrs.field(converter=_parse_roles, validator=_check_roles)
    tenant_id: str | None = attrs.field(default=None, validator=_check_tenant)

    def __hash__(self) -> int:
        return hash((self.group_id, self.site_id, tuple(self.roles.items()), self.tenant_id))

    _KEYS = ("group_id", "site_id", "roles", "tenant_id")
    _REQUIRED = ("group_id", "site_id", "roles")

    @classmethod
    def from_dict(cls, data: object) -> GroupMapping:
        """Read ``{"group_id": ..., "site_id": ..., "roles": {module: role}}`` (the form :meth:`to_dict` writes).

        Every problem (not an object, a missing or unknown key, a bad value)
        is reported at once in one :class:`ConfigError`, each naming its key.
        """
        if not isinstance(data, Mapping) or not all(isinstance(key, str) for key in data):
            raise ConfigError(f"expected an object with {', '.join(cls._REQUIRED)}, got {type(data).__name__} {show(data)}")
        problems = [f"{key}: unknown setting" for key in sorted(set(data) - set(cls._KEYS))]
        problems += [f"{key}: required" for key in cls._REQUIRED if key not in data]
        if not problems:
            try:
                return cls(data["group_id"], data["site_id"], data["roles"], data.get("tenant_id"))
            except ConfigError as error:
                problems = error.problems
        raise ConfigError(problems)

    def to_dict(self) -> dict[str, Any]:
        """The plain JSON form: role names as strings (``tenant_id`` only when set)."""
        data: dict[str, Any] = {
            "group_id": self.group_id,
            "site_id": self.site_id,
            "roles": {module: role.value for module, role in self.roles.items()},
        }
        if self.tenant_id is not None:
            data["tenant_id"] = self.tenant_id
        return data


def _freeze_mappings(mappings: Iterable[GroupMapping | Mapping[str, Any]]) -> tuple[GroupMapping, ...]:
    if isinstance(mappings, (str, bytes, Mapping, GroupMapping)) or not isinstance(mappings, Iterable):
        raise ConfigError(
            f"mappings: expected a list of GroupMapping (or of their dicts), got {type(mappings).__name__} "
            f"{show(mappings)}"
        )
    frozen: list[GroupMapping] = []
    problems: list[str] = []
    untyped: Iterable[object] = mappings  # whatever the caller passed, typed or not
    for index, item in enumerate(untyped):
        if isinstance(item, GroupMapping):
            frozen.append(item)
        elif isinstance(item, Mapping):
            try:
                frozen.append(GroupMapping.from_dict(item))
            except ConfigError as error:
                problems.extend(f"mappings[{index}].{problem}" for problem in error.problems)
        else:
            problems.append(
                f"mappings[{index}]: expected a GroupMapping or a dict with group_id, site_id and roles, "
                f"got {type(item).__name__} {show(item)}"
            )
    if problems:
        raise ConfigError(problems)
    return tuple(frozen)


@attrs.frozen
class MappingPolicy:
    """All group mappings of one trust, and the access they give.

    ``mappings`` is a list of :class:`GroupMapping`, or of dicts in the form
    :meth:`GroupMapping.from_dict` reads; anything else is a
    :class:`ConfigError` naming ``mappings[i]``.
    """

    mappings: tuple[GroupMapping, ...] = attrs.field(converter=_freeze_mappings, default=())
    # group id -> (((site_id, module), role), ...): the index access_for walks.
    _grants_by_group: Mapping[str, tuple[tuple[tuple[str, str], Role], ...]] = attrs.field(
        init=False, repr=False, eq=False
    )

    def __attrs_post_init__(self) -> None:
        index: dict[str, list[tuple[tuple[str, str], Role]]] = {}
        for mapping in self.mappings:
            grants = index.setdefault(mapping.group_id, [])
            grants.extend(((mapping.site_id, module), role) for module, role in mapping.roles.items())
        object.__setattr__(
            self, "_grants_by_group", {group: tuple(grants) for group, grants in index.items()}
        )

    @property
    def group_ids(self) -> frozenset[str]:
        """Every mapped group id."""
        return frozenset(self._grants_by_group)

    def access_for(self, group_ids: Iterable[str]) -> Access:
        """The access a member of these groups gets: the highest role per (site, module)."""
        return {key: role for key, (role, _) in self.access_with_reasons(group_ids).items()}

    def access_with_reasons(
        self, group_ids: Iterable[str]
    ) -> dict[tuple[str, str], tuple[Role, tuple[str, ...]]]:
        """Like :meth:`access_for`, with the groups that give each winning role.

        The reasons are every mapped group among ``group_ids`` that gives the
        winning role at that (site, module), sorted, so a host can answer
        "why does Carol have Manager on Risk at Birch High?".
        """
        access: dict[tuple[str, str], tuple[Role, tuple[str, ...]]] = {}
        for group_id in sorted(set(group_ids)):
            self.fold_group([access], group_id)
        return access

    def fold_group(
        self, accesses: Iterable[dict[tuple[str, str], tuple[Role, tuple[str, ...]]]], group_id: str
    ) -> None:
        """Fold one group's grants into each of ``accesses`` (one per member), in place.

        The highest role wins; a tie adds the group to the reasons. Folding
        groups in sorted order keeps the reasons sorted. This is the one place
        the highest-role rule is written: :meth:`access_with_reasons` folds
        one user's groups, the planner folds every member of a group at once.
        """
        grants = self._grants_by_group.get(group_id, ())
        if not grants:
            return
        accesses = accesses if isinstance(accesses, list) else list(accesses)
        # The planner's hottest loop (every membership, every grant): one dict operation when the
        # (site, module) is new to the user; roles are enum singletons, so a tie is `is`.
        for key, role in grants:
            rank = role._rank
            single = (role, (group_id,))
            for access in accesses:
                current = access.setdefault(key, single)
                if current is single:
                    continue
                held = current[0]
                if held is role:
                    if current[1][-1] != group_id:
                        access[key] = (role, (*current[1], group_id))
                elif rank > held._rank:
                    access[key] = single
