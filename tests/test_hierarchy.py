import pytest

from calm_azure_sync import (
    Actor,
    ChildSiteConfigurationError,
    ConfigError,
    NotAuthorizedError,
    Site,
    TrustHierarchy,
    authorize,
)


@pytest.fixture
def hierarchy():
    return TrustHierarchy(
        [
            Site("oak", "Oak Trust"),
            Site("birch", "Birch High", "oak"),
            Site("ash", "Ash Primary", "oak"),
            Site("ash-nursery", "Ash Nursery", "ash"),
            Site("solo", "Standalone School"),
        ]
    )


def test_root_and_children(hierarchy):
    assert hierarchy.root_of("ash-nursery").id == "oak"
    assert hierarchy.root_of("solo").id == "solo"
    assert hierarchy.is_child("birch")
    assert not hierarchy.is_child("oak")
    assert hierarchy.sites_under("oak") == {"oak", "birch", "ash", "ash-nursery"}
    assert hierarchy.sites_under("ash") == {"ash", "ash-nursery"}
    assert hierarchy.sites_under("solo") == {"solo"}


def test_configuration_lives_at_the_trust(hierarchy):
    assert hierarchy.require_config_site("oak").id == "oak"
    assert hierarchy.require_config_site("solo").id == "solo"
    with pytest.raises(ChildSiteConfigurationError) as caught:
        hierarchy.require_config_site("ash-nursery")
    assert caught.value.trust_site_id == "oak"
    assert "oak" in str(caught.value)


def test_unknown_site_is_a_config_error(hierarchy):
    with pytest.raises(ConfigError, match="unknown site 'nope'"):
        hierarchy.root_of("nope")


def test_broken_site_graphs_are_refused_with_every_problem():
    with pytest.raises(ConfigError) as caught:
        TrustHierarchy(
            [
                Site("a", parent_id="b"),
                Site("b", parent_id="a"),
                Site("c", parent_id="missing"),
                Site("d"),
                Site("d"),
                Site("e", parent_id="e"),
            ]
        )
    problems = caught.value.problems
    assert any("duplicate site id 'd'" in p for p in problems)
    assert any("unknown parent site 'missing'" in p for p in problems)
    assert sum("cycle" in p for p in problems) == 2  # a<->b once, e->e once
    assert len(problems) == 4


def test_sites_must_be_sites():
    with pytest.raises(ConfigError, match=r"sites\[1\]"):
        TrustHierarchy([Site("a"), "b"])  # type: ignore[list-item]


def test_only_an_admin_of_the_trust_may_configure(hierarchy):
    admin = Actor("u-head", {"oak"})
    assert authorize(admin, "oak", hierarchy).id == "oak"
    with pytest.raises(NotAuthorizedError):
        authorize(Actor("u-teacher", set()), "oak", hierarchy)
    with pytest.raises(NotAuthorizedError):
        authorize(Actor("u-school-admin", {"birch"}), "oak", hierarchy)


def test_child_site_admin_is_sent_to_the_trust(hierarchy):
    with pytest.raises(ChildSiteConfigurationError) as caught:
        authorize(Actor("u-school-admin", {"birch"}), "birch", hierarchy)
    assert caught.value.trust_site_id == "oak"
