"""The one error tree of calm-azure-sync.

Every exception the library raises on purpose derives from
:class:`CalmAzureSyncError`, so a host can catch the whole family in one place::

    CalmAzureSyncError
    ├── ConfigError                     bad configuration; ``.problems`` lists every problem
    │   ├── ChildSiteConfigurationError configuring at a child site; ``.trust_site_id``
    │   └── HoldMismatchError           ``confirm_hold`` is not the pending hold's id
    ├── NotAuthorizedError              the actor is not an Admin of the Trust
    ├── DirectoryError                  Graph (or another directory) failed; ``.code``,
    │   │                               ``.status``, ``.request_id``
    │   ├── DirectoryAccessError        401/403: ``.missing_permissions``
    │   ├── DeltaExpiredError           a delta cursor can no longer be used: read in full
    │   └── GroupNotFoundError          a mapped group does not exist; ``.group_id``
    ├── ConsentError                    the admin-consent callback was refused or forged;
    │                                   ``.error``, ``.error_description``
    ├── ImportAlreadyRunningError       another import of the same trust holds the lock
    └── StoreError                      the store's database failed (connection lost, server
        │                               restarted, disk full); the driver's error is ``__cause__``
        └── RunLockLostError            the run lost its lock mid-run: it writes nothing more
                                        (also an ImportAlreadyRunningError, as in v0.3)

Messages name what is wrong and where. None of them ever carries a secret
(client secret, certificate or token): directory errors are built from Graph's
error body, never from request headers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "CalmAzureSyncError",
    "ChildSiteConfigurationError",
    "ConfigError",
    "TenantMismatchError",
    "ConsentError",
    "DeltaExpiredError",
    "DirectoryAccessError",
    "DirectoryError",
    "GroupNotFoundError",
    "HoldMismatchError",
    "ImportAlreadyRunningError",
    "NotAuthorizedError",
    "RunLockLostError",
    "StoreError",
]


class CalmAzureSyncError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(CalmAzureSyncError, ValueError):
    """The configuration (or a value in it) is invalid.

    ``problems`` lists every problem found, each prefixed with the dotted path
    of the bad value (``mappings[2].site_id: …``), so a settings screen can
    show them all at once.
    """

    def __init__(self, problems: str | Iterable[str]) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        if not self.problems:
            self.problems = ["invalid configuration"]
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} problems:\n" + "\n".join(
                f"- {problem}" for problem in self.problems
            )
        super().__init__(message)


class ChildSiteConfigurationError(ConfigError):
    """Azure is configured at the Trust, never at one of its child sites.

    ``trust_site_id`` is the Trust to send the admin to ("Go to Trust Site
    Configuration").
    """

    def __init__(self, site_id: str, trust_site_id: str) -> None:
        self.site_id = site_id
        self.trust_site_id = trust_site_id
        super().__init__(
            f"site {site_id!r} is a child site: Microsoft Azure is configured "
            f"at its Trust site {trust_site_id!r}"
        )


class TenantMismatchError(ConfigError):
    """The directory reads another tenant than the one the trust is connected to (or cannot say which).

    ``expected`` is the trust's tenant id, ``actual`` the directory's (``None``
    when it does not say). Nothing is read or written.
    """

    def __init__(self, message: str, *, expected: str, actual: str | None) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(f"tenant_id: {message}")


class HoldMismatchError(ConfigError):
    """A run was asked to confirm a hold that is not the trust's pending one.

    The admin reviewed another set of removals (or none is pending any more):
    nothing is applied. ``confirmed`` is the id given, ``pending`` the pending
    hold's id (``None`` when there is none).
    """

    def __init__(self, confirmed: str, pending: str | None) -> None:
        self.confirmed = confirmed
        self.pending = pending
        if pending is None:
            problem = f"confirm_hold: no hold is pending, so {confirmed!r} cannot be confirmed"
        else:
            problem = (
                f"confirm_hold: {confirmed!r} is not the pending hold ({pending!r}); "
                "review the pending hold and confirm it by its id"
            )
        super().__init__(problem)


class NotAuthorizedError(CalmAzureSyncError, PermissionError):
    """The acting user may not connect, configure or import here."""


class DirectoryError(CalmAzureSyncError):
    """Reading the directory failed.

    ``code`` is Graph's error code (``Request_BadRequest``, ``TooManyRequests``…)
    or a local one (``invalid_data``), ``status`` the HTTP status when there
    was one, ``request_id`` Graph's request id for a support ticket.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        self.message = message
        self.code = code
        self.status = status
        self.request_id = request_id
        parts = [message]
        if code:
            parts.append(f"code={code}")
        if status is not None:
            parts.append(f"status={status}")
        if request_id:
            parts.append(f"request-id={request_id}")
        super().__init__(" | ".join(parts))


class DirectoryAccessError(DirectoryError):
    """Graph refused the request (401/403): the app lacks a permission or consent.

    ``missing_permissions`` names the application permissions that grant the
    refused call (any one of them is enough).
    """

    def __init__(
        self,
        message: str,
        *,
        missing_permissions: Sequence[str] = (),
        code: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        self.missing_permissions = tuple(missing_permissions)
        if self.missing_permissions:
            message = f"{message} (grant {' or '.join(self.missing_permissions)} and re-consent)"
        super().__init__(message, code=code, status=status, request_id=request_id)


class DeltaExpiredError(DirectoryError):
    """A delta cursor can no longer be followed: the caller must read the directory in full.

    Graph answers ``410 Gone`` (a "synchronization reset") or an error code
    such as ``syncStateNotFound`` / ``resyncRequired`` when a delta token has
    expired (directory tokens live 7 days); a cursor that is corrupt, of
    another version or from another directory is refused the same way
    (``code="invalid_cursor"``). No cursor is returned with it.
    """


class GroupNotFoundError(DirectoryError):
    """A group (usually a mapped one) does not exist in the directory."""

    def __init__(
        self,
        group_id: str,
        *,
        code: str | None = None,
        status: int | None = 404,
        request_id: str | None = None,
    ) -> None:
        self.group_id = group_id
        super().__init__(
            f"group {group_id!r} was not found in the directory",
            code=code,
            status=status,
            request_id=request_id,
        )


class ConsentError(CalmAzureSyncError):
    """The admin-consent callback was refused, forged or incomplete.

    ``error`` and ``error_description`` carry Azure's own values when Azure
    reported the failure.
    """

    def __init__(
        self, message: str, *, error: str | None = None, error_description: str | None = None
    ) -> None:
        self.error = error
        self.error_description = error_description
        super().__init__(message)


class ImportAlreadyRunningError(CalmAzureSyncError):
    """Another import of the same trust is running (the run lock is held)."""

    def __init__(self, trust_site_id: str) -> None:
        self.trust_site_id = trust_site_id
        super().__init__(f"an import of trust {trust_site_id!r} is already running")


class StoreError(CalmAzureSyncError):
    """A store's database failed: the connection was lost, the server restarted, the disk is full.

    Raised by the shipped stores for database failures (a change the
    database refuses is a failed :class:`~calm_azure_sync.ChangeResult`
    instead). The message says what failed and where, never a password or
    a conninfo; the driver's exception is chained as ``__cause__`` for the
    host's logs. No driver exception type reaches a host uncaught.
    """


class RunLockLostError(StoreError, ImportAlreadyRunningError):
    """The run lost its trust's run lock while it ran; the store refused the write.

    PostgreSQL: the lock's connection closed (a server restart, a network
    cut); SQLite: another import took the lease over. Another import may be
    running now, so this run writes nothing more: the write that raised this
    did not land. It is also an :class:`ImportAlreadyRunningError`, which
    v0.3 raised in this case.
    """

    def __init__(self, trust_site_id: str, why: str = "") -> None:
        self.trust_site_id = trust_site_id
        CalmAzureSyncError.__init__(
            self,
            f"run lock lost: the import of trust {trust_site_id!r} no longer holds its lock"
            + (f" ({why})" if why else ""),
        )
