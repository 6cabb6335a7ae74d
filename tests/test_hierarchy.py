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


# -- system actors: a scheduled job ----------------------------------------------------------


def test_a_system_actor_may_run_any_trust_but_never_a_child_site(hierarchy):
    nightly = Actor.system("nightly")
    assert nightly.user_id == "system:nightly"
    assert nightly.is_system and not Actor("u-head", {"oak"}).is_system
    assert authorize(nightly, "oak", hierarchy).id == "oak"
    assert authorize(nightly, "solo", hierarchy).id == "solo"
    with pytest.raises(ChildSiteConfigurationError) as caught:
        authorize(nightly, "ash-nursery", hierarchy)
    assert caught.value.trust_site_id == "oak"
    with pytest.raises(ConfigError, match="unknown site"):
        authorize(nightly, "nowhere", hierarchy)


def test_a_person_whose_id_looks_like_a_system_actor_is_still_a_person(hierarchy):
    # Only Actor.system() makes a trusted actor: a host user id is data, never a credential.
    impostor = Actor("system:nightly")
    assert not impostor.is_system and impostor != Actor.system("nightly")
    with pytest.raises(NotAuthorizedError):
        authorize(impostor, "oak", hierarchy)


@pytest.mark.parametrize("name", ["", "   ", None, 3, ["nightly"]])
def test_a_system_actor_needs_a_name(name):
    with pytest.raises(ConfigError, match=r"Actor\.system: name must be a non-empty string"):
        Actor.system(name)  # type: ignore[arg-type]


async def test_a_system_actors_events_carry_its_name():
    from calm_azure_sync import (
        GroupMapping,
        InMemoryAuditSink,
        InMemoryDirectory,
        InMemoryUserStore,
        Reconciler,
        SyncConfig,
    )

    directory = InMemoryDirectory.from_dict(
        {"users": [{"id": "u1", "mail": "ann@school.org"}], "groups": [{"id": "g1"}], "members": {"g1": ["u1"]}}
    )
    audit = InMemoryAuditSink()
    sites = TrustHierarchy([Site("oak"), Site("birch", parent_id="oak")])
    reconciler = Reconciler(directory, InMemoryUserStore(), audit, sites)
    report = await reconciler.run(SyncConfig("oak", [GroupMapping("g1", "birch", {"Risk": "Member"})]),
                                  actor=Actor.system("nightly"))
    assert report.ok, report.errors
    assert audit.events and {event.actor_id for event in audit.events} == {"system:nightly"}


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((None,), "Actor.user_id"),
        ((42,), "Actor.user_id"),
        (("u1", 7), "Actor.admin_site_ids"),
        (("u1", {"oak": True}), "Actor.admin_site_ids"),
        (("u1", {"oak", 3}), "Actor.admin_site_ids"),
        (("u1", [None]), "Actor.admin_site_ids"),
    ],
)
def test_actor_fields_are_checked(args, field):
    with pytest.raises(ConfigError, match=field):
        Actor(*args)


def test_authorize_refuses_what_is_not_an_actor(hierarchy):
    with pytest.raises(NotAuthorizedError, match="expected an Actor"):
        authorize("u-head", "oak", hierarchy)  # type: ignore[arg-type]


@pytest.mark.parametrize("sites", [Site("oak"), "oak", None, 3, {"oak": Site("oak")}])
def test_sites_must_be_a_list_of_sites(sites):
    with pytest.raises(ConfigError, match="sites: expected a list of Site"):
        TrustHierarchy(sites)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"id": ""}, "Site.id"),
        ({"id": 3}, "Site.id"),
        ({"id": "oak", "name": None}, "Site.name"),
        ({"id": "oak", "name": 3}, "Site.name"),
        ({"id": "oak", "parent_id": ""}, "Site.parent_id"),
        ({"id": "oak", "parent_id": ["trust"]}, "Site.parent_id"),
    ],
)
def test_site_fields_are_checked_with_config_error(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        Site(**kwargs)
