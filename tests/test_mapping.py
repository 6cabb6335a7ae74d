import pytest
from hypothesis import given
from hypothesis import strategies as st

from calm_azure_sync import ConfigError, GroupMapping, MappingPolicy, Role


def test_roles_are_parsed_and_required():
    assert GroupMapping("g", "s", {"Risk": "admin"}).roles == {"Risk": Role.ADMIN}
    with pytest.raises(ConfigError, match="at least one module"):
        GroupMapping("g", "s", {})
    with pytest.raises(ConfigError, match=r"roles\.Risk"):
        GroupMapping("g", "s", {"Risk": "boss"})
    with pytest.raises(ConfigError, match="group_id"):
        GroupMapping("", "s", {"Risk": "Member"})


def test_highest_role_wins_where_groups_overlap():
    policy = MappingPolicy(
        [
            GroupMapping("g-staff", "birch", {"Risk": "Member", "Policies": "Member"}),
            GroupMapping("g-leaders", "birch", {"Risk": "Manager"}),
            GroupMapping("g-it", "birch", {"Risk": "Admin"}),
            GroupMapping("g-staff", "ash", {"Risk": "Member"}),
        ]
    )
    assert policy.group_ids == {"g-staff", "g-leaders", "g-it"}
    assert policy.access_for(["g-staff", "g-leaders"]) == {
        ("birch", "Risk"): Role.MANAGER,
        ("birch", "Policies"): Role.MEMBER,
        ("ash", "Risk"): Role.MEMBER,
    }
    assert policy.access_for(["g-unmapped"]) == {}


def test_reasons_name_every_group_giving_the_winning_role():
    policy = MappingPolicy(
        [
            GroupMapping("g-a", "birch", {"Risk": "Manager"}),
            GroupMapping("g-b", "birch", {"Risk": "Manager"}),
            GroupMapping("g-c", "birch", {"Risk": "Member"}),
        ]
    )
    assert policy.access_with_reasons(["g-c", "g-b", "g-a"]) == {
        ("birch", "Risk"): (Role.MANAGER, ("g-a", "g-b")),
    }


mappings = st.lists(
    st.builds(
        GroupMapping,
        group_id=st.sampled_from(["g1", "g2", "g3", "g4"]),
        site_id=st.sampled_from(["s1", "s2"]),
        roles=st.dictionaries(st.sampled_from(["Risk", "Policies"]), st.sampled_from(list(Role)), min_size=1),
    ),
    max_size=8,
)
group_sets = st.sets(st.sampled_from(["g1", "g2", "g3", "g4"]))


@given(mappings, group_sets, group_sets)
def test_access_merging_is_a_join(mapping_list, first, second):
    policy = MappingPolicy(mapping_list)
    a, b = policy.access_for(first), policy.access_for(second)
    both = policy.access_for(first | second)
    # union of groups = pointwise highest role of the two accesses
    expected = dict(a)
    for key, role in b.items():
        expected[key] = Role.join(expected[key], role) if key in expected else role
    assert both == expected
    assert policy.access_for(first | first) == a


@given(mappings, group_sets, st.randoms())
def test_access_does_not_depend_on_order(mapping_list, groups, random):
    shuffled = list(mapping_list)
    random.shuffle(shuffled)
    order = sorted(groups)
    random.shuffle(order)
    assert MappingPolicy(shuffled).access_with_reasons(order) == MappingPolicy(mapping_list).access_with_reasons(groups)


def test_a_group_mapping_reads_back_its_dict():
    mapping = GroupMapping("g", "birch", {"Risk": "admin", "Policies": "Member"})
    assert mapping.to_dict() == {"group_id": "g", "site_id": "birch", "roles": {"Policies": "Member", "Risk": "Admin"}}
    assert GroupMapping.from_dict(mapping.to_dict()) == mapping


@pytest.mark.parametrize(
    ("data", "problems"),
    [
        ("g", ["expected an object with group_id, site_id, roles, got str 'g'"]),
        ({"group_id": "g"}, ["site_id: required", "roles: required"]),
        ({"group_id": "g", "site_id": "s", "roles": {"Risk": "Admin"}, "role": "x"}, ["role: unknown setting"]),
        ({"group_id": 3, "site_id": "s", "roles": {"Risk": "Admin"}}, ["group_id: must be a non-empty string, got 3"]),
        ({"group_id": "g", "site_id": "s", "roles": ["Risk"]}, ["roles: expected a mapping of module to role, got list ['Risk']"]),
    ],
)
def test_group_mapping_from_dict_names_every_problem(data, problems):
    with pytest.raises(ConfigError) as caught:
        GroupMapping.from_dict(data)
    assert caught.value.problems == problems


def test_a_mapping_policy_takes_group_mappings_or_their_dicts_and_names_the_bad_item():
    as_dict = {"group_id": "g", "site_id": "s", "roles": {"Risk": "Admin"}}
    assert MappingPolicy([as_dict]) == MappingPolicy([GroupMapping.from_dict(as_dict)])
    with pytest.raises(ConfigError) as caught:
        MappingPolicy([as_dict, 3, {**as_dict, "site_id": ""}])
    assert caught.value.problems == [
        "mappings[1]: expected a GroupMapping or a dict with group_id, site_id and roles, got int 3",
        "mappings[2].site_id: must be a non-empty string, got ''",
    ]
    with pytest.raises(ConfigError, match="mappings: expected a list"):
        MappingPolicy(as_dict)  # type: ignore[arg-type]
