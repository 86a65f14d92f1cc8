"""``guarded_popen()`` and ``guarded_run()``: real children, real signals, real workers.

The children are small Python scripts written to the test's own directory
and run with ``sys.executable``.  A child that must be running before the
test aborts it says so through a FIFO the test reads, and logs every
signal it handles to a file, so the tests wait on FIFOs, events, pidfds
and process exits, and read what happened; only actor code that waits
for its own abort request polls its scope, as an actor would.  Graces are
short (``GRACE`` ms) to keep the suite fast.  Some tests run twice: with
pidfds, and with ``_open_pidfd`` made to find none, to cover the portable
POSIX path that other systems take.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import dramatiq
import psutil
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AsyncIO

from children import Child, dead, ended, gone, read_line
from conftest import Outcomes, join
from dramatiq_abort import (
    Abort,
    Abortable,
    EventBackend,
    abort,
    abort_scope,
    backends,
    guarded_popen,
    guarded_run,
)
from dramatiq_abort import process as process_module

StartWorker = Callable[..., Worker]

#: Bound, in seconds, on any single wait of these tests.
WAIT = 30.0
#: Milliseconds of grace the tests give children before escalating.
GRACE = 200


@pytest.fixture
def outcomes() -> Outcomes:
    """A fresh spy per test."""
    return Outcomes()


@pytest.fixture
def stub(stub_broker: StubBroker, outcomes: Outcomes) -> StubBroker:
    """The stub broker with an Abortable on the in-memory backend, and the spy."""
    stub_broker.add_middleware(Abortable(backend=backends.StubBackend()))
    stub_broker.add_middleware(outcomes)
    return stub_broker


@pytest.fixture(params=[True, False], ids=["pidfd", "no-pidfd"])
def pidfd(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    """Run with pidfds, and as on a system without them (the portable POSIX path)."""
    if not request.param:
        monkeypatch.setattr(process_module, "_open_pidfd", lambda pid: None)
    yield request.param


# -- aborts in a worker ------------------------------------------------------------


def test_abort_wakes_wait_and_the_child_cleans_up(
    stub: StubBroker, outcomes: Outcomes, start_worker: StartWorker, make_child: Callable[[], Child]
) -> None:
    """An abort wakes proc.wait(): the child gets SIGINT, cleans up, is reaped; Abort ends it."""
    child = make_child()
    seen: dict[str, Any] = {}
    inside = threading.Event()

    @dramatiq.actor(broker=stub, max_retries=0)
    def convert() -> None:
        with guarded_popen(child.args("trap")) as proc:
            seen["proc"] = proc
            inside.set()
            try:
                proc.wait()
            except Abort:
                seen["at abort"] = proc.returncode
                raise

    worker = start_worker(stub)
    message = convert.send()
    running = child.wait_ready()
    assert inside.wait(WAIT)
    abort(message.message_id)
    assert outcomes.ended(message.message_id) == "Abort"
    join(stub, "default", worker)
    assert child.log == ["SIGINT", "cleaned up"]
    assert isinstance(seen["proc"], subprocess.Popen)
    # Abort landed before the child was reaped, so its status was kept.
    assert seen["at abort"] is None
    assert seen["proc"].returncode == 7
    assert gone(running)


def test_abort_wakes_communicate(
    stub: StubBroker, outcomes: Outcomes, start_worker: StartWorker, make_child: Callable[[], Child]
) -> None:
    """An abort wakes proc.communicate() with piped output, and the message ends with Abort."""
    child = make_child()
    seen: dict[str, Any] = {}
    inside = threading.Event()

    @dramatiq.actor(broker=stub, max_retries=0)
    def convert() -> None:
        with guarded_popen(
            child.args("trap"), stdin=subprocess.PIPE, stdout=subprocess.PIPE
        ) as proc:
            seen["proc"] = proc
            inside.set()
            proc.communicate(b"")
            seen["communicate returned"] = True

    worker = start_worker(stub)
    message = convert.send()
    child.wait_ready()
    assert inside.wait(WAIT)
    abort(message.message_id)
    assert outcomes.ended(message.message_id) == "Abort"
    join(stub, "default", worker)
    assert child.log == ["SIGINT", "cleaned up"]
    assert "communicate returned" not in seen
    assert seen["proc"].returncode == 7


def test_abort_on_the_redis_backend(
    stub_broker: StubBroker,
    redis_backend: EventBackend,
    outcomes: Outcomes,
    start_worker: StartWorker,
    make_child: Callable[[], Child],
) -> None:
    """With the Redis event backend too, an abort reaches the child through proc.wait()."""
    stub_broker.add_middleware(Abortable(backend=redis_backend))
    stub_broker.add_middleware(outcomes)
    child = make_child()

    @dramatiq.actor(broker=stub_broker, max_retries=0)
    def convert() -> None:
        with guarded_popen(child.args("trap")) as proc:
            proc.wait()

    worker = start_worker(stub_broker)
    message = convert.send()
    running = child.wait_ready()
    abort(message.message_id)
    assert outcomes.ended(message.message_id) == "Abort"
    join(stub_broker, "default", worker)
    assert child.log == ["SIGINT", "cleaned up"]
    assert gone(running)


@pytest.mark.parametrize(
    ("behaviour", "log", "returncode"),
    [
        ("stubborn", ["SIGINT", "SIGTERM", "cleaned up"], 7),
        ("immortal", ["SIGINT", "SIGTERM"], -signal.SIGKILL),
    ],
    ids=["to SIGTERM", "to SIGKILL"],
)
def test_abort_escalates(
    stub: StubBroker,
    outcomes: Outcomes,
    start_worker: StartWorker,
    make_child: Callable[[], Child],
    pidfd: bool,
    behaviour: str,
    log: list[str],
    returncode: int,
) -> None:
    """A child that outlives SIGINT gets SIGTERM after the grace, then SIGKILL after the next."""
    child = make_child()
    seen: dict[str, Any] = {}
    inside = threading.Event()

    @dramatiq.actor(broker=stub, max_retries=0)
    def convert() -> None:
        with guarded_popen(
            child.args(behaviour),
            interrupt_grace=GRACE,
            terminate_grace=timedelta(milliseconds=GRACE),
        ) as proc:
            seen["proc"] = proc
            inside.set()
            proc.wait()

    worker = start_worker(stub)
    message = convert.send()
    running = child.wait_ready()
    assert inside.wait(WAIT)
    abort(message.message_id)
    assert outcomes.ended(message.message_id) == "Abort"
    join(stub, "default", worker)
    assert child.log == log
    assert seen["proc"].returncode == returncode
    assert gone(running)


def test_grandchildren_die_with_the_child(
    stub: StubBroker,
    outcomes: Outcomes,
    start_worker: StartWorker,
    make_child: Callable[[], Child],
    pidfd: bool,
) -> None:
    """The whole process group gets SIGINT: child and grandchild end, and neither is a zombie."""
    child = make_child()

    @dramatiq.actor(broker=stub, max_retries=0)
    def convert() -> None:
        with guarded_popen(child.args("trap", "grandchild")) as proc:
            proc.wait()

    worker = start_worker(stub)
    message = convert.send()
    running = child.wait_ready()
    grandchild, _ = child.grandchild()
    assert grandchild.ppid() == running.pid
    abort(message.message_id)
    assert outcomes.ended(message.message_id) == "Abort"
    join(stub, "default", worker)
    assert child.log == ["SIGINT", f"grandchild exited {-signal.SIGINT}", "cleaned up"]
    assert gone(running)
    assert gone(grandchild)


def test_what_the_child_leaves_in_its_group_is_killed(
    stub: StubBroker,
    outcomes: Outcomes,
    start_worker: StartWorker,
    make_child: Callable[[], Child],
    pidfd: bool,
) -> None:
    """A grandchild that ignores SIGINT and outlives its parent is killed when the parent exits."""
    child = make_child()

    @dramatiq.actor(broker=stub, max_retries=0)
    def convert() -> None:
        with guarded_popen(child.args("trap", "leave-grandchild"), stdout=subprocess.PIPE) as proc:
            # The grandchild holds this pipe open too: communicate() only
            # returns once it is gone.
            proc.communicate()

    worker = start_worker(stub)
    message = convert.send()
    running = child.wait_ready()
    grandchild, grandchild_fd = child.grandchild()
    abort(message.message_id)
    assert outcomes.ended(message.message_id) == "Abort"
    join(stub, "default", worker)
    assert child.log == ["SIGINT", "cleaned up"]
    assert gone(running)
    # SIGKILL was sent before the child was reaped; the kernel ends the
    # grandchild at once but asynchronously, so wait for its exit.
    assert ended(grandchild_fd)
    # Orphaned when its parent exited, it is reaped by init (which some
    # containers' pid 1 never does), so it may linger as a zombie: not running.
    assert dead(grandchild)


def test_exception_in_the_block_stops_the_child(
    stub: StubBroker, outcomes: Outcomes, start_worker: StartWorker, make_child: Callable[[], Child]
) -> None:
    """Any exception leaving the block stops and reaps the child, then propagates unchanged."""
    child = make_child()
    seen: dict[str, Any] = {}

    @dramatiq.actor(broker=stub, max_retries=0)
    def convert() -> None:
        with guarded_popen(child.args("trap")) as proc:
            seen["proc"] = proc
            child.wait_ready()
            raise ValueError("bad input")

    worker = start_worker(stub)
    message = convert.send()
    assert outcomes.ended(message.message_id) == "ValueError"
    join(stub, "default", worker)
    assert child.log == ["SIGINT", "cleaned up"]
    assert seen["proc"].returncode == 7


def test_normal_exit_waits_for_the_child(
    stub: StubBroker, outcomes: Outcomes, start_worker: StartWorker, make_child: Callable[[], Child]
) -> None:
    """Leaving the block normally closes stdin and waits for the child, without signalling it."""
    child = make_child()
    seen: dict[str, Any] = {}

    @dramatiq.actor(broker=stub, max_retries=0)
    def convert() -> None:
        guard = guarded_popen(child.args("trap", "until-eof"), stdin=subprocess.PIPE)
        with guard as proc:
            child.wait_ready()
            assert proc.stdin is not None
            proc.stdin.write(b"all of it")
        seen["returncode"] = proc.returncode
        seen["stopped"] = guard.stopped

    worker = start_worker(stub)
    message = convert.send()
    assert outcomes.ended(message.message_id) == "done"
    join(stub, "default", worker)
    assert child.log == ["eof"]
    assert seen == {"returncode": 0, "stopped": False}


def test_a_shield_holds_the_signal_back(
    stub: StubBroker, outcomes: Outcomes, start_worker: StartWorker, make_child: Callable[[], Child]
) -> None:
    """In a shielded scope the child is not signalled: it ends normally, then Abort is raised."""
    child = make_child()
    events: list[str] = []

    @dramatiq.actor(broker=stub, max_retries=0)
    def convert() -> None:
        with abort_scope(shield=True) as scope:
            with guarded_popen(child.args("trap", "until-eof"), stdin=subprocess.PIPE) as proc:
                events.append("started")
                deadline = time.monotonic() + WAIT
                while not scope.requested and time.monotonic() < deadline:
                    time.sleep(0.001)  # actor code polling its own scope
                events.append(f"requested={scope.requested}")
                assert proc.stdin is not None
                proc.stdin.close()
                events.append(f"exit status {proc.wait()}")
            events.append("block left")

    worker = start_worker(stub)
    message = convert.send()
    child.wait_ready()
    abort(message.message_id)
    assert outcomes.ended(message.message_id) == "Abort"
    join(stub, "default", worker)
    assert events == ["started", "requested=True", "exit status 0", "block left"]
    assert child.log == ["eof"]


def test_a_shield_inside_the_block_delays_the_signal_to_its_end(
    stub: StubBroker, outcomes: Outcomes, start_worker: StartWorker, make_child: Callable[[], Child]
) -> None:
    """A shield in the block holds the abort; when it ends, the child is signalled and stopped."""
    child = make_child()
    events: list[str] = []
    inside = threading.Event()

    @dramatiq.actor(broker=stub, max_retries=0)
    def convert() -> None:
        with guarded_popen(child.args("trap")) as proc:
            inside.set()
            with abort_scope(shield=True) as scope:
                deadline = time.monotonic() + WAIT
                while not scope.requested and time.monotonic() < deadline:
                    time.sleep(0.001)  # actor code polling its own scope
                events.append(f"in the shield: log={child.log}")
            events.append("after the shield")
        events.append(f"exit status {proc.returncode}")

    worker = start_worker(stub)
    message = convert.send()
    child.wait_ready()
    assert inside.wait(WAIT)
    abort(message.message_id)
    assert outcomes.ended(message.message_id) == "Abort"
    join(stub, "default", worker)
    assert events == ["in the shield: log=[]"]
    assert child.log == ["SIGINT", "cleaned up"]


def test_guarded_run_is_interrupted_by_an_abort(
    stub: StubBroker, outcomes: Outcomes, start_worker: StartWorker, make_child: Callable[[], Child]
) -> None:
    """guarded_run() waiting with captured output is woken by an abort, which then propagates."""
    child = make_child()
    seen: dict[str, Any] = {}

    @dramatiq.actor(broker=stub, max_retries=0)
    def convert() -> None:
        seen["result"] = guarded_run(child.args("trap"), capture_output=True)

    worker = start_worker(stub)
    message = convert.send()
    running = child.wait_ready()
    abort(message.message_id)
    assert outcomes.ended(message.message_id) == "Abort"
    join(stub, "default", worker)
    assert child.log == ["SIGINT", "cleaned up"]
    assert "result" not in seen
    assert gone(running)


def test_a_graceful_abort_signals_the_child_only_when_abort_is_delivered(
    stub: StubBroker, outcomes: Outcomes, start_worker: StartWorker, make_child: Callable[[], Child]
) -> None:
    """During an abort's grace the child runs on; it gets SIGINT once Abort is delivered."""
    child = make_child()
    events: list[str] = []
    countdown_seen = threading.Event()

    @dramatiq.actor(broker=stub, max_retries=0)
    def convert() -> None:
        with guarded_popen(child.args("trap")) as proc, abort_scope() as scope:
            deadline = time.monotonic() + WAIT
            while not scope.requested and time.monotonic() < deadline:
                time.sleep(0.001)  # actor code polling its own scope
            events.append(f"countdown seen: log={child.log}")
            countdown_seen.set()
            proc.wait()

    worker = start_worker(stub)
    message = convert.send()
    child.wait_ready()
    abort(message.message_id, abort_timeout=60_000)
    assert countdown_seen.wait(WAIT)
    abort(message.message_id)  # no grace this time: delivered at once
    assert outcomes.ended(message.message_id) == "Abort"
    join(stub, "default", worker)
    assert events == ["countdown seen: log=[]"]
    assert child.log == ["SIGINT", "cleaned up"]


def test_an_async_actor_waiting_in_an_executor_is_aborted(
    stub: StubBroker, outcomes: Outcomes, start_worker: StartWorker, make_child: Callable[[], Child]
) -> None:
    """In an async def actor the guard signals the child too; the wait runs in an executor."""
    stub.add_middleware(AsyncIO())
    child = make_child()
    seen: dict[str, Any] = {}
    inside = threading.Event()
    block_left = threading.Event()

    @dramatiq.actor(broker=stub, max_retries=0)
    async def convert() -> None:
        try:
            with guarded_popen(child.args("trap")) as proc:
                seen["proc"] = proc
                inside.set()
                await asyncio.get_running_loop().run_in_executor(None, proc.wait)
        finally:
            # Left normally or by CancelledError, whichever reaches the task first.
            block_left.set()

    worker = start_worker(stub)
    message = convert.send()
    running = child.wait_ready()
    assert inside.wait(WAIT)
    abort(message.message_id)
    assert outcomes.ended(message.message_id) == "Abort"
    # The worker thread ends the message while the event loop cancels the task.
    assert block_left.wait(WAIT)
    join(stub, "default", worker)
    assert child.log == ["SIGINT", "cleaned up"]
    assert seen["proc"].returncode == 7
    assert gone(running)


def test_an_abort_after_the_block_signals_nothing(
    stub: StubBroker,
    outcomes: Outcomes,
    start_worker: StartWorker,
    make_child: Callable[[], Child],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Once the block has ended, an abort of the message leaves the reaped child's pid alone."""
    child = make_child()
    block_done = threading.Event()

    @dramatiq.actor(broker=stub, max_retries=0)
    def convert() -> None:
        with guarded_popen(child.args("upper"), stdin=subprocess.DEVNULL):
            pass
        block_done.set()
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            time.sleep(0.002)  # until Abort lands

    caplog.set_level(logging.INFO, logger="dramatiq_abort")
    worker = start_worker(stub)
    message = convert.send()
    assert block_done.wait(WAIT)
    abort(message.message_id)
    assert outcomes.ended(message.message_id) == "Abort"
    join(stub, "default", worker)
    assert not [r for r in caplog.records if "Sending" in r.getMessage()]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- outside a worker ----------------------------------------------------------------


def test_outside_a_worker_it_is_a_popen_that_waits(make_child: Callable[[], Child]) -> None:
    """Outside a worker, leaving the block normally waits for the child as Popen's with does."""
    child = make_child()
    with guarded_popen(child.args("upper"), stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
        out, _ = proc.communicate(b"abc")
    assert out == b"ABC"
    assert proc.returncode == 0


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_outside_a_worker_an_exception_stops_the_child(
    make_child: Callable[[], Child], pidfd: bool, error: type[BaseException]
) -> None:
    """Outside a worker, any exception (KeyboardInterrupt too) stops the child, group and all."""
    child = make_child()
    with pytest.raises(error), guarded_popen(child.args("trap", "grandchild")) as proc:
        running = child.wait_ready()
        grandchild, _ = child.grandchild()
        raise error()
    assert child.log == ["SIGINT", f"grandchild exited {-signal.SIGINT}", "cleaned up"]
    assert proc.returncode == 7
    assert gone(running)
    assert gone(grandchild)


def test_the_interrupt_signal_can_be_chosen(make_child: Callable[[], Child]) -> None:
    """interrupt_signal picks the first signal of the escalation."""
    child = make_child()
    with (
        pytest.raises(ValueError),
        guarded_popen(child.args("trap"), interrupt_signal=signal.SIGTERM) as proc,
    ):
        child.wait_ready()
        raise ValueError("stop it")
    assert child.log == ["SIGTERM", "cleaned up"]
    assert proc.returncode == 7


@pytest.mark.threads_only(reason="it interrupts the main OS thread with pthread_kill")
def test_another_interruption_while_stopping_kills_at_once(make_child: Callable[[], Child]) -> None:
    """An interruption during the grace skips the rest of the escalation: SIGKILL, reap, raise."""
    child = make_child()
    signalled = child.announce_signals()
    got: list[str] = []

    def interrupt_once_signalled() -> None:
        # Runs while the main thread stops the child: once the child has
        # handled SIGINT, interrupt the main thread as Ctrl-C would.
        got.append(read_line(signalled, "the child to handle SIGINT"))
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    helper = threading.Thread(target=interrupt_once_signalled)
    with (
        pytest.raises(KeyboardInterrupt),
        guarded_popen(child.args("immortal"), interrupt_grace=60_000) as proc,
    ):
        child.wait_ready()
        helper.start()
        raise ValueError("stop it")
    helper.join()
    assert got == ["SIGINT\n"]
    assert child.log == ["SIGINT"]
    assert proc.returncode == -signal.SIGKILL


def test_the_child_leads_a_new_session_by_default(make_child: Callable[[], Child]) -> None:
    """By default the child runs in a session and process group of its own."""
    child = make_child()
    with guarded_popen(child.args("trap")) as proc:
        child.wait_ready()
        assert os.getsid(proc.pid) == proc.pid
        assert os.getpgid(proc.pid) == proc.pid
        proc.send_signal(signal.SIGINT)


def test_a_child_left_in_the_callers_group_is_signalled_alone(
    make_child: Callable[[], Child], pidfd: bool
) -> None:
    """With start_new_session=False the child shares our group, so only the child is signalled."""
    child = make_child()
    with (
        pytest.raises(ValueError),
        guarded_popen(child.args("trap"), start_new_session=False) as proc,
    ):
        child.wait_ready()
        assert os.getpgid(proc.pid) == os.getpgid(0)
        raise ValueError("stop it")
    # The test process, in the same group, was not interrupted.
    assert child.log == ["SIGINT", "cleaned up"]
    assert proc.returncode == 7


def test_a_child_reaped_in_the_block_is_not_signalled(make_child: Callable[[], Child]) -> None:
    """Once the block reaped the child, an exception signals nothing: its pid may be reused."""
    child = make_child()
    guard = guarded_popen(child.args("upper", "3"), stdin=subprocess.DEVNULL)
    with pytest.raises(ValueError), guard as proc:
        assert proc.wait() == 3
        raise ValueError("after the child ended")
    assert guard.stopped is False
    assert proc.returncode == 3


def test_wait_with_a_timeout_still_times_out(make_child: Callable[[], Child]) -> None:
    """proc.wait(timeout) in the block raises TimeoutExpired as Popen's does."""
    child = make_child()
    with (
        pytest.raises(subprocess.TimeoutExpired),
        guarded_popen(child.args("trap"), interrupt_grace=GRACE) as proc,
    ):
        child.wait_ready()
        proc.wait(timeout=0.01)
    assert child.log == ["SIGINT", "cleaned up"]


# -- guarded_run ---------------------------------------------------------------------


def test_guarded_run_returns_a_completed_process(make_child: Callable[[], Child]) -> None:
    """guarded_run() mirrors subprocess.run: input, captured text output, return code."""
    child = make_child()
    result = guarded_run(child.args("upper"), input="hello", capture_output=True, text=True)
    assert isinstance(result, subprocess.CompletedProcess)
    assert result.args == child.args("upper")
    assert (result.returncode, result.stdout, result.stderr) == (0, "HELLO", "done")


def test_guarded_run_check_raises_called_process_error(make_child: Callable[[], Child]) -> None:
    """With check=True a failing child raises CalledProcessError carrying its output."""
    child = make_child()
    with pytest.raises(subprocess.CalledProcessError) as raised:
        guarded_run(child.args("upper", "5"), input=b"x", capture_output=True, check=True)
    assert (raised.value.returncode, raised.value.stdout, raised.value.stderr) == (5, b"X", b"done")
    assert guarded_run(child.args("upper", "5"), input=b"x", stdout=subprocess.DEVNULL).returncode


def test_guarded_run_timeout_stops_the_child() -> None:
    """When the timeout (seconds, as in subprocess.run) expires, the child is stopped and reaped."""
    before = set(psutil.Process().children(recursive=True))
    with pytest.raises(subprocess.TimeoutExpired):
        guarded_run([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.2)
    # No child of ours is left, not even a zombie.
    assert set(psutil.Process().children(recursive=True)) <= before
    with pytest.raises(subprocess.TimeoutExpired):
        guarded_run(["sleep", "60"], timeout=timedelta(milliseconds=GRACE))
    assert set(psutil.Process().children(recursive=True)) <= before


# -- arguments and reuse -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"interrupt_signal": "SIGINT"}, TypeError, "interrupt_signal must be a signal such as"),
        ({"interrupt_signal": True}, TypeError, "interrupt_signal must be a signal such as"),
        ({"interrupt_signal": 0}, ValueError, "interrupt_signal must be a valid signal number"),
        ({"interrupt_signal": 10_000}, ValueError, "not 10000: see signal.valid_signals()"),
        (
            {"interrupt_grace": -1},
            ValueError,
            "interrupt_grace must be 0 or more whole milliseconds",
        ),
        ({"terminate_grace": "5s"}, TypeError, "terminate_grace must be a number of milliseconds"),
        ({"terminate_grace": float("nan")}, ValueError, "terminate_grace must be a finite"),
    ],
)
def test_bad_arguments_are_named(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """A bad signal or grace raises at once, naming the value and what is expected."""
    with pytest.raises(error, match=re.escape(message)):
        guarded_popen(["true"], **kwargs)
    with pytest.raises(error, match=re.escape(message)):
        guarded_run(["true"], **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"input": b"x", "stdin": subprocess.PIPE}, ValueError, "takes input or stdin, not both"),
        (
            {"capture_output": True, "stderr": subprocess.DEVNULL},
            ValueError,
            "takes capture_output or stdout/stderr, not both",
        ),
        ({"timeout": "1"}, TypeError, "timeout must be a number of seconds"),
        ({"timeout": float("nan")}, ValueError, "timeout must be a finite number of seconds"),
        ({"timeout": float("inf")}, ValueError, "or None to wait forever, not inf"),
    ],
)
def test_guarded_run_bad_arguments(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """guarded_run() rejects conflicting streams and a timeout that is not a duration."""
    with pytest.raises(error, match=re.escape(message)):
        guarded_run(["true"], **kwargs)


def test_a_guard_starts_one_child_only() -> None:
    """Entering a guard a second time raises RuntimeError saying to call guarded_popen() again."""
    guard = guarded_popen(["true"])
    with guard:
        pass
    with pytest.raises(RuntimeError, match=re.escape("call guarded_popen() again for each child")):
        guard.__enter__()


def test_a_child_that_cannot_start_raises_popens_error() -> None:
    """A missing program raises Popen's own error and leaves nothing behind."""
    guard = guarded_popen(["/nonexistent/program"])
    with pytest.raises(FileNotFoundError), guard:
        pass
    assert guard.process is None


def test_repr_and_properties() -> None:
    """The guard shows its command, pid, state and escalation; its settings are readable."""
    guard = guarded_popen(
        ["true"], interrupt_signal=signal.SIGTERM, interrupt_grace=timedelta(seconds=1)
    )
    assert repr(guard) == (
        "<GuardedPopen args=['true'] pid=None state=new interrupt_signal=SIGTERM "
        "interrupt_grace=1000 terminate_grace=5000>"
    )
    assert (guard.interrupt_signal, guard.interrupt_grace, guard.terminate_grace) == (
        signal.SIGTERM,
        1000,
        5000,
    )
    with guard as proc:
        pass
    assert guard.process is proc
    assert f"pid={proc.pid} state=closed" in repr(guard)
    assert guard.stopped is False
