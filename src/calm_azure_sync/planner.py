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
Azure changed its name or email, and reactivated only if the sync itself
had deactivated it (``StoredUser.deactivated_by_sync``): a user a person
deactivated in the app stays inactive. Otherwise a store user with the same email, any case, and
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

from collections.abc import Mapping, Sequence

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

__all__ = ["DirectorySnapshot", "build_plan"]


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
    synced_access = state.synced_access

    has_removal = False  # tracked as changes are made: checking 500k changes afterwards costs more
    keep_mode = mode == "keep"
    identities, rounds, conflicts = _resolve_identities(in_scope, by_external, by_email)
    skipped.extend(conflicts)
    for user, _, _ in in_scope:
        user_id = user.id
        if user_id not in identities:
            continue  # a conflict: left exactly as it is
        identity = identities[user_id]
        processed.add(user_id)
        user_changes: list[Change] = [identity] if identity is not None else []
        wanted = wanted_by_user[user_id]
        current = synced_access.get(user_id) or {}
        unchanged = len(current) == len(wanted)  # the common re-run case, checked cheaply first
        if unchanged:
            for key, (wanted_role, _) in wanted.items():
                if current.get(key) is not wanted_role:
                    unchanged = False
                    break
        if not unchanged and not current:  # the common first-import case: only grants to add
            for key in sorted(wanted):
                role, because = wanted[key]
                user_changes.append(Assign(user_id, key[0], key[1], role, None, because))
        elif not unchanged:
            for key in sorted(wanted.keys() | current.keys()):
                now = current.get(key)
                wanted_here = wanted.get(key)
                if wanted_here is not None:
                    role, because = wanted_here
                    if now is role:
                        continue
                    if now is not None and role._rank < now._rank:
                        if keep_mode:
                            continue
                        has_removal = True
                    user_changes.append(Assign(user_id, key[0], key[1], role, now, because))
                elif now is not None and not keep_mode:
                    has_removal = True
                    user_changes.append(Unassign(user_id, key[0], key[1], now))
        if user_changes:
            changes_by_user[user_id] = user_changes

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
            has_removal = True

    # Users by external id, except that one who takes over an email another
    # user gives up in this plan comes after that user (rounds > 0 are rare).
    if any(rounds.values()):
        user_order = sorted(changes_by_user, key=lambda external_id: (rounds.get(external_id, 0), external_id))
    else:
        user_order = sorted(changes_by_user)
    ordered = [change for external_id in user_order for change in changes_by_user[external_id]]
    synced_users = sum(1 for access in state.synced_access.values() if access)
    hold_reason: HoldReason | None = None
    removals: list[Change] = []
    if has_removal:
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
    for group_id in sorted(members):
        accesses = []
        for user in members[group_id]:
            user_access = access.get(user.id)
            if user_access is None:
                users[user.id] = user
                user_access = access[user.id] = {}
            accesses.append(user_access)
        mappings.fold_group(accesses, group_id)
    return users, access


def _scope(
    users: Mapping[str, DirectoryUser], config: SyncConfig
) -> tuple[list[tuple[DirectoryUser, str, str]], list[Skip]]:
    """The in-scope users with their email and its key (computed once), and the skipped ones."""
    skipped: list[Skip] = []
    candidates: list[tuple[DirectoryUser, str, str]] = []
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
            candidates.append((user, email, email_key(email)))
    holders: dict[str, list[str]] = {}
    for user, _, key in candidates:
        sharing = holders.get(key)
        if sharing is None:
            holders[key] = [user.id]
        else:
            sharing.append(user.id)
    in_scope: list[tuple[DirectoryUser, str, str]] = []
    for user, email, key in candidates:
        sharing = holders[key]
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
            in_scope.append((user, email, key))
    return in_scope, skipped


def _display_name(user: DirectoryUser, email: str) -> str:
    name = (user.display_name or "").strip()
    return name or email


def _resolve_identities(
    in_scope: Sequence[tuple[DirectoryUser, str, str]],
    by_external: Mapping[str, StoredUser],
    by_email: Mapping[str, StoredUser],
) -> tuple[dict[str, CreateUser | LinkUser | UpdateUser | None], dict[str, int], list[Skip]]:
    """How each in-scope Azure user maps onto the store.

    Returns the identity change per user (``None``: nothing to change), the
    round each user's changes must be applied in, and the conflicts.

    An email is free for a user when no store user holds it, when the user
    already holds it, or when a hand-invited user holds it (then it is linked).
    An email held by a synced user whose Azure account moves to another email
    in this same plan is free once that move is applied: the claimant goes in
    a later round. Resolved in rounds until nothing more frees up; whatever is
    still held by someone else (a leaver who kept the address, a swap) is a
    conflict that keeps the user's access as it is.
    """
    identities: dict[str, CreateUser | LinkUser | UpdateUser | None] = {}
    rounds: dict[str, int] = {}
    released: dict[str, int] = {}  # email key -> round in which its holder moves away
    waiting: list[tuple[DirectoryUser, str, str, StoredUser | None, StoredUser]] = []

    def settle(user: DirectoryUser, email: str, key: str, stored: StoredUser | None, holder: StoredUser | None,
               round_: int) -> None:
        identities[user.id] = _identity_change(user, email, stored, holder)
        rounds[user.id] = round_
        if stored is not None and email_key(stored.email) != key:
            released[email_key(stored.email)] = round_

    for user, email, key in in_scope:
        stored = by_external.get(user.id)
        holder = by_email.get(key)
        if holder is None or (stored is not None and holder.user_id == stored.user_id):
            settle(user, email, key, stored, None, 0)
        elif stored is None and holder.external_id is None:
            settle(user, email, key, None, holder, 0)  # link the hand-invited user
        else:
            waiting.append((user, email, key, stored, holder))
    while waiting:
        still_waiting = []
        for user, email, key, stored, holder in waiting:
            if key in released:
                settle(user, email, key, stored, None, released[key] + 1)
            else:
                still_waiting.append((user, email, key, stored, holder))
        if len(still_waiting) == len(waiting):
            break
        waiting = still_waiting
    conflicts = [
        Skip(
            user.id,
            email,
            f"email conflict: {email} is already used by store user {holder.user_id}"
            + (f" (synced from Azure account {holder.external_id})" if holder.external_id else "")
            + "; not taken over, access left unchanged",
            keeps_access=True,
        )
        for user, email, _, _, holder in waiting
    ]
    return identities, rounds, conflicts


def _identity_change(
    user: DirectoryUser, email: str, stored: StoredUser | None, invited: StoredUser | None
) -> CreateUser | LinkUser | UpdateUser | None:
    """The change that makes the store's record of ``user`` current (``None`` if it is)."""
    name = _display_name(user, email)
    if stored is not None:
        # Only a user the sync itself deactivated is reactivated; someone a
        # person deactivated in the app stays as they left them.
        reactivate = not stored.active and stored.deactivated_by_sync
        if (
            not reactivate
            and stored.email == email
            and stored.display_name == name
            and stored.given_name == user.given_name
            and stored.surname == user.surname
        ):
            return None  # the common re-run case
        wanted = {
            "email": email,
            "display_name": name,
            "given_name": user.given_name,
            "surname": user.surname,
        }
        changed = tuple(field for field, value in wanted.items() if getattr(stored, field) != value)
        if reactivate:
            changed += ("active",)
        return UpdateUser(
            user.id,
            stored.user_id,
            email,
            name,
            user.given_name,
            user.surname,
            reactivate=reactivate,
            changed=changed,
        )
    if invited is not None:
        return LinkUser(user.id, invited.user_id, email, name, user.given_name, user.surname)
    return CreateUser(user.id, email, name, user.given_name, user.surname)
