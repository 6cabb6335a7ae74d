import pytest
from hypothesis import given
from hypothesis import strategies as st

from calm_azure_sync import ConfigError, DirectoryError, DirectoryGroup, DirectoryUser, Role
from calm_azure_sync.model import email_key

roles = st.sampled_from(list(Role))


def test_roles_are_ordered_member_manager_admin():
    assert Role.MEMBER < Role.MANAGER < Role.ADMIN
    assert max([Role.MANAGER, Role.ADMIN, Role.MEMBER]) is Role.ADMIN
    assert [role.value for role in Role] == ["Member", "Manager", "Admin"]


@pytest.mark.parametrize("text", ["admin", "ADMIN", " Admin ", "aDmIn"])
def test_role_parse_ignores_case_and_space(text):
    assert Role.parse(text) is Role.ADMIN


@pytest.mark.parametrize("text", ["", "owner", "Admins", None, 3, ["Admin"]])
def test_role_parse_rejects_anything_else_with_config_error(text):
    with pytest.raises(ConfigError, match="is not a role"):
        Role.parse(text)


@given(roles, roles, roles)
def test_role_join_is_a_join(a, b, c):
    assert Role.join(a, b) == Role.join(b, a)
    assert Role.join(Role.join(a, b), c) == Role.join(a, Role.join(b, c))
    assert Role.join(a, a) == a
    assert Role.join(a, b) >= a


def test_user_from_graph_reads_documented_user():
    user = DirectoryUser.from_graph(
        {
            "businessPhones": [],
            "displayName": "Conf Room Adams",
            "givenName": None,
            "mail": "Adams@contoso.com",
            "surname": None,
            "userPrincipalName": "Adams@contoso.com",
            "id": "6ea91a8d-e32e-41a1-b7bd-d2d185eed0e0",
        }
    )
    assert user.id == "6ea91a8d-e32e-41a1-b7bd-d2d185eed0e0"
    assert user.email == "Adams@contoso.com"
    assert user.account_enabled is True
    assert user.user_type == "Member"
    assert user.assigned_license_count is None


def test_user_from_graph_reads_selected_fields():
    user = DirectoryUser.from_graph(
        {
            "id": "u1",
            "accountEnabled": False,
            "userType": "Guest",
            "assignedLicenses": [{"disabledPlans": [], "skuId": "x"}],
            "onPremisesSyncEnabled": True,
            "creationType": "Invitation",
            "@odata.type": "#microsoft.graph.user",
        }
    )
    assert (user.account_enabled, user.user_type, user.assigned_license_count) == (False, "Guest", 1)
    assert user.on_premises_sync_enabled is True
    assert user.creation_type == "Invitation"
    assert user.is_guest


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "id"),
        ({"id": ""}, "id"),
        ({"id": 7}, "id"),
        ({"id": "u", "mail": 5}, "mail"),
        ({"id": "u", "accountEnabled": "yes"}, "accountEnabled"),
        ({"id": "u", "assignedLicenses": "none"}, "assignedLicenses"),
    ],
)
def test_user_from_graph_rejects_wrong_types_naming_the_field(data, field):
    with pytest.raises(DirectoryError, match=field) as caught:
        DirectoryUser.from_graph(data)
    assert caught.value.code == "invalid_data"


def test_user_from_graph_rejects_non_objects():
    with pytest.raises(DirectoryError, match="JSON object"):
        DirectoryUser.from_graph(["id", "u1"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mail", "upn", "expected"),
    [
        ("ann@school.org", "ann@tenant.onmicrosoft.com", "ann@school.org"),
        (None, "ann@school.org", "ann@school.org"),
        ("", "ann@school.org", "ann@school.org"),
        (None, "ann_home.org#EXT#@tenant.onmicrosoft.com", None),
        ("ann@home.org", "ann_home.org#EXT#@tenant.onmicrosoft.com", "ann@home.org"),
        ("  ann@school.org ", None, "ann@school.org"),
        ("ann smith@school.org", None, None),
        ("not-an-address", None, None),
        (None, None, None),
    ],
)
def test_user_email_prefers_mail_then_non_guest_upn(mail, upn, expected):
    assert DirectoryUser("u", mail=mail, user_principal_name=upn).email == expected


def test_emails_compare_case_insensitively_but_lookalikes_differ():
    assert email_key("Ann.Smith@School.ORG") == email_key("ann.smith@school.org")
    assert email_key("\u0430nn@school.org") != email_key("ann@school.org")  # Cyrillic a
    assert email_key("strasse@x.de") != email_key("stra\u00dfe@x.de")


def test_group_from_graph_and_back():
    group = DirectoryGroup.from_graph({"id": "g1", "displayName": "Staff", "mailEnabled": True})
    assert group == DirectoryGroup("g1", "Staff")
    assert DirectoryGroup.from_graph(group.to_graph()) == group


@given(
    st.builds(
        DirectoryUser,
        id=st.text(min_size=1).filter(str.strip),
        display_name=st.none() | st.text(),
        mail=st.none() | st.emails(),
        account_enabled=st.booleans(),
        assigned_license_count=st.none() | st.integers(0, 3),
        on_premises_sync_enabled=st.none() | st.booleans(),
    )
)
def test_user_graph_round_trip(user):
    assert DirectoryUser.from_graph(user.to_graph()) == user


@given(st.dictionaries(st.text(max_size=20), st.none() | st.booleans() | st.integers() | st.text() | st.lists(st.none())))
def test_from_graph_never_crashes_with_anything_but_directory_error(data):
    data.setdefault("id", "u1")
    try:
        DirectoryUser.from_graph(data)
        DirectoryGroup.from_graph(data)
    except DirectoryError:
        pass
