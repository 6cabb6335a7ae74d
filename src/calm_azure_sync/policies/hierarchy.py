"""Trusts and their child sites, and who may configure the sync.

A Trust is a site with children; a standalone site is its own Trust. Azure is
connected and configured once, at the Trust, and every child inherits it. Only
an Admin of the Trust may connect, configure or start an import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from .._text import show
from ..errors import ChildSiteConfigurationError, ConfigError, NotAuthorizedError
from ..model import Site

__all__ = ["Actor", "TrustHierarchy", "authorize"]


def _freeze_sites(sites: Iterable[Site]) -> tuple[Site, ...]:
    if isinstance(sites, (str, bytes, Mapping, Site)) or not isinstance(sites, Iterable):
        raise ConfigError(f"sites: expected a list of Site, got {type(sites).__name__} {show(sites)}")
    frozen = tuple(sites)
    problems = [
        f"sites[{index}]: expected a Site, got {type(site).__name__} {show(site)}"
        for index, site in enumerate(frozen)
        if not isinstance(site, Site)
    ]
    if problems:
        raise ConfigError(problems)
    return frozen


@attrs.frozen
class TrustHierarchy:
    """The sites a host knows, as a forest of Trusts and their children.

    Refuses broken site graphs: duplicate ids, unknown parents and cycles each
    raise :class:`ConfigError` (all problems listed together).
    """

    sites: tuple[Site, ...] = attrs.field(converter=_freeze_sites)
    _by_id: Mapping[str, Site] = attrs.field(init=False, repr=False, eq=False)
    _children: Mapping[str, tuple[str, ...]] = attrs.field(init=False, repr=False, eq=False)
    _roots: Mapping[str, str] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        problems: list[str] = []
        by_id: dict[str, Site] = {}
        for index, site in enumerate(self.sites):
            if site.id in by_id:
                problems.append(f"sites[{index}].id: duplicate site id {site.id!r}")
                continue
            by_id[site.id] = site
        children: dict[str, list[str]] = {site_id: [] for site_id in by_id}
        for index, site in enumerate(self.sites):
            if site.parent_id is None or by_id.get(site.id) is not site:
                continue
            if site.parent_id not in by_id:
                problems.append(f"sites[{index}].parent_id: unknown parent site {site.parent_id!r}")
            else:
                children[site.parent_id].append(site.id)
        roots: dict[str, str] = {}
        in_cycle: set[str] = set()  # sites on, or leading into, a parent cycle
        for site_id in by_id:
            path: list[str] = []
            current: str | None = site_id
            while current is not None and current in by_id and current not in roots:
                if current in in_cycle:
                    break
                if current in path:
                    cycle = [*path[path.index(current):], current]
                    problems.append(f"sites: parent cycle {' -> '.join(cycle)}")
                    break
                path.append(current)
                current = by_id[current].parent_id
            else:
                root = path[-1] if current is None or current not in by_id else roots[current]
                for visited in path:
                    roots[visited] = root
                continue
            in_cycle.update(path)
        if problems:
            raise ConfigError(sorted(set(problems), key=problems.index))
        object.__setattr__(self, "_by_id", by_id)
        object.__setattr__(
            self, "_children", {key: tuple(value) for key, value in children.items()}
        )
        object.__setattr__(self, "_roots", roots)

    def site(self, site_id: str) -> Site:
        """The site with this id; an unknown id is a :class:`ConfigError`."""
        try:
            return self._by_id[site_id]
        except (KeyError, TypeError):
            raise ConfigError(f"unknown site {site_id!r}") from None

    def __contains__(self, site_id: object) -> bool:
        return isinstance(site_id, str) and site_id in self._by_id

    def root_of(self, site_id: str) -> Site:
        """The Trust at the top of this site's tree (a standalone site is its own root)."""
        self.site(site_id)
        return self._by_id[self._roots[site_id]]

    def is_child(self, site_id: str) -> bool:
        """Whether this site sits under a Trust."""
        return self.site(site_id).parent_id is not None

    def children_of(self, site_id: str) -> tuple[str, ...]:
        """The direct children of a site, in the order the sites were given."""
        self.site(site_id)
        return self._children[site_id]

    def sites_under(self, root_id: str) -> frozenset[str]:
        """The site and every descendant of it."""
        self.site(root_id)
        found: set[str] = set()
        pending = [root_id]
        while pending:
            current = pending.pop()
            if current not in found:
                found.add(current)
                pending.extend(self._children[current])
        return frozenset(found)

    def require_config_site(self, site_id: str) -> Site:
        """The site where Azure is configured for ``site_id``: the site itself.

        A child site raises :class:`ChildSiteConfigurationError` carrying the
        Trust's id, so a host can offer "Go to Trust Site Configuration".
        """
        if self.is_child(site_id):
            raise ChildSiteConfigurationError(site_id, self.root_of(site_id).id)
        return self.site(site_id)


def _freeze_ids(ids: Iterable[str]) -> frozenset[str]:
    if isinstance(ids, str):
        ids = [ids]
    elif isinstance(ids, (bytes, Mapping)) or not isinstance(ids, Iterable):
        raise ConfigError(
            f"Actor.admin_site_ids: expected a set of site ids, got {type(ids).__name__} {show(ids)}"
        )
    items = list(ids)
    # Types only: an empty id is a value (it names no site, so it grants nothing).
    bad = [f"{type(item).__name__} {show(item)}" for item in items if not isinstance(item, str)]
    if bad:
        raise ConfigError(f"Actor.admin_site_ids: site ids must be strings, got {', '.join(bad)}")
    return frozenset(items)


def _check_user_id(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    # Types only: an empty user id is still refused, by authorize (it is Admin nowhere).
    if not isinstance(value, str):
        raise ConfigError(f"Actor.user_id: must be a string, got {type(value).__name__} {show(value)}")


# The prefix of a system actor's user_id, and so of its events' actor_id.
_SYSTEM_PREFIX = "system:"


@attrs.frozen
class Actor:
    """Who is acting: a host user and the sites where they hold the Admin role.

    A person is ``Actor(user_id, admin_site_ids)``. A trusted non-person, such
    as a scheduled job, is :meth:`Actor.system`: it may run any trust, and its
    events carry ``actor_id`` ``"system:<name>"``. Only :meth:`Actor.system`
    makes a system actor; a host user whose id happens to start with
    ``system:`` is still a person, checked like any other.

    >>> Actor.system("nightly").user_id
    'system:nightly'
    >>> Actor.system("nightly").is_system, Actor("head-of-it", {"oak"}).is_system
    (True, False)
    """

    user_id: str = attrs.field(validator=_check_user_id)
    admin_site_ids: frozenset[str] = attrs.field(factory=frozenset, converter=_freeze_ids)
    # Not an __init__ argument: only Actor.system() sets it, so no host data
    # (a user id, a deserialised dict) can make a person trusted.
    _system: bool = attrs.field(default=False, init=False)

    @classmethod
    def system(cls, name: str) -> Actor:
        """A trusted non-person (a scheduled job, the demo) that may run any trust.

        ``name`` says which job it is, for the Import Log: its events carry
        ``actor_id`` ``"system:<name>"``. It still cannot configure a child
        site: Azure is configured at the Trust.
        """
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"Actor.system: name must be a non-empty string, got {show(name)}")
        actor = cls(_SYSTEM_PREFIX + name.strip())
        object.__setattr__(actor, "_system", True)
        return actor

    @property
    def is_system(self) -> bool:
        """Whether this is a trusted non-person made by :meth:`Actor.system`."""
        return self._system


def authorize(actor: Actor, site_id: str, hierarchy: TrustHierarchy) -> Site:
    """Check that ``actor`` may connect, configure or import at ``site_id``.

    Returns the Trust to configure. A child site raises
    :class:`ChildSiteConfigurationError` (with the Trust's id); an actor who is
    not an Admin of that Trust raises :class:`NotAuthorizedError`. Being Admin
    of a child school does not make anyone Admin of its Trust. A system actor
    (:meth:`Actor.system`) may act at any Trust, never at a child site.
    """
    if not isinstance(actor, Actor):
        raise NotAuthorizedError(
            f"expected an Actor (a person, or Actor.system(name) for a scheduled job), got {show(actor)}"
        )
    trust = hierarchy.require_config_site(site_id)
    if actor.is_system:
        return trust
    if trust.id not in actor.admin_site_ids:
        raise NotAuthorizedError(
            f"user {actor.user_id!r} needs the Admin role at site {trust.id!r} "
            "to connect, configure or import Microsoft Azure"
        )
    return trust
