"""What became of an abort: :class:`AbortState`, :class:`AbortStatus`, :class:`AbortHandle`."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, overload

from ._request import MAX_REASON, AbortMode, Duration, to_ms
from ._status import RANKS

if TYPE_CHECKING:
    from .middleware import Abortable

__all__ = ["AbortBatch", "AbortHandle", "AbortState", "AbortStatus"]

_logger = logging.getLogger("dramatiq_abort")

#: Seconds between two reads while waiting for an outcome: the first, and at most.
_WAIT_FIRST = 0.002
_WAIT_MAX = 0.1


class AbortState(enum.Enum):
    """Where an abort request stands.

    ``REQUESTED`` and ``RECEIVED`` are on the way; the others are final.
    """

    #: Recorded; no worker has acted on it yet.
    REQUESTED = "requested"
    #: The worker running the message has it; ``Abort`` comes after the grace.
    RECEIVED = "received"
    #: The message never started: it was skipped (and dead-lettered).
    SKIPPED = "skipped"
    #: The message was running when the request reached it, and has ended.
    INTERRUPTED = "interrupted"
    #: The message had finished, or a cancel reached it while it ran.
    TOO_LATE = "too_late"
    #: The request's TTL passed before any worker saw the message.
    EXPIRED = "expired"

    @property
    def final(self) -> bool:
        """Whether this state can no longer change."""
        return self not in (AbortState.REQUESTED, AbortState.RECEIVED)


@dataclass(frozen=True)
class AbortStatus:
    """The status of the abort of one message, as stored in the event backend.

    Times are UTC ``datetime`` objects, each from the clock of the process
    that took the step (the client for ``requested_at`` and ``expires_at``,
    the worker for the others).
    """

    #: The aborted message.
    message_id: str
    #: Where the request stands.
    state: AbortState
    #: The strongest mode requested (``ABORT`` beats ``CANCEL``).
    mode: AbortMode
    #: The latest reason given to ``abort(reason=...)``, if any.
    reason: str | None
    #: When the (first) request was made.
    requested_at: datetime | None
    #: When the request stops applying to a message that has not started.
    expires_at: datetime | None
    #: When the worker running the message received it.
    received_at: datetime | None = None
    #: When the state became final (skipped, ended, found too late).
    ended_at: datetime | None = None
    #: The message's actor and queue, once a worker saw the message.
    actor_name: str | None = None
    queue_name: str | None = None
    #: The worker process that acted: ``"<host>:<pid>"``.
    worker: str | None = None
    #: How an interrupted message ended: ``"Abort"``, another exception's
    #: name, or ``"returned"`` (it finished by itself during its grace).
    ended_with: str | None = None

    @property
    def final(self) -> bool:
        """Whether the state can no longer change."""
        return self.state.final

    def to_dict(self) -> dict[str, Any]:
        """The status as JSON-ready values (times as ISO 8601 strings, enums as strings)."""
        data: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, datetime):
                value = value.isoformat(timespec="milliseconds")
            data[name] = value
        data["final"] = self.final
        return data


def from_record(message_id: str, record: Any, now_ms: float | None = None) -> AbortStatus | None:
    """Read a stored record (see ``_status``); ``None`` if there is none or it is malformed."""
    if record is None:
        return None
    try:
        if not isinstance(record, dict):
            raise ValueError("not a mapping")
        state_name = record.get("state")
        if state_name not in RANKS:
            raise ValueError(f"unknown state {state_name!r}")
        state = AbortState(state_name)
        expires_at = _ms(record, "expires_at")
        now = time.time() * 1000 if now_ms is None else now_ms
        if state is AbortState.REQUESTED and expires_at is not None and expires_at <= now:
            state = AbortState.EXPIRED
        mode = AbortMode(str(record.get("mode", "abort")).lower())
        return AbortStatus(
            message_id=message_id,
            state=state,
            mode=mode,
            reason=_text(record, "reason", MAX_REASON),
            requested_at=_time(_ms(record, "requested_at")),
            expires_at=_time(expires_at),
            received_at=_time(_ms(record, "received_at")),
            ended_at=_time(_ms(record, "ended_at")),
            actor_name=_text(record, "actor_name"),
            queue_name=_text(record, "queue_name"),
            worker=_text(record, "worker"),
            ended_with=_text(record, "ended_with"),
        )
    except (TypeError, ValueError) as exc:
        _logger.warning(
            "Ignoring a malformed status of message %s: %r (%s)", message_id, record, exc
        )
        return None


#: The last millisecond a ``datetime`` can hold (9999-12-31).
_LAST_MS = 253_402_300_799_999


def _ms(record: dict[str, Any], name: str) -> float | None:
    """A stamp of the record; ``None`` when absent, or unusable (logged, not fatal)."""
    value = record.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= _LAST_MS:
        _logger.warning("Ignoring a malformed %s in an abort status: %r", name, value)
        return None
    return float(value)


def _time(ms: float | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _text(record: dict[str, Any], name: str, limit: int = 200) -> str | None:
    value = record.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} is not a string")
    return value[:limit] or None


class AbortHandle:
    """What :func:`~dramatiq_abort.abort` returns: a way to follow the request.

    Example:
        >>> handle = abort(message.message_id, reason="user cancelled")  # doctest: +SKIP
        >>> handle.wait(timeout=5000).state  # doctest: +SKIP
        <AbortState.SKIPPED: 'skipped'>

    """

    __slots__ = ("_middleware", "message_id", "mode", "reason")

    def __init__(
        self, middleware: Abortable, message_id: str, mode: AbortMode, reason: str | None
    ) -> None:
        self._middleware = middleware
        #: The message whose abort was requested.
        self.message_id = message_id
        #: The mode of this request.
        self.mode = mode
        #: The reason given, if any.
        self.reason = reason

    def __repr__(self) -> str:
        return f"<AbortHandle {self.message_id!r} mode={self.mode.value}" + (
            f" reason={self.reason!r}>" if self.reason else ">"
        )

    def status(self) -> AbortStatus | None:
        """Read the request's status now; ``None`` if the backend has none (any more).

        Raises:
            StatusUnavailableError: The backend does not store statuses.
            BackendUnavailableError: The backend could not be reached.

        """
        return self._middleware.abort_status(self.message_id)

    def wait(self, timeout: Duration = 10_000) -> AbortStatus | None:
        """Wait up to ``timeout`` (ms or ``timedelta``) for a final state, and return the status.

        Returns:
            The status: final (``status.final``), or the last one read
            when the time ran out.  ``None`` if the backend has none.

        Raises:
            StatusUnavailableError: The backend does not store statuses.
            BackendUnavailableError: The backend could not be reached.

        """
        seconds = to_ms(timeout, "timeout") / 1000
        return wait_final(self._middleware.abort_statuses, [self.message_id], seconds)[0]


class AbortBatch(Sequence[AbortHandle]):
    """What :func:`~dramatiq_abort.abort_many` returns: a handle per message, followed together.

    It is a sequence of :class:`AbortHandle` (one per distinct message, in
    the order given); :meth:`statuses` and :meth:`wait` read every status
    in one backend call per look.
    """

    __slots__ = ("_handles", "sent")

    def __init__(self, handles: list[AbortHandle], *, sent: bool = True) -> None:
        self._handles = handles
        #: ``False`` for a dry run (``abort_actor(dry_run=True)``): nothing was requested.
        self.sent = sent

    def __repr__(self) -> str:
        dry = "" if self.sent else " (dry run: not sent)"
        return f"<AbortBatch of {len(self._handles)} messages{dry}>"

    @overload
    def __getitem__(self, index: int) -> AbortHandle: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[AbortHandle]: ...

    def __getitem__(self, index: int | slice) -> AbortHandle | Sequence[AbortHandle]:
        return self._handles[index]

    def __len__(self) -> int:
        return len(self._handles)

    def __iter__(self) -> Iterator[AbortHandle]:
        return iter(self._handles)

    @property
    def message_ids(self) -> list[str]:
        """The ids of the messages, in order."""
        return [handle.message_id for handle in self._handles]

    def statuses(self) -> list[AbortStatus | None]:
        """Every message's status now, in order, in one backend call.

        Raises:
            StatusUnavailableError: The backend does not store statuses.
            BackendUnavailableError: The backend could not be reached.

        """
        if not self._handles:
            return []
        return self._handles[0]._middleware.abort_statuses(self.message_ids)

    def wait(self, timeout: Duration = 10_000) -> list[AbortStatus | None]:
        """Wait up to ``timeout`` (ms or ``timedelta``) for every state to be final.

        Returns:
            The statuses, in order: final, or the last read when the time ran out.

        """
        seconds = to_ms(timeout, "timeout") / 1000
        if not self._handles:
            return []
        read = self._handles[0]._middleware.abort_statuses
        return wait_final(read, self.message_ids, seconds)


def _settled(status: AbortStatus | None, wait_unknown: bool) -> bool:
    return status.final if status is not None else not wait_unknown


def wait_final(
    read: Callable[[list[str]], list[AbortStatus | None]],
    message_ids: list[str],
    seconds: float,
    *,
    wait_unknown: bool = False,
) -> list[AbortStatus | None]:
    """Read statuses with ``read`` until each is final or ``seconds`` ran out (one deadline).

    An id without a status counts as final unless ``wait_unknown`` (its
    request may not have been made yet).  The backend pushes no status
    change to clients, so this polls: 2 ms apart at first, then 1.5 times longer
    each time, up to 100 ms.
    """
    deadline = time.monotonic() + seconds
    latest: dict[str, AbortStatus | None] = {}
    pending = list(message_ids)
    pause = _WAIT_FIRST
    while True:
        latest.update(zip(pending, read(pending), strict=True))
        pending = [i for i in pending if not _settled(latest[i], wait_unknown)]
        left = deadline - time.monotonic()
        if not pending or left <= 0:
            return [latest[i] for i in message_ids]
        time.sleep(min(pause, left))
        pause = min(pause * 1.5, _WAIT_MAX)
