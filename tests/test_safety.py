"""Safety under load: an Abort lands only in the message it was meant for, or nowhere.

Thousands of very short messages run on several worker threads while a
separate thread fires aborts (seeded) at finished, running and pending
messages.  Every message is accounted for twice, by the actor itself and by
a spy middleware that sees how dramatiq ended it, and the two accounts must
agree: an actor that returned never ends with ``Abort``, a message nobody
aborted always completes exactly once, and no hook or worker thread fails.
"""

from __future__ import annotations

import logging
import queue
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import CurrentMessage

from conftest import Outcomes, join
from dramatiq_abort import Abort, Abortable, AbortMode, EventBackend, abort, backends

StartWorker = Callable[..., Worker]

SEED = 20240611
#: Messages in the stress test, and the worker threads that process them.
MESSAGES = 3000
THREADS = 8
#: One abort is fired each time this many more messages have ended.
ABORT_EVERY = 8
#: Bound, in seconds, on any single wait of these tests.
WAIT = 30.0


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Make the interpreter switch threads often, so races show up in a short run."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    yield
    sys.setswitchinterval(previous)


class Ledger:
    """What the actors saw, by message index, shared with the test thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: Counter[int] = Counter()
        self.running: set[int] = set()
        self.finished: list[int] = []
        self.high_water = -1
        #: "returned" or "aborted", written last thing in the actor.
        self.status: dict[int, str] = {}

    def run(self, index: int, spin: int) -> None:
        """Body of the test actor: a little pure-Python work, fully accounted for."""
        try:
            with self.lock:
                self.started[index] += 1
                self.running.add(index)
                self.high_water = max(self.high_water, index)
            total = 0
            for step in range(spin):
                total += step
            with self.lock:
                self.running.discard(index)
                self.finished.append(index)
            self.status[index] = "returned"
            return None  # no bytecode that can raise an async exception after the write
        except Abort:
            self.status[index] = "aborted"
            with self.lock:
                self.running.discard(index)
            raise


def problems_in_logs(records: list[logging.LogRecord]) -> list[str]:
    """Log records that show a failed hook, an unhandled exception or an Abort traceback."""
    found = []
    for record in records:
        text = record.getMessage()
        hook_failed = record.levelno >= logging.CRITICAL and "Unexpected failure" in text
        if hook_failed or (record.levelno >= logging.ERROR and "unhandled exception" in text):
            found.append(text)
        elif record.exc_info and isinstance(record.exc_info[1], Abort):
            found.append(f"traceback for Abort: {text}")
    return found


def agree(status: str | None, outcome: str) -> str:
    """Compare the actor's own account with how dramatiq ended the message.

    Returns:
        ``"ok"``, or ``"late"`` when the actor returned but the message
        ended with ``Abort`` (an Abort raised after the actor's code).

    """
    if status == "returned":
        assert outcome in ("done", "Abort"), f"the actor returned but the message ended {outcome}"
        return "ok" if outcome == "done" else "late"
    if status == "aborted":
        assert outcome == "Abort", f"the actor saw Abort but the message ended {outcome}"
    else:  # the actor's code never ran: skipped, or Abort due as it was entered
        assert outcome in ("skipped", "Abort"), f"the actor never ran, yet the message: {outcome}"
    return "ok"


def dead_letter_ids(broker: dramatiq.Broker, queue_name: str) -> set[str]:
    """Ids of the messages the broker holds as dead letters on ``queue_name``."""
    if isinstance(broker, StubBroker):
        return {message.message_id for message in broker.dead_letters}
    # The RedisBroker keys dead letters by its own redis_message_id; the
    # bodies it keeps alongside carry the message ids.
    key = f"{broker.namespace}:{queue_name}.XQ.msgs"  # type: ignore[attr-defined]
    client = broker.client  # type: ignore[attr-defined]
    return {dramatiq.Message.decode(raw).message_id for raw in client.hvals(key)}


@pytest.fixture(params=["stub", "redis"])
def stress_broker(request: pytest.FixtureRequest) -> tuple[dramatiq.Broker, EventBackend]:
    """A StubBroker with a StubBackend, then a RedisBroker with a RedisBackend."""
    broker: dramatiq.Broker = request.getfixturevalue(f"{request.param}_broker")
    if request.param == "stub":
        return broker, backends.StubBackend()
    backend: EventBackend = request.getfixturevalue("redis_backend")
    return broker, backend


def test_stress_aborts_never_hit_the_wrong_message(
    stress_broker: tuple[dramatiq.Broker, EventBackend],
    queue_name: str,
    start_worker: StartWorker,
    caplog: pytest.LogCaptureFixture,
    fast_switching: None,
) -> None:
    """Under random aborts of finished, running and pending messages, every message ends right."""
    broker, backend = stress_broker
    caplog.set_level(logging.WARNING)
    broker.add_middleware(Abortable(backend=backend))
    outcomes = Outcomes()
    broker.add_middleware(outcomes)
    ledger = Ledger()
    rng = random.Random(SEED)

    # The ledger's method is the actor itself, so writing its status is the
    # actor's last act: an Abort due after that can only fire in the guard.
    tick = dramatiq.actor(
        ledger.run,
        broker=broker,
        queue_name=queue_name,
        actor_name="tick",
        max_retries=3,
        min_backoff=10,
    )

    # Mostly tiny messages, a few a little longer so that aborts catch some running.
    spins = [rng.choice((0, 10, 50, 200, 20_000)) for _ in range(MESSAGES)]
    ids = [tick.send(index, spin).message_id for index, spin in enumerate(spins)]
    requested: dict[str, AbortMode] = {}
    aborter_failed: list[BaseException] = []

    def aim() -> int:
        with ledger.lock:
            running = sorted(ledger.running)
            finished = list(ledger.finished)
            high_water = ledger.high_water
        kind = rng.choice(("finished", "running", "running", "pending"))
        if kind == "finished" and finished:
            return rng.choice(finished)
        if kind == "running" and running:
            return rng.choice(running)
        return rng.randrange(min(high_water + 1, MESSAGES - 1), MESSAGES)

    def fire_aborts() -> None:
        try:
            mark = 0
            while True:
                with outcomes.cond:
                    target = min(mark, MESSAGES)
                    outcomes.cond.wait_for(lambda: outcomes.count >= target, WAIT)  # noqa: B023
                    if outcomes.count >= MESSAGES:
                        return
                mark = outcomes.count + ABORT_EVERY
                message_id = ids[aim()]
                roll = rng.random()
                if roll < 0.15:
                    abort(message_id, mode=AbortMode.CANCEL)
                    requested.setdefault(message_id, AbortMode.CANCEL)
                else:
                    abort(message_id, abort_timeout=rng.choice((0, 0, 0, 1, 3)))
                    requested[message_id] = AbortMode.ABORT
        except BaseException as exc:  # reported by the test thread
            aborter_failed.append(exc)

    aborter = threading.Thread(target=fire_aborts, name="test-aborter")
    # Aim a few at messages that certainly have not started yet.
    for index in rng.sample(range(MESSAGES // 2, MESSAGES), 20):
        abort(ids[index])
        requested[ids[index]] = AbortMode.ABORT
    worker = start_worker(broker, worker_threads=THREADS)
    aborter.start()
    join(broker, queue_name, worker)
    aborter.join(WAIT)
    assert not aborter.is_alive(), "the aborter thread did not finish"
    assert all(thread.is_alive() for thread in worker.workers), "a worker thread died"
    worker.stop()

    assert not aborter_failed, aborter_failed
    assert problems_in_logs(caplog.records) == []
    assert outcomes.count == MESSAGES
    failed, late = set(), []
    for index, message_id in enumerate(ids):
        ended = outcomes.by_id.get(message_id, [])
        assert len(ended) == 1, f"message {index} ended {ended!r}, not exactly once"
        outcome, status = ended[0], ledger.status.get(index)
        assert ledger.started[index] <= 1, f"message {index} ran {ledger.started[index]} times"
        mode = requested.get(message_id)
        if mode is None:
            assert (outcome, status, ledger.started[index]) == ("done", "returned", 1), index
            continue
        allowed = {"done", "skipped"} if mode is AbortMode.CANCEL else {"done", "skipped", "Abort"}
        assert outcome in allowed, f"message {index} ({mode}) ended with {outcome}"
        if agree(status, outcome) == "late":
            late.append(index)
        if outcome == "skipped":
            assert ledger.started[index] == 0, index
        if outcome != "done":
            failed.add(message_id)
    assert dead_letter_ids(broker, queue_name) == failed
    ended_by = Counter(outcomes.by_id[message_id][0] for message_id in requested)
    assert ended_by["skipped"] > 0 and ended_by["done"] > 0, ended_by
    assert not late, f"Abort landed after the actor returned: messages {late}"


@pytest.mark.threads_only(
    reason="its actors compute without yielding, so under gevent every abort comes after "
    "they returned and the race it needs never happens (the stress test covers greenlets)"
)
def test_abort_at_the_instant_a_message_finishes_never_hits_the_next(
    stub_broker: StubBroker,
    start_worker: StartWorker,
    caplog: pytest.LogCaptureFixture,
    fast_switching: None,
) -> None:
    """Aborts aimed at each message as it finishes never reach the next one on the thread."""
    caplog.set_level(logging.WARNING)
    stub_broker.add_middleware(CurrentMessage())
    stub_broker.add_middleware(Abortable(backend=backends.StubBackend()))
    outcomes = Outcomes()
    stub_broker.add_middleware(outcomes)
    rng = random.Random(SEED)
    finishing: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    status: dict[str, str] = {}

    @dramatiq.actor(broker=stub_broker, max_retries=3, min_backoff=10)
    def victim(self_abort: bool, tail: int) -> None:
        current = CurrentMessage.get_current_message()
        assert current is not None
        message_id = current.message_id
        try:
            if self_abort:
                abort(message_id)
            else:
                finishing.put(message_id)
            total = 0  # a little more code, so the Abort lands at varying points
            for step in range(tail):
                total += step
            status[message_id] = "returned"
            return None
        except Abort:
            status[message_id] = "aborted"
            raise

    @dramatiq.actor(broker=stub_broker, max_retries=3, min_backoff=10)
    def witness(spin: int) -> None:
        current = CurrentMessage.get_current_message()
        assert current is not None
        try:
            total = 0
            for step in range(spin):
                total += step
            status[current.message_id] = "returned"
            return None
        except Abort:
            status[current.message_id] = "aborted"
            raise

    def fire_aborts() -> None:
        while (message_id := finishing.get()) is not None:
            abort(message_id)

    victims, witnesses = [], []
    for _ in range(1000):
        tail = rng.choice((0, 0, 1, 5, 20, 100, 2_000, 20_000))
        victims.append(victim.send(rng.random() < 0.5, tail))
        witnesses.append(witness.send(rng.choice((0, 20, 200))))
    aborter = threading.Thread(target=fire_aborts, name="test-aborter")
    aborter.start()
    try:
        worker = start_worker(stub_broker, worker_threads=1)
        join(stub_broker, victim.queue_name, worker)
    finally:
        finishing.put(None)
        aborter.join(WAIT)
    assert all(thread.is_alive() for thread in worker.workers), "the worker thread died"

    assert problems_in_logs(caplog.records) == []
    for message in witnesses:
        assert outcomes.by_id.get(message.message_id) == ["done"]
        assert status.get(message.message_id) == "returned"
    ended_by: Counter[str] = Counter()
    late = []
    for message in victims:
        ended = outcomes.by_id.get(message.message_id, [])
        assert len(ended) == 1, ended
        if agree(status.get(message.message_id), ended[0]) == "late":
            late.append(message.message_id)
        ended_by[ended[0]] += 1
    # Both sides of the race were exercised: some aborts came too late to matter.
    assert ended_by["done"] > 0 and ended_by["Abort"] > 0, ended_by
    assert not late, f"Abort landed after the actor returned: {len(late)} of {len(victims)}"


#: The whole actor: it asks for its own abort, then runs straight-line code (no
#: loop and no call, so the interpreter never stops in it to switch threads or
#: raise an asynchronous exception), marks that it returned, and returns.  The
#: first place its thread can take the Abort is back in the guard, after the
#: actor's code ended, or right after the call to abort(), before the mark.
_TAIL_SOURCE = (
    "def finish_late():\n"
    "    key = CurrentMessage.get_current_message().message_id\n"
    "    abort(key)\n"
    "    total = 0\n" + "    total = total + 1\n" * 30_000 + "    marks[key] = 'returned'\n"
)


def test_abort_due_as_the_actor_returns_is_dropped(
    stub_broker: StubBroker, start_worker: StartWorker, fast_switching: None
) -> None:
    """An Abort that comes due while the actor's last bytecodes run never fails the message."""
    stub_broker.add_middleware(CurrentMessage())
    stub_broker.add_middleware(Abortable(backend=backends.StubBackend()))
    outcomes = Outcomes()
    stub_broker.add_middleware(outcomes)
    marks: dict[str, str] = {}
    namespace: dict[str, Any] = {"CurrentMessage": CurrentMessage, "abort": abort, "marks": marks}
    exec(compile(_TAIL_SOURCE, "<straight tail>", "exec"), namespace)
    finish_late = dramatiq.actor(broker=stub_broker, max_retries=0)(namespace["finish_late"])

    worker = start_worker(stub_broker, worker_threads=1)
    messages = [finish_late.send() for _ in range(30)]
    join(stub_broker, finish_late.queue_name, worker)
    accounts = [agree(marks.get(m.message_id), outcomes.by_id[m.message_id][0]) for m in messages]
    assert "late" not in accounts, Counter(accounts)


@pytest.mark.parametrize("when", ["running", "pending"])
def test_aborted_message_is_not_retried_and_logs_no_traceback(
    stub_broker: StubBroker,
    start_worker: StartWorker,
    caplog: pytest.LogCaptureFixture,
    when: str,
) -> None:
    """An aborted message that may retry runs at most once, is dead-lettered, logs no traceback."""
    caplog.set_level(logging.DEBUG)
    stub_broker.add_middleware(Abortable(backend=backends.StubBackend()))
    started, release = threading.Event(), threading.Event()
    runs: Counter[str] = Counter()

    @dramatiq.actor(broker=stub_broker, max_retries=5, min_backoff=1, max_backoff=10)
    def hold(name: str) -> None:
        runs[name] += 1
        started.set()
        while not release.is_set():
            time.sleep(0.002)  # the body of a long task; Abort lands between sleeps

    if when == "pending":
        message = hold.message("target")
        abort(message.message_id)
        stub_broker.enqueue(message)
        worker = start_worker(stub_broker)
    else:
        worker = start_worker(stub_broker)
        message = hold.send("target")
        assert started.wait(WAIT)
        abort(message.message_id)
    try:
        join(stub_broker, hold.queue_name, worker)
    finally:
        release.set()
    assert runs["target"] == (1 if when == "running" else 0)
    assert [m.message_id for m in stub_broker.dead_letters] == [message.message_id]
    assert problems_in_logs(caplog.records) == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_an_actor_that_raises_stop_iteration_ends_with_it(
    stub_broker: dramatiq.Broker, start_worker: Callable[..., Worker]
) -> None:
    """The guard hands on what the actor raised, StopIteration included, and what it returned."""
    stub_broker.add_middleware(Abortable(backend=backends.StubBackend()))
    outcomes = Outcomes()
    stub_broker.add_middleware(outcomes)

    @dramatiq.actor(broker=stub_broker, max_retries=0)
    def ends(kind: str) -> None:
        if kind == "stop":
            next(iter([]))

    start_worker(stub_broker)
    stopped, returned = ends.send("stop"), ends.send("return")
    assert outcomes.ended(stopped.message_id) == "StopIteration"
    assert outcomes.ended(returned.message_id) == "done"
