"""The abort request: its mode, argument checks, and its form as an :class:`Event`."""

from __future__ import annotations

import enum
import logging
import math
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .events import Event

_logger = logging.getLogger("dramatiq_abort")

#: A duration: whole milliseconds, as in dramatiq, or a ``timedelta``.
Duration = int | float | timedelta

#: Event keys of abort requests are this prefix followed by the message id.
KEY_PREFIX = "abort:"


class AbortMode(enum.Enum):
    """How far an abort request reaches.

    ``CANCEL`` only stops a message that has not started; ``ABORT`` also
    interrupts one that is running.
    """

    ABORT = "abort"
    CANCEL = "cancel"


def coerce_mode(mode: object) -> AbortMode:
    """Return ``mode`` as an :class:`AbortMode`, accepting its string values."""
    if isinstance(mode, AbortMode):
        return mode
    if isinstance(mode, str):
        try:
            return AbortMode(mode.lower())
        except ValueError:
            pass
    msg = f"mode must be AbortMode.ABORT, AbortMode.CANCEL, 'abort' or 'cancel', not {mode!r}"
    raise ValueError(msg)


#: The longest duration, in ms (about 31 years): a longer one overflows the
#: timeouts of ``threading`` waits (the deadline timer's) and of Redis' ``PX``.
MAX_MS = 10**12
#: Wall-clock stamps (ms since the epoch) read back must lie within this bound.
MAX_STAMP = 10**15


def stored_number(value: Any) -> bool:
    """Whether ``value`` read back from a backend is a finite number within ``MAX_STAMP``."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and -MAX_STAMP < value < MAX_STAMP
    )


def to_ms(value: object, name: str, *, allow_zero: bool = True) -> int:
    """Return a duration given in milliseconds or as a ``timedelta`` as whole milliseconds.

    Raises:
        TypeError: ``value`` is neither a number (``bool`` excluded) nor a ``timedelta``.
        ValueError: ``value`` is not finite, negative (or 0 without
            ``allow_zero``), or more than :data:`MAX_MS`.
    """
    ms: int | float
    if isinstance(value, timedelta):
        ms = value / timedelta(milliseconds=1)
    elif isinstance(value, int) and not isinstance(value, bool):
        ms = int(value)  # kept exact: float() of a huge int overflows
    elif isinstance(value, float):
        ms = float(value)
    else:
        msg = f"{name} must be a number of milliseconds or a datetime.timedelta, not {value!r}"
        raise TypeError(msg)
    if ms != ms or ms in (float("inf"), float("-inf")):
        msg = f"{name} must be a finite number of milliseconds, not {value!r}"
        raise ValueError(msg)
    # The range is checked before rounding, as the backends' merge checks it.
    whole = round(ms)
    if ms < 0 or (whole == 0 and not allow_zero):
        least = "0 or more" if allow_zero else "at least 1"
        msg = f"{name} must be {least} whole milliseconds, not {value!r}"
        raise ValueError(msg)
    if ms > MAX_MS:
        msg = f"{name} must be at most {MAX_MS} milliseconds (about 31 years), not {value!r}"
        raise ValueError(msg)
    return whole


def check_message_id(message_id: object) -> str:
    """Return ``message_id`` if it is a non-empty string."""
    if not isinstance(message_id, str):
        msg = (
            f"message_id must be the message's id string, not {message_id!r}: "
            "pass message.message_id"
        )
        raise TypeError(msg)
    if not message_id.strip():
        msg = f"message_id must be a non-empty string, not {message_id!r}"
        raise ValueError(msg)
    try:
        message_id.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates: no backend could store the key, and no broker the message.
        msg = (
            f"message_id must be a string that can be encoded as UTF-8 (no lone "
            f"surrogates), not {message_id!r}"
        )
        raise ValueError(msg) from None
    return message_id


#: The longest ``reason`` of a request, in characters.
MAX_REASON = 500


def check_reason(reason: object) -> str | None:
    """Return ``reason`` if it is ``None`` or a short string that can be stored."""
    if reason is None:
        return None
    if not isinstance(reason, str):
        msg = f"reason must be a short string or None, not {reason!r}"
        raise TypeError(msg)
    if len(reason) > MAX_REASON:
        msg = (
            f"reason must be at most {MAX_REASON} characters, not {len(reason)} "
            f"({reason[:40]!r}...): keep details elsewhere and pass a short summary"
        )
        raise ValueError(msg)
    try:
        reason.encode("utf-8")
    except UnicodeEncodeError:
        msg = (
            f"reason must be a string that can be encoded as UTF-8 (no lone surrogates), "
            f"not {reason!r}"
        )
        raise ValueError(msg) from None
    return reason or None


def key_for(message_id: str) -> str:
    """Return the event key of the abort request for ``message_id``."""
    return KEY_PREFIX + message_id


class _DefaultGrace(int):
    """The ``abort_timeout`` default of :func:`abort`: 0, unless the actor sets a grace.

    It is the integer 0 (so signatures read ``abort_timeout=0`` as in 1.x), but
    being this object tells the worker the caller did not choose a grace, so
    the actor's own (``@abortable_actor(timeout=...)``) applies.
    """

    def __repr__(self) -> str:
        return "0"


#: The ``abort_timeout`` default: "the actor's grace, or none".
DEFAULT_GRACE = _DefaultGrace(0)


def grace_ms(value: object) -> int | None:
    """Return an ``abort_timeout`` argument as milliseconds, ``None`` for the default."""
    if value is DEFAULT_GRACE:
        return None
    return to_ms(value, "abort_timeout")


@dataclass(frozen=True)
class AbortRequest:
    """One request to abort one message, as the worker sees it."""

    message_id: str
    mode: AbortMode
    #: Milliseconds of grace; ``None``: the actor's own grace (or none).
    abort_timeout: int | None
    requested_at: float | None
    #: Set when requests were combined (see ``_merge``) and one of them left
    #: the grace to the actor: the actor's grace also applies, from this stamp.
    actor_grace_from: float | None = None
    #: Why it was asked for, as given to ``abort(reason=...)``.
    reason: str | None = None

    def to_event(self) -> Event:
        """Encode this request as an :class:`Event`."""
        params: dict[str, Any] = {"mode": self.mode.value, "abort_timeout": self.abort_timeout}
        if self.requested_at is not None:
            params["requested_at"] = self.requested_at
        if self.actor_grace_from is not None:
            params["actor_grace_from"] = self.actor_grace_from
        if self.reason is not None:
            params["reason"] = self.reason
        return Event(key_for(self.message_id), params)

    @classmethod
    def create(
        cls,
        message_id: str,
        mode: AbortMode,
        abort_timeout: int | None,
        reason: str | None = None,
    ) -> AbortRequest:
        """Build a request stamped with the current wall-clock time."""
        return cls(message_id, mode, abort_timeout, time.time() * 1000, reason=reason)

    @classmethod
    def from_event(cls, event: object) -> AbortRequest | None:
        """Decode an event; anything malformed is logged and gives ``None``."""
        try:
            if not isinstance(event, Event) or not event.key.startswith(KEY_PREFIX):
                raise ValueError("not an abort event")
            params = event.params
            if not isinstance(params, dict):
                raise ValueError("params are not a mapping")
            message_id = event.key[len(KEY_PREFIX) :]
            if not message_id:
                raise ValueError("empty message id")
            mode = coerce_mode(params.get("mode", "abort"))
            raw_timeout = params.get("abort_timeout", 0)
            timeout = None if raw_timeout is None else to_ms(raw_timeout, "abort_timeout")
            requested_at = _stamp(params, "requested_at")
            actor_grace_from = _stamp(params, "actor_grace_from")
            reason = params.get("reason")
            if reason is not None and not isinstance(reason, str):
                raise ValueError("reason is not a string")
        except (TypeError, ValueError, AttributeError, ArithmeticError) as exc:
            _logger.warning("Ignoring malformed abort event %r: %s", event, exc)
            return None
        # A reason read back is shown, never trusted: cut to the limit.
        return cls(
            message_id,
            mode,
            timeout,
            requested_at,
            actor_grace_from,
            reason and reason[:MAX_REASON],
        )

    def grace_seconds(self, default_ms: int = 0, *, live: bool = True) -> float:
        """Seconds of grace left now.

        A ``live`` request (just announced) gets its whole grace from now: it
        left the client a moment ago, so ``Abort`` comes ``abort_timeout``
        after ``abort()`` returned, never before.  A request read back later
        (after a reconnect) counts from when it was made; that wall-clock
        correction is clamped to ``[0, grace]`` so a skewed clock can never
        invent or remove more grace than was asked for.  ``default_ms`` is
        the actor's own grace, used when the request did not choose one.
        """
        grace = float(default_ms if self.abort_timeout is None else self.abort_timeout)
        left = _left(grace, self.requested_at, live)
        if self.actor_grace_from is not None:
            left = min(left, _left(float(default_ms), self.actor_grace_from, live))
        return left / 1000


def _left(grace: float, stamp: float | None, live: bool) -> float:
    """Milliseconds left of ``grace`` counted from ``stamp`` (from now when ``live``)."""
    if live or stamp is None:
        return grace
    elapsed = time.time() * 1000 - stamp
    return max(0.0, grace - max(0.0, elapsed))


def _stamp(params: dict[str, Any], name: str) -> float | None:
    """Return the wall-clock stamp ``params[name]`` (ms), ``None`` if absent."""
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} is not a number")
    if not -MAX_STAMP < value < MAX_STAMP:  # NaN fails too; a huge int never reaches float()
        raise ValueError(f"{name} is out of range")
    return float(value)
