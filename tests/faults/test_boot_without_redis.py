"""A worker process boots while the event backend's Redis is not there yet."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import RedisServer, free_port, require
from faultkit import assert_clean_output, report, scenario


def test_worker_boots_without_redis_and_aborts_work_once_it_appears(
    redis_base_url: str, tmp_path: Path
) -> None:
    """With no backend at boot the worker still runs messages; once Redis starts, aborts land.

    Nothing listens on the backend's port when the worker starts: it boots,
    and messages sent meanwhile all run to the end.  Then Redis starts on
    that port: an abort of a running message interrupts it and a cancel of
    a message waiting behind it skips it.
    """
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    server = RedisServer(free_port())
    try:
        with scenario(redis_base_url, tmp_path, backend_url=f"{server.url}/0") as world:
            worker = world.worker(threads=1)
            early = [f"early-{i}" for i in range(10)]
            for name in early:
                world.client.send("hold", name, 0.01)
            world.log.wait_for("end", count=len(early))

            server.start()
            running = world.client.send("hold", "running", 120.0)
            waiting = world.client.send("hold", "waiting", 0.01)
            world.log.wait_for("start", "running")
            world.client.abort(waiting.message_id, mode="cancel")
            world.client.abort(running.message_id)
            world.log.wait_for("skipped", "waiting")
            world.client.send("state", "state")
            state = world.log.wait_for("state")
            worker.terminate()
            assert worker.wait(30) == 0
            world.log.drain()
    finally:
        server.close()

    outcomes = world.log.outcomes()
    assert {name: outcomes.get(name) for name in early} == {name: ["done"] for name in early}
    assert outcomes["running"] == ["Abort"]
    assert outcomes["waiting"] == ["skipped"]
    assert world.log.counts("start")["waiting"] == 0
    assert "dramatiq-abort-watcher" in state["threads"]
    assert_clean_output(worker)
    report(
        "redis unreachable at boot",
        messages=len(early) + 2,
        ran_without_backend=len(early),
        aborts_delivered=2,
        lost=0,
        duplicated=0,
    )
