"""``async def`` actors: ``Abort`` delivered into the coroutine, at its current ``await``.

dramatiq runs an ``async def`` actor by blocking the worker thread on a
future while the coroutine runs on its event-loop thread, and notices an
exception raised in the worker thread only every 100 ms; the coroutine then
sees ``CancelledError`` and gets one second to clean up.  Instead, the
middleware replaces dramatiq's wrapper with :class:`_AsyncGuarded`, which
runs the coroutine inside a :class:`_Driver`:

* a delivery for an async message calls the driver's waker from the
  watcher/timer thread; the waker schedules, on the loop, a cancellation of
  the task, and the driver turns that cancellation into ``Abort`` thrown
  into the coroutine at the ``await`` where it waits (``task.uncancel()``
  undoes the cancellation, so ``finally`` blocks can ``await``);
* an abort delivered before the coroutine ran arrives at its first
  ``await``, so its ``try`` blocks are already entered;
* once ``Abort`` is thrown, the coroutine has ``cleanup_timeout`` to end;
  then its task is cancelled for real and the message still ends as aborted.

Nothing is raised asynchronously in the worker thread for these messages.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import dramatiq.asyncio

from ._registry import _CANCELLED, _CURRENT_ENTRY, STARTED, Registry, _Guarded, _Running, abort_for
from .exceptions import Abort

_logger = logging.getLogger("dramatiq_abort")


def is_async_actor_fn(fn: Any) -> bool:
    """Whether ``fn`` is dramatiq's synchronous wrapper around an ``async def`` function."""
    wrapped = getattr(fn, "__wrapped__", None)
    return (
        wrapped is not None
        and not inspect.iscoroutinefunction(fn)
        and inspect.iscoroutinefunction(wrapped)
    )


class _Driver:
    """Awaits a coroutine on its behalf and throws ``Abort`` into it when asked."""

    def __init__(self, coro: Coroutine[Any, Any, Any], entry: _Running, registry: Registry):
        self._coro = coro
        self._it = coro.__await__()
        self._entry = entry
        self._registry = registry
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._aborting = False  # a cancellation of ours is on its way into the task
        self._forced = False  # the cleanup time ran out: let cancellation through
        self._cleanup: asyncio.TimerHandle | None = None

    def __await__(self) -> Generator[Any, None, Any]:
        return self

    def __iter__(self) -> _Driver:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    # -- the task's side -----------------------------------------------------

    def send(self, value: Any) -> Any:
        if not self._started:
            self._start()
        return self._step(self._it.send, value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        exc = _exception(typ, val)
        if isinstance(exc, asyncio.CancelledError) and self._aborting and not self._forced:
            self._aborting = False
            if self._task is not None and hasattr(self._task, "uncancel"):
                self._task.uncancel()
            return self._step(self._it.throw, self._abort())
        return self._step(self._it.throw, exc)

    def close(self) -> None:
        self._finish()
        self._it.close()

    def _step(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        try:
            return fn(arg)
        except BaseException:
            self._finish()
            raise

    def _start(self) -> None:
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        if self._registry.attach_waker(self._entry, self._wake):
            # Delivered before the coroutine ran: at its first await.
            self._loop.call_soon(self._interrupt)

    def _abort(self) -> Abort:
        self._entry.fired = True
        if self._cleanup is None and self._loop is not None:
            self._cleanup = self._loop.call_later(self._entry.cleanup_s, self._force)
        return abort_for(self._entry)

    def _finish(self) -> None:
        if self._cleanup is not None:
            self._cleanup.cancel()
            self._cleanup = None
        self._registry.detach_waker(self._entry)

    # -- the watcher's side ----------------------------------------------------

    def _wake(self) -> None:
        """Called by a delivery, under the registry lock, from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._interrupt)

    def _interrupt(self) -> None:
        task = self._task
        if task is None or task.done() or self._entry.fired:
            return
        self._aborting = True
        task.cancel()

    def _force(self) -> None:
        task = self._task
        if task is None or task.done():
            return
        _logger.warning(
            "Message %s: the aborted coroutine did not end within its cleanup time "
            "(%.3g s); cancelling it.",
            self._entry.message_id,
            self._entry.cleanup_s,
        )
        self._forced = True
        task.cancel()


def _exception(typ: Any, val: Any) -> BaseException:
    if isinstance(typ, BaseException):
        return typ
    if isinstance(val, BaseException):
        return val
    return typ() if val is None else typ(val)  # type: ignore[no-any-return]


async def _drive(coro: Coroutine[Any, Any, Any], entry: _Running, registry: Registry) -> Any:
    return await _Driver(coro, entry, registry)


class _AsyncGuarded:
    """Runs an ``async def`` actor's coroutine through a :class:`_Driver`.

    It takes the place of dramatiq's ``async_to_sync`` wrapper (kept for
    calls outside a worker and nested calls, which go through the ordinary
    guard).
    """

    def __init__(self, sync_fn: Callable[..., Any], registry: Registry) -> None:
        self._sync = _Guarded(sync_fn, registry)
        self._async_fn = sync_fn.__wrapped__  # type: ignore[attr-defined]
        self._registry = registry
        functools.update_wrapper(self, sync_fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        registry = self._registry
        entry = registry._by_thread.get(threading.get_ident())
        loop_thread = dramatiq.asyncio.get_event_loop_thread()
        if entry is None or entry.state != STARTED or entry.depth or loop_thread is None:
            return self._sync(*args, **kwargs)
        token = _CURRENT_ENTRY.set(entry)
        try:
            registry._enter(entry, is_async=True)  # raises Abort here if already due
            coro = self._async_fn(*args, **kwargs)
            return loop_thread.run_coroutine(_drive(coro, entry, registry))
        except _CANCELLED as exc:
            if entry.delivered:
                raise abort_for(entry) from exc  # cancelled after its cleanup time ran out
            raise
        finally:
            registry._leave(entry, 1)
            _CURRENT_ENTRY.reset(token)

    def __repr__(self) -> str:
        return f"<abortable async {self._async_fn!r}>"
