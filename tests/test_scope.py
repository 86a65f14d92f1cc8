"""``abort_scope()``: checkpoints, cleanup callbacks, shields and nesting, inside real workers.

The end-to-end tests that matter on every broker take the parametrised
``broker`` fixture (stub, Redis, RabbitMQ); the rest run on the StubBroker
or, for the inert scope outside a worker, as plain calls.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AsyncIO

from conftest import join
from dramatiq_abort import (
    Abort,
    Abortable,
    AbortScope,
    abort,
    abort_scope,
    abortable_actor,
    backends,
    current_scope,
)

#: Upper bound on how long a test actor waits for something that should happen.
RUN_FOR = 20.0

StartWorker = Callable[..., Worker]


def wait_until(predicate: Callable[[], bool]) -> bool:
    """Poll ``predicate`` from actor code until it holds; ``False`` after RUN_FOR seconds."""
    deadline = time.monotonic() + RUN_FOR
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def spin() -> None:
    """Keep the actor busy until Abort lands, for at most RUN_FOR seconds."""
    deadline = time.monotonic() + RUN_FOR
    while time.monotonic() < deadline:
        time.sleep(0.002)


@pytest.fixture
def abortable(stub_broker: StubBroker) -> Abortable:
    """An Abortable on the global stub broker."""
    middleware = Abortable(backend=backends.StubBackend())
    stub_broker.add_middleware(middleware)
    return middleware


# -- inside a worker, on every broker ------------------------------------------


def test_checkpoint_raises_at_once_and_runs_callbacks_last_first(
    broker: dramatiq.Broker, queue_name: str, start_worker: StartWorker
) -> None:
    """check() raises Abort with grace left; callbacks then run last first, before on_abort."""
    events: list[str] = []
    seen: dict[str, Any] = {}
    waiting = threading.Event()

    @abortable_actor(
        broker=broker,
        queue_name=queue_name,
        max_retries=0,
        on_abort=lambda: events.append("on_abort"),
    )
    def export() -> None:
        try:
            with abort_scope() as scope:
                seen["scope"] = scope
                seen["before"] = (scope.requested, scope.remaining)
                scope.check()  # nothing requested yet: a no-op
                scope.callback(events.append, "remove partial file")
                scope.callback(events.append, "release lock")
                scope.callback(lambda *, key: events.append(f"forget {key}"), key="job-1")
                waiting.set()
                if not wait_until(lambda: scope.requested):
                    events.append("no request seen")
                    return
                seen["after"] = (scope.requested, scope.remaining, repr(scope))
                events.append("checkpoint")
                scope.check()
                events.append("after the checkpoint")
        except Abort:
            events.append("Abort propagated")
            raise

    worker = start_worker(broker)
    message = export.send()
    assert waiting.wait(10)
    abort(message.message_id, abort_timeout=60_000)
    join(broker, queue_name, worker)
    assert events == [
        "checkpoint",
        "forget job-1",
        "release lock",
        "remove partial file",
        "Abort propagated",
        "on_abort",
    ]
    assert isinstance(seen["scope"], AbortScope)
    assert seen["scope"].message_id == message.message_id
    assert seen["before"] == (False, None)
    requested, remaining, text = seen["after"]
    assert requested is True
    assert 5_000 < remaining <= 60_000
    assert f"message={message.message_id!r}" in text
    assert "requested=True" in text


def test_shield_holds_a_due_abort_until_the_block_exits(
    broker: dramatiq.Broker, queue_name: str, start_worker: StartWorker
) -> None:
    """An abort with no grace requested inside a shield lets every step run, then raises at exit."""
    events: list[str] = []
    remaining: list[float | None] = []
    in_shield = threading.Event()

    @abortable_actor(broker=broker, queue_name=queue_name, max_retries=0)
    def commit() -> None:
        try:
            with abort_scope(shield=True) as scope:
                in_shield.set()
                if not wait_until(lambda: scope.requested):
                    events.append("no request seen")
                    return
                for step in range(5):
                    remaining.append(scope.remaining)
                    events.append(f"step {step}")
                    # Room for a stray Abort to land, were it not held back.
                    time.sleep(0.01)
                events.append("critical section done")
            events.append("after the block")
        except Abort:
            events.append("Abort at exit")
            raise

    worker = start_worker(broker)
    message = commit.send()
    assert in_shield.wait(10)
    abort(message.message_id, abort_timeout=0)
    join(broker, queue_name, worker)
    assert events == [*(f"step {n}" for n in range(5)), "critical section done", "Abort at exit"]
    # The abort was due during every step.
    assert remaining == [0.0] * 5


# -- inside a worker, on the StubBroker -----------------------------------------


@pytest.mark.parametrize("leave", ["normally", "by an exception"])
def test_callbacks_run_only_when_the_block_is_left_by_an_abort(
    stub_broker: StubBroker, abortable: Abortable, start_worker: StartWorker, leave: str
) -> None:
    """Callbacks do not run when the block ends normally or by another exception, request or not."""
    events: list[str] = []
    waiting = threading.Event()

    @abortable_actor(max_retries=0)
    def tidy() -> None:
        try:
            with abort_scope() as scope:
                scope.callback(events.append, "callback")
                waiting.set()
                if not wait_until(lambda: scope.requested):
                    events.append("no request seen")
                if leave == "by an exception":
                    raise ValueError("not an abort")
        except ValueError:
            events.append("ValueError")
        events.append("returned")

    worker = start_worker(stub_broker)
    message = tidy.send()
    assert waiting.wait(10)
    abort(message.message_id, abort_timeout=60_000)
    join(stub_broker, tidy.queue_name, worker)
    expected = ["returned"] if leave == "normally" else ["ValueError", "returned"]
    assert events == expected
    assert stub_broker.dead_letters == []


def test_failing_callback_is_logged_and_the_others_still_run(
    stub_broker: StubBroker,
    abortable: Abortable,
    start_worker: StartWorker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A callback that raises is logged; the callbacks registered before it still run."""
    caplog.set_level(logging.ERROR, logger="dramatiq_abort")
    events: list[str] = []
    started = threading.Event()

    def broken() -> None:
        raise ValueError("cannot tidy up")

    @abortable_actor(max_retries=0)
    def job() -> None:
        try:
            with abort_scope() as scope:
                scope.callback(events.append, "first")
                scope.callback(broken)
                scope.callback(events.append, "last")
                started.set()
                spin()
                events.append("ran to the end")
        except Abort:
            events.append("Abort propagated")
            raise

    worker = start_worker(stub_broker)
    message = job.send()
    assert started.wait(10)
    abort(message.message_id)
    join(stub_broker, job.queue_name, worker)
    assert events == ["last", "first", "Abort propagated"]
    assert [m.message_id for m in stub_broker.dead_letters] == [message.message_id]
    (failure,) = [r for r in caplog.records if "cleanup callback" in r.getMessage()]
    assert failure.levelno == logging.ERROR
    assert failure.exc_info is not None
    assert repr(failure.exc_info[1]) == "ValueError('cannot tidy up')"


def test_nested_scopes_run_both_callbacks_inner_first(
    stub_broker: StubBroker, abortable: Abortable, start_worker: StartWorker
) -> None:
    """A shield inside a scope: the held Abort runs the inner callbacks, then the outer ones."""
    events: list[str] = []
    scopes: dict[str, Any] = {}
    in_shield = threading.Event()

    @abortable_actor(max_retries=0)
    def nest() -> None:
        try:
            with abort_scope() as outer:
                outer.callback(events.append, "outer callback")
                with abort_scope() as passing:
                    scopes["passing"] = current_scope() is passing
                scopes["outer after passing"] = current_scope() is outer
                with abort_scope(shield=True) as inner:
                    inner.callback(events.append, "inner callback")
                    scopes["inner"] = current_scope() is inner
                    in_shield.set()
                    if not wait_until(lambda: inner.requested):
                        events.append("no request seen")
                    events.append("critical section done")
                events.append("after the shield")
        except Abort:
            scopes["after Abort"] = current_scope()
            events.append("Abort propagated")
            raise

    worker = start_worker(stub_broker)
    message = nest.send()
    assert in_shield.wait(10)
    abort(message.message_id, abort_timeout=0)
    join(stub_broker, nest.queue_name, worker)
    assert events == [
        "critical section done",
        "inner callback",
        "outer callback",
        "Abort propagated",
    ]
    assert scopes == {
        "passing": True,
        "outer after passing": True,
        "inner": True,
        "after Abort": None,
    }


def test_async_scope_sees_the_request_and_check_raises(
    stub_broker: StubBroker, abortable: Abortable, start_worker: StartWorker
) -> None:
    """In an async actor, ``async with abort_scope()`` sees the request and check() raises Abort."""
    stub_broker.add_middleware(AsyncIO())
    events: list[str] = []
    seen: dict[str, Any] = {}
    waiting = threading.Event()

    @abortable_actor(max_retries=0, on_abort=lambda: events.append("on_abort"))
    async def poll() -> None:
        try:
            async with abort_scope() as scope:
                seen["current inside"] = current_scope() is scope
                seen["before"] = (scope.requested, scope.remaining)
                scope.check()  # nothing requested yet: a no-op
                scope.callback(events.append, "callback")
                waiting.set()
                deadline = time.monotonic() + RUN_FOR
                while not scope.requested and time.monotonic() < deadline:
                    await asyncio.sleep(0.002)
                seen["after"] = (scope.requested, scope.remaining, scope.message_id)
                events.append("checkpoint")
                scope.check()
                events.append("after the checkpoint")
        except Abort:
            seen["current after"] = current_scope()
            events.append("Abort propagated")
            raise

    worker = start_worker(stub_broker)
    message = poll.send()
    assert waiting.wait(10)
    abort(message.message_id, abort_timeout=60_000)
    join(stub_broker, poll.queue_name, worker)
    assert events == ["checkpoint", "callback", "Abort propagated", "on_abort"]
    assert seen["current inside"] is True
    assert seen["before"] == (False, None)
    requested, remaining, message_id = seen["after"]
    assert requested is True
    assert 5_000 < remaining <= 60_000
    assert message_id == message.message_id
    assert seen["current after"] is None


def test_async_shield_holds_a_due_abort_until_the_block_exits(
    stub_broker: StubBroker, abortable: Abortable, start_worker: StartWorker
) -> None:
    """In an async actor, a shield lets every step run although the abort is due, then raises."""
    stub_broker.add_middleware(AsyncIO())
    events: list[str] = []
    remaining: list[float | None] = []
    in_shield = threading.Event()

    @abortable_actor(max_retries=0)
    async def commit() -> None:
        try:
            async with abort_scope(shield=True) as scope:
                in_shield.set()
                deadline = time.monotonic() + RUN_FOR
                while not scope.requested and time.monotonic() < deadline:
                    await asyncio.sleep(0.002)
                for step in range(5):
                    remaining.append(scope.remaining)
                    events.append(f"step {step}")
                    await asyncio.sleep(0.01)  # where a cancellation would land
                events.append("critical section done")
            events.append("after the block")
        except Abort:
            events.append("Abort at exit")
            raise

    worker = start_worker(stub_broker)
    message = commit.send()
    assert in_shield.wait(10)
    abort(message.message_id, abort_timeout=0)
    join(stub_broker, commit.queue_name, worker)
    assert events == [*(f"step {n}" for n in range(5)), "critical section done", "Abort at exit"]
    assert remaining == [0.0] * 5


def test_async_scope_callbacks_run_when_an_abort_reaches_the_coroutine(
    stub_broker: StubBroker, abortable: Abortable, start_worker: StartWorker
) -> None:
    """In an async actor, Abort reaches the coroutine's await and runs the scope's callbacks."""
    stub_broker.add_middleware(AsyncIO())
    events: list[str] = []
    waiting = threading.Event()

    @abortable_actor(max_retries=0)
    async def fetch() -> None:
        try:
            async with abort_scope() as scope:
                scope.callback(events.append, "remove partial download")
                waiting.set()
                await asyncio.sleep(RUN_FOR)
        except BaseException as exc:
            events.append(f"{type(exc).__name__} propagated")
            raise

    worker = start_worker(stub_broker)
    message = fetch.send()
    assert waiting.wait(10)
    abort(message.message_id)
    join(stub_broker, fetch.queue_name, worker)
    assert [m.message_id for m in stub_broker.dead_letters] == [message.message_id]
    assert events == ["remove partial download", "Abort propagated"]


@pytest.mark.threads_only(
    reason="its actor loops without yielding: under gevent it holds the process until it ends"
)
def test_a_scope_cut_short_by_abort_does_not_leak_into_later_messages(
    stub_broker: StubBroker, abortable: Abortable, start_worker: StartWorker
) -> None:
    """current_scope() is None when a message starts, even after aborts landed in scope code."""
    seen: list[AbortScope | None] = []
    started = threading.Event()

    @abortable_actor(max_retries=0)
    def churn() -> None:
        seen.append(current_scope())
        started.set()
        deadline = time.monotonic() + RUN_FOR
        while time.monotonic() < deadline:
            # Mostly scope code: the Abort often lands inside it.
            with abort_scope():
                pass

    worker = start_worker(stub_broker, worker_threads=1)
    for _ in range(60):
        started.clear()
        message = churn.send()
        assert started.wait(10)
        abort(message.message_id)
        join(stub_broker, churn.queue_name, worker)
    stale = [scope for scope in seen if scope is not None]
    assert not stale, f"{len(stale)} of {len(seen)} messages started inside {stale[0]!r}"


# -- outside a worker ---------------------------------------------------------------


@pytest.mark.parametrize("shield", [False, True])
def test_scope_outside_a_worker_is_inert(shield: bool) -> None:
    """In a plain call a scope never reports a request and check() does nothing."""
    with abort_scope(shield=shield) as scope:
        assert scope.requested is False
        assert scope.remaining is None
        assert scope.message_id is None
        assert scope.shield is shield
        scope.check()
        reached = True
    assert reached


def test_current_scope_is_the_innermost_and_restored_on_exit() -> None:
    """current_scope() follows nesting and is restored on normal and exceptional exit."""
    assert current_scope() is None
    with abort_scope() as outer:
        assert current_scope() is outer
        with abort_scope(shield=True) as inner:
            assert current_scope() is inner
        assert current_scope() is outer
        with pytest.raises(ValueError), abort_scope():
            raise ValueError("leave by an exception")
        assert current_scope() is outer
    assert current_scope() is None


def test_repr_is_informative() -> None:
    """The repr shows the message, the shield flag and the request state."""
    assert repr(abort_scope(shield=True)) == (
        "<AbortScope message=None shield=True requested=False remaining=None reason=None>"
    )
    with abort_scope() as scope:
        assert repr(scope) == (
            "<AbortScope message=None shield=False requested=False remaining=None reason=None>"
        )


def test_reusing_an_active_scope_raises() -> None:
    """Entering a scope that is already active is a RuntimeError; the active one is unharmed."""
    scope = abort_scope()
    with scope:
        with pytest.raises(RuntimeError, match="already active; make a new abort_scope"), scope:
            pass
        assert current_scope() is scope
    assert current_scope() is None


def test_callbacks_run_when_abort_leaves_a_plain_call() -> None:
    """Raising Abort in a scope in a plain call, as a unit test might, runs the callbacks."""
    events: list[str] = []
    with pytest.raises(Abort), abort_scope() as scope:
        scope.callback(events.append, "first")
        scope.callback(events.append, "second")
        raise Abort()
    assert events == ["second", "first"]
    with abort_scope() as scope:
        scope.callback(events.append, "not run")
    assert events == ["second", "first"]


def test_async_with_outside_a_worker_is_inert() -> None:
    """``async with abort_scope()`` in a plain coroutine gives an inert scope."""

    async def main() -> tuple[bool, float | None, bool]:
        async with abort_scope() as scope:
            scope.check()
            return scope.requested, scope.remaining, current_scope() is scope

    assert asyncio.run(main()) == (False, None, True)
    assert current_scope() is None


@pytest.mark.parametrize("bad", [None, 42, "cleanup"])
def test_callback_needs_a_callable(bad: object) -> None:
    """callback() with something not callable is a TypeError naming it."""
    with abort_scope() as scope, pytest.raises(TypeError, match=re.escape(f"not {bad!r}")):
        scope.callback(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_shield_must_be_a_bool(bad: object) -> None:
    """abort_scope(shield=...) takes True or False only, and names anything else."""
    with pytest.raises(TypeError, match=re.escape(f"shield must be True or False, not {bad!r}")):
        abort_scope(shield=bad)  # type: ignore[arg-type]
