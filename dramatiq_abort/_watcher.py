"""The worker's background side: listen for requests and deliver them on time.

One watcher runs per ``Abortable`` in a worker process.  With a backend
that can push (:meth:`EventBackend.subscribe`), a listener thread waits on
the subscription and hands every request to the registry at once; after a
lost connection it reconnects with backoff and re-checks the messages
that are running, so nothing announced during the outage is missed.  With
a plain 1.x backend it falls back to :meth:`EventBackend.wait_many`.  A
second thread, the :class:`DeadlineTimer`, raises graceful aborts at their
deadline.
"""

from __future__ import annotations

import threading

from dramatiq.logging import get_logger

from ._registry import ENTERED, STARTED, DeadlineTimer, Registry
from ._request import KEY_PREFIX, AbortMode, AbortRequest, key_for
from .events import Event, EventBackend, Subscription

#: Seconds a subscription read blocks; bounds how long stopping takes.
_READ_TIMEOUT = 0.25
#: Milliseconds the fallback loop waits per ``wait_many`` call.
_FALLBACK_WAIT_MS = 1000
_MIN_BACKOFF = 0.1
_MAX_BACKOFF = 1.0


class Watcher:
    """Listener and deadline threads of one ``Abortable`` in one process."""

    def __init__(self, backend: EventBackend, registry: Registry) -> None:
        self._backend = backend
        self._registry = registry
        self._timer = DeadlineTimer(registry)
        self._logger = get_logger(__name__, type(self))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Whether the backend answered last time; the hot path skips it when not.
        self.healthy = True

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

    def handle(self, events: list[Event], *, resync: bool = False) -> None:
        """Apply announced (or, on ``resync``, re-read) events to the messages running here."""
        for event in events:
            if not event.key.startswith(KEY_PREFIX):
                continue
            if self._registry.get(event.key[len(KEY_PREFIX) :]) is None:
                continue  # the common case: not ours; skip decoding
            request = AbortRequest.from_event(event)
            if request is None:
                continue
            if resync and request.mode is AbortMode.CANCEL:
                entry = self._registry.get(request.message_id)
                if entry is not None and entry.state in (STARTED, ENTERED) and not entry.checked:
                    self._logger.warning(
                        "Message %s started while the event backend was unreachable and "
                        "was cancelled meanwhile; a cancel never interrupts a running "
                        "message, so it keeps running.",
                        request.message_id,
                    )
            entry = self._registry.request(request, live=not resync)
            if entry is not None:
                self._timer.schedule(entry)

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
                self.healthy = True
                self.resync()
                if failures:
                    self._logger.info("Event backend is reachable again; aborts resume.")
                failures, backoff = 0, _MIN_BACKOFF
                while not stop.is_set():
                    self.handle(subscription.get(_READ_TIMEOUT))
            except Exception as exc:
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
