"""Cancel queued and abort running dramatiq messages.

Add :class:`Abortable` to the broker, then call :func:`abort` with a
message id from any process that shares the event backend.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import backends
from ._request import AbortMode
from .actors import abortable_actor
from .api import abort, abort_requested
from .aprocess import GuardedExec, guarded_exec
from .events import Event, EventBackend
from .exceptions import Abort, BackendUnavailableError, DramatiqAbortError, MiddlewareMissingError
from .middleware import Abortable
from .process import GuardedPopen, guarded_popen, guarded_run
from .scope import AbortScope, abort_scope, current_scope

try:
    __version__ = version("dramatiq-abort")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "Abort",
    "AbortMode",
    "AbortScope",
    "Abortable",
    "BackendUnavailableError",
    "DramatiqAbortError",
    "Event",
    "EventBackend",
    "GuardedExec",
    "GuardedPopen",
    "MiddlewareMissingError",
    "abort",
    "abort_requested",
    "abort_scope",
    "abortable_actor",
    "backends",
    "current_scope",
    "guarded_exec",
    "guarded_popen",
    "guarded_run",
]
