"""The PostgreSQL and Redis servers a benchmark needs: the ones in the environment, or throwaway ones.

``CALM_TEST_POSTGRES`` / ``CALM_TEST_REDIS`` (as ``.ci/services.sh start``
prints them) are used when set; otherwise :func:`services` starts the
throwaway servers of ``.ci/services.sh`` for the benchmark and stops them after.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

from benchmarks._common import REPO_ROOT

__all__ = ["services"]

_SCRIPT = os.path.join(REPO_ROOT, ".ci", "services.sh")


@contextlib.contextmanager
def services() -> Iterator[dict[str, str]]:
    """``{"postgres": conninfo, "redis": url}``, servers started here if the environment names none."""
    postgres, redis = os.environ.get("CALM_TEST_POSTGRES"), os.environ.get("CALM_TEST_REDIS")
    if postgres and redis:
        yield {"postgres": postgres, "redis": redis}
        return
    started = subprocess.run(["bash", _SCRIPT, "start"], capture_output=True, text=True, check=True).stdout
    values = dict(
        line.removeprefix("export ").split("=", 1) for line in started.splitlines() if line.startswith("export ")
    )
    try:
        yield {"postgres": values["CALM_TEST_POSTGRES"], "redis": values["CALM_TEST_REDIS"]}
    finally:
        subprocess.run(["bash", _SCRIPT, "stop", values["CALM_SERVICES_DIR"]], capture_output=True, check=False)
