"""The bundled sample trust, for the demo, the docs and notebooks.

>>> sample = load_sample()
>>> sample.hierarchy.root_of("birch-high").name
'Oak Learning Trust'
>>> sorted(sample.graph_fixture)  # the tenant as Graph JSON, for FakeGraphServer
['groups', 'members', 'users']
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

import attrs

from ..directory.in_memory import InMemoryDirectory
from ..model import Site
from ..policies.config import SyncConfig
from ..policies.hierarchy import TrustHierarchy

__all__ = ["Sample", "load_sample", "seed_invited_users"]


@attrs.frozen
class Sample:
    """The Oak Learning Trust: sites, Azure directory, configuration, invited users."""

    hierarchy: TrustHierarchy
    directory: InMemoryDirectory
    config: SyncConfig
    invited: tuple[dict[str, Any], ...]
    raw: dict[str, Any] = attrs.field(repr=False)

    @property
    def graph_fixture(self) -> dict[str, Any]:
        """The sample tenant as Graph JSON: ``{"users": [...], "groups": [...], "members": {...}}``.

        The fixture format :meth:`InMemoryDirectory.from_dict
        <calm_azure_sync.InMemoryDirectory.from_dict>` and
        :class:`~calm_azure_sync.testing.FakeGraphServer` read (a fresh copy
        each time: a test may change it freely)::

            with FakeGraphServer(load_sample().graph_fixture) as graph: ...
        """
        return copy.deepcopy(self.raw["directory"])


def load_sample() -> Sample:
    """Read the bundled ``sample_trust.json``."""
    raw = json.loads(resources.files(__package__).joinpath("sample_trust.json").read_text("utf-8"))
    return Sample(
        hierarchy=TrustHierarchy(Site(s["id"], s["name"], s["parent_id"]) for s in raw["sites"]),
        directory=InMemoryDirectory.from_dict(raw["directory"]),
        config=SyncConfig.from_dict(raw["config"]),
        invited=tuple(raw["invited"]),
        raw=raw,
    )


async def seed_invited_users(store: Any, sample: Sample) -> None:
    """Add the sample's hand-invited users (and their manual grants) to a store."""
    for invited in sample.invited:
        user_id = await store.add_user(invited["email"], invited["display_name"])
        for grant in invited["grants"]:
            await store.grant(user_id, grant["site_id"], grant["module"], grant["role"])
