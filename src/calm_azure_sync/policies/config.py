"""One trust's sync configuration, and its plain-JSON form.

:class:`SyncConfig` is what the Group Mapping and Exclusions tabs edit.
``to_dict``/``from_dict`` round-trip it through JSON for the host to store;
``from_dict`` reads untrusted input and reports every problem at once, each
with the dotted path of the bad value, as one :class:`ConfigError`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs

from .._text import show
from ..errors import ChildSiteConfigurationError, ConfigError
from .exclusion import ExclusionPolicy
from .hierarchy import TrustHierarchy
from .mapping import GroupMapping, MappingPolicy

__all__ = ["RemovalMode", "RemovalPolicy", "SyncConfig"]

RemovalMode = Literal["unassign", "deactivate", "keep"]
_REMOVAL_MODES = ("unassign", "deactivate", "keep")
CONFIG_FORMAT_VERSION = 1


def _check_mode(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in _REMOVAL_MODES:
        raise ConfigError(f"removal.mode: {show(value)} is not one of {', '.join(_REMOVAL_MODES)}")


def _check_ratio(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value <= 1
    ):
        raise ConfigError(f"removal.{attribute.name}: must be a number from 0 to 1, got {show(value)}")


def _check_count(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"removal.{attribute.name}: must be a whole number of at least 0, got {show(value)}")


@attrs.frozen
class RemovalPolicy:
    """What happens to access Azure no longer gives, and when to hold it back.

    ``mode``: ``"unassign"`` removes only the assignments the sync granted;
    ``"deactivate"`` also marks the user inactive once no access of any source
    is left; ``"keep"`` removes nothing. Users are never deleted.

    The mass-removal hold: when removals would touch more than
    ``max_removal_ratio`` of the trust's synced users *and* at least
    ``min_removals_to_hold`` users, or every synced user of a trust of two or
    more, they are held until an admin confirms the hold.

    The per-group guard: when a mapped group whose baseline (its size at the
    last undisputed complete read) is at least ``min_group_baseline`` reads
    with more than ``max_group_shrink_ratio`` of it gone, the removals on the
    sites and modules it maps to are held (reason ``group_shrank``). A group
    that had members and reads empty is held whatever its baseline, and no
    setting switches that off (not even ``max_group_shrink_ratio=1.0``): an
    empty read is Graph's most common transient failure, and a trust that
    really emptied a group confirms the hold once (docs/concepts.md).
    """

    mode: RemovalMode = attrs.field(default="unassign", validator=_check_mode)
    max_removal_ratio: float = attrs.field(default=0.2, validator=_check_ratio)
    min_removals_to_hold: int = attrs.field(default=10, validator=_check_count)
    max_group_shrink_ratio: float = attrs.field(default=0.5, validator=_check_ratio)
    min_group_baseline: int = attrs.field(default=3, validator=_check_count)

    def should_hold(self, users_losing_access: int, synced_users: int) -> bool:
        """Whether removals touching ``users_losing_access`` of ``synced_users`` are held."""
        if users_losing_access == 0:
            return False
        if synced_users >= 2 and users_losing_access >= synced_users:
            return True  # everyone at once is never routine, however small the trust
        if users_losing_access < self.min_removals_to_hold:
            return False
        return users_losing_access > self.max_removal_ratio * max(synced_users, 1)

    def group_shrank(self, baseline: int | None, members_now: int) -> bool:
        """Whether a group read with ``members_now`` users, against ``baseline``, trips the guard."""
        if baseline is None or baseline == 0:
            return False
        if members_now == 0:
            return True  # an empty read of a group that had members: Graph's index may lag
        if baseline < self.min_group_baseline:
            return False
        return (baseline - members_now) > self.max_group_shrink_ratio * baseline


def _to_policy(mappings: MappingPolicy | Iterable[GroupMapping | Mapping[str, Any]]) -> MappingPolicy:
    # MappingPolicy checks the items (GroupMapping, or GroupMapping.from_dict dicts).
    return mappings if isinstance(mappings, MappingPolicy) else MappingPolicy(mappings)


def _to_exclusions(exclusions: ExclusionPolicy | Iterable[str] | Mapping[str, Any]) -> ExclusionPolicy:
    if isinstance(exclusions, ExclusionPolicy):
        return exclusions
    reader = _Reader()
    if isinstance(exclusions, Mapping):
        # The form to_dict writes: {"patterns": [...], "user_ids": [...]}.
        policy = reader.build(exclusions, "exclusions", ExclusionPolicy, ("patterns", "user_ids"), required=False)
    elif isinstance(exclusions, (str, bytes)) or not isinstance(exclusions, Iterable):
        hint = f" (one pattern is written [{exclusions!r}])" if isinstance(exclusions, str) else ""
        raise ConfigError(
            "exclusions: expected an ExclusionPolicy, a list of email patterns or a dict with patterns and "
            f"user_ids, got {_kind(exclusions)}{hint}"
        )
    else:
        # A plain list of patterns, the obvious shorthand: ["noreply@*", "*.bot@*"].
        policy = reader.build({"patterns": exclusions}, "exclusions", ExclusionPolicy, ("patterns",))
    if reader.problems:
        raise ConfigError(reader.problems)
    assert isinstance(policy, ExclusionPolicy)
    return policy


# The settings of a removal policy, as dicts name them: its fields, whatever fields it grows.
_REMOVAL_KEYS = tuple(field.name for field in attrs.fields(RemovalPolicy))


def _to_removal(removal: RemovalPolicy | Mapping[str, Any]) -> RemovalPolicy:
    if isinstance(removal, RemovalPolicy):
        return removal
    if not isinstance(removal, Mapping):
        raise ConfigError(
            f"removal: expected a RemovalPolicy or a dict of its settings, got {_kind(removal)}"
        )
    reader = _Reader()
    policy = reader.build(removal, "removal", RemovalPolicy, _REMOVAL_KEYS, required=False)
    if reader.problems:
        raise ConfigError(reader.problems)
    assert isinstance(policy, RemovalPolicy)
    return policy


def _check_trust_site_id(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"trust_site_id: must be a non-empty string, got {_kind(value)}")


def _check_include_guests(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"include_guests: must be true or false, got {_kind(value)}")


def _check_tenant_id(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"tenant_id: must be a non-empty string or None, got {_kind(value)}")


def _not_names(items: list[Any], field: str) -> list[str]:
    """A problem per item of ``field`` that is not a non-empty string, with its index."""
    return [
        f"{field}[{index}]: must be a non-empty string, got {_kind(item)}"
        for index, item in enumerate(items)
        if not isinstance(item, str) or not item.strip()
    ]


def _freeze_tenants(tenants: Iterable[str] | None) -> tuple[str, ...]:
    if tenants is None:
        return ()
    if isinstance(tenants, (str, bytes, Mapping)) or not isinstance(tenants, Iterable):
        hint = f" (one tenant is written [{tenants!r}], or tenant_id=...)" if isinstance(tenants, str) else ""
        raise ConfigError(f"tenants: expected a list of tenant ids, got {_kind(tenants)}{hint}")
    items = list(tenants)
    problems = _not_names(items, "tenants")
    seen: dict[str, int] = {}
    for index, tenant in enumerate(items):
        if isinstance(tenant, str) and tenant.strip():
            first = seen.setdefault(tenant.lower(), index)
            if first != index:
                problems.append(f"tenants[{index}]: tenant {tenant!r} is already tenants[{first}]")
    if problems:
        raise ConfigError(problems)
    return tuple(items)


def _freeze_tenant_names(names: Mapping[str, str] | None) -> Mapping[str, str] | None:
    if names is None:
        return None
    if not isinstance(names, Mapping):
        raise ConfigError(f"tenant_names: expected an object of tenant id to name, got {_kind(names)}")
    problems = [
        f"tenant_names.{key}: must be a non-empty string, got {_kind(value)}"
        for key, value in names.items()
        if not isinstance(key, str) or not isinstance(value, str) or not value.strip()
    ]
    if problems:
        raise ConfigError(problems)
    return dict(sorted(names.items()))


def _freeze_modules(modules: Iterable[str] | None) -> frozenset[str] | None:
    if modules is None:
        return None
    if isinstance(modules, str):
        modules = [modules]
    elif isinstance(modules, (bytes, Mapping)) or not isinstance(modules, Iterable):
        raise ConfigError(f"modules: expected a list of module names or None, got {_kind(modules)}")
    items = list(modules)
    problems = _not_names(items, "modules")
    if problems:
        raise ConfigError(problems)
    return frozenset(items)


@attrs.frozen
class SyncConfig:
    """Everything one trust's sync needs: where, which groups, whom to leave out.

    ``mappings`` may be given as a :class:`MappingPolicy` or as a list of
    :class:`GroupMapping` or of their dicts (:meth:`GroupMapping.from_dict`);
    it is kept as a ``MappingPolicy``. ``exclusions`` may be an
    :class:`ExclusionPolicy`, a list of email patterns (``["noreply@*"]``) or
    a dict with ``patterns`` and ``user_ids``; ``removal`` a
    :class:`RemovalPolicy` or a dict of its settings. ``modules``, when given,
    is the set of module names the host offers (mappings to others are
    problems). ``tenant_id`` is the Entra tenant the trust connected to; a run
    refuses a directory of another tenant. A trust with several Microsoft
    tenants names them in ``tenants`` instead (API §13), with optional
    ``tenant_names`` (``{tenant_id: name}``) for people to read; each mapping
    then names its tenant (``GroupMapping.tenant_id``).

    Anything else is refused at once with a :class:`ConfigError` naming the
    field (``mappings[2].roles.Risk: ...``, ``include_guests: ...``), not
    later in a run:

    >>> SyncConfig("oak", [], exclusions=["noreply@*"]).exclusions.patterns
    ('noreply@*',)
    >>> SyncConfig("oak", [], include_guests="yes")
    Traceback (most recent call last):
    ...
    calm_azure_sync.errors.ConfigError: include_guests: must be true or false, got str 'yes'
    """

    trust_site_id: str = attrs.field(validator=_check_trust_site_id)
    mappings: MappingPolicy = attrs.field(converter=_to_policy)
    exclusions: ExclusionPolicy = attrs.field(factory=ExclusionPolicy, converter=_to_exclusions)
    removal: RemovalPolicy = attrs.field(factory=RemovalPolicy, converter=_to_removal)
    include_guests: bool = attrs.field(default=False, validator=_check_include_guests)
    modules: frozenset[str] | None = attrs.field(default=None, converter=_freeze_modules)
    tenant_id: str | None = attrs.field(default=None, validator=_check_tenant_id)
    tenants: tuple[str, ...] = attrs.field(default=(), converter=_freeze_tenants)
    tenant_names: Mapping[str, str] | None = attrs.field(default=None, converter=_freeze_tenant_names)
    # lower-cased tenant id -> the tenant as configured; group id -> its tenant (None: the trust names none)
    _tenant_by_key: Mapping[str, str] = attrs.field(init=False, repr=False, eq=False)
    _tenant_ids: tuple[str, ...] = attrs.field(init=False, repr=False, eq=False)
    _name_by_key: Mapping[str, str] = attrs.field(init=False, repr=False, eq=False)
    _group_tenant: Mapping[str, str | None] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        known = self.tenants or ((self.tenant_id,) if self.tenant_id else ())
        object.__setattr__(self, "_tenant_by_key", {tenant.lower(): tenant for tenant in known})
        object.__setattr__(self, "_tenant_ids", tuple(self._tenant_by_key.values()))
        object.__setattr__(self, "_name_by_key", {key.lower(): name for key, name in (self.tenant_names or {}).items()})
        problems = self._tenant_problems()
        if problems:
            raise ConfigError(problems)
        single = known[0] if len(known) == 1 else None
        object.__setattr__(self, "_group_tenant", {
            mapping.group_id: self._tenant_by_key[mapping.tenant_id.lower()] if mapping.tenant_id else single
            for mapping in self.mappings.mappings
        })

    def _tenant_problems(self) -> list[str]:
        """Every mapping's tenant checked against the trust's (API §13), with its path."""
        problems: list[str] = []
        if self.tenant_id and self.tenants:
            problems.append("tenants: give tenant_id for one tenant or tenants for several, not both")
        several = len(self.tenants) > 1
        listed = ", ".join(repr(tenant) for tenant in self._tenant_by_key.values()) or "none"
        first_tenant: dict[str, tuple[str, int]] = {}
        for index, mapping in enumerate(self.mappings.mappings):
            path = f"mappings[{index}].tenant_id"
            tenant = mapping.tenant_id
            if tenant is None and several:
                problems.append(f"{path}: required: this trust connects several tenants ({listed})")
            elif tenant is not None and tenant.lower() not in self._tenant_by_key:
                problems.append(f"{path}: tenant {tenant!r} is not one of this trust's tenants ({listed})")
            if tenant is None:
                continue
            key = tenant.lower()
            earlier = first_tenant.setdefault(mapping.group_id, (key, index))
            if earlier[0] != key:
                problems.append(
                    f"{path}: group {mapping.group_id!r} is in tenant {earlier[0]!r} by mappings[{earlier[1]}]; "
                    "a group lives in one tenant"
                )
        for tenant in self.tenant_names or {}:
            if tenant.lower() not in self._tenant_by_key:
                problems.append(f"tenant_names.{tenant}: not one of this trust's tenants ({listed})")
        return problems

    @property
    def tenant_ids(self) -> tuple[str, ...]:
        """The tenants this trust connects: ``tenants``, else ``(tenant_id,)``, else none recorded."""
        return self._tenant_ids

    def tenant_of(self, group_id: str) -> str | None:
        """The tenant a mapped group lives in (``None``: not mapped, or the trust records no tenant)."""
        return self._group_tenant.get(group_id)

    def tenant_label(self, tenant_id: str | None) -> str | None:
        """A tenant as people read it: its ``tenant_names`` entry, else its id (``None`` stays ``None``)."""
        if tenant_id is None:
            return None
        return self._name_by_key.get(tenant_id.lower(), tenant_id)

    def validate(self, hierarchy: TrustHierarchy) -> None:
        """Check this configuration against the host's sites.

        Raises :class:`ChildSiteConfigurationError` when ``trust_site_id`` is a
        child site, and one :class:`ConfigError` listing every other problem.
        """
        if self.trust_site_id not in hierarchy:
            raise ConfigError(f"trust_site_id: unknown site {self.trust_site_id!r}")
        if hierarchy.is_child(self.trust_site_id):
            raise ChildSiteConfigurationError(
                self.trust_site_id, hierarchy.root_of(self.trust_site_id).id
            )
        in_trust = hierarchy.sites_under(self.trust_site_id)
        problems: list[str] = []
        seen: dict[tuple[str, str], int] = {}
        for index, mapping in enumerate(self.mappings.mappings):
            path = f"mappings[{index}]"
            if mapping.site_id not in in_trust:
                problems.append(
                    f"{path}.site_id: site {mapping.site_id!r} is not part of trust "
                    f"{self.trust_site_id!r}"
                )
            if self.modules is not None:
                for module in mapping.roles:
                    if module not in self.modules:
                        problems.append(
                            f"{path}.roles.{module}: unknown module {module!r} "
                            f"(known: {', '.join(sorted(self.modules))})"
                        )
            key = (mapping.group_id, mapping.site_id)
            if key in seen:
                problems.append(
                    f"{path}: group {mapping.group_id!r} is already mapped to site "
                    f"{mapping.site_id!r} by mappings[{seen[key]}]"
                )
            else:
                seen[key] = index
        if problems:
            raise ConfigError(problems)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-safe dict; :meth:`from_dict` reads it back."""
        return {
            "version": CONFIG_FORMAT_VERSION,
            "trust_site_id": self.trust_site_id,
            "tenant_id": self.tenant_id,
            **({"tenants": list(self.tenants)} if self.tenants else {}),
            **({"tenant_names": dict(self.tenant_names)} if self.tenant_names else {}),
            "include_guests": self.include_guests,
            "modules": None if self.modules is None else sorted(self.modules),
            "mappings": [mapping.to_dict() for mapping in self.mappings.mappings],
            "exclusions": self.exclusions.to_dict(),
            "removal": {key: getattr(self.removal, key) for key in _REMOVAL_KEYS},
        }

    @classmethod
    def from_dict(cls, data: object) -> SyncConfig:
        """Read a configuration from plain JSON data.

        Every problem is reported at once in one :class:`ConfigError`, each with
        its path; no other exception escapes, whatever ``data`` holds.
        """
        reader = _Reader()
        top = reader.mapping(data, "")
        if top is None:
            raise ConfigError(reader.problems)
        reader.unknown_keys(
            top,
            "",
            {
                "version", "trust_site_id", "tenant_id", "tenants", "tenant_names", "include_guests",
                "modules", "mappings", "exclusions", "removal",
            },
        )
        version = top.get("version", CONFIG_FORMAT_VERSION)
        if version != CONFIG_FORMAT_VERSION or isinstance(version, bool):
            reader.problems.append(
                f"version: unsupported configuration version {version!r} "
                f"(this library reads version {CONFIG_FORMAT_VERSION})"
            )
        trust_site_id = reader.string(top.get("trust_site_id"), "trust_site_id")
        tenant_id, tenants, tenant_names = reader.tenant_settings(top)
        include_guests = reader.boolean(top.get("include_guests", False), "include_guests")
        modules = reader.strings(top["modules"], "modules") if top.get("modules") is not None else None
        mappings = []
        for index, item in enumerate(reader.sequence(top.get("mappings"), "mappings") or []):
            mapping = reader.build(
                item, f"mappings[{index}]", GroupMapping, GroupMapping._KEYS, required=GroupMapping._REQUIRED
            )
            if mapping is not None:
                mappings.append(mapping)
        exclusions = reader.build(
            top.get("exclusions", {}), "exclusions", ExclusionPolicy, ("patterns", "user_ids"),
            required=False,
        )
        removal = reader.build(top.get("removal", {}), "removal", RemovalPolicy, _REMOVAL_KEYS, required=False)
        if reader.problems or trust_site_id is None:
            raise ConfigError(reader.problems or ["trust_site_id: required"])
        try:
            return cls(
                trust_site_id=trust_site_id,
                mappings=mappings,
                exclusions=exclusions if exclusions is not None else ExclusionPolicy(),
                removal=removal if removal is not None else RemovalPolicy(),
                include_guests=bool(include_guests),
                modules=modules,
                tenant_id=tenant_id,
                tenants=tenants,
                tenant_names=tenant_names,
            )
        except ConfigError:
            raise
        except Exception as error:  # defensive: from_dict promises ConfigError only
            raise ConfigError(f"invalid configuration: {error}") from None


class _Reader:
    """Typed reads over untrusted JSON that collect problems instead of raising."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def _where(self, path: str) -> str:
        return path or "configuration"

    def mapping(self, value: object, path: str) -> Mapping[str, Any] | None:
        if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
            return value
        self.problems.append(f"{self._where(path)}: expected an object, got {_kind(value)}")
        return None

    def sequence(self, value: object, path: str) -> list[Any] | None:
        if isinstance(value, (list, tuple)):
            return list(value)
        self.problems.append(f"{path}: expected a list, got {_kind(value)}")
        return None

    def string(self, value: object, path: str, *, optional: bool = False) -> str | None:
        if value is None and optional:
            return None
        if isinstance(value, str) and value.strip():
            return value
        self.problems.append(f"{path}: expected a non-empty string, got {_kind(value)}")
        return None

    def strings(self, value: object, path: str) -> list[str]:
        """A list of strings, each bad item a problem at its index (and left out)."""
        return [
            text
            for index, item in enumerate(self.sequence(value, path) or [])
            if (text := self.string(item, f"{path}[{index}]")) is not None
        ]

    def tenant_settings(
        self, top: Mapping[str, Any]
    ) -> tuple[str | None, list[str], dict[str, str] | None]:
        """``tenant_id``, ``tenants`` and ``tenant_names`` as a configuration's JSON gives them."""
        tenant_id = self.string(top.get("tenant_id"), "tenant_id", optional=True)
        tenants = self.strings(top["tenants"], "tenants") if top.get("tenants") is not None else []
        if top.get("tenant_names") is None:
            return tenant_id, tenants, None
        names = self.mapping(top["tenant_names"], "tenant_names") or {}
        return tenant_id, tenants, {
            key: name for key, value in names.items() if (name := self.string(value, f"tenant_names.{key}")) is not None
        }

    def boolean(self, value: object, path: str) -> bool | None:
        if isinstance(value, bool):
            return value
        self.problems.append(f"{path}: expected true or false, got {_kind(value)}")
        return None

    def unknown_keys(self, value: Mapping[str, Any], path: str, known: set[str]) -> None:
        for key in sorted(set(value) - known):
            self.problems.append(f"{path + '.' if path else ''}{key}: unknown setting")

    def build(
        self,
        value: object,
        path: str,
        factory: Any,
        keys: tuple[str, ...],
        *,
        required: bool | tuple[str, ...] = True,
    ) -> Any:
        """Call ``factory(**value)``, turning its ConfigError into path-prefixed problems.

        ``required``: every key (``True``), none, or the keys named.
        """
        data = self.mapping(value, path)
        if data is None:
            return None
        self.unknown_keys(data, path, set(keys))
        if required:
            needed: tuple[str, ...] = keys if isinstance(required, bool) else required
            missing = [key for key in needed if key not in data]
            for key in missing:
                self.problems.append(f"{path}.{key}: required")
            if missing:
                return None
        try:
            return factory(**{key: data[key] for key in keys if key in data})
        except ConfigError as error:
            self.problems.extend(_prefixed(path, problem) for problem in error.problems)
        except (TypeError, ValueError) as error:
            self.problems.append(f"{path}: {error}")
        return None


def _prefixed(path: str, problem: str) -> str:
    # Validators name the field they check ("roles.Risk: ...", "removal.mode: ...");
    # avoid saying the section twice.
    section = path.split("[")[0]
    if problem.startswith(section + "."):
        problem = problem[len(section) + 1:]
    return f"{path}.{problem}"


def _kind(value: object) -> str:
    if value is None:
        return "null"
    return f"{type(value).__name__} {show(value)}"
