"""Directory snapshot + store state + configuration -> :class:`Plan`. Pure: no IO.

Theory of operation
===================

Who is in scope. The users of the mapped groups that were read (nested
groups resolved by the directory). A user is left out, with a reason in
``Plan.skipped``, when the account is disabled, is a guest (unless
``include_guests``), has no usable email, matches the exclusion policy, or
shares its email (any case) with another in-scope Azure user. Identity is the
Entra object id, never the email.

What each user should have. For every (site, module), the highest role that
any of the user's mapped groups gives there; ``Assign.because`` names the
groups that give that winning role.

Matching store users. A synced user is found by external id and updated when
Azure changed its name or email (or reactivated when the sync had
deactivated it). Otherwise a store user with the same email, any case, and
no external id (someone invited by hand) is linked, never duplicated. An
email already held by a store user that belongs to another Azure object is a
conflict: reported as a skip that keeps the user's access exactly as it is,
never a takeover. A duplicate email in Azure is treated the same way.

What is granted and removed. Only grants the sync made (source "azure") are
compared; manual grants are invisible here and never touched. Missing grants
are assigned, different roles changed, and synced grants Azure no longer
gives are unassigned. A synced user who left scope loses every synced grant;
in ``deactivate`` mode they are also deactivated when no manual access
remains (the store re-checks that, atomically). In ``keep`` mode nothing is
removed or downgraded: the sync only adds and upgrades. Users are never
deleted.

When removals are held. A removal is an unassign, a downgrade or a
deactivation. If any mapped group could not be read completely (an outage, or
a mapped group that no longer exists: a stale mapping), the plan removes and
downgrades nothing: every removal is held with reason ``partial_read``,
because a user missing from an unread group is not evidence they left.
Otherwise, when the removals would touch more than ``max_removal_ratio`` of
the trust's synced users and at least ``min_removals_to_hold`` of them, they
are held with reason ``mass_removal`` unless the run confirms removals.
Additions are never held.

Order. Users by external id; for each, its create/link/update, then its grant
changes by (site, module), then its deactivation. The same inputs in any order
give the same plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import attrs

from ._gc import collector_paused
from .config import SyncConfig
from .mapping import MappingPolicy
from .model import DirectoryUser, Role, email_key
from .plan import (
    Assign,
    Change,
    CreateUser,
    DeactivateUser,
    HoldReason,
    LinkUser,
    Plan,
    Skip,
    Unassign,
    UpdateUser,
    is_removal,
)
from .store.protocol import StoredUser, StoreState

__all__ = ["DirectorySnapshot", "build_plan", "desired_access"]


@attrs.frozen
class DirectorySnapshot:
    """What one read of the mapped groups returned.

    ``members`` maps each group that was read completely to its users;
    ``unreadable`` maps each mapped group that was not to the reason.
    """

    members: Mapping[str, Sequence[DirectoryUser]]
    unreadable: Mapping[str, str] = attrs.field(factory=dict)


def build_plan(
    config: SyncConfig,
    snapshot: DirectorySnapshot,
    state: StoreState,
    *,
    confirm_removals: bool = False,
) -> Plan:
    """Work out what an import of ``config`` would change. See the module docstring."""
    with collector_paused():
        return _build_plan(config, snapshot, state, confirm_removals)


def _build_plan(
    config: SyncConfig, snapshot: DirectorySnapshot, state: StoreState, confirm_removals: bool
) -> Plan:
    users, wanted_by_user = _collect_users(snapshot.members, config.mappings)
    in_scope, skipped = _scope(users, config)

    by_external: dict[str, StoredUser] = {}
    by_email: dict[str, StoredUser] = {}
    for store_user in sorted(state.users.values(), key=lambda s: s.user_id):
        if store_user.external_id is not None:
            by_external.setdefault(store_user.external_id, store_user)
        by_email.setdefault(email_key(store_user.email), store_user)

    changes_by_user: dict[str, list[Change]] = {}
    processed: set[str] = set()  # external ids whose access this plan decides
    mode = config.removal.mode

    for user, email in in_scope:
        identity = _identity_change(user, email, by_external, by_email)
        if isinstance(identity, Skip):
            skipped.append(identity)
            continue
        processed.add(user.id)
        user_changes: list[Change] = [identity] if identity is not None else []
        wanted = wanted_by_user[user.id]
        current = state.synced_access.get(user.id) or {}
        for key in sorted(wanted.keys() | current.keys()) if current else sorted(wanted):
            now = current.get(key)
            wanted_here = wanted.get(key)
            if wanted_here is not None:
                role, because = wanted_here
                if now is not role and not (mode == "keep" and now is not None and role < now):
                    user_changes.append(Assign(user.id, key[0], key[1], role, now, because))
            elif now is not None and mode != "keep":
                user_changes.append(Unassign(user.id, key[0], key[1], now))
        if user_changes:
            changes_by_user[user.id] = user_changes

    keeps_access = {skip.external_id for skip in skipped if skip.keeps_access}
    if mode != "keep":
        for external_id, current in state.synced_access.items():
            if external_id in processed or external_id in keeps_access or not current:
                continue
            user_changes = [
                Unassign(external_id, site_id, module, role)
                for (site_id, module), role in sorted(current.items())
            ]
            stored = by_external.get(external_id)
            if (
                mode == "deactivate"
                and stored is not None
                and stored.active
                and stored.user_id not in state.manual_access_user_ids
            ):
                user_changes.append(DeactivateUser(external_id, stored.user_id))
            changes_by_user[external_id] = user_changes

    ordered = [change for external_id in sorted(changes_by_user) for change in changes_by_user[external_id]]
    synced_users = sum(1 for access in state.synced_access.values() if access)
    hold_reason: HoldReason | None = None
    removals: list[Change] = []
    if any(is_removal(change) for change in ordered):
        removals = [change for change in ordered if is_removal(change)]
        if snapshot.unreadable:
            hold_reason = "partial_read"
        elif not confirm_removals:
            losing = len({change.external_id for change in removals})
            if config.removal.should_hold(losing, synced_users):
                hold_reason = "mass_removal"
        if hold_reason is not None:
            ordered = [change for change in ordered if not is_removal(change)]
        else:
            removals = []

    return Plan(
        trust_site_id=config.trust_site_id,
        changes=tuple(ordered),
        skipped=tuple(sorted(skipped, key=lambda skip: skip.external_id)),
        held_removals=tuple(removals),
        hold_reason=hold_reason,
        unreadable_groups=dict(sorted(snapshot.unreadable.items())),
        users_in_scope=len(processed),
        synced_users=synced_users,
    )


def desired_access(
    mappings: MappingPolicy, groups_of_user: Mapping[str, Iterable[str]]
) -> dict[str, dict[tuple[str, str], Role]]:
    """The access each user should hold given the groups they are in (empty ones dropped)."""
    result: dict[str, dict[tuple[str, str], Role]] = {}
    for user_id, group_ids in groups_of_user.items():
        access = mappings.access_for(group_ids)
        if access:
            result[user_id] = access
    return result


def _collect_users(
    members: Mapping[str, Sequence[DirectoryUser]], mappings: MappingPolicy
) -> tuple[dict[str, DirectoryUser], dict[str, dict[tuple[str, str], tuple[Role, tuple[str, ...]]]]]:
    """Every user once, with the access their mapped groups give (and why).

    Groups are walked in sorted order so that the reasons come out sorted and,
    should two groups return different copies of one user, the same copy wins
    whatever order Graph used.
    """
    users: dict[str, DirectoryUser] = {}
    access: dict[str, dict[tuple[str, str], tuple[Role, tuple[str, ...]]]] = {}
    fold = mappings.fold_group
    for group_id in sorted(members):
        for user in members[group_id]:
            user_access = access.get(user.id)
            if user_access is None:
                users[user.id] = user
                user_access = access[user.id] = {}
            fold(user_access, group_id)
    return users, access


def _scope(
    users: Mapping[str, DirectoryUser], config: SyncConfig
) -> tuple[list[tuple[DirectoryUser, str]], list[Skip]]:
    """The in-scope users with their email (computed once), and the skipped ones."""
    skipped: list[Skip] = []
    candidates: list[tuple[DirectoryUser, str]] = []
    for user_id in sorted(users):
        user = users[user_id]
        email = user.email
        if not user.account_enabled:
            skipped.append(Skip(user_id, email, "account is disabled in Azure"))
        elif user.is_guest and not config.include_guests:
            skipped.append(Skip(user_id, email, "guest account (guests are not synced)"))
        elif email is None:
            skipped.append(Skip(user_id, None, "no usable email address in Azure"))
        elif (reason := config.exclusions.reason_excluded(user)) is not None:
            skipped.append(Skip(user_id, email, reason, excluded=True))
        else:
            candidates.append((user, email))
    holders: dict[str, list[str]] = {}
    for user, email in candidates:
        holders.setdefault(email_key(email), []).append(user.id)
    in_scope: list[tuple[DirectoryUser, str]] = []
    for user, email in candidates:
        sharing = holders[email_key(email)]
        if len(sharing) > 1:
            others = ", ".join(other for other in sharing if other != user.id)
            skipped.append(
                Skip(
                    user.id,
                    email,
                    f"email is shared with other Azure users ({others}); fix it in Azure",
                    keeps_access=True,
                )
            )
        else:
            in_scope.append((user, email))
    return in_scope, skipped


def _display_name(user: DirectoryUser, email: str) -> str:
    name = (user.display_name or "").strip()
    return name or email


def _identity_change(
    user: DirectoryUser,
    email: str,
    by_external: Mapping[str, StoredUser],
    by_email: Mapping[str, StoredUser],
) -> CreateUser | LinkUser | UpdateUser | Skip | None:
    """How this in-scope Azure user maps onto the store: the change, a conflict, or nothing."""
    name = _display_name(user, email)
    holder = by_email.get(email_key(email))
    stored = by_external.get(user.id)
    if stored is not None:
        if holder is not None and holder.user_id != stored.user_id:
            return Skip(
                user.id,
                email,
                f"email conflict: {email} is already used by store user {holder.user_id}; "
                "access left unchanged",
                keeps_access=True,
            )
        wanted = {
            "email": email,
            "display_name": name,
            "given_name": user.given_name,
            "surname": user.surname,
        }
        changed = tuple(field for field, value in wanted.items() if getattr(stored, field) != value)
        if not stored.active:
            changed += ("active",)
        if not changed:
            return None
        return UpdateUser(
            user.id,
            stored.user_id,
            email,
            name,
            user.given_name,
            user.surname,
            reactivate=not stored.active,
            changed=changed,
        )
    if holder is not None:
        if holder.external_id is None:
            return LinkUser(user.id, holder.user_id, email, name, user.given_name, user.surname)
        return Skip(
            user.id,
            email,
            f"email conflict: {email} belongs to store user {holder.user_id}, synced from "
            f"another Azure account ({holder.external_id}); not taken over",
            keeps_access=True,
        )
    return CreateUser(user.id, email, name, user.given_name, user.surname)
