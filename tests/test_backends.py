"""The event backend contract, run against every built-in backend."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

import pytest

from dramatiq_abort import Event, EventBackend


def test_poll_returns_a_notified_event(event_backend: EventBackend) -> None:
    """A notified event is returned by poll with its parameters."""
    event_backend.notify([Event("abort:a", {"mode": "abort", "abort_timeout": 5})], ttl=10_000)
    assert event_backend.poll("abort:a") == Event("abort:a", {"mode": "abort", "abort_timeout": 5})


def test_poll_is_not_destructive(event_backend: EventBackend) -> None:
    """Polling twice finds the event twice, so a redelivered message is still skipped."""
    event_backend.notify([Event("abort:a", {})], ttl=10_000)
    assert event_backend.poll("abort:a") is not None
    assert event_backend.poll("abort:a") is not None


def test_poll_unknown_key_is_none(event_backend: EventBackend) -> None:
    """Polling a key nobody notified gives None."""
    assert event_backend.poll("abort:nobody") is None


def test_events_expire_after_their_ttl(event_backend: EventBackend) -> None:
    """An event is gone once its TTL has passed."""
    event_backend.notify([Event("abort:short", {})], ttl=50)
    event_backend.notify([Event("abort:long", {})], ttl=60_000)
    deadline = time.monotonic() + 5
    while event_backend.poll("abort:short") is not None:
        assert time.monotonic() < deadline, "event outlived its TTL by seconds"
        time.sleep(0.01)  # waiting for a clock: nothing to wait on but time
    assert event_backend.poll("abort:long") is not None


def test_notify_many_and_poll_many(event_backend: EventBackend) -> None:
    """A batch is stored whole and poll_many returns exactly the stored keys."""
    event_backend.notify([Event(f"abort:{i}", {"i": i}) for i in range(100)], ttl=10_000)
    found = event_backend.poll_many(["abort:3", "abort:missing", "abort:99"])
    assert sorted(event.params["i"] for event in found) == [3, 99]
    # Many keys (the Redis backend asks EXISTS first), a few of them stored.
    keys = [f"abort:absent-{i}" for i in range(1500)] + ["abort:42", "abort:7"]
    found = event_backend.poll_many(keys)
    assert sorted(event.params["i"] for event in found) == [7, 42]
    assert event_backend.poll_many(keys[:1500]) == []


def test_wait_many_returns_an_already_notified_event(event_backend: EventBackend) -> None:
    """wait_many returns at once when one of the keys is already signaled."""
    event_backend.notify([Event("abort:b", {"x": 1})], ttl=10_000)
    assert event_backend.wait_many(["abort:a", "abort:b"], timeout=5_000) == Event(
        "abort:b", {"x": 1}
    )


def test_wait_many_wakes_on_a_later_notify(event_backend: EventBackend) -> None:
    """wait_many returns an event notified concurrently with the wait."""
    result: list[Event | None] = []
    waiting = threading.Thread(
        target=lambda: result.append(event_backend.wait_many(["abort:c"], timeout=10_000))
    )
    waiting.start()
    # Keep notifying unrelated keys, then the awaited one, until the waiter returns.
    event_backend.notify([Event("abort:other", {})], ttl=10_000)
    event_backend.notify([Event("abort:c", {"late": True})], ttl=10_000)
    waiting.join(15)
    assert result == [Event("abort:c", {"late": True})]


def test_wait_many_times_out(event_backend: EventBackend) -> None:
    """wait_many gives None when nothing is signaled in time."""
    assert event_backend.wait_many(["abort:never"], timeout=50) is None


def test_subscription_receives_events_notified_after_subscribe(
    event_backend: EventBackend,
) -> None:
    """A live subscription receives every batch notified after subscribe() returned."""
    subscription = event_backend.subscribe()
    assert subscription is not None
    try:
        event_backend.notify([Event("abort:s1", {}), Event("abort:s2", {"k": "v"})], ttl=10_000)
        received: list[Event] = []
        deadline = time.monotonic() + 5
        while len(received) < 2 and time.monotonic() < deadline:
            received.extend(subscription.get(0.5))
        assert received == [Event("abort:s1", {}), Event("abort:s2", {"k": "v"})]
    finally:
        subscription.close()
    subscription.close()  # closing twice is harmless


def test_subscription_get_times_out_empty(event_backend: EventBackend) -> None:
    """An idle subscription returns an empty batch after its timeout."""
    subscription = event_backend.subscribe()
    assert subscription is not None
    try:
        assert subscription.get(0.05) == []
    finally:
        subscription.close()


def test_notify_rejects_a_non_positive_ttl(redis_backend: EventBackend) -> None:
    """The Redis backend refuses a TTL Redis would reject, naming the value."""
    with pytest.raises(ValueError, match=r"ttl must be a positive whole number.*0"):
        redis_backend.notify([Event("abort:x", {})], ttl=0)


def test_redis_backend_from_url(redis_base_url: str, namespace: str) -> None:
    """from_url builds a working backend and passes extra arguments to the constructor."""
    from conftest import BACKEND_DB, delete_prefix
    from dramatiq_abort.backends import RedisBackend

    backend = RedisBackend.from_url(f"{redis_base_url}/{BACKEND_DB}", namespace=namespace)
    try:
        assert backend.namespace == namespace
        backend.notify([Event("abort:u", {})], ttl=10_000)
        assert backend.poll("abort:u") == Event("abort:u", {})
    finally:
        delete_prefix(backend.client, namespace)
        backend.client.close()


def test_redis_backend_rejects_bad_arguments() -> None:
    """Bad constructor and from_url arguments fail fast, naming the value."""
    from dramatiq_abort.backends import RedisBackend

    with pytest.raises(ValueError, match=r"namespace must be a non-empty string.*''"):
        RedisBackend(client=object(), namespace="")
    with pytest.raises(ValueError, match=r"url must be a Redis URL.*'localhost'"):
        RedisBackend.from_url("localhost")


def test_garbage_values_are_ignored(redis_backend: EventBackend, redis_client: object) -> None:
    """A value that is not a JSON object, or a key of the wrong type, polls as None."""
    from dramatiq_abort.backends import RedisBackend

    assert isinstance(redis_backend, RedisBackend)
    client = redis_backend.client
    client.set(redis_backend.namespace + "abort:text", b"not json")
    client.set(redis_backend.namespace + "abort:list", b"[1, 2]")
    client.rpush(redis_backend.namespace + "abort:wrongtype", b"x")
    for key in ("abort:text", "abort:list", "abort:wrongtype"):
        assert redis_backend.poll(key) is None
    assert redis_backend.poll_many(["abort:text", "abort:list", "abort:wrongtype"]) == []
    many = [f"abort:absent-{i}" for i in range(10)] + ["abort:wrongtype", "abort:text"]
    assert redis_backend.poll_many(many) == []


def _requests(prefix: str, count: int) -> list[Event]:
    return [
        Event(f"abort:{prefix}{i}", {"mode": "abort", "abort_timeout": i, "reason": f"r{i}"})
        for i in range(count)
    ]


def test_notify_many_gives_each_event_its_ttl(event_backend: EventBackend) -> None:
    """notify_many stores each event for its own TTL, in one call."""
    event_backend.notify_many(
        [(Event("abort:short", {"mode": "abort"}), 50), (Event("abort:long", {}), 60_000)]
    )
    assert event_backend.poll("abort:long") is not None
    deadline = time.monotonic() + 5
    while event_backend.poll("abort:short") is not None:
        assert time.monotonic() < deadline, "event outlived its TTL by seconds"
        time.sleep(0.01)  # waiting for a clock: nothing to wait on but time
    assert event_backend.poll("abort:long") is not None


@pytest.mark.parametrize("count", [3, 1200])
def test_a_batch_is_stored_and_announced_whole(event_backend: EventBackend, count: int) -> None:
    """Small batches (a call per key) and large ones (a bulk script) store and announce alike."""
    subscription = event_backend.subscribe()
    assert subscription is not None
    try:
        events = _requests("b", count)
        event_backend.notify_many([(event, 10_000 + i) for i, event in enumerate(events)])
        assert event_backend.poll_many([e.key for e in events]) == events
        records = event_backend.read_status([e.key[len("abort:") :] for e in events])
        assert all(r is not None and r["state"] == "requested" for r in records)
        assert [r["reason"] for r in records if r is not None] == [f"r{i}" for i in range(count)]
        announced: list[Event] = []
        deadline = time.monotonic() + 10
        while len(announced) < count and time.monotonic() < deadline:
            announced.extend(subscription.get(0.5))
        assert announced == events
    finally:
        subscription.close()


def test_the_bulk_path_merges_with_stored_requests(redis_backend: Any) -> None:
    """The bulk script combines each request with a stored one, as a call per key does."""
    first = [Event(f"abort:m{i}", {"mode": "abort", "abort_timeout": 0}) for i in range(20)]
    redis_backend.notify(first[:10], ttl=10_000)  # a call per key
    cancels = [Event(e.key, {"mode": "cancel", "reason": "late"}) for e in first]
    redis_backend.notify(cancels, ttl=10_000)  # the bulk script: 20 requests
    stored = {e.key: e.params for e in redis_backend.poll_many([e.key for e in first])}
    assert [stored[e.key]["mode"] for e in first] == ["abort"] * 10 + ["cancel"] * 10
    assert [stored[e.key].get("reason") for e in first] == [None] * 10 + ["late"] * 10


def test_a_backend_without_notify_many_gets_one_notify_per_ttl() -> None:
    """The default notify_many groups a batch by TTL and calls notify once per TTL."""
    calls: list[tuple[list[str], int]] = []

    class Plain(EventBackend):
        """A 1.x backend that records its notify calls."""

        def notify(self, events: Iterable[Event], ttl: int) -> None:
            calls.append(([e.key for e in events], ttl))

        def poll(self, key: str) -> Event | None:
            return None

        def wait_many(self, keys: Iterable[str], timeout: int) -> Event | None:
            return None

    a, b, c = (Event(f"abort:{k}", {}) for k in "abc")
    Plain().notify_many([(a, 100), (b, 200), (c, 100)])
    assert calls == [(["abort:a", "abort:c"], 100), (["abort:b"], 200)]


def test_extend_keeps_a_request_alive_and_says_so(event_backend: EventBackend) -> None:
    """extend() makes a stored request outlive its TTL and moves its status's expires_at."""
    stamp = time.time() * 1000
    event_backend.notify([Event("abort:x", {"mode": "cancel", "requested_at": stamp})], ttl=100)
    until = round(time.time() * 1000) + 60_000
    event_backend.extend([("x", until), ("nobody", until)])
    time.sleep(0.2)  # past the TTL of 100 ms: a clock to wait for, nothing else
    assert event_backend.poll("abort:x") is not None
    [record, none] = event_backend.read_status(["x", "nobody"])
    assert record is not None and record["expires_at"] == until
    assert none is None and event_backend.poll("abort:nobody") is None


def test_tracking_keeps_the_order_of_changes(event_backend: EventBackend) -> None:
    """Adds and removes apply in order, per actor, however they are grouped."""
    now = round(time.time() * 1000)
    event_backend.track(
        [
            ("add", "a", "m1", now + 10),
            ("add", "a", "m2", now + 20),
            ("add", "b", "m3", now + 30),
            ("remove", "a", "m2", 0),
            ("add", "a", "m4", now + 5),
            ("remove", "a", "m4", 0),
        ]
    )
    assert event_backend.tracked("a") == [("m1", now + 10)]
    assert event_backend.tracked("b") == [("m3", now + 30)]
    event_backend.track([("remove", "a", "m1", 0)])
    assert event_backend.tracked("a") == []
    # A late add (from the sender, after the worker's remove) stays out.
    event_backend.track([("add", "a", "m1", now + 50)])
    assert event_backend.tracked("a") == []
    with pytest.raises(TypeError, match="'add' or 'remove'"):
        event_backend.track([("move", "a", "x", 0)])


def test_extend_never_brings_an_expired_request_back(event_backend: EventBackend) -> None:
    """Once a request has expired, extend() leaves its status expired and creates nothing."""
    old = time.time() * 1000 - 60_000
    event_backend.notify([Event("abort:gone", {"mode": "cancel", "requested_at": old})], ttl=50)
    deadline = time.monotonic() + 5
    while event_backend.poll("abort:gone") is not None:
        assert time.monotonic() < deadline, "the request outlived its TTL by seconds"
        time.sleep(0.01)  # waiting for a clock: nothing to wait on but time
    event_backend.extend([("gone", round(time.time() * 1000) + 3_600_000)])
    assert event_backend.poll("abort:gone") is None
    [record] = event_backend.read_status(["gone"])
    assert record is not None and record["expires_at"] < time.time() * 1000
