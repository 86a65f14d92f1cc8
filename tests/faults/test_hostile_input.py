"""Hostile or broken input: every public argument, and every value read back from Redis.

Arguments: whatever a caller passes, a public call succeeds or raises
``TypeError``/``ValueError`` (or an error the library documents) whose
message names the argument, shows the value and says what is expected;
never ``AttributeError``, ``OverflowError``, ``UnicodeEncodeError`` or a
Redis error.  Values read back from Redis: the backend's decoders and
``AbortRequest.from_event`` never raise, and a real worker fed a batch of
garbage (stored under its messages' keys and published on its channel)
keeps working, and a valid ``abort()`` still lands.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import WAIT, Hold, LogWatch, RedisServer
from dramatiq_abort import (
    Abortable,
    AbortMode,
    AbortScope,
    EventBackend,
    abort,
    abort_requested,
    abort_scope,
    abortable_actor,
    backends,
    guarded_popen,
    guarded_run,
)
from dramatiq_abort._request import AbortRequest, coerce_mode
from dramatiq_abort.backends.redis import _decode_batch, _decode_params
from dramatiq_abort.events import Event

StartWorker = Callable[..., Worker]

#: Bound, in seconds, on any single wait of these tests.

#: Hypothesis settings of this module: reproducible, no example database,
#: no per-example deadline (a Redis round trip may be slow on a busy host).
FAST = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
#: For the tests pinning known bugs: stop at the first failure, no shrinking.

# -- hostile values -------------------------------------------------------------

LONE_SURROGATES = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
STRINGS = st.one_of(
    st.text(max_size=20),
    LONE_SURROGATES,
    st.tuples(st.text(max_size=3), LONE_SURROGATES, st.text(max_size=3)).map("".join),
    st.sampled_from(
        ["", " ", "\x00", "\n", "abort", "ABORT", "Cancel", "*", "events", "redis://", "x" * 10_000]
    ),
)
#: Numbers: nan, infinities, negative zero, subnormals, huge and negative.
NUMBERS = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),
    st.sampled_from(
        [0, 1, -1, 0.4, 10**12, 10**12 + 1, 2**63, -(2**63), 10**400, -(10**400), 1e300, 5e-324]
    ),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0]),
    st.fractions(max_denominator=10),
    st.decimals(),
)
DURATIONS = st.one_of(
    st.timedeltas(),
    st.sampled_from(
        [
            timedelta.max,
            timedelta.min,
            timedelta(0),
            timedelta(microseconds=1),
            -timedelta(microseconds=1),
            timedelta(days=365 * 40),
        ]
    ),
)
#: Anything a confused caller might pass.
HOSTILE: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    NUMBERS,
    STRINGS,
    st.binary(max_size=10),
    DURATIONS,
    st.builds(object),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from([AbortMode.ABORT, AbortMode.CANCEL, Ellipsis, 1j, b"abort", (), frozenset()]),
)

#: Words that say what is expected, as in "x must be ..., not 1".
EXPECTATION = re.compile(r"\b(must|needs|takes|decorates)\b")


def expect_clean_outcome(
    call: Callable[[], object],
    name: str,
    value: object,
    *,
    documented: tuple[type[BaseException], ...] = (),
) -> object:
    """Run ``call``: it returns, or raises a clean ``TypeError``/``ValueError`` about ``name``.

    A clean error is exactly ``TypeError`` or ``ValueError`` (no subclass such
    as ``UnicodeEncodeError``) whose message names ``name``, shows
    ``repr(value)`` and says what is expected.  Errors in ``documented``
    are accepted as they are.  Anything else propagates and fails the test.
    """
    try:
        return call()
    except (TypeError, ValueError, *documented) as exc:
        if documented and isinstance(exc, documented):
            return None
        text = str(exc)
        assert type(exc) in (TypeError, ValueError), f"{type(exc).__name__}: {text}"
        assert name in text, f"the error does not name {name!r}: {text}"
        assert repr(value) in text, f"the error does not show {value!r}: {text}"
        assert EXPECTATION.search(text), f"the error does not say what is expected: {text}"
        return None


# -- fixtures -------------------------------------------------------------------


@pytest.fixture
def abortable(stub_broker: StubBroker, event_backend: EventBackend) -> Abortable:
    """An Abortable on the global stub broker, with each built-in backend in turn."""
    middleware = Abortable(backend=event_backend)
    stub_broker.add_middleware(middleware)
    return middleware


# -- arguments of the public API ---------------------------------------------------

ABORT_VALID: dict[str, Any] = {
    "message_id": "hostile-input",
    "middleware": None,
    "abort_ttl": 60_000,
    "mode": "abort",
    "abort_timeout": 0,
}


@FAST
@given(name=st.sampled_from(sorted(ABORT_VALID)), value=HOSTILE)
def test_abort_arguments(abortable: Abortable, name: str, value: object) -> None:
    """abort() with any one argument replaced records the request or raises a clean error."""
    kwargs = {**ABORT_VALID, name: value}
    expect_clean_outcome(lambda: abort(**kwargs), name, value)


@FAST
@given(name=st.sampled_from(["message_id", "middleware"]), value=HOSTILE)
def test_abort_requested_arguments(abortable: Abortable, name: str, value: object) -> None:
    """abort_requested() outside a worker returns None or raises a clean error."""
    kwargs: dict[str, Any] = {"message_id": "hostile-input", "middleware": None, name: value}
    result = expect_clean_outcome(lambda: abort_requested(**kwargs), name, value)
    assert result is None


ABORTABLE_VALID: dict[str, Any] = {
    "backend": backends.StubBackend(),
    "abortable": True,
    "abort_ttl": 90_000,
    "switch_interval_ms": 1.0,
}


@FAST
@given(name=st.sampled_from(sorted(ABORTABLE_VALID)), value=HOSTILE)
def test_abortable_arguments(name: str, value: object) -> None:
    """Abortable(...) with any one argument replaced is built or raises a clean error."""
    kwargs = {**ABORTABLE_VALID, name: value}
    expect_clean_outcome(lambda: Abortable(**kwargs), name, value)


@FAST
@given(name=st.sampled_from(["client", "namespace"]), value=HOSTILE)
def test_redis_backend_arguments(redis_client: Any, name: str, value: object) -> None:
    """RedisBackend(...) with a hostile client or namespace is built or raises a clean error."""
    kwargs: dict[str, Any] = {"client": redis_client, "namespace": "hostile:", name: value}
    backend = expect_clean_outcome(lambda: backends.RedisBackend(**kwargs), name, value)
    if isinstance(backend, backends.RedisBackend):
        assert backend.channel == backend.namespace + "events"
        backend.namespace.encode("utf-8")  # what every key and the channel start with


URLS = st.one_of(
    HOSTILE,
    st.tuples(
        st.sampled_from(["redis://", "rediss://", "unix://", "http://", "redis:/", "REDIS://"]),
        st.text(max_size=30),
    ).map("".join),
    st.from_regex(r"redis://[a-z0-9.:@\[\]/%?=&_-]{0,30}", fullmatch=True),
    st.sampled_from(
        [
            "redis://127.0.0.1:99999/0",
            "redis://127.0.0.1:6379/zero",
            "redis://[::1",
            "redis://h/0?socket_timeout=soon",
            "redis://h/0?health_check_interval=-1",
            "redis://h/0?db=\udcff",
        ]
    ),
)


@FAST
@given(url=URLS)
def test_redis_backend_from_url_urls(url: object) -> None:
    """from_url(url) builds a backend (without connecting) or raises a clean error.

    A URL with a password is shown with the password masked, so the error
    shows the URL up to its ``user:password@`` part.
    """
    try:
        backend = backends.RedisBackend.from_url(url)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        text = str(exc)
        assert type(exc) in (TypeError, ValueError), f"{type(exc).__name__}: {text}"
        assert "url must be" in text, text
        # The part between "://" and the last "@" before the query is masked.
        masked = isinstance(url, str) and "@" in url.partition("?")[0].partition("://")[2]
        assert ("***@" if masked else repr(url)) in text, text
        return
    backend.client.close()


@FAST
@given(name=st.sampled_from(["namespace", "positional"]), value=HOSTILE)
def test_redis_backend_from_url_extras(name: str, value: object) -> None:
    """from_url's extras are keyword-only: a positional one or a bad namespace is a clean error."""
    url = "redis://127.0.0.1:6379/13"
    if name == "positional":
        with pytest.raises(
            TypeError, match=re.escape(f"not the positional arguments {(value,)!r}")
        ):
            backends.RedisBackend.from_url(url, value)
        return
    backend = expect_clean_outcome(
        lambda: backends.RedisBackend.from_url(url, namespace=value), name, value
    )
    if isinstance(backend, backends.RedisBackend):
        backend.client.close()


def test_from_url_errors_hide_the_password() -> None:
    """A bad URL's error names the URL with its password masked; client= is refused clearly."""
    with pytest.raises(ValueError, match=r"redis://\*\*\*@127\.0\.0\.1:99999/0") as caught:
        backends.RedisBackend.from_url("redis://user:s3cret@127.0.0.1:99999/0")
    assert "s3cret" not in str(caught.value)
    with pytest.raises(TypeError, match=re.escape("pass client= to RedisBackend()")):
        backends.RedisBackend.from_url("redis://127.0.0.1:6379/13", client=object())


def long_wait(value: object) -> bool:
    """Whether ``value`` is a valid wait of more than a few ms (it would stall the test)."""
    if isinstance(value, timedelta):
        return value > timedelta(milliseconds=20)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    # Only overflowing waits (beyond threading.TIMEOUT_MAX) are hostile to a wait.
    return number and value == value and 20 < value < 10**13  # type: ignore[operator]


@settings(FAST)
@given(name=st.sampled_from(["events", "an event", "ttl"]), value=HOSTILE)
def test_stub_backend_notify_arguments(name: str, value: object) -> None:
    """StubBackend.notify with hostile events or ttl stores them or raises a clean error."""
    backend = backends.StubBackend()
    events: object = [Event("abort:m", {})]
    ttl: object = 1000
    if name == "events":
        events = value
    elif name == "an event":
        events = [value]
    else:
        ttl = value
    label = "ttl" if name == "ttl" else "event"
    expect_clean_outcome(lambda: backend.notify(events, ttl), label, value)  # type: ignore[arg-type]


@settings(FAST)
@given(name=st.sampled_from(["poll", "poll_many keys", "poll_many a key"]), value=HOSTILE)
def test_stub_backend_poll_arguments(name: str, value: object) -> None:
    """StubBackend.poll and poll_many with hostile keys answer or raise a clean error."""
    backend = backends.StubBackend()
    backend.notify([Event("abort:m", {})], 60_000)
    if name == "poll":
        expect_clean_outcome(lambda: backend.poll(value), "key", value)  # type: ignore[arg-type]
    elif name == "poll_many keys":
        expect_clean_outcome(lambda: backend.poll_many(value), "key", value)  # type: ignore[arg-type]
    else:
        expect_clean_outcome(lambda: backend.poll_many([value]), "key", value)  # type: ignore[list-item]


@settings(FAST)
@given(name=st.sampled_from(["keys", "timeout"]), value=HOSTILE)
def test_stub_backend_wait_many_arguments(name: str, value: object) -> None:
    """StubBackend.wait_many with hostile keys or timeout answers or raises a clean error."""
    backend = backends.StubBackend()
    if name == "keys":
        expect_clean_outcome(lambda: backend.wait_many(value, 0), name, value)  # type: ignore[arg-type]
    elif not long_wait(value):  # a valid long wait has nothing hostile to show
        expect_clean_outcome(lambda: backend.wait_many([], value), name, value)  # type: ignore[arg-type]


ACTOR_VALID: dict[str, Any] = {
    "fn": None,
    "actor_class": dramatiq.Actor,
    "actor_name": None,
    "queue_name": "default",
    "priority": 0,
    "broker": None,
    "timeout": None,
    "on_abort": None,
    "abortable": True,
}


def _actor_fn() -> None:
    """The function the actor tests declare."""


@FAST
@given(name=st.sampled_from(sorted(ACTOR_VALID)), value=HOSTILE)
def test_abortable_actor_arguments(name: str, value: object) -> None:
    """abortable_actor(...) with any one argument replaced declares the actor or fails cleanly."""
    broker = StubBroker()  # one per example: dramatiq refuses to declare a name twice
    broker.add_middleware(Abortable(backend=backends.StubBackend()))
    kwargs = {**ACTOR_VALID, name: value}
    if name != "broker":
        kwargs["broker"] = broker
    fn = kwargs.pop("fn")
    dramatiq.set_broker(broker)  # the bare form declares on the global broker

    def declare() -> object:
        if fn is None:
            return abortable_actor(**kwargs)(_actor_fn)
        return abortable_actor(fn, **kwargs)

    try:
        actor = expect_clean_outcome(declare, "abortable_actor" if name == "fn" else name, value)
    finally:
        broker.close()
    if isinstance(actor, dramatiq.Actor):
        assert isinstance(actor.options["abortable"], bool)


@FAST
@given(value=HOSTILE)
def test_abort_scope_arguments(value: object) -> None:
    """abort_scope(shield=...), AbortScope(shield=...) and scope.callback(...) fail cleanly."""
    expect_clean_outcome(lambda: abort_scope(shield=value), "shield", value)  # type: ignore[arg-type]
    expect_clean_outcome(lambda: AbortScope(shield=value), "shield", value)  # type: ignore[arg-type]
    with abort_scope() as scope:
        expect_clean_outcome(lambda: scope.callback(value), "callback", value)  # type: ignore[arg-type]


POPEN_VALID: dict[str, Any] = {
    "interrupt_signal": signal.SIGINT,
    "interrupt_grace": 10,
    "terminate_grace": 10,
}


@FAST
@given(name=st.sampled_from(sorted(POPEN_VALID)), value=HOSTILE)
def test_guarded_popen_arguments(name: str, value: object) -> None:
    """guarded_popen's option values are accepted or fail cleanly; no child is started."""
    kwargs = {**POPEN_VALID, name: value}
    guard = expect_clean_outcome(lambda: guarded_popen(["true"], **kwargs), name, value)
    if guard is not None:
        assert guard.process is None  # built only: the child starts at ``with``


@settings(FAST, max_examples=30)
@given(name=st.sampled_from([*sorted(POPEN_VALID), "timeout"]), value=HOSTILE)
def test_guarded_run_arguments(name: str, value: object) -> None:
    """guarded_run's option values run ``true`` or fail cleanly before any child starts.

    A timeout that has run out raises ``subprocess.TimeoutExpired``, as
    ``subprocess.run`` does.
    """
    kwargs = {**POPEN_VALID, "timeout": 30, name: value}
    done = expect_clean_outcome(
        lambda: guarded_run(["true"], **kwargs),
        name,
        value,
        documented=(subprocess.TimeoutExpired,),
    )
    if done is not None:
        assert isinstance(done, subprocess.CompletedProcess)
        assert done.returncode == 0


@FAST
@given(value=HOSTILE)
def test_abort_modes(value: object) -> None:
    """AbortMode(x) and the mode coercion give a member or a ValueError that shows the value."""
    try:
        mode = AbortMode(value)
    except ValueError as exc:
        assert type(exc) is ValueError
        assert repr(value) in str(exc)
    else:
        assert mode in (AbortMode.ABORT, AbortMode.CANCEL)
    coerced = expect_clean_outcome(lambda: coerce_mode(value), "mode", value)
    if coerced is not None:
        assert isinstance(value, (str, AbortMode))
        assert coerced.value == (value.value if isinstance(value, AbortMode) else value.lower())


# -- values read back from Redis ----------------------------------------------------

#: JSON values with numbers a float can hold (see test_huge_stamps_are_ignored).
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**300), max_value=10**300),
    st.floats(),
    st.text(max_size=10),
    st.sampled_from(["abort", "cancel", "ABORT", "Cancel"]),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
#: Request parameters with hostile values, and sometimes valid ones.
PARAMS = st.dictionaries(
    st.sampled_from(["mode", "abort_timeout", "requested_at", "actor_grace_from", "other"]),
    st.one_of(
        JSON_VALUES,
        st.sampled_from(["abort", "cancel", 0, 1, 10**12, 10**12 + 1, 1e15, -1, None]),
        st.integers(min_value=-(10**16), max_value=10**16),
    ),
    max_size=5,
)


def dumps(value: object) -> bytes:
    """Encode as Python's json does, NaN and Infinity included (what a careless writer sends)."""
    return json.dumps(value).encode("utf-8")


#: What may be found stored under a request key.
STORED = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=20).map(lambda text: text.encode("utf-8", "surrogatepass")),
    JSON_VALUES.map(dumps),
    PARAMS.map(dumps),
    st.sampled_from(
        [b"", b"{", b"null", b"[]", b"{}", b'{"mode": "explode"}', b"\xff\xfe", b"NaN", b"1e999"]
    ),
)
EVENT_KEYS = st.one_of(
    st.just("abort:m"),
    st.text(max_size=10).map(lambda text: "abort:" + text),
    st.text(max_size=10),
)
#: What may be published on the announcement channel.
ANNOUNCED = st.one_of(
    STORED,
    st.lists(st.tuples(EVENT_KEYS, PARAMS), max_size=3).map(
        lambda items: dumps([list(item) for item in items])
    ),
    st.lists(JSON_VALUES, max_size=3).map(lambda items: dumps([items])),
)


def _check_request(event: Event | None) -> None:
    """An event decoded from Redis gives a request (or None) whose grace is sane."""
    if event is None:
        return
    assert isinstance(event.key, str)
    assert isinstance(event.params, dict)
    request = AbortRequest.from_event(event)
    if request is None:
        return
    assert request.mode in (AbortMode.ABORT, AbortMode.CANCEL)
    for live in (True, False):
        for default_ms in (0, 1000):
            grace = request.grace_seconds(default_ms, live=live)
            assert 0.0 <= grace < float("inf")


@settings(FAST, max_examples=300)
@given(raw=STORED)
def test_stored_values_decode_safely(raw: bytes) -> None:
    """Any bytes stored under a request key decode to an event or None, never an exception."""
    event = _decode_params("abort:m", raw)
    if event is not None:
        assert event.key == "abort:m"
    _check_request(event)


@settings(FAST, max_examples=300)
@given(raw=ANNOUNCED)
def test_announcements_decode_safely(raw: bytes) -> None:
    """Any bytes published on the channel decode to a list of events, never an exception."""
    events = _decode_batch(raw)
    assert isinstance(events, list)
    for event in events:
        assert isinstance(event, Event)
        _check_request(event)


@pytest.mark.parametrize("name", ["requested_at", "actor_grace_from"])
def test_huge_stamps_are_ignored(name: str) -> None:
    """A request whose stamp is an integer beyond float range is ignored, not raised."""
    raw = b'{"mode": "abort", "abort_timeout": 0, "%s": 1%s}' % (name.encode(), b"0" * 400)
    event = _decode_params("abort:m", raw)
    assert event is not None
    assert AbortRequest.from_event(event) is None


@pytest.mark.parametrize("decoder", ["stored", "announced"])
def test_deeply_nested_json_is_ignored(decoder: str) -> None:
    """A deeply nested JSON value is logged and ignored like any malformed one."""
    raw = b"[" * 2000 + b"]" * 2000
    if decoder == "stored":
        assert _decode_params("abort:m", raw) is None
    else:
        assert _decode_batch(raw) == []


def test_a_stored_request_the_worker_rejects_never_masks_a_cancel(
    redis_backend: backends.RedisBackend, redis_client: Any
) -> None:
    """After a cancel, the stored value is a request the worker accepts, whatever was there."""
    key = "abort:masked"
    stale = {"mode": "abort", "abort_timeout": 9e14, "requested_at": -9e14}
    redis_client.set(redis_backend.namespace + key, json.dumps(stale), px=60_000)
    abort("masked", middleware=Abortable(backend=redis_backend), mode="cancel")
    event = redis_backend.poll(key)
    assert event is not None
    assert AbortRequest.from_event(event) is not None


# -- a real worker fed garbage --------------------------------------------------------

LOST = "Lost the event backend"
STILL_DOWN = "Event backend still unreachable"
BACK = "Event backend is reachable again"


@pytest.fixture
def thread_errors() -> Iterator[list[threading.ExceptHookArgs]]:
    """Record every exception that ends a thread (the original hook still reports it)."""
    errors: list[threading.ExceptHookArgs] = []
    original = threading.excepthook

    def spy(args: threading.ExceptHookArgs) -> None:
        errors.append(args)
        original(args)

    threading.excepthook = spy
    yield errors
    threading.excepthook = original


def library_threads_alive() -> set[str]:
    """Names of the library's background threads that are alive."""
    return {
        thread.name for thread in threading.enumerate() if thread.name.startswith("dramatiq-abort-")
    }


def test_worker_survives_garbage_in_redis(
    thread_errors: list[threading.ExceptHookArgs],
    stub_broker: StubBroker,
    redis_server: RedisServer,
    namespace: str,
    start_worker: StartWorker,
    log_watch: LogWatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Garbage stored under message keys and published on the channel breaks nothing.

    Each example: quick messages with garbage stored under their keys run or
    are skipped exactly as the decoder reads the garbage; running messages
    with garbage under their keys survive a resync (the watcher's
    connection is cut); garbage and hostile requests published for them
    are ignored or applied; then a valid graceful abort (1 ms, through the
    deadline timer) lands on each of them and on a fresh message.  No
    background thread dies and nothing is logged as an error.
    """
    import redis

    backend = backends.RedisBackend.from_url(f"{redis_server.url}/0", namespace=namespace)
    stub_broker.add_middleware(Abortable(backend=backend))
    client = redis.Redis(port=redis_server.port)
    hold = Hold()
    ran: Counter[str] = Counter()

    @dramatiq.actor(broker=stub_broker, queue_name="garbage-hold", max_retries=0)
    def hold_actor(name: str) -> None:
        hold.run(name)

    @dramatiq.actor(broker=stub_broker, queue_name="garbage-quick", max_retries=0)
    def quick(name: str) -> None:
        ran[name] += 1

    start_worker(stub_broker, worker_threads=4)
    # An abort that lands proves the watcher is subscribed, so there is a connection to cut.
    warmup = hold_actor.send("warm-up")
    hold.wait("started", "warm-up")
    abort(warmup.message_id)
    hold.wait("ended", "warm-up")
    kills = 0
    example = itertools.count()

    def key_of(message_id: str) -> str:
        return f"{namespace}abort:{message_id}"

    @settings(FAST, max_examples=5)
    @given(
        stored=st.lists(STORED, min_size=3, max_size=12),
        announced=st.lists(ANNOUNCED, min_size=1, max_size=12),
        params=st.lists(PARAMS, min_size=1, max_size=4),
    )
    def feed(stored: list[bytes], announced: list[bytes], params: list[dict[str, Any]]) -> None:
        nonlocal kills
        run = next(example)

        # Pending messages: each reads its garbage once, before it starts.
        skipped: dict[str, bool] = {}
        for index, raw in enumerate(stored):
            message = quick.message(f"{run}-quick-{index}")
            client.set(key_of(message.message_id), raw, px=60_000)
            event = _decode_params("abort:" + message.message_id, raw)
            skipped[message.message_id] = (
                event is not None and AbortRequest.from_event(event) is not None
            )
            stub_broker.enqueue(message)
        stub_broker.join(quick.queue_name, fail_fast=False, timeout=int(WAIT * 1000))
        dead = {m.message_id for m in stub_broker.dead_letters}
        for index, message_id in enumerate(skipped):
            assert ran[f"{run}-quick-{index}"] == (0 if skipped[message_id] else 1)
            assert (message_id in dead) == skipped[message_id]

        # Running messages: garbage under their keys, read back by a resync.
        names = [f"{run}-hold-{index}" for index in range(3)]
        running = {name: hold_actor.send(name).message_id for name in names}
        for name in names:
            hold.wait("started", name)
        for index, message_id in enumerate(running.values()):
            client.set(key_of(message_id), stored[index % len(stored)], px=60_000)
        assert client.client_kill_filter(_type="pubsub") == 1
        kills += 1
        log_watch.wait_for(BACK, count=kills)

        # Garbage and hostile requests on the channel, then valid aborts.
        for raw in announced:
            client.publish(backend.channel, raw)
        for index, message_id in enumerate(running.values()):
            hostile = params[index % len(params)]
            client.publish(backend.channel, dumps([["abort:" + message_id, hostile]]))
        for message_id in running.values():
            abort(message_id, abort_timeout=1)
        for name in names:
            hold.wait("ended", name)
            assert hold.outcome[name] == "aborted"
            assert hold.runs[name] == 1

        fresh = f"{run}-fresh"
        message = hold_actor.send(fresh)
        hold.wait("started", fresh)
        abort(message.message_id, abort_timeout=1)
        hold.wait("ended", fresh)
        assert hold.outcome[fresh] == "aborted"

        assert {"dramatiq-abort-watcher", "dramatiq-abort-timer"} <= library_threads_alive()
        assert thread_errors == []

    feed()
    assert log_watch.count(LOST) == kills
    assert log_watch.count(STILL_DOWN) == 0
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert thread_errors == []
