"""Abort and cancel semantics, end to end, on every broker with real workers."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker

from conftest import join
from dramatiq_abort import Abort, Abortable, AbortMode, abort, abort_requested, backends

#: Upper bound on how long a test actor keeps running when nobody aborts it.
RUN_FOR = 20.0

StartWorker = Callable[..., Worker]


class Probe:
    """What the test actors saw, shared with the test thread."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.finished = threading.Event()
        self.runs: Counter[str] = Counter()
        self.outcome: dict[str, str] = {}
        self.remaining: list[float] = []

    def spin(self, message_id: str, *, graceful: bool = False) -> str:
        """Run until aborted (or until asked to stop gracefully), recording what happened."""
        self.runs[message_id] += 1
        self.started.set()
        deadline = time.monotonic() + RUN_FOR
        try:
            while time.monotonic() < deadline:
                left = abort_requested()
                if left is not None:
                    self.remaining.append(left)
                    if graceful:
                        self.outcome[message_id] = "stopped gracefully"
                        return "stopped"
                time.sleep(0.002)
            self.outcome[message_id] = "ran to the end"
            return "done"
        except Abort:
            self.outcome[message_id] = "aborted"
            raise
        finally:
            self.finished.set()


@pytest.fixture
def probe() -> Probe:
    """A fresh probe per test."""
    return Probe()


def current_id() -> str:
    """The id of the message being processed, via dramatiq's CurrentMessage."""
    from dramatiq.middleware import CurrentMessage

    message = CurrentMessage.get_current_message()
    assert message is not None
    return str(message.message_id)


def spinner(
    broker: dramatiq.Broker, queue_name: str, probe: Probe, **options: Any
) -> dramatiq.Actor[Any, Any]:
    """Declare an actor that spins until aborted."""
    from dramatiq.middleware import CurrentMessage

    if not any(isinstance(m, CurrentMessage) for m in broker.middleware):
        broker.add_middleware(CurrentMessage())

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=3, min_backoff=10, **options)
    def spin(graceful: bool = False) -> str:
        return probe.spin(current_id(), graceful=graceful)

    return spin


def test_cancel_skips_a_pending_message(
    broker: dramatiq.Broker, queue_name: str, probe: Probe, start_worker: StartWorker
) -> None:
    """A message cancelled before any worker took it never runs."""
    spin = spinner(broker, queue_name, probe)
    message = spin.send()
    abort(message.message_id, mode=AbortMode.CANCEL)
    worker = start_worker(broker)
    join(broker, queue_name, worker)
    assert probe.runs[message.message_id] == 0


def test_abort_skips_a_pending_message(
    broker: dramatiq.Broker, queue_name: str, probe: Probe, start_worker: StartWorker
) -> None:
    """A message aborted before any worker took it never runs, and others still do."""
    spin = spinner(broker, queue_name, probe)
    doomed = spin.send()
    abort(doomed.message_id, mode="abort")
    kept = spin.send(True)
    worker = start_worker(broker)
    assert probe.started.wait(10)
    abort(kept.message_id, abort_timeout=10_000)
    join(broker, queue_name, worker)
    assert probe.runs[doomed.message_id] == 0
    assert probe.outcome[kept.message_id] == "stopped gracefully"


def test_abort_interrupts_a_running_message_once(
    broker: dramatiq.Broker, queue_name: str, probe: Probe, start_worker: StartWorker
) -> None:
    """A running message gets Abort, and is not retried although it may retry."""
    spin = spinner(broker, queue_name, probe)
    worker = start_worker(broker)
    message = spin.send()
    assert probe.started.wait(10)
    abort(message.message_id)
    assert probe.finished.wait(10)
    join(broker, queue_name, worker)
    assert probe.outcome[message.message_id] == "aborted"
    assert probe.runs[message.message_id] == 1


def test_cancel_leaves_a_running_message_alone(
    broker: dramatiq.Broker, queue_name: str, probe: Probe, start_worker: StartWorker
) -> None:
    """Cancel mode does not touch a message that already started."""
    spin = spinner(broker, queue_name, probe)
    worker = start_worker(broker)
    message = spin.send(True)
    assert probe.started.wait(10)
    abort(message.message_id, mode="cancel")
    # Then a graceful abort ends it; had the cancel reached it, it would show.
    abort(message.message_id, abort_timeout=10_000)
    join(broker, queue_name, worker)
    assert probe.outcome[message.message_id] == "stopped gracefully"
    assert probe.runs[message.message_id] == 1


def test_graceful_abort_counts_down_then_raises(
    broker: dramatiq.Broker, queue_name: str, probe: Probe, start_worker: StartWorker
) -> None:
    """With abort_timeout, abort_requested() counts down and Abort comes at the end."""
    spin = spinner(broker, queue_name, probe)
    worker = start_worker(broker)
    message = spin.send()
    assert probe.started.wait(10)
    assert not probe.remaining, "abort_requested() must be None before a request"
    abort(message.message_id, abort_timeout=300)
    assert probe.finished.wait(10)
    join(broker, queue_name, worker)
    assert probe.outcome[message.message_id] == "aborted"
    assert len(probe.remaining) >= 2
    assert all(0.0 <= left <= 300.0 for left in probe.remaining)
    assert probe.remaining == sorted(probe.remaining, reverse=True)


def test_graceful_abort_lets_the_message_finish(
    broker: dramatiq.Broker, queue_name: str, probe: Probe, start_worker: StartWorker
) -> None:
    """A message that stops within its grace period ends normally, without Abort."""
    spin = spinner(broker, queue_name, probe)
    worker = start_worker(broker)
    message = spin.send(True)
    assert probe.started.wait(10)
    abort(message.message_id, abort_timeout=10_000)
    join(broker, queue_name, worker)
    assert probe.outcome[message.message_id] == "stopped gracefully"
    assert 0 < probe.remaining[0] <= 10_000


def test_abort_is_not_swallowed_by_except_exception(
    stub_broker: dramatiq.Broker, start_worker: StartWorker
) -> None:
    """``except Exception`` in actor code does not catch Abort."""
    stub_broker.add_middleware(Abortable(backend=backends.StubBackend()))
    started, seen = threading.Event(), []

    @dramatiq.actor(broker=stub_broker)
    def careless() -> None:
        try:
            started.set()
            while True:
                time.sleep(0.002)
        except Exception as exc:  # the user code under test
            seen.append(exc)
        except BaseException as exc:
            seen.append(exc)
            raise

    worker = start_worker(stub_broker)
    message = careless.send()
    assert started.wait(10)
    abort(message.message_id)
    join(stub_broker, careless.queue_name, worker)
    assert [type(exc) for exc in seen] == [Abort]
    assert [m.message_id for m in stub_broker.dead_letters] == [message.message_id]


@pytest.mark.parametrize(
    ("default", "actor_option", "message_option", "expect_aborted"),
    [
        (True, None, None, True),
        (False, None, None, False),
        (True, False, None, False),
        (False, True, None, True),
        (True, False, True, True),
        (False, True, False, False),
    ],
)
def test_abortable_option_priority(
    stub_broker: dramatiq.Broker,
    start_worker: StartWorker,
    default: bool,
    actor_option: bool | None,
    message_option: bool | None,
    expect_aborted: bool,
) -> None:
    """The message's abortable option wins over the actor's, which wins over the default."""
    stub_broker.add_middleware(Abortable(backend=backends.StubBackend(), abortable=default))
    release, outcome = threading.Event(), {}
    running = {"target": threading.Event(), "witness": threading.Event()}
    witness_aborted = threading.Event()
    options = {} if actor_option is None else {"abortable": actor_option}

    @dramatiq.actor(broker=stub_broker, max_retries=0, **options)
    def hold(name: str) -> None:
        running[name].set()
        try:
            while not release.wait(0.002):
                pass
            outcome[name] = "released"
        except Abort:
            outcome[name] = "aborted"
            if name == "witness":
                witness_aborted.set()
            raise

    worker = start_worker(stub_broker)
    send_options = {} if message_option is None else {"abortable": message_option}
    target = hold.send_with_options(args=("target",), **send_options)
    witness = hold.send_with_options(args=("witness",), abortable=True)
    assert running["target"].wait(10)
    assert running["witness"].wait(10)
    abort(target.message_id)
    # The watcher handles requests in order: once the witness is aborted, the
    # target's request has been handled too.
    abort(witness.message_id)
    assert witness_aborted.wait(10)
    release.set()
    join(stub_broker, hold.queue_name, worker)
    assert outcome["target"] == ("aborted" if expect_aborted else "released")
