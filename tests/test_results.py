"""What aborts look like to dramatiq's Results, pipelines and group callbacks, with real workers."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.middleware import GroupCallbacks
from dramatiq.rate_limits.backends import StubBackend as StubRateLimiterBackend
from dramatiq.results import ResultBackend, ResultFailure, Results, ResultTimeout
from dramatiq.results.backends import RedisBackend as RedisResultBackend
from dramatiq.results.backends import StubBackend as StubResultBackend

from conftest import WAIT, Hold, join
from dramatiq_abort import (
    Abortable,
    AbortMode,
    AbortState,
    abort,
    abort_requested,
    abort_scope,
    backends,
)

StartWorker = Callable[..., Worker]

#: How long ``get_result`` may block, in ms.
RESULT_TIMEOUT = int(WAIT * 1000)


@dataclass
class Setup:
    """A broker with ``Results`` and ``Abortable`` added, and its result backend."""

    broker: dramatiq.Broker
    results: ResultBackend


@pytest.fixture(params=["stub", "redis"])
def setup(request: pytest.FixtureRequest) -> Setup:
    """StubBroker with in-memory backends, then RedisBroker with Redis backends."""
    broker: dramatiq.Broker
    results: ResultBackend
    if request.param == "stub":
        broker = request.getfixturevalue("stub_broker")
        events: Any = backends.StubBackend()
        results = StubResultBackend()
    else:
        broker = request.getfixturevalue("redis_broker")
        events = request.getfixturevalue("redis_backend")
        # Results under this test's namespace, in the database the
        # redis_client fixture cleans at teardown.
        results = RedisResultBackend(
            client=request.getfixturevalue("redis_client"),
            namespace=request.getfixturevalue("namespace") + "results",
            use_namespace_prefix_keys=True,
        )
    broker.add_middleware(Results(backend=results))
    broker.add_middleware(Abortable(backend=events))
    return Setup(broker=broker, results=results)


def holder(broker: dramatiq.Broker, hold: Hold) -> dramatiq.Actor[Any, Any]:
    """Declare an actor that stores its result and holds until released or aborted."""

    @dramatiq.actor(broker=broker, store_results=True, max_retries=3, min_backoff=10)
    def held(name: str) -> str:
        hold.run(name)
        return name

    return held


# -- Results -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "what"),
    [(AbortMode.CANCEL, "cancelled"), (AbortMode.ABORT, "aborted")],
)
def test_result_of_a_message_stopped_before_it_started(
    setup: Setup, start_worker: StartWorker, mode: AbortMode, what: str
) -> None:
    """A message stopped before it started has an Abort failure as its result, with the reason."""
    hold = Hold()
    held = holder(setup.broker, hold)
    message = held.send("doomed")
    handle = abort(message.message_id, mode=mode, reason="the user left")
    worker = start_worker(setup.broker)
    status = handle.wait(WAIT * 1000)
    assert status is not None
    assert status.state is AbortState.SKIPPED
    with pytest.raises(ResultFailure) as failure:
        message.get_result(backend=setup.results, block=True, timeout=RESULT_TIMEOUT)
    join(setup.broker, held.queue_name, worker)
    assert failure.value.orig_exc_type == "Abort"
    assert failure.value.orig_exc_msg == (
        f"message {message.message_id} was {what} before it started: the user left"
    )
    assert f"{what} before it started" in str(failure.value)
    assert "the user left" in str(failure.value)
    assert hold.runs["doomed"] == 0


def test_result_of_a_running_message_aborted_with_a_reason(
    setup: Setup, start_worker: StartWorker
) -> None:
    """A running message aborted with a reason has an Abort failure as its result, not retried."""
    hold = Hold()
    held = holder(setup.broker, hold)
    worker = start_worker(setup.broker)
    message = held.send("victim")
    hold.wait("started", "victim")
    handle = abort(message.message_id, reason="quota exceeded")
    hold.wait("ended", "victim")
    with pytest.raises(ResultFailure) as failure:
        message.get_result(backend=setup.results, block=True, timeout=RESULT_TIMEOUT)
    join(setup.broker, held.queue_name, worker)
    assert failure.value.orig_exc_type == "Abort"
    assert failure.value.orig_exc_msg == (
        f"message {message.message_id} was aborted: quota exceeded"
    )
    assert "was aborted" in str(failure.value)
    assert "quota exceeded" in str(failure.value)
    status = handle.wait(WAIT * 1000)
    assert status is not None
    assert (status.state, status.ended_with) == (AbortState.INTERRUPTED, "Abort")
    assert hold.outcome["victim"] == "aborted"
    assert hold.runs["victim"] == 1


def test_result_of_a_graceful_abort_is_what_the_actor_returned(
    setup: Setup, start_worker: StartWorker
) -> None:
    """An actor that returns in its grace after seeing abort_requested() stores what it returned."""
    started = threading.Event()
    seen: list[str | None] = []

    @dramatiq.actor(broker=setup.broker, store_results=True, max_retries=0)
    def polite() -> str:
        with abort_scope() as scope:
            started.set()
            deadline = time.monotonic() + WAIT
            while abort_requested() is None:
                if time.monotonic() > deadline:
                    return "ran out of time"
                threading.Event().wait(0.002)  # a slice of the actor's work
            seen.append(scope.reason)
            return "stopped early"

    worker = start_worker(setup.broker)
    message = polite.send()
    assert started.wait(WAIT)
    handle = abort(message.message_id, abort_timeout=10_000, reason="shutting down")
    result = message.get_result(backend=setup.results, block=True, timeout=RESULT_TIMEOUT)
    join(setup.broker, polite.queue_name, worker)
    assert result == "stopped early"
    assert seen == ["shutting down"]
    status = handle.wait(WAIT * 1000)
    assert status is not None
    assert (status.state, status.ended_with) == (AbortState.INTERRUPTED, "returned")


# -- pipelines -----------------------------------------------------------------


class Stages:
    """A two-stage pipeline: ``first`` holds like :class:`Hold`, ``second`` counts its runs."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self.hold = Hold()
        self.second_runs: Counter[str] = Counter()
        self.graceful = False
        hold, second_runs = self.hold, self.second_runs

        @dramatiq.actor(broker=broker, store_results=True, max_retries=3, min_backoff=10)
        def first_stage() -> str:
            if not self.graceful:
                hold.run("first")
                return "first done"
            hold.event("started", "first").set()
            try:
                deadline = time.monotonic() + WAIT
                while abort_requested() is None:
                    if time.monotonic() > deadline:
                        return "ran out of time"
                    threading.Event().wait(0.002)  # a slice of the actor's work
                return "first stopped early"
            finally:
                hold.event("ended", "first").set()

        @dramatiq.actor(broker=broker, store_results=True, max_retries=0)
        def second_stage(previous: str) -> str:
            second_runs[previous] += 1
            return f"second after {previous}"

        self.first = first_stage
        self.second = second_stage

    def pipeline(self, broker: dramatiq.Broker) -> dramatiq.pipeline:
        """The pipeline first → second, not yet run."""
        return dramatiq.pipeline([self.first.message(), self.second.message()], broker=broker)


def test_aborting_a_running_pipeline_stage_stops_the_pipeline(
    setup: Setup, start_worker: StartWorker
) -> None:
    """A pipeline stage aborted while running fails, so the next stage is never enqueued."""
    stages = Stages(setup.broker)
    worker = start_worker(setup.broker)
    pipe = stages.pipeline(setup.broker).run()
    first_id = pipe.messages[0].message_id
    stages.hold.wait("started", "first")
    handle = abort(first_id, reason="pipeline stopped")
    stages.hold.wait("ended", "first")
    join(setup.broker, stages.first.queue_name, worker)
    assert stages.hold.outcome["first"] == "aborted"
    assert sum(stages.second_runs.values()) == 0
    status = handle.wait(WAIT * 1000)
    assert status is not None
    assert (status.state, status.ended_with) == (AbortState.INTERRUPTED, "Abort")
    with pytest.raises(ResultFailure) as failure:
        pipe.messages[0].get_result(backend=setup.results, block=True, timeout=RESULT_TIMEOUT)
    assert failure.value.orig_exc_type == "Abort"
    # The pipeline's own result is its last stage's, which never ran.
    with pytest.raises(ResultTimeout):
        pipe.get_result(block=True, timeout=200)


def test_cancelling_a_pending_pipeline_stage_stops_the_pipeline(
    setup: Setup, start_worker: StartWorker
) -> None:
    """A pipeline stage cancelled before it started is skipped, so the next stage never runs."""
    stages = Stages(setup.broker)
    pipe = stages.pipeline(setup.broker).run()
    first_id = pipe.messages[0].message_id
    handle = abort(first_id, mode="cancel", reason="pipeline cancelled")
    worker = start_worker(setup.broker)
    status = handle.wait(WAIT * 1000)
    join(setup.broker, stages.first.queue_name, worker)
    assert status is not None
    assert status.state is AbortState.SKIPPED
    assert stages.hold.runs["first"] == 0
    assert sum(stages.second_runs.values()) == 0


def test_a_pipeline_stage_that_returns_during_its_grace_lets_the_pipeline_go_on(
    setup: Setup, start_worker: StartWorker
) -> None:
    """Caveat: a stage that returns normally during its grace succeeded, so the next stage runs."""
    stages = Stages(setup.broker)
    stages.graceful = True
    worker = start_worker(setup.broker)
    pipe = stages.pipeline(setup.broker).run()
    first_id = pipe.messages[0].message_id
    stages.hold.wait("started", "first")
    handle = abort(first_id, abort_timeout=10_000)
    result = pipe.get_result(block=True, timeout=RESULT_TIMEOUT)
    join(setup.broker, stages.first.queue_name, worker)
    assert result == "second after first stopped early"
    assert stages.second_runs == Counter({"first stopped early": 1})
    status = handle.wait(WAIT * 1000)
    assert status is not None
    assert (status.state, status.ended_with) == (AbortState.INTERRUPTED, "returned")


# -- group completion callbacks --------------------------------------------------


class Members:
    """A group's members (held like :class:`Hold`) and a completion callback that counts."""

    def __init__(self, broker: dramatiq.Broker) -> None:
        self.hold = Hold()
        self.callbacks = 0
        self.member = holder(broker, self.hold)

        @dramatiq.actor(broker=broker, max_retries=0)
        def completed() -> None:
            self.callbacks += 1

        self.callback = completed

    def group(self, broker: dramatiq.Broker, names: list[str]) -> dramatiq.group:
        """A group of one member per name, with the counting callback, not yet run."""
        children = [self.member.message(name) for name in names]
        grouped = dramatiq.group(children, broker=broker)
        grouped.add_completion_callback(self.callback.message())
        return grouped


@pytest.fixture
def group_broker(stub_broker: dramatiq.Broker) -> dramatiq.Broker:
    """A StubBroker with GroupCallbacks, Results and Abortable, all in memory."""
    stub_broker.add_middleware(GroupCallbacks(StubRateLimiterBackend()))
    stub_broker.add_middleware(Results(backend=StubResultBackend()))
    stub_broker.add_middleware(Abortable(backend=backends.StubBackend()))
    return stub_broker


def test_group_callback_runs_when_no_member_is_aborted(
    group_broker: dramatiq.Broker, start_worker: StartWorker
) -> None:
    """Control: with every member completing, the group's completion callback runs once."""
    members = Members(group_broker)
    members.hold.release.set()
    worker = start_worker(group_broker, worker_threads=3)
    grouped = members.group(group_broker, ["a", "b", "c"]).run()
    assert list(grouped.get_results(block=True, timeout=RESULT_TIMEOUT)) == ["a", "b", "c"]
    join(group_broker, members.member.queue_name, worker)
    assert members.callbacks == 1


def test_aborting_a_running_group_member_means_no_completion_callback(
    group_broker: dramatiq.Broker, start_worker: StartWorker
) -> None:
    """Other members complete, but one aborted while running means the callback never runs."""
    members = Members(group_broker)
    worker = start_worker(group_broker, worker_threads=3)
    grouped = members.group(group_broker, ["a", "b", "c"]).run()
    for name in ("a", "b", "c"):
        members.hold.wait("started", name)
    victim = grouped.children[1]
    handle = abort(victim.message_id, reason="one is enough")
    members.hold.wait("ended", "b")
    members.hold.release.set()
    join(group_broker, members.member.queue_name, worker)
    assert members.hold.outcome == {"a": "released", "b": "aborted", "c": "released"}
    assert members.callbacks == 0
    results = grouped.get_results(block=True, timeout=RESULT_TIMEOUT)
    assert next(results) == "a"
    with pytest.raises(ResultFailure) as failure:
        next(results)
    assert failure.value.orig_exc_type == "Abort"
    assert "one is enough" in failure.value.orig_exc_msg
    backend = group_broker.get_results_backend()
    assert grouped.children[2].get_result(backend=backend) == "c"
    status = handle.wait(WAIT * 1000)
    assert status is not None
    assert status.state is AbortState.INTERRUPTED


def test_cancelling_a_pending_group_member_means_no_completion_callback(
    group_broker: dramatiq.Broker, start_worker: StartWorker
) -> None:
    """Other members complete, but one cancelled before it started means the callback never runs."""
    members = Members(group_broker)
    members.hold.release.set()
    grouped = members.group(group_broker, ["a", "b", "c"]).run()
    handle = abort(grouped.children[1].message_id, mode="cancel", reason="not needed")
    worker = start_worker(group_broker, worker_threads=3)
    status = handle.wait(WAIT * 1000)
    join(group_broker, members.member.queue_name, worker)
    assert status is not None
    assert status.state is AbortState.SKIPPED
    assert members.hold.runs == Counter({"a": 1, "c": 1})
    assert members.callbacks == 0
    with pytest.raises(ResultFailure) as failure:
        list(grouped.get_results(block=True, timeout=RESULT_TIMEOUT))
    assert failure.value.orig_exc_type == "Abort"
    assert "cancelled before it started: not needed" in failure.value.orig_exc_msg
