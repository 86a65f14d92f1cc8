"""A Redis Cluster loses a primary while a worker process is busy; a replica takes over.

The event backend is a throwaway cluster of 3 primaries with a replica
each (``redis+cluster://``); the broker and the step log stay on the tests'
own Redis.  A message runs in a real ``dramatiq`` worker process; the test
kills the primary that holds its request key (the cluster promotes that
node's replica within seconds), then aborts it and cancels a queued one.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import require
from dramatiq_abort import AbortState, abort
from dramatiq_abort._request import key_for
from faultkit import WAIT, assert_clean_output, report, scenario


@pytest.fixture
def cluster_with_replicas() -> Iterator[Any]:
    """A throwaway cluster of 3 primaries, each with a replica in sync, started."""
    for program in ("redis-server", "redis-cli"):
        require(shutil.which(program) is not None, f"{program} is not installed (Redis Cluster)")
    from topologies import ClusterServers

    cluster = ClusterServers(replicas=1)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def test_aborts_resume_after_a_cluster_failover(
    redis_base_url: str, cluster_with_replicas: Any, tmp_path: Path
) -> None:
    """Kill the primary of a running message's request key: after the promotion, it is aborted."""
    cluster = cluster_with_replicas
    with scenario(redis_base_url, tmp_path, backend_url=cluster.url) as world:
        worker = world.worker(threads=1)
        middleware = world.client.middleware
        running = world.client.send("hold", "running", WAIT * 4)
        world.log.wait_for("start", "running")
        queued = world.client.send("hold", "queued", 0.1)  # behind the busy thread

        key = world.config.backend_ns + key_for(running.message_id)
        dead = cluster.owner(key)
        killed_at = time.monotonic()
        dead.stop()
        cluster.wait_promoted(dead)
        promoted_s = time.monotonic() - killed_at

        handles = [abort(queued.message_id, mode="cancel", middleware=middleware)]
        handles.append(abort(running.message_id, middleware=middleware))
        sent = time.monotonic()
        aborted = world.log.wait_for("aborted", "running")
        world.log.wait_for("skipped", "queued")
        statuses = [handle.wait(WAIT * 1000) for handle in handles]

        worker.terminate()
        assert worker.wait(WAIT * 2) == 0
        world.log.drain()

    outcomes = world.log.outcomes()
    assert outcomes["running"] == ["Abort"]
    assert outcomes["queued"] == ["skipped"]
    assert [s.state if s else None for s in statuses] == [
        AbortState.SKIPPED,
        AbortState.INTERRUPTED,
    ]
    assert_clean_output(worker)
    report(
        "cluster failover",
        promoted_after_s=round(promoted_s, 2),
        abort_landed_after_ms=round((aborted["t"] - sent) * 1000),
    )
