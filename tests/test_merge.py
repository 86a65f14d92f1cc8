"""Two requests for one message combine: the stronger wins, in every backend alike.

The rule lives twice (Python for in-process backends, Lua in Redis); the
property test feeds both the same sequences of requests and compares.
"""

from __future__ import annotations

import json
import shutil
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RedisServer, require
from dramatiq_abort import Event, EventBackend, backends
from dramatiq_abort._merge import _valid, merge_params
from dramatiq_abort._request import AbortMode, AbortRequest

KEY = "abort:m"


def _request(
    mode: str, timeout: int | None, at: float | None, reason: str | None = None
) -> dict[str, Any]:
    params: dict[str, Any] = {"mode": mode, "abort_timeout": timeout}
    if at is not None:
        params["requested_at"] = at
    if reason is not None:
        params["reason"] = reason
    return params


def _stored(backend: EventBackend) -> dict[str, Any]:
    event = backend.poll(KEY)
    assert event is not None
    return dict(event.params)


def test_cancel_after_abort_keeps_the_abort(event_backend: EventBackend) -> None:
    """A CANCEL sent after an ABORT for the same message leaves the ABORT stored."""
    event_backend.notify([Event(KEY, _request("abort", 500, 1000.0))], ttl=10_000)
    event_backend.notify([Event(KEY, _request("cancel", None, 2000.0))], ttl=10_000)
    assert _stored(event_backend) == _request("abort", 500, 1000.0)


def test_abort_after_cancel_replaces_the_cancel(event_backend: EventBackend) -> None:
    """An ABORT sent after a CANCEL upgrades the stored request."""
    event_backend.notify([Event(KEY, _request("cancel", None, 1000.0))], ttl=10_000)
    event_backend.notify([Event(KEY, _request("abort", 0, 2000.0))], ttl=10_000)
    assert _stored(event_backend) == _request("abort", 0, 2000.0)


def test_the_latest_reason_is_kept(event_backend: EventBackend) -> None:
    """A second request's reason replaces the first's; one without a reason keeps it."""
    event_backend.notify([Event(KEY, _request("cancel", None, 1000.0, "first"))], ttl=10_000)
    event_backend.notify([Event(KEY, _request("abort", 0, 2000.0, "second"))], ttl=10_000)
    event_backend.notify([Event(KEY, _request("abort", 50, 3000.0))], ttl=10_000)
    assert _stored(event_backend) == _request("abort", 0, 2000.0, "second")


def test_a_cancel_after_an_abort_does_not_change_the_reason(event_backend: EventBackend) -> None:
    """A CANCEL that loses to a stored ABORT leaves its reason behind too."""
    event_backend.notify([Event(KEY, _request("abort", 0, 1000.0, "first"))], ttl=10_000)
    event_backend.notify([Event(KEY, _request("cancel", None, 2000.0, "second"))], ttl=10_000)
    assert _stored(event_backend) == _request("abort", 0, 1000.0, "first")


def test_the_earlier_deadline_wins(event_backend: EventBackend) -> None:
    """Of two graceful aborts the one whose grace ends first is kept, whichever came first."""
    event_backend.notify([Event(KEY, _request("abort", 10_000, 1000.0))], ttl=10_000)
    event_backend.notify([Event(KEY, _request("abort", 100, 2000.0))], ttl=10_000)
    assert _stored(event_backend) == _request("abort", 100, 2000.0)
    event_backend.notify([Event(KEY, _request("abort", 5_000, 3000.0))], ttl=10_000)
    assert _stored(event_backend) == _request("abort", 100, 2000.0)


def test_the_actors_grace_is_kept_beside_an_explicit_one(event_backend: EventBackend) -> None:
    """An abort leaving the grace to the actor is kept (actor_grace_from) beside an explicit one."""
    event_backend.notify([Event(KEY, _request("abort", None, 1000.0))], ttl=10_000)
    event_backend.notify([Event(KEY, _request("abort", 700, 2000.0))], ttl=10_000)
    stored = _stored(event_backend)
    assert stored == {
        "mode": "abort",
        "abort_timeout": 700,
        "requested_at": 2000.0,
        "actor_grace_from": 1000.0,
    }
    request = AbortRequest.from_event(Event(KEY, stored))
    assert request is not None and request.mode is AbortMode.ABORT
    # Live, the worker takes the shorter of the explicit grace and the actor's own.
    assert request.grace_seconds(300) == pytest.approx(0.3)
    assert request.grace_seconds(10_000) == pytest.approx(0.7)


def test_a_second_request_never_shortens_the_life(event_backend: EventBackend) -> None:
    """A later request with a short TTL leaves the first request's longer life intact."""
    event_backend.notify([Event(KEY, _request("cancel", None, 1000.0))], ttl=60_000)
    event_backend.notify([Event(KEY, _request("cancel", None, 2000.0))], ttl=50)
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # well past the short TTL
        assert event_backend.poll(KEY) is not None
        time.sleep(0.02)  # waiting for a clock: nothing to wait on but time


def test_a_second_request_extends_a_shorter_life(event_backend: EventBackend) -> None:
    """A later request with a longer TTL keeps the combined request alive that long."""
    event_backend.notify([Event(KEY, _request("abort", 0, 1000.0))], ttl=50)
    event_backend.notify([Event(KEY, _request("cancel", None, 2000.0))], ttl=60_000)
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        assert _stored(event_backend) == _request("abort", 0, 1000.0)
        time.sleep(0.02)  # waiting for a clock: nothing to wait on but time


def test_garbage_stored_first_is_replaced(event_backend: EventBackend) -> None:
    """A stored value that is not a request does not block a real one."""
    event_backend.notify([Event(KEY, {"mode": "explode"})], ttl=10_000)
    event_backend.notify([Event(KEY, _request("cancel", None, 1.0))], ttl=10_000)
    assert _stored(event_backend) == _request("cancel", None, 1.0)


def test_redis_loads_its_script_again_after_a_restart() -> None:
    """After Redis lost its script cache, notify loads the script and stores the request.

    On a throwaway server, since SCRIPT FLUSH would touch everyone's scripts.
    """
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    server = RedisServer()
    server.start()
    try:
        backend = backends.RedisBackend.from_url(server.url)
        backend.notify([Event(KEY, _request("cancel", None, 1.0))], ttl=10_000)
        backend.client.script_flush()
        backend.notify([Event(KEY, _request("abort", 5, 2.0))], ttl=10_000)
        assert _stored(backend) == _request("abort", 5, 2.0)
        backend.client.close()
    finally:
        server.close()


_stamps = st.one_of(st.none(), st.integers(0, 2_000_000_000_000).map(float))
_timeouts = st.one_of(st.none(), st.integers(0, 100_000))
_reasons = st.one_of(st.none(), st.sampled_from(["first", "second", "été ✓"]))
_requests = st.builds(
    _request, st.sampled_from(["abort", "cancel", "ABORT"]), _timeouts, _stamps, _reasons
)
_garbage = st.one_of(
    st.just({"mode": "cancel", "abort_timeout": "soon"}),
    st.just({"mode": 3}),
    st.just(["abort", 1]),
    st.just({"mode": "abort", "requested_at": True}),
    st.just({"mode": "abort", "reason": 7}),
)


def _close(a: Any, b: Any) -> bool:
    """Equal, with floats compared as Lua's cjson writes them (14 significant digits)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 1e-13 * max(1.0, abs(a), abs(b))
    return bool(a == b)


@settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(first=st.one_of(_requests, _garbage), rest=st.lists(_requests, min_size=1, max_size=4))
def test_lua_and_python_merge_agree(
    redis_backend: Any, redis_client: Any, first: Any, rest: list[dict[str, Any]]
) -> None:
    """Any sequence of requests ends with the same stored value in Redis as in Python."""
    key = redis_backend.namespace + KEY
    redis_client.set(key, json.dumps(first), px=10_000)
    expected = first
    for params in rest:
        redis_backend.notify([Event(KEY, params)], ttl=10_000)
        expected = merge_params(expected, params)
    stored = json.loads(redis_client.get(key))
    redis_client.delete(key)
    assert _close(stored, expected), (stored, expected)


_numbers = st.one_of(
    st.none(),
    st.integers(-(10**16), 10**16),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([10**12, 10**12 + 1, 10**15 - 1, 10**15, -(10**15) + 1]),
)


@settings(derandomize=True, database=None, max_examples=500)
@given(
    mode=st.sampled_from(["abort", "cancel", "Abort", "other", ""]),
    timeout=_numbers,
    stamp=_numbers,
    grace_from=_numbers,
)
def test_what_the_merge_keeps_the_worker_accepts(
    mode: str, timeout: Any, stamp: Any, grace_from: Any
) -> None:
    """A stored value the merge counts as a request is one the worker can read, and back."""
    params = {"mode": mode, "abort_timeout": timeout}
    if stamp is not None:
        params["requested_at"] = stamp
    if grace_from is not None:
        params["actor_grace_from"] = grace_from
    accepted = AbortRequest.from_event(Event(KEY, params)) is not None
    assert _valid(params) == accepted, params
