"""``guarded_exec()``: an asyncio subprocess that an abort stops, group and all.

In an ``async def`` actor, ``Abort`` is thrown into the coroutine at the
``await`` where it waits (see ``_async``), so no delivery hook is needed:
the exception leaves the ``async with`` block, and the guard's exit runs the
escalation with awaits (the interrupt signal, SIGTERM after a grace, SIGKILL
after another), then waits until asyncio has the child's exit status.

asyncio's child watcher reaps the child on its own, and sets
``process.returncode`` at least one loop step later (the watcher's callback
goes through ``call_soon_threadsafe``), so ``returncode is None`` does not
prove that the pid is still the child's.  Every signal is therefore sent
only after checking, with no ``await`` in between, that the child is
unreaped: through a pidfd on Linux (``pidfd_send_signal`` fails once the
child is reaped, whoever has the pid since), or ``waitid(WNOWAIT)``
elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from types import TracebackType
from typing import Any, ClassVar, TypeAlias

from ._request import Duration
from .process import (
    _CLOSED,
    _INTERRUPTED,
    _KILLED,
    _NEW,
    _RUNNING,
    _STOPPING,
    _TERMINATED,
    DEFAULT_INTERRUPT_GRACE,
    DEFAULT_TERMINATE_GRACE,
    _GuardBase,
    _open_pidfd,
    _require_posix,
)

__all__ = ["GuardedExec", "guarded_exec"]

_logger = logging.getLogger("dramatiq_abort")

#: What ``asyncio.create_subprocess_exec`` accepts as the program and each argument.
Arg: TypeAlias = str | bytes | os.PathLike[str] | os.PathLike[bytes]

#: Seconds between the first two looks at ``returncode`` while waiting for the exit.
_POLL_FIRST = 0.005
#: The longest pause, in seconds, between two looks at ``returncode``.
_POLL_MAX = 0.1


def _check_arg(value: object, position: int) -> None:
    if isinstance(value, (str, bytes, os.PathLike)):
        return
    if position == 0 and isinstance(value, (list, tuple)):
        msg = (
            f"guarded_exec takes the program and its arguments one by one, as "
            f"asyncio.create_subprocess_exec does, not {value!r}: "
            f"unpack the list with guarded_exec(*args)"
        )
        raise TypeError(msg)
    what = "program" if position == 0 else f"argument {position}"
    msg = (
        f"guarded_exec's {what} must be a str, bytes or os.PathLike, not {value!r}: "
        f"convert it with str()"
    )
    raise TypeError(msg)


def _reaped(pid: int) -> bool:
    """Whether our child ``pid`` was reaped; ``False`` while it runs or is a zombie."""
    if not hasattr(os, "waitid"):
        return False  # nothing to ask: returncode is all there is
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return False


class GuardedExec(_GuardBase[asyncio.subprocess.Process]):
    """An asyncio subprocess that is stopped, group and all, when its block is left by an exception.

    Made by :func:`guarded_exec`; ``async with`` it to start the child.  A
    guard starts one child and cannot be reused.
    """

    __slots__ = ("_args", "_kwargs")

    _statement: ClassVar[str] = "an async with statement"

    def __init__(
        self,
        program: Arg,
        *args: Arg,
        interrupt_signal: int = signal.SIGINT,
        interrupt_grace: Duration = DEFAULT_INTERRUPT_GRACE,
        terminate_grace: Duration = DEFAULT_TERMINATE_GRACE,
        **kwargs: Any,
    ) -> None:
        _require_posix("guarded_exec", "asyncio.create_subprocess_exec")
        for position, value in enumerate((program, *args)):
            _check_arg(value, position)
        super().__init__(interrupt_signal, interrupt_grace, terminate_grace, kwargs)
        self._args: tuple[Arg, ...] = (program, *args)
        self._kwargs = kwargs

    def __repr__(self) -> str:
        return self._describe("GuardedExec", list(self._args))

    # -- read-only properties --------------------------------------------------

    @property
    def process(self) -> asyncio.subprocess.Process | None:
        """The child's ``asyncio.subprocess.Process``, once the block was entered."""
        return self._process

    # -- the block -------------------------------------------------------------

    async def __aenter__(self) -> asyncio.subprocess.Process:
        if self._state != _NEW:
            msg = f"{self!r} was already used: call guarded_exec() again for each child"
            raise RuntimeError(msg)
        self._state = _RUNNING
        try:
            # An exception while asyncio starts the child (an abort, a
            # cancellation) is asyncio's to handle: it kills the child.
            process = await asyncio.create_subprocess_exec(*self._args, **self._kwargs)
        except BaseException:
            self._state = _CLOSED
            raise
        self._process = process
        # No await from here to the block: nothing can interrupt the setup.
        pidfd = _open_pidfd(process.pid)
        try:
            # The child ran setsid/setpgid before exec.
            group = os.getpgid(process.pid) == process.pid
        except ProcessLookupError:
            group = False
        if _reaped(process.pid):
            # It ended at once and the child watcher reaped it: the pidfd and
            # the group id may be someone else's by now.
            if pidfd is not None:
                os.close(pidfd)
            pidfd, group = None, False
        self._pidfd, self._group = pidfd, group
        return process

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is None:
            return
        if exc_type is None:
            await self._leave_normally()
        elif issubclass(exc_type, GeneratorExit):
            # The coroutine is being closed: it must not await any more.
            self._kill_now(f"{exc_type.__name__} left its block")
        else:
            await self._stop(f"{exc_type.__name__} left its block")

    async def _leave_normally(self) -> None:
        """Close stdin and wait for the child's exit, without signalling it."""
        process = self._child()
        if process.stdin is not None:
            process.stdin.close()  # EOF for a child that reads its input to the end
        try:
            await self._wait_exit(None)
        except GeneratorExit:
            self._kill_now("GeneratorExit while waiting for it")
            raise
        except BaseException as error:
            # Interrupted while waiting (an Abort, a cancellation): stop it
            # as on any exception.
            await self._stop(f"{type(error).__name__} while waiting for it")
            raise
        self._close()

    # -- stopping --------------------------------------------------------------

    async def _stop(self, reason: str) -> None:
        """Stop the child with the escalation, end its group, wait for its exit status.

        An exception thrown into one of the graces (a second cancellation,
        such as the one ``Abortable(cleanup_timeout=...)`` sends, or an
        ``Abort``) cuts the escalation short: SIGKILL at once, then the wait
        for the exit status, through further cancellations, and the
        exception is raised.
        """
        if self._state != _RUNNING:
            return
        self._state = _STOPPING
        self._reason = reason
        interruption: BaseException | None = None
        try:
            try:
                for step, grace in (
                    (_INTERRUPTED, self._interrupt_grace),
                    (_TERMINATED, self._terminate_grace),
                ):
                    self._advance(step)
                    if await self._wait_exit(grace / 1000):
                        break
                else:
                    self._advance(_KILLED)
            except GeneratorExit as error:
                self._advance(_KILLED, cut_short_by=error)
                raise
            except BaseException as error:
                # Interrupted again while stopping: no more grace.
                interruption = error
                self._advance(_KILLED, cut_short_by=error)
            while True:
                try:
                    await self._wait_exit(None)
                    break
                except asyncio.CancelledError as error:
                    # SIGKILL is on its way (or the child is gone): the exit
                    # comes within milliseconds, and then it is cancelled.
                    if interruption is None:
                        interruption = error
            self._kill_leftovers()
        finally:
            self._close()
        if interruption is not None:
            raise interruption

    def _kill_now(self, reason: str) -> None:
        """SIGKILL the child's group (or the child) at once, without awaiting anything."""
        if self._state in (_RUNNING, _STOPPING):
            self._state = _STOPPING
            self._reason = reason
            self._advance(_KILLED, cut_short_by=GeneratorExit())
        self._close()

    def _advance(self, step: int, *, cut_short_by: BaseException | None = None) -> None:
        """Send the signal of this step of the escalation, unless a later one was sent."""
        if step <= self._step:
            return
        sig = (self._interrupt_signal, signal.SIGTERM, signal.SIGKILL)[step - 1]
        # No await here: the checks and the signal happen in one loop step.
        sent = self._send_unless_reaped(sig, _reaped)
        if cut_short_by is None:
            why = ": it outlived its grace"
        else:
            why = f": {type(cut_short_by).__name__} cut its grace short"
        self._record_step(step, sig, sent, why)

    def _close(self) -> None:
        """No signal after this."""
        self._state = _CLOSED
        self._close_pidfd()

    # -- waiting -----------------------------------------------------------------

    async def _wait_exit(self, timeout: float | None) -> bool:
        """Wait until asyncio has the child's exit status; ``False`` on timeout.

        ``process.wait()`` also waits until the child's pipes are closed,
        which a grandchild holding them open puts off indefinitely; so it
        is raced with a look at ``returncode`` every few milliseconds (at
        most every 0.1 s).  ``asyncio.wait`` never swallows a cancellation
        of the caller, as ``asyncio.wait_for`` may on Python 3.10 and 3.11.
        """
        process = self._child()
        if process.returncode is not None:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        waiter = asyncio.ensure_future(process.wait())
        try:
            pause = _POLL_FIRST
            while process.returncode is None:
                if deadline is None:
                    wait = pause
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    wait = min(pause, left)
                await asyncio.wait((waiter,), timeout=wait)
                pause = min(pause * 2, _POLL_MAX)
            return True
        finally:
            if not waiter.done():
                waiter.cancel()
            else:
                with contextlib.suppress(BaseException):
                    waiter.result()  # retrieved, so asyncio logs nothing


def guarded_exec(
    program: Arg,
    *args: Arg,
    interrupt_signal: int = signal.SIGINT,
    interrupt_grace: Duration = DEFAULT_INTERRUPT_GRACE,
    terminate_grace: Duration = DEFAULT_TERMINATE_GRACE,
    **kwargs: Any,
) -> GuardedExec:
    """Start an asyncio subprocess that an abort (or any exception) stops, with its children.

    ``async with guarded_exec(program, *args) as process:`` starts the child
    with ``asyncio.create_subprocess_exec`` and gives its
    ``asyncio.subprocess.Process``.  In an ``async def`` actor, an abort
    throws ``Abort`` into the coroutine at its ``await`` (``await
    process.wait()``, ``await process.communicate()``, anything); when it
    leaves the block, the child's process group gets ``interrupt_signal``
    at once.  If the child is still running ``interrupt_grace`` later it
    gets SIGTERM, and ``terminate_grace`` after that SIGKILL.  Once it has
    exited, what is left of its process group is killed, and ``Abort``
    propagates.  Any other exception leaving the block (``CancelledError``
    and ``KeyboardInterrupt`` included) stops the child the same way.
    Leaving the block normally closes the child's stdin and waits for it
    to exit, without signalling it, as ``subprocess.Popen``'s own ``with``
    does; an abort or cancellation during that wait stops it as above.

    Args:
        program: The program to run, as for ``asyncio.create_subprocess_exec``.
        *args: Its arguments, one by one.
        interrupt_signal: The first signal sent (``signal.SIGINT`` by
            default: a Python child gets ``KeyboardInterrupt``).
        interrupt_grace: Milliseconds (or a ``timedelta``) between the
            interrupt signal and SIGTERM.
        terminate_grace: Milliseconds (or a ``timedelta``) between SIGTERM
            and SIGKILL.
        **kwargs: Any keyword argument of ``asyncio.create_subprocess_exec``
            (``stdin``, ``stdout``, ``env``, ``cwd``...).
            ``start_new_session`` defaults to ``True``.

    Returns:
        A :class:`GuardedExec`: use it in an ``async with`` statement, once.

    Raises:
        TypeError: ``program`` is a list (pass the arguments one by one) or
            an argument is not a string or path; ``interrupt_signal`` is not
            a signal number, or a grace is neither a number nor a
            ``timedelta``.
        ValueError: ``interrupt_signal`` is no valid signal, or a grace is
            negative.
        NotImplementedError: Not a POSIX system.

    Note:
        A second exception during the graces (the task cancelled again,
        as ``Abortable(cleanup_timeout=...)`` does when the aborted
        coroutine outlives its cleanup time, 5 s by default) skips the
        rest of the escalation: SIGKILL at once, then the guard waits for
        the exit status, even through further cancellations, and raises
        that second exception.  In a worker, keep ``interrupt_grace +
        terminate_grace`` below the cleanup time, or SIGTERM never comes.
        A coroutine closed without being run to its end
        (``GeneratorExit``, ``aclose()`` of an async generator) cannot
        await: its child's group gets SIGKILL at once.

        The child starts in a new session (``start_new_session=True``), so
        it leads its own process group: one signal reaches it and every
        process it started that stayed in its group.  If you pass
        ``start_new_session`` or ``process_group`` yourself, the group is
        signalled only when the child leads it; otherwise the child alone
        is.

        The guard waits for the child's *exit*, not for its pipes to
        close as ``process.wait()`` does, so a grandchild holding the
        child's stdout does not hold up the escalation; it is killed with
        what is left of the group.  Leaving the block normally with
        ``stdout=PIPE`` unread can wait forever for a child blocked on a
        full pipe, as ``process.wait()`` would: read it, or use
        ``communicate()``.

        asyncio's child watcher reaps the child one loop step or more
        before ``process.returncode`` is set, so the guard also checks
        that the child is unreaped right before each signal, with no
        ``await`` in between: a signal to the child alone goes through a
        pidfd (Linux) and never reaches a reused pid.  A group signal, or
        any signal where there is no pidfd, follows the check within
        microseconds, during which a thread-based child watcher (the
        default before Python 3.12) could reap the child; the group id
        still cannot be reused while any member of the group lives.  Once
        the child has exited, what is left of its group gets SIGKILL by
        that group id.  An
        abort that arrives while asyncio is still starting the child is
        handled by asyncio: it kills the child (alone) and re-raises.  In
        a synchronous actor, use :func:`~dramatiq_abort.guarded_popen`.

    Example:
        >>> async with guarded_exec("ffmpeg", "-i", src, dst) as process:
        ...     await process.wait()  # doctest: +SKIP
    """
    return GuardedExec(
        program,
        *args,
        interrupt_signal=interrupt_signal,
        interrupt_grace=interrupt_grace,
        terminate_grace=terminate_grace,
        **kwargs,
    )
