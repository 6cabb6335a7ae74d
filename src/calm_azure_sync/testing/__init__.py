"""Test helpers shipped with the library, for hosts' own test suites.

- :class:`FakeGraphServer` (``testing.fake_graph``): a Graph-shaped server on
  127.0.0.1 with fault injection and a request log;
- :class:`FakeCredential` (``testing.credential``): an async token credential
  handing out a fixed token, for ``GraphDirectory.from_credential`` against it;
- :func:`check_directory` (``testing.directory_conformance``): does a
  ``Directory`` answer the way Entra ID does; :func:`check_delta`: do its
  delta reads end where its full reads do;
- :class:`UserStoreConformance` (``testing.store_conformance``, needs pytest
  and pytest-asyncio): subclass it to run the store suite on your ``UserStore``;
- :class:`AuditSinkConformance` (``testing.audit_conformance``, likewise) for
  your ``AuditSink``;
- :func:`generate_tenant` (``testing.synthetic``): Graph-shaped trusts of any size.

Each is imported on first use, so importing this package costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from .audit_conformance import AuditSinkConformance
    from .credential import FakeCredential
    from .directory_conformance import check_delta, check_directory, conformance_fixture
    from .fake_graph import FakeGraphServer, Fault
    from .store_conformance import UserStoreConformance
    from .synthetic import SyntheticTenant, generate_tenant

_LAZY = {
    "AuditSinkConformance": ".audit_conformance",
    "check_delta": ".directory_conformance",
    "check_directory": ".directory_conformance",
    "FakeCredential": ".credential",
    "conformance_fixture": ".directory_conformance",
    "FakeGraphServer": ".fake_graph",
    "Fault": ".fake_graph",
    "UserStoreConformance": ".store_conformance",
    "SyntheticTenant": ".synthetic",
    "generate_tenant": ".synthetic",
}

__all__ = [
    "AuditSinkConformance",
    "FakeCredential",
    "FakeGraphServer",
    "Fault",
    "SyntheticTenant",
    "UserStoreConformance",
    "check_delta",
    "check_directory",
    "conformance_fixture",
    "generate_tenant",
]


__getattr__ = lazy_attributes(__name__, _LAZY, globals())
