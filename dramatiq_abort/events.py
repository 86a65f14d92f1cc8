"""The event backend contract: :class:`Event` and :class:`EventBackend`.

The three abstract methods are the contract of dramatiq-abort 1.x, so a
backend written for it still plugs in.  The concrete methods below are
optional capabilities with working defaults; the built-in backends
override them to push events to workers instead of being polled.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Event", "EventBackend", "StatusUpdate", "Subscription"]


@dataclass(frozen=True)
class Event:
    """Events are composed of an identifying key and associated parameters.

    Args:
        key: What the event is about, for example ``"abort:<message id>"``.
        params: JSON-compatible parameters of the event.

    """

    key: str
    params: dict[str, Any]


@dataclass(frozen=True)
class StatusUpdate:
    """One change to the stored status of an abort (see :meth:`EventBackend.update_status`).

    Args:
        message_id: Whose status changes.
        state: The state it moves to: ``"requested"``, ``"received"``,
            ``"too_late"``, ``"skipped"`` or ``"interrupted"``.
        rank: The state's rank (0, 1, 2, 3, 3 in that order): a stored
            state only moves to an equal or higher rank.
        changes: Fields to change, each as ``(operation, value)``, the
            operation being ``"set"``, ``"keep"`` (set if absent), ``"min"``
            or ``"max"`` (numbers).

    """

    message_id: str
    state: str
    rank: int
    changes: dict[str, tuple[str, Any]]


class Subscription(Protocol):
    """A live feed of the events a backend announces (see :meth:`EventBackend.subscribe`).

    A subscription over a network connection may also offer ``ping()``
    (send a keep-alive whose reply :meth:`get` reads) and ``heard_at``
    (``time.monotonic()`` of the last thing it read): the watcher then
    pings a busy worker's silent subscription and notices a dead
    connection that was never closed.
    """

    def get(self, timeout: float) -> list[Event]:
        """Wait at most ``timeout`` seconds for announced events.

        Returns:
            The events announced since the last call (empty on timeout).

        Raises:
            Exception: Any error of the backend's connection; the caller
                closes this subscription and opens a new one.

        """

    def close(self) -> None:
        """Release the subscription's resources; safe to call twice."""


class EventBackend(abc.ABC):
    """ABC for event backends."""

    #: Whether workers may check the messages waiting in their prefetch
    #: buffer in batches and rely on :meth:`subscribe` for what follows (see
    #: ``_lookahead``); a backend whose ``poll`` costs no round trip gains
    #: nothing from it and keeps one check per message.
    _read_ahead = False

    @abc.abstractmethod
    def notify(self, events: Iterable[Event], ttl: int) -> None:
        """Signal events.

        Once notified, a call to :meth:`poll` or :meth:`wait_many` with
        this event should result in a positive result.

        Args:
            events: Events to signal.
            ttl: Milliseconds for the signal to live.  Long enough for
                workers to see it, short enough that outdated keys do not
                pile up.

        """

    @abc.abstractmethod
    def poll(self, key: str) -> Event | None:
        """Check if an event has been signaled, without blocking.

        Returns:
            The event if it was signaled, ``None`` otherwise.  A backend
            might not be idempotent: once a key has signaled, subsequent
            calls might return ``None``.

        """

    @abc.abstractmethod
    def wait_many(self, keys: Iterable[str], timeout: int) -> Event | None:
        """Wait for one of ``keys`` to be signaled, or ``timeout`` milliseconds.

        Returns:
            The event that signaled, or ``None`` on timeout.

        """

    def notify_many(self, batch: Iterable[tuple[Event, int]]) -> None:
        """Signal events, each with its own TTL in milliseconds (optional).

        Built-in backends store and announce the whole batch in one round
        trip; the default calls :meth:`notify` once per distinct TTL, in
        the order the TTLs first appear.
        """
        groups: dict[int, list[Event]] = {}
        for event, ttl in batch:
            groups.setdefault(ttl, []).append(event)
        for ttl, events in groups.items():
            self.notify(events, ttl)

    def poll_many(self, keys: Iterable[str]) -> list[Event]:
        """Return the signaled events among ``keys``.

        The default calls :meth:`poll` once per key; built-in backends
        answer in one round trip.
        """
        found = []
        for key in keys:
            event = self.poll(key)
            if event is not None:
                found.append(event)
        return found

    def update_status(self, updates: Iterable[StatusUpdate]) -> None:
        """Apply workers' updates to stored abort statuses (optional).

        A backend that stores statuses also records each abort request it
        is notified of (state ``requested``), and keeps every record for a
        bounded time.  The rule that applies an update is
        ``dramatiq_abort._status.apply_update``.  The default stores
        nothing, so a 1.x backend keeps working without statuses.
        """
        return None

    def extend(self, until: Iterable[tuple[str, int]]) -> None:
        """Make the request of each message, if it has one, live until a time (optional).

        Workers call it for messages waiting in their delay queue (sent
        with ``delay``, or waiting for a retry), so a request outlives its
        TTL until the message comes up.  ``until`` holds ``(message id,
        wall-clock ms)`` pairs; a request that already lives longer, or that
        does not exist, is left alone.  The default does nothing.
        """
        return None

    def track(self, changes: Iterable[tuple[str, str, str, int]]) -> None:
        """Record which messages of an actor are outstanding (optional; for ``abort_actor``).

        ``changes`` holds, in order, ``("add", actor, message id, ms)`` for a
        message sent (``ms``: when it may start, wall clock) and ``("remove",
        actor, message id, 0)`` for one done for good.  The default does
        nothing.
        """
        return None

    def tracked(self, actor_name: str) -> list[tuple[str, int]]:
        """The outstanding messages of an actor: ``(message id, ms when it may start)``.

        Raises:
            NotImplementedError: This backend does not track messages (the
                default).

        """
        msg = (
            f"{type(self).__name__} does not track messages: use backends.RedisBackend "
            "or backends.StubBackend, or implement track() and tracked()"
        )
        raise NotImplementedError(msg)

    def read_status(self, message_ids: Iterable[str]) -> list[dict[str, Any] | None]:
        """Return the stored status record of each message, ``None`` where there is none.

        Raises:
            NotImplementedError: This backend does not store statuses (the
                default).

        """
        msg = (
            f"{type(self).__name__} does not store abort statuses: use backends.RedisBackend "
            "or backends.StubBackend, or implement update_status() and read_status()"
        )
        raise NotImplementedError(msg)

    def subscribe(self) -> Subscription | None:
        """Open a push feed of every event notified from now on.

        The default returns ``None``: the backend cannot push, and the
        middleware falls back to :meth:`wait_many`.  A backend that returns
        a subscription must only return once it is live, so that no event
        notified after this call returns is missed.
        """
        return None
