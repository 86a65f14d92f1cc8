"""A worker process is killed (SIGKILL) with a request pending on its messages.

After the kill the broker hands the messages to another worker process: a
RedisBroker once the dead worker's heartbeat is a second old, RabbitMQ as
soon as the connection drops.  The message with a live request must be
skipped there too, and never run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import require
from faultkit import report, scenario

HEARTBEAT = {"FAULT_HEARTBEAT_MS": "1000"}


@pytest.fixture(params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest, redis_base_url: str) -> str | None:
    """The broker of the worker processes: a RedisBroker (default), then RabbitMQ."""
    if request.param == "redis":
        return None
    pytest.importorskip("pika")
    import os

    url = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
    try:
        import pika

        pika.BlockingConnection(pika.URLParameters(url)).close()
    except Exception as exc:
        require(False, f"RabbitMQ at {url} does not answer: {exc}")
    return url


def _kind(broker_url: str | None) -> str:
    return "redis" if broker_url is None else "rabbitmq"


def test_killed_while_skipping_an_aborted_message(
    redis_base_url: str, broker_url: str | None, tmp_path: Path
) -> None:
    """A worker killed in the middle of a skip: the redelivered message is skipped again.

    The first worker's skip hook hangs (before dramatiq acknowledges the
    message), so the kill lands in the middle of the skip.
    """
    with scenario(redis_base_url, tmp_path, broker_url=broker_url) as world:
        first = world.worker(threads=1, FAULT_BLOCK_SKIP="1", **HEARTBEAT)
        blocker = world.client.send("hold", "blocker", 120.0)
        world.log.wait_for("start", "blocker")
        victim = world.client.send("hold", "victim", 0.01)
        world.client.abort(victim.message_id)
        world.client.abort(blocker.message_id)
        skipped = world.log.wait_for("skipped", "victim")
        first.kill()

        world.worker(threads=2, **HEARTBEAT)
        world.log.wait_elsewhere("skipped", "victim", skipped["pid"])
        world.client.send("hold", "after", 0.01)
        world.log.wait_for("end", "after")
        world.log.drain()

    assert world.log.counts("start")["victim"] == 0
    assert world.log.outcomes()["after"] == ["done"]
    report(
        f"SIGKILL while skipping ({_kind(broker_url)})",
        deliveries=len(world.log.of("pre", "victim")),
        ran=0,
        lost=0,
    )


def test_killed_with_a_cancelled_message_in_prefetch(
    redis_base_url: str, broker_url: str | None, tmp_path: Path
) -> None:
    """A worker killed while a cancelled message sits in its prefetch: it is skipped elsewhere."""
    with scenario(redis_base_url, tmp_path, broker_url=broker_url) as world:
        first = world.worker(threads=1, **HEARTBEAT)
        blocker = world.client.send("hold", "blocker", 120.0)
        started = world.log.wait_for("start", "blocker")
        victim = world.client.send("hold", "victim", 0.01)
        world.client.wait_taken()
        world.client.abort(victim.message_id, mode="cancel")
        first.kill()

        world.worker(threads=2, **HEARTBEAT)
        world.log.wait_elsewhere("skipped", "victim", started["pid"])
        world.log.wait(lambda s: s["ev"] == "start" and s["pid"] != started["pid"], timeout=60)
        world.client.abort(blocker.message_id)
        world.log.wait_for("end", "blocker")
        world.log.drain()

    assert world.log.counts("start")["victim"] == 0
    assert world.log.outcomes()["victim"] == ["skipped"]
    report(
        f"SIGKILL with a cancelled message in prefetch ({_kind(broker_url)})",
        deliveries=len(world.log.of("pre", "victim")),
        ran=0,
        lost=0,
    )
