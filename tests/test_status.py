"""Reasons and outcomes: what became of each abort, queried from anywhere.

The storage rule is checked on both backends (and Lua against Python); the
outcomes end to end on every broker with real workers.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import WAIT, LogWatch, PlainBackend, join
from dramatiq_abort import (
    Abort,
    Abortable,
    AbortHandle,
    AbortMode,
    AbortState,
    Event,
    EventBackend,
    StatusUnavailableError,
    StatusUpdate,
    abort,
    abort_requested,
    abort_scope,
    abort_status,
    backends,
)
from dramatiq_abort._status import RANKS, apply_update

StartWorker = Callable[..., Worker]


def _middleware(broker: dramatiq.Broker) -> Abortable:
    return next(m for m in broker.middleware if isinstance(m, Abortable))


class Runs:
    """What the test actor saw: started/ended events, the Abort and scope reasons."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.ended = threading.Event()
        self.release = threading.Event()
        self.abort: Abort | None = None
        self.scope_reason: str | None = None
        self.runs = 0

    def actor(self, broker: dramatiq.Broker, queue_name: str, **options: Any) -> Any:
        """Declare an actor that runs until released or aborted, reading the reason."""

        @dramatiq.actor(broker=broker, queue_name=queue_name, max_retries=0, **options)
        def work(graceful: bool = False) -> str:
            self.runs += 1
            self.started.set()
            deadline = time.monotonic() + WAIT
            try:
                with abort_scope() as scope:
                    try:
                        while time.monotonic() < deadline and not self.release.is_set():
                            if abort_requested() is not None:
                                self.scope_reason = scope.reason
                                if graceful:
                                    return "stopped"
                            time.sleep(0.002)
                    except Abort:
                        self.scope_reason = scope.reason
                        raise
                return "done"
            except Abort as exc:
                self.abort = exc
                raise
            finally:
                self.ended.set()

        return work

    def running(self, broker: dramatiq.Broker, queue_name: str, start: StartWorker) -> Any:
        """Start a worker and one message of the actor; return it once it runs."""
        work = self.actor(broker, queue_name)
        start(broker)
        message = work.send()
        assert self.started.wait(WAIT)
        return message


@pytest.fixture
def runs() -> Runs:
    """A fresh record of the test actor's runs."""
    return Runs()


# -- the storage rule ---------------------------------------------------------


def _request(
    backend: EventBackend, message_id: str, mode: str = "abort", ttl: int = 10_000, **extra: Any
) -> None:
    params = {"mode": mode, "abort_timeout": 0, "requested_at": time.time() * 1000, **extra}
    backend.notify([Event(f"abort:{message_id}", params)], ttl=ttl)


def _update(state: str, message_id: str = "m", **fields: Any) -> StatusUpdate:
    return StatusUpdate(message_id, state, RANKS[state], {k: ("set", v) for k, v in fields.items()})


def test_a_request_is_recorded_as_requested(event_backend: EventBackend) -> None:
    """notify() of an abort request stores its status: requested, mode, reason, times."""
    before = time.time() * 1000
    _request(event_backend, "m", reason="user left", ttl=5_000)
    [record] = event_backend.read_status(["m"])
    assert record is not None
    assert record["state"] == "requested"
    assert record["mode"] == "abort"
    assert record["reason"] == "user left"
    assert before - 1 <= record["requested_at"] <= time.time() * 1000 + 1
    assert record["expires_at"] == record["requested_at"] + 5_000


def test_unknown_messages_have_no_status(event_backend: EventBackend) -> None:
    """read_status answers None for each id without a record, in order."""
    _request(event_backend, "known")
    records = event_backend.read_status(["nobody", "known", "nobody either"])
    assert records[0] is None and records[2] is None
    assert records[1] is not None


def test_abort_beats_cancel_and_the_latest_reason_wins(event_backend: EventBackend) -> None:
    """A second request strengthens the mode and replaces the reason; the first stamp stays."""
    _request(event_backend, "m", mode="cancel", reason="first")
    [first] = event_backend.read_status(["m"])
    _request(event_backend, "m", mode="abort", reason="second", ttl=60_000)
    _request(event_backend, "m", mode="cancel")
    [record] = event_backend.read_status(["m"])
    assert record is not None and first is not None
    assert (record["mode"], record["reason"]) == ("abort", "second")
    assert record["requested_at"] == first["requested_at"]
    assert record["expires_at"] > first["expires_at"]


def test_a_state_never_moves_back(event_backend: EventBackend) -> None:
    """A worker's update of lower rank is ignored whole; a new request keeps the final state."""
    _request(event_backend, "m")
    event_backend.update_status([_update("interrupted", ended_with="Abort")])
    event_backend.update_status([_update("received", received_at=5, worker="late")])
    _request(event_backend, "m", reason="again")
    [record] = event_backend.read_status(["m"])
    assert record is not None
    assert record["state"] == "interrupted"
    assert "worker" not in record
    assert record["reason"] == "again"


def test_interrupted_overrides_too_late(event_backend: EventBackend) -> None:
    """A cancel found too late, then an abort that interrupts: the record says interrupted."""
    _request(event_backend, "m", mode="cancel")
    event_backend.update_status([_update("too_late")])
    _request(event_backend, "m")
    event_backend.update_status([_update("interrupted", ended_with="Abort")])
    [record] = event_backend.read_status(["m"])
    assert record is not None and record["state"] == "interrupted"


def test_status_records_live_for_status_ttl(redis_client: Any, namespace: str) -> None:
    """A request's record lives its TTL plus status_ttl; a worker's update status_ttl at least."""
    backend = backends.RedisBackend(
        client=redis_client, namespace=namespace, status_ttl=timedelta(seconds=100)
    )
    _request(backend, "m", ttl=20_000)
    key = f"{namespace}status:m"
    assert 119_000 < redis_client.pttl(key) <= 120_000
    backend.update_status([_update("skipped")])
    assert 119_000 < redis_client.pttl(key) <= 120_000  # never shortened


def test_the_in_memory_backend_forgets_after_status_ttl() -> None:
    """StubBackend drops a record once its lifetime has passed."""
    backend = backends.StubBackend(status_ttl=1)
    _request(backend, "m", ttl=1)
    deadline = time.monotonic() + WAIT
    while backend.read_status(["m"]) != [None]:
        assert time.monotonic() < deadline, "the record never expired"
        time.sleep(0.005)


@pytest.mark.parametrize(
    ("update", "error", "match"),
    [
        ("not an update", TypeError, "StatusUpdate"),
        (StatusUpdate("m", "done", 3, {}), ValueError, "'done'"),
        (StatusUpdate("m", "skipped", 1, {}), ValueError, "rank 1"),
        (StatusUpdate("m", "skipped", 3, {"x": ("add", 1)}), ValueError, "'x'"),
        (StatusUpdate("m", "skipped", 3, {"x": ("min", "a")}), ValueError, "'x'"),
    ],
)
def test_bad_updates_are_refused(
    event_backend: EventBackend, update: Any, error: type[Exception], match: str
) -> None:
    """update_status refuses what the rule cannot apply, naming the value."""
    with pytest.raises(error, match=match):
        event_backend.update_status([update])


_states = st.sampled_from(list(RANKS))
_numbers = st.integers(-(10**14) + 1, 10**14 - 1)
_fields = st.dictionaries(
    st.sampled_from(["worker", "ended_at", "received_at", "reason", "mode", "n"]),
    st.one_of(
        st.tuples(st.sampled_from(["min", "max"]), _numbers),
        st.tuples(
            st.sampled_from(["set", "keep", "set_unless_abort"]),
            st.one_of(st.none(), _numbers, st.sampled_from(["abort", "cancel", "été ✓", ""])),
        ),
    ),
    max_size=4,
)
_updates = st.builds(
    lambda state, fields: StatusUpdate("m", state, RANKS[state], fields), _states, _fields
)


@settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    first=st.one_of(
        st.none(),
        st.just("garbage"),
        st.just({"rank": "x"}),
        st.just({"rank": 2, "state": "too_late", "ended_at": 5, "mode": "abort"}),
    ),
    rest=st.lists(_updates, min_size=1, max_size=5),
)
def test_lua_and_python_status_rules_agree(
    redis_backend: Any, redis_client: Any, first: Any, rest: list[StatusUpdate]
) -> None:
    """Any sequence of updates leaves the same record in Redis as in Python."""
    key = f"{redis_backend.namespace}status:m"
    redis_client.delete(key)
    if first is not None:
        redis_client.set(key, json.dumps(first), px=10_000)
    expected: Any = first
    for change in rest:
        redis_backend.update_status([change])
        expected = apply_update(expected, change) or expected
    stored = json.loads(redis_client.get(key))
    assert stored == expected


def test_a_1x_backend_says_it_keeps_no_status(stub_broker: dramatiq.Broker) -> None:
    """abort() works on a 1.x backend, and asking its status names the fix."""
    middleware = Abortable(backend=PlainBackend())
    stub_broker.add_middleware(middleware)
    handle = abort("m", reason="r")
    assert isinstance(handle, AbortHandle)
    with pytest.raises(StatusUnavailableError, match="does not store abort statuses"):
        handle.status()
    with pytest.raises(NotImplementedError):
        abort_status("m")


@pytest.mark.parametrize(
    ("reason", "error", "match"),
    [
        (42, TypeError, "reason must be a short string or None, not 42"),
        ("x" * 501, ValueError, "at most 500 characters, not 501"),
        ("\ud800", ValueError, "UTF-8"),
    ],
)
def test_bad_reasons_are_refused(
    stub_broker: dramatiq.Broker, reason: Any, error: type[Exception], match: str
) -> None:
    """abort() refuses a reason it could not carry, naming the value, and sends nothing."""
    backend = backends.StubBackend()
    stub_broker.add_middleware(Abortable(backend=backend))
    with pytest.raises(error, match=match):
        abort("m", reason=reason)
    assert len(backend) == 0


# -- outcomes, end to end -------------------------------------------------------


def test_a_cancelled_message_is_skipped(
    broker: dramatiq.Broker, queue_name: str, start_worker: StartWorker, runs: Runs
) -> None:
    """Cancel before start: the status says skipped, with actor, queue, worker and times."""
    work = runs.actor(broker, queue_name)
    message = work.send()
    handle = abort(message.message_id, mode="cancel", reason="user left")
    assert handle.status() is not None
    assert handle.status().state is AbortState.REQUESTED  # type: ignore[union-attr]
    worker = start_worker(broker)
    join(broker, queue_name, worker)
    status = handle.wait(timedelta(seconds=WAIT))
    assert status is not None
    assert status.state is AbortState.SKIPPED and status.final
    assert (status.mode, status.reason) == (AbortMode.CANCEL, "user left")
    assert (status.actor_name, status.queue_name) == ("work", queue_name)
    assert status.worker is not None and status.worker.endswith(f":{__import__('os').getpid()}")
    assert status.requested_at is not None and status.ended_at is not None
    assert status.requested_at <= status.ended_at
    assert runs.runs == 0


def test_an_aborted_message_is_interrupted_and_sees_the_reason(
    broker: dramatiq.Broker, queue_name: str, start_worker: StartWorker, runs: Runs
) -> None:
    """Abort while running: Abort.reason and the scope carry the reason; status interrupted."""
    message = runs.running(broker, queue_name, start_worker)
    status = abort(message.message_id, reason="disk full").wait(WAIT * 1000)
    assert status is not None
    assert status.state is AbortState.INTERRUPTED
    assert (status.reason, status.ended_with) == ("disk full", "Abort")
    assert status.received_at is not None and status.ended_at is not None
    assert status.received_at <= status.ended_at
    assert runs.abort is not None
    assert runs.abort.reason == "disk full"
    assert runs.abort.message_id == message.message_id
    assert str(runs.abort) == f"message {message.message_id} was aborted: disk full"
    assert runs.scope_reason == "disk full"


def test_a_graceful_abort_is_received_then_interrupted(
    broker: dramatiq.Broker, queue_name: str, start_worker: StartWorker, runs: Runs
) -> None:
    """During the grace the status says received; an actor that returns then ends interrupted."""
    message = runs.running(broker, queue_name, start_worker)
    handle = abort(message.message_id, abort_timeout=timedelta(seconds=WAIT), reason="soon")
    deadline = time.monotonic() + WAIT
    while (status := handle.status()) is None or status.state is AbortState.REQUESTED:
        assert time.monotonic() < deadline, "the request was never received"
        time.sleep(0.005)
    assert status.state is AbortState.RECEIVED and not status.final
    assert status.received_at is not None and status.ended_at is None
    runs.release.set()
    final = handle.wait(WAIT * 1000)
    assert final is not None
    assert (final.state, final.ended_with) == (AbortState.INTERRUPTED, "returned")
    assert runs.abort is None


def test_an_abort_after_the_end_is_too_late(
    broker: dramatiq.Broker, queue_name: str, start_worker: StartWorker, runs: Runs
) -> None:
    """An abort of a message that finished here is reported too late by that worker."""
    work = runs.actor(broker, queue_name)
    runs.release.set()
    worker = start_worker(broker)
    message = work.send()
    join(broker, queue_name, worker)
    status = abort(message.message_id, reason="oops").wait(WAIT * 1000)
    assert status is not None
    assert status.state is AbortState.TOO_LATE
    assert (status.actor_name, status.queue_name) == ("work", queue_name)


def test_a_cancel_of_a_running_message_is_too_late(
    broker: dramatiq.Broker, queue_name: str, start_worker: StartWorker, runs: Runs
) -> None:
    """A cancel that reaches a running message is too late, and the message runs on."""
    work = runs.actor(broker, queue_name)
    worker = start_worker(broker)
    message = work.send()
    assert runs.started.wait(WAIT)
    status = abort(message.message_id, mode="cancel").wait(WAIT * 1000)
    assert status is not None and status.state is AbortState.TOO_LATE
    runs.release.set()
    join(broker, queue_name, worker)
    assert runs.abort is None


def test_a_request_nobody_sees_expires(stub_broker: dramatiq.Broker) -> None:
    """With no worker, the request is requested until its TTL, then expired."""
    stub_broker.add_middleware(Abortable(backend=backends.StubBackend()))
    handle = abort("never-sent", abort_ttl=50)
    assert handle.wait(0).state is AbortState.REQUESTED  # type: ignore[union-attr]
    status = handle.wait(WAIT * 1000)
    assert status is not None and status.state is AbortState.EXPIRED and status.final
    assert status.expires_at is not None
    assert status.expires_at <= datetime.now(timezone.utc)


def test_no_request_no_status(broker: dramatiq.Broker) -> None:
    """abort_status() of a message nobody aborted is None."""
    assert abort_status("nobody-aborted-this") is None


def test_wait_returns_the_last_status_when_time_runs_out(
    broker: dramatiq.Broker, queue_name: str, runs: Runs
) -> None:
    """wait() gives back the current, non-final status when its timeout passes."""
    work = runs.actor(broker, queue_name)
    message = work.send()
    started = time.monotonic()
    status = abort(message.message_id).wait(100)
    assert time.monotonic() - started >= 0.1
    assert status is not None and status.state is AbortState.REQUESTED


def test_each_transition_is_logged_once(
    stub_broker: dramatiq.Broker,
    queue_name: str,
    start_worker: StartWorker,
    runs: Runs,
    log_watch: LogWatch,
) -> None:
    """Requested, received and aborted each log one line naming the reason."""
    stub_broker.add_middleware(Abortable(backend=backends.StubBackend()))
    work = runs.actor(stub_broker, queue_name)
    worker = start_worker(stub_broker)
    message = work.send()
    assert runs.started.wait(WAIT)
    abort(message.message_id, reason="because").wait(WAIT * 1000)
    join(stub_broker, queue_name, worker)
    mid = message.message_id
    assert log_watch.count(f"Requested abort of message {mid} (reason: because)") == 1
    assert log_watch.count(f"Message {mid} received an abort request (reason: because)") == 1
    assert log_watch.count(f"Message {mid} was aborted while running (reason: because)") == 1


def test_status_to_dict_is_json(
    broker: dramatiq.Broker, queue_name: str, start_worker: StartWorker, runs: Runs
) -> None:
    """to_dict() gives strings for states and times, ready for json.dumps."""
    work = runs.actor(broker, queue_name)
    message = work.send()
    status = abort(message.message_id, mode="cancel", reason="r").status()
    assert status is not None
    data = json.loads(json.dumps(status.to_dict()))
    assert data["state"] == "requested" and data["mode"] == "cancel" and not data["final"]
    assert datetime.fromisoformat(data["requested_at"]).tzinfo is not None


class _GatedBackend(backends.StubBackend):
    """The in-memory backend, whose status writes wait until the test opens a gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.writing = threading.Event()

    def update_status(self, updates: Iterable[StatusUpdate]) -> None:
        """Wait for the gate, then write."""
        self.writing.set()
        assert self.gate.wait(WAIT), "the test never opened the gate"
        super().update_status(updates)


def test_the_writer_keeps_the_newest_updates_and_says_it_dropped(
    monkeypatch: pytest.MonkeyPatch, log_watch: LogWatch
) -> None:
    """Past its bound the writer drops the oldest waiting updates, warns, and writes the rest."""
    from dramatiq_abort import _outcomes

    monkeypatch.setattr(_outcomes, "_MAX_PENDING", 5)
    backend = _GatedBackend()
    outcomes = _outcomes.Outcomes(backend)
    outcomes._put(_update("skipped", "first"))
    assert backend.writing.wait(WAIT)  # the writer holds "first", in flight
    for i in range(8):
        outcomes._put(_update("skipped", f"m{i}"))
    backend.gate.set()
    assert outcomes.flush(WAIT)
    outcomes.stop()
    kept = backend.read_status(["first", *(f"m{i}" for i in range(8))])
    assert [record is not None for record in kept] == [True] + [False] * 3 + [True] * 5
    assert log_watch.count("more than 5 waiting to be written") == 1


def test_a_cancel_after_an_abort_leaves_the_reason(event_backend: EventBackend) -> None:
    """The status keeps the abort's reason when a later cancel loses to it, as the request does."""
    _request(event_backend, "m", mode="abort", reason="abort reason")
    _request(event_backend, "m", mode="cancel", reason="cancel reason")
    [record] = event_backend.read_status(["m"])
    stored = event_backend.poll("abort:m")
    assert record is not None and stored is not None
    assert record["reason"] == stored.params["reason"] == "abort reason"


def test_a_new_request_reopens_too_late(event_backend: EventBackend) -> None:
    """A request after a too-late verdict is judged anew: the record reads requested again."""
    _request(event_backend, "m", mode="cancel")
    event_backend.update_status([_update("too_late", ended_at=7)])
    _request(event_backend, "m")
    [record] = event_backend.read_status(["m"])
    assert record is not None
    assert record["state"] == "requested" and "ended_at" not in record


def test_an_abort_after_a_cancel_came_too_late_interrupts(
    broker: dramatiq.Broker, queue_name: str, start_worker: StartWorker, runs: Runs
) -> None:
    """Cancel a running message (too late), then abort it: the abort's wait says interrupted."""
    message = runs.running(broker, queue_name, start_worker)
    cancelled = abort(message.message_id, mode="cancel").wait(WAIT * 1000)
    assert cancelled is not None and cancelled.state is AbortState.TOO_LATE
    status = abort(message.message_id, abort_timeout=200).wait(WAIT * 1000)
    assert status is not None
    assert (status.state, status.ended_with) == (AbortState.INTERRUPTED, "Abort")
    assert runs.abort is not None


class _PickyBackend(backends.StubBackend):
    """The in-memory backend, refusing (as a bad value) every update of message ``bad``."""

    def update_status(self, updates: Iterable[StatusUpdate]) -> None:
        """Refuse a batch holding ``bad``; write the others."""
        batch = list(updates)
        if any(change.message_id == "bad" for change in batch):
            raise ValueError("refused")
        super().update_status(batch)


def test_a_refused_update_does_not_hold_up_the_others(log_watch: LogWatch) -> None:
    """The writer drops an update the backend refuses and writes the rest of the batch."""
    from dramatiq_abort._outcomes import Outcomes

    backend = _PickyBackend()
    outcomes = Outcomes(backend)
    for name in ("a", "bad", "b"):
        outcomes._put(_update("skipped", name))
    assert outcomes.flush(WAIT)
    outcomes.stop()
    assert [r is not None for r in backend.read_status(["a", "bad", "b"])] == [True, False, True]
    assert log_watch.count("Dropping an abort status update the event backend refused") == 1


def test_a_writer_given_up_on_never_runs_beside_a_new_one() -> None:
    """A writer stuck in a write when stop() gave up ends once it is free; a new one takes over."""
    from dramatiq_abort._outcomes import Outcomes

    backend = _GatedBackend()
    outcomes = Outcomes(backend)
    outcomes._put(_update("skipped", "stuck"))
    assert backend.writing.wait(WAIT)
    old = outcomes._thread
    outcomes.stop(timeout=0.05)
    outcomes._put(_update("skipped", "next"))
    new = outcomes._thread
    assert old is not None and new is not None and new is not old
    backend.gate.set()
    old.join(WAIT)
    assert not old.is_alive()
    assert outcomes.flush(WAIT)
    outcomes.stop()
    assert backend.read_status(["next"]) != [None]
