"""The real ``dramatiq-gevent`` command: workers are greenlets, and aborts reach them.

``dramatiq-gevent faultapp --processes 1 --threads 8`` on a RedisBroker:
a message blocked in a socket read that nothing answers (a thread could
not be interrupted there until the read returned) and a message sleeping
in short steps are aborted, a queued one is cancelled, a graceful abort
lets its message see the countdown, and the command shuts down cleanly.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from conftest import require
from dramatiq_abort import AbortState, abort
from faultkit import WAIT, assert_clean_output, report, scenario


def test_dramatiq_gevent_workers_are_aborted_even_in_blocking_io(
    redis_base_url: str, tmp_path: Path
) -> None:
    """Abort a greenlet blocked in a socket read and one sleeping; cancel one; grace one."""
    gevent = importlib.util.find_spec("gevent") is not None
    require(gevent, "gevent is not installed: pip install 'dramatiq-abort[gevent]'")
    with scenario(redis_base_url, tmp_path) as world:
        worker = world.worker(threads=3, gevent=True)
        assert world.log.of("ready")[-1]["gevent"] is True
        middleware = world.client.middleware
        io = world.client.send("wait_io", "io", WAIT * 4)
        sleeper = world.client.send("hold", "sleeper", WAIT * 4)
        graceful = world.client.send("hold", "graceful", WAIT * 4)
        for name in ("io", "sleeper", "graceful"):
            world.log.wait_for("start", name)
        queued = world.client.send("hold", "queued", 0.1)  # every greenlet is busy

        handles = [abort(queued.message_id, mode="cancel", middleware=middleware)]
        sent = time.monotonic()
        handles.append(abort(io.message_id, middleware=middleware))
        world.client.abort(sleeper.message_id)
        handles.append(abort(graceful.message_id, abort_timeout=300, middleware=middleware))
        io_aborted = world.log.wait_for("aborted", "io")
        world.log.wait_for("aborted", "sleeper")
        grace = world.log.wait_for("grace", "graceful")
        world.log.wait_for("aborted", "graceful")
        world.log.wait_for("skipped", "queued")
        statuses = [handle.wait(WAIT * 1000) for handle in handles]

        worker.terminate()
        assert worker.wait(WAIT * 2) == 0
        world.log.drain()

    outcomes = world.log.outcomes()
    for name in ("io", "sleeper", "graceful"):
        assert outcomes[name] == ["Abort"], (name, outcomes.get(name))
    assert outcomes["queued"] == ["skipped"]
    assert world.log.counts("start")["queued"] == 0
    assert 0 < grace["left"] <= 300
    assert [s.state if s else None for s in statuses] == [
        AbortState.SKIPPED,
        AbortState.INTERRUPTED,
        AbortState.INTERRUPTED,
    ]
    assert_clean_output(worker)
    report(
        "dramatiq-gevent",
        aborted_in_blocking_read_ms=round((io_aborted["t"] - sent) * 1000),
        aborted=3,
        cancelled=1,
    )
