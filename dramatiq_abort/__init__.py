"""Cancel queued and abort running dramatiq messages.

Add :class:`Abortable` to the broker, then call :func:`abort` with a
message id from any process that shares the event backend.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import backends
from ._request import AbortMode
from .actors import abortable_actor
from .api import abort, abort_actor, abort_many, abort_requested, abort_status
from .aprocess import GuardedExec, guarded_exec
from .events import Event, EventBackend, StatusUpdate
from .exceptions import (
    Abort,
    BackendUnavailableError,
    DramatiqAbortError,
    MiddlewareMissingError,
    StatusUnavailableError,
    TrackingUnavailableError,
)
from .middleware import Abortable
from .process import GuardedPopen, guarded_popen, guarded_run
from .scope import AbortScope, abort_scope, current_scope
from .status import AbortBatch, AbortHandle, AbortState, AbortStatus

try:
    __version__ = version("dramatiq-abort")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "Abort",
    "AbortBatch",
    "AbortHandle",
    "AbortMode",
    "AbortScope",
    "AbortState",
    "AbortStatus",
    "Abortable",
    "BackendUnavailableError",
    "DramatiqAbortError",
    "Event",
    "EventBackend",
    "GuardedExec",
    "GuardedPopen",
    "MiddlewareMissingError",
    "StatusUnavailableError",
    "StatusUpdate",
    "TrackingUnavailableError",
    "abort",
    "abort_actor",
    "abort_many",
    "abort_requested",
    "abort_scope",
    "abort_status",
    "abortable_actor",
    "backends",
    "current_scope",
    "guarded_exec",
    "guarded_popen",
    "guarded_run",
]
