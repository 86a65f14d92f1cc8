"""Read-ahead checks: a worker checks the messages waiting in its work queue in batches.

Every test runs a real ``dramatiq.Worker`` (one thread) on a ``StubBroker``,
with a ``RedisBackend`` alone on a throwaway ``redis-server``, so the
server's ``INFO commandstats`` counts the middleware's commands and
nothing else.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker
from dramatiq.worker import Worker

from conftest import WAIT, LogWatch, Outcomes, RedisServer
from dramatiq_abort import Abortable, AbortMode, backends
from dramatiq_abort._lookahead import Lookahead
from dramatiq_abort._request import AbortRequest

redis = pytest.importorskip("redis")

StartWorker = Callable[..., Worker]

NAMESPACE = "lookahead-test:"


class Gates:
    """Actors that wait at a gate until the test opens it."""

    def __init__(self) -> None:
        self.started: dict[str, threading.Event] = {}
        self.opened: dict[str, threading.Event] = {}
        self.ran: list[str] = []

    def gate(self, name: str) -> tuple[threading.Event, threading.Event]:
        """The ``started`` and ``opened`` events of gate ``name``."""
        started = self.started.setdefault(name, threading.Event())
        opened = self.opened.setdefault(name, threading.Event())
        return started, opened


@pytest.fixture
def setup(
    redis_server: RedisServer, stub_broker: StubBroker
) -> Iterator[tuple[StubBroker, Any, Gates, Outcomes, dramatiq.Actor[Any, Any]]]:
    """A StubBroker with Abortable on a throwaway Redis, a gate actor and a mark actor."""
    client = redis.Redis.from_url(redis_server.url)
    backend = backends.RedisBackend(client=client, namespace=NAMESPACE)
    stub_broker.add_middleware(Abortable(backend=backend))
    outcomes = Outcomes()
    stub_broker.add_middleware(outcomes)
    gates = Gates()

    @dramatiq.actor(broker=stub_broker, max_retries=0)
    def gate(name: str) -> None:
        """Wait until the test opens this gate."""
        started, opened = gates.gate(name)
        started.set()
        assert opened.wait(WAIT), f"gate {name} was never opened"

    @dramatiq.actor(broker=stub_broker, max_retries=0)
    def mark(name: str) -> None:
        """Record that it ran."""
        gates.ran.append(name)

    yield stub_broker, client, gates, outcomes, mark
    for opened in gates.opened.values():
        opened.set()
    client.close()


def _calls(client: Any) -> dict[str, int]:
    """Commands the server ran so far, by name."""
    return {
        name.removeprefix("cmdstat_"): int(stats["calls"])
        for name, stats in client.info("commandstats").items()
    }


def _queued(worker: Worker, count: int) -> None:
    """Wait until ``count`` messages wait in the worker's work queue."""
    deadline = time.monotonic() + WAIT
    # The work queue offers no event to wait on; poll its size.
    while worker.work_queue.qsize() < count:
        assert time.monotonic() < deadline, f"{worker.work_queue.qsize()} of {count} queued"
        time.sleep(0.005)


def _behind_a_gate(
    broker: StubBroker, gates: Gates, mark: Any, start_worker: StartWorker, names: list[str]
) -> tuple[Worker, list[Any]]:
    """Hold a one-thread worker at gate "first"; queue gate "second", then a mark per name."""
    worker = start_worker(broker, worker_threads=1, queue_prefetch=50)
    gate = broker.get_actor("gate")
    gate.send("first")
    gates.gate("first")[0].wait(WAIT)
    gate.send("second")
    messages = [mark.send(name) for name in names]
    _queued(worker, len(names) + 1)
    return worker, messages


def _open_first(gates: Gates) -> None:
    """Let "first" end: "second" starts and reads ahead for the marks behind it."""
    gates.gate("first")[1].set()
    gates.gate("second")[0].wait(WAIT)


def test_prefetched_messages_are_checked_in_one_round_trip(
    setup: Any, start_worker: StartWorker
) -> None:
    """Twenty messages waiting behind a busy thread cost one round trip, not twenty."""
    broker, client, gates, outcomes, mark = setup
    names = [f"m{i}" for i in range(20)]
    _behind_a_gate(broker, gates, mark, start_worker, names)
    before = _calls(client)
    _open_first(gates)
    gates.gate("second")[1].set()
    outcomes.wait(22)
    after = _calls(client)
    assert gates.ran == names
    # One EXISTS for the twenty (none has a request, so no MGET follows).  A
    # message may still read itself alone (one key, an MGET) if it starts
    # while the watcher handles the reply to a keep-alive PING.
    assert after.get("exists", 0) - before.get("exists", 0) == 1
    assert after.get("mget", 0) - before.get("mget", 0) <= 2
    assert after.get("get", 0) == before.get("get", 0) == 0


def test_a_request_announced_while_a_message_waits_skips_it(
    setup: Any, start_worker: StartWorker, log_watch: LogWatch
) -> None:
    """A cancel and an abort announced for messages already read ahead reach their notes.

    The requests are announced only, never stored, so a fresh read would
    find nothing: the two messages skip because their notes say so.
    """
    broker, client, gates, outcomes, mark = setup
    _, messages = _behind_a_gate(broker, gates, mark, start_worker, [f"m{i}" for i in range(10)])
    _open_first(gates)
    batch = [
        AbortRequest.create(messages[3].message_id, AbortMode.CANCEL, 0).to_event(),
        AbortRequest.create(messages[7].message_id, AbortMode.ABORT, 0).to_event(),
    ]
    client.publish(NAMESPACE + "events", json.dumps([[e.key, e.params] for e in batch]))
    log_watch.wait_for("waiting in the work queue", count=2)
    gates.gate("second")[1].set()
    outcomes.wait(12)
    assert outcomes.by_id[messages[3].message_id] == ["skipped"]
    assert outcomes.by_id[messages[7].message_id] == ["skipped"]
    assert gates.ran == [f"m{i}" for i in range(10) if i not in (3, 7)]


def test_notes_from_a_lost_subscription_are_not_trusted(
    setup: Any, start_worker: StartWorker, log_watch: LogWatch
) -> None:
    """A request stored while the subscription was down (never announced) still skips."""
    broker, client, gates, outcomes, mark = setup
    _, messages = _behind_a_gate(broker, gates, mark, start_worker, [f"m{i}" for i in range(5)])
    _open_first(gates)  # the marks are noted: "no request"
    client.client_kill_filter(_type="pubsub")
    log_watch.wait_for("reachable again")
    # Stored as abort() stores it, but not announced: only a fresh read finds it.
    event = AbortRequest.create(messages[2].message_id, AbortMode.CANCEL, 0).to_event()
    client.set(NAMESPACE + event.key, json.dumps(event.params), px=60_000)
    gates.gate("second")[1].set()
    outcomes.wait(7)
    assert outcomes.by_id[messages[2].message_id] == ["skipped"]
    assert gates.ran == ["m0", "m1", "m3", "m4"]


def test_a_busy_worker_pings_its_silent_subscription_and_an_idle_one_does_not(
    setup: Any, start_worker: StartWorker
) -> None:
    """PINGs go out while messages flow (about one a second), none while the worker idles."""
    broker, client, _gates, outcomes, mark = setup
    start_worker(broker, worker_threads=1, queue_prefetch=50)
    idle_from = _calls(client).get("ping", 0)
    time.sleep(3.0)  # the span under test: an idle worker
    assert _calls(client).get("ping", 0) == idle_from
    busy_from = time.monotonic()
    sent = 0
    while time.monotonic() - busy_from < 3.0:  # the span under test: a busy worker
        mark.send(f"b{sent}")
        sent += 1
        outcomes.wait(sent)
        time.sleep(0.02)
    pings = _calls(client).get("ping", 0) - idle_from
    assert 1 <= pings <= 4, f"{pings} pings in 3 s of traffic"


def _ids(notes: list[Any]) -> list[str]:
    return [note.message_id for note in notes]


def test_a_note_counts_only_once_its_read_is_back() -> None:
    """A note reserved but not yet read says nothing; once complete it says what was found."""
    lookahead = Lookahead()
    notes = lookahead.reserve(["a", "b"], 2)
    assert _ids(notes) == ["a", "b"]
    assert lookahead.take("a", 2) == (False, None), "read still on its way"
    request = AbortRequest.create("b", AbortMode.CANCEL, 0)
    lookahead.offer(request)  # announced while the read is on its way
    lookahead.complete(notes)
    assert lookahead.take("b", 2) == (True, request)
    lookahead.complete(lookahead.reserve(["c"], 2))
    assert lookahead.take("c", 4) == (False, None), "a note from another generation"
    assert len(lookahead) == 0


def test_a_late_read_does_not_complete_a_newer_note() -> None:
    """A read answered after its note was replaced leaves the new note unread.

    With the notes at their limit, a reservation drops the notes of messages
    no longer waiting, but never one whose read is on its way; and a read
    completes only the very note it was made for.
    """
    lookahead = Lookahead(limit=3)
    first = lookahead.reserve(["x"], 2)  # its read is on its way: "no request"
    lookahead.complete(lookahead.reserve(["a", "b"], 2))  # then a and b leave the queue
    lookahead.reserve(["c"], 2, waiting={"c"})  # over the limit: a and b go, x stays
    assert lookahead.noted("x", 2) and not lookahead.noted("a")
    lookahead.drop(first)  # x's read failed
    second = lookahead.reserve(["x"], 2)  # read again, on its way
    lookahead.complete(first)  # a stale answer for the dropped note
    assert lookahead.take("x", 2) == (False, None), "the stale read completed the new note"
    lookahead.complete(second)
    assert lookahead.noted("x") is False  # taken above: the second read finds no note


def test_the_subscription_tells_what_waits_unread(redis_server: RedisServer) -> None:
    """``pending()`` sees an announcement that no read took yet; ``drain()`` takes it."""
    client = redis.Redis.from_url(redis_server.url)
    backend = backends.RedisBackend(client=client, namespace=NAMESPACE)
    subscription: Any = backend.subscribe()
    try:
        assert not subscription.pending()
        request = AbortRequest.create("m1", AbortMode.ABORT, 0)
        backend.notify([request.to_event()], 60_000)
        assert subscription.ready(WAIT)
        assert subscription.pending()
        events, more = subscription.drain()
        assert [event.key for event in events] == [request.to_event().key]
        assert not more
        assert not subscription.pending()
    finally:
        subscription.close()
        client.close()


def test_a_subscription_redis_py_remade_is_reported_not_hidden(redis_server: RedisServer) -> None:
    """redis-py reconnects and resubscribes a killed pub/sub connection; the backend says so."""
    client = redis.Redis.from_url(redis_server.url)
    backend = backends.RedisBackend(client=client, namespace=NAMESPACE)
    subscription: Any = backend.subscribe()
    try:
        client.client_kill_filter(_type="pubsub")
        assert subscription.ready(WAIT)  # the connection's end is readable
        for _ in range(5):  # the first write may still succeed; a later one reconnects
            try:
                subscription.ping()
            except redis.ConnectionError:
                break
        assert subscription.pending()
        with pytest.raises(redis.ConnectionError, match="lost and remade"):
            subscription.drain()
    finally:
        subscription.close()
        client.close()


def test_a_worker_pings_its_silent_subscription_while_a_long_message_runs(
    setup: Any, start_worker: StartWorker
) -> None:
    """A long message needs a live subscription for its abort: a silent one is pinged (5 s).

    Starting the message makes the worker busy for 2 s (a ping after 1 s of
    silence); a PING after 3 s comes from the running message alone.
    """
    broker, client, gates, outcomes, _mark = setup
    start_worker(broker, worker_threads=1, queue_prefetch=50)
    gate = broker.get_actor("gate")
    gate.send("long")
    started, opened = gates.gate("long")
    assert started.wait(WAIT)
    since = time.monotonic()
    quiet_from = since + 3.0
    pings = _calls(client).get("ping", 0)
    late_pings = 0
    # INFO offers no event to wait on; poll it.
    while not late_pings:
        assert time.monotonic() < since + 10.0, "no PING from 3 s to 10 s while a message ran"
        time.sleep(0.1)
        now_pings = _calls(client).get("ping", 0)
        if now_pings > pings and time.monotonic() > quiet_from:
            late_pings = now_pings - pings
        pings = now_pings
    opened.set()
    outcomes.wait(1)
