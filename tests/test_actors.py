"""``abortable_actor``: dramatiq's call forms, the actor's grace and its abort handler.

The end-to-end tests run real workers; those that matter on every broker
take the parametrised ``broker`` fixture (stub, Redis, RabbitMQ), the rest
run on the StubBroker.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.broker import Broker, MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AsyncIO, Middleware

from conftest import join
from dramatiq_abort import (
    Abort,
    Abortable,
    MiddlewareMissingError,
    abort,
    abort_requested,
    abortable_actor,
    backends,
)

#: Upper bound on how long a test actor keeps running when nobody aborts it.
RUN_FOR = 20.0

StartWorker = Callable[..., Worker]


class Record:
    """What one test's actors, handlers and middleware saw, shared with the test thread."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.events: list[str] = []
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.threads: dict[str, int] = {}
        self.left: list[float] = []
        self.runs = 0

    def on_abort(self, *args: Any, **kwargs: Any) -> None:
        """An abort handler that notes how and where it was called."""
        self.calls.append((args, kwargs))
        self.threads["on_abort"] = threading.get_ident()
        self.events.append("on_abort")


class Outcomes(Middleware):
    """Notes, into a record, how dramatiq's worker saw each message end."""

    def __init__(self, record: Record) -> None:
        self.record = record
        self.exceptions: dict[str, BaseException | None] = {}
        self.skipped: list[str] = []

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        """Note the exception (or ``None``) the message ended with."""
        self.exceptions[message.message_id] = exception
        self.record.events.append(
            "ended normally" if exception is None else f"ended: {type(exception).__name__}"
        )

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        """Note a message that never ran."""
        self.skipped.append(message.message_id)


@pytest.fixture
def record() -> Record:
    """A fresh record per test."""
    return Record()


@pytest.fixture
def abortable(stub_broker: StubBroker) -> Abortable:
    """An Abortable on the global stub broker."""
    middleware = Abortable(backend=backends.StubBackend())
    stub_broker.add_middleware(middleware)
    return middleware


def spin() -> None:
    """Keep the actor busy until Abort lands, for at most RUN_FOR seconds."""
    deadline = time.monotonic() + RUN_FOR
    while time.monotonic() < deadline:
        time.sleep(0.002)


# -- call forms and parameters ------------------------------------------------


def test_bare_decorator_declares_an_abortable_actor_on_the_global_broker(
    stub_broker: StubBroker, abortable: Abortable
) -> None:
    """Bare ``@abortable_actor`` declares an abortable actor on the global broker."""

    @abortable_actor
    def double(x: int) -> int:
        return x * 2

    assert isinstance(double, dramatiq.Actor)
    assert double.broker is stub_broker
    assert stub_broker.get_actor("double") is double
    assert (double.actor_name, double.queue_name, double.priority) == ("double", "default", 0)
    assert double.options["abortable"] is True
    assert "abort_timeout" not in double.options
    assert double(21) == 42


def test_decorator_passes_dramatiq_parameters_and_options(
    stub_broker: StubBroker, abortable: Abortable
) -> None:
    """actor_class, actor_name, queue_name, priority, broker and actor options reach the actor."""

    class Traced(dramatiq.Actor[Any, Any]):
        """A custom actor class."""

    other = StubBroker()
    other.add_middleware(Abortable(backend=backends.StubBackend()))
    try:

        @abortable_actor(
            actor_class=Traced,
            actor_name="renamed",
            queue_name="reports",
            priority=7,
            broker=other,
            max_retries=4,
            time_limit=60_000,
        )
        def report(x: int) -> int:
            return x + 1

        assert isinstance(report, Traced)
        assert report.broker is other
        assert other.get_actor("renamed") is report
        assert "renamed" not in stub_broker.actors
        assert (report.actor_name, report.queue_name, report.priority) == ("renamed", "reports", 7)
        assert report.options["max_retries"] == 4
        assert report.options["time_limit"] == 60_000
        assert report.options["abortable"] is True
        assert report(1) == 2
    finally:
        other.close()


@pytest.mark.parametrize("max_retries", [0, 2])
def test_actor_options_reach_dramatiqs_middleware(
    stub_broker: StubBroker, abortable: Abortable, start_worker: StartWorker, max_retries: int
) -> None:
    """``max_retries`` passed to abortable_actor is obeyed by dramatiq's Retries middleware."""
    runs: list[int] = []

    @abortable_actor(max_retries=max_retries, min_backoff=1, max_backoff=10)
    def flaky() -> None:
        runs.append(1)
        raise ValueError("always fails")

    worker = start_worker(stub_broker)
    flaky.send()
    join(stub_broker, flaky.queue_name, worker)
    assert len(runs) == max_retries + 1


@pytest.mark.parametrize(
    ("middleware_default", "actor_options", "expect_aborted"),
    [
        pytest.param(False, {}, True, id="default-despite-middleware-false"),
        pytest.param(True, {}, True, id="default"),
        pytest.param(True, {"abortable": False}, False, id="abortable-false"),
        pytest.param(False, {"abortable": False}, False, id="abortable-false-both"),
    ],
)
def test_abortable_unless_told_otherwise(
    stub_broker: StubBroker,
    start_worker: StartWorker,
    middleware_default: bool,
    actor_options: dict[str, Any],
    expect_aborted: bool,
) -> None:
    """The actor is abortable whatever the middleware's default, unless abortable=False."""
    stub_broker.add_middleware(
        Abortable(backend=backends.StubBackend(), abortable=middleware_default)
    )
    release = threading.Event()
    running = {"target": threading.Event(), "witness": threading.Event()}
    witness_aborted = threading.Event()
    outcome: dict[str, str] = {}

    @abortable_actor(max_retries=0, **actor_options)
    def hold() -> None:
        running["target"].set()
        deadline = time.monotonic() + RUN_FOR
        try:
            while not release.wait(0.002):
                if time.monotonic() > deadline:
                    outcome["target"] = "never released"
                    return
            outcome["target"] = "released"
        except Abort:
            outcome["target"] = "aborted"
            raise

    @abortable_actor(max_retries=0)
    def witness() -> None:
        running["witness"].set()
        try:
            spin()
        except Abort:
            witness_aborted.set()
            raise

    assert hold.options["abortable"] is actor_options.get("abortable", True)
    worker = start_worker(stub_broker)
    target = hold.send()
    witnessed = witness.send()
    assert running["target"].wait(10)
    assert running["witness"].wait(10)
    abort(target.message_id)
    # Requests are handled in order: once the witness is aborted, the
    # target's request has been handled too.
    abort(witnessed.message_id)
    try:
        assert witness_aborted.wait(10)
    finally:
        release.set()
    join(stub_broker, hold.queue_name, worker)
    assert outcome["target"] == ("aborted" if expect_aborted else "released")


# -- the actor's grace ---------------------------------------------------------


#: Stands for "call abort() without abort_timeout".
UNSET = object()


@pytest.mark.parametrize(
    ("timeout", "abort_timeout", "expected"),
    [
        pytest.param(60_000, UNSET, "graceful, over 5 s left", id="actor-timeout-ms"),
        pytest.param(timedelta(minutes=1), UNSET, "graceful, over 5 s left", id="actor-timedelta"),
        pytest.param(60_000, 5_000, "graceful, at most 5 s left", id="explicit-wins"),
        pytest.param(60_000, 0, "aborted", id="explicit-zero-wins"),
        pytest.param(None, UNSET, "aborted", id="no-timeout-no-grace"),
    ],
)
def test_actor_timeout_is_the_default_grace(
    broker: dramatiq.Broker,
    queue_name: str,
    record: Record,
    start_worker: StartWorker,
    timeout: int | timedelta | None,
    abort_timeout: object,
    expected: str,
) -> None:
    """abort() without abort_timeout gives the actor's timeout as grace; an explicit one wins."""
    outcomes = Outcomes(record)
    broker.add_middleware(outcomes)

    @abortable_actor(
        broker=broker,
        queue_name=queue_name,
        max_retries=0,
        timeout=timeout,
        on_abort=record.on_abort,
    )
    def patient() -> str:
        record.started.set()
        deadline = time.monotonic() + RUN_FOR
        try:
            while time.monotonic() < deadline:
                left = abort_requested()
                # Grace left: stop on our own.  0.0 means Abort is on its way.
                if left:
                    record.left.append(left)
                    record.events.append("stopped gracefully")
                    return "stopped"
                time.sleep(0.002)
            record.events.append("ran to the end")
            return "done"
        except Abort:
            record.events.append("aborted")
            raise

    worker = start_worker(broker)
    message = patient.send()
    assert record.started.wait(10)
    if abort_timeout is UNSET:
        abort(message.message_id)
    else:
        assert isinstance(abort_timeout, int)
        abort(message.message_id, abort_timeout=abort_timeout)
    join(broker, queue_name, worker)
    if expected == "aborted":
        assert record.events == ["aborted", "on_abort", "ended: Abort"]
        assert isinstance(outcomes.exceptions[message.message_id], Abort)
    else:
        assert record.events == ["stopped gracefully", "ended normally"]
        assert record.calls == []
        (left,) = record.left
        if expected == "graceful, over 5 s left":
            assert 5_000 < left <= 60_000
        else:
            assert 0 < left <= 5_000


@pytest.mark.parametrize(
    ("timeout", "stored"),
    [(250, 250), (0, 0), (timedelta(seconds=1.5), 1500), (timedelta(0), 0)],
)
def test_timeout_is_stored_in_milliseconds(
    abortable: Abortable, timeout: int | timedelta, stored: int
) -> None:
    """``timeout`` (ms or timedelta) becomes the actor's ``abort_timeout`` option in whole ms."""

    @abortable_actor(timeout=timeout)
    def job() -> None:
        pass

    assert job.options["abort_timeout"] == stored


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (-1, ValueError),
        (timedelta(seconds=-1), ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        ("5s", TypeError),
        (True, TypeError),
    ],
)
def test_bad_timeout_is_an_error_naming_the_value(
    stub_broker: StubBroker, abortable: Abortable, bad: object, error: type[Exception]
) -> None:
    """A timeout that is not a duration of 0 ms or more is refused, naming the value."""
    with pytest.raises(error, match=rf"^timeout must .*, not {re.escape(repr(bad))}$"):
        abortable_actor(timeout=bad)  # type: ignore[call-overload]
    assert stub_broker.actors == {}


# -- on_abort ------------------------------------------------------------------


def test_on_abort_runs_once_between_the_actor_stopping_and_abort_propagating(
    broker: dramatiq.Broker, queue_name: str, record: Record, start_worker: StartWorker
) -> None:
    """on_abort gets the arguments once, in the worker thread, after the code, before the Abort."""
    outcomes = Outcomes(record)
    broker.add_middleware(outcomes)

    @abortable_actor(
        broker=broker,
        queue_name=queue_name,
        max_retries=3,
        min_backoff=1,
        max_backoff=10,
        on_abort=record.on_abort,
    )
    def convert(path: str, *, quality: int) -> None:
        record.runs += 1
        record.threads["actor"] = threading.get_ident()
        record.started.set()
        try:
            spin()
        finally:
            record.events.append("actor code ended")

    worker = start_worker(broker)
    message = convert.send_with_options(args=("in.mov",), kwargs={"quality": 3})
    assert record.started.wait(10)
    abort(message.message_id)
    abort(message.message_id)
    join(broker, queue_name, worker)
    assert record.events == ["actor code ended", "on_abort", "ended: Abort"]
    assert record.calls == [(("in.mov",), {"quality": 3})]
    assert record.threads["on_abort"] == record.threads["actor"]
    assert record.runs == 1


def test_failing_on_abort_is_logged_and_the_abort_still_ends_the_message(
    stub_broker: StubBroker,
    abortable: Abortable,
    record: Record,
    start_worker: StartWorker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception in on_abort is logged; the message still ends with Abort and is not retried."""
    caplog.set_level(logging.ERROR, logger="dramatiq_abort")
    outcomes = Outcomes(record)
    stub_broker.add_middleware(outcomes)

    def broken_handler(n: int) -> None:
        record.events.append("on_abort")
        raise ValueError(f"cannot clean up {n}")

    @abortable_actor(max_retries=3, min_backoff=1, max_backoff=10, on_abort=broken_handler)
    def work(n: int) -> None:
        record.runs += 1
        record.started.set()
        spin()

    worker = start_worker(stub_broker)
    message = work.send(5)
    assert record.started.wait(10)
    abort(message.message_id)
    join(stub_broker, work.queue_name, worker)
    assert record.events == ["on_abort", "ended: Abort"]
    assert isinstance(outcomes.exceptions[message.message_id], Abort)
    assert record.runs == 1
    assert [m.message_id for m in stub_broker.dead_letters] == [message.message_id]
    (failure,) = [r for r in caplog.records if "on_abort handler" in r.getMessage()]
    assert failure.levelno == logging.ERROR
    assert failure.exc_info is not None
    assert repr(failure.exc_info[1]) == "ValueError('cannot clean up 5')"


@pytest.mark.parametrize("mode", ["cancel", "abort"])
def test_on_abort_is_not_called_for_a_message_stopped_before_it_started(
    broker: dramatiq.Broker,
    queue_name: str,
    record: Record,
    start_worker: StartWorker,
    mode: str,
) -> None:
    """A message cancelled or aborted while still queued never runs, and on_abort is not called."""
    outcomes = Outcomes(record)
    broker.add_middleware(outcomes)

    @abortable_actor(broker=broker, queue_name=queue_name, max_retries=0, on_abort=record.on_abort)
    def job(n: int) -> None:
        record.runs += 1

    message = job.send(1)
    abort(message.message_id, mode=mode)
    worker = start_worker(broker)
    join(broker, queue_name, worker)
    assert outcomes.skipped == [message.message_id]
    assert record.runs == 0
    assert record.calls == []


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_on_abort_is_not_called_for_a_message_that_finishes(
    stub_broker: StubBroker,
    abortable: Abortable,
    record: Record,
    start_worker: StartWorker,
    kind: str,
) -> None:
    """A message that returns normally, plain or async, does not call on_abort."""
    stub_broker.add_middleware(AsyncIO())
    outcomes = Outcomes(record)
    stub_broker.add_middleware(outcomes)

    def plain(n: int) -> int:
        record.runs += 1
        return n

    async def coroutine(n: int) -> int:
        record.runs += 1
        await asyncio.sleep(0)
        return n

    actor = abortable_actor(max_retries=0, on_abort=record.on_abort)(
        plain if kind == "sync" else coroutine
    )
    worker = start_worker(stub_broker)
    message = actor.send(1)
    join(stub_broker, actor.queue_name, worker)
    assert record.runs == 1
    assert outcomes.exceptions == {message.message_id: None}
    assert record.calls == []


def test_on_abort_is_not_called_when_the_actor_handles_abort_itself(
    stub_broker: StubBroker, abortable: Abortable, record: Record, start_worker: StartWorker
) -> None:
    """An actor that catches Abort and returns normally does not call on_abort."""
    outcomes = Outcomes(record)
    stub_broker.add_middleware(outcomes)

    @abortable_actor(max_retries=0, on_abort=record.on_abort)
    def careful() -> str:
        record.started.set()
        try:
            spin()
        except Abort:
            record.events.append("caught Abort")
            return "cleaned up"
        return "done"

    worker = start_worker(stub_broker)
    message = careful.send()
    assert record.started.wait(10)
    abort(message.message_id)
    join(stub_broker, careful.queue_name, worker)
    assert record.events == ["caught Abort", "ended normally"]
    assert outcomes.exceptions == {message.message_id: None}
    assert record.calls == []


# -- async def actors -----------------------------------------------------------


@pytest.mark.parametrize("handler", ["sync", "async"])
def test_async_actor_is_aborted_and_calls_on_abort(
    broker: dramatiq.Broker,
    queue_name: str,
    record: Record,
    start_worker: StartWorker,
    handler: str,
) -> None:
    """An async actor is aborted; its on_abort, sync or async, runs once with its arguments."""
    broker.add_middleware(AsyncIO())
    outcomes = Outcomes(record)
    broker.add_middleware(outcomes)

    async def async_handler(*args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0)
        record.on_abort(*args, **kwargs)

    on_abort = record.on_abort if handler == "sync" else async_handler

    @abortable_actor(
        broker=broker,
        queue_name=queue_name,
        max_retries=3,
        min_backoff=1,
        max_backoff=10,
        on_abort=on_abort,
    )
    async def download(url: str, *, retries: int) -> None:
        record.runs += 1
        record.started.set()
        try:
            await asyncio.sleep(RUN_FOR)
        finally:
            record.events.append("actor code ended")

    worker = start_worker(broker)
    message = download.send_with_options(args=("https://example.invalid",), kwargs={"retries": 2})
    assert record.started.wait(10)
    abort(message.message_id)
    join(broker, queue_name, worker)
    assert record.events == ["actor code ended", "on_abort", "ended: Abort"]
    assert record.calls == [(("https://example.invalid",), {"retries": 2})]
    assert record.runs == 1


def test_async_on_abort_runs_when_the_abort_comes_as_the_coroutine_starts(
    stub_broker: StubBroker, abortable: Abortable, start_worker: StartWorker
) -> None:
    """Every async message aborted the moment its coroutine starts still calls on_abort once."""
    stub_broker.add_middleware(AsyncIO())
    calls: list[str] = []
    test_over = threading.Event()
    exited = threading.Semaphore(0)

    @abortable_actor(max_retries=0, on_abort=calls.append)
    async def job(message_id: str) -> None:
        # Ask for the abort from the event-loop thread as soon as the
        # coroutine runs, while the worker thread may still be scheduling it.
        abort(message_id)
        try:
            while not test_over.is_set():
                await asyncio.sleep(0.002)
        finally:
            exited.release()

    ids = []
    for _ in range(300):
        message = job.message("")
        message = message.copy(args=(message.message_id,))
        ids.append(message.message_id)
        stub_broker.enqueue(message)
    worker = start_worker(stub_broker, worker_threads=8)
    try:
        join(stub_broker, job.queue_name, worker)
    finally:
        # Coroutines that were never cancelled are still running: end them.
        test_over.set()
        for _ in ids:
            assert exited.acquire(timeout=10)
    assert len(stub_broker.dead_letters) == len(ids)
    missed = set(ids) - set(calls)
    assert not missed, f"on_abort was not called for {len(missed)} of {len(ids)} aborted messages"
    assert sorted(calls) == sorted(ids)


# -- misuse ------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["bare", "configured"])
def test_applied_to_an_existing_actor_says_how_to_fix_it(
    stub_broker: StubBroker, abortable: Abortable, form: str
) -> None:
    """Stacking abortable_actor on @dramatiq.actor raises TypeError that says to replace it."""
    decorate: Any = abortable_actor if form == "bare" else abortable_actor(timeout=1000)
    with pytest.raises(
        TypeError, match=r"use @abortable_actor\(\.\.\.\) instead of @dramatiq\.actor"
    ):

        @decorate
        @dramatiq.actor
        def stacked() -> None:
            pass


def test_missing_middleware_says_how_to_add_it(stub_broker: StubBroker) -> None:
    """Without Abortable on the broker, MiddlewareMissingError says how to add it."""
    fix = re.escape("call broker.add_middleware(Abortable(backend=...))")
    with pytest.raises(MiddlewareMissingError, match=fix):

        @abortable_actor
        def bare() -> None:
            pass

    with pytest.raises(MiddlewareMissingError, match=fix):

        @abortable_actor(timeout=1000)
        def configured() -> None:
            pass

    assert issubclass(MiddlewareMissingError, RuntimeError)
    assert stub_broker.actors == {}


def test_missing_middleware_is_checked_on_the_given_broker(abortable: Abortable) -> None:
    """The broker passed as ``broker=`` needs Abortable, even if the global broker has one."""
    bare_broker = StubBroker()
    try:
        with pytest.raises(MiddlewareMissingError, match=re.escape(repr(bare_broker))):

            @abortable_actor(broker=bare_broker)
            def job() -> None:
                pass

        assert bare_broker.actors == {}
    finally:
        bare_broker.close()


@pytest.mark.parametrize("bad", [42, "cleanup", object()])
def test_on_abort_must_be_callable(abortable: Abortable, bad: object) -> None:
    """A non-callable on_abort is a TypeError naming the value."""
    expected = f"on_abort must be a callable taking the actor's arguments, not {bad!r}"
    with pytest.raises(TypeError, match=re.escape(expected)):
        abortable_actor(on_abort=bad)  # type: ignore[call-overload]


def test_async_on_abort_needs_an_async_actor(stub_broker: StubBroker, abortable: Abortable) -> None:
    """An async on_abort on a plain actor is a TypeError that names both fixes."""

    async def handler() -> None:
        pass

    with pytest.raises(TypeError, match="give it a plain function, or make the actor async def"):

        @abortable_actor(on_abort=handler)
        def plain() -> None:
            pass

    assert stub_broker.actors == {}
