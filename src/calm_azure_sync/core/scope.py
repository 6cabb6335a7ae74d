"""Who is in scope: the rules that leave a directory user out, with the reason. Pure: no IO.

A user is left out when the account is disabled, is a guest (unless
``include_guests``), has no usable email, matches the exclusion policy
(:func:`skip_reason`: the one place these rules live; auto-detect and
explanations use it too), or shares its email (any case) with another
in-scope Azure user (:func:`scope`).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..model import DirectoryUser, email_key
from ..policies.config import SyncConfig
from .plan import Skip

__all__ = ["scope", "skip_reason"]


def skip_reason(user: DirectoryUser, config: SyncConfig) -> Skip | None:
    """Why ``user`` is out of scope before emails are compared (``None``: in scope)."""
    email = user.email
    if not user.account_enabled:
        return Skip(user.id, email, "account is disabled in Azure")
    if user.is_guest and not config.include_guests:
        return Skip(user.id, email, "guest account (guests are not synced)")
    if email is None:
        return Skip(user.id, None, "no usable email address in Azure")
    reason = config.exclusions.reason_excluded(user)
    if reason is not None:
        return Skip(user.id, email, reason, excluded=True)
    return None


def scope(
    users: Mapping[str, DirectoryUser], config: SyncConfig
) -> tuple[list[tuple[DirectoryUser, str, str]], list[Skip]]:
    """The in-scope users with their email and its key (computed once), and the skipped ones."""
    skipped: list[Skip] = []
    candidates: list[tuple[DirectoryUser, str, str]] = []
    add = candidates.append
    holder_of: dict[str, str] = {}  # email key -> the first candidate's id
    claim = holder_of.setdefault
    shared: set[str] = set()
    for user_id in sorted(users):
        user = users[user_id]
        skip = skip_reason(user, config)
        if skip is not None:
            skipped.append(skip)
            continue
        email = user.email
        assert email is not None  # skip_reason leaves out users without one
        key = email_key(email)
        if claim(key, user_id) != user_id:
            shared.add(key)
        add((user, email, key))
    if not shared:  # the usual case: nobody shares an email, every candidate is in scope
        return candidates, skipped
    holders: dict[str, list[str]] = {}
    for user, _, key in candidates:
        if key in shared:
            holders.setdefault(key, []).append(user.id)
    in_scope: list[tuple[DirectoryUser, str, str]] = []
    for user, email, key in candidates:
        if key in shared:
            others = ", ".join(other for other in holders[key] if other != user.id)
            reason = f"email is shared with other Azure users ({others}); fix it in Azure"
            skipped.append(Skip(user.id, email, reason, keeps_access=True))
        else:
            in_scope.append((user, email, key))
    return in_scope, skipped
