"""Whether a socket has something to read, asked without releasing the GIL.

Every socket call in CPython releases the GIL, and a worker thread that
releases it may wait a whole switch interval to get it back while another
thread runs.  The look-ahead check asks, for every message, whether an
announcement waits unread; through ``select.poll`` that hand-over cost
about 8% of a no-op message's throughput.  ``poll(2)`` with a zero timeout
never blocks, so it is called here through ``ctypes.PyDLL``, which keeps
the GIL for the call (about 1 µs).  Where libc's ``poll`` cannot be found,
``select.poll`` answers instead.
"""

from __future__ import annotations

import ctypes
import select
from collections.abc import Callable


class _PollFd(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short), ("revents", ctypes.c_short)]


def _libc_poll() -> Callable[[int, int, int], int] | None:
    try:
        poll = ctypes.PyDLL(None).poll
    except (AttributeError, OSError, TypeError):  # no libc poll here (Windows)
        return None
    poll.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int]
    poll.restype = ctypes.c_int
    return poll


_POLL = _libc_poll()
_EVENTS = select.POLLIN | select.POLLPRI


def wait_readable(fd: int, timeout: float) -> bool:
    """Wait at most ``timeout`` seconds for ``fd`` to have something to read (GIL released)."""
    poller = select.poll()
    poller.register(fd, _EVENTS)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def readable_check(fd: int) -> Callable[[], bool]:
    """Return a function that tells, without waiting, whether ``fd`` has something to read.

    It also answers ``True`` when ``fd`` is closed or in error (the next
    read tells what happened).  Safe to call from several threads at once.
    """
    if _POLL is None:
        return lambda: wait_readable(fd, 0)

    poll = _POLL
    entry = _PollFd(fd, _EVENTS, 0)
    address = ctypes.addressof(entry)

    def readable_now(_entry: _PollFd = entry) -> bool:
        # The default argument keeps the structure alive as long as the
        # function.  revents may be written by two threads at once; only
        # the count is read.
        return poll(address, 1, 0) != 0

    return readable_now
