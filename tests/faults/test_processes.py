"""The real ``dramatiq`` command with several worker processes, on a RedisBroker.

The event backend is the tests' Redis, then a Redis Cluster (``redis+cluster://``).

``dramatiq faultapp --processes 2 --threads 4``: messages are sent from this
process, some cancelled while they wait in the queue, some aborted while
they run in either worker process, and each ends as asked; the command then
shuts down cleanly on SIGTERM.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from dramatiq_abort import AbortState, abort_many
from faultkit import WAIT, assert_clean_output, report, scenario

#: Seconds the messages that nobody aborts run.
SHORT = 1.0


@pytest.mark.parametrize("backend", ["redis", "cluster"])
def test_two_processes_of_four_threads(
    redis_base_url: str, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """Pending and running aborts each land in whichever process holds the message."""
    backend_url = request.getfixturevalue("redis_cluster_url") if backend == "cluster" else None
    with scenario(redis_base_url, tmp_path, backend_url=backend_url) as world:
        # Each process prefetches as many messages as it has threads (dramatiq's
        # default is twice as many), so eight long ones spread over both.
        worker = world.worker(processes=2, threads=4, dramatiq_queue_prefetch="4")
        running = [world.client.send("hold", f"run-{i}", WAIT * 2) for i in range(6)]
        running += [world.client.send("hold", f"short-{i}", SHORT) for i in range(2)]
        starts = world.log.wait(lambda s: s["ev"] == "start", count=8)
        pids = {step["pid"] for step in starts}
        assert len(pids) == 2, f"all eight ran in one process: {pids}"
        pending = [world.client.send("hold", f"pend-{i}", 0.1) for i in range(6)]

        # The six long ones (in both processes) and half of the queued ones.
        batch = abort_many(
            [*running[:6], *pending[:3]], middleware=world.client.middleware, reason="scale test"
        )
        statuses = batch.wait(WAIT * 1000)
        for name in (f"pend-{i}" for i in range(3, 6)):
            world.log.wait_for("end", name)
        world.log.wait_for("end", "short-0")
        world.log.wait_for("end", "short-1")

        worker.terminate()
        assert worker.wait(WAIT * 2) == 0
        world.log.drain()

    outcomes = world.log.outcomes()
    for i in range(6):
        assert outcomes[f"run-{i}"] == ["Abort"], outcomes.get(f"run-{i}")
    for i in range(3):
        assert outcomes[f"pend-{i}"] == ["skipped"], outcomes.get(f"pend-{i}")
    for name in ["short-0", "short-1", *(f"pend-{i}" for i in range(3, 6))]:
        assert outcomes[name] == ["done"], outcomes.get(name)
    states = Counter(s.state for s in statuses if s is not None)
    assert states == Counter({AbortState.INTERRUPTED: 6, AbortState.SKIPPED: 3})
    aborted_in = {step["pid"] for step in world.log.of("aborted")}
    assert aborted_in == pids, "each process received aborts of the messages it ran"
    assert_clean_output(worker)
    report(
        f"two worker processes ({backend})",
        processes=len(pids),
        interrupted=states[AbortState.INTERRUPTED],
        skipped=states[AbortState.SKIPPED],
        done=sum(outcomes[n] == ["done"] for n in outcomes),
    )
