"""``calm_azure_sync.__version__``: the installed distribution's version, written only in pyproject.toml."""

from __future__ import annotations

from importlib import metadata

__all__ = ["__version__"]

try:
    __version__: str = metadata.version("calm-azure-sync")
except metadata.PackageNotFoundError:  # a source tree put on sys.path without installing it
    __version__ = "0+unknown"
