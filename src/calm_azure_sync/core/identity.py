"""Matching Azure users onto store users: who is created, linked, relinked, updated or in conflict.

The planner's identity step (:func:`calm_azure_sync.core.planner.build_plan`
calls :func:`resolve_identities` once per plan). Identity is the Entra object
id, never the email; an email decides only whom a new object may take over.
Nothing here does IO.

For each in-scope Azure user, by what the store holds under its external id
("stored") and under its email ("holder")::

    stored   holder                                  decision
    -------  --------------------------------------  ---------------------------------------
    any      none, or the stored user itself          update (or create when no stored user)
    none     a hand-invited user (no external id)     link the invited user
    any      a synced user whose Azure account moves   later round: once that move is applied
             to another email in this plan
    none     a synced user whose object is gone        relink: the store user takes the new id
             (the directory answered None, and this
             trust synced that account: only the
             directory it came from can prove it gone)
    any      a synced user whose object now has        refresh the holder's email first, then
             another email (directory proves it)       the newcomer in a later round
    any      anything else                             conflict: reported, access left as is

A holder the snapshot does not show and the directory was not asked about
is a conflict for now, and named in ``lookups_needed``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import attrs

from ..model import DirectoryUser, email_key
from ..store.protocol import StoredUser
from .plan import CreateUser, LinkUser, RelinkUser, Skip, UpdateUser

__all__ = ["IdentityChange", "Identities", "display_name", "resolve_identities"]

IdentityChange = CreateUser | LinkUser | RelinkUser | UpdateUser | None

# (user, email, email key, stored user by external id, holder of the email)
_Waiting = tuple[DirectoryUser, str, str, StoredUser | None, StoredUser]


@attrs.define
class Identities:
    """What :func:`resolve_identities` decided, per in-scope Azure user (by object id)."""

    changes: dict[str, IdentityChange] = attrs.field(factory=dict)
    rounds: dict[str, int] = attrs.field(factory=dict)
    refreshes: dict[str, UpdateUser | None] = attrs.field(factory=dict)  # newcomer -> holder refresh
    conflicts: list[Skip] = attrs.field(factory=list)
    lookups_needed: frozenset[str] = frozenset()


@attrs.define
class _Resolver:
    """One plan's matching: the decisions so far and the emails their holders give up."""

    tenant_of: Callable[[str], str | None]  # an Azure user's tenant (API §13; None: the trust records none)
    tenant_label: Callable[[str | None], str | None]  # how people read a tenant (its name, else its id)
    found: Identities = attrs.field(factory=Identities)
    released: dict[str, int] = attrs.field(factory=dict)  # email key -> round in which its holder moves away

    def settle(
        self, user: DirectoryUser, email: str, key: str, stored: StoredUser | None, holder: StoredUser | None,
        round_: int,
    ) -> None:
        self.found.changes[user.id] = identity_change(user, email, stored, holder, self.tenant_of(user.id))
        self.found.rounds[user.id] = round_
        if stored is not None and email_key(stored.email) != key:
            self.released[email_key(stored.email)] = round_

    def wait_for_released(self, waiting: list[_Waiting]) -> list[_Waiting]:
        """Settle, round by round, each user whose email a holder gives up; the rest still wait."""
        while waiting:
            still_waiting = []
            for user, email, key, stored, holder in waiting:
                if key in self.released:
                    self.settle(user, email, key, stored, None, self.released[key] + 1)
                else:
                    still_waiting.append((user, email, key, stored, holder))
            if len(still_waiting) == len(waiting):
                break
            waiting = still_waiting
        return waiting

    def take_over(
        self,
        waiting: Sequence[_Waiting],
        in_scope_ids: set[str],
        known: Mapping[str, DirectoryUser | None],
        synced_here: Callable[[str], bool],
    ) -> None:
        """An email still held by another Azure object: relink, refresh the holder, or a conflict."""
        found = self.found
        needed: set[str] = set()
        for user, email, key, stored, holder in waiting:
            previous = holder.external_id
            if previous is None or previous in in_scope_ids or previous not in known:
                if previous is not None and previous not in in_scope_ids:
                    needed.add(previous)
                found.conflicts.append(_conflict(user, email, holder, self.tenant_of(user.id), self.tenant_label))
                continue
            now = known[previous]
            if now is None and stored is None and synced_here(previous):
                found.changes[user.id] = RelinkUser(
                    user.id, holder.user_id, previous, email, display_name(user, email), user.given_name, user.surname,
                    tenant_id=self.tenant_of(user.id),
                )
                found.rounds[user.id] = 0
            elif now is not None and now.email is not None and email_key(now.email) != key:
                found.refreshes[user.id] = UpdateUser(
                    previous, holder.user_id, now.email, display_name(now, now.email), now.given_name, now.surname,
                    changed=("email",),
                )
                self.settle(user, email, key, stored, None, 0)
            else:
                found.conflicts.append(_conflict(user, email, holder, self.tenant_of(user.id), self.tenant_label))
        found.lookups_needed = frozenset(needed)


def resolve_identities(
    in_scope: Sequence[tuple[DirectoryUser, str, str]],
    by_external: Mapping[str, StoredUser],
    by_email: Mapping[str, StoredUser],
    known: Mapping[str, DirectoryUser | None],
    synced_here: Callable[[str], bool],
    tenant_of: Callable[[str], str | None] = lambda external_id: None,
    tenant_label: Callable[[str | None], str | None] = lambda tenant: tenant,
) -> Identities:
    """How each in-scope Azure user maps onto the store: the table in the module docstring.

    ``tenant_of`` gives an Azure user's tenant, which the identity changes carry (API §13);
    ``tenant_label`` how a conflict across tenants names them.
    """
    resolver = _Resolver(tenant_of, tenant_label)
    waiting: list[_Waiting] = []
    for user, email, key in in_scope:
        stored = by_external.get(user.id)
        holder = by_email.get(key)
        if holder is None or (stored is not None and holder.user_id == stored.user_id):
            resolver.settle(user, email, key, stored, None, 0)
        elif stored is None and holder.external_id is None:
            resolver.settle(user, email, key, None, holder, 0)  # link the hand-invited user
        else:
            waiting.append((user, email, key, stored, holder))
    waiting = resolver.wait_for_released(waiting)
    resolver.take_over(waiting, {user.id for user, _, _ in in_scope}, known, synced_here)
    return resolver.found


def _conflict(
    user: DirectoryUser, email: str, holder: StoredUser, tenant: str | None,
    label: Callable[[str | None], str | None] = lambda tenant: tenant,
) -> Skip:
    # Across tenants the sentence names both (API §13); within one it stays as it always read.
    crossing = tenant is not None and holder.tenant_id is not None and tenant.lower() != holder.tenant_id.lower()
    return Skip(
        user.id,
        email,
        f"email conflict: {email}"
        + (f" (Azure account of tenant {label(tenant)})" if crossing else "")
        + f" is already used by store user {holder.user_id}"
        + (f" (synced from Azure account {holder.external_id}" if holder.external_id else "")
        + (f" of tenant {label(holder.tenant_id)}" if crossing else "")
        + (")" if holder.external_id else "")
        + "; not taken over, access left unchanged",
        keeps_access=True,
        conflict=True,
    )


def display_name(user: DirectoryUser, email: str) -> str:
    """The name a store user gets: Azure's display name, else the email."""
    name = (user.display_name or "").strip()
    return name or email


def identity_change(
    user: DirectoryUser, email: str, stored: StoredUser | None, invited: StoredUser | None, tenant: str | None = None
) -> CreateUser | LinkUser | UpdateUser | None:
    """The change that makes the store's record of ``user`` (of ``tenant``) current (``None`` if it is).

    A stored user without a tenant (synced before tenants were recorded) is
    qualified: an update that carries the tenant, ``changed`` naming ``tenant_id``.
    """
    name = display_name(user, email)
    if stored is not None:
        # Only a user the sync itself deactivated is reactivated; someone a
        # person deactivated in the app stays as they left them.
        reactivate = not stored.active and stored.deactivated_by_sync
        new_tenant = tenant is not None and stored.tenant_id != tenant
        if (
            not reactivate
            and not new_tenant
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
        if new_tenant:
            changed += ("tenant_id",)
        return UpdateUser(
            user.id, stored.user_id, email, name, user.given_name, user.surname, reactivate=reactivate,
            changed=changed, tenant_id=tenant,
        )
    if invited is not None:
        return LinkUser(user.id, invited.user_id, email, name, user.given_name, user.surname, tenant)
    return CreateUser(user.id, email, name, user.given_name, user.surname, tenant)
