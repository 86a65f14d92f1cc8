"""``guarded_popen()`` and ``guarded_run()``: subprocesses an abort stops, group and all.

A worker thread waiting on a child (``proc.wait()``, ``proc.communicate()``)
sits in a system call, where ``Abort`` cannot land.  So the guard adds a
delivery hook to the running message: the moment ``Abort`` is delivered,
the watcher side signals the child's process group and a stopper thread
escalates to SIGTERM, then SIGKILL, while it does not exit.  The wait then
returns, ``Abort`` lands, and the guard reaps the child before letting it
propagate.

Process ids are reused once a process is reaped, and a process group's id is
its leader's pid.  Every signal is sent under the guard's lock, only while
the guard is open (it closes itself, under the lock, before it reaps the
child) and only after checking, through a pidfd on Linux, that the child
has not been reaped by anyone else.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, ClassVar, Generic, Protocol, TypeAlias, TypeVar

from . import _green
from ._registry import REGISTRY, _Running
from ._request import MAX_MS, Duration, to_ms

__all__ = ["GuardedPopen", "guarded_popen", "guarded_run"]

_logger = logging.getLogger("dramatiq_abort")

#: What ``subprocess.Popen`` accepts as its first argument.
Command: TypeAlias = (
    str
    | bytes
    | os.PathLike[str]
    | os.PathLike[bytes]
    | Sequence[str | bytes | os.PathLike[str] | os.PathLike[bytes]]
)

#: Default milliseconds between the interrupt signal and SIGTERM.
DEFAULT_INTERRUPT_GRACE = 5000
#: Default milliseconds between SIGTERM and SIGKILL.
DEFAULT_TERMINATE_GRACE = 5000

#: Seconds between two looks at a child where no pidfd can wait for it.
_POLL_INTERVAL = 0.005
#: The longest wait, in ms, of one ``poll()`` on a pidfd.
_MAX_POLL_MS = 86_400_000

# States of a guard.
_NEW, _RUNNING, _STOPPING, _CLOSED = "new", "running", "stopping", "closed"
# Steps of the escalation: what was sent last.
_NOTHING, _INTERRUPTED, _TERMINATED, _KILLED = range(4)


def _check_signal(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        msg = (
            f"interrupt_signal must be a signal such as signal.SIGINT or signal.SIGTERM, "
            f"not {value!r}"
        )
        raise TypeError(msg)
    if value not in signal.valid_signals():
        msg = (
            f"interrupt_signal must be a valid signal number such as signal.SIGINT "
            f"({int(signal.SIGINT)}), not {value!r}: see signal.valid_signals()"
        )
        raise ValueError(msg)
    return value


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _open_pidfd(pid: int) -> int | None:
    """A pidfd for the (unreaped) child, or ``None`` where the system has none."""
    if sys.platform != "linux" or not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:  # an old kernel, or a sandbox that forbids it
        return None


def _require_posix(name: str, instead: str) -> None:
    """Raise ``NotImplementedError`` for guard ``name`` off POSIX, pointing to ``instead``."""
    if os.name != "posix":
        msg = (
            f"{name} needs a POSIX system (process groups and signals); "
            f"use {instead} on this platform"
        )
        raise NotImplementedError(msg)


class _Child(Protocol):
    """What a guard needs of its child: ``subprocess.Popen`` or an asyncio ``Process``."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...


_P = TypeVar("_P", bound=_Child)


class _GuardBase(Generic[_P]):
    """The options, state, properties and signalling shared by the guards.

    :class:`GuardedPopen` (threads) and ``aprocess.GuardedExec`` (asyncio)
    each run their own escalation; this holds what they do alike.
    """

    __slots__ = (
        "_group",
        "_interrupt_grace",
        "_interrupt_signal",
        "_leftovers_done",
        "_pidfd",
        "_process",
        "_reason",
        "_signalled",
        "_state",
        "_step",
        "_terminate_grace",
    )

    #: How the guard is used, for the error of a guard used outside its block.
    _statement: ClassVar[str] = "a with statement"

    def __init__(
        self,
        interrupt_signal: int,
        interrupt_grace: Duration,
        terminate_grace: Duration,
        kwargs: dict[str, Any],
    ) -> None:
        self._interrupt_signal = _check_signal(interrupt_signal)
        self._interrupt_grace = to_ms(interrupt_grace, "interrupt_grace")
        self._terminate_grace = to_ms(terminate_grace, "terminate_grace")
        if "start_new_session" not in kwargs and "process_group" not in kwargs:
            # The child leads a group of its own, so one signal reaches its
            # children too, and a Ctrl-C meant for the worker does not.
            kwargs["start_new_session"] = True
        self._state = _NEW
        self._process: _P | None = None
        self._pidfd: int | None = None
        self._group = False
        self._reason = ""
        self._step = _NOTHING
        self._signalled = False
        self._leftovers_done = False

    def _describe(self, name: str, args: object) -> str:
        """The text of ``repr()``, for a guard called ``name`` running ``args``."""
        return (
            f"<{name} args={args!r} pid={self._pid()} state={self._state} "
            f"interrupt_signal={_signal_name(self._interrupt_signal)} "
            f"interrupt_grace={self._interrupt_grace} terminate_grace={self._terminate_grace}>"
        )

    # -- read-only properties --------------------------------------------------

    @property
    def interrupt_signal(self) -> int:
        """The signal sent first when the child must stop."""
        return self._interrupt_signal

    @property
    def interrupt_grace(self) -> int:
        """Milliseconds the child gets after the interrupt signal, before SIGTERM."""
        return self._interrupt_grace

    @property
    def terminate_grace(self) -> int:
        """Milliseconds the child gets after SIGTERM, before SIGKILL."""
        return self._terminate_grace

    @property
    def stopped(self) -> bool:
        """Whether the guard signalled the child to stop it, rather than only waiting for it."""
        return self._signalled

    # -- signalling --------------------------------------------------------------

    def _record_step(self, step: int, sig: int, sent: bool, why: str) -> None:
        """Note that ``step`` of the escalation sent ``sig`` (or found nothing to signal).

        ``why`` ends the log line of SIGTERM and SIGKILL.
        """
        self._signalled = self._signalled or sent
        self._step = step
        if sent:
            target = "the process group of child" if self._group else "child"
            log = _logger.info if step == _INTERRUPTED else _logger.warning
            log(
                "Sending %s to %s %s (%s)%s.",
                _signal_name(sig),
                target,
                self._pid(),
                self._reason,
                "" if step == _INTERRUPTED else why,
            )

    def _send_unless_reaped(self, sig: int, reaped: Callable[[int], bool]) -> bool:
        """Signal the child's group (or the child) unless it was reaped.

        ``reaped(pid)`` tells, where there is no pidfd, whether the child was.
        """
        process = self._process
        if self._state == _CLOSED or process is None or process.returncode is not None:
            return False
        pidfd = self._pidfd
        try:
            if pidfd is not None and sys.platform == "linux":
                # A pidfd names this very process: once it is reaped, this
                # fails, whoever was given the pid since.
                signal.pidfd_send_signal(pidfd, 0 if self._group else sig)
            elif reaped(process.pid):
                return False
            if self._group:
                os.killpg(process.pid, sig)
            elif pidfd is None:
                os.kill(process.pid, sig)
        except ProcessLookupError:
            return False
        except OSError as error:
            _logger.warning(
                "Could not send %s to child %s: %s", _signal_name(sig), process.pid, error
            )
            return False
        return True

    def _kill_leftovers(self) -> None:
        """SIGKILL what is left of the child's group once the child has exited.

        Only when a signal of the guard reached the child unreaped, and as
        soon as its exit is seen: the group's id is the child's pid, which
        is not reused while any member lives, nor this soon after the child
        exited.
        """
        process = self._process
        if process is None or not self._group or not self._signalled or self._leftovers_done:
            return
        self._leftovers_done = True
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # the group is empty already
        except OSError as error:
            _logger.warning("Could not end the process group %s: %s", process.pid, error)

    def _close_pidfd(self) -> None:
        pidfd, self._pidfd = self._pidfd, None
        if pidfd is not None:
            os.close(pidfd)

    def _child(self) -> _P:
        process = self._process
        if process is None:
            msg = f"{self!r} has not started its child: use it in {self._statement}"
            raise RuntimeError(msg)
        return process

    def _pid(self) -> int | None:
        return None if self._process is None else self._process.pid


#: Seconds to wait for gevent's ``communicate()`` helpers once the group is dead.
_READERS_JOIN_S = 5.0


def _join_readers(process: Any) -> None:
    """Under gevent: let ``communicate()``'s helper greenlets, cut off by the abort, end.

    gevent's ``Popen.communicate`` reads and writes the pipes in greenlets
    of its own, which outlive an ``Abort`` thrown into the caller; closing a
    pipe one of them still reads fails ("reentrant call").  The child's
    group is dead by now, so the pipes are at their end and they finish.
    """
    readers = getattr(process, "_communicating_greenlets", None)  # gevent's Popen only
    if readers:
        gevent: Any = sys.modules["gevent"]
        gevent.joinall(list(readers), timeout=_READERS_JOIN_S)


class _GuardedProcess(subprocess.Popen[Any]):
    """The child's ``Popen``, whose ``wait()`` sees the child exit before it reaps it.

    An ``Abort`` delivered while the thread waits lands right after the
    system call returns.  Were that call ``waitpid``, the child would be
    reaped and its exit status lost with the interrupted frame.  Waiting
    first without reaping lets ``Abort`` land while the child is unreaped,
    and the guard then reaps it with its status.
    """

    _guard: GuardedPopen | None = None

    def wait(self, timeout: float | None = None, **options: Any) -> int:
        """Wait for the child to exit, then reap it, as ``Popen.wait`` does.

        ``options`` go to the base class: gevent's ``Popen`` takes one more.
        """
        guard = self._guard
        if (
            guard is not None
            and self.returncode is None
            and guard._is_open()
            and not guard._wait_exit(timeout)
        ):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return super().wait(timeout, **options)


class GuardedPopen(_GuardBase[subprocess.Popen[Any]]):
    """A subprocess that is stopped, group and all, when its block is left by an exception.

    Made by :func:`guarded_popen`; ``with`` it to start the child.  A guard
    starts one child and cannot be reused.
    """

    __slots__ = ("_args", "_entry", "_hook", "_kwargs", "_lock", "_step_deadline", "_stopper")

    def __init__(
        self,
        args: Command,
        *,
        interrupt_signal: int = signal.SIGINT,
        interrupt_grace: Duration = DEFAULT_INTERRUPT_GRACE,
        terminate_grace: Duration = DEFAULT_TERMINATE_GRACE,
        **popen_kwargs: Any,
    ) -> None:
        _require_posix("guarded_popen", "subprocess.Popen")
        super().__init__(interrupt_signal, interrupt_grace, terminate_grace, popen_kwargs)
        self._args = args
        self._kwargs = popen_kwargs
        self._lock = threading.Lock()
        self._entry: _Running | None = None
        self._hook = self._on_abort
        self._step_deadline: float | None = None
        self._stopper: threading.Thread | None = None

    def __repr__(self) -> str:
        return self._describe("GuardedPopen", self._args)

    # -- read-only properties --------------------------------------------------

    @property
    def process(self) -> subprocess.Popen[Any] | None:
        """The child's ``Popen``, once the block was entered."""
        return self._process

    # -- the block -------------------------------------------------------------

    def __enter__(self) -> subprocess.Popen[Any]:
        if self._state != _NEW:
            msg = f"{self!r} was already used: call guarded_popen() again for each child"
            raise RuntimeError(msg)
        entry = REGISTRY.current()
        if entry is None:
            return self._start(None)
        # Hold a due Abort back while the child starts, so it cannot land
        # between the fork and the hook; it is raised (and its hook run) on
        # leaving the shield, and then stops the child at once.
        REGISTRY.shield_enter(entry)
        try:
            process = self._start(entry)
        finally:
            try:
                REGISTRY.shield_exit(entry)
            except BaseException as error:
                if self._process is not None:
                    self._abandon(f"{type(error).__name__} while it started")
                raise
        return process

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is None:
            return
        if exc_type is None:
            self._leave_normally()
        else:
            self._abandon(f"{exc_type.__name__} left its block")

    def _start(self, entry: _Running | None) -> subprocess.Popen[Any]:
        process = _GuardedProcess(self._args, **self._kwargs)
        self._process = process
        process._guard = self
        try:
            self._pidfd = _open_pidfd(process.pid)
            try:
                # The child ran setsid/setpgid before exec, and nobody has reaped it yet.
                self._group = os.getpgid(process.pid) == process.pid
            except ProcessLookupError:
                self._group = False
            self._state = _RUNNING
            if entry is not None:
                self._entry = entry
                entry.hooks.append(self._hook)
        except BaseException as error:
            self._abandon(f"{type(error).__name__} while it started")
            raise
        return process

    def _leave_normally(self) -> None:
        """Close the pipes and wait for the child, as ``Popen``'s own ``with`` does."""
        process = self._child()
        stdin_error: OSError | None = None
        try:
            for stream in (process.stdout, process.stderr):
                if stream:
                    stream.close()
            try:
                if process.stdin:
                    process.stdin.close()
            except OSError as error:  # flushing into a pipe the child closed
                stdin_error = error
            self._wait_exit(None)
            self._close_and_reap()
        except BaseException as error:
            # Interrupted while waiting (an Abort, whose hook is stopping the
            # child already, or a KeyboardInterrupt): stop it as on any exception.
            self._abandon(f"{type(error).__name__} while waiting for it")
            raise
        if stdin_error is not None:
            raise stdin_error

    def _abandon(self, reason: str) -> None:
        """Stop the child with the escalation, end its group, reap it; block here until then."""
        with self._lock:
            if self._state in (_NEW, _RUNNING):
                self._state = _STOPPING
                self._reason = reason
        try:
            self._drive()
        except BaseException:
            # Interrupted again while stopping: no more grace.
            with self._lock:
                self._advance_locked(_KILLED)
            raise
        finally:
            self._close_and_reap()
            process = self._child()
            _join_readers(process)
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream:
                    # Unflushed input the dead child will never read fails with EPIPE.
                    with contextlib.suppress(OSError):
                        stream.close()

    def _close_and_reap(self) -> None:
        """Close the guard (no signal after this) and reap the child."""
        process = self._child()
        with self._lock:
            if self._state == _STOPPING:
                self._kill_leftovers_locked()
            self._state = _CLOSED
            close_pidfd = self._stopper is None
        try:
            try:
                process.wait()
            finally:
                entry = self._entry
                if entry is not None and self._hook in entry.hooks:
                    entry.hooks.remove(self._hook)
        finally:
            if close_pidfd:
                with self._lock:
                    self._close_pidfd_locked()

    # -- stopping --------------------------------------------------------------

    def _on_abort(self) -> None:
        """Delivery hook, run right after ``Abort`` was raised in the worker thread.

        It runs where the delivery happened: the watcher or timer thread, or
        the worker thread leaving a shield.  It must not block: it sends the
        interrupt signal and leaves the escalation to a stopper thread.
        """
        with self._lock:
            if self._state != _RUNNING:
                return
            self._state = _STOPPING
            entry = self._entry
            self._reason = f"message {entry.message_id if entry else None} was aborted"
            self._advance_locked()
            if not self._signalled:
                return  # reaped already: there is nothing left to stop
            stopper = threading.Thread(
                target=self._stop_in_background, name="dramatiq-abort-stopper", daemon=True
            )
            self._stopper = stopper
        try:
            stopper.start()
        except BaseException:
            with self._lock:
                self._stopper = None
            raise

    def _stop_in_background(self) -> None:
        try:
            self._drive()
        except Exception:
            _logger.exception("Stopping child process %s failed.", self._pid())
        finally:
            with self._lock:
                self._stopper = None
                if self._state == _CLOSED:
                    self._close_pidfd_locked()

    def _drive(self) -> None:
        """Send the escalation's signals at their times until the child exits; end its group."""
        while True:
            with self._lock:
                if self._step == _NOTHING:
                    self._advance_locked()
                step, deadline = self._step, self._step_deadline
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self._wait_exit(timeout):
                break
            with self._lock:
                if self._state == _CLOSED:
                    return  # the worker thread killed the child and reaps it
                if self._step == step:
                    self._advance_locked()
        with self._lock:
            self._kill_leftovers_locked()

    def _advance_locked(self, to: int | None = None) -> None:
        """Send the next signal of the escalation (or jump to ``to``); hold the lock."""
        step = self._step + 1 if to is None else to
        if step <= self._step or step > _KILLED:
            return
        sig, grace = (
            (self._interrupt_signal, self._interrupt_grace),
            (signal.SIGTERM, self._terminate_grace),
            (signal.SIGKILL, None),
        )[step - 1]
        sent = self._send_unless_reaped(sig, lambda _pid: self._reaped_elsewhere())
        self._step_deadline = None if grace is None else time.monotonic() + grace / 1000
        self._record_step(step, sig, sent, ": it outlived its grace")

    def _kill_leftovers_locked(self) -> None:
        """SIGKILL what is left of the child's group once the child has exited; hold the lock.

        Only when the interrupt reached the child unreaped, and at once when
        its exit is seen: the group's id is the child's pid, which is not
        reused while any member lives, nor this soon after the child exited.
        """
        if self._state != _CLOSED:
            self._kill_leftovers()

    # -- waiting without reaping -------------------------------------------------

    def _wait_exit(self, timeout: float | None) -> bool:
        """Wait until the child has exited, without reaping it; ``False`` on timeout."""
        process = self._child()
        if process.returncode is not None:
            return True
        pidfd = self._pidfd
        deadline = None if timeout is None or timeout == math.inf else time.monotonic() + timeout
        if pidfd is not None:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            if deadline is None:
                return bool(poller.poll())
            while True:
                # poll() takes an int of milliseconds: wait at most a day at a time.
                wait_ms = min(_MAX_POLL_MS, math.ceil((deadline - time.monotonic()) * 1000))
                if poller.poll(max(0, wait_ms)):
                    return True
                if wait_ms < _MAX_POLL_MS:
                    return False
        while not self._exited():
            if deadline is None:
                # Under gevent a blocking waitid() would stop every greenlet.
                if hasattr(os, "waitid") and not _green.patched():
                    # ChildProcessError: reaped by another waiter.
                    with contextlib.suppress(ChildProcessError):
                        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
                    return True
                time.sleep(_POLL_INTERVAL)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(_POLL_INTERVAL, left))
        return True

    def _exited(self) -> bool:
        process = self._child()
        if process.returncode is not None:
            return True
        if hasattr(os, "waitid"):
            try:
                flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
                return os.waitid(os.P_PID, process.pid, flags) is not None
            except ChildProcessError:
                return True
        return process.poll() is not None

    def _reaped_elsewhere(self) -> bool:
        process = self._child()
        if hasattr(os, "waitid"):
            try:
                os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return True
            return False
        return process.poll() is not None

    def _close_pidfd_locked(self) -> None:
        self._close_pidfd()

    def _is_open(self) -> bool:
        return self._state in (_RUNNING, _STOPPING)


def guarded_popen(
    args: Command,
    *,
    interrupt_signal: int = signal.SIGINT,
    interrupt_grace: Duration = DEFAULT_INTERRUPT_GRACE,
    terminate_grace: Duration = DEFAULT_TERMINATE_GRACE,
    **popen_kwargs: Any,
) -> GuardedPopen:
    """Start a subprocess that an abort (or any exception) stops, with its own children.

    ``with guarded_popen(args) as proc:`` starts the child and gives its
    ``subprocess.Popen``.  Leaving the block normally waits for the child,
    as ``Popen``'s own ``with`` does.  When the running message is aborted
    while the block runs, the child's process group gets
    ``interrupt_signal`` at once, from the worker's watcher thread, so a
    ``proc.wait()`` or ``proc.communicate()`` in the block returns as soon
    as the child exits and ``Abort`` lands there; the block need not poll.
    If the child is still running ``interrupt_grace`` later it gets SIGTERM,
    and ``terminate_grace`` after that SIGKILL.  Once it has exited, what is
    left of its process group is killed, the child is reaped, and ``Abort``
    propagates.  Any other exception leaving the block (``KeyboardInterrupt``
    included) stops the child the same way.

    Args:
        args: The program and its arguments, as for ``subprocess.Popen``.
        interrupt_signal: The first signal sent (``signal.SIGINT`` by
            default: a Python child gets ``KeyboardInterrupt``).
        interrupt_grace: Milliseconds (or a ``timedelta``) between the
            interrupt signal and SIGTERM.
        terminate_grace: Milliseconds (or a ``timedelta``) between SIGTERM
            and SIGKILL.
        **popen_kwargs: Any keyword argument of ``subprocess.Popen``.
            ``start_new_session`` defaults to ``True``.

    Returns:
        A :class:`GuardedPopen`: use it in a ``with`` statement, once.

    Raises:
        TypeError: ``interrupt_signal`` is not a signal number, or a grace
            is neither a number nor a ``timedelta``.
        ValueError: ``interrupt_signal`` is no valid signal, or a grace is
            negative.
        NotImplementedError: Not a POSIX system.

    Note:
        The child starts in a new session (``start_new_session=True``), so
        it leads its own process group: one signal reaches it and every
        process it started that stayed in its group, and a Ctrl-C meant for
        the worker does not reach it directly.  If you pass
        ``start_new_session`` or ``process_group`` yourself, the group is
        signalled only when the child leads it (``start_new_session=True``
        or ``process_group=0``); otherwise the child alone is, and its own
        children are not reached.

        The signal goes out when ``Abort`` is *delivered*: after the
        abort's grace, and not while an ``abort_scope(shield=True)`` holds
        the abort back (the child is then signalled when the shield ends,
        if it is still running).  It is not sent for a message that ends
        by dramatiq's time limit or shutdown, whose interrupts cannot wake
        the wait either.

        Once the child has been reaped (your ``proc.wait()`` returned
        before the abort), its pid may be reused, so nothing is signalled
        any more: processes the child left in its group are not reached.
        Grandchildren that ended after their parent are reaped by the
        system's init process.  In an ``async def`` actor the guard works
        too, but a ``proc.wait()`` there blocks the event loop: wait in an
        executor (``await loop.run_in_executor(None, proc.wait)``).

        Outside a worker the block is a ``Popen`` that is stopped this way
        when an exception leaves it.

    Example:
        >>> with guarded_popen(["ffmpeg", "-i", src, dst], interrupt_grace=2000) as proc:
        ...     proc.wait()  # doctest: +SKIP
    """
    return GuardedPopen(
        args,
        interrupt_signal=interrupt_signal,
        interrupt_grace=interrupt_grace,
        terminate_grace=terminate_grace,
        **popen_kwargs,
    )


def _timeout_seconds(timeout: object) -> float | None:
    if timeout is None:
        return None
    seconds: int | float | None = None
    if isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, int) and not isinstance(timeout, bool):
        seconds = timeout  # compared exactly: float() of a huge int overflows
    elif isinstance(timeout, float):
        if not math.isfinite(timeout):
            msg = (
                f"timeout must be a finite number of seconds, or None to wait forever, "
                f"not {timeout!r}"
            )
            raise ValueError(msg)
        seconds = timeout
    if seconds is not None:
        # Longer waits overflow the millisecond arithmetic of the waits.
        if not -MAX_MS // 1000 <= seconds <= MAX_MS // 1000:
            msg = (
                f"timeout must be a number of seconds between {-MAX_MS // 1000} and "
                f"{MAX_MS // 1000} (about 31 years), or None to wait forever, not {timeout!r}"
            )
            raise ValueError(msg)
        return float(seconds)
    msg = (
        f"timeout must be a number of seconds (as in subprocess.run), a datetime.timedelta "
        f"or None, not {timeout!r}"
    )
    raise TypeError(msg)


def guarded_run(
    args: Command,
    *,
    input: Any = None,
    capture_output: bool = False,
    timeout: float | timedelta | None = None,
    check: bool = False,
    interrupt_signal: int = signal.SIGINT,
    interrupt_grace: Duration = DEFAULT_INTERRUPT_GRACE,
    terminate_grace: Duration = DEFAULT_TERMINATE_GRACE,
    **popen_kwargs: Any,
) -> subprocess.CompletedProcess[Any]:
    """Run a command to completion, as ``subprocess.run`` does, in a :func:`guarded_popen`.

    An abort of the running message stops the child (and its group) as
    :func:`guarded_popen` does, then ``Abort`` propagates.

    Args:
        args: The program and its arguments, as for ``subprocess.run``.
        input: Data sent to the child's stdin (``bytes``, or ``str`` in
            text mode); it sets ``stdin=PIPE``.
        capture_output: Capture stdout and stderr (both set to ``PIPE``).
        timeout: Seconds, as in ``subprocess.run`` (or a ``timedelta``),
            after which the child is stopped and ``TimeoutExpired`` raised.
        check: Raise ``CalledProcessError`` if the child exits non-zero.
        interrupt_signal: As in :func:`guarded_popen`.
        interrupt_grace: As in :func:`guarded_popen`.
        terminate_grace: As in :func:`guarded_popen`.
        **popen_kwargs: Any keyword argument of ``subprocess.Popen``, such
            as ``text``, ``env`` or ``cwd``.

    Returns:
        The ``subprocess.CompletedProcess``.

    Raises:
        subprocess.TimeoutExpired: The timeout expired; the child was stopped.
        subprocess.CalledProcessError: ``check`` is set and the child failed.
        ValueError: ``input`` with ``stdin``, or ``capture_output`` with
            ``stdout`` or ``stderr``; or a bad argument, as in
            :func:`guarded_popen`.
        TypeError: A bad argument, as in :func:`guarded_popen`.

    Note:
        ``timeout`` is in seconds, as in ``subprocess.run``, so that
        swapping one call for the other keeps its meaning.  When it
        expires, the child is stopped with the escalation (interrupt
        signal, SIGTERM, SIGKILL), where ``subprocess.run`` kills it at once.

    Example:
        >>> done = guarded_run(["git", "fetch"], capture_output=True, text=True, check=True)
        ... # doctest: +SKIP
    """
    seconds = _timeout_seconds(timeout)
    if input is not None:
        if popen_kwargs.get("stdin") is not None:
            msg = "guarded_run takes input or stdin, not both: drop stdin=, input sets it to PIPE"
            raise ValueError(msg)
        popen_kwargs["stdin"] = subprocess.PIPE
    if capture_output:
        if popen_kwargs.get("stdout") is not None or popen_kwargs.get("stderr") is not None:
            msg = (
                "guarded_run takes capture_output or stdout/stderr, not both: drop stdout= "
                "and stderr=, capture_output sets them to PIPE"
            )
            raise ValueError(msg)
        popen_kwargs["stdout"] = popen_kwargs["stderr"] = subprocess.PIPE
    guard = GuardedPopen(
        args,
        interrupt_signal=interrupt_signal,
        interrupt_grace=interrupt_grace,
        terminate_grace=terminate_grace,
        **popen_kwargs,
    )
    with guard as process:
        stdout, stderr = process.communicate(input, timeout=seconds)
    returncode = process.returncode
    if check and returncode:
        raise subprocess.CalledProcessError(returncode, process.args, stdout, stderr)
    return subprocess.CompletedProcess(process.args, returncode, stdout, stderr)
