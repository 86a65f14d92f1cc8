"""The event backend's Redis restarts under a busy worker process.

The backend runs on a throwaway ``redis-server`` that the test kills and
starts again; the broker and the step log stay on the tests' own Redis,
so only the event backend goes away.
"""

from __future__ import annotations

from pathlib import Path

from conftest import RedisServer
from faultkit import run_backend_restart, scenario


def test_redis_restart_loses_nothing_and_aborts_reach_older_messages(
    redis_base_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Across a backend restart: every message runs once, and a later abort stops an older one.

    A long message starts before the outage; quick messages are sent before,
    during and after it.  After the restart an abort of the long message
    still lands; every quick message ran exactly once and ended normally;
    the worker's background threads are alive and it shuts down cleanly.
    """
    with scenario(redis_base_url, tmp_path, backend_url=f"{redis_server.url}/0") as world:
        run_backend_restart(world, redis_server, "redis restart")
