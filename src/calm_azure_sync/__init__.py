"""calm-azure-sync: import Microsoft Entra ID users and group memberships into CalmCompliance.

The public surface is everything in ``__all__``. The Graph-backed directory
(and so ``msgraph-sdk``) is imported only when first used, so policy work and
tests against :class:`InMemoryDirectory` never pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_attributes
from .audit.events import AuditEvent, AuditKind
from .audit.protocol import AuditSink, ImportLogQuery
from .core.plan import (
    AddGroupMember,
    Assign,
    CreateUser,
    DeactivateUser,
    LinkUser,
    Plan,
    RelinkUser,
    RemoveGroupMember,
    RetireGroup,
    Skip,
    Unassign,
    UpdateUser,
    UpsertGroup,
)
from .core.state import Hold, HoldScope, SyncState, SyncStateStore
from .directory.delta import DeltaDirectory, DirectoryDelta, GroupDelta, RemovedUser
from .directory.in_memory import InMemoryDirectory
from .directory.protocol import Directory, GroupDiscovery, PersonLookup, UserLookup
from .errors import (
    CalmAzureSyncError,
    ChildSiteConfigurationError,
    ConfigError,
    ConsentError,
    DeltaExpiredError,
    DirectoryAccessError,
    DirectoryError,
    GroupNotFoundError,
    HoldMismatchError,
    ImportAlreadyRunningError,
    NotAuthorizedError,
    RunLockLostError,
    StoreError,
    TenantMismatchError,
)
from .incremental import (
    DeltaCache,
    DeltaCacheStore,
    DeltaCacheWrite,
    DeltaHead,
    DeltaHeadStore,
    DeltaRows,
    DeltaRowsStore,
)
from .model import DirectoryGroup, DirectoryUser, Role, Site
from .policies.check import ConfigProblem
from .policies.config import RemovalPolicy, SyncConfig
from .policies.exclusion import ExclusionPolicy, ExclusionSuggestion
from .policies.hierarchy import Actor, TrustHierarchy, authorize
from .policies.mapping import GroupMapping, MappingPolicy
from .review import AccessRow, AccessTable
from .review.explain import Explanation
from .review.status import Attention, SyncStatus
from .store.protocol import (
    ChangeResult,
    FencedStore,
    Grant,
    GrantReader,
    PeopleRows,
    PeopleStore,
    StateWithChanges,
    StoredUser,
    StoreState,
    SyncedGroup,
    UserStore,
    VersionedStore,
)

if TYPE_CHECKING:
    from .audit.in_memory import InMemoryAuditSink
    from .audit.jsonl import JsonlAuditSink
    from .audit.sqlite import SqliteAuditSink
    from .directory.consent import ConsentResult, admin_consent_url, parse_consent_callback
    from .directory.graph import GraphDirectory
    from .reconciler import ImportReport, Reconciler
    from .store.in_memory import InMemoryUserStore
    from .store.sqlite import SqliteUserStore

    __version__: str


# Names imported on first use: the Graph SDK is slow to import, and the
# stores and sinks pull in modules that pure policy work does not need.
_LAZY = {
    # pyproject.toml is the one place the version is written; read from the installed metadata.
    "__version__": "._version",
    "ConsentResult": ".directory.consent",
    "admin_consent_url": ".directory.consent",
    "parse_consent_callback": ".directory.consent",
    "GraphDirectory": ".directory.graph",
    "ImportReport": ".reconciler",
    "Reconciler": ".reconciler",
    "InMemoryUserStore": ".store.in_memory",
    "SqliteUserStore": ".store.sqlite",
    "InMemoryAuditSink": ".audit.in_memory",
    "JsonlAuditSink": ".audit.jsonl",
    "SqliteAuditSink": ".audit.sqlite",
}


__getattr__ = lazy_attributes(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AccessRow",
    "AccessTable",
    "Actor",
    "AddGroupMember",
    "Assign",
    "Attention",
    "AuditEvent",
    "AuditKind",
    "AuditSink",
    "CalmAzureSyncError",
    "ChangeResult",
    "ChildSiteConfigurationError",
    "ConfigError",
    "ConfigProblem",
    "ConsentError",
    "ConsentResult",
    "CreateUser",
    "DeactivateUser",
    "DeltaCache",
    "DeltaCacheStore",
    "DeltaCacheWrite",
    "DeltaDirectory",
    "DeltaExpiredError",
    "DeltaHead",
    "DeltaHeadStore",
    "DeltaRows",
    "DeltaRowsStore",
    "Directory",
    "DirectoryAccessError",
    "DirectoryDelta",
    "DirectoryError",
    "DirectoryGroup",
    "DirectoryUser",
    "ExclusionPolicy",
    "ExclusionSuggestion",
    "FencedStore",
    "Explanation",
    "Grant",
    "GrantReader",
    "GraphDirectory",
    "GroupDelta",
    "GroupDiscovery",
    "GroupMapping",
    "GroupNotFoundError",
    "Hold",
    "HoldScope",
    "HoldMismatchError",
    "ImportAlreadyRunningError",
    "ImportLogQuery",
    "ImportReport",
    "InMemoryAuditSink",
    "InMemoryDirectory",
    "InMemoryUserStore",
    "JsonlAuditSink",
    "LinkUser",
    "MappingPolicy",
    "NotAuthorizedError",
    "TenantMismatchError",
    "PeopleRows",
    "PeopleStore",
    "PersonLookup",
    "Plan",
    "Reconciler",
    "RelinkUser",
    "RemovalPolicy",
    "RemoveGroupMember",
    "RemovedUser",
    "RetireGroup",
    "Role",
    "RunLockLostError",
    "Site",
    "Skip",
    "SqliteAuditSink",
    "SqliteUserStore",
    "StateWithChanges",
    "StoreError",
    "StoreState",
    "StoredUser",
    "SyncConfig",
    "SyncState",
    "SyncStateStore",
    "SyncStatus",
    "SyncedGroup",
    "TrustHierarchy",
    "Unassign",
    "UpdateUser",
    "UpsertGroup",
    "UserLookup",
    "UserStore",
    "VersionedStore",
    "admin_consent_url",
    "authorize",
    "parse_consent_callback",
]
