"""Trusts and their child sites, and who may configure the sync.

A Trust is a site with children; a standalone site is its own Trust. Azure is
connected and configured once, at the Trust, and every child inherits it. Only
an Admin of the Trust may connect, configure or start an import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from .errors import ChildSiteConfigurationError, ConfigError, NotAuthorizedError
from .model import Site

__all__ = ["Actor", "TrustHierarchy", "authorize"]


def _freeze_sites(sites: Iterable[Site]) -> tuple[Site, ...]:
    frozen = tuple(sites)
    for index, site in enumerate(frozen):
        if not isinstance(site, Site):
            raise ConfigError(f"sites[{index}]: expected a Site, got {type(site).__name__}")
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
        return frozenset([ids])
    return frozenset(ids)


@attrs.frozen
class Actor:
    """Who is acting: a host user and the sites where they hold the Admin role."""

    user_id: str
    admin_site_ids: frozenset[str] = attrs.field(factory=frozenset, converter=_freeze_ids)


def authorize(actor: Actor, site_id: str, hierarchy: TrustHierarchy) -> Site:
    """Check that ``actor`` may connect, configure or import at ``site_id``.

    Returns the Trust to configure. A child site raises
    :class:`ChildSiteConfigurationError` (with the Trust's id); an actor who is
    not an Admin of that Trust raises :class:`NotAuthorizedError`. Being Admin
    of a child school does not make anyone Admin of its Trust.
    """
    trust = hierarchy.require_config_site(site_id)
    if trust.id not in actor.admin_site_ids:
        raise NotAuthorizedError(
            f"user {actor.user_id!r} needs the Admin role at site {trust.id!r} "
            "to connect, configure or import Microsoft Azure"
        )
    return trust
