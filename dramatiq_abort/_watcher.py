"""The worker's background side: listen for requests and deliver them on time.

One watcher runs per ``Abortable`` in a worker process.  With a backend
that can push (:meth:`EventBackend.subscribe`), a listener thread waits on
the subscription and hands every request to the registry at once; after a
lost connection it reconnects with backoff and re-checks the messages
that are running, so nothing announced during the outage is missed.  With
a plain 1.x backend it falls back to :meth:`EventBackend.wait_many`.  A
second thread, the :class:`DeadlineTimer`, raises graceful aborts at their
deadline.

The watcher also vouches for the worker's look-ahead notes (see
``_lookahead``): its *generation* is even while a subscription is live and
changes whenever one is lost or made, and while messages start or run it
pings a silent subscription, so a dead connection that was never closed
is noticed within seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from dramatiq.logging import get_logger

from ._lookahead import Lookahead
from ._outcomes import Outcomes
from ._registry import (
    ENTERED,
    RECEIVED,
    STARTED,
    TOO_LATE,
    DeadlineTimer,
    Registry,
    _Running,
)
from ._request import KEY_PREFIX, AbortMode, AbortRequest, key_for
from .events import Event, EventBackend, Subscription

#: Seconds a subscription read blocks; bounds how long stopping takes.
_READ_TIMEOUT = 0.25
#: Milliseconds the fallback loop waits per ``wait_many`` call.
_FALLBACK_WAIT_MS = 1000
_MIN_BACKOFF = 0.1
_MAX_BACKOFF = 1.0
#: Seconds of silence on a busy worker's subscription before the watcher pings it.
_PING_AFTER = 1.0
#: Seconds of silence before the watcher pings a subscription while messages run here.
_PING_RUNNING_AFTER = 5.0
#: Seconds of silence after which look-ahead notes are not trusted.
_STALE = 2.5
#: Seconds a ping may go unanswered before the subscription counts as lost.
_PONG_TIMEOUT = 10.0
#: A worker counts as busy this many seconds after a message last wanted a note.
_BUSY_FOR = 2.0


class Watcher:
    """Listener and deadline threads of one ``Abortable`` in one process."""

    def __init__(
        self,
        backend: EventBackend,
        registry: Registry,
        lookahead: Lookahead | None = None,
        outcomes: Outcomes | None = None,
        delayed: Callable[[str], None] | None = None,
    ) -> None:
        self._backend = backend
        self._registry = registry
        self._lookahead = lookahead if lookahead is not None else Lookahead()
        self._outcomes = outcomes if outcomes is not None else Outcomes(backend)
        #: Called with the id of each announced request for a message not
        #: running here (it may wait in this worker's delay queue).
        self._delayed = delayed
        self._timer = DeadlineTimer(registry)
        self._logger = get_logger(__name__, type(self))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Whether the backend answered last time; the hot path skips it when not.
        self.healthy = True
        #: Even while a subscription is live; bumped when one is made or lost.
        self.generation = 1
        #: ``time.monotonic()`` of the last thing read from the subscription.
        self.heard_at = float("-inf")
        self._pingable = False
        self._pinged_at: float | None = None
        #: The live subscription, when it can tell what waits unread on it.
        self._subscription: Subscription | None = None
        #: True while the watcher reads and handles announcements.
        self._handling = False

    @property
    def running(self) -> bool:
        """Whether the listener thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> None:
        """Start both threads; calling it again while they run does nothing."""
        with self._lock:
            if self.running:
                return
            self._stop = threading.Event()
            self._timer.start()
            self._thread = threading.Thread(
                target=self._listen, args=(self._stop,), name="dramatiq-abort-watcher", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both threads and wait for them.

        The lock is held throughout, so a concurrent :meth:`start` waits and
        then starts both threads afresh, instead of seeing a timer that is
        about to stop.
        """
        with self._lock:
            self._stop.set()
            thread, self._thread = self._thread, None
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)
            self._timer.stop(timeout)

    def redeliver(self, entry: _Running) -> None:
        """Deliver ``entry``'s abort again at its deadline (see ``Registry.swallowed``)."""
        self._timer.schedule(entry)

    def live_generation(self) -> int | None:
        """The generation look-ahead notes may be trusted in now, or ``None``.

        ``None`` while no subscription is live, and while a pingable one has
        been silent longer than ``_STALE`` (pings keep a busy one talking).
        """
        generation = self.generation
        if generation % 2:
            return None
        if self._pingable and time.monotonic() - self.heard_at > _STALE:
            return None
        return generation

    def settled(self) -> bool:
        """Whether every announcement that reached this process has been handled.

        ``False`` while the watcher handles one, while one waits unread on
        the subscription, and with a subscription that cannot tell (no
        ``pending()``).  The order of the two looks matters: anything read
        before the ``pending()`` look was read inside a handling span, so
        the second look at ``_handling`` sees that span or its end.
        """
        subscription = self._subscription
        if subscription is None or self._handling:
            return False
        try:
            if subscription.pending():  # type: ignore[attr-defined]
                return False
        except Exception:
            return False
        return not self._handling

    def _drain(self, subscription: Subscription) -> None:
        """Read and handle everything that has arrived, flagged as handling throughout."""
        self._handling = True
        try:
            more = True
            while more:
                events, more = subscription.drain()  # type: ignore[attr-defined]
                self.handle(events)
        except BaseException:
            self._went_dark()  # before the flag drops: what was read may be half handled
            raise
        finally:
            self._handling = False

    def _went_live(self, subscription: Subscription) -> None:
        settling = all(
            callable(getattr(subscription, name, None)) for name in ("ready", "drain", "pending")
        )
        self._subscription = subscription if settling else None
        self._pingable = callable(getattr(subscription, "ping", None))
        self.heard_at = time.monotonic()
        self._pinged_at = None
        if self.generation % 2:
            self.generation += 1

    def _went_dark(self) -> None:
        self._subscription = None
        if not self.generation % 2:
            self.generation += 1

    def _keep_alive(self, subscription: Subscription) -> None:
        """Ping a silent subscription while it matters; fail one that stopped answering.

        It matters while messages start (their notes need a live
        subscription: ping after 1 s of silence) and while messages run
        (their aborts need it: after 5 s).  An idle worker sends nothing.
        """
        heard = getattr(subscription, "heard_at", None)
        if heard is None:
            return
        self.heard_at = heard
        now = time.monotonic()
        if self._pinged_at is not None:
            if heard >= self._pinged_at:
                self._pinged_at = None
            elif now - self._pinged_at > _PONG_TIMEOUT:
                msg = f"no reply to PING on the subscription within {_PONG_TIMEOUT:g} s"
                raise ConnectionError(msg)
            return
        silent = now - heard
        busy = now - self._lookahead.wanted_at <= _BUSY_FOR
        if (busy and silent >= _PING_AFTER) or (silent >= _PING_RUNNING_AFTER and self._registry):
            self._pinged_at = now
            subscription.ping()  # type: ignore[attr-defined]

    def handle(self, events: list[Event], *, resync: bool = False) -> None:
        """Apply announced (or, on ``resync``, re-read) events to the messages running here."""
        lookahead = self._lookahead
        registry = self._registry
        for event in events:
            if not event.key.startswith(KEY_PREFIX):
                continue
            message_id = event.key[len(KEY_PREFIX) :]
            noted = lookahead.noted(message_id)
            running = registry.get(message_id)
            if not noted and running is None:
                if self._delayed is not None:
                    self._delayed(message_id)  # after a reconnect too: it may have been missed
                finished = None if resync else registry.finished(message_id)
                if finished is not None:
                    late = AbortRequest.from_event(event)
                    if late is not None:
                        self._outcomes.too_late(late, *finished, running=False)
                continue  # the common case: not ours; skip decoding
            request = AbortRequest.from_event(event)
            if request is None:
                continue
            if noted:
                lookahead.offer(request)
                self._logger.debug(
                    "Noted a request (%s) for message %s, waiting in the work queue.",
                    request.mode.value,
                    message_id,
                )
            if resync and request.mode is AbortMode.CANCEL:
                entry = self._registry.get(request.message_id)
                if entry is not None and entry.state in (STARTED, ENTERED) and not entry.checked:
                    self._logger.warning(
                        "Message %s started while the event backend was unreachable and "
                        "was cancelled meanwhile; a cancel never interrupts a running "
                        "message, so it keeps running.",
                        request.message_id,
                    )
            entry, verdict = registry.request(request, live=not resync)
            if entry is not None:
                self._timer.schedule(entry)
            if running is not None and verdict == RECEIVED:
                self._outcomes.received(
                    message_id,
                    request,
                    running.actor_name,
                    running.queue_name,
                    registry.remaining_ms(running) or 0.0,
                    running.received_at,
                    live=not resync,
                )
            elif running is not None and verdict == TOO_LATE:  # a cancel of a running message
                self._outcomes.too_late(
                    request, running.actor_name, running.queue_name, running=True
                )

    def resync(self) -> None:
        """Look up requests for every registered message in one backend call."""
        ids = self._registry.running_ids()
        if ids:
            self.handle(self._backend.poll_many([key_for(i) for i in ids]), resync=True)

    def _listen(self, stop: threading.Event) -> None:
        backoff = _MIN_BACKOFF
        failures = 0
        while not stop.is_set():
            subscription: Subscription | None = None
            try:
                subscription = self._backend.subscribe()
                if subscription is None:
                    self._fallback(stop)
                    return
                # Healthy first: a message starting from now on asks the backend
                # itself; the resync covers those that started before.
                self._went_live(subscription)
                self.healthy = True
                self.resync()
                if failures:
                    self._logger.info("Event backend is reachable again; aborts resume.")
                failures, backoff = 0, _MIN_BACKOFF
                settling = self._subscription is not None
                while not stop.is_set():
                    if not settling:
                        self.handle(subscription.get(_READ_TIMEOUT))
                    elif subscription.ready(_READ_TIMEOUT):  # type: ignore[attr-defined]
                        self._drain(subscription)
                    if self._pingable:
                        self._keep_alive(subscription)
            except Exception as exc:
                self._went_dark()
                self.healthy = False
                failures += 1
                if failures == 1:
                    self._logger.warning(
                        "Lost the event backend (%s: %s); retrying with backoff. "
                        "Messages keep running; aborts resume when it is back.",
                        type(exc).__name__,
                        exc,
                    )
                else:
                    self._logger.debug("Event backend still unreachable: %s", exc)
            finally:
                self._went_dark()
                if subscription is not None:
                    try:
                        subscription.close()
                    except Exception:
                        self._logger.debug("Error while closing a subscription.", exc_info=True)
            stop.wait(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    def _fallback(self, stop: threading.Event) -> None:
        """Poll a backend that cannot push, as dramatiq-abort 1.x did."""
        handled: set[str] = set()  # a backend may return a handled event forever
        while not stop.is_set():
            running = self._registry.running_ids()
            handled.intersection_update(running)
            ids = [i for i in running if i not in handled]
            if not ids:
                stop.wait(_READ_TIMEOUT)
                continue
            try:
                event = self._backend.wait_many([key_for(i) for i in ids], _FALLBACK_WAIT_MS)
                self.healthy = True
            except Exception as exc:
                self.healthy = False
                self._logger.warning("Event backend wait_many failed: %s", exc)
                stop.wait(_MAX_BACKOFF)
                continue
            if event is not None:
                handled.add(event.key[len(KEY_PREFIX) :])
                self.handle([event])
