"""Many at once: bulk aborts, messages, groups, pipelines and delayed messages.

End to end on every broker with real workers, and on a throwaway Redis
server where the test counts the commands a call sends.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker

from conftest import WAIT, Hold, PlainBackend, RedisServer, join
from dramatiq_abort import (
    Abortable,
    AbortBatch,
    AbortHandle,
    AbortState,
    Event,
    TrackingUnavailableError,
    abort,
    abort_actor,
    abort_many,
    abort_requested,
    abort_status,
    backends,
)

StartWorker = Callable[..., Worker]


def holder(broker: dramatiq.Broker, queue_name: str, hold: Hold, **options: Any) -> Any:
    """An actor that holds (see :class:`Hold`) under the label it is sent."""

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0, **options)
    def held(label: str) -> str:
        hold.run(label)
        return label

    return held


def test_abort_many_ids_is_one_script_call(redis_server: RedisServer) -> None:
    """abort_many() of 200 ids sends one script call (and its PUBLISH), and records each."""
    client = redis.Redis(port=redis_server.port)
    backend = backends.RedisBackend(client=client, namespace="many:")
    middleware = Abortable(backend=backend)
    middleware.abort_many([f"warm-up-{i}" for i in range(20)])  # loads the bulk script
    before = client.info("commandstats")
    batch = middleware.abort_many([f"m{i}" for i in range(200)], reason="bulk")
    after = client.info("commandstats")
    calls = after["cmdstat_evalsha"]["calls"] - before["cmdstat_evalsha"]["calls"]
    published = after["cmdstat_publish"]["calls"] - before["cmdstat_publish"]["calls"]
    assert (calls, published) == (1, 1)
    assert isinstance(batch, AbortBatch) and len(batch) == 200
    assert batch.message_ids == [f"m{i}" for i in range(200)]
    statuses = batch.statuses()
    assert all(s is not None and s.state is AbortState.REQUESTED for s in statuses)
    assert {s.reason for s in statuses if s is not None} == {"bulk"}
    client.close()


def test_duplicates_are_aborted_once(stub_broker: dramatiq.Broker) -> None:
    """The same message twice in one call is one request and one handle."""
    stub_broker.add_middleware(Abortable(backend=backends.StubBackend()))
    batch = abort_many(["a", "b", "a"])
    assert batch.message_ids == ["a", "b"]


@pytest.mark.parametrize(
    ("targets", "error", "match"),
    [
        ([None], TypeError, "expected a message id, a dramatiq Message"),
        ([["nested"]], TypeError, "may hold ids, messages, groups and pipelines"),
        ("one-id", TypeError, "not the string 'one-id'"),
        ([""], ValueError, "non-empty string"),
    ],
)
def test_bad_targets_are_refused_before_anything_is_sent(
    stub_broker: dramatiq.Broker, targets: Any, error: type[Exception], match: str
) -> None:
    """abort_many() names what it cannot abort, and records nothing."""
    backend = backends.StubBackend()
    stub_broker.add_middleware(Abortable(backend=backend))
    with pytest.raises(error, match=match):
        abort_many(targets)
    assert len(backend) == 0


def test_abort_of_a_list_points_to_abort_many(stub_broker: dramatiq.Broker) -> None:
    """abort() takes one target; a list is a TypeError that names abort_many()."""
    stub_broker.add_middleware(Abortable(backend=backends.StubBackend()))
    with pytest.raises(TypeError, match="abort_many"):
        abort(["a", "b"])  # type: ignore[call-overload]


def test_messages_are_accepted_wherever_ids_are(
    broker: dramatiq.Broker, queue_name: str, start_worker: StartWorker
) -> None:
    """abort(), abort_status() and abort_requested() take the Message that send() returned."""
    hold = Hold()
    seen: list[float | None] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def watched(label: str) -> None:
        hold.event("started", label).set()
        deadline = time.monotonic() + WAIT
        while (left := abort_requested(message)) is None and time.monotonic() < deadline:
            time.sleep(0.002)
        seen.append(left)

    start_worker(broker)
    message = watched.send("m")
    hold.wait("started", "m")
    handle = abort(message, abort_timeout=100)
    assert isinstance(handle, AbortHandle) and handle.message_id == message.message_id
    status = handle.wait(WAIT * 1000)
    assert status is not None and status.final
    assert abort_status(message) == status
    assert seen and seen[0] is not None


def test_aborting_a_group_stops_every_member(
    broker: dramatiq.Broker, queue_name: str, start_worker: StartWorker
) -> None:
    """abort(group) in one call: running members are interrupted, pending ones skipped."""
    hold = Hold()
    held = holder(broker, queue_name, hold)
    members = dramatiq.group([held.message(f"m{i}") for i in range(6)], broker=broker).run()
    worker = start_worker(broker, worker_threads=2)
    running = []
    deadline = time.monotonic() + WAIT
    while len(running) < 2 and time.monotonic() < deadline:
        running = [f"m{i}" for i in range(6) if hold.event("started", f"m{i}").is_set()]
        time.sleep(0.002)  # two of six start; which two is the worker's choice
    batch = abort(members, reason="upload cancelled")
    assert isinstance(batch, AbortBatch) and len(batch) == 6
    statuses = batch.wait(WAIT * 1000)
    join(broker, queue_name, worker)
    states = Counter(s.state for s in statuses if s is not None)
    assert states == Counter({AbortState.INTERRUPTED: 2, AbortState.SKIPPED: 4})
    assert sum(hold.runs.values()) == 2
    assert {hold.outcome[label] for label in running} == {"aborted"}


def test_aborting_a_pipeline_stops_it_for_good(
    broker: dramatiq.Broker, queue_name: str, start_worker: StartWorker
) -> None:
    """The running first stage is interrupted and no later stage ever starts, enqueued or not."""
    hold = Hold()
    held = holder(broker, queue_name, hold)
    later: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def after(*args: Any) -> None:
        later.append(repr(args))

    pipe = dramatiq.pipeline(
        [held.message("first"), after.message(), after.message()], broker=broker
    ).run()
    worker = start_worker(broker)
    hold.wait("started", "first")
    batch = abort(pipe)
    assert len(batch) == 3
    statuses = batch.wait(WAIT * 1000)
    join(broker, queue_name, worker)
    assert statuses[0] is not None and statuses[0].state is AbortState.INTERRUPTED
    assert later == []


def test_a_pipeline_stage_that_returns_in_its_grace_hands_over_to_a_skipped_stage(
    broker: dramatiq.Broker, queue_name: str, start_worker: StartWorker
) -> None:
    """A graceful abort: the stage returns in its grace, the next stage is enqueued and skipped."""
    hold = Hold()
    later: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def polite() -> str:
        hold.event("started", "polite").set()
        deadline = time.monotonic() + WAIT
        while abort_requested() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        return "stopped early"

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def after(value: str) -> None:
        later.append(value)

    pipe = dramatiq.pipeline([polite.message(), after.message()], broker=broker).run()
    worker = start_worker(broker)
    hold.wait("started", "polite")
    batch = abort(pipe, abort_timeout=10_000)
    first, second = batch.wait(WAIT * 1000)
    join(broker, queue_name, worker)
    assert first is not None and (first.state, first.ended_with) == (
        AbortState.INTERRUPTED,
        "returned",
    )
    assert second is not None and second.state is AbortState.SKIPPED
    assert later == []


def test_a_delayed_message_is_cancelled_however_far_its_eta(
    broker: dramatiq.Broker, queue_name: str, start_worker: StartWorker
) -> None:
    """Given the Message, the request outlives a TTL shorter than the delay: it is skipped."""
    ran: list[str] = []
    started = threading.Event()

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def reminder(label: str) -> None:
        ran.append(label)
        started.set()

    delayed = reminder.send_with_options(args=("delayed",), delay=1500)
    handle = abort(delayed, mode="cancel", abort_ttl=200)
    start_worker(broker)
    status = handle.wait(WAIT * 1000)
    assert status is not None and status.state is AbortState.SKIPPED
    assert status.expires_at is not None and status.requested_at is not None
    assert (status.expires_at - status.requested_at).total_seconds() >= 1.5
    control = reminder.send("control")  # the worker runs others: the skip was the request
    assert started.wait(WAIT)
    assert ran == ["control"]
    assert abort_status(control) is None


def test_a_bare_id_keeps_the_reference_ttl(
    broker: dramatiq.Broker, queue_name: str, start_worker: StartWorker
) -> None:
    """With only the id, abort_ttl is the request's life, as in the reference API."""
    ran = threading.Event()

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0)
    def reminder() -> None:
        ran.set()

    delayed = reminder.send_with_options(delay=1500)
    handle = abort(delayed.message_id, mode="cancel", abort_ttl=200)
    status = handle.wait(WAIT * 1000)  # nobody holds the message yet: it expires
    assert status is not None and status.state is AbortState.EXPIRED
    start_worker(broker)
    assert ran.wait(WAIT)


def flaky(broker: dramatiq.Broker, queue_name: str, **options: Any) -> tuple[Any, Hold]:
    """An actor whose first attempt fails, retried once after 1.5 s; ``hold`` counts its runs."""
    hold = Hold()

    @dramatiq.actor(
        broker=broker,
        queue_name=queue_name,
        max_retries=1,
        min_backoff=1500,
        max_backoff=1500,
        **options,
    )
    def flaky_job() -> None:
        hold.runs["flaky"] += 1
        hold.event("ended", "flaky").set()
        raise RuntimeError("the first attempt fails")

    return flaky_job, hold


def test_a_retry_waiting_in_its_backoff_is_cancelled_by_id(
    broker: dramatiq.Broker, queue_name: str, start_worker: StartWorker
) -> None:
    """A worker holding a retry in its delay queue keeps a request for it alive past its TTL.

    It is not 'too late' either: the failed attempt may come back, and does.
    """
    actor, hold = flaky(broker, queue_name)
    worker = start_worker(broker)
    message = actor.send()
    hold.wait("ended", "flaky")
    status = abort(message.message_id, mode="cancel", abort_ttl=300).wait(WAIT * 1000)
    assert status is not None and status.state is AbortState.SKIPPED
    join(broker, queue_name, worker)
    assert hold.runs == Counter({"flaky": 1})


def test_abort_actor_stops_every_outstanding_message_of_one_actor(
    broker: dramatiq.Broker, queue_name: str, start_worker: StartWorker
) -> None:
    """Dry run counts them; then running ones are interrupted, pending and delayed ones skipped."""
    hold = Hold()
    held = holder(broker, queue_name, hold, track_messages=True)
    ran: list[str] = []

    @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0, track_messages=True)
    def bystander(label: str) -> None:
        ran.append(label)

    for i in range(6):
        held.send(f"m{i}")
    held.send_with_options(args=("delayed",), delay=1500)
    worker = start_worker(broker, worker_threads=2)
    hold.wait("started", "m0")
    hold.wait("started", "m1")
    dry = abort_actor(held, dry_run=True)
    assert (len(dry), dry.sent) == (7, False)
    assert dry[0].status() is None  # a dry run requests nothing
    batch = abort_actor(held, reason="bad deploy")
    assert batch.sent and sorted(batch.message_ids) == sorted(dry.message_ids)
    statuses = batch.wait(WAIT * 1000)
    states = Counter(s.state for s in statuses if s is not None)
    assert states == Counter({AbortState.INTERRUPTED: 2, AbortState.SKIPPED: 5})
    assert {s.reason for s in statuses if s is not None} == {"bad deploy"}
    bystander.send("after")
    join(broker, queue_name, worker)
    assert ran == ["after"]
    assert len(abort_actor(held, dry_run=True)) == 0  # workers untracked what ended
    assert len(abort_actor(bystander, dry_run=True)) == 0


def test_abort_actor_finds_a_retry_waiting_for_its_backoff(
    broker: dramatiq.Broker, queue_name: str, start_worker: StartWorker
) -> None:
    """A failed message waiting for its retry is still outstanding, and abort_actor skips it."""
    actor, hold = flaky(broker, queue_name, track_messages=True)
    worker = start_worker(broker)
    message = actor.send()
    hold.wait("ended", "flaky")
    batch = abort_actor(actor, mode="cancel")
    assert batch.message_ids == [message.message_id]
    [status] = batch.wait(WAIT * 1000)
    assert status is not None and status.state is AbortState.SKIPPED
    join(broker, queue_name, worker)
    assert hold.runs == Counter({"flaky": 1})


def test_abort_actor_needs_tracking(stub_broker: dramatiq.Broker) -> None:
    """An untracked actor has nothing to abort; a 1.x backend says it tracks nothing."""
    stub_broker.add_middleware(Abortable(backend=backends.StubBackend()))

    @dramatiq.actor(broker=stub_broker)
    def untracked() -> None:
        pass

    untracked.send()
    assert len(abort_actor(untracked, dry_run=True)) == 0
    with pytest.raises(TypeError, match="a dramatiq Actor or an actor's name, not 3"):
        abort_actor(3)  # type: ignore[arg-type]


def test_abort_actor_on_a_1x_backend_names_the_fix(stub_broker: dramatiq.Broker) -> None:
    """A backend without track() raises TrackingUnavailableError."""
    stub_broker.add_middleware(Abortable(backend=PlainBackend()))
    with pytest.raises(TrackingUnavailableError, match="does not track messages"):
        abort_actor("anything", dry_run=True)


def test_a_backend_that_overrides_notify_still_sees_every_request(
    stub_broker: dramatiq.Broker,
) -> None:
    """A subclass that overrides only notify() is called for bulk aborts too."""
    seen: list[str] = []

    class Logged(backends.StubBackend):
        """The in-memory backend, logging what it is told."""

        def notify(self, events: Iterable[Event], ttl: int) -> None:
            batch = list(events)
            seen.extend(event.key for event in batch)
            super().notify(batch, ttl)

    stub_broker.add_middleware(Abortable(backend=Logged()))
    abort_many([f"m{i}" for i in range(20)])
    assert sorted(seen) == sorted(f"abort:m{i}" for i in range(20))


def test_a_pipeline_keeps_the_grace_of_its_actors(
    stub_broker: dramatiq.Broker, queue_name: str, start_worker: StartWorker
) -> None:
    """Without abort_timeout, a later stage's request outlives the running stage's own grace."""
    stub_broker.add_middleware(Abortable(backend=backends.StubBackend()))
    started = threading.Event()
    later: list[str] = []

    @dramatiq.actor(broker=stub_broker, queue_name=queue_name, abort_timeout=1500)
    def slow_to_stop() -> str:
        started.set()
        deadline = time.monotonic() + WAIT
        while abort_requested() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(0.6)  # wrapping up inside its grace, longer than abort_ttl
        return "done"

    @dramatiq.actor(broker=stub_broker, queue_name=queue_name)
    def after(value: str) -> None:
        later.append(value)

    pipe = dramatiq.pipeline([slow_to_stop.message(), after.message()], broker=stub_broker).run()
    worker = start_worker(stub_broker)
    assert started.wait(WAIT)
    first, second = abort(pipe, abort_ttl=200).wait(WAIT * 1000)
    join(stub_broker, queue_name, worker)
    assert first is not None and first.ended_with == "returned"
    assert second is not None and second.state is AbortState.SKIPPED
    assert later == []


def test_tracking_on_a_backend_that_cannot_track_says_so(log_watch: Any) -> None:
    """Abortable(track_messages=True) on a 1.x backend warns at once that it has no effect."""
    Abortable(backend=PlainBackend(), track_messages=True)
    assert log_watch.count("track_messages=True has no effect: PlainBackend") == 1
