"""The ``demo`` command: dramatiq-abort's main story, in one process.

It runs a dramatiq worker on the ``StubBroker`` with the in-memory
``StubBackend``, so no server is needed, and sends five messages: one is
cancelled while still queued, one is aborted while running, two are
aborted gracefully (one stops on its own, one is too slow and gets
``Abort`` at the deadline), and one completes.  It prints what happened
to each and how long each abort took, from the call to ``abort()`` to the
actor seeing it.

Run it with ``python -m dramatiq_abort demo`` (or ``dramatiq-abort demo``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq import Worker
from dramatiq.broker import Broker, MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware

from . import backends
from ._request import AbortMode
from .api import abort, abort_requested
from .exceptions import Abort
from .middleware import Abortable

__all__ = ["run"]

#: Seconds the demo waits for any one step before it reports a failure.
_STEP_TIMEOUT = 10.0
#: Seconds one simulated unit of work takes.
_WORK = 0.005
#: Seconds an actor keeps working when nobody stops it (a safety net).
_RUN_AT_MOST = 10.0
#: Grace, in milliseconds, of the two graceful aborts.
_ROOMY_GRACE = 1000
_SHORT_GRACE = 200


class _DemoError(Exception):
    """A step of the demo did not happen as it should have."""


class _Story:
    """What happened to one message: the actor writes it, the main thread tells it."""

    __slots__ = (
        "abort_called_at",
        "ended",
        "exception",
        "grace_left_ms",
        "interrupted_at",
        "message",
        "note",
        "result",
        "seen_at",
        "skipped",
        "started",
        "stopped_at",
    )

    def __init__(self) -> None:
        self.started = threading.Event()
        self.ended = threading.Event()
        self.message: MessageProxy | None = None
        self.skipped = False
        self.result: Any = None
        self.exception: BaseException | None = None
        self.abort_called_at: float | None = None  # time.perf_counter() values
        self.seen_at: float | None = None
        self.interrupted_at: float | None = None
        self.stopped_at: float | None = None
        self.grace_left_ms: float | None = None
        self.note = ""

    def __repr__(self) -> str:
        return f"<_Story skipped={self.skipped} exception={self.exception!r}>"

    def ms_after_abort(self, at: float | None) -> float:
        """Milliseconds from the call to ``abort()`` to ``at``."""
        if at is None or self.abort_called_at is None:
            raise _DemoError("a time the demo needs was not recorded")
        return (at - self.abort_called_at) * 1000

    def status(self) -> str:
        """How dramatiq ended the message, in a few words."""
        message = self.message
        failed = message is not None and message.failed
        retried = message is not None and message.options.get("retries", 0) > 0
        if self.skipped:
            return "skipped, marked failed" if failed else "skipped"
        if self.exception is None:
            return "succeeded"
        ending = f"failed with {type(self.exception).__name__}" if failed else "errored"
        return ending + (", retried" if retried else ", not retried")


#: The stories of the messages, by actor name (each actor gets one message).
_Stories = dict[str, _Story]


class _Journal(Middleware):
    """Record how the worker ended each message of the demo."""

    def __init__(self, stories: _Stories) -> None:
        self.stories = stories

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        """Note the result or the exception and wake the main thread."""
        story = self.stories[message.actor_name]
        story.message, story.exception = message, exception
        story.ended.set()

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        """Note that the worker skipped the message and wake the main thread."""
        story = self.stories[message.actor_name]
        story.message, story.skipped = message, True
        story.ended.set()


def _declare_actors(broker: Broker, stories: _Stories) -> dict[str, dramatiq.Actor[Any, Any]]:
    """Declare the demo's actors; each one writes down what it saw in its story."""

    # The actors return None: without the Results middleware dramatiq
    # would warn that a returned value is discarded.
    def send_newsletter() -> None:
        stories["send_newsletter"].started.set()  # never happens: it is cancelled first

    def say_hello(name: str) -> None:
        story = stories["say_hello"]
        story.started.set()
        story.result = f"hello, {name}"

    def crunch_numbers() -> None:
        story = stories["crunch_numbers"]
        story.started.set()
        try:
            deadline = time.monotonic() + _RUN_AT_MOST
            while time.monotonic() < deadline:
                time.sleep(_WORK)  # one unit of work
        except Abort:
            story.interrupted_at = time.perf_counter()
            raise  # let it end the message

    def export_rows() -> None:
        story = stories["export_rows"]
        story.started.set()
        deadline = time.monotonic() + _RUN_AT_MOST
        while time.monotonic() < deadline:
            left = abort_requested()  # None until someone asks us to stop
            if left is not None:
                story.seen_at, story.grace_left_ms = time.perf_counter(), left
                for _ in range(3):  # finish the batch in hand, then stop
                    time.sleep(_WORK)
                story.stopped_at = time.perf_counter()
                story.note = f"{abort_requested() or 0.0:.0f} ms of grace unused"
                return
            time.sleep(_WORK)  # write one row

    def rebuild_index() -> None:
        story = stories["rebuild_index"]
        story.started.set()
        try:
            deadline = time.monotonic() + _RUN_AT_MOST
            while time.monotonic() < deadline:
                left = abort_requested()
                if left is not None and story.seen_at is None:
                    # Its cleanup takes longer than the grace it was given.
                    story.seen_at, story.grace_left_ms = time.perf_counter(), left
                time.sleep(_WORK)
        except Abort:
            story.interrupted_at = time.perf_counter()
            raise

    functions: list[Callable[..., None]] = [
        send_newsletter,
        say_hello,
        crunch_numbers,
        export_rows,
        rebuild_index,
    ]
    return {fn.__name__: dramatiq.actor(broker=broker)(fn) for fn in functions}


def _wait(event: threading.Event, what: str) -> None:
    if not event.wait(_STEP_TIMEOUT):
        raise _DemoError(f"gave up after {_STEP_TIMEOUT:.0f} s waiting for {what}")


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise _DemoError(what)


def _tell(
    stories: _Stories,
    messages: dict[str, dramatiq.Message[Any]],
    start_worker: Callable[[], int],
) -> None:
    """Start the worker and tell the story, printing each step as it happens."""
    print('1. Cancel a queued message: abort(message_id, mode="cancel")')
    story = stories["send_newsletter"]
    abort(messages["send_newsletter"].message_id, mode=AbortMode.CANCEL)
    threads = start_worker()
    print(f"   Cancelled send_newsletter, then started a worker with {threads} threads.")
    _wait(story.ended, "send_newsletter to be skipped")
    _expect(story.skipped and not story.started.is_set(), "send_newsletter was not skipped")
    print("   The worker skipped send_newsletter: its actor never ran.\n")

    print("2. Let a message complete")
    story = stories["say_hello"]
    _wait(story.ended, "say_hello to complete")
    _expect(story.exception is None, f"say_hello failed: {story.exception!r}")
    print(f"   say_hello ran as usual and said {story.result!r}.\n")

    print("3. Abort a running message: abort(message_id)")
    story = stories["crunch_numbers"]
    _wait(story.started, "crunch_numbers to start")
    story.abort_called_at = time.perf_counter()
    abort(messages["crunch_numbers"].message_id)
    _wait(story.ended, "crunch_numbers to be aborted")
    _expect(isinstance(story.exception, Abort), "crunch_numbers did not end with Abort")
    print(
        f"   crunch_numbers caught Abort {story.ms_after_abort(story.interrupted_at):.1f} ms "
        "after abort(), and re-raised it.\n"
    )

    print(f"4. Abort gracefully: abort(message_id, abort_timeout={_ROOMY_GRACE})")
    story = stories["export_rows"]
    _wait(story.started, "export_rows to start")
    story.abort_called_at = time.perf_counter()
    abort(messages["export_rows"].message_id, abort_timeout=_ROOMY_GRACE)
    _wait(story.ended, "export_rows to stop")
    _expect(story.exception is None, f"export_rows did not stop cleanly: {story.exception!r}")
    _expect(story.stopped_at is not None, "export_rows never saw the abort request")
    print(
        f"   export_rows saw abort_requested() return {story.grace_left_ms:.0f} (ms left) "
        f"{story.ms_after_abort(story.seen_at):.1f} ms after abort(),\n"
        f"   finished its batch and returned on its own "
        f"{story.ms_after_abort(story.stopped_at):.1f} ms after abort() ({story.note}).\n"
    )

    print(f"5. Abort gracefully, too slow to stop: abort(message_id, abort_timeout={_SHORT_GRACE})")
    story = stories["rebuild_index"]
    _wait(story.started, "rebuild_index to start")
    story.abort_called_at = time.perf_counter()
    abort(messages["rebuild_index"].message_id, abort_timeout=_SHORT_GRACE)
    _wait(story.ended, "rebuild_index to be aborted")
    _expect(isinstance(story.exception, Abort), "rebuild_index did not end with Abort")
    _expect(story.seen_at is not None, "rebuild_index never saw the countdown")
    print(
        f"   rebuild_index saw abort_requested() return {story.grace_left_ms:.0f} (ms left) "
        f"{story.ms_after_abort(story.seen_at):.1f} ms after abort(),\n"
        f"   kept cleaning up, and got Abort at the deadline, "
        f"{story.ms_after_abort(story.interrupted_at):.1f} ms after abort().\n"
    )


def _summary(stories: _Stories) -> None:
    rows = [
        ("send_newsletter", "cancelled while queued", None),
        ("say_hello", "left alone", None),
        ("crunch_numbers", "aborted while running", "interrupted_at"),
        ("export_rows", f"aborted, {_ROOMY_GRACE} ms grace", "stopped_at"),
        ("rebuild_index", f"aborted, {_SHORT_GRACE} ms grace", "interrupted_at"),
    ]
    print("Summary (time: from abort() to the actor stopping)")
    for name, what, when in rows:
        story = stories[name]
        took = f"{story.ms_after_abort(getattr(story, when)):6.1f} ms" if when else ""
        print(f"   {name:<16} {what:<24} {story.status():<32} {took}".rstrip())


def run() -> int:
    """Run the demo, printing each step.

    Returns:
        0 when everything happened as described, 1 otherwise.

    """
    print("dramatiq-abort demo: one process, dramatiq's StubBroker, the in-memory StubBackend.")
    print("With backends.RedisBackend the same calls reach workers on other machines.\n")

    stories: _Stories = {}
    broker = StubBroker()
    broker.add_middleware(Abortable(backend=backends.StubBackend()))
    broker.add_middleware(_Journal(stories))
    dramatiq.set_broker(broker)  # so abort() finds the Abortable, as in an application
    actors = _declare_actors(broker, stories)
    stories.update((name, _Story()) for name in actors)

    messages = {
        "send_newsletter": actors["send_newsletter"].send(),
        "say_hello": actors["say_hello"].send("newcomer"),
        "crunch_numbers": actors["crunch_numbers"].send(),
        "export_rows": actors["export_rows"].send(),
        "rebuild_index": actors["rebuild_index"].send(),
    }
    print(f"Sent {len(messages)} messages. No worker is running yet: they wait in the queue.\n")

    worker = Worker(broker, worker_threads=len(messages), worker_timeout=100)

    def start_worker() -> int:
        worker.start()
        return worker.worker_threads

    # The worker logs every skip at WARNING; the demo tells that story itself.
    dramatiq_logger = logging.getLogger("dramatiq")
    level = dramatiq_logger.level
    dramatiq_logger.setLevel(logging.ERROR)
    try:
        _tell(stories, messages, start_worker)
        broker.join(actors["say_hello"].queue_name, fail_fast=False, timeout=10_000)
        worker.join()
    except _DemoError as exc:
        print(f"\nThe demo went wrong: {exc}")
        return 1
    finally:
        worker.stop()
        broker.close()
        dramatiq_logger.setLevel(level)
    _summary(stories)
    return 0
