"""How an exception reaches another thread: CPython's asynchronous exceptions."""

from __future__ import annotations

import ctypes

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)
_set_async_exc.restype = ctypes.c_int


def raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Schedule ``exc_type`` to be raised in thread ``thread_id``.

    It is raised the next time that thread runs Python bytecode, so a
    thread blocked in a system call only sees it when the call returns.

    Returns:
        Whether the thread was found.

    """
    return bool(_set_async_exc(thread_id, exc_type))


#: Drops an exception scheduled by :func:`raise_in_thread` that has not been
#: raised yet: ``clear_async_exc(thread_id, NULL)``.  Call it directly: it is
#: a C function, so no Python frame starts in between where the pending
#: exception could fire first.
clear_async_exc = _set_async_exc
NULL = ctypes.py_object()
