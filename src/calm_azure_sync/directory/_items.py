"""How one Graph directory object in an answer is read: the rules full reads and delta reads share.

A member can reach the library three ways: an item of a full read
(``/groups/{id}/transitiveMembers/microsoft.graph.user``), a reference in a
``groups/delta`` item's ``members@delta``, or a ``users/delta`` item. Every
one of them is classified here, once, so a shape a full read counts is
counted the same way by a delta read, and a shape a full read refuses is
refused by a delta read (API §11, "Delta reads are exactly as strict as full
reads"):

- **id**: a non-empty string that can be stored as it is (no lone
  surrogates); anything else is Graph sending what it never sends, so the
  read fails (``invalid_response``), on whatever kind of object.
- **kind** (``@odata.type``): ``#microsoft.graph.user`` is a user,
  ``#microsoft.graph.group`` a group, and **no type at all is a user** (a
  read cast to users lists users; Graph's documented member pages leave the
  type out). The leading ``#`` and the letter case are not significant. Any
  other type (devices, service principals, org contacts, whatever Graph adds
  later) is *other*: never a user and never a nested group, in a full read
  and in a delta alike. A type that is not a string is refused.
- **removal** (``@removed``): absent or ``null`` is no removal; a JSON
  object is one, with Graph's ``reason`` (``"changed"``: soft-deleted,
  restorable; ``"deleted"``: gone for good; no reason reads as
  ``"deleted"``). Any other value is refused. A removal names an object no
  longer there, so its kind does not matter for what it takes away: the
  caller drops the id, whatever it was kept as.
- **a user** (:func:`user_item`): a removed one is a :class:`RemovedUser`;
  otherwise it must be readable (:func:`limited_information` is Graph's
  "limited information" shape and fails the read as ``users_not_readable``)
  and is built by :meth:`DirectoryUser.from_graph`. ``users/delta`` leaves
  out what was never set where a full read sends ``null``, so there a
  missing property reads as a null one (``accountEnabled``, which every
  user has, must be there in both).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from .._text import is_clean, show
from ..errors import DirectoryAccessError, DirectoryError
from ..model import DirectoryUser
from .delta import RemovedUser

__all__ = [
    "GROUP_TYPE",
    "USER_TYPE",
    "MemberKind",
    "limited_information",
    "member_item",
    "removal",
    "user_item",
    "users_not_readable",
]

USER_TYPE = "#microsoft.graph.user"
GROUP_TYPE = "#microsoft.graph.group"
USER_READ_PERMISSIONS = ("User.Read.All", "Directory.Read.All")

MemberKind = Literal["user", "group", "other"]

# Spellings of the two types we read, as Graph sends them and without "#" or in another case.
_KINDS: dict[str, MemberKind] = {USER_TYPE: "user", GROUP_TYPE: "group"}


def _invalid(where: str, what: str) -> DirectoryError:
    return DirectoryError(f"{where}: {what}", code="invalid_response")


def _kind(item: Mapping[str, Any], where: str, object_id: str) -> MemberKind:
    kind = item.get("@odata.type")
    if kind is None:
        return "user"
    if type(kind) is not str:
        raise _invalid(where, f"object {show(object_id, 80)} has an @odata.type that is not a string: {show(kind, 80)}")
    found = _KINDS.get(kind)
    if found is not None:
        return found
    name = kind.lstrip("#").lower()
    return "user" if name == "microsoft.graph.user" else "group" if name == "microsoft.graph.group" else "other"


def _id(item: object, where: str, noun: str) -> str:
    if type(item) is not dict and not isinstance(item, Mapping):
        raise _invalid(where, f"Graph returned a {noun} that is not a JSON object ({type(item).__name__})")
    object_id = item.get("id")
    if type(object_id) is not str or not object_id.strip():
        raise _invalid(where, f"a {noun} in Graph's answer has no id (got {show(object_id, 80)})")
    if not is_clean(object_id):
        raise _invalid(where, f"a {noun} in Graph's answer has an id that is not valid text: {show(object_id, 80)}")
    return object_id


def removal(item: Mapping[str, Any], where: str) -> str | None:
    """Graph's reason when ``item`` is marked ``@removed`` (``"deleted"`` when it gives none), else ``None``."""
    marker = item.get("@removed")
    if marker is None:
        return None
    if type(marker) is not dict:
        raise _invalid(where, f"object {show(item.get('id'), 80)} has an @removed that is not an object: {show(marker, 80)}")
    reason = marker.get("reason")
    if reason is None:
        return "deleted"
    if type(reason) is not str:
        raise _invalid(where, f"object {show(item.get('id'), 80)} has an @removed reason that is not text: {show(reason, 80)}")
    return reason.strip() or "deleted"


def member_item(item: object, where: str) -> tuple[MemberKind, str, str | None]:
    """One member as ``(kind, id, removal reason or None)``: the one classification of full and delta reads.

    Raises :class:`~calm_azure_sync.DirectoryError` (``invalid_response``)
    for an item that is no JSON object, has no usable id, or has an
    ``@odata.type`` or ``@removed`` Graph would never send.
    """
    object_id = _id(item, where, "member")
    data: Mapping[str, Any] = item  # type: ignore[assignment]
    return _kind(data, where, object_id), object_id, removal(data, where)


def limited_information(item: Mapping[str, Any]) -> bool:
    """Whether a user item is Graph's "limited information" shape, not a readable user.

    Without a user permission Graph lists member users with their ``id`` and
    ``@odata.type`` and every other property ``null`` (permissions-overview:
    "Limited information returned for inaccessible member objects"), or, in
    the older shape, without the other properties at all. We ``$select``
    ``accountEnabled`` and ``userPrincipalName``; a readable user always
    carries both keys and its ``accountEnabled`` is never ``null`` (Entra
    requires it). So: ``accountEnabled`` null or absent, or
    ``userPrincipalName`` absent, is unreadable. Reading such a user anyway
    would make a disabled user look enabled and everyone look emailless.
    """
    return item.get("accountEnabled") is None or "userPrincipalName" not in item


def users_not_readable(operation: str) -> DirectoryAccessError:
    return DirectoryAccessError(
        f"{operation}: Graph returned users with only their id and type (every other property null "
        "or missing), so the app may read memberships but not users",
        missing_permissions=USER_READ_PERMISSIONS,
        code="users_not_readable",
    )


def user_item(
    item: object, where: str, *, readable: bool = True, unset_omitted: bool = False
) -> DirectoryUser | RemovedUser | None:
    """One user item (a full read's member, a ``users/delta`` item, a looked-up user), classified once.

    A removed user is a :class:`RemovedUser`; an item of another kind
    (a group, a device…) is ``None`` (not a user: skip it); a user in the
    limited-information shape fails as ``users_not_readable``
    (``readable=False`` skips that check: Graph's documented examples that
    selected other fields); any other user is :meth:`DirectoryUser.from_graph`.

    ``unset_omitted``: the answer leaves out properties that were never set
    (``users/delta`` does: user-delta.md) where other reads send them as
    ``null``. There a missing ``userPrincipalName`` is a null one, read as a
    full read reads ``null``; ``accountEnabled``, which every user has, must
    still be there.
    """
    kind, user_id, reason = member_item(item, where)
    if reason is not None:
        return RemovedUser(user_id, reason) if kind == "user" else None
    if kind != "user":
        return None
    data: Mapping[str, Any] = item  # type: ignore[assignment]
    if readable and (data.get("accountEnabled") is None if unset_omitted else limited_information(data)):
        raise users_not_readable(where)
    return DirectoryUser.from_graph(data)
