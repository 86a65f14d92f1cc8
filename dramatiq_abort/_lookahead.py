"""Checks for the messages waiting in a worker's prefetch buffer, many per round trip.

A worker must know, before a message starts, whether it has a request.
Asking the backend as each message starts costs one round trip per
message, which is most of the middleware's cost on short messages.
Instead, when a worker thread has to ask for the message it is about to
start, it also asks for every message waiting in the worker's work queue
(already taken from the broker, not started yet) and keeps a *note* for
each: "no request as of this read", or the request it found.

A note stays right only while the watcher's subscription is live: from the
read on, any new request for that message is announced, and the watcher
adds it to the note.  So each note carries the watcher's *generation*,
which changes whenever the subscription is lost or made again; a note from
another generation, or read while the subscription has been silent too
long (see ``Watcher.live_generation``), is ignored and the message is
checked on its own.  Dropping a note is always safe for the same reason.

A note is reserved *before* the backend is read, so an announcement the
watcher handles while the read is on its way is not lost; it counts only
once the read is back (``complete``), so a message that starts on another
thread meanwhile is checked on its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable
from typing import Any

from ._request import AbortMode, AbortRequest

#: Most notes kept at once; past it, notes for messages no longer waiting are dropped.
_LIMIT = 10_000
#: Most messages read ahead in one round trip.
_BATCH = 500


class _Note:
    """What is known of a waiting message: no request, or the one seen."""

    __slots__ = ("generation", "message_id", "read", "request")

    def __init__(self, message_id: str, generation: int) -> None:
        self.message_id = message_id
        self.generation = generation
        #: Whether the backend's answer is in; until then the note says nothing.
        self.read = False
        self.request: AbortRequest | None = None


class Lookahead:
    """Notes on the messages in one worker's work queue."""

    def __init__(self, limit: int = _LIMIT, batch: int = _BATCH) -> None:
        self._lock = threading.Lock()
        self._notes: dict[str, _Note] = {}
        self._queue: Any = None
        self._limit = limit
        self.batch = batch
        #: ``time.monotonic()`` of the last message that wanted a note; the
        #: watcher keeps the subscription's liveness known while this is recent.
        self.wanted_at = float("-inf")

    def attach(self, worker: object) -> None:
        """Read ahead in ``worker``'s work queue (a ``dramatiq.Worker``'s ``work_queue``)."""
        queue = getattr(worker, "work_queue", None)
        # A queue.PriorityQueue, or under gevent gevent's: no mutex, and none
        # needed, since no other greenlet runs while one copies the heap.
        usable = queue is not None and isinstance(getattr(queue, "queue", None), list)
        with self._lock:
            self._queue = queue if usable else None
            self._notes.clear()

    def detach(self) -> None:
        """Stop reading ahead and forget every note (the worker has stopped)."""
        with self._lock:
            self._queue = None
            self._notes.clear()

    def __len__(self) -> int:
        """Return the number of notes held."""
        return len(self._notes)

    def take(self, message_id: str, generation: int) -> tuple[bool, AbortRequest | None]:
        """Remove the note on ``message_id``.

        Returns:
            ``(True, request or None)`` when the note is from ``generation``
            and its read is done; ``(False, None)`` otherwise: no note, one
            from another generation, or one whose read is still on its way.

        """
        with self._lock:
            note = self._notes.pop(message_id, None)
        if note is None or note.generation != generation or not note.read:
            return False, None
        return True, note.request

    def waiting(self) -> list[Any]:
        """The messages in the work queue now, in no particular order."""
        queue = self._queue
        if queue is None:
            return []
        mutex = getattr(queue, "mutex", None)
        if mutex is None:
            items = list(queue.queue)
        else:
            with mutex:
                items = list(queue.queue)
        return [message for item in items if (message := getattr(item, "message", None))]

    def reserve(
        self, message_ids: Iterable[str], generation: int, waiting: Collection[str] = ()
    ) -> list[_Note]:
        """Note each of ``message_ids`` not noted in ``generation`` yet, up to the batch size.

        Args:
            message_ids: The messages to read ahead.
            generation: The watcher's live generation.
            waiting: Every message in the work queue now: when the notes
                reach their limit, the notes of other messages are dropped
                (they left the queue without a take here: skipped by an
                earlier middleware, started while the backend was down),
                but never one whose read is still on its way.

        Returns:
            The notes made now; the caller reads their messages from the
            backend, then calls :meth:`complete` (or :meth:`drop`) with them.

        """
        wanted = list(message_ids)
        with self._lock:
            if len(self._notes) + len(wanted) > self._limit:
                keep = set(waiting).union(wanted)
                self._notes = {k: v for k, v in self._notes.items() if k in keep or not v.read}
            reserved: list[_Note] = []
            for message_id in wanted:
                if len(reserved) >= self.batch or len(self._notes) >= self._limit:
                    break
                note = self._notes.get(message_id)
                if note is None or note.generation != generation:
                    note = self._notes[message_id] = _Note(message_id, generation)
                    reserved.append(note)
        return reserved

    def complete(self, notes: Iterable[_Note]) -> None:
        """Mark these notes read: the backend answered (their requests were offered first).

        Only a note still held counts: one replaced since (by a later
        reservation) waits for its own read.
        """
        with self._lock:
            for note in notes:
                if self._notes.get(note.message_id) is note:
                    note.read = True

    def drop(self, notes: Iterable[_Note]) -> None:
        """Forget these notes (their read failed), unless replaced since."""
        with self._lock:
            for note in notes:
                if self._notes.get(note.message_id) is note:
                    del self._notes[note.message_id]

    def noted(self, message_id: str, generation: int | None = None) -> bool:
        """Whether a note on ``message_id`` is held, of ``generation`` if given (no lock taken)."""
        note = self._notes.get(message_id)
        return note is not None and (generation is None or note.generation == generation)

    def offer(self, request: AbortRequest) -> None:
        """Put a request, read back or just announced, in its message's note if there is one."""
        with self._lock:
            note = self._notes.get(request.message_id)
            if note is not None and (note.request is None or note.request.mode is AbortMode.CANCEL):
                note.request = request

    def want(self) -> None:
        """Record that a message wanted a note just now."""
        self.wanted_at = time.monotonic()
