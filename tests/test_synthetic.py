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


# (v0.4 [R]: the hashes moved once, when SyncConfig and GroupMapping grew their tenant fields and so their
# reprs; the fixture, the hierarchy, the memberships and config.to_dict() stayed byte for byte the same.)
# Each case walks other branches: guests/disabled/service accounts, no schools,
# no nesting, only some groups mapped, another seed and domain.
CASES: list[tuple[dict[str, Any], str]] = [
    ({}, "94b2b3b9e0fd7a61df83c059011abe36cfd885067ec0c5ff68c23df2cbf66a8a"),
    ({"users": 300, "groups": 12, "seed": 7}, "daee1a5f8f71d9e551b77ac7df39910d59f3d66ef0c5501914f379a1321063d9"),
    (
        {"users": 200, "groups": 9, "guest_ratio": 0.2, "disabled_ratio": 0.2, "service_ratio": 0.2, "seed": 3},
        "eaef906f7b80905252777678760e0433fd29a581c5ed935f51a8aaa78d815bd6",
    ),
    ({"users": 50, "groups": 5, "schools": 0, "nesting": False, "domain": "elm.sch.uk"}, "5e0b3bad08d374f7a6577932ec0154e9aa236c8eb242f5f05784eb34be925de6"),
    ({"users": 120, "groups": 30, "mapped_groups": 11, "memberships_per_user": 40}, "f41aa916c5c0b45c4bc301dd42455bab8b08ed60bb48d5110ce8b5db7b752156"),
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
