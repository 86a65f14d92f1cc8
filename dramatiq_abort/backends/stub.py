"""The in-memory event backend: the embedded default, for one process."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable
from typing import Any

from .._merge import merge_params
from .._request import Duration, key_for, to_ms
from .._status import apply_update, check_update, request_update
from ..events import Event, EventBackend, StatusUpdate, Subscription
from ._checks import (
    check_events,
    check_ids,
    check_key,
    check_keys,
    check_pairs,
    check_timeout,
    check_tracking,
    check_ttl,
)

__all__ = ["StubBackend"]

#: Seconds between two sweeps of expired events.
_SWEEP_EVERY = 1.0
#: How long status records are kept by default: one day, in ms.
DEFAULT_STATUS_TTL = 86_400_000
#: Seconds a removed (done) id is remembered, so a late add of it is ignored.
_DONE_FOR_S = 3600.0
#: How long a tracked message is remembered at most by default: 7 days, in ms.
DEFAULT_TRACK_TTL = 7 * 86_400_000


class _StubSubscription:
    """A queue that :meth:`StubBackend.notify` feeds."""

    def __init__(self, backend: StubBackend) -> None:
        self._backend = backend
        self.queue: queue.SimpleQueue[list[Event]] = queue.SimpleQueue()

    def get(self, timeout: float) -> list[Event]:
        try:
            events = list(self.queue.get(timeout=timeout))
        except queue.Empty:
            return []
        while True:
            try:
                events.extend(self.queue.get_nowait())
            except queue.Empty:
                return events

    def close(self) -> None:
        self._backend._unsubscribe(self)


class StubBackend(EventBackend):
    """An in-memory event backend for one process.

    It is the embedded default: the client and the workers must share the
    process, as with dramatiq's ``StubBroker``.  Events expire after their
    TTL, polling does not consume them, and workers are told at once.

    Args:
        status_ttl: How long (ms or ``timedelta``) the status of an abort
            is kept after its last change; a request's own status lives at
            least its ``abort_ttl`` longer.  One day by default.
        track_ttl: How long a tracked message is remembered at most, as in
            ``RedisBackend``.

    Example:
        >>> from dramatiq_abort import Event, backends
        >>> backend = backends.StubBackend()
        >>> backend.notify([Event("abort:1", {"mode": "cancel"})], ttl=1000)
        >>> backend.poll("abort:1")
        Event(key='abort:1', params={'mode': 'cancel'})

    """

    def __init__(
        self, *, status_ttl: Duration = DEFAULT_STATUS_TTL, track_ttl: Duration = DEFAULT_TRACK_TTL
    ) -> None:
        self.status_ttl = to_ms(status_ttl, "status_ttl", allow_zero=False)
        self.track_ttl = to_ms(track_ttl, "track_ttl", allow_zero=False)
        self._tracked: dict[str, dict[str, int]] = {}
        self._done: dict[str, dict[str, float]] = {}  # actor -> id -> when removed
        self._cond = threading.Condition(threading.Lock())
        self._events: dict[str, tuple[float, Event]] = {}
        self._statuses: dict[str, tuple[float, dict[str, Any]]] = {}
        self._subscriptions: list[_StubSubscription] = []
        self._next_sweep = time.monotonic() + _SWEEP_EVERY

    def __len__(self) -> int:
        """Return the number of live events."""
        with self._cond:
            self._sweep(time.monotonic(), force=True)
            return len(self._events)

    def notify(self, events: Iterable[Event], ttl: int) -> None:
        """Store ``events`` for ``ttl`` milliseconds and announce them.

        An event stored under the same key is combined with the new one (the
        stronger request wins) and lives until the later of both expiries.
        """
        check_ttl(ttl)
        self.notify_many([(event, ttl) for event in check_events(events)])

    def notify_many(self, batch: Iterable[tuple[Event, int]]) -> None:
        """Store each event for its own TTL (ms), as :meth:`notify` does; announce them all."""
        items = check_pairs(batch)
        now = time.monotonic()
        with self._cond:
            for event, ttl in items:
                change = request_update(event, ttl)
                if change is not None:
                    self._update_status(change, ttl + self.status_ttl, now)
            for event, ttl in items:
                expires = now + ttl / 1000
                stored = self._events.get(event.key)
                if stored is not None and stored[0] > now:
                    params = merge_params(stored[1].params, event.params)
                    merged = event if params is event.params else Event(event.key, params)
                    self._events[event.key] = (max(expires, stored[0]), merged)
                else:
                    self._events[event.key] = (expires, event)
            subscriptions = list(self._subscriptions)
            self._sweep(now)
            self._cond.notify_all()
        batch_events = [event for event, _ in items]
        for subscription in subscriptions:
            subscription.queue.put(batch_events)

    def poll(self, key: str) -> Event | None:
        """Return the live event stored under ``key``, leaving it in place."""
        check_key(key)
        with self._cond:
            return self._live(key, time.monotonic())

    def poll_many(self, keys: Iterable[str]) -> list[Event]:
        """Return the live events among ``keys``."""
        wanted = check_keys(keys)
        now = time.monotonic()
        with self._cond:
            found = (self._live(key, now) for key in wanted)
            return [event for event in found if event is not None]

    def wait_many(self, keys: Iterable[str], timeout: int) -> Event | None:
        """Wait up to ``timeout`` milliseconds for one of ``keys``."""
        wanted = check_keys(keys)
        deadline = time.monotonic() + check_timeout(timeout)
        with self._cond:
            while True:
                now = time.monotonic()
                for key in wanted:
                    event = self._live(key, now)
                    if event is not None:
                        return event
                if now >= deadline:
                    return None
                self._cond.wait(min(deadline - now, threading.TIMEOUT_MAX))

    def update_status(self, updates: Iterable[StatusUpdate]) -> None:
        """Apply workers' updates to the status records."""
        changes = [check_update(change) for change in updates]
        now = time.monotonic()
        with self._cond:
            for change in changes:
                self._update_status(change, self.status_ttl, now)

    def extend(self, until: Iterable[tuple[str, int]]) -> None:
        """Keep each message's request alive until a wall-clock time, in ms; its status says so."""
        pairs = [(check_ids([message_id])[0], until_ms) for message_id, until_ms in until]
        now = time.monotonic()
        wall = time.time()
        with self._cond:
            for message_id, until_ms in pairs:
                expires = now + max(0.0, until_ms / 1000 - wall)
                event = self._events.get(key_for(message_id))
                if event is not None and now < event[0] < expires:
                    self._events[key_for(message_id)] = (expires, event[1])
                status = self._statuses.get(message_id)
                if status is None or status[0] <= now or status[1].get("state") != "requested":
                    continue
                record = status[1]
                stamp = record.get("expires_at")
                if isinstance(stamp, (int, float)) and stamp < wall * 1000:
                    continue  # its request expired: it must not come back
                if not isinstance(stamp, (int, float)) or stamp < until_ms:
                    record["expires_at"] = round(until_ms)
                keep = expires + self.status_ttl / 1000
                self._statuses[message_id] = (max(keep, status[0]), record)

    def track(self, changes: Iterable[tuple[str, str, str, int]]) -> None:
        """Add and remove messages of their actor's set, in order; a removed id stays out 1 h."""
        batch = check_tracking(changes)
        now = time.monotonic()
        with self._cond:
            for change, actor_name, message_id, start_ms in batch:
                members = self._tracked.setdefault(actor_name, {})
                done = self._done.setdefault(actor_name, {})
                if change == "add":
                    if now - done.get(message_id, -_DONE_FOR_S) >= _DONE_FOR_S:
                        members[message_id] = start_ms  # not done lately: not a late add
                else:
                    members.pop(message_id, None)
                    done[message_id] = now
            for done in self._done.values():
                for message_id in [i for i, when in done.items() if now - when >= _DONE_FOR_S]:
                    del done[message_id]

    def tracked(self, actor_name: str) -> list[tuple[str, int]]:
        """The outstanding messages of ``actor_name``: (message id, ms when it may start)."""
        check_ids([actor_name])
        stale = time.time() * 1000 - self.track_ttl
        with self._cond:
            members = self._tracked.get(actor_name, {})
            for message_id in [i for i, ms in members.items() if ms < stale]:
                del members[message_id]
            return sorted(members.items(), key=lambda item: (item[1], item[0]))

    def read_status(self, message_ids: Iterable[str]) -> list[dict[str, Any] | None]:
        """Return each message's status record, ``None`` where there is none."""
        ids = check_ids(message_ids)
        now = time.monotonic()
        with self._cond:
            found = []
            for message_id in ids:
                stored = self._statuses.get(message_id)
                found.append(dict(stored[1]) if stored is not None and stored[0] > now else None)
            return found

    def _update_status(self, change: StatusUpdate, keep_ms: int, now: float) -> None:
        stored = self._statuses.get(change.message_id)
        live = stored is not None and stored[0] > now
        record = apply_update(stored[1] if live and stored else None, change)
        if record is not None:
            expires = now + keep_ms / 1000
            if live and stored:
                expires = max(expires, stored[0])
            self._statuses[change.message_id] = (expires, record)

    def subscribe(self) -> Subscription:
        """Feed every event notified from now on."""
        subscription = _StubSubscription(self)
        with self._cond:
            self._subscriptions.append(subscription)
        return subscription

    def _unsubscribe(self, subscription: _StubSubscription) -> None:
        with self._cond:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)

    def _live(self, key: str, now: float) -> Event | None:
        stored = self._events.get(key)
        if stored is None:
            return None
        if stored[0] <= now:
            del self._events[key]
            return None
        return stored[1]

    def _sweep(self, now: float, *, force: bool = False) -> None:
        if not force and now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_EVERY
        for table in (self._events, self._statuses):
            expired = [key for key, (expires, _) in table.items() if expires <= now]
            for key in expired:
                del table[key]
