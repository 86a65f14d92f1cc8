"""The exceptions dramatiq-abort raises."""

from __future__ import annotations

from dramatiq.middleware import Interrupt

__all__ = ["Abort", "BackendUnavailableError", "DramatiqAbortError", "MiddlewareMissingError"]


class Abort(Interrupt):
    """Raised inside a running message that has been aborted.

    It derives from :class:`dramatiq.middleware.Interrupt`, a
    ``BaseException``, so ``except Exception`` in actor code does not
    swallow it.  Catch it explicitly to clean up, then let it propagate:
    the message then ends as failed, is not retried, and the worker logs
    one line instead of a traceback.
    """


class DramatiqAbortError(Exception):
    """Base class of the errors dramatiq-abort raises for misuse or outages."""


class MiddlewareMissingError(DramatiqAbortError, RuntimeError):
    """No :class:`~dramatiq_abort.Abortable` middleware was found where one is needed."""


class BackendUnavailableError(DramatiqAbortError, ConnectionError):
    """The event backend could not be reached, so the request was not recorded."""
