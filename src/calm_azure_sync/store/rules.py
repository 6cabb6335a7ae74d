"""The apply rules of the store protocol, as plain data and pure functions.

Every shipped store applies changes through :class:`UserTables`, and a host
writing its own store can too: load the rows a batch can touch (see
:func:`batch_keys`) into a :class:`UserTables` with ``log=[]``, call
:meth:`UserTables.apply`, and write back the logged :data:`Mutation` records
in order (user rows before grant rows). The rules then cannot drift from the
shipped stores, and :mod:`calm_azure_sync.testing.store_conformance` checks
the result. Nothing here does IO.

The helpers are re-exported here (``from calm_azure_sync.store.rules import
batch_keys`` works as it did): mutation records in ``store/mutations.py``, batch
loading hints in ``store/batch.py``, ids in ``store/user_ids.py``, the sync state's JSON in ``core/state.py``.

What each change does, and when it fails, is the table in docs/stores.md and
the :class:`~calm_azure_sync.store.protocol.UserStore` docstring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Final, TypeAlias

import attrs

from .._gc import collector_paused
from .._text import clean_text
from ..core.plan import (
    AddGroupMember,
    Assign,
    Change,
    CreateUser,
    DeactivateUser,
    LinkUser,
    RelinkUser,
    RemoveGroupMember,
    RetireGroup,
    Unassign,
    UpdateUser,
    UpsertGroup,
    change_kind,
)
from ..core.state import state_from_json, state_to_json  # re-exported: their home is core/state.py
from ..model import Role, email_key
from ._table_reads import TableReads
from ._values import checked_grant, names_equal, not_text, storable_values
from .batch import (  # re-exported: their home is store/batch.py
    BatchKeys,
    add_user_keys,
    batch_group_ids,
    batch_keys,
    batch_member_probes,
    batch_reads_grants,
    batch_reads_user_rows,
)
from .mutations import (  # re-exported: their home is store/mutations.py
    GrantKey,
    GrantValue,
    GrantWrite,
    GroupKey,
    GroupWrite,
    MemberWrite,
    Mutation,
    UserWrite,
)
from .protocol import ChangeResult, StoredUser, SyncedGroup
from .user_ids import new_user_id  # re-exported: its home is store/user_ids.py

__all__ = [
    "BatchKeys",
    "GrantKey",
    "GrantValue",
    "GrantWrite",
    "GroupKey",
    "GroupWrite",
    "MemberWrite",
    "Mutation",
    "UserTables",
    "UserWrite",
    "add_user_keys",
    "batch_group_ids",
    "batch_keys",
    "batch_member_probes",
    "batch_reads_grants",
    "batch_reads_user_rows",
    "checked_grant",
    "new_user_id",
    "state_from_json",
    "state_to_json",
]

_Applier: TypeAlias = Callable[["UserTables", str, Any], ChangeResult]

APPLIED: Final = "applied"
UNCHANGED: Final = "unchanged"


@attrs.define
class UserTables(TableReads):
    """Users and grants as plain dicts, with the apply rules of the store protocol.

    ``users`` maps user id to :class:`StoredUser`; ``by_external_id`` and
    ``by_email_key`` index it; ``grants`` maps user id to
    ``{(site_id, module, source): (role, trust_site_id)}``. ``groups`` maps
    (trust_site_id, group external id) to :class:`SyncedGroup` and
    ``members`` the same key to the member user ids. When ``log`` is a list,
    every mutation is appended to it too (a database-backed store writes
    them back: users, then grants, then groups, then memberships).

    Every ``apply_*`` rule checks before it mutates, so a change that fails
    leaves the tables exactly as they were.
    """

    users: dict[str, StoredUser] = attrs.field(factory=dict)
    by_external_id: dict[str, str] = attrs.field(factory=dict)
    by_email_key: dict[str, str] = attrs.field(factory=dict)
    grants: dict[str, dict[GrantKey, GrantValue]] = attrs.field(factory=dict)
    groups: dict[GroupKey, SyncedGroup] = attrs.field(factory=dict)
    members: dict[GroupKey, set[str]] = attrs.field(factory=dict)
    log: list[Mutation] | None = None

    # Change type -> its rule; filled in below the class.
    _RULES: ClassVar[dict[type, _Applier]] = {}

    def copy(self) -> UserTables:
        """A copy whose changes leave this one as it is (the values are frozen; the containers are new)."""
        return UserTables(
            users=dict(self.users),
            by_external_id=dict(self.by_external_id),
            by_email_key=dict(self.by_email_key),
            grants={user_id: dict(grants) for user_id, grants in self.grants.items()},
            groups=dict(self.groups),
            members={key: set(members) for key, members in self.members.items()},
            log=None if self.log is None else list(self.log),
        )

    # -- building -----------------------------------------------------------

    def put_user(self, user: StoredUser) -> None:
        """Add a user row as it already is (loading, not a mutation)."""
        self.users[user.user_id] = user
        self.by_email_key[email_key(user.email)] = user.user_id
        if user.external_id is not None:
            self.by_external_id[user.external_id] = user.user_id

    def put_grant(self, user_id: str, key: GrantKey, value: GrantValue) -> None:
        """Add a grant row as it already is (loading, not a mutation)."""
        self.grants.setdefault(user_id, {})[key] = value

    def put_external_id(self, external_id: str, user_id: str) -> None:
        """Index a user by external id alone, without its row (loading, not a mutation).

        Enough for group and membership rules (see :func:`batch_reads_user_rows`);
        a user rule needs the row, added with :meth:`put_user`.
        """
        self.by_external_id[external_id] = user_id

    def put_group(self, group: SyncedGroup) -> None:
        """Add a synced group row as it already is (loading, not a mutation)."""
        key = (group.trust_site_id, group.external_id)
        self.groups[key] = group
        self.members.setdefault(key, set())

    def put_member(self, key: GroupKey, user_id: str) -> None:
        """Add a membership row as it already is (loading, not a mutation)."""
        self.members.setdefault(key, set()).add(user_id)

    # -- mutations (logged) -------------------------------------------------

    def _write_group(self, group: SyncedGroup, new: bool) -> None:
        self.groups[(group.trust_site_id, group.external_id)] = group
        if self.log is not None:
            self.log.append(GroupWrite(group, new))

    def _set_member(self, key: GroupKey, user_id: str, member: bool) -> None:
        held = self.members.setdefault(key, set())
        if member:
            held.add(user_id)
        else:
            held.discard(user_id)
        if self.log is not None:
            self.log.append(MemberWrite(key, user_id, member))

    def _insert_user(self, user: StoredUser) -> None:
        self.put_user(user)
        if self.log is not None:
            self.log.append(UserWrite(user, new=True))

    def _replace_user(self, user: StoredUser) -> None:
        old = self.users[user.user_id]
        if email_key(old.email) != email_key(user.email):
            del self.by_email_key[email_key(old.email)]
        if old.external_id is not None and old.external_id != user.external_id:
            del self.by_external_id[old.external_id]
        self.put_user(user)
        if self.log is not None:
            self.log.append(UserWrite(user, new=False))

    def _upsert_grant(self, user_id: str, key: GrantKey, value: GrantValue) -> None:
        self.put_grant(user_id, key, value)
        if self.log is not None:
            self.log.append(GrantWrite(user_id, key, value))

    def _delete_grant(self, user_id: str, key: GrantKey) -> bool:
        held = self.grants.get(user_id)
        if held is None or key not in held:
            return False
        del held[key]
        if self.log is not None:
            self.log.append(GrantWrite(user_id, key, None))
        return True

    # -- host helpers ---------------------------------------------------------

    def set_active(self, user_id: str, active: bool) -> None:
        """Activate or deactivate a user by hand (clears the sync's deactivation mark)."""
        self._replace_user(attrs.evolve(self.users[user_id], active=active, deactivated_by_sync=False))

    def add_user(self, email: str, display_name: str, user_id: str | None = None) -> str:
        """Add a manually invited user; raise ``ValueError`` on a taken email or id."""
        email = clean_text(email.strip())
        problem = self._email_problem(email, owner=None)
        if problem is not None:
            raise ValueError(problem)
        user_id = new_user_id() if user_id is None else user_id
        bad_id = not_text(user_id)
        if bad_id is not None:
            raise ValueError(f"user id {bad_id}")
        if user_id in self.users:
            raise ValueError(f"user id {user_id!r} is already taken")
        self._insert_user(StoredUser(user_id=user_id, email=email, display_name=clean_text(display_name)))
        return user_id

    def grant(self, user_id: str, site_id: str, module: str, role: Role | str) -> None:
        """Give ``user_id`` a manual grant (replacing a manual one on the same site and module).

        The arguments are checked first (``ValueError``, ``ConfigError``), then
        the user (``KeyError``), in the order the database stores check them.
        """
        parsed = checked_grant(site_id, module, role)
        if user_id not in self.users:
            raise KeyError(f"no user with id {user_id!r}")
        self._upsert_grant(user_id, (site_id, module, "manual"), (parsed, None))

    # -- applying changes -----------------------------------------------------

    def apply(self, trust_site_id: str, changes: Iterable[Change]) -> list[ChangeResult]:
        """Apply ``changes`` in order; one result per change."""
        # A big batch allocates many objects and frees none: pausing the
        # cycle collector keeps it from rescanning the whole store each time.
        rules = self._RULES
        problem = not_text(trust_site_id)
        if problem is not None:
            return [ChangeResult(change, f"trust site id {problem}") for change in changes]
        with collector_paused():
            return [
                rule(self, trust_site_id, change)
                if (rule := rules.get(type(change))) is not None
                else _unsupported(change)
                for change in changes
            ]

    def apply_one(self, trust_site_id: str, change: Change) -> ChangeResult:
        """Apply one change and say what happened (``applied``, ``unchanged`` or ``failed``)."""
        rule = self._RULES.get(type(change))
        if rule is None:
            return _unsupported(change)
        problem = not_text(trust_site_id)
        if problem is not None:
            return ChangeResult(change, f"trust site id {problem}")
        return rule(self, trust_site_id, change)

    def _email_problem(self, email: str, owner: str | None) -> str | None:
        key = email_key(email)
        if not key:
            return "the email is empty"
        holder = self.by_email_key.get(key)
        if holder is not None and holder != owner:
            return f"email {email!r} is already used by another user ({holder})"
        return None

    def _user_for(self, external_id: str, user_id: str | None = None) -> tuple[StoredUser | None, str | None]:
        found = self.by_external_id.get(external_id)
        if found is None:
            return None, f"no user has external id {external_id!r}"
        if user_id is not None and found != user_id:
            return None, f"external id {external_id!r} belongs to user {found!r}, not {user_id!r}"
        return self.users[found], None

    def _apply_create(self, trust_site_id: str, change: CreateUser) -> ChangeResult:
        if change.external_id in self.by_external_id:
            # The user exists already: a re-applied batch, or another trust of
            # the same tenant created them a moment ago. A create never
            # overwrites a user; if Azure's values differ, the next plan has
            # an UpdateUser for them. "unchanged": the log says no creation.
            return ChangeResult(change, None, UNCHANGED)
        email, display_name, given_name, surname = storable_values(change)
        tenant_id = change.tenant_id
        problem = not_text(change.external_id, tenant_id) or self._email_problem(email, owner=None)
        if problem is not None:
            return ChangeResult(change, problem)
        self._insert_user(
            StoredUser(
                user_id=new_user_id(),
                email=email,
                display_name=display_name,
                external_id=change.external_id,
                given_name=given_name,
                surname=surname,
                tenant_id=tenant_id,
            )
        )
        return ChangeResult(change, None, APPLIED)

    def _refresh(
        self,
        user: StoredUser,
        email: str,
        display_name: str,
        given_name: str | None,
        surname: str | None,
        *,
        external_id: str | None = None,
        active: bool | None = None,
        tenant_id: str | None,
    ) -> bool:
        """Give ``user`` these values; return whether anything changed (and was written)."""
        new_external_id = user.external_id if external_id is None else external_id
        new_active = user.active if active is None else active
        # Reactivating clears the mark; a user the sync deactivated keeps it.
        by_sync = user.deactivated_by_sync and not new_active
        if (
            names_equal(user, email, display_name, given_name, surname)
            and new_external_id == user.external_id
            and new_active == user.active
            and by_sync == user.deactivated_by_sync
            and tenant_id == user.tenant_id
        ):
            return False  # nothing to write: a re-run must not churn rows
        self._replace_user(
            attrs.evolve(
                user,
                email=email,
                display_name=display_name,
                given_name=given_name,
                surname=surname,
                external_id=new_external_id,
                active=new_active,
                deactivated_by_sync=by_sync,
                tenant_id=tenant_id,
            )
        )
        return True

    def _apply_link(self, trust_site_id: str, change: LinkUser) -> ChangeResult:
        user = self.users.get(change.user_id)
        if user is None:
            return ChangeResult(change, f"no user with id {change.user_id!r}")
        if user.external_id is not None and user.external_id != change.external_id:
            return ChangeResult(
                change, f"user {change.user_id!r} is already linked to external id {user.external_id!r}"
            )
        holder = self.by_external_id.get(change.external_id)
        if holder is not None and holder != change.user_id:
            return ChangeResult(change, f"external id {change.external_id!r} already belongs to user {holder!r}")
        return self._take_values(user, change, external_id=change.external_id)

    def _apply_relink(self, trust_site_id: str, change: RelinkUser) -> ChangeResult:
        user = self.users.get(change.user_id)
        if user is None:
            return ChangeResult(change, f"no user with id {change.user_id!r}")
        if user.external_id == change.external_id:
            # Relinked already (a re-applied batch): only the values may differ.
            return self._take_values(user, change)
        if user.external_id != change.previous_external_id:
            return ChangeResult(
                change,
                f"user {change.user_id!r} carries external id {user.external_id!r}, "
                f"not {change.previous_external_id!r}",
            )
        holder = self.by_external_id.get(change.external_id)
        if holder is not None:
            return ChangeResult(change, f"external id {change.external_id!r} already belongs to user {holder!r}")
        # Grants and memberships are the user id's: manual and synced ones stay.
        return self._take_values(user, change, external_id=change.external_id)

    def _apply_update(self, trust_site_id: str, change: UpdateUser) -> ChangeResult:
        user, problem = self._user_for(change.external_id, change.user_id)
        if user is None:
            return ChangeResult(change, problem)
        return self._take_values(user, change, active=True if change.reactivate else None)

    def _take_values(
        self,
        user: StoredUser,
        change: LinkUser | RelinkUser | UpdateUser,
        *,
        external_id: str | None = None,
        active: bool | None = None,
    ) -> ChangeResult:
        """Give ``user`` the change's email, names and tenant, unless another user holds that email.

        A link or relink names the account's tenant; an update's ``None``
        tenant means "not known", so it keeps the stored one (never clears it).
        """
        email, display_name, given_name, surname = storable_values(change)
        tenant_id = change.tenant_id
        if tenant_id is None and isinstance(change, UpdateUser):
            tenant_id = user.tenant_id
        problem = not_text(external_id, change.tenant_id) or self._email_problem(email, owner=user.user_id)
        if problem is not None:
            return ChangeResult(change, problem)
        changed = self._refresh(
            user,
            email,
            display_name,
            given_name,
            surname,
            external_id=external_id,
            active=active,
            tenant_id=tenant_id,
        )
        return ChangeResult(change, None, APPLIED if changed else UNCHANGED)

    def _apply_assign(self, trust_site_id: str, change: Assign) -> ChangeResult:
        # The hottest path of a first import (three in four changes): inlined lookups.
        user_id = self.by_external_id.get(change.external_id)
        if user_id is None:
            return ChangeResult(change, self._user_for(change.external_id)[1])
        key: GrantKey = (change.site_id, change.module, "azure")
        value: GrantValue = (change.role, trust_site_id)
        held = self.grants.get(user_id)
        if held is not None and held.get(key) == value:
            return ChangeResult(change, None, UNCHANGED)
        if not (change.site_id.isascii() and change.module.isascii()):
            problem = not_text(change.site_id, change.module)
            if problem is not None:
                return ChangeResult(change, problem)
        self._upsert_grant(user_id, key, value)
        return ChangeResult(change, None, APPLIED)

    def _apply_unassign(self, trust_site_id: str, change: Unassign) -> ChangeResult:
        user, problem = self._user_for(change.external_id)
        if user is None:
            return ChangeResult(change, problem)
        # Removing a grant that is already gone succeeds, unchanged: the state
        # is the one asked for, and a re-applied batch must not turn into errors.
        removed = self._delete_grant(user.user_id, (change.site_id, change.module, "azure"))
        return ChangeResult(change, None, APPLIED if removed else UNCHANGED)

    def _apply_deactivate(self, trust_site_id: str, change: DeactivateUser) -> ChangeResult:
        user, problem = self._user_for(change.external_id, change.user_id)
        if user is None:
            return ChangeResult(change, problem)
        # Any grant left (manual, or another trust's) keeps the user active:
        # refused harmlessly, so "unchanged", and the log claims no deactivation.
        if self.grants.get(user.user_id) or not user.active:
            return ChangeResult(change, None, UNCHANGED)
        self._replace_user(attrs.evolve(user, active=False, deactivated_by_sync=True))
        return ChangeResult(change, None, APPLIED)

    # -- groups -------------------------------------------------------------------

    def _apply_upsert_group(self, trust_site_id: str, change: UpsertGroup) -> ChangeResult:
        problem = not_text(change.external_id, *change.site_ids)
        if problem is not None:
            return ChangeResult(change, problem)
        key = (trust_site_id, change.external_id)
        old = self.groups.get(key)
        group = SyncedGroup(
            external_id=change.external_id,
            trust_site_id=trust_site_id,
            display_name=clean_text(change.display_name),
            site_ids=tuple(change.site_ids),
        )
        if old == group:
            return ChangeResult(change, None, UNCHANGED)
        self._write_group(group, new=old is None)
        return ChangeResult(change, None, APPLIED)

    def _membership(
        self, trust_site_id: str, change: AddGroupMember | RemoveGroupMember
    ) -> tuple[GroupKey, str] | str:
        """The group key and member user id of a membership change, or why there is none."""
        user_id = self.by_external_id.get(change.external_id)
        if user_id is None:
            return f"no user has external id {change.external_id!r}"
        key = (trust_site_id, change.group_external_id)
        group = self.groups.get(key)
        if group is None:
            return f"trust {trust_site_id!r} has no synced group {change.group_external_id!r}"
        return key, user_id

    def _apply_add_member(self, trust_site_id: str, change: AddGroupMember) -> ChangeResult:
        found = self._membership(trust_site_id, change)
        if isinstance(found, str):
            return ChangeResult(change, found)
        key, user_id = found
        if self.groups[key].retired:
            return ChangeResult(change, f"synced group {change.group_external_id!r} is retired; upsert it first")
        if user_id in self.members.get(key, ()):
            return ChangeResult(change, None, UNCHANGED)
        self._set_member(key, user_id, True)
        return ChangeResult(change, None, APPLIED)

    def _apply_remove_member(self, trust_site_id: str, change: RemoveGroupMember) -> ChangeResult:
        if change.external_id not in self.by_external_id and (trust_site_id, change.group_external_id) in self.groups:
            # Memberships belong to users: when no user carries the object id
            # (say, it was relinked to a re-created account earlier in this
            # batch), it is no member, which is what the removal asks.
            return ChangeResult(change, None, UNCHANGED)
        found = self._membership(trust_site_id, change)
        if isinstance(found, str):
            return ChangeResult(change, found)
        key, user_id = found
        if user_id not in self.members.get(key, ()):
            return ChangeResult(change, None, UNCHANGED)
        self._set_member(key, user_id, False)
        return ChangeResult(change, None, APPLIED)

    def _apply_retire_group(self, trust_site_id: str, change: RetireGroup) -> ChangeResult:
        key = (trust_site_id, change.external_id)
        group = self.groups.get(key)
        if group is None:
            return ChangeResult(change, f"trust {trust_site_id!r} has no synced group {change.external_id!r}")
        held = sorted(self.members.get(key, ()))
        if group.retired and not held:
            return ChangeResult(change, None, UNCHANGED)
        for user_id in held:
            self._set_member(key, user_id, False)
        if not group.retired:
            self._write_group(attrs.evolve(group, retired=True), new=False)
        return ChangeResult(change, None, APPLIED)


def _unsupported(change: Change) -> ChangeResult:
    return ChangeResult(change, f"this store does not apply {change_kind(change)} changes")


# One table, change type -> rule: a new change type is one more row here.
UserTables._RULES.update(
    {
        Assign: UserTables._apply_assign,
        Unassign: UserTables._apply_unassign,
        CreateUser: UserTables._apply_create,
        LinkUser: UserTables._apply_link,
        RelinkUser: UserTables._apply_relink,
        UpsertGroup: UserTables._apply_upsert_group,
        AddGroupMember: UserTables._apply_add_member,
        RemoveGroupMember: UserTables._apply_remove_member,
        RetireGroup: UserTables._apply_retire_group,
        UpdateUser: UserTables._apply_update,
        DeactivateUser: UserTables._apply_deactivate,
    }
)
