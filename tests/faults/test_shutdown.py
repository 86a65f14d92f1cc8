"""The worker process is shut down (SIGTERM, as in a deploy) while a graceful abort counts down."""

from __future__ import annotations

import time
from pathlib import Path

from faultkit import assert_clean_output, report, scenario

HEARTBEAT = {"FAULT_HEARTBEAT_MS": "1000"}


def test_shutdown_waits_for_the_countdown_and_ends_the_message_aborted(
    redis_base_url: str, tmp_path: Path
) -> None:
    """SIGTERM during a 1.5 s grace: Abort still comes at the deadline, then the worker exits 0."""
    with scenario(redis_base_url, tmp_path) as world:
        worker = world.worker(threads=2)
        message = world.client.send("hold", "graceful", 120.0)
        world.log.wait_for("start", "graceful")
        returned = world.client.abort(message.message_id, abort_timeout=1500)
        world.log.wait_for("grace", "graceful")
        worker.terminate()
        stopping = time.monotonic()
        assert worker.wait(30) == 0
        stopped = time.monotonic()
        world.log.drain()

    assert world.log.outcomes()["graceful"] == ["Abort"]
    aborted = world.log.of("aborted", "graceful")[0]["t"]
    assert aborted - returned >= 1.5, "Abort came before the grace ran out"
    assert_clean_output(worker)
    report(
        "shutdown during a 1500 ms grace",
        outcome="aborted",
        abort_after_ms=round((aborted - returned) * 1000),
        shutdown_s=round(stopped - stopping, 2),
    )


def test_shutdown_lets_a_message_finish_within_its_grace(
    redis_base_url: str, tmp_path: Path
) -> None:
    """SIGTERM during a 10 s grace of a message that ends on its own after 1 s: it finishes."""
    with scenario(redis_base_url, tmp_path) as world:
        worker = world.worker(threads=2)
        message = world.client.send("hold", "finisher", 1.0)
        world.log.wait_for("start", "finisher")
        world.client.abort(message.message_id, abort_timeout=10_000)
        world.log.wait_for("grace", "finisher")
        worker.terminate()
        stopping = time.monotonic()
        assert worker.wait(30) == 0
        stopped = time.monotonic()
        world.log.drain()

    assert world.log.outcomes()["finisher"] == ["done"]
    assert_clean_output(worker)
    report(
        "shutdown during a 10 s grace, message ends first",
        outcome="done",
        shutdown_s=round(stopped - stopping, 2),
    )


def test_a_grace_longer_than_the_shutdown_timeout_never_holds_the_shutdown(
    redis_base_url: str, tmp_path: Path
) -> None:
    """A 60 s grace and a 2 s shutdown timeout: the worker exits after about 2 s.

    The interrupted message is not lost: the next worker gets it back from
    the broker and skips it, since its request is still live.
    """
    with scenario(redis_base_url, tmp_path) as world:
        worker = world.worker(threads=2, shutdown_timeout_ms=2000, **HEARTBEAT)
        message = world.client.send("hold", "slow", 120.0)
        started = world.log.wait_for("start", "slow")
        world.client.abort(message.message_id, abort_timeout=60_000)
        world.log.wait_for("grace", "slow")
        worker.terminate()
        stopping = time.monotonic()
        worker.wait(30)
        stopped = time.monotonic()

        world.worker(threads=2, **HEARTBEAT)
        world.log.wait_elsewhere("skipped", "slow", started["pid"])
        world.log.drain()

    assert stopped - stopping < 2 + 10, f"shutdown took {stopped - stopping:.1f} s"
    assert world.log.counts("start")["slow"] == 1
    report(
        "shutdown timeout 2 s during a 60 s grace",
        shutdown_s=round(stopped - stopping, 2),
        exit_status=worker.process.returncode if worker.process else None,
        redelivered_then="skipped",
        lost=0,
    )
