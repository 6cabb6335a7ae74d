import json

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


def test_emails_compare_as_lower_of_the_whole_address():
    # A capital sigma at the end of a word lowers to the final sigma only in context.
    assert email_key("\u039f\u0394\u03a5\u03a3\u03a3\u0395\u0391\u03a3@x.gr") == "\u03bf\u03b4\u03c5\u03c3\u03c3\u03b5\u03b1\u03c2@x.gr"
    assert email_key("\u039f\u0394\u03a5\u03a3\u03a3\u0395\u0391\u03a3@x.gr") == email_key("\u03bf\u03b4\u03c5\u03c3\u03c3\u03b5\u03b1\u03c2@x.gr")


def test_the_kelvin_sign_stays_itself_and_the_rest_still_lowers_as_a_whole():
    assert email_key("\u212aate@school.org") != email_key("kate@school.org")
    assert email_key("\u212aATE@SCHOOL.ORG") == "\u212aate@school.org"
    # The sigma before a Kelvin sign is not final (a letter follows); after the last one it is.
    assert email_key("\u0391\u03a3\u212a\u0391\u03a3@x.gr") == "\u03b1\u03c3\u212a\u03b1\u03c2@x.gr"


@given(st.text(st.sampled_from("aK\u212a\u03a3\u03c3\u0391\u0130. @\u00df\u00c9-") | st.characters(), max_size=25))
def test_email_key_is_whole_string_lower_except_that_kelvin_signs_stay(text):
    key = email_key(text)
    assert key.count("\u212a") == text.count("\u212a")
    assert key.replace("\u212a", "k") == text.strip().lower()


def test_group_from_graph_and_back():
    group = DirectoryGroup.from_graph({"id": "g1", "displayName": "Staff", "mailEnabled": True, "visibility": "x"})
    assert group == DirectoryGroup("g1", "Staff", mail_enabled=True)
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


# -- text hygiene: what Graph may send that no store can write ---------------------------------

USER_TEXT_FIELDS = {
    "displayName": "display_name", "mail": "mail", "userPrincipalName": "user_principal_name",
    "givenName": "given_name", "surname": "surname", "userType": "user_type", "creationType": "creation_type",
}


@pytest.mark.parametrize(("key", "field"), USER_TEXT_FIELDS.items())
def test_a_lone_surrogate_from_graph_json_becomes_the_replacement_character(key, field):
    # "\ud83d" alone is a valid JSON escape (half an emoji); json.loads keeps it, UTF-8 cannot encode it.
    data = json.loads('{"id": "u1", "KEY": "Zo\\ud83d and \\udc00 and \\u00eb"}'.replace("KEY", key))
    user = DirectoryUser.from_graph(data)
    assert getattr(user, field) == "Zo\ufffd and \ufffd and \u00eb"
    getattr(user, field).encode("utf-8")  # storable


def test_clean_and_ascii_text_from_graph_is_kept_as_is():
    data = {"id": "u1", "displayName": "Zo\u00eb \U0001f600", "mail": "zoe@school.org", "surname": "\u7528\u6237"}
    user = DirectoryUser.from_graph(data)
    assert (user.display_name, user.mail, user.surname) == ("Zo\u00eb \U0001f600", "zoe@school.org", "\u7528\u6237")
    assert user.display_name is data["displayName"]  # not copied


def test_a_group_from_graph_json_gets_the_same_hygiene():
    group = DirectoryGroup.from_graph(json.loads('{"id": "g1", "displayName": "Staff \\ud83d", "description": "\\udfff"}'))
    assert (group.display_name, group.description) == ("Staff \ufffd", "\ufffd")


@pytest.mark.parametrize("kind", [DirectoryUser, DirectoryGroup])
def test_an_id_that_cannot_be_stored_is_refused_not_repaired(kind):
    # Repairing ids could make two users one: Graph sends GUIDs, so this is data Graph never sends.
    with pytest.raises(DirectoryError, match="'id' should be text without surrogates") as caught:
        kind.from_graph({"id": "u\ud800", "displayName": "X"})
    assert caught.value.code == "invalid_data"


SURROGATES = st.integers(0xD800, 0xDFFF).map(chr)


@given(st.text(st.characters() | SURROGATES, max_size=30).filter(lambda text: not text.isascii()))
def test_from_graph_text_always_encodes_as_utf8(text):
    user = DirectoryUser.from_graph({"id": "u1", "displayName": text, "mail": text})
    user.display_name.encode("utf-8")
    user.mail.encode("utf-8")
    assert len(user.display_name) == len(text)  # one replacement per bad code point, nothing else changes
