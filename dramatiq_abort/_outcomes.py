"""The worker's record of what became of each abort: status writes, log lines, metrics.

Every transition a worker sees (received, skipped, interrupted, too late)
is logged once here, counted in the metrics (``_metrics``), and queued for
the event backend's status record.  A writer thread sends the queue in
batches (one pipelined round trip each), so neither the watcher, which
delivers aborts, nor a worker thread waits on it.  When the backend is
down, updates wait (at most ``_MAX_PENDING``, oldest dropped first) and are
sent once it is back.
"""

from __future__ import annotations

import atexit
import collections
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from dramatiq.logging import get_logger

from . import _metrics
from ._request import AbortMode, AbortRequest
from ._status import INTERRUPTED, RECEIVED, SKIPPED, TOO_LATE, update
from .events import EventBackend, StatusUpdate
from .exceptions import Abort

#: Most updates kept while the backend is unreachable.
_MAX_PENDING = 10_000
#: Most updates sent in one round trip.
_BATCH = 500
#: Seconds between retries while the backend fails: the first, and at most.
_RETRY_FIRST = 0.1
_RETRY_MAX = 2.0
#: Seconds the writer waits for more when it has only tracking to write.
_TRACK_LINGER = 0.02
#: Seconds between two warnings about failing writes.
_WARN_EVERY = 30.0


@dataclass(frozen=True)
class _Extension:
    """Keep the request of a message waiting in this worker's delay queue until ``until_ms``."""

    message_id: str
    until_ms: int


@dataclass(frozen=True)
class _Track:
    """A message of an actor sent (``add``) or done for good (``remove``), for ``abort_actor``."""

    change: str
    actor_name: str
    message_id: str
    start_ms: int


def _now_ms() -> int:
    return round(time.time() * 1000)


def _ms(stamp: float | None) -> int:
    """A ``time.time()`` stamp as whole ms since the epoch; now if ``None``."""
    return _now_ms() if stamp is None else round(stamp * 1000)


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Outcomes:
    """Records the outcomes one ``Abortable`` sees in this process."""

    def __init__(self, backend: EventBackend) -> None:
        self._backend = backend
        #: Whether the backend stores statuses (else only logs and metrics).
        self.stored = type(backend).update_status is not EventBackend.update_status
        #: Whether it can keep a request alive longer (``EventBackend.extend``).
        self.extends = type(backend).extend is not EventBackend.extend
        #: Whether it tracks the messages of actors (``EventBackend.track``).
        self.tracks = type(backend).track is not EventBackend.track
        self._logger = get_logger(__name__, type(self))
        self._cond = threading.Condition(threading.Lock())
        self._pending: collections.deque[_Item] = collections.deque()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._at_exit = False
        self._dropped = 0
        self._last_warning = 0.0

    # -- transitions ---------------------------------------------------------

    def received(
        self,
        message_id: str,
        request: AbortRequest,
        actor: str,
        queue: str,
        grace_ms: float,
        received_at: float | None,
        *,
        live: bool = True,
    ) -> None:
        """The running message got the request (at ``received_at``); ``Abort`` in ``grace_ms``."""
        self._logger.info(
            "Message %s received an abort request%s; Abort in %.0f ms.",
            message_id,
            _because(request.reason),
            grace_ms,
        )
        _metrics.outcome(queue, actor, request.mode, RECEIVED)
        received_ms = _ms(received_at)
        if live and request.requested_at is not None:
            # Not for a request read back after a reconnect: its (merged,
            # earliest) stamp would not measure a delivery.
            _metrics.delivered(queue, actor, max(0.0, received_ms - request.requested_at))
        self._put(
            update(
                RECEIVED,
                message_id,
                received_at=received_ms,
                actor_name=actor,
                queue_name=queue,
                worker=_worker(),
            )
        )

    def skipped(
        self, message_id: str, request: AbortRequest | None, actor: str, queue: str
    ) -> None:
        """The message had a request when it came up, so it never started."""
        mode = request.mode if request is not None else AbortMode.ABORT
        self._logger.info(
            "Skipping message %s: it was %s before it started%s.",
            message_id,
            "cancelled" if mode is AbortMode.CANCEL else "aborted",
            _because(request.reason if request is not None else None),
        )
        _metrics.outcome(queue, actor, mode, SKIPPED)
        self._put(
            update(
                SKIPPED,
                message_id,
                ended_at=_now_ms(),
                actor_name=actor,
                queue_name=queue,
                worker=_worker(),
            )
        )

    def ended(
        self,
        message_id: str,
        request: AbortRequest,
        actor: str,
        queue: str,
        exception: BaseException | None,
        received_at: float | None,
    ) -> None:
        """A message that had received a request (at ``received_at``) has ended."""
        if isinstance(exception, Abort):
            ended_with = "Abort"
            self._logger.info(
                "Message %s was aborted while running%s.", message_id, _because(request.reason)
            )
        else:
            ended_with = "returned" if exception is None else type(exception).__name__
            self._logger.info(
                "Message %s ended (%s) during the grace of its abort%s.",
                message_id,
                ended_with,
                _because(request.reason),
            )
        _metrics.outcome(queue, actor, request.mode, INTERRUPTED)
        self._put(
            update(
                INTERRUPTED,
                message_id,
                received_at=_ms(received_at),
                ended_at=_now_ms(),
                ended_with=ended_with,
                actor_name=actor,
                queue_name=queue,
                worker=_worker(),
            )
        )

    def too_late(self, request: AbortRequest, actor: str, queue: str, running: bool) -> None:
        """The request reached a message that had finished (or, a cancel, one running)."""
        self._logger.info(
            "The %s of message %s came too late: it %s%s.",
            request.mode.value,
            request.message_id,
            "was already running" if running else "had finished",
            _because(request.reason),
        )
        _metrics.outcome(queue, actor, request.mode, TOO_LATE)
        self._put(
            update(
                TOO_LATE,
                request.message_id,
                ended_at=_now_ms(),
                actor_name=actor or None,
                queue_name=queue or None,
                worker=_worker(),
            )
        )

    def extend(self, message_id: str, until_ms: float) -> None:
        """Keep the request of a message in this worker's delay queue, if any, until then."""
        if self.extends:
            self._put(_Extension(message_id, round(until_ms)))

    def track(self, change: str, actor_name: str, message_id: str, start_ms: float) -> None:
        """Record that a message of ``actor_name`` was sent (``add``) or is done (``remove``)."""
        if self.tracks:
            self._put(_Track(change, actor_name, message_id, round(start_ms)))

    # -- the writer ----------------------------------------------------------

    def _put(self, change: _Item) -> None:
        if isinstance(change, StatusUpdate) and not self.stored:
            return
        dropped = False
        with self._cond:
            if len(self._pending) >= _MAX_PENDING:
                self._pending.popleft()
                self._dropped += 1
                dropped = True
            self._pending.append(change)
            if self._thread is None or not self._thread.is_alive():
                # One stop event per thread: a new writer never revives an old one
                # that stop() gave up waiting for.
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._run,
                    args=(self._stop,),
                    name="dramatiq-abort-outcomes",
                    daemon=True,
                )
                self._thread.start()
                if not self._at_exit:
                    # A client that sends and exits: what it tracked is written first.
                    self._at_exit = True
                    atexit.register(self.flush)
            if len(self._pending) == 1:
                self._cond.notify()  # the writer waits only on an empty queue
        if dropped:
            self._warn(f"more than {_MAX_PENDING} waiting to be written")

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait up to ``timeout`` seconds for every queued update to be written."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending and self._thread is not None and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return not self._pending

    def stop(self, timeout: float = 2.0) -> None:
        """Write what is queued (for up to ``timeout`` seconds), then stop the writer."""
        self.flush(timeout)
        with self._cond:
            self._stop.set()
            thread, self._thread = self._thread, None
            lost = len(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        if lost:
            self._logger.warning(
                "Stopping with %d abort status updates not written (the event backend "
                "did not take them within %g s).",
                lost,
                timeout,
            )
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self, stop: threading.Event) -> None:
        pause = _RETRY_FIRST
        while True:
            with self._cond:
                while not self._pending and not stop.is_set():
                    self._cond.wait()
                if stop.is_set():
                    return
                if len(self._pending) < _BATCH and all(
                    isinstance(item, _Track) for item in self._pending
                ):
                    # Tracking is not waited for: gather more per round trip
                    # (a round trip per message doubled a no-op's CPU cost).
                    self._cond.wait(_TRACK_LINGER)
                batch = [self._pending[i] for i in range(min(_BATCH, len(self._pending)))]
            try:
                self._write(batch)
            except Exception as exc:
                self._warn(exc)
                with self._cond:
                    self._cond.wait(pause)
                pause = min(pause * 2, _RETRY_MAX)
                continue
            pause = _RETRY_FIRST
            with self._cond:
                # Written: drop them, unless the overflow already did.
                for change in batch:
                    if self._pending and self._pending[0] is change:
                        self._pending.popleft()
                self._cond.notify_all()

    def _write(self, batch: list[_Item]) -> None:
        """Write ``batch``; an update the backend refuses as such is dropped, not retried."""
        try:
            updates = [c for c in batch if isinstance(c, StatusUpdate)]
            if updates:
                self._backend.update_status(updates)
            extensions = [(c.message_id, c.until_ms) for c in batch if isinstance(c, _Extension)]
            if extensions:
                self._backend.extend(extensions)
            tracking = [
                (c.change, c.actor_name, c.message_id, c.start_ms)
                for c in batch
                if isinstance(c, _Track)
            ]
            if tracking:
                self._backend.track(tracking)
        except (TypeError, ValueError) as exc:  # UnicodeError too: a bad update, not an outage
            if len(batch) == 1:
                self._logger.warning(
                    "Dropping an abort status update the event backend refused: %r (%s: %s)",
                    batch[0],
                    type(exc).__name__,
                    exc,
                )
                return
            for change in batch:  # find the bad one; the rest go through
                self._write([change])

    def _warn(self, cause: object) -> None:
        """Warn about failing writes or dropped updates, at most every ``_WARN_EVERY`` s."""
        now = time.monotonic()
        if now - self._last_warning < _WARN_EVERY:
            return
        self._last_warning = now
        if isinstance(cause, Exception):
            cause = f"{type(cause).__name__}: {cause}"
        self._logger.warning(
            "Could not record abort outcomes in the event backend (%s); "
            "%d queued, %d dropped so far (oldest first).",
            cause,
            len(self._pending),
            self._dropped,
        )


#: What the writer sends.
_Item = StatusUpdate | _Extension | _Track


def _because(reason: Any) -> str:
    return f" (reason: {reason})" if reason else ""
