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
