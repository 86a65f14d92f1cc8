"""The middleware's threads, actor preparation and per-process lookups."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from conftest import PlainBackend, join
from dramatiq_abort import Abort, Abortable, abort, abort_requested, backends

StartWorker = Callable[..., Worker]


def our_threads() -> list[threading.Thread]:
    """The live threads this library started."""
    return [t for t in threading.enumerate() if t.name.startswith("dramatiq-abort")]


def test_workers_started_and_stopped_leave_no_thread(
    stub_broker: StubBroker, redis_backend: backends.RedisBackend
) -> None:
    """Ten start/stop cycles of a Worker leave none of our threads behind."""
    before = our_threads()
    stub_broker.add_middleware(Abortable(backend=redis_backend))
    for _ in range(10):
        worker = Worker(stub_broker, worker_threads=1, worker_timeout=50)
        worker.start()
        assert len(our_threads()) == len(before) + 2
        worker.stop()
        assert our_threads() == before


def test_boot_hook_called_twice_starts_once(stub_broker: StubBroker) -> None:
    """Calling the boot hooks by hand, as old test suites do, starts one set of threads."""
    before = our_threads()
    middleware = Abortable(backend=backends.StubBackend())
    stub_broker.add_middleware(middleware)
    middleware.after_process_boot(stub_broker)
    middleware.after_process_boot(stub_broker)
    worker = Worker(stub_broker, worker_threads=1, worker_timeout=50)
    worker.start()
    assert len(our_threads()) == len(before) + 2
    worker.stop()
    assert our_threads() == before


def test_actor_declared_before_the_middleware_is_abortable(
    stub_broker: StubBroker, start_worker: StartWorker
) -> None:
    """An actor declared before Abortable was added is still aborted, and not retried."""
    started, runs = threading.Event(), []

    @dramatiq.actor(broker=stub_broker, min_backoff=10)
    def early() -> None:
        runs.append(1)
        started.set()
        while True:
            threading.Event().wait(0.002)

    stub_broker.add_middleware(Abortable(backend=backends.StubBackend()))
    worker = start_worker(stub_broker)
    message = early.send()
    assert started.wait(10)
    abort(message.message_id)
    join(stub_broker, early.queue_name, worker)
    assert runs == [1]
    assert [m.message_id for m in stub_broker.dead_letters] == [message.message_id]


def test_abort_requested_for_another_running_message(
    stub_broker: StubBroker, start_worker: StartWorker
) -> None:
    """abort_requested(message_id=...) answers for another message running in this process."""
    stub_broker.add_middleware(Abortable(backend=backends.StubBackend()))
    started, release, seen = threading.Event(), threading.Event(), []

    @dramatiq.actor(broker=stub_broker, max_retries=0)
    def target() -> None:
        started.set()
        release.wait(30)

    @dramatiq.actor(broker=stub_broker, max_retries=0, queue_name="observer")
    def observer(target_id: str) -> None:
        seen.append(abort_requested(target_id))

    worker = start_worker(stub_broker)
    message = target.send()
    assert started.wait(10)
    abort(message.message_id, abort_timeout=60_000)
    # The request travels through the watcher; the observer asks until it sees it.
    while not seen or seen[-1] is None:
        observer.send(message.message_id)
        stub_broker.join(observer.queue_name, fail_fast=False)
        assert len(seen) < 1000, "the request never reached the running message"
    release.set()
    join(stub_broker, target.queue_name, worker)
    assert 0 < seen[-1] <= 60_000


def test_nested_actor_calls_stay_abortable(
    stub_broker: StubBroker, start_worker: StartWorker
) -> None:
    """An actor that calls another actor's function in-line is still aborted inside it."""
    stub_broker.add_middleware(Abortable(backend=backends.StubBackend()))
    started, where = threading.Event(), []

    @dramatiq.actor(broker=stub_broker)
    def inner() -> None:
        started.set()
        try:
            while True:
                threading.Event().wait(0.002)
        except Abort:
            where.append("inner")
            raise

    @dramatiq.actor(broker=stub_broker, max_retries=0)
    def outer() -> None:
        inner()  # nested guard: leaving it must not make the outer call unabortable
        where.append("outer went on")

    worker = start_worker(stub_broker)
    message = outer.send()
    assert started.wait(10)
    abort(message.message_id)
    join(stub_broker, outer.queue_name, worker)
    assert where == ["inner"]


def test_switch_interval_is_lowered_while_long_actor_code_runs(stub_broker: StubBroker) -> None:
    """1 ms while a message that may run long runs; the old interval between and after.

    An actor may run long when its last message here ran 20 ms or more, or
    none has run yet: its first message (30 ms) and the next one run at
    1 ms; the one after a quick message runs at the interpreter's interval.
    """
    import sys

    before = sys.getswitchinterval()
    seen: list[float] = []

    @dramatiq.actor(broker=stub_broker)
    def probe(seconds: float) -> None:
        """Note the interval, then take ``seconds``."""
        seen.append(sys.getswitchinterval())
        time.sleep(seconds)  # how long this message runs is the input under test

    stub_broker.add_middleware(Abortable(backend=backends.StubBackend()))
    worker = Worker(stub_broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        between = []
        for seconds in (0.03, 0.0, 0.0):
            probe.send(seconds)
            stub_broker.join(probe.queue_name, fail_fast=True, timeout=30_000)
            worker.join()
            between.append(sys.getswitchinterval())
    finally:
        worker.stop()
    low = min(before, 0.001)
    assert seen == [low, low, before]
    assert between == [before, before, before]
    assert sys.getswitchinterval() == before


def test_an_aborted_message_makes_its_actor_count_as_long(stub_broker: StubBroker) -> None:
    """A message cut short by an abort does not look short: the next one runs at 1 ms.

    First a quick message (unknown actor: 1 ms), then one aborted a few ms
    in (after a quick one: the interpreter's interval), then a quick one
    again (after an aborted one: 1 ms).
    """
    import sys

    before = sys.getswitchinterval()
    seen: list[float] = []
    started = threading.Event()

    @dramatiq.actor(broker=stub_broker, max_retries=0)
    def job(quick: bool) -> None:
        """Return at once, or run until aborted."""
        seen.append(sys.getswitchinterval())
        started.set()
        for _ in range(0 if quick else 30_000):  # 30 s at most
            time.sleep(0.001)

    stub_broker.add_middleware(Abortable(backend=backends.StubBackend()))
    worker = Worker(stub_broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        for quick in (True, False, True):
            started.clear()
            message = job.send(quick)
            assert started.wait(30)
            if not quick:
                abort(message.message_id)  # a few ms into it
            stub_broker.join(job.queue_name, fail_fast=False, timeout=30_000)
            worker.join()
    finally:
        worker.stop()
    low = min(before, 0.001)
    assert seen == [low, before, low]


def test_switch_interval_none_leaves_it_alone(stub_broker: StubBroker) -> None:
    """switch_interval_ms=None keeps the interpreter's own setting."""
    import sys

    before = sys.getswitchinterval()
    middleware = Abortable(backend=backends.StubBackend(), switch_interval_ms=None)
    stub_broker.add_middleware(middleware)
    worker = Worker(stub_broker, worker_threads=1, worker_timeout=50)
    worker.start()
    try:
        assert sys.getswitchinterval() == before
    finally:
        worker.stop()


def test_a_plain_1x_backend_still_aborts(
    stub_broker: StubBroker, start_worker: StartWorker
) -> None:
    """A 1.x-style backend works, even one that returns a handled request forever."""
    stub_broker.add_middleware(Abortable(backend=PlainBackend()))
    started = {"a": threading.Event(), "b": threading.Event()}
    release, outcome, b_aborted = threading.Event(), {}, threading.Event()

    @dramatiq.actor(broker=stub_broker, max_retries=0)
    def hold(name: str) -> None:
        started[name].set()
        try:
            while not release.wait(0.002):
                pass
            outcome[name] = "released"
        except Abort:
            outcome[name] = "aborted"
            b_aborted.set()
            raise

    worker = start_worker(stub_broker)
    a, b = hold.send("a"), hold.send("b")
    assert started["a"].wait(10)
    assert started["b"].wait(10)
    abort(a.message_id, mode="cancel")  # too late for a: handled, and returned again
    abort(b.message_id)
    assert b_aborted.wait(10), "the fallback watcher never delivered b's abort"
    release.set()
    join(stub_broker, hold.queue_name, worker)
    assert outcome == {"a": "released", "b": "aborted"}


def test_an_exception_raised_into_the_guard_exit_leaves_nothing_behind() -> None:
    """A time limit or shutdown landing as the actor's code ends: the entry still leaves.

    ``sys.settrace`` raises the exception at the first instruction of the
    registry's ``_leave``, where an asynchronous exception can land; the
    guard retries it, then lets the exception through, and the lowered
    switch interval comes back.
    """
    import sys

    from dramatiq_abort._registry import LEFT, Registry, _Guarded

    class Foreign(Exception):
        """Stands for dramatiq's TimeLimitExceeded or Shutdown."""

    before = sys.getswitchinterval()
    registry = Registry()
    registry.want_switch_interval(before / 5)
    entry = registry.register("m1", actor_name="job")
    registry.start(entry)
    raised: list[bool] = []

    def tracer(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code is Registry._leave.__code__ and not raised:
            raised.append(True)
            raise Foreign

    seen: list[float] = []
    guarded = _Guarded(lambda: seen.append(sys.getswitchinterval()), registry)
    try:
        sys.settrace(tracer)
        try:
            with pytest.raises(Foreign):
                guarded()
        finally:
            sys.settrace(None)
        assert raised == [True]
        assert seen == [before / 5]
        assert entry.state == LEFT
        assert sys.getswitchinterval() == before, "the lowered interval was left behind"
    finally:
        registry.release_switch_interval()


def test_an_abort_swallowed_by_a_finalizer_is_raised_again(
    stub_broker: StubBroker, start_worker: StartWorker
) -> None:
    """CPython ignores an exception raised in ``__del__``; an Abort landing there comes again.

    The abort is sent while the actor's thread runs a finalizer that takes
    up to 5 s, so it lands there and CPython swallows it; the actor then
    loops in plain code, where the second delivery lands.
    """
    outcomes: list[str] = []
    in_finalizer = threading.Event()
    swallowed = threading.Event()

    class Slow:
        """Takes up to 5 s to finalize; an exception ends it sooner."""

        def __del__(self) -> None:
            in_finalizer.set()
            try:
                for _ in range(5000):
                    time.sleep(0.001)
            except BaseException:
                swallowed.set()
                raise

    @dramatiq.actor(broker=stub_broker, max_retries=0)
    def finalizing() -> None:
        """Drop one Slow object, then loop for 20 s, unless aborted."""
        Slow()
        end = time.monotonic() + 20
        try:
            while time.monotonic() < end:
                time.sleep(0.001)
        except Abort:
            outcomes.append("aborted")
            raise
        outcomes.append("ran to its end")

    stub_broker.add_middleware(Abortable(backend=backends.StubBackend()))
    worker = start_worker(stub_broker, worker_threads=1)
    message = finalizing.send()
    assert in_finalizer.wait(10)
    abort(message.message_id)
    join(stub_broker, finalizing.queue_name, worker)
    assert swallowed.is_set(), "the abort did not land in the finalizer"
    assert outcomes == ["aborted"]
