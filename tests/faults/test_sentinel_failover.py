"""A Sentinel fails the event backend's primary over while a worker process is busy.

The backend is ``redis+sentinel://`` on a throwaway primary, replica and
Sentinel; the broker and the step log stay on the tests' own Redis.  Two
long messages run in a real ``dramatiq`` worker process when the primary
changes: either the Sentinel is asked to fail over (the old primary becomes
a replica) or the primary is killed (the Sentinel notices after 1 s).  After
the failover a queued message is cancelled and both running ones are
aborted, and each ends as asked.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from dramatiq_abort import AbortState, abort
from faultkit import WAIT, assert_clean_output, report, scenario


@pytest.mark.parametrize("kill_primary", [False, True], ids=["sentinel-failover", "primary-killed"])
def test_aborts_resume_after_a_sentinel_failover(
    redis_base_url: str, sentinel_servers: Any, tmp_path: Path, kill_primary: bool
) -> None:
    """After the failover, a cancel and two aborts reach the worker through the new primary."""
    with scenario(redis_base_url, tmp_path, backend_url=sentinel_servers.url) as world:
        worker = world.worker(threads=2)
        middleware = world.client.middleware
        # Before: an abort through the first primary.
        first = world.client.send("hold", "first", WAIT * 2)
        world.log.wait_for("start", "first")
        world.client.abort(first.message_id)
        world.log.wait_for("aborted", "first")

        long = [world.client.send("hold", f"long-{i}", WAIT * 4) for i in range(2)]
        world.log.wait_for("start", "long-0")
        world.log.wait_for("start", "long-1")
        old = sentinel_servers.primary.port
        started = time.monotonic()
        new = sentinel_servers.fail_over(kill_primary=kill_primary)
        failed_over_s = time.monotonic() - started
        assert new != old

        # Both threads are busy: this one waits in the worker until one is free.
        queued = world.client.send("hold", "queued", 0.1)
        handles = [abort(queued.message_id, mode="cancel", middleware=middleware)]
        handles.append(abort(long[0].message_id, middleware=middleware))
        returned = time.monotonic()
        aborted = world.log.wait_for("aborted", "long-0")
        world.log.wait_for("skipped", "queued")
        handles.append(abort(long[1].message_id, middleware=middleware))
        world.log.wait_for("aborted", "long-1")
        # The workers write the final states in the background: wait for them.
        statuses = [handle.wait(WAIT * 1000) for handle in handles]
        worker.terminate()
        assert worker.wait(WAIT * 2) == 0
        world.log.drain()

    outcomes = world.log.outcomes()
    assert outcomes["first"] == ["Abort"]
    assert outcomes["long-0"] == ["Abort"]
    assert outcomes["long-1"] == ["Abort"]
    assert outcomes["queued"] == ["skipped"]
    assert world.log.counts("start")["queued"] == 0
    assert [s.state if s else None for s in statuses] == [
        AbortState.SKIPPED,
        AbortState.INTERRUPTED,
        AbortState.INTERRUPTED,
    ]
    assert_clean_output(worker)
    report(
        "sentinel failover" + (" (primary killed)" if kill_primary else ""),
        failover_s=round(failed_over_s, 2),
        first_abort_after_failover_ms=round((aborted["t"] - returned) * 1000),
        aborts_delivered=3,
        cancels_honoured=1,
    )
