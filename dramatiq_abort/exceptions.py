"""The exceptions dramatiq-abort raises."""

from __future__ import annotations

from collections.abc import Callable

from dramatiq.middleware import Interrupt

__all__ = [
    "Abort",
    "BackendUnavailableError",
    "DramatiqAbortError",
    "MiddlewareMissingError",
    "StatusUnavailableError",
    "TrackingUnavailableError",
]


class Abort(Interrupt):
    """Raised inside a running message that has been aborted.

    It derives from :class:`dramatiq.middleware.Interrupt`, a
    ``BaseException``, so ``except Exception`` in actor code does not
    swallow it.  Catch it explicitly to clean up, then let it propagate:
    the message then ends as failed, is not retried, and the worker logs
    one line instead of a traceback.

    Args:
        *args: The message, as for any exception.  Left out (as when the
            worker raises it into a running message), it is written from
            the request: ``"message <id> was aborted: <reason>"``.
        reason: Why the abort was asked for (``abort(reason=...)``), or ``None``.
        message_id: The aborted message's id, or ``None``.

    Attributes:
        reason: As given to ``abort(reason=...)``; ``None`` when none was.
        message_id: The id of the aborted message, when known.

    """

    def __init__(
        self, *args: object, reason: str | None = None, message_id: str | None = None
    ) -> None:
        if not args and reason is None and message_id is None:
            # Raised into a running message by the worker, which can only
            # raise the class: ask which message this thread runs.
            message_id, reason = _describe_current()
            if message_id is not None:
                args = (describe(message_id, "aborted", reason),)
        super().__init__(*args)
        self.reason = reason
        self.message_id = message_id


def describe(message_id: str, what: str, reason: str | None) -> str:
    """``"message <id> was <what>"``, followed by ``": <reason>"`` when there is one."""
    text = f"message {message_id} was {what}"
    return f"{text}: {reason}" if reason else text


def _no_message() -> tuple[str | None, str | None]:
    return None, None


#: Returns (message id, reason) of the abort the calling thread is receiving;
#: the registry installs its own.  It must not take locks: an ``Abort`` may
#: be raised while the thread holds one.
_describe_current: Callable[[], tuple[str | None, str | None]] = _no_message


class DramatiqAbortError(Exception):
    """Base class of the errors dramatiq-abort raises for misuse or outages."""


class MiddlewareMissingError(DramatiqAbortError, RuntimeError):
    """No :class:`~dramatiq_abort.Abortable` middleware was found where one is needed."""


class BackendUnavailableError(DramatiqAbortError, ConnectionError):
    """The event backend could not be reached, so the request was not recorded."""


class StatusUnavailableError(DramatiqAbortError, NotImplementedError):
    """The event backend does not store abort statuses (a 1.x-style backend)."""


class TrackingUnavailableError(DramatiqAbortError, NotImplementedError):
    """The event backend does not track the messages of actors (a 1.x-style backend)."""
