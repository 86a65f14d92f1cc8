"""Redis outages and garbage: messages keep running, aborts resume, nothing crashes.

The outage tests run a throwaway ``redis-server`` for the event backend and
kill it for real; the messages travel on a StubBroker so only the event
backend is affected.  The garbage test writes malformed values under this
test's own namespace on the shared Redis.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from conftest import WAIT, Hold, LogWatch, RedisServer, free_port, require
from dramatiq_abort import (
    Abortable,
    BackendUnavailableError,
    abort,
    backends,
)

StartWorker = Callable[..., Worker]

LOST = "Lost the event backend"
STILL_DOWN = "Event backend still unreachable"
BACK = "Event backend is reachable again"
HOT_PATH = "Could not check the event backend"


def declare(
    broker: dramatiq.Broker, hold: Hold
) -> tuple[dramatiq.Actor[Any, Any], dramatiq.Actor[Any, Any], Counter[int]]:
    """Declare a long ``hold`` actor and a ``quick`` one (counting its runs) on their own queues."""

    @dramatiq.actor(broker=broker, queue_name="outage-hold", max_retries=3, min_backoff=10)
    def hold_actor(name: str) -> None:
        hold.run(name)

    done: Counter[int] = Counter()

    @dramatiq.actor(broker=broker, queue_name="outage-quick", max_retries=0)
    def quick(index: int) -> None:
        done[index] += 1

    return hold_actor, quick, done


def run_quick_messages(
    broker: StubBroker, quick: dramatiq.Actor[Any, Any], done: Counter[int], count: int
) -> None:
    """Send ``count`` quick messages and check each ran exactly once."""
    first = sum(done.values())
    indices = range(first, first + count)
    for index in indices:
        quick.send(index)
    broker.join(quick.queue_name, fail_fast=True, timeout=int(WAIT * 1000))
    assert [done[i] for i in indices] == [1] * count


def logged(caplog: pytest.LogCaptureFixture, text: str, level: int | None = None) -> int:
    """Number of captured records whose message contains ``text`` (at ``level`` if given)."""
    return sum(1 for r in caplog.records if text in r.getMessage() and level in (None, r.levelno))


def test_outage_keeps_messages_running_and_aborts_resume_after_restart(
    stub_broker: StubBroker,
    redis_server: RedisServer,
    start_worker: StartWorker,
    log_watch: LogWatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With Redis killed, work goes on and abort() fails clearly; after a restart aborts work."""
    backend = backends.RedisBackend.from_url(f"{redis_server.url}/0")
    stub_broker.add_middleware(Abortable(backend=backend))
    hold = Hold()
    hold_actor, quick, done = declare(stub_broker, hold)
    # Two threads for long messages, one for the quick ones.
    worker = start_worker(stub_broker, worker_threads=3)
    first = hold_actor.send("first")
    second = hold_actor.send("second")
    hold.wait("started", "first")
    hold.wait("started", "second")

    redis_server.stop()
    log_watch.wait_for(LOST)
    run_quick_messages(stub_broker, quick, done, 10)
    with pytest.raises(
        BackendUnavailableError, match=r"could not record the abort of message 'x'.*back"
    ):
        abort("x")
    # Let the watcher retry a few times: the outage is still reported once.
    log_watch.wait_for(STILL_DOWN, count=3)
    run_quick_messages(stub_broker, quick, done, 10)
    assert logged(caplog, LOST) == 1
    assert logged(caplog, LOST, logging.WARNING) == 1
    assert logged(caplog, HOT_PATH) <= 1
    assert all(thread.is_alive() for thread in worker.workers), "a worker thread died"

    redis_server.start()  # same port
    # The watcher's next retry is at least 0.8 s away, so this request is
    # (almost always) recorded before it resubscribes: its re-check finds it.
    abort(first.message_id)
    log_watch.wait_for(BACK)
    hold.wait("ended", "first")
    assert hold.outcome["first"] == "aborted"

    hold_actor.send("busy 1")
    hold_actor.send("busy 2")
    hold.wait("started", "busy 1")
    hold.wait("started", "busy 2")
    # All three worker threads are taken, so this one waits in the worker's queue.
    pending = hold_actor.send("pending")
    abort(pending.message_id, mode="cancel")
    abort(second.message_id)  # the pubsub path: the watcher is back
    hold.wait("ended", "second")
    hold.release.set()
    stub_broker.join(hold_actor.queue_name, fail_fast=False, timeout=int(WAIT * 1000))
    worker.join()
    assert all(thread.is_alive() for thread in worker.workers), "a worker thread died"

    assert hold.outcome == {
        "first": "aborted",
        "second": "aborted",
        "busy 1": "released",
        "busy 2": "released",
    }
    assert hold.runs == Counter({"first": 1, "second": 1, "busy 1": 1, "busy 2": 1})
    dead = {message.message_id for message in stub_broker.dead_letters}
    assert dead == {first.message_id, second.message_id, pending.message_id}
    assert logged(caplog, LOST) == 1
    assert logged(caplog, BACK) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_cancel_in_the_reconnect_window_is_honoured_or_reported(
    stub_broker: StubBroker,
    redis_server: RedisServer,
    start_worker: StartWorker,
    log_watch: LogWatch,
) -> None:
    """A cancel made as Redis comes back skips the message, or, if it already started, is logged.

    Until the watcher has reconnected, the worker believes the backend is down
    and starts messages without asking it; a cancel never interrupts a running
    message, so the documented outcome is then a warning naming the message.
    """
    backend = backends.RedisBackend.from_url(f"{redis_server.url}/0")
    stub_broker.add_middleware(Abortable(backend=backend))
    hold = Hold()
    hold_actor, _, _ = declare(stub_broker, hold)
    blocker_started, unblock = threading.Event(), threading.Event()

    @dramatiq.actor(broker=stub_broker, queue_name="outage-hold", max_retries=0)
    def blocker() -> None:
        blocker_started.set()
        unblock.wait(WAIT)

    worker = start_worker(stub_broker, worker_threads=1)
    blocker.send()
    assert blocker_started.wait(WAIT)
    pending = hold_actor.send("pending")

    redis_server.stop()
    # Four failed retries: the watcher is in its backoff, believing Redis is down.
    log_watch.wait_for(STILL_DOWN, count=4)
    redis_server.start()
    abort(pending.message_id, mode="cancel")  # recorded: Redis answers again
    unblock.set()  # frees the only worker thread for "pending"
    log_watch.wait_for(BACK)  # logged after the resync, and its warnings
    hold.release.set()
    stub_broker.join(hold_actor.queue_name, fail_fast=False, timeout=int(WAIT * 1000))
    worker.join()
    warned = log_watch.count(f"Message {pending.message_id} started while the event backend")
    if hold.runs["pending"]:
        assert warned == 1
        assert hold.outcome == {"pending": "released"}
    else:
        assert warned == 0
        assert pending.message_id in {m.message_id for m in stub_broker.dead_letters}


def test_worker_boots_while_redis_is_down(
    stub_broker: StubBroker,
    start_worker: StartWorker,
    log_watch: LogWatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker whose Redis is not up yet processes messages, and aborts work once it is."""
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    port = free_port()
    backend = backends.RedisBackend.from_url(f"redis://127.0.0.1:{port}/0")
    stub_broker.add_middleware(Abortable(backend=backend))
    hold = Hold()
    hold_actor, quick, done = declare(stub_broker, hold)
    worker = start_worker(stub_broker, worker_threads=2)
    log_watch.wait_for(LOST)
    run_quick_messages(stub_broker, quick, done, 10)
    with pytest.raises(BackendUnavailableError, match="could not record the abort"):
        abort("x")

    server = RedisServer(port=port)
    try:
        server.start()
        log_watch.wait_for(BACK)
        late = hold_actor.send("late")
        hold.wait("started", "late")
        abort(late.message_id)
        hold.wait("ended", "late")
        run_quick_messages(stub_broker, quick, done, 10)
        stub_broker.join(hold_actor.queue_name, fail_fast=False, timeout=int(WAIT * 1000))
        worker.join()
    finally:
        hold.release.set()
        worker.stop()
        server.close()
    assert hold.outcome == {"late": "aborted"}
    assert logged(caplog, LOST) == 1
    assert [m.message_id for m in stub_broker.dead_letters] == [late.message_id]


def test_garbage_in_the_backend_crashes_nothing(
    stub_broker: StubBroker,
    redis_client: Any,
    redis_backend: backends.RedisBackend,
    start_worker: StartWorker,
    log_watch: LogWatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Malformed values and announcements are logged and ignored; a valid abort still works."""
    stub_broker.add_middleware(Abortable(backend=redis_backend))
    hold = Hold()
    hold_actor, _, _ = declare(stub_broker, hold)
    prefix = redis_backend.namespace + "abort:"

    # Garbage stored under the request keys of messages not yet sent.
    garbage = {
        "not json": lambda key: redis_client.set(key, "{not json", px=60_000),
        "not utf-8": lambda key: redis_client.set(key, b"\xff\xfe\xfd", px=60_000),
        "a json list": lambda key: redis_client.set(key, "[1, 2, 3]", px=60_000),
        "bad params": lambda key: redis_client.set(key, '{"mode": "explode"}', px=60_000),
        "a redis list": lambda key: redis_client.rpush(key, "a", "b"),
    }
    stored = {}
    for name, write in garbage.items():
        message = hold_actor.message(name)
        write(prefix + message.message_id)
        stored[name] = message
    worker = start_worker(stub_broker, worker_threads=2)
    hold.release.set()  # these run to the end at once
    for message in stored.values():
        stub_broker.enqueue(message)
    stub_broker.join(hold_actor.queue_name, fail_fast=True, timeout=int(WAIT * 1000))
    worker.join()
    assert hold.outcome == dict.fromkeys(garbage, "released")

    # Garbage announced while a message runs, then a valid abort of it.
    hold.release.clear()
    target = hold_actor.send("target")
    hold.wait("started", "target")
    key = "abort:" + target.message_id
    for announcement in (
        "{not json",
        b"\xff\xfe",
        '{"a": 1}',
        "[1, 2]",
        f'[["{key}"]]',
        '[[1, {"mode": "abort"}]]',
        f'[["{key}", {{"mode": "explode"}}]]',
        f'[["{key}", {{"abort_timeout": "soon"}}]]',
    ):
        redis_client.publish(redis_backend.channel, announcement)
    abort(target.message_id)
    hold.wait("ended", "target")
    stub_broker.join(hold_actor.queue_name, fail_fast=False, timeout=int(WAIT * 1000))
    worker.join()
    assert all(thread.is_alive() for thread in worker.workers), "a worker thread died"

    assert hold.outcome["target"] == "aborted"
    assert hold.runs["target"] == 1
    assert [m.message_id for m in stub_broker.dead_letters] == [target.message_id]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name, message in stored.items():
        if name == "a redis list":
            # Read in one MGET with the messages waiting beside it, and MGET
            # answers nil for a key of another type: no request, no warning.
            continue
        assert any(message.message_id in text for text in warnings), message.message_id
    assert sum("malformed announcement" in text for text in warnings) == 6
    # Both well-formed announcements with bad parameters, for the running target.
    assert sum("malformed abort event" in t and target.message_id in t for t in warnings) == 2
    assert logged(caplog, LOST) == 0, "garbage must not break the subscription"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
