"""The domain model: roles, sites, and the directory's users and groups.

Directory objects are built from Graph JSON through named constructors
(``from_graph``): the constructors themselves stay plain, and everything
Graph may leave out (missing or ``null`` fields) takes its default. Data that
Graph should never send (no id, a number where a string belongs) is a
:class:`~calm_azure_sync.errors.DirectoryError` naming the field, never a crash.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Container, Iterable, Mapping, Sequence
from typing import Any

import attrs

from ._text import clean_text, is_clean, show
from .errors import ConfigError, DirectoryError

__all__ = ["DirectoryGroup", "DirectorySnapshot", "DirectoryUser", "Role", "Site", "email_key", "transitive_users"]


class Role(enum.Enum):
    """Access level per module, ordered ``MEMBER < MANAGER < ADMIN``.

    >>> Role.parse("manager") > Role.MEMBER
    True
    """

    MEMBER = "Member"
    MANAGER = "Manager"
    ADMIN = "Admin"

    # Comparisons read a plain int attribute set on each member below: the
    # planner compares roles hundreds of thousands of times per run, and
    # functools.total_ordering or dict look-ups keyed by enum members cost
    # several times more.
    _rank: int

    @property
    def rank(self) -> int:
        return self._rank

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Role):
            return NotImplemented
        return self._rank < other._rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Role):
            return NotImplemented
        return self._rank <= other._rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Role):
            return NotImplemented
        return self._rank > other._rank

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Role):
            return NotImplemented
        return self._rank >= other._rank

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def parse(cls, text: object) -> Role:
        """Read a role name, ignoring case and surrounding space; a ``Role`` passes through."""
        if isinstance(text, Role):
            return text
        if isinstance(text, str):
            found = _ROLE_BY_NAME.get(text.strip().lower())
            if found is not None:
                return found
        raise ConfigError(
            f"{text!r} is not a role: expected one of {', '.join(r.value for r in cls)}"
        )

    @staticmethod
    def join(first: Role, second: Role) -> Role:
        """The higher of two roles: how overlapping groups combine."""
        return first if first._rank >= second._rank else second


for _rank, _role in enumerate(Role):
    _role._rank = _rank
_ROLE_BY_NAME = {role.value.lower(): role for role in Role}


def _non_empty(name: str) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{name}: must be a non-empty string, got {show(value)}")

    return check


def _text(name: str) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: must be a string, got {type(value).__name__} {show(value)}")

    return check


@attrs.frozen
class Site:
    """A CalmCompliance site. A site with children is a Trust."""

    id: str = attrs.field(validator=_non_empty("Site.id"))
    name: str = attrs.field(default="", validator=_text("Site.name"))
    parent_id: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(_non_empty("Site.parent_id"))
    )


_KELVIN_SIGN = "\u212a"


def email_key(email: str) -> str:
    """The form under which two emails are the same address.

    Case is ignored, by ``str.lower()`` of the whole address (not letter by
    letter: a word-final capital sigma lowers to ``ς``, so ``ΟΔΥΣΣΕΑΣ@x.gr``
    is ``οδυσσεας@x.gr``; and not ``casefold``: ``ß`` and ``ss`` are
    different mailboxes), and surrounding space is dropped. Look-alike letters
    from other scripts (a Cyrillic a, U+0430) stay different, as they are
    different addresses; so does the Kelvin sign (U+212A), the one non-ASCII
    letter that ``lower()`` turns into an ASCII one (``k``).
    """
    email = email.strip()
    if email.isascii() or _KELVIN_SIGN not in email:
        return email.lower()
    # Lower the text between Kelvin signs, each piece with a Latin K standing
    # in for its neighbouring Kelvin sign: both are cased letters, so the
    # context-dependent rules (final sigma) see what they would see in the
    # whole address.
    pieces = email.split(_KELVIN_SIGN)
    last = len(pieces) - 1
    lowered = []
    for index, piece in enumerate(pieces):
        text = ("K" if index else "") + piece + ("K" if index < last else "")
        text = text.lower()
        lowered.append(text[1 if index else 0 : len(text) - 1 if index < last else len(text)])
    return _KELVIN_SIGN.join(lowered)


_WHITESPACE = re.compile(r"\s")


def _is_usable_email(value: str) -> bool:
    local, at, domain = value.rpartition("@")
    return bool(at and local and domain) and _WHITESPACE.search(value) is None


_NOT_YET = object()


def _derive_email(mail: str | None, user_principal_name: str | None) -> str | None:
    mail = (mail or "").strip()
    if mail:
        return mail if _is_usable_email(mail) else None
    upn = (user_principal_name or "").strip()
    if upn and "#ext#" not in upn.lower() and _is_usable_email(upn):
        return upn
    return None


@attrs.frozen
class DirectoryUser:
    """One Entra ID user, with just the fields the sync reads."""

    id: str
    display_name: str | None = None
    mail: str | None = None
    user_principal_name: str | None = None
    given_name: str | None = None
    surname: str | None = None
    account_enabled: bool = True
    user_type: str = "Member"
    assigned_license_count: int | None = None
    on_premises_sync_enabled: bool | None = None
    creation_type: str | None = None
    # The derived email, worked out on first use: the planner, the exclusion
    # policy and the audit log each ask for it, 100k users at a time.
    _email_memo: object = attrs.field(init=False, default=_NOT_YET, eq=False, repr=False)

    @property
    def is_guest(self) -> bool:
        """A B2B guest: ``userType`` Guest, or an ``#EXT#`` principal name."""
        return self.user_type.lower() == "guest" or "#ext#" in (self.user_principal_name or "").lower()

    @property
    def email(self) -> str | None:
        """``mail`` if set, else the UPN unless it is a guest ``#EXT#`` UPN, else ``None``.

        Surrounding space is dropped; a value that is no usable address (no
        ``@``, inner whitespace) counts as missing.
        """
        memo = self._email_memo
        if memo is _NOT_YET:
            memo = _derive_email(self.mail, self.user_principal_name)
            object.__setattr__(self, "_email_memo", memo)
        return memo  # type: ignore[return-value]

    # The properties to ask Graph for ($select): exactly what from_graph reads.
    GRAPH_SELECT = (
        "id",
        "displayName",
        "mail",
        "userPrincipalName",
        "givenName",
        "surname",
        "accountEnabled",
        "userType",
        "assignedLicenses",
        "onPremisesSyncEnabled",
        "creationType",
    )

    @classmethod
    def from_graph(cls, data: Mapping[str, Any]) -> DirectoryUser:
        """Build from a Graph ``user`` object (camelCase keys, as Graph sends them).

        Written field by field, not through _GraphReader: it runs once per user read, and these checks are its cost.
        """
        if type(data) is not dict and not isinstance(data, Mapping):
            raise _GraphReader(data, "user").id()  # raises the "must be a JSON object" error
        get = data.get
        user_id: Any = get("id")
        display_name = get("displayName")
        mail = get("mail")
        upn = get("userPrincipalName")
        given_name = get("givenName")
        surname = get("surname")
        user_type = get("userType")
        creation_type = get("creationType")
        enabled = get("accountEnabled")
        on_premises = get("onPremisesSyncEnabled")
        licenses = get("assignedLicenses")
        if (
            type(user_id) is not str
            or not user_id.strip()
            or type(display_name) not in _TEXT_OR_NONE or type(mail) not in _TEXT_OR_NONE
            or type(upn) not in _TEXT_OR_NONE or type(given_name) not in _TEXT_OR_NONE
            or type(surname) not in _TEXT_OR_NONE or type(user_type) not in _TEXT_OR_NONE
            or type(creation_type) not in _TEXT_OR_NONE
            or type(enabled) not in _FLAG_OR_NONE or type(on_premises) not in _FLAG_OR_NONE
            or type(licenses) not in _LIST_OR_NONE
        ):
            _check_user_fields(data)  # slow path, only for bad data
        if not (
            user_id.isascii()
            and (display_name is None or display_name.isascii())
            and (mail is None or mail.isascii())
            and (upn is None or upn.isascii())
            and (given_name is None or given_name.isascii())
            and (surname is None or surname.isascii())
            and (user_type is None or user_type.isascii())
            and (creation_type is None or creation_type.isascii())
        ):
            # Rare path (non-ASCII text): make every string storable, see _text.
            display_name, mail, upn, given_name, surname, user_type, creation_type = _storable_user_text(
                data, user_id, (display_name, mail, upn, given_name, surname, user_type, creation_type)
            )
        return cls(
            user_id,
            display_name,
            mail,
            upn,
            given_name,
            surname,
            True if enabled is None else enabled,
            user_type or "Member",
            None if licenses is None else len(licenses),
            on_premises,
            creation_type,
        )

    def to_graph(self) -> dict[str, Any]:
        """The Graph JSON this user would come from (for fixtures and fakes)."""
        data: dict[str, Any] = {
            "id": self.id,
            "displayName": self.display_name,
            "mail": self.mail,
            "userPrincipalName": self.user_principal_name,
            "givenName": self.given_name,
            "surname": self.surname,
            "accountEnabled": self.account_enabled,
            "userType": self.user_type,
            "onPremisesSyncEnabled": self.on_premises_sync_enabled,
            "creationType": self.creation_type,
        }
        if self.assigned_license_count is not None:
            data["assignedLicenses"] = [
                {"disabledPlans": [], "skuId": f"00000000-0000-0000-0000-{index:012d}"}
                for index in range(self.assigned_license_count)
            ]
        return data


@attrs.frozen
class DirectoryGroup:
    """One Entra ID group.

    ``group_types`` is Graph's ``groupTypes`` (``("Unified",)`` for a
    Microsoft 365 group, ``("DynamicMembership",)`` for a dynamic one, empty
    for a security or distribution group); ``security_enabled`` and
    ``mail_enabled`` are Graph's ``securityEnabled`` and ``mailEnabled``
    (``None`` when Graph did not say). Together they tell a mapping screen
    which kind of group it shows.
    """

    id: str
    display_name: str | None = None
    description: str | None = None
    mail: str | None = None
    group_types: tuple[str, ...] = ()
    security_enabled: bool | None = None
    mail_enabled: bool | None = None
    # The tenant the group lives in, when a trust reads several (API §13); Graph JSON does not carry it.
    tenant_id: str | None = None

    GRAPH_SELECT = ("id", "displayName", "description", "mail", "groupTypes", "securityEnabled", "mailEnabled")

    @classmethod
    def from_graph(cls, data: Mapping[str, Any]) -> DirectoryGroup:
        """Build from a Graph ``group`` object."""
        reader = _GraphReader(data, "group")
        types = reader.optional_list("groupTypes") or []
        if not all(isinstance(kind, str) for kind in types):
            raise reader._bad("groupTypes", "a list of strings or null", types)
        return cls(
            id=reader.id(),
            display_name=reader.optional_str("displayName"),
            description=reader.optional_str("description"),
            mail=reader.optional_str("mail"),
            group_types=tuple(clean_text(kind) for kind in types),
            security_enabled=reader.optional_bool("securityEnabled", default=None),
            mail_enabled=reader.optional_bool("mailEnabled", default=None),
        )

    def to_graph(self) -> dict[str, Any]:
        """The Graph JSON this group would come from (for fixtures and fakes)."""
        return {
            "id": self.id,
            "displayName": self.display_name,
            "description": self.description,
            "mail": self.mail,
            "groupTypes": list(self.group_types),
            "securityEnabled": self.security_enabled,
            "mailEnabled": self.mail_enabled,
        }


class _GraphReader:
    """Typed reads of one Graph object, failing with the field's name."""

    __slots__ = ("_data", "_kind")

    def __init__(self, data: object, kind: str) -> None:
        if not isinstance(data, Mapping):
            raise DirectoryError(
                f"a Graph {kind} must be a JSON object, got {type(data).__name__}",
                code="invalid_data",
            )
        self._data = data
        self._kind = kind

    def _bad(self, key: str, expected: str, value: object) -> DirectoryError:
        return DirectoryError(
            f"Graph {self._kind} {show(self._data.get('id'), 80)}: field {key!r} should be {expected}, "
            f"got {show(value, 80)}",
            code="invalid_data",
        )

    def id(self) -> str:
        value = self._data.get("id")
        if not isinstance(value, str) or not value.strip():
            raise self._bad("id", "a non-empty string", value)
        # An id is a key, so it is refused rather than repaired: two ids
        # repaired to the same text would be one user. Graph sends GUIDs.
        if not is_clean(value):
            raise self._bad("id", "text without surrogates", value)
        return value

    def optional_str(self, key: str) -> str | None:
        """A string field (made storable, see :func:`~calm_azure_sync._text.clean_text`) or ``None``."""
        value = self._data.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            return clean_text(value)
        raise self._bad(key, "a string or null", value)

    def optional_bool(self, key: str, default: bool | None) -> Any:
        value = self._data.get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        raise self._bad(key, "true, false or null", value)

    def optional_list(self, key: str) -> list[Any] | None:
        value = self._data.get(key)
        if value is None or isinstance(value, list):
            return value
        raise self._bad(key, "a list or null", value)


def _check_user_fields(data: Mapping[str, Any]) -> None:
    """Raise the error naming the first bad field of a Graph user (the slow path of ``from_graph``)."""
    reader = _GraphReader(data, "user")
    reader.id()
    for key in ("displayName", "mail", "userPrincipalName", "givenName", "surname", "userType", "creationType"):
        reader.optional_str(key)
    reader.optional_bool("accountEnabled", default=True)
    reader.optional_bool("onPremisesSyncEnabled", default=None)
    reader.optional_list("assignedLicenses")


# The exact types a Graph user's fields may have (JSON text, booleans, arrays, or null): from_graph's fast check.
_TEXT_OR_NONE = (str, type(None))
_FLAG_OR_NONE = (bool, type(None))
_LIST_OR_NONE = (list, type(None))


def _storable_user_text(
    data: Mapping[str, Any], user_id: str, texts: tuple[str | None, ...]
) -> tuple[Any, ...]:
    """A Graph user's text fields made storable; an id that cannot be stored as is is refused.

    The rare path of ``from_graph``, taken only when some text is not ASCII.
    """
    if not is_clean(user_id):
        raise _GraphReader(data, "user")._bad("id", "text without surrogates", user_id)
    return tuple(None if text is None else clean_text(text) for text in texts)


def transitive_users(
    group_id: str,
    direct_members: Mapping[str, Iterable[str]],
    users: Mapping[str, DirectoryUser],
    groups: Container[str],
) -> list[DirectoryUser]:
    """The users under ``group_id`` through nested groups, breadth first, each once; cycles are fine.

    ``direct_members`` maps a group id to its direct member ids (users,
    groups, or anything else, which is ignored); ``groups`` says which ids
    are groups. The one place nesting is resolved: ``InMemoryDirectory``
    answers ``group_members`` with it, and incremental sync resolves its kept
    direct memberships with it, so both see what Graph's transitive read sees.
    """
    found: list[DirectoryUser] = []
    seen_users: set[str] = set()
    seen_groups = {group_id}
    pending = [group_id]
    while pending:
        next_level: list[str] = []
        for current in pending:
            for member_id in direct_members.get(current, ()):
                user = users.get(member_id)
                if user is not None:
                    if member_id not in seen_users:
                        seen_users.add(member_id)
                        found.append(user)
                elif member_id in groups and member_id not in seen_groups:
                    seen_groups.add(member_id)
                    next_level.append(member_id)
        pending = next_level
    return found


@attrs.frozen
class DirectorySnapshot:
    """What one read of the mapped groups returned.

    ``members`` maps each group that was read completely to its users;
    ``unreadable`` maps each mapped group that was not to the reason, and
    ``stale`` names those that no longer exist in Azure (a 404).
    ``group_names`` holds the display names the directory gave, when it did.
    """

    members: Mapping[str, Sequence[DirectoryUser]]
    unreadable: Mapping[str, str] = attrs.field(factory=dict)
    stale: frozenset[str] = frozenset()
    group_names: Mapping[str, str] = attrs.field(factory=dict)
