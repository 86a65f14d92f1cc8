"""The messages running in this process, their abort deadlines, and safe delivery.

A message moves through four states:

``PENDING``
    registered by the middleware, which is still checking the backend for
    a request.  Any request seen now means the message never starts.
``STARTED``
    past that check.  A cancel is too late; an abort sets a deadline.
``ENTERED``
    the actor's code is running: at the deadline ``Abort`` is raised in
    its thread.
``LEFT``
    the actor's code has returned: nothing is delivered any more.

One lock guards every state change and every delivery, and leaving clears
an ``Abort`` that was scheduled but not yet raised, so an ``Abort`` can
never land after the actor's code returned: not in another middleware's
hook, not in the next message.

Under gevent's monkey-patching (``dramatiq-gevent``) the worker "threads"
are greenlets of one OS thread, and a thread's asynchronous exception
cannot reach them.  ``Abort`` is then thrown into the message's greenlet
by a callback of gevent's hub (see ``_green``), which looks at
the message again when it runs: a greenlet switches only at its own
blocking calls, so it is then suspended inside the actor's code, or has
left it and gets nothing.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import gc
import heapq
import itertools
import logging
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

import dramatiq

from . import _green, _interrupt, exceptions
from ._request import AbortMode, AbortRequest
from ._switch import LONG_S, SwitchInterval
from .exceptions import Abort, describe

_logger = logging.getLogger("dramatiq_abort")

PENDING, STARTED, ENTERED, LEFT = range(4)
#: Outcomes of a delivery attempt.
DELIVERED, RETRY, NOTHING = range(3)
#: What a request did to the message here (see Registry.request).
NOT_HERE, WILL_SKIP, RECEIVED, TOO_LATE, UNCHANGED, LATE = range(6)
#: How many finished messages the registry remembers, to tell a request that came too late.
FINISHED_LIMIT = 10_000

_R = TypeVar("_R")

#: The message whose actor code is running in this context (see Registry.current).
_CURRENT_ENTRY: ContextVar[_Running | None] = ContextVar("dramatiq_abort_entry", default=None)


class _Running:
    """One message running (or about to run) in this process."""

    __slots__ = (
        "actor_name",
        "checked",
        "cleanup_s",
        "deadline",
        "default_grace_ms",
        "delivered",
        "depth",
        "entered_at",
        "fired",
        "greenlet",
        "held",
        "hooks",
        "hub",
        "is_async",
        "late",
        "message_id",
        "queue_name",
        "received_at",
        "request",
        "retries",
        "shield_depth",
        "state",
        "switching",
        "thread_id",
        "wake",
    )

    def __init__(
        self,
        message_id: str,
        thread_id: int,
        default_grace_ms: int = 0,
        cleanup_s: float = 5.0,
        actor_name: str = "",
        queue_name: str = "",
    ) -> None:
        self.message_id = message_id
        self.queue_name = queue_name
        self.thread_id = thread_id
        self.state = PENDING
        self.request: AbortRequest | None = None
        self.received_at: float | None = None  # time.time() when the first request landed
        self.late: AbortRequest | None = None  # came after the code returned: the end decides
        self.deadline: float | None = None  # time.monotonic() at which Abort is due
        self.delivered = False
        self.fired = False
        self.depth = 0  # nested calls of guarded functions in this message
        self.retries = 0  # deliveries put off while the thread was in the guard itself
        self.checked = False  # whether the backend was asked before the message started
        self.default_grace_ms = default_grace_ms  # the actor's grace, for requests without one
        self.shield_depth = 0  # open shielded scopes: delivery is held back while > 0
        self.held = False  # an Abort came due inside a shield
        self.hooks: list[Callable[[], None]] = []  # run (watcher side) when Abort is delivered
        self.is_async = False  # an async def actor: Abort goes into its coroutine, not the thread
        self.wake: Callable[[], None] | None = None  # schedules that, once the coroutine runs
        self.cleanup_s = cleanup_s  # how long an aborted coroutine may clean up before cancel
        self.actor_name = actor_name  # for the switch interval's guess of how long it runs
        self.entered_at: float | None = None  # time.monotonic() when its code began
        self.switching = False  # counted in SwitchInterval.running while its code runs
        self.greenlet: Any = None  # under gevent: the greenlet that runs it ...
        self.hub: Any = None  # ... and its hub, which throws Abort into it

    def __repr__(self) -> str:
        return f"<_Running {self.message_id!r} state={self.state} deadline={self.deadline}>"


class Registry:
    """Running messages of this process, keyed by message id and by thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: dict[str, _Running] = {}
        self._by_thread: dict[int, _Running] = {}
        self._switch = SwitchInterval()
        #: Messages that ended here without a request: id -> (actor, queue), oldest first.
        self._finished: collections.OrderedDict[str, tuple[str, str]] = collections.OrderedDict()

    # -- worker thread side -------------------------------------------------

    def want_switch_interval(self, seconds: float | None) -> None:
        """Lower the switch interval to ``seconds`` while long actor code runs (``_switch``)."""
        with self._lock:
            self._switch.want(seconds)

    def release_switch_interval(self) -> None:
        """Stop lowering the switch interval; restore the interpreter's."""
        with self._lock:
            self._switch.release()

    def register(
        self,
        message_id: str,
        default_grace_ms: int = 0,
        cleanup_s: float = 5.0,
        actor_name: str = "",
        queue_name: str = "",
    ) -> _Running:
        """Register the message the calling thread is about to process."""
        entry = _Running(
            message_id, threading.get_ident(), default_grace_ms, cleanup_s, actor_name, queue_name
        )
        gevent_hub = _green.current()
        if gevent_hub is not None:
            entry.greenlet, entry.hub = gevent_hub()
        with self._lock:
            self._by_id[message_id] = entry
            self._by_thread[entry.thread_id] = entry
        return entry

    def start(self, entry: _Running) -> bool:
        """Move a pending message to started; ``False`` if a request came first."""
        with self._lock:
            if entry.request is not None:
                return False
            entry.state = STARTED
            return True

    def unregister(
        self, entry: _Running, *, succeeded: bool = False
    ) -> tuple[AbortRequest | None, AbortRequest | None]:
        """Forget a message whose processing is over (``succeeded``: ended without an exception).

        A message that succeeded without a request is remembered (the last
        :data:`FINISHED_LIMIT`), so a request that comes later is known to
        be too late; one that failed may come back as a retry.

        Returns:
            The request the running message had received, if any, and one
            that came after its code had returned (``LATE``), if any.

        """
        with self._lock:
            if entry.switching:  # _leave was cut short by another exception
                entry.switching = False
                switch = self._switch
                switch.running -= 1
                if not switch.running:
                    switch.restore()
            received = entry.request if entry.state != PENDING else None
            if succeeded and received is None:
                finished = self._finished
                if entry.message_id in finished:
                    finished.move_to_end(entry.message_id)
                finished[entry.message_id] = (entry.actor_name, entry.queue_name)
                if len(finished) > FINISHED_LIMIT:
                    finished.popitem(last=False)
            entry.state = LEFT
            if self._by_id.get(entry.message_id) is entry:
                del self._by_id[entry.message_id]
            if self._by_thread.get(entry.thread_id) is entry:
                del self._by_thread[entry.thread_id]
            return received, entry.late

    def current(self) -> _Running | None:
        """Return the message the calling thread (or coroutine) is processing, if any.

        Inside the actor's code the guard has put the entry in a context
        variable, which dramatiq's event loop copies into the task that runs
        an ``async def`` actor; elsewhere the thread identifies the message.
        """
        entry = _CURRENT_ENTRY.get()
        if entry is not None and entry.state != LEFT:
            return entry
        return self._by_thread.get(threading.get_ident())

    def current_thread_entry(self) -> _Running | None:
        """Return the message registered by the calling thread, ignoring coroutine context."""
        return self._by_thread.get(threading.get_ident())

    def get(self, message_id: str) -> _Running | None:
        """Return the message with this id if it is running here."""
        return self._by_id.get(message_id)

    def finished(self, message_id: str) -> tuple[str, str] | None:
        """(actor, queue) of a message that recently ended here without a request."""
        return self._finished.get(message_id)

    def __len__(self) -> int:
        """Return the number of registered messages."""
        return len(self._by_id)

    def running_ids(self) -> list[str]:
        """Ids of every registered message."""
        with self._lock:
            return list(self._by_id)

    def _enter(self, entry: _Running, *, is_async: bool = False) -> None:
        with self._lock:
            entry.depth += 1
            if entry.state != STARTED:
                return
            entry.state = ENTERED
            entry.is_async = is_async
            # Inline, no Python calls: see _switch.
            entry.entered_at = now = time.monotonic()
            switch = self._switch
            last = switch.last.get(entry.actor_name)
            if last is None or last >= LONG_S:
                entry.switching = True
                switch.running += 1
                wanted = switch.wanted
                if switch.running == 1 and wanted is not None and switch.saved is None:
                    current = sys.getswitchinterval()
                    if wanted < current:
                        switch.saved = current
                        sys.setswitchinterval(wanted)
            due = entry.deadline is not None and entry.deadline <= now
            if due:
                entry.delivered = entry.fired = True
        if due:
            raise abort_for(entry)

    def _leave(self, entry: _Running, level: int) -> None:
        """Leave guarded call number ``level``; idempotent, so it can be retried."""
        with self._lock:
            if entry.depth < level:
                return  # already left, or never entered: a retry after a late Abort
            entry.depth = level - 1
            if entry.depth > 0:
                return
            entry.state = LEFT
            entry.wake = None
            # The switch interval's count first, in attribute writes only: another
            # thread's exception (a time limit, a shutdown) can still fire after
            # any C call below; unregister() undoes a count left behind.
            switch = self._switch
            restore = None
            if entry.switching:
                entry.switching = False
                switch.running -= 1
                if not switch.running:
                    restore = switch.saved
            if entry.delivered and not entry.fired and not entry.is_async:
                if entry.greenlet is None:
                    # A direct C call: calling a Python function here would let
                    # the pending exception fire at its first line instead.
                    _interrupt.clear_async_exc(entry.thread_id, _interrupt.NULL)
                # Under gevent the hub's callback finds it LEFT and drops it.
                entry.fired = True
            if entry.entered_at is not None:  # inline, no Python calls: see _switch
                # An aborted message was cut short, and its actor is one whose
                # aborts happen: count it as long.
                elapsed = time.monotonic() - entry.entered_at
                switch.last[entry.actor_name] = LONG_S if entry.delivered else elapsed
            if restore is not None:
                # Cleared only once restored: if that is cut short, the next
                # message to leave restores it (see SwitchInterval).
                sys.setswitchinterval(restore)
                switch.saved = None

    def guard(self, fn: Callable[..., _R]) -> Callable[..., _R]:
        """Wrap an actor function so ``Abort`` can only land while it runs."""
        if isinstance(fn, _Guarded):
            return fn
        return _Guarded(fn, self)

    # -- watcher side --------------------------------------------------------

    def request(self, request: AbortRequest, *, live: bool = True) -> tuple[_Running | None, int]:
        """Apply a request (``live``: just announced, else read back) to the local message.

        Returns:
            The entry when its deadline lies in the future and must be
            scheduled with :meth:`deliver` at that time (else ``None``),
            and what the request did: ``NOT_HERE`` (no such message
            registered), ``WILL_SKIP`` (it has not started and never will),
            ``RECEIVED`` (the running message has its first request),
            ``TOO_LATE`` (a cancel of a running message), ``LATE`` (its
            code has returned; :meth:`unregister` tells) or ``UNCHANGED``
            (a request came first).

        """
        entry = self._by_id.get(request.message_id)
        if entry is None:
            return None, NOT_HERE
        with self._lock:
            if entry.state == LEFT:
                if entry.request is not None:
                    return None, UNCHANGED
                # Its code has returned: too late if it succeeds, but a failed
                # message may be retried, so unregister() decides.
                if entry.late is None:
                    entry.late = request
                return None, LATE
            if entry.state == PENDING:
                # It never starts now; keep the stronger request for the log line.
                if entry.request is None or entry.request.mode is AbortMode.CANCEL:
                    entry.request = request
                return None, WILL_SKIP
            first = entry.request is None
            if request.mode is AbortMode.CANCEL:
                return None, TOO_LATE if first else UNCHANGED
            deadline = time.monotonic() + request.grace_seconds(entry.default_grace_ms, live=live)
            if entry.deadline is not None and entry.deadline <= deadline:
                return None, UNCHANGED
            entry.request = request  # the one that decides when Abort comes
            entry.deadline = deadline
            if first:
                entry.received_at = time.time()
            delivered = self._deliver_locked(entry) == DELIVERED
        verdict = RECEIVED if first else UNCHANGED
        if delivered:
            self.run_hooks(entry)
            return None, verdict
        return entry, verdict

    def deliver(self, entry: _Running) -> int:
        """Raise ``Abort`` in the entry's thread if its deadline has come.

        Returns:
            ``DELIVERED``; ``RETRY`` when the thread is passing through the
            guard itself (entering or leaving the actor's code), so the
            attempt must be repeated shortly; or ``NOTHING``.

        """
        with self._lock:
            outcome = self._deliver_locked(entry)
        if outcome == DELIVERED:
            self.run_hooks(entry)
        return outcome

    def run_hooks(self, entry: _Running) -> None:
        """Run the entry's delivery hooks (they must not block)."""
        for hook in list(entry.hooks):
            try:
                hook()
            except Exception:
                _logger.exception("An abort hook of message %s failed.", entry.message_id)

    def _deliver_locked(self, entry: _Running) -> int:
        if entry.delivered or entry.deadline is None or entry.deadline > time.monotonic():
            return NOTHING
        if entry.state != ENTERED:
            return NOTHING  # STARTED: _enter raises it; LEFT: too late.
        # ENTERED also covers the instants just before the actor's function is
        # called and just after it returned, while the thread runs the guard's
        # own code; an exception raised there would hit a message whose code
        # already finished. Look where the thread is, and try again shortly.
        if entry.shield_depth:
            entry.held = True  # raised by shield_exit, when the critical section ends
            return NOTHING
        if entry.is_async:
            # The coroutine gets Abort at its current await, on the event loop
            # (see _async); before it runs, it gets it at its first await.
            entry.delivered = True
            if entry.wake is not None:
                entry.wake()
            return DELIVERED
        if entry.greenlet is not None:
            entry.delivered = True
            # Thread-safe: a delivery may come from a thread gevent did not patch.
            entry.hub.loop.run_callback_threadsafe(self._throw_into_greenlet, entry)
            return DELIVERED
        frame = _thread_frame(entry.thread_id)
        if frame is not None and frame.f_code in _TRANSIT_CODES:
            entry.retries += 1
            return RETRY
        entry.delivered = _interrupt.raise_in_thread(entry.thread_id, Abort)
        return DELIVERED if entry.delivered else NOTHING

    def _throw_into_greenlet(self, entry: _Running) -> None:
        """In gevent's hub: throw ``Abort`` into the message's greenlet if it still runs the actor.

        No greenlet runs while the hub runs this, so what it sees holds
        until the throw: the greenlet is suspended in one of its own
        blocking calls, inside the actor's code (``ENTERED``), or it has
        left it (the abort came too late) or entered a shielded section
        (then the shield's end raises it).
        """
        if not self._lock.acquire(blocking=False):
            # Never block the hub; the lock is only held between switches.
            entry.hub.loop.run_callback(self._throw_into_greenlet, entry)
            return
        try:
            if entry.state != ENTERED or not entry.delivered or entry.fired or entry.greenlet.dead:
                return
            if entry.shield_depth:
                entry.delivered = False
                entry.held = True
                return
            # Not marked fired: the guard marks it when Abort reaches it, and a
            # finalizer that swallows it leaves it to be delivered again (swallowed()).
            exc = abort_for(entry)
        finally:
            self._lock.release()
        entry.greenlet.throw(exc)

    def swallowed(self) -> _Running | None:
        """An ``Abort`` raised in this thread was swallowed; return the entry to raise it again.

        CPython ignores an exception raised inside a ``__del__`` method or a
        weakref callback (it reports it to ``sys.unraisablehook``), and the
        garbage collector runs those in whatever thread it happens to run
        in, so an ``Abort`` delivered at that instant would be lost.  The
        entry counts as not delivered again, due in 2 ms, for the caller to
        schedule: not at once, so it does not land in the hook's own code.
        The lock is only waited for briefly: the collector may have run
        while this very thread held it.
        """
        if not self._lock.acquire(timeout=0.05):
            return None
        try:
            entry = self._by_thread.get(threading.get_ident())
            if (
                entry is None
                or entry.state != ENTERED
                or entry.is_async
                or not entry.delivered
                or entry.fired
            ):
                return None
            entry.delivered = False
            entry.deadline = time.monotonic() + 0.002
            return entry
        finally:
            self._lock.release()

    def attach_waker(self, entry: _Running, wake: Callable[[], None]) -> bool:
        """Let deliveries call ``wake``; ``True`` if ``Abort`` was already delivered."""
        with self._lock:
            entry.wake = wake
            return entry.delivered and not entry.fired

    def detach_waker(self, entry: _Running) -> None:
        """Stop calling the entry's waker (its coroutine has ended)."""
        with self._lock:
            entry.wake = None

    # -- scopes --------------------------------------------------------------

    def abort_now(self, entry: _Running) -> None:
        """Raise ``Abort`` in the calling (entry's own) thread if an abort was requested."""
        with self._lock:
            if entry.deadline is None or entry.delivered or entry.state != ENTERED:
                return
            if entry.shield_depth:
                entry.held = True  # a checkpoint never cuts a shielded section short
                return
            entry.delivered = entry.fired = True
        raise abort_for(entry)

    def shield_enter(self, entry: _Running) -> None:
        """Hold back deliveries until the matching :meth:`shield_exit`."""
        with self._lock:
            entry.shield_depth += 1

    def shield_exit(self, entry: _Running) -> None:
        """End a shield; raise the ``Abort`` that came due inside it, if any."""
        with self._lock:
            entry.shield_depth -= 1
            due = (
                entry.shield_depth == 0
                and entry.held
                and not entry.delivered
                and entry.state == ENTERED
            )
            if due:
                entry.held = False
                entry.delivered = entry.fired = True
        if due:
            self.run_hooks(entry)
            raise abort_for(entry)

    def remaining_ms(self, entry: _Running) -> float | None:
        """Milliseconds until ``Abort`` is due, or ``None`` without a request."""
        deadline = entry.deadline
        if deadline is None or entry.state == PENDING:
            return None
        return max(0.0, (deadline - time.monotonic()) * 1000)


def _thread_frame(thread_id: int) -> Any:
    """The innermost frame of thread ``thread_id``, or ``None``.

    Before Python 3.12, ``sys._current_frames()`` holds the interpreter's
    thread-list lock while it builds its dict; a garbage collection started by
    that allocation can run a finalizer that takes the same lock, and the
    calling thread deadlocks (CPython gh-106883).  Collection is paused around
    the call there.
    """
    if sys.version_info >= (3, 12):
        return sys._current_frames().get(thread_id)
    enabled = gc.isenabled()
    gc.disable()
    try:
        return sys._current_frames().get(thread_id)
    finally:
        if enabled:
            gc.enable()


class _Guarded(Generic[_R]):
    """An actor function whose calls enter and leave the running message's entry."""

    __slots__ = ("__dict__", "__weakref__", "_fn", "_registry")

    def __init__(self, fn: Callable[..., _R], registry: Registry) -> None:
        self._fn = fn
        self._registry = registry
        functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> _R:
        registry = self._registry
        entry = registry._by_thread.get(threading.get_ident())
        if entry is None:
            return self._fn(*args, **kwargs)
        token = None
        level = 0
        # The result is stored by C code before this frame runs another
        # instruction: a defaultdict calls its factory (the actor) and stores
        # what it returns in one C call.  An Abort that fires at the check
        # right after the call (its delivery looked at the thread while the
        # actor's code was still running) then finds it.  (A deque fed by an
        # iterator would take a StopIteration the actor raises for its end.)
        returned: collections.defaultdict[int, _R] = collections.defaultdict()
        try:
            token = _CURRENT_ENTRY.set(entry)
            # Known before _enter counts it, so an Abort landing at _enter's
            # first line leaves nothing for _leave to undo.
            level = entry.depth + 1
            registry._enter(entry)
            returned.default_factory = functools.partial(self._fn, *args, **kwargs)
            return returned[0]
        except Abort:
            entry.fired = True
            if 0 in returned and level == 1:
                return returned[0]  # the actor's code had returned: too late, dropped
            raise
        except _CANCELLED as exc:
            # An async def actor's coroutine cancelled because of this abort
            # (by dramatiq or by a delivery hook) ends the message as aborted.
            # Any Abort still pending in this thread is cleared by _leave.
            if entry.delivered:
                raise abort_for(entry) from exc
            raise
        finally:
            # Delivery is held off while this frame is the thread's innermost,
            # but an Abort raised in the last instant can still fire here, even
            # at the first instruction of _leave; it came after the actor's code
            # had finished, so it is dropped and _leave is retried.
            # Another exception raised into this thread (dramatiq's time limit,
            # its shutdown notification) may fire there too: _leave is retried
            # and that exception raised once it is done.
            late = None
            other: BaseException | None = None
            while level:
                try:
                    registry._leave(entry, level)
                    break
                except Abort as exc:
                    entry.fired = True
                    late = exc
                except BaseException as exc:
                    if other is not None:
                        raise  # _leave itself keeps failing: don't spin
                    other = exc
            if token is not None:
                _CURRENT_ENTRY.reset(token)
            if other is not None:
                raise other
            if late is not None and level > 1:
                raise late  # a nested call: the calling actor code is still running

    def __repr__(self) -> str:
        return f"<abortable {self._fn!r}>"


#: How a cancelled coroutine surfaces in the thread that waits for it.
_CANCELLED = (asyncio.CancelledError, concurrent.futures.CancelledError)

#: Code the thread runs between the guard and the actor's function.
_TRANSIT_CODES = frozenset(
    {
        _Guarded.__call__.__code__,
        Registry._enter.__code__,
        Registry._leave.__code__,
        # A nested actor call passes through dramatiq's Actor.__call__, whose
        # finally clause breaks if an exception lands before its try.
        dramatiq.Actor.__call__.__code__,
    }
)
#: Seconds before a delivery put off by the guard is tried again, first and at most.
_RETRY_FIRST = 0.0005
_RETRY_MAX = 0.05


class DeadlineTimer:
    """One thread that delivers every graceful abort at its deadline."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, _Running]] = []
        self._seq = itertools.count()
        self._stop: threading.Event | None = (
            None  # one per thread: a new start never revives an old one
        )
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the timer thread (once)."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stop,), name="dramatiq-abort-timer", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the timer thread and wait for it."""
        with self._cond:
            if self._stop is not None:
                self._stop.set()
            thread, self._thread = self._thread, None
            self._heap.clear()
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def schedule(self, entry: _Running) -> None:
        """Deliver ``entry``'s abort at its deadline."""
        if entry.deadline is not None:
            self._push(entry.deadline, entry)

    def _push(self, when: float, entry: _Running) -> None:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), entry))
            if self._heap[0][2] is entry:
                self._cond.notify()

    def _run(self, stop: threading.Event) -> None:
        while True:
            with self._cond:
                while not stop.is_set():
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    wait = self._heap[0][0] - now if self._heap else None
                    self._cond.wait(None if wait is None else min(wait, threading.TIMEOUT_MAX))
                if stop.is_set():
                    return
                due = []
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap)[2])
            for entry in due:
                if self._registry.deliver(entry) == RETRY:
                    delay = min(_RETRY_MAX, _RETRY_FIRST * 2 ** min(entry.retries, 10))
                    self._push(time.monotonic() + delay, entry)


def abort_for(entry: _Running) -> Abort:
    """The ``Abort`` to raise in ``entry``'s message, with its request's reason."""
    request = entry.request
    reason = request.reason if request is not None else None
    return Abort(
        describe(entry.message_id, "aborted", reason), reason=reason, message_id=entry.message_id
    )


#: The process-wide registry: thread ids and message ids are unique per process.
REGISTRY = Registry()


def _describe_current() -> tuple[str | None, str | None]:
    """(message id, reason) of the message the calling thread runs; no locks taken."""
    entry = REGISTRY.current()
    if entry is None:
        return None, None
    request = entry.request
    return entry.message_id, request.reason if request is not None else None


exceptions._describe_current = _describe_current
