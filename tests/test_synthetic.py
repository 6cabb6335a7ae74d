"""The generated fixtures are pinned: the same seed gives byte-identical output.

The demo's ``sample_trust.json``, the benchmarks and the fault tests all rest
on :func:`~calm_azure_sync.testing.synthetic.generate_tenant` and
:func:`~calm_azure_sync.demo.build_sample.build` being deterministic. These
hashes were taken before either function was split into helpers, so a
refactor that changes one byte (an extra ``rng`` draw, a reordered key)
fails here. A deliberate change of the output updates the hashes, and
regenerates ``sample_trust.json`` with ``python -m calm_azure_sync.demo.build_sample``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from calm_azure_sync.demo import build_sample
from calm_azure_sync.testing.synthetic import SyntheticTenant, generate_tenant


def _digest(tenant: SyntheticTenant) -> str:
    """One hash of everything a tenant carries: the fixture's JSON bytes, the sites, the mappings."""
    blob = "\n".join(
        [
            json.dumps(tenant.fixture, sort_keys=False, separators=(",", ":")),
            repr(tenant.hierarchy),
            repr(tenant.config),
            str(tenant.memberships),
        ]
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


# Each case walks other branches: guests/disabled/service accounts, no schools,
# no nesting, only some groups mapped, another seed and domain.
CASES: list[tuple[dict[str, Any], str]] = [
    ({}, "06dd04552675a888724b557ce6b8680818e34d4f7582bd2f099b0dc94976bd9f"),
    ({"users": 300, "groups": 12, "seed": 7}, "691815c43526953efe3339ecc867c85a3f2032a2942805713714f11acbff7eaa"),
    (
        {"users": 200, "groups": 9, "guest_ratio": 0.2, "disabled_ratio": 0.2, "service_ratio": 0.2, "seed": 3},
        "88462c1462173644de41a9bba09e61f40b8f61a324b2c0649fc83cf528ad4d8b",
    ),
    ({"users": 50, "groups": 5, "schools": 0, "nesting": False, "domain": "elm.sch.uk"}, "ef01c89973ef7c31df5d64e40db98aa0a43ee880663d7271c2578e3b29620f73"),
    ({"users": 120, "groups": 30, "mapped_groups": 11, "memberships_per_user": 40}, "2102555dceda9ef91136521720c82b4adf8c2efda162108c22369c330fe1040b"),
]


@pytest.mark.parametrize(("options", "expected"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_generate_tenant_output_is_pinned(options: dict[str, Any], expected: str) -> None:
    assert _digest(generate_tenant(**options)) == expected


def test_generate_tenant_is_deterministic_by_seed() -> None:
    assert _digest(generate_tenant(users=80, seed=5)) == _digest(generate_tenant(users=80, seed=5))
    assert _digest(generate_tenant(users=80, seed=5)) != _digest(generate_tenant(users=80, seed=6))


def test_build_sample_regenerates_the_committed_sample_byte_for_byte() -> None:
    text = json.dumps(build_sample.build(), indent=1) + "\n"
    assert text == build_sample.OUT.read_text("utf-8"), (
        "sample_trust.json differs from build(): run python -m calm_azure_sync.demo.build_sample"
    )
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == "51f29d57113aa972ca51d2ace0f6bc93df4433e0cc1a1e37b8e86f64d1d0c9e6"
