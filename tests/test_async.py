"""``async def`` actors: Abort reaches the coroutine itself, with its grace, on every broker."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AsyncIO

from conftest import WAIT, Outcomes, join
from dramatiq_abort import Abort, Abortable, abort, abort_requested, abortable_actor, backends

StartWorker = Callable[..., Worker]


def _setup(broker: dramatiq.Broker) -> Outcomes:
    broker.add_middleware(AsyncIO())
    outcomes = Outcomes()
    broker.add_middleware(outcomes)
    return outcomes


@pytest.fixture
def stub(stub_broker: StubBroker) -> StubBroker:
    """A StubBroker with AsyncIO and an Abortable whose cleanup time is 300 ms."""
    stub_broker.add_middleware(Abortable(backend=backends.StubBackend(), cleanup_timeout=300))
    return stub_broker


def test_the_coroutine_catches_abort_and_its_finally_can_await(
    broker: dramatiq.Broker, queue_name: str, start_worker: StartWorker
) -> None:
    """`except Abort` in the coroutine runs, then a `finally` that awaits; it is not retried."""
    outcomes = _setup(broker)
    started = threading.Event()
    events: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=3, min_backoff=1)
    async def download() -> None:
        events.append("run")
        started.set()
        try:
            await asyncio.sleep(60)
        except Abort:
            events.append("caught Abort")
            raise
        finally:
            await asyncio.sleep(0.01)
            events.append("finally awaited")

    worker = start_worker(broker)
    message = download.send()
    assert started.wait(WAIT)
    abort(message.message_id)
    join(broker, queue_name, worker)
    assert events == ["run", "caught Abort", "finally awaited"]
    assert outcomes.by_id[message.message_id] == ["Abort"]


def test_the_grace_is_the_one_asked_for_and_abort_requested_counts_it_down(
    stub: StubBroker, start_worker: StartWorker
) -> None:
    """With a 1.2 s grace the coroutine reads the countdown and gets Abort after it, not at 1 s."""
    outcomes = _setup(stub)
    started = threading.Event()
    readings: list[float | None] = []
    aborted_at: list[float] = []

    @dramatiq.actor(broker=stub, max_retries=0)
    async def export() -> None:
        started.set()
        try:
            while True:
                readings.append(abort_requested())
                await asyncio.sleep(0.005)
        except Abort:
            aborted_at.append(time.monotonic())
            raise

    worker = start_worker(stub)
    message = export.send()
    assert started.wait(WAIT)
    returned = time.monotonic()
    abort(message.message_id, abort_timeout=1200)
    join(stub, export.queue_name, worker)
    assert outcomes.by_id[message.message_id] == ["Abort"]
    assert aborted_at[0] - returned >= 1.2
    counted = [left for left in readings if left is not None]
    assert readings[0] is None and counted
    assert counted[0] <= 1200 and counted == sorted(counted, reverse=True)


def test_the_actors_own_grace_applies_to_a_coroutine(
    stub: StubBroker, start_worker: StartWorker
) -> None:
    """@abortable_actor(timeout=...) on an async def gives its coroutine that grace."""
    outcomes = _setup(stub)
    started = threading.Event()
    aborted_at: list[float] = []

    @abortable_actor(timeout=700, max_retries=0)
    async def report() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except Abort:
            aborted_at.append(time.monotonic())
            raise

    worker = start_worker(stub)
    message = report.send()
    assert started.wait(WAIT)
    returned = time.monotonic()
    abort(message.message_id)
    join(stub, report.queue_name, worker)
    assert outcomes.by_id[message.message_id] == ["Abort"]
    assert aborted_at[0] - returned >= 0.7


def test_a_coroutine_that_ignores_abort_is_cancelled_after_the_cleanup_time(
    stub: StubBroker, start_worker: StartWorker
) -> None:
    """Abort swallowed and the coroutine still waiting: cancelled after cleanup_timeout, aborted."""
    outcomes = _setup(stub)
    started = threading.Event()
    events: list[str] = []

    @dramatiq.actor(broker=stub, max_retries=3, min_backoff=1)
    async def stubborn() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except Abort:
            events.append("caught Abort, carrying on")
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                events.append("cancelled")
                raise

    worker = start_worker(stub)
    message = stubborn.send()
    assert started.wait(WAIT)
    abort(message.message_id)
    join(stub, stubborn.queue_name, worker)
    assert events == ["caught Abort, carrying on", "cancelled"]
    assert outcomes.by_id[message.message_id] == ["Abort"]
    assert [m.message_id for m in stub.dead_letters] == [message.message_id]


def test_a_coroutine_that_handles_abort_and_returns_completes(
    stub: StubBroker, start_worker: StartWorker
) -> None:
    """A coroutine may catch Abort and return: the message then ends normally, as for threads."""
    outcomes = _setup(stub)
    started = threading.Event()

    @dramatiq.actor(broker=stub, max_retries=0)
    async def partial() -> str:
        started.set()
        try:
            await asyncio.sleep(60)
        except Abort:
            await asyncio.sleep(0)
            return "partial result"
        return "full result"

    worker = start_worker(stub)
    message = partial.send()
    assert started.wait(WAIT)
    abort(message.message_id)
    join(stub, partial.queue_name, worker)
    assert outcomes.by_id[message.message_id] == ["done"]


def test_one_of_a_hundred_coroutines_on_one_loop_is_aborted(
    stub: StubBroker, start_worker: StartWorker
) -> None:
    """100 async messages run at once on the one event loop; aborting one leaves 99 to finish."""
    outcomes = _setup(stub)
    running = threading.Semaphore(0)
    release = threading.Event()

    @dramatiq.actor(broker=stub, max_retries=0)
    async def task(index: int) -> None:
        running.release()
        while not release.is_set():
            await asyncio.sleep(0.005)

    worker = start_worker(stub, worker_threads=100)
    messages = [task.send(index) for index in range(100)]
    for _ in messages:
        assert running.acquire(timeout=WAIT)
    victim = messages[37]
    abort(victim.message_id)
    outcomes.wait(1)
    assert outcomes.by_id == {victim.message_id: ["Abort"]}
    release.set()
    join(stub, task.queue_name, worker)
    ended = {m.message_id: outcomes.by_id[m.message_id] for m in messages}
    assert ended.pop(victim.message_id) == ["Abort"]
    assert set(map(tuple, ended.values())) == {("done",)}


def test_a_shielded_async_block_finishes_before_abort(
    stub: StubBroker, start_worker: StartWorker
) -> None:
    """Inside `async with abort_scope(shield=True)` the coroutine is not interrupted."""
    from dramatiq_abort import abort_scope

    outcomes = _setup(stub)
    inside = threading.Event()
    events: list[str] = []

    @dramatiq.actor(broker=stub, max_retries=0)
    async def commit() -> None:
        try:
            async with abort_scope(shield=True):
                inside.set()
                await asyncio.sleep(0.2)
                events.append("committed")
            events.append("after the shield")
        except Abort:
            events.append("aborted")
            raise

    worker = start_worker(stub)
    message = commit.send()
    assert inside.wait(WAIT)
    abort(message.message_id)
    join(stub, commit.queue_name, worker)
    assert events == ["committed", "aborted"]
    assert outcomes.by_id[message.message_id] == ["Abort"]


def test_an_async_actor_still_runs_outside_a_worker(stub: StubBroker) -> None:
    """Called directly (no worker message), the actor runs through dramatiq's own wrapper."""
    stub.add_middleware(AsyncIO())
    stub.emit_before("worker_boot", None)  # AsyncIO starts its event loop thread here

    @dramatiq.actor(broker=stub)
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    try:
        assert add(2, 3) == 5
    finally:
        stub.emit_after("worker_shutdown", None)


def test_cleanup_timeout_is_checked() -> None:
    """A bad cleanup_timeout names the value and what is expected."""
    with pytest.raises(ValueError, match="cleanup_timeout must be 0 or more"):
        Abortable(backend=backends.StubBackend(), cleanup_timeout=-1)
    with pytest.raises(TypeError, match="cleanup_timeout must be a number"):
        Abortable(backend=backends.StubBackend(), cleanup_timeout="5s")  # type: ignore[arg-type]


def test_awaiting_gather_the_children_are_cancelled_and_the_coroutine_sees_abort(
    stub: StubBroker, start_worker: StartWorker
) -> None:
    """The awaited future is cancelled (its tasks see CancelledError); the coroutine sees Abort."""
    outcomes = _setup(stub)
    children = threading.Semaphore(0)
    seen: list[str] = []

    async def child(name: str) -> None:
        children.release()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append(f"{name}: CancelledError")
            raise

    @dramatiq.actor(broker=stub, max_retries=0)
    async def fan_out() -> None:
        try:
            await asyncio.gather(child("a"), child("b"))
        except Abort:
            seen.append("parent: Abort")
            raise

    worker = start_worker(stub)
    message = fan_out.send()
    assert children.acquire(timeout=WAIT) and children.acquire(timeout=WAIT)
    abort(message.message_id)
    join(stub, fan_out.queue_name, worker)
    assert sorted(seen[:2]) == ["a: CancelledError", "b: CancelledError"]
    assert seen[2:] == ["parent: Abort"]
    assert outcomes.by_id[message.message_id] == ["Abort"]


def test_a_coroutine_busy_without_awaiting_gets_abort_at_its_next_await(
    stub: StubBroker, start_worker: StartWorker
) -> None:
    """An abort sent while the coroutine runs plain code lands at the next await, not before."""
    outcomes = _setup(stub)
    busy = threading.Event()
    release = threading.Event()
    seen: list[str] = []

    @dramatiq.actor(broker=stub, max_retries=0)
    async def crunch() -> None:
        await asyncio.sleep(0)
        busy.set()
        assert release.wait(WAIT)  # plain code: the event loop is blocked meanwhile
        seen.append("plain code finished")
        try:
            await asyncio.sleep(60)
        except Abort:
            seen.append("Abort at the next await")
            raise

    worker = start_worker(stub)
    message = crunch.send()
    assert busy.wait(WAIT)
    abort(message.message_id)
    release.set()
    join(stub, crunch.queue_name, worker)
    assert seen == ["plain code finished", "Abort at the next await"]
    assert outcomes.by_id[message.message_id] == ["Abort"]
