"""What a store can keep: identifiers checked, names made storable, a manual grant's role checked.

Shared by the apply rules (:mod:`calm_azure_sync.store.rules`) and the
database stores' host helpers. Nothing here does IO.
"""

from __future__ import annotations

from .._text import clean_text, is_clean, show
from ..core.plan import CreateUser, LinkUser, RelinkUser, UpdateUser
from ..model import Role
from .protocol import StoredUser

__all__ = ["checked_grant", "names_equal", "not_text", "storable_values"]


def checked_grant(site_id: str, module: str, role: Role | str) -> Role:
    """The role of a manual grant, once ``site_id`` and ``module`` are known to be storable text.

    Raises ``ValueError`` (text that cannot be stored) or
    :class:`~calm_azure_sync.ConfigError` (an unknown role).
    """
    problem = not_text(site_id, module)
    if problem is not None:
        raise ValueError(problem)
    return Role.parse(role)


def names_equal(user: StoredUser, email: str, display_name: str, given: str | None, sur: str | None) -> bool:
    """Whether ``user`` already carries this email and these names."""
    return (user.email, user.display_name, user.given_name, user.surname) == (email, display_name, given, sur)


def storable_values(
    change: CreateUser | LinkUser | RelinkUser | UpdateUser,
) -> tuple[str, str, str | None, str | None]:
    """The change's email (stripped) and names as a store keeps them: lone surrogates become U+FFFD.

    Every store writes UTF-8, which cannot encode a surrogate code point; one
    odd name must cost one odd name, not the batch it is in.
    """
    given, sur = change.given_name, change.surname
    return (
        clean_text(change.email.strip()),
        clean_text(change.display_name),
        None if given is None else clean_text(given),
        None if sur is None else clean_text(sur),
    )


def not_text(*values: str | None) -> str | None:
    """Why an identifier cannot be stored (it holds a surrogate), or ``None``; a ``None`` value is no identifier.

    Identifiers are never rewritten (a replaced object id would name another
    object): a change carrying one fails alone.
    """
    for value in values:
        if value is not None and not is_clean(value):
            return f"{show(value)} is not valid text (it holds a lone surrogate), so no store can keep it"
    return None
