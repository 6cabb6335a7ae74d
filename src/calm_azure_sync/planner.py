"""Directory snapshot + store state + sync state + configuration -> :class:`Plan`. Pure: no IO.

Theory of operation
===================

Who is in scope. The users of the mapped groups that were read (nested
groups resolved by the directory). A user is left out, with a reason in
``Plan.skipped``, when the account is disabled, is a guest (unless
``include_guests``), has no usable email, matches the exclusion policy, or
shares its email (any case) with another in-scope Azure user
(:func:`skip_reason` is the one place these rules live; auto-detect uses it
too). Identity is the Entra object id, never the email.

What each user should have. For every (site, module), the highest role that
any of the user's mapped groups gives there; ``Assign.because`` names the
groups that give that winning role.

Matching store users. See the table above :func:`_resolve_identities`: a
synced user is found by external id and updated; a hand-invited user with the
same email is linked; an email held by another Azure object is a conflict,
unless the directory proves that object gone (the store user is relinked to
the new object) or moved to another email (the stored email is refreshed and
the newcomer proceeds). A synced user is reactivated only if the sync itself
had deactivated it: a user a person deactivated in the app stays inactive.

What is granted and removed. Only grants the sync made (source "azure") are
compared; manual grants are invisible here and never touched. Missing grants
are assigned, different roles changed, and synced grants Azure no longer
gives are unassigned. A synced user who left scope loses every synced grant;
in ``deactivate`` mode they are also deactivated when no other access remains
(a manual grant, another trust's grant; the store re-checks). Users who left
scope earlier, before ``deactivate`` mode was switched on, are deactivated
too, once: one a person re-activates stays active until they re-enter and
leave scope again. In ``keep`` mode nothing is removed or downgraded. Users
are never deleted.

What is mirrored. Every mapped group becomes a synced group of the trust
(its display name, the sites it maps to) whose members are its in-scope
users; a group whose mapping was removed is retired. A member removal is a
removal like an unassign.

When removals are held. :mod:`calm_azure_sync.guards` decides, with the
trust's memory: the pending hold, partial reads, shrunk groups, mass removals.

Order. Group upserts first; then users by external id (one who takes over an
email another user gives up comes after that user): for each, its identity
change, then its grant changes by (site, module), then its deactivation; then
group memberships and retirements. The same inputs in any order give the same
plan.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence

import attrs

from ._gc import collector_paused
from .config import SyncConfig
from .guards import GuardInput, apply_guards
from .mapping import MappingPolicy
from .model import DirectorySnapshot, DirectoryUser, Role, email_key
from .plan import (
    AddGroupMember,
    Assign,
    Change,
    CreateUser,
    DeactivateUser,
    GroupChange,
    LinkUser,
    Plan,
    RelinkUser,
    RemoveGroupMember,
    RetireGroup,
    Skip,
    Unassign,
    UpdateUser,
    UpsertGroup,
    UserLabel,
    is_removal,
)
from .state import HoldScope, SyncState
from .store.protocol import StoredUser, StoreState

__all__ = ["DirectorySnapshot", "build_plan", "skip_reason"]  # DirectorySnapshot: model.py's, importable here too

Wanted = dict[tuple[str, str], tuple[Role, tuple[str, ...]]]
IdentityChange = CreateUser | LinkUser | RelinkUser | UpdateUser | None


@attrs.frozen
class PlanContext:
    """Everything besides the snapshot and store that a plan depends on."""

    sync_state: SyncState = attrs.field(factory=SyncState)
    confirm_hold: str | None = None
    lookups: Mapping[str, DirectoryUser | None] = attrs.field(factory=dict)
    run_id: str = "plan"
    now: dt.datetime = attrs.field(factory=lambda: dt.datetime.now(dt.UTC))
    mirror_groups: bool = False
    """Whether the store mirrors groups (it says so with ``mirrors_groups = True``)."""
    confirm_only: HoldScope | None = None
    """A partial confirmation: only the held removals inside this scope are applied."""
    site_names: Mapping[str, str] = attrs.field(factory=dict)
    """How people read the trust's sites (``Site.name``), for the hold this plan leaves."""


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


def build_plan(
    config: SyncConfig,
    snapshot: DirectorySnapshot,
    state: StoreState,
    context: PlanContext | None = None,
) -> Plan:
    """Work out what an import of ``config`` would change. See the module docstring."""
    with collector_paused():
        return _Planner(config, snapshot, state, context or PlanContext()).plan()


@attrs.define
class _Planner:
    """One plan's working state; each method is one paragraph of the module docstring."""

    config: SyncConfig
    snapshot: DirectorySnapshot
    state: StoreState
    context: PlanContext
    changes_by_user: dict[str, list[Change]] = attrs.field(factory=dict)
    processed: set[str] = attrs.field(factory=set)  # external ids whose access this plan decides
    leavers: list[str] = attrs.field(factory=list)
    # Set as changes are made: scanning 500k changes afterwards for removals costs
    # more (the 100k-user planner benchmark's first import has no removal at all).
    may_remove: bool = False
    also_mentioned: set[str] = attrs.field(factory=set)

    def plan(self) -> Plan:
        users, wanted_by_user = _collect_users(self.snapshot.members, self.config.mappings)
        in_scope, skipped = _scope(users, self.config)
        by_external, by_email = _index_store(self.state)
        known = {**self.context.lookups, **users}
        identities = _resolve_identities(in_scope, by_external, by_email, known, self._synced_here)
        skipped.extend(identities.conflicts)
        self._grant_in_scope(in_scope, identities, wanted_by_user)
        self._remove_leavers(skipped, by_external)
        group_changes = self._mirror_groups(identities, skipped) if self.context.mirror_groups else []
        ordered = self._order(identities.rounds, group_changes)
        return self._judge(ordered, skipped, users, identities, by_external)

    def _synced_here(self, external_id: str) -> bool:
        """Whether this trust synced that Azure account (it holds or held access or a membership here).

        Only then can this trust's directory prove the account gone: another
        trust's account (another tenant's, say) is not found here by design.
        """
        if external_id in self.state.synced_access or external_id in self.context.sync_state.left_scope:
            return True
        return any(external_id in members for members in self.state.group_members.values())

    # -- what each in-scope user should have ------------------------------------

    def _grant_in_scope(
        self,
        in_scope: Sequence[tuple[DirectoryUser, str, str]],
        identities: _Identities,
        wanted_by_user: Mapping[str, Wanted],
    ) -> None:
        # The hottest loop of a re-run (one pass per in-scope user): names bound locally.
        synced_access = self.state.synced_access
        keep_mode = self.config.removal.mode == "keep"
        identity_of = identities.changes
        refreshes = identities.refreshes
        processed = self.processed
        mark = processed.add
        changes_by_user = self.changes_by_user
        access_of = synced_access.get
        may_remove = False
        for user, _, _ in in_scope:
            user_id = user.id
            if user_id not in identity_of:
                continue  # a conflict: left exactly as it is
            identity = identity_of[user_id]
            mark(user_id)
            current_key = user_id
            if identity is not None and type(identity) is RelinkUser:
                current_key = identity.previous_external_id
                mark(current_key)  # its access is the relinked user's, not a leaver's
            wanted = wanted_by_user[user_id]
            current = access_of(current_key)
            if current:
                grants = _grant_changes(user_id, wanted, current, keep_mode)
                if grants and not may_remove:
                    may_remove = any(type(change) is not Assign or change.is_downgrade for change in grants)
            else:
                grants = _first_grants(user_id, wanted)
            if refreshes:
                refresh = refreshes.get(user_id)
                if refresh is not None:
                    self.also_mentioned.add(refresh.external_id)
                    user_changes: list[Change] = [refresh] if identity is None else [refresh, identity]
                    changes_by_user[user_id] = user_changes + grants
                    continue
            if identity is not None:
                grants.insert(0, identity)
            if grants:
                changes_by_user[user_id] = grants
        self.may_remove = self.may_remove or may_remove

    def _group_name(self, group_id: str) -> str:
        """Azure's name from this read, else the name the store mirrored, else the id."""
        name = self.snapshot.group_names.get(group_id)
        if name is None and group_id in self.state.groups:
            name = self.state.groups[group_id].display_name
        return name or group_id

    # -- who left scope -----------------------------------------------------------

    def _remove_leavers(self, skipped: Sequence[Skip], by_external: Mapping[str, StoredUser]) -> None:
        mode = self.config.removal.mode
        if mode == "keep":
            return
        keeps_access = {skip.external_id for skip in skipped if skip.keeps_access}
        other_access = self.state.other_access_user_ids | self.state.manual_access_user_ids
        for external_id, current in self.state.synced_access.items():
            if external_id in self.processed or external_id in keeps_access or not current:
                continue
            user_changes: list[Change] = [
                Unassign(external_id, site_id, module, role) for (site_id, module), role in sorted(current.items())
            ]
            stored = by_external.get(external_id)
            if mode == "deactivate" and stored is not None and stored.active and stored.user_id not in other_access:
                user_changes.append(DeactivateUser(external_id, stored.user_id))
            self.changes_by_user.setdefault(external_id, []).extend(user_changes)
            self.leavers.append(external_id)
            self.may_remove = True
        if mode != "deactivate":
            return
        # Users who left earlier, with nothing left to unassign: deactivated once.
        for external_id, deactivated in self.context.sync_state.left_scope.items():
            if deactivated or external_id in self.processed or external_id in keeps_access:
                continue
            if self.state.synced_access.get(external_id):
                continue
            stored = by_external.get(external_id)
            if stored is not None and stored.active and stored.user_id not in other_access:
                self.changes_by_user.setdefault(external_id, []).append(DeactivateUser(external_id, stored.user_id))
                self.may_remove = True

    # -- what is mirrored -----------------------------------------------------------

    def _mirror_groups(self, identities: _Identities, skipped: Sequence[Skip]) -> list[GroupChange]:
        """Synced groups and their in-scope members; see :func:`_group_changes`.

        A user whose access is left as it is (an email conflict) keeps their
        memberships as they are too.
        """
        in_scope = identities.changes
        keeps = {skip.external_id for skip in skipped if skip.keeps_access}
        # A relinked store user keeps its memberships: they are the new object's now.
        relinked = {
            change.previous_external_id: change.external_id
            for change in in_scope.values()
            if isinstance(change, RelinkUser)
        }
        members_now = {}
        for group_id, users in self.snapshot.members.items():
            now = frozenset(user.id for user in users if user.id in in_scope)
            if keeps:
                now |= self.state.group_members.get(group_id, frozenset()) & keeps
            members_now[group_id] = now
        changes = _group_changes(self.config, self.snapshot, self.state, members_now, relinked)
        if self.config.removal.mode == "keep":
            # keep removes nothing at all: no member leaves a synced group, no group is retired (emptied).
            changes = [change for change in changes if not isinstance(change, (RemoveGroupMember, RetireGroup))]
        for change in changes:
            if isinstance(change, RemoveGroupMember):
                self.may_remove = True
            if isinstance(change, (AddGroupMember, RemoveGroupMember)):
                self.also_mentioned.add(change.external_id)
        return changes

    # -- order --------------------------------------------------------------------------

    def _order(self, rounds: Mapping[str, int], group_changes: Sequence[GroupChange]) -> list[Change]:
        # Users by external id, except that one who takes over an email another
        # user gives up in this plan comes after that user (rounds > 0 are rare).
        if any(rounds.values()):
            user_order = sorted(self.changes_by_user, key=lambda external_id: (rounds.get(external_id, 0), external_id))
        else:
            user_order = sorted(self.changes_by_user)
        upserts = [change for change in group_changes if isinstance(change, UpsertGroup)]
        memberships = [change for change in group_changes if not isinstance(change, UpsertGroup)]
        users = [change for external_id in user_order for change in self.changes_by_user[external_id]]
        return [*upserts, *users, *memberships]

    # -- when removals are held ------------------------------------------------------

    def _judge(
        self,
        ordered: list[Change],
        skipped: list[Skip],
        users: Mapping[str, DirectoryUser],
        identities: _Identities,
        by_external: Mapping[str, StoredUser],
    ) -> Plan:
        removals = [change for change in ordered if is_removal(change)] if self.may_remove else []
        synced_users = sum(1 for access in self.state.synced_access.values() if access)
        context = self.context
        # The one gate: every removal this plan makes, whatever path made it, is judged here.
        relinked = {
            change.external_id: change.user_id
            for change in identities.changes.values()
            if isinstance(change, (RelinkUser, LinkUser))
        }

        def owner_of(external_id: str) -> str | None:
            stored = by_external.get(external_id)
            return relinked.get(external_id) or (stored.user_id if stored is not None else None)

        previous_of = {
            change.external_id: change.previous_external_id
            for change in identities.changes.values()
            if isinstance(change, RelinkUser)
        }

        def in_store(change: Change) -> bool:
            external_id = previous_of.get(change.external_id, change.external_id)
            if isinstance(change, (Assign, Unassign)):
                return (change.site_id, change.module) in self.state.synced_access.get(external_id, {})
            if isinstance(change, RemoveGroupMember):
                return external_id in self.state.group_members.get(change.group_external_id, frozenset())
            stored = by_external.get(external_id)
            return stored is not None and stored.active

        labels = _Labels(frozenset(), users, self.state, context.lookups)
        group_names = {group: self._group_name(group) for group in sorted(self.config.mappings.group_ids)}
        verdict = apply_guards(
            GuardInput(
                config=self.config,
                removals=removals,
                pending=context.sync_state.hold,
                confirm_hold=context.confirm_hold,
                unreadable_groups=self.snapshot.unreadable,
                stale_groups=self.snapshot.stale,
                member_counts={group: len(members) for group, members in self.snapshot.members.items()},
                baselines=context.sync_state.baselines,
                synced_users=synced_users,
                run_id=context.run_id,
                now=context.now,
                confirm_only=context.confirm_only,
                owner_of=owner_of,
                decided=frozenset(self.processed),
                in_store=in_store,
                label_of=labels.label,
                group_names=group_names,
                site_names=context.site_names,
            )
        )
        if verdict.held:
            held = set(map(id, verdict.held))
            # A group whose member removals are held is not retired yet: retiring would empty it.
            keep_groups = {c.group_external_id for c in verdict.held if isinstance(c, RemoveGroupMember)}
            ordered = [
                change for change in ordered
                if id(change) not in held and not (isinstance(change, RetireGroup) and change.external_id in keep_groups)
            ]
        held_users = {change.external_id for change in verdict.held}
        mentioned = {*self.changes_by_user, *(s.external_id for s in skipped), *self.also_mentioned}
        return Plan(
            trust_site_id=self.config.trust_site_id,
            changes=tuple(ordered),
            skipped=tuple(sorted(skipped, key=lambda skip: skip.external_id)),
            held_removals=verdict.held,
            hold_reason=verdict.reason,
            unreadable_groups=dict(sorted(self.snapshot.unreadable.items())),
            users_in_scope=len(identities.changes),
            synced_users=synced_users,
            hold_id=verdict.hold.id if verdict.hold is not None else None,
            held_groups=verdict.shrunk_groups,
            stale_groups=verdict.stale_held,
            people=_Labels(frozenset(mentioned), users, self.state, self.context.lookups),
            group_names=group_names,
            access_before=self.state.synced_access,
            hold=verdict.hold,
            hold_cleared=verdict.hold_cleared,
            confirmed_removals=verdict.confirmed,
            deferred_removals=verdict.deferred,
            disputed_groups=verdict.shrunk_groups if (verdict.held or self.config.removal.mode == "keep") else (),
            left_scope=tuple(sorted(external_id for external_id in self.leavers if external_id not in held_users)),
            lookups_needed=identities.lookups_needed,
            in_scope_ids=frozenset(self.processed),
        )


def _collect_users(
    members: Mapping[str, Sequence[DirectoryUser]], mappings: MappingPolicy
) -> tuple[dict[str, DirectoryUser], dict[str, Wanted]]:
    """Every user once, with the access their mapped groups give (and why).

    Groups are walked in sorted order so that the reasons come out sorted and,
    should two groups return different copies of one user, the same copy wins
    whatever order Graph used.
    """
    users: dict[str, DirectoryUser] = {}
    access: dict[str, Wanted] = {}
    known = access.get
    fold = mappings.fold_group
    for group_id in sorted(members):
        accesses: list[Wanted] = []
        add = accesses.append
        for user in members[group_id]:
            user_id = user.id
            user_access = known(user_id)
            if user_access is None:
                users[user_id] = user
                user_access = access[user_id] = {}
            add(user_access)
        fold(accesses, group_id)
    return users, access


def _scope(
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


def _index_store(state: StoreState) -> tuple[dict[str, StoredUser], dict[str, StoredUser]]:
    by_external: dict[str, StoredUser] = {}
    by_email: dict[str, StoredUser] = {}
    for store_user in sorted(state.users.values(), key=lambda s: s.user_id):
        if store_user.external_id is not None:
            by_external.setdefault(store_user.external_id, store_user)
        by_email.setdefault(email_key(store_user.email), store_user)
    return by_external, by_email


def _first_grants(user_id: str, wanted: Wanted) -> list[Change]:
    """The assigns of a user who holds no synced grant yet (every user of a first import)."""
    if len(wanted) == 1:
        ((key, (role, because)),) = wanted.items()
        return [Assign(user_id, key[0], key[1], role, None, because)]
    return [Assign(user_id, site_id, module, role, None, because)
            for (site_id, module), (role, because) in sorted(wanted.items())]  # fmt: skip


def _grant_changes(user_id: str, wanted: Wanted, current: Mapping[tuple[str, str], Role], keep_mode: bool) -> list[Change]:
    """Assigns, role changes and unassigns that turn ``current`` into ``wanted``.

    Two fast paths, measured on the 100k-user planner benchmark: an unchanged
    user is recognised without building anything (the re-run case), and a
    user with no current access only gets assigns (the first import).
    """
    if len(current) == len(wanted):
        held = current.get
        for key, (wanted_role, _) in wanted.items():
            if held(key) is not wanted_role:
                break
        else:
            return []
    if not current:
        return _first_grants(user_id, wanted)
    changes: list[Change] = []
    for key in sorted(wanted.keys() | current.keys()):
        held_role = current.get(key)
        wanted_here = wanted.get(key)
        if wanted_here is not None:
            role, because = wanted_here
            if held_role is role:
                continue
            if keep_mode and held_role is not None and role._rank < held_role._rank:
                continue
            changes.append(Assign(user_id, key[0], key[1], role, held_role, because))
        elif held_role is not None and not keep_mode:
            changes.append(Unassign(user_id, key[0], key[1], held_role))
    return changes


# -- matching store users ---------------------------------------------------------------
#
# For each in-scope Azure user, by what the store holds under its external id
# ("stored") and under its email ("holder"):
#
#   stored   holder                                  decision
#   -------  --------------------------------------  ---------------------------------------
#   any      none, or the stored user itself          update (or create when no stored user)
#   none     a hand-invited user (no external id)     link the invited user
#   any      a synced user whose Azure account moves   later round: once that move is applied
#            to another email in this plan
#   none     a synced user whose object is gone        relink: the store user takes the new id
#            (the directory answered None, and this
#            trust synced that account: only the
#            directory it came from can prove it gone)
#   any      a synced user whose object now has        refresh the holder's email first, then
#            another email (directory proves it)       the newcomer in a later round
#   any      anything else                             conflict: reported, access left as is
#
# A holder the snapshot does not show and the directory was not asked about
# is a conflict for now, and named in ``lookups_needed``.


@attrs.define
class _Identities:
    changes: dict[str, IdentityChange] = attrs.field(factory=dict)
    rounds: dict[str, int] = attrs.field(factory=dict)
    refreshes: dict[str, UpdateUser | None] = attrs.field(factory=dict)  # newcomer -> holder refresh
    conflicts: list[Skip] = attrs.field(factory=list)
    lookups_needed: frozenset[str] = frozenset()


def _resolve_identities(
    in_scope: Sequence[tuple[DirectoryUser, str, str]],
    by_external: Mapping[str, StoredUser],
    by_email: Mapping[str, StoredUser],
    known: Mapping[str, DirectoryUser | None],
    synced_here: Callable[[str], bool],
) -> _Identities:
    """How each in-scope Azure user maps onto the store: the table above."""
    found = _Identities()
    released: dict[str, int] = {}  # email key -> round in which its holder moves away
    waiting: list[tuple[DirectoryUser, str, str, StoredUser | None, StoredUser]] = []
    in_scope_ids = {user.id for user, _, _ in in_scope}

    def settle(user: DirectoryUser, email: str, key: str, stored: StoredUser | None, holder: StoredUser | None,
               round_: int) -> None:
        found.changes[user.id] = _identity_change(user, email, stored, holder)
        found.rounds[user.id] = round_
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
    needed: set[str] = set()
    for user, email, key, stored, holder in waiting:
        previous = holder.external_id
        if previous is None or previous in in_scope_ids or previous not in known:
            if previous is not None and previous not in in_scope_ids:
                needed.add(previous)
            found.conflicts.append(_conflict(user, email, holder))
            continue
        now = known[previous]
        if now is None and stored is None and synced_here(previous):
            found.changes[user.id] = RelinkUser(
                user.id, holder.user_id, previous, email, _display_name(user, email), user.given_name, user.surname
            )
            found.rounds[user.id] = 0
        elif now is not None and now.email is not None and email_key(now.email) != key:
            found.refreshes[user.id] = UpdateUser(
                previous, holder.user_id, now.email, _display_name(now, now.email), now.given_name, now.surname,
                changed=("email",),
            )
            settle(user, email, key, stored, None, 0)
        else:
            found.conflicts.append(_conflict(user, email, holder))
    found.lookups_needed = frozenset(needed)
    return found


def _conflict(user: DirectoryUser, email: str, holder: StoredUser) -> Skip:
    return Skip(
        user.id,
        email,
        f"email conflict: {email} is already used by store user {holder.user_id}"
        + (f" (synced from Azure account {holder.external_id})" if holder.external_id else "")
        + "; not taken over, access left unchanged",
        keeps_access=True,
        conflict=True,
    )


def _display_name(user: DirectoryUser, email: str) -> str:
    name = (user.display_name or "").strip()
    return name or email


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
        wanted = {"email": email, "display_name": name, "given_name": user.given_name, "surname": user.surname}
        changed = tuple(field for field, value in wanted.items() if getattr(stored, field) != value)
        if reactivate:
            changed += ("active",)
        return UpdateUser(
            user.id, stored.user_id, email, name, user.given_name, user.surname, reactivate=reactivate, changed=changed
        )
    if invited is not None:
        return LinkUser(user.id, invited.user_id, email, name, user.given_name, user.surname)
    return CreateUser(user.id, email, name, user.given_name, user.surname)


def _group_changes(
    config: SyncConfig,
    snapshot: DirectorySnapshot,
    state: StoreState,
    members_now: Mapping[str, frozenset[str]],
    relinked: Mapping[str, str],
) -> list[GroupChange]:
    """Mirror every mapped group: upsert it, diff its in-scope members, retire unmapped ones.

    An unread group keeps its members as they are (nothing is known); its
    upsert still happens so a new mapping shows up at once.
    """
    sites: dict[str, set[str]] = {}
    for mapping in config.mappings.mappings:
        sites.setdefault(mapping.group_id, set()).add(mapping.site_id)
    changes: list[GroupChange] = []
    for group_id in sorted(sites):
        site_ids = tuple(sorted(sites[group_id]))
        name = snapshot.group_names.get(group_id)
        stored = state.groups.get(group_id)
        if name is None:
            name = stored.display_name if stored is not None else group_id
        if stored is None or stored.retired or stored.display_name != name or tuple(stored.site_ids) != site_ids:
            changes.append(UpsertGroup(group_id, name, site_ids))
    stored_members = state.group_members.get
    nobody: frozenset[str] = frozenset()
    for group_id in sorted(members_now):
        if group_id not in sites:
            continue
        had = stored_members(group_id, nobody)
        if relinked:
            had = frozenset(relinked.get(member, member) for member in had)
        now = members_now[group_id]
        if had == now:
            continue
        changes += [AddGroupMember(group_id, member) for member in sorted(now - had if had else now)]
        if had:
            changes += [RemoveGroupMember(group_id, member) for member in sorted(had - now)]
    for group_id in sorted(state.groups):
        if group_id not in sites and not state.groups[group_id].retired:
            # Retiring empties the group: each member's removal passes the gate first, like any other.
            had = state.group_members.get(group_id, frozenset())
            if relinked:
                had = frozenset(relinked.get(member, member) for member in had)
            changes.extend(RemoveGroupMember(group_id, member) for member in sorted(had))
            changes.append(RetireGroup(group_id))
    return changes


class _Labels(Mapping[str, UserLabel]):
    """Names for the users a plan mentions, worked out when a review asks (a first import of 100k
    users would otherwise build 100k labels nobody reads): Azure's when it has them, else the store's."""

    def __init__(
        self,
        external_ids: frozenset[str],
        users: Mapping[str, DirectoryUser],
        state: StoreState,
        lookups: Mapping[str, DirectoryUser | None],
    ) -> None:
        self._ids = external_ids
        self._users = users
        self._state = state
        self._lookups = lookups
        self._stored: dict[str, StoredUser] | None = None

    def label(self, external_id: str) -> UserLabel | None:
        """Any user's label, mentioned by the plan or not (``None``: unknown)."""
        try:
            return self._label(external_id)
        except KeyError:
            return None

    def __getitem__(self, external_id: str) -> UserLabel:
        if external_id not in self._ids:
            raise KeyError(external_id)
        return self._label(external_id)

    def _label(self, external_id: str) -> UserLabel:
        user = self._users.get(external_id) or self._lookups.get(external_id)
        if user is not None:
            return UserLabel(user.display_name, user.email)
        if self._stored is None:
            self._stored = {s.external_id: s for s in self._state.users.values() if s.external_id is not None}
        stored = self._stored.get(external_id)
        if stored is None:
            raise KeyError(external_id)
        return UserLabel(stored.display_name, stored.email)

    def __iter__(self) -> Iterator[str]:
        return (external_id for external_id in sorted(self._ids) if external_id in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, external_id: object) -> bool:
        if external_id not in self._ids:
            return False
        assert isinstance(external_id, str)
        if external_id in self._users or self._lookups.get(external_id) is not None:
            return True
        if self._stored is None:
            self._stored = {s.external_id: s for s in self._state.users.values() if s.external_id is not None}
        return external_id in self._stored

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<labels for {len(self._ids)} users>"
