import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calm_azure_sync import (
    ChildSiteConfigurationError,
    ConfigError,
    ExclusionPolicy,
    GroupMapping,
    RemovalPolicy,
    Site,
    SyncConfig,
    TrustHierarchy,
)

HIERARCHY = TrustHierarchy([Site("oak"), Site("birch", parent_id="oak"), Site("elm")])


def make_config(**overrides):
    values = {
        "trust_site_id": "oak",
        "mappings": [GroupMapping("g-staff", "birch", {"Risk": "Member"}), GroupMapping("g-it", "oak", {"Risk": "Admin"})],
        "exclusions": ExclusionPolicy(patterns=["*service*"], user_ids=["u-x"]),
        "removal": RemovalPolicy("deactivate", 0.5, 3),
        "include_guests": True,
        "modules": {"Risk", "Policies"},
        "tenant_id": "t-1",
    }
    values.update(overrides)
    return SyncConfig(**values)


def test_round_trip_through_json():
    config = make_config()
    assert SyncConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    minimal = SyncConfig("oak", [])
    assert SyncConfig.from_dict(minimal.to_dict()) == minimal


def test_validate_accepts_a_good_config():
    make_config().validate(HIERARCHY)


def test_validate_sends_child_sites_to_the_trust():
    with pytest.raises(ChildSiteConfigurationError) as caught:
        make_config(trust_site_id="birch", mappings=[]).validate(HIERARCHY)
    assert caught.value.trust_site_id == "oak"


def test_validate_lists_every_problem_with_its_path():
    config = make_config(
        mappings=[
            GroupMapping("g1", "birch", {"Risk": "Member"}),
            GroupMapping("g1", "elm", {"Risk": "Member"}),
            GroupMapping("g1", "birch", {"Risk": "Admin", "Payroll": "Member"}),
        ]
    )
    with pytest.raises(ConfigError) as caught:
        config.validate(HIERARCHY)
    assert caught.value.problems == [
        "mappings[1].site_id: site 'elm' is not part of trust 'oak'",
        "mappings[2].roles.Payroll: unknown module 'Payroll' (known: Policies, Risk)",
        "mappings[2]: group 'g1' is already mapped to site 'birch' by mappings[0]",
    ]


def test_from_dict_reports_every_problem_with_paths():
    with pytest.raises(ConfigError) as caught:
        SyncConfig.from_dict(
            {
                "trust_site_id": "",
                "include_guests": "yes",
                "mappings": [{"group_id": "g", "site_id": "s", "roles": {"Risk": "Boss"}}, 5],
                "removal": {"mode": "delete", "max_removal_ratio": 2},
                "colour": "blue",
            }
        )
    problems = caught.value.problems
    assert "colour: unknown setting" in problems
    assert any(p.startswith("trust_site_id:") for p in problems)
    assert any(p.startswith("include_guests:") for p in problems)
    assert any(p.startswith("mappings[0].roles.Risk:") for p in problems)
    assert any(p.startswith("mappings[1]:") for p in problems)
    assert any(p.startswith("removal.mode:") or p.startswith("removal.max_removal_ratio:") for p in problems)


@pytest.mark.parametrize("bad", [None, [], "config", 3, {"trust_site_id": "t", "mappings": {}}])
def test_from_dict_rejects_junk_with_config_error(bad):
    with pytest.raises(ConfigError):
        SyncConfig.from_dict(bad)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
config_keys = st.sampled_from(
    ["trust_site_id", "mappings", "exclusions", "removal", "modules", "include_guests", "tenant_id", "version"]
)


@given(json_values | st.dictionaries(config_keys, json_values))
def test_from_dict_raises_only_config_error_on_random_json(data):
    with contextlib.suppress(ConfigError):
        SyncConfig.from_dict(data)


@given(
    st.dictionaries(
        st.sampled_from(["mode", "max_removal_ratio", "min_removals_to_hold"]), json_values
    ).map(lambda removal: {"trust_site_id": "oak", "mappings": [], "removal": removal})
)
def test_removal_settings_raise_only_config_error(data):
    with contextlib.suppress(ConfigError):
        SyncConfig.from_dict(data)


def test_removal_hold_threshold():
    policy = RemovalPolicy(max_removal_ratio=0.2, min_removals_to_hold=10)
    assert not policy.should_hold(9, 20)  # fewer than the minimum
    assert policy.should_hold(10, 20)  # 50% and at least 10
    assert not policy.should_hold(10, 100)  # exactly 10%: under the ratio
    assert not policy.should_hold(20, 100)  # exactly 20% is not "more than"
    assert policy.should_hold(21, 100)
    with pytest.raises(ConfigError):
        RemovalPolicy(mode="delete")  # type: ignore[arg-type]


# -- the constructor checks its input, like from_dict ------------------------------------------

MAPPING = GroupMapping("g-staff", "birch", {"Risk": "Member"})


def test_exclusions_may_be_a_list_of_patterns_or_the_dict_to_dict_writes():
    # Before: accepted, then AttributeError at run time ("list" has no attribute "reason_excluded").
    assert SyncConfig("oak", [MAPPING], exclusions=["noreply@*", "*.bot@*"]).exclusions == ExclusionPolicy(
        patterns=["noreply@*", "*.bot@*"]
    )
    assert SyncConfig("oak", [MAPPING], exclusions=("noreply@*",)).exclusions.patterns == ("noreply@*",)
    as_dict = {"patterns": ["noreply@*"], "user_ids": ["u-1"]}
    assert SyncConfig("oak", [MAPPING], exclusions=as_dict).exclusions == ExclusionPolicy(**as_dict)


def test_mappings_and_removal_may_be_given_as_their_dicts():
    config = make_config()
    rebuilt = SyncConfig(
        "oak",
        [mapping.to_dict() for mapping in config.mappings.mappings],
        exclusions=config.exclusions.to_dict(),
        removal=config.to_dict()["removal"],
        include_guests=True,
        modules=["Risk", "Policies"],
        tenant_id="t-1",
    )
    assert rebuilt == config
    assert SyncConfig("oak", [MAPPING], removal={"mode": "keep"}).removal == RemovalPolicy("keep")


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"exclusions": "noreply@*"}, "exclusions: expected an ExclusionPolicy, a list of email patterns"),
        ({"exclusions": ["a b"]}, r"exclusions\.patterns\[0\]: 'a b' has characters"),
        ({"exclusions": [3]}, r"exclusions\.patterns\[0\]: must be a string"),
        ({"exclusions": {"patterns": [], "nope": 1}}, r"exclusions\.nope: unknown setting"),
        ({"exclusions": 42}, "exclusions: expected"),
        ({"mappings": [MAPPING, {"group_id": "g", "site_id": "birch"}]}, r"mappings\[1\]\.roles: required"),
        ({"mappings": [{"group_id": "g", "site_id": "birch", "roles": {"Risk": "boss"}}]},
         r"mappings\[0\]\.roles\.Risk: 'boss' is not a role"),
        ({"mappings": [MAPPING, "g-staff"]}, r"mappings\[1\]: expected a GroupMapping or a dict"),
        ({"mappings": [{"group_id": "g", "site_id": "birch", "roles": {"Risk": "Member"}, "x": 1}]},
         r"mappings\[0\]\.x: unknown setting"),
        ({"mappings": "g-staff"}, "mappings: expected a list of GroupMapping"),
        ({"mappings": None}, "mappings: expected a list of GroupMapping"),
        ({"removal": "keep"}, "removal: expected a RemovalPolicy or a dict"),
        ({"removal": {"mode": "delete"}}, r"removal\.mode: 'delete' is not one of"),
        ({"removal": {"mode": "keep", "ratio": 1}}, r"removal\.ratio: unknown setting"),
        ({"trust_site_id": None}, "trust_site_id: must be a non-empty string"),
        ({"trust_site_id": 7}, "trust_site_id: must be a non-empty string, got int 7"),
        ({"trust_site_id": " "}, "trust_site_id: must be a non-empty string"),
        ({"include_guests": "no"}, "include_guests: must be true or false, got str 'no'"),
        ({"include_guests": 1}, "include_guests: must be true or false"),
        ({"tenant_id": 5}, "tenant_id: must be a non-empty string or None"),
        ({"tenant_id": ""}, "tenant_id: must be a non-empty string or None"),
        ({"modules": 5}, "modules: expected a list of module names"),
        ({"modules": ["Risk", 3]}, r"modules\[1\]: must be a non-empty string, got int 3"),
        ({"modules": {"Risk": True}}, "modules: expected a list of module names"),
    ],
)
def test_the_constructor_refuses_wrong_types_naming_the_field(overrides, problem):
    with pytest.raises(ConfigError, match=problem):
        make_config(**overrides)


@given(st.dictionaries(
    st.sampled_from(["trust_site_id", "mappings", "exclusions", "removal", "include_guests", "modules", "tenant_id"]),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                 max_leaves=8),
))
def test_the_constructor_raises_only_config_error(overrides):
    with contextlib.suppress(ConfigError):
        make_config(**overrides)
