"""Argument checks and errors of the public API: fail fast, name the value and the fix."""

from __future__ import annotations

import re
from datetime import timedelta

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

import dramatiq_abort
from dramatiq_abort import (
    Abort,
    Abortable,
    AbortMode,
    BackendUnavailableError,
    MiddlewareMissingError,
    abort,
    abort_requested,
    backends,
)


@pytest.fixture
def abortable(stub_broker: StubBroker) -> Abortable:
    """An Abortable on the global stub broker."""
    middleware = Abortable(backend=backends.StubBackend())
    stub_broker.add_middleware(middleware)
    return middleware


def test_public_names() -> None:
    """Every name of the reference API imports from dramatiq_abort."""
    for name in ("Abortable", "abort", "abort_requested", "Abort", "AbortMode", "Event"):
        assert hasattr(dramatiq_abort, name)
    assert {"EventBackend", "backends"} <= set(dramatiq_abort.__all__)
    assert backends.RedisBackend.__name__ == "RedisBackend"
    assert sorted(dramatiq_abort.__all__) == dramatiq_abort.__all__


def test_abort_is_a_dramatiq_interrupt() -> None:
    """Abort derives from dramatiq's Interrupt and not from Exception."""
    assert issubclass(Abort, dramatiq.middleware.Interrupt)
    assert not issubclass(Abort, Exception)


def test_abort_mode_values() -> None:
    """AbortMode keeps the 1.x string values."""
    assert AbortMode("abort") is AbortMode.ABORT
    assert AbortMode("cancel") is AbortMode.CANCEL


@pytest.mark.parametrize("bad", ["", "   "])
def test_abort_rejects_an_empty_message_id(abortable: Abortable, bad: str) -> None:
    """An empty message id is a ValueError naming the value."""
    with pytest.raises(ValueError, match=re.escape(f"non-empty string, not {bad!r}")):
        abort(bad)


@pytest.mark.parametrize("bad", [None, 42, b"id"])
def test_abort_rejects_a_non_string_message_id(abortable: Abortable, bad: object) -> None:
    """A non-string message id is a TypeError that says to pass message.message_id."""
    with pytest.raises(TypeError, match=re.escape(f"not {bad!r}: pass message.message_id")):
        abort(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["stop", "", 3, None])
def test_abort_rejects_an_unknown_mode(abortable: Abortable, bad: object) -> None:
    """Only AbortMode members and 'abort'/'cancel' are modes."""
    with pytest.raises(ValueError, match=re.escape(f"'cancel', not {bad!r}")):
        abort("id", mode=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"abort_ttl": -1}, ValueError, "abort_ttl must be at least 1 whole milliseconds, not -1"),
        ({"abort_ttl": 0}, ValueError, "abort_ttl must be at least 1 whole milliseconds, not 0"),
        (
            {"abort_ttl": 0.4},
            ValueError,
            "abort_ttl must be at least 1 whole milliseconds, not 0.4",
        ),
        ({"abort_timeout": -5}, ValueError, "abort_timeout must be 0 or more whole milliseconds"),
        ({"abort_timeout": "5s"}, TypeError, "or a datetime.timedelta, not '5s'"),
        ({"abort_timeout": True}, TypeError, "not True"),
        ({"abort_timeout": float("nan")}, ValueError, "finite number of milliseconds"),
        (
            {"abort_timeout": timedelta(seconds=-1)},
            ValueError,
            "abort_timeout must be 0 or more",
        ),
    ],
)
def test_abort_rejects_bad_durations(
    abortable: Abortable, kwargs: dict[str, object], error: type[Exception], text: str
) -> None:
    """Negative, non-numeric or non-finite durations fail with the value in the message."""
    with pytest.raises(error, match=re.escape(text)):
        abort("id", **kwargs)  # type: ignore[arg-type]


def test_durations_accept_timedelta(abortable: Abortable) -> None:
    """abort_ttl and abort_timeout accept timedelta values, stored as milliseconds."""
    abort("id", abort_ttl=timedelta(minutes=2), abort_timeout=timedelta(seconds=1.5))
    event = abortable.backend.poll("abort:id")
    assert event is not None
    assert event.params["abort_timeout"] == 1500
    assert event.params["mode"] == "abort"


def test_abort_without_middleware_says_how_to_add_it(stub_broker: StubBroker) -> None:
    """abort() on a broker without Abortable explains the fix."""
    fix = "call broker.add_middleware(Abortable(backend=...))"
    with pytest.raises(MiddlewareMissingError, match=re.escape(fix)):
        abort("id")
    with pytest.raises(RuntimeError, match=re.escape("abort_requested() needs the Abortable")):
        abort_requested()


def test_abort_with_a_wrong_middleware_argument(stub_broker: StubBroker) -> None:
    """Passing something else as middleware= is a TypeError naming it."""
    with pytest.raises(TypeError, match=re.escape("not 'nope'")):
        abort("id", middleware="nope")  # type: ignore[arg-type]


def test_explicit_middleware_is_used(stub_broker: StubBroker) -> None:
    """abort(middleware=...) uses that middleware even if the broker has none."""
    middleware = Abortable(backend=backends.StubBackend())
    abort("id", middleware=middleware, mode="cancel")
    event = middleware.backend.poll("abort:id")
    assert event is not None
    # No abort_timeout given: the worker applies the actor's own grace, if any.
    assert (event.params["mode"], event.params["abort_timeout"]) == ("cancel", None)
    abort("id2", middleware=middleware, abort_timeout=0)
    event = middleware.backend.poll("abort:id2")
    assert event is not None
    assert event.params["abort_timeout"] == 0


def test_abort_requested_outside_a_message_is_none(abortable: Abortable) -> None:
    """Outside a running message there is nothing to count down."""
    assert abort_requested() is None
    assert abort_requested("someone-else") is None


def test_abortable_rejects_bad_arguments() -> None:
    """The middleware's own arguments are checked when it is built."""
    with pytest.raises(TypeError, match=re.escape("must be an EventBackend")):
        Abortable(backend="redis://")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=re.escape("abortable must be True or False, not 1")):
        Abortable(backend=backends.StubBackend(), abortable=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("abort_ttl must be at least 1")):
        Abortable(backend=backends.StubBackend(), abort_ttl=0)
    with pytest.raises(ValueError, match=re.escape("in (0, 1000], not 0")):
        Abortable(backend=backends.StubBackend(), switch_interval_ms=0)


def test_abort_with_an_unreachable_backend_raises_clearly(stub_broker: StubBroker) -> None:
    """A Redis nobody listens on surfaces as BackendUnavailableError naming the message."""
    pytest.importorskip("redis")
    from conftest import free_port

    backend = backends.RedisBackend.from_url(f"redis://127.0.0.1:{free_port()}/0")
    stub_broker.add_middleware(Abortable(backend=backend))
    with pytest.raises(BackendUnavailableError, match=re.escape("abort of message 'm1'")):
        abort("m1")
