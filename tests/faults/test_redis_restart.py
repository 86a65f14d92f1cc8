"""The event backend's Redis restarts under a busy worker process.

The backend runs on a throwaway ``redis-server`` that the test kills and
starts again; the broker and the step log stay on the tests' own Redis,
so only the event backend goes away.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import RedisServer
from dramatiq_abort import BackendUnavailableError
from faultkit import assert_clean_output, report, scenario

QUICK = 0.02  # seconds each quick message runs


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
        worker = world.worker(threads=4)
        long = world.client.send("hold", "long", 120.0)
        world.log.wait_for("start", "long")
        names = [f"before-{i}" for i in range(20)]
        for name in names:
            world.client.send("hold", name, QUICK)
        world.log.wait_for("end", count=20)

        redis_server.stop()
        with pytest.raises(BackendUnavailableError):
            world.client.abort(long.message_id)
        during = [f"during-{i}" for i in range(20)]
        for name in during:
            world.client.send("hold", name, QUICK)
        world.log.wait_for("end", count=40)

        redis_server.start()
        returned = world.client.abort(long.message_id)
        aborted = world.log.wait_for("aborted", "long")
        after = [f"after-{i}" for i in range(20)]
        for name in after:
            world.client.send("hold", name, QUICK)
        world.client.send("state", "state")
        state = world.log.wait_for("state")
        world.log.wait_for("end", count=62)

        worker.terminate()
        assert worker.wait(30) == 0
        world.log.drain()

    outcomes = world.log.outcomes()
    quick = names + during + after
    assert {name: outcomes.get(name) for name in quick} == {name: ["done"] for name in quick}
    assert all(world.log.counts("start")[name] == 1 for name in quick)
    assert outcomes["long"] == ["Abort"]
    assert {"dramatiq-abort-watcher", "dramatiq-abort-timer"} <= set(state["threads"])
    assert_clean_output(worker)
    report(
        "redis restart",
        messages=len(quick) + 1,
        aborts_delivered=1,
        lost=0,
        duplicated=0,
        first_abort_after_restart_ms=round((aborted["t"] - returned) * 1000),
    )
