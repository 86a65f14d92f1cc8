"""Message ids with unusual characters, namespaces, and what is stored in Redis.

An abort for a message whose id holds spaces, glob characters, newlines,
NUL, emoji, right-to-left marks, 10 KB of text, or looks like another key
reaches exactly that message, writes exactly one key under the backend's
namespace and nothing else, and matches no other message.  Two backends
with different namespaces on one Redis never see each other's requests.
Requests are stored and announced as JSON; a pickle found in Redis is
never unpickled.

The key checks run against a throwaway ``redis-server`` whose whole test
database belongs to the test, so a ``SCAN`` of all of it is exact.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from conftest import BACKEND_DB, WAIT, Hold, LogWatch, RedisServer, join
from dramatiq_abort import Abort, Abortable, AbortState, abort, abort_requested, backends

StartWorker = Callable[..., Worker]

#: Bound, in seconds, on any single wait of these tests.

#: Ids that are hard on keys, logs and protocols.
UNUSUAL_IDS = [
    "with space",
    " leading and trailing ",
    "colon:in:the:id",
    "*",
    "?",
    "ab?",
    "ab[cd]",
    "[",
    "[^a]",
    "{}",
    "{abc}",
    "line\nbreak",
    "cr\rlf\r\n",
    "nul\x00byte",
    "\x00",
    "tab\tend",
    "\x1b[31mred",
    "emoji 🎉🚀👩‍👩‍👧",
    "rtl \u202eevil\u202c שלום مرحبا",
    "e\u0301 combining",
    "\uffff\U0010ffff",
    "x" * 10_240,
    "events",
    "abort:abc",
    "abort:",
    "dramatiq:aborts:events",
    "\\",
    "%s %d %%",
    "'\"`",
]
#: The id of the message that runs beside them and must never be touched.
BYSTANDER = "abc"


def all_keys(client: Any) -> set[bytes]:
    """Every key of the client's database, by SCAN."""
    return set(client.scan_iter(count=1000))


@pytest.mark.parametrize("broker_kind", ["stub", "redis"])
def test_unusual_ids_are_aborted_exactly(
    request: pytest.FixtureRequest,
    broker_kind: str,
    redis_server: RedisServer,
    namespace: str,
    start_worker: StartWorker,
) -> None:
    """Each unusual id's abort ends exactly that message and writes one key in the namespace.

    A bystander message with id ``abc`` runs throughout; requests for ``*``,
    ``ab?``, ``ab[cd]`` or ``abort:abc`` never touch it, and messages
    ``abd`` and ``abc2`` sent afterwards run.  The test database then holds
    exactly one key per aborted id, each under the namespace, and no other
    database holds any key.
    """
    import redis

    broker: dramatiq.Broker = request.getfixturevalue(f"{broker_kind}_broker")
    backend = backends.RedisBackend.from_url(
        f"{redis_server.url}/{BACKEND_DB}", namespace=namespace
    )
    broker.add_middleware(Abortable(backend=backend))
    hold = Hold()
    ran: Counter[str] = Counter()

    @dramatiq.actor(broker=broker, queue_name="unusual-ids", max_retries=0)
    def hold_actor(label: str) -> None:
        hold.run(label)

    @dramatiq.actor(broker=broker, queue_name="unusual-ids-quick", max_retries=0)
    def quick(label: str) -> None:
        ran[label] += 1
        hold.event("ended", label).set()

    worker = start_worker(broker, worker_threads=2)
    broker.enqueue(hold_actor.message("bystander").copy(message_id=BYSTANDER))
    hold.wait("started", "bystander")

    for index, message_id in enumerate(UNUSUAL_IDS):
        label = f"unusual-{index}"
        broker.enqueue(hold_actor.message(label).copy(message_id=message_id))
        hold.wait("started", label)
        handle = abort(message_id)
        hold.wait("ended", label)
        assert hold.outcome[label] == "aborted", repr(message_id)
        status = handle.wait(timedelta(seconds=WAIT))
        assert status is not None and status.state is AbortState.INTERRUPTED, repr(message_id)
        assert abort_requested(BYSTANDER) is None, f"{message_id!r} reached {BYSTANDER!r}"

    assert backend.poll("abort:" + BYSTANDER) is None
    for label in ("abd", "abc2"):  # the worker's join would wait for the bystander too
        broker.enqueue(quick.message(label).copy(message_id=label))
        hold.wait("ended", label)
    assert ran == Counter({"abd": 1, "abc2": 1})

    hold.release.set()
    hold.wait("ended", "bystander")
    join(broker, hold_actor.queue_name, worker)
    assert hold.outcome["bystander"] == "released"
    assert hold.runs == Counter(
        {"bystander": 1, **{f"unusual-{i}": 1 for i in range(len(UNUSUAL_IDS))}}
    )

    client = redis.Redis(port=redis_server.port, db=BACKEND_DB)
    try:
        expected = {
            f"{namespace}{kind}:{message_id}".encode()
            for message_id in UNUSUAL_IDS
            for kind in ("abort", "status")
        }
        assert all_keys(client) == expected
        assert set(client.scan_iter(match=namespace + "*", count=1000)) == expected
        assert set(client.info("keyspace")) == {f"db{BACKEND_DB}"}
    finally:
        client.close()
        backend.client.close()


@pytest.mark.parametrize("worker_side", ["a", "b"])
def test_namespaces_never_see_each_others_requests(
    worker_side: str,
    stub_broker: StubBroker,
    redis_client: Any,
    namespace: str,
    start_worker: StartWorker,
) -> None:
    """Requests made under one namespace neither skip nor abort messages of the other.

    The worker's backend uses one namespace, the client's the other (neither
    a prefix of the other).  A cancel and an abort of two pending messages,
    made on the client's namespace, do not skip them.  A running message
    first gets an immediate abort on the client's namespace, then a graceful
    one (60 s) on the worker's: it sees the graceful one and is never
    aborted, which it would be at once had the first one leaked (requests
    are announced in order).
    """
    names = {"a": namespace + "a:", "b": namespace + "b:"}
    other_side = "b" if worker_side == "a" else "a"
    mine = Abortable(
        backend=backends.RedisBackend(client=redis_client, namespace=names[worker_side])
    )
    theirs = Abortable(
        backend=backends.RedisBackend(client=redis_client, namespace=names[other_side])
    )
    stub_broker.add_middleware(mine)
    ran: Counter[str] = Counter()
    seen: dict[str, float] = {}
    hold = Hold()

    @dramatiq.actor(broker=stub_broker, queue_name="namespaces-quick", max_retries=0)
    def quick(label: str) -> None:
        ran[label] += 1

    @dramatiq.actor(broker=stub_broker, queue_name="namespaces-watch", max_retries=0)
    def watch(label: str) -> None:
        hold.runs[label] += 1
        hold.event("started", label).set()
        try:
            deadline = time.monotonic() + WAIT
            while (remaining := abort_requested()) is None:
                assert time.monotonic() < deadline, "no request arrived"
                hold.release.wait(0.002)  # Abort lands between two short waits
            seen[label] = remaining
            hold.outcome[label] = "saw a request"
        except Abort:
            hold.outcome[label] = "aborted"
            raise
        finally:
            hold.event("ended", label).set()

    cancelled = quick.send("cancelled")
    aborted = quick.send("aborted")
    abort(cancelled.message_id, middleware=theirs, mode="cancel")
    abort(aborted.message_id, middleware=theirs)
    for message in (cancelled, aborted):
        assert theirs.backend.poll("abort:" + message.message_id) is not None
        assert mine.backend.poll("abort:" + message.message_id) is None
    worker = start_worker(stub_broker, worker_threads=2)
    join(stub_broker, quick.queue_name, worker)
    assert ran == Counter({"cancelled": 1, "aborted": 1})

    running = watch.send("running")
    hold.wait("started", "running")
    abort(running.message_id, middleware=theirs, abort_timeout=0)
    abort(running.message_id, middleware=mine, abort_timeout=60_000)
    hold.wait("ended", "running")
    join(stub_broker, watch.queue_name, worker)
    assert hold.outcome == {"running": "saw a request"}
    assert 50_000 < seen["running"] <= 60_000
    assert not stub_broker.dead_letters


def test_requests_are_stored_and_announced_as_json(
    redis_client: Any, redis_backend: backends.RedisBackend
) -> None:
    """The stored value and the announcement of a request are plain JSON, readable by anyone."""
    middleware = Abortable(backend=redis_backend)
    pubsub = redis_client.pubsub()
    try:
        pubsub.subscribe(redis_backend.channel)
        confirmed = pubsub.get_message(timeout=WAIT)
        assert confirmed is not None and confirmed["type"] == "subscribe"
        before = time.time() * 1000
        abort("json-1", middleware=middleware, abort_ttl=60_000, abort_timeout=1500)
        abort("json-2", middleware=middleware, mode="cancel")
        after = time.time() * 1000

        stored = {
            name: json.loads(redis_client.get(f"{redis_backend.namespace}abort:{name}"))
            for name in ("json-1", "json-2")
        }
        assert stored["json-1"]["mode"] == "abort"
        assert stored["json-1"]["abort_timeout"] == 1500
        assert stored["json-2"]["mode"] == "cancel"
        assert stored["json-2"]["abort_timeout"] is None
        for params in stored.values():
            assert before <= params["requested_at"] <= after
        assert 0 < redis_client.pttl(f"{redis_backend.namespace}abort:json-1") <= 60_000

        announced = []
        for _ in range(2):
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=WAIT)
            assert message is not None, "no announcement"
            announced.extend(json.loads(message["data"]))
        assert announced == [["abort:json-1", stored["json-1"]], ["abort:json-2", stored["json-2"]]]
    finally:
        pubsub.close()


class _Touch:
    """Unpickling this creates the file at ``path``: code run by whoever unpickles it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def pickles(path: Path) -> list[bytes]:
    """Pickles that create ``path`` when loaded: protocol 0 (ASCII) and the newest (binary)."""
    return [pickle.dumps(_Touch(path), protocol=0), pickle.dumps(_Touch(path), protocol=5)]


def test_pickles_in_redis_are_never_unpickled(
    tmp_path: Path,
    stub_broker: StubBroker,
    redis_client: Any,
    redis_backend: backends.RedisBackend,
    start_worker: StartWorker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Pickles stored under request keys or published are logged and ignored, never loaded.

    Messages with a pickle under their key run (it is no request); a cancel
    of one replaces the pickle and skips it; pickles published while a
    message runs are logged as malformed, and an abort still lands.
    """
    caplog.set_level(logging.WARNING, logger="dramatiq_abort")
    sanity = tmp_path / "sanity"
    for payload in pickles(sanity):
        pickle.loads(payload).close()  # the payloads work: loading one creates the file
        assert sanity.exists()
        sanity.unlink()
    marker = tmp_path / "unpickled"
    payloads = pickles(marker)

    stub_broker.add_middleware(Abortable(backend=redis_backend))
    hold = Hold()
    ran: Counter[str] = Counter()

    @dramatiq.actor(broker=stub_broker, queue_name="pickles-quick", max_retries=0)
    def quick(label: str) -> None:
        ran[label] += 1

    @dramatiq.actor(broker=stub_broker, queue_name="pickles-hold", max_retries=0)
    def hold_actor(label: str) -> None:
        hold.run(label)

    def key(message_id: str) -> str:
        return f"{redis_backend.namespace}abort:{message_id}"

    worker = start_worker(stub_broker, worker_threads=2)
    stored = [quick.message(f"stored-{index}") for index in range(len(payloads))]
    for message, payload in zip(stored, payloads, strict=True):
        redis_client.set(key(message.message_id), payload, px=60_000)
        stub_broker.enqueue(message)
    cancelled = quick.message("cancelled")
    redis_client.set(key(cancelled.message_id), payloads[1], px=60_000)
    abort(cancelled.message_id, mode="cancel")
    assert json.loads(redis_client.get(key(cancelled.message_id)))["mode"] == "cancel"
    stub_broker.enqueue(cancelled)
    join(stub_broker, quick.queue_name, worker)
    assert ran == Counter({"stored-0": 1, "stored-1": 1})
    assert [m.message_id for m in stub_broker.dead_letters] == [cancelled.message_id]

    running = hold_actor.send("running")
    hold.wait("started", "running")
    for payload in payloads:
        redis_client.publish(redis_backend.channel, payload)
    abort(running.message_id)
    hold.wait("ended", "running")
    join(stub_broker, hold_actor.queue_name, worker)
    assert hold.outcome == {"running": "aborted"}

    assert not marker.exists(), "a pickle from Redis was unpickled"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for message in stored:
        assert any(f"abort:{message.message_id}" in text for text in warnings), warnings
    assert sum("malformed announcement" in text for text in warnings) == len(payloads)


def test_an_unencodable_message_id_does_not_stop_the_watcher(
    stub_broker: StubBroker,
    redis_server: RedisServer,
    namespace: str,
    start_worker: StartWorker,
    log_watch: LogWatch,
) -> None:
    """A running message whose id has a lone surrogate leaves the watcher's resync working."""
    backend = backends.RedisBackend.from_url(f"{redis_server.url}/0", namespace=namespace)
    stub_broker.add_middleware(Abortable(backend=backend))
    hold = Hold()

    @dramatiq.actor(broker=stub_broker, queue_name="unencodable", max_retries=0)
    def hold_actor(label: str) -> None:
        hold.run(label)

    worker = start_worker(stub_broker, worker_threads=2)
    try:
        # An abort that lands proves the watcher is subscribed: its next resync is ours.
        warmup = hold_actor.send("warm-up")
        hold.wait("started", "warm-up")
        abort(warmup.message_id)
        hold.wait("ended", "warm-up")
        stub_broker.enqueue(hold_actor.message("unencodable").copy(message_id="lone-\ud800"))
        other = hold_actor.send("other")
        hold.wait("started", "unencodable")
        hold.wait("started", "other")
        import redis

        client = redis.Redis(port=redis_server.port)
        assert client.client_kill_filter(_type="pubsub") == 1  # the watcher resyncs
        client.close()
        log_watch.wait_for_any("Event backend is reachable again", "still unreachable")
        assert log_watch.count("still unreachable") == 0
        abort(other.message_id)
        hold.wait("ended", "other")
        assert hold.outcome["other"] == "aborted"
    finally:
        hold.release.set()
        join(stub_broker, hold_actor.queue_name, worker)
    backend.client.close()
