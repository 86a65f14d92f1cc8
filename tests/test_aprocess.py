"""``guarded_exec()``: real asyncio children, real signals, real ``async def`` workers.

The children are test_process.py's: small Python scripts that say on a FIFO
when their handlers are set, log every signal they handle to a file, and
optionally start a grandchild in their process group.  The tests wait on
those FIFOs, on pidfds, on the messages' outcomes and on the children's
exits, never on sleeps; only actor code that waits for its own abort
request polls its scope, as an actor would.  Graces are short (``GRACE``
ms).  Some tests run twice: with pidfds, and with ``_open_pidfd`` made to
find none, to cover the ``waitid(WNOWAIT)`` path that other systems take.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AsyncIO

from children import Child, dead, ended, gone, read_line
from conftest import WAIT, Outcomes, join
from dramatiq_abort import Abort, Abortable, abort, abort_scope, backends, guarded_exec
from dramatiq_abort import aprocess as aprocess_module
from dramatiq_abort.aprocess import GuardedExec

StartWorker = Callable[..., Worker]

#: Milliseconds of grace the tests give children before escalating.
GRACE = 200


@pytest.fixture
def outcomes() -> Outcomes:
    """A fresh spy on how messages end."""
    return Outcomes()


def _setup(broker: StubBroker, outcomes: Outcomes, **options: Any) -> StubBroker:
    broker.add_middleware(AsyncIO())
    broker.add_middleware(Abortable(backend=backends.StubBackend(), **options))
    broker.add_middleware(outcomes)
    return broker


@pytest.fixture
def stub(stub_broker: StubBroker, outcomes: Outcomes) -> StubBroker:
    """The stub broker with AsyncIO, an Abortable on the in-memory backend, and the spy."""
    return _setup(stub_broker, outcomes)


@pytest.fixture(params=[True, False], ids=["pidfd", "no-pidfd"])
def pidfd(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    """Run with pidfds, and as on a system without them (the portable POSIX path)."""
    if not request.param:
        monkeypatch.setattr(aprocess_module, "_open_pidfd", lambda pid: None)
    yield request.param


def ended_as(outcomes: Outcomes, message: dramatiq.Message[Any]) -> list[str]:
    """Wait until the message ended; return how (every time it ended)."""
    outcomes.wait(1)
    return outcomes.by_id[message.message_id]


# -- aborts in a worker ------------------------------------------------------------


def test_an_abort_interrupts_the_child_at_once(
    stub: StubBroker, outcomes: Outcomes, start_worker: StartWorker, make_child: Callable[[], Child]
) -> None:
    """Abort thrown at `await process.wait()` leaves the block: SIGINT at once, then Abort."""
    child = make_child()
    seen: dict[str, Any] = {}
    inside = threading.Event()

    @dramatiq.actor(broker=stub, max_retries=0)
    async def convert() -> None:
        async with guarded_exec(*child.args("trap")) as process:
            seen["process"] = process
            inside.set()
            try:
                await process.wait()
            except Abort:
                seen["at abort"] = process.returncode
                raise

    worker = start_worker(stub)
    message = convert.send()
    running = child.wait_ready()
    assert inside.wait(WAIT)
    abort(message.message_id)
    assert ended_as(outcomes, message) == ["Abort"]
    join(stub, "default", worker)
    # The default grace is 5 s: the child cleaned up on SIGINT alone.
    assert child.log == ["SIGINT", "cleaned up"]
    assert isinstance(seen["process"], asyncio.subprocess.Process)
    assert seen["at abort"] is None  # still running when Abort landed: the guard stopped it
    assert seen["process"].returncode == 7
    assert gone(running)


@pytest.mark.parametrize(
    ("behaviour", "log", "returncode"),
    [
        ("stubborn", ["SIGINT", "SIGTERM", "cleaned up"], 7),
        ("immortal", ["SIGINT", "SIGTERM"], -signal.SIGKILL),
    ],
    ids=["to SIGTERM", "to SIGKILL"],
)
def test_an_abort_escalates(
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

    @dramatiq.actor(broker=stub, max_retries=0)
    async def convert() -> None:
        guard = guarded_exec(
            *child.args(behaviour),
            interrupt_grace=GRACE,
            terminate_grace=timedelta(milliseconds=GRACE),
        )
        seen["guard"] = guard
        async with guard as process:
            seen["process"] = process
            await process.wait()

    worker = start_worker(stub)
    message = convert.send()
    running = child.wait_ready()
    abort(message.message_id)
    assert ended_as(outcomes, message) == ["Abort"]
    join(stub, "default", worker)
    assert child.log == log
    assert seen["process"].returncode == returncode
    assert seen["guard"].stopped is True
    assert gone(running)


def test_the_process_group_is_signalled(
    stub: StubBroker,
    outcomes: Outcomes,
    start_worker: StartWorker,
    make_child: Callable[[], Child],
    pidfd: bool,
) -> None:
    """The child's whole process group gets SIGINT: the grandchild dies of it too."""
    child = make_child()

    @dramatiq.actor(broker=stub, max_retries=0)
    async def convert() -> None:
        async with guarded_exec(*child.args("trap", "grandchild")) as process:
            await process.wait()

    worker = start_worker(stub)
    message = convert.send()
    running = child.wait_ready()
    grandchild, _ = child.grandchild()
    assert grandchild.ppid() == running.pid
    abort(message.message_id)
    assert ended_as(outcomes, message) == ["Abort"]
    join(stub, "default", worker)
    assert child.log == ["SIGINT", f"grandchild exited {-signal.SIGINT}", "cleaned up"]
    assert gone(running)
    assert gone(grandchild)


def test_what_the_child_leaves_in_its_group_is_killed_without_waiting_for_pipes(
    stub_broker: StubBroker,
    outcomes: Outcomes,
    start_worker: StartWorker,
    make_child: Callable[[], Child],
    pidfd: bool,
) -> None:
    """A grandchild that ignores SIGINT and holds the child's stdout is killed once the child exits.

    process.wait() would wait for the pipe the grandchild holds; the guard
    waits for the child's exit instead, so neither the 60 s grace nor the
    60 s cleanup time runs out: Abort leaves the block, not a cancellation.
    """
    stub = _setup(stub_broker, outcomes, cleanup_timeout=60_000)
    child = make_child()
    seen: dict[str, Any] = {}

    @dramatiq.actor(broker=stub, max_retries=0)
    async def convert() -> None:
        try:
            async with guarded_exec(
                *child.args("trap", "leave-grandchild"),
                stdout=asyncio.subprocess.PIPE,
                interrupt_grace=60_000,
            ) as process:
                await process.communicate()
        except BaseException as error:
            seen["left by"] = type(error).__name__
            raise

    worker = start_worker(stub)
    message = convert.send()
    running = child.wait_ready()
    grandchild, grandchild_fd = child.grandchild()
    abort(message.message_id)
    assert ended_as(outcomes, message) == ["Abort"]
    join(stub, "default", worker)
    assert seen == {"left by": "Abort"}
    assert child.log == ["SIGINT", "cleaned up"]
    assert gone(running)
    # The kernel ends the grandchild asynchronously after SIGKILL: wait for it.
    assert ended(grandchild_fd)
    # Orphaned, it is reaped by init, which some containers' pid 1 never does.
    assert dead(grandchild)


def test_the_cleanup_timeout_cuts_the_escalation_short(
    stub_broker: StubBroker,
    outcomes: Outcomes,
    start_worker: StartWorker,
    make_child: Callable[[], Child],
) -> None:
    """When cleanup_timeout cancels the coroutine during a grace, the child gets SIGKILL at once."""
    stub = _setup(stub_broker, outcomes, cleanup_timeout=300)
    child = make_child()
    seen: dict[str, Any] = {}

    @dramatiq.actor(broker=stub, max_retries=0)
    async def convert() -> None:
        try:
            async with guarded_exec(
                *child.args("immortal"), interrupt_grace=60_000, terminate_grace=60_000
            ) as process:
                seen["process"] = process
                await process.wait()
        except BaseException as error:
            seen["left by"] = type(error).__name__
            seen["returncode then"] = process.returncode
            raise

    worker = start_worker(stub)
    message = convert.send()
    child.wait_ready()
    abort(message.message_id)
    assert ended_as(outcomes, message) == ["Abort"]
    join(stub, "default", worker)
    assert child.log == ["SIGINT"]
    # The second cancellation propagated, and only once the child was reaped.
    assert seen["left by"] == "CancelledError"
    assert seen["returncode then"] == -signal.SIGKILL


def test_leaving_normally_closes_stdin_and_waits(
    stub: StubBroker, outcomes: Outcomes, start_worker: StartWorker, make_child: Callable[[], Child]
) -> None:
    """Leaving the block normally closes stdin and waits for the child, without signalling it."""
    child = make_child()
    seen: dict[str, Any] = {}

    @dramatiq.actor(broker=stub, max_retries=0)
    async def convert() -> None:
        guard = guarded_exec(*child.args("trap", "until-eof"), stdin=asyncio.subprocess.PIPE)
        async with guard as process:
            await asyncio.to_thread(child.wait_ready)
            assert process.stdin is not None
            process.stdin.write(b"all of it")
        seen["returncode"] = process.returncode
        seen["stopped"] = guard.stopped

    worker = start_worker(stub)
    message = convert.send()
    assert ended_as(outcomes, message) == ["done"]
    join(stub, "default", worker)
    assert child.log == ["eof"]
    assert seen == {"returncode": 0, "stopped": False}


def test_an_abort_while_the_block_waits_for_the_child_stops_it(
    stub: StubBroker, outcomes: Outcomes, start_worker: StartWorker, make_child: Callable[[], Child]
) -> None:
    """Abort thrown into the wait at the block's normal end stops the child as an exception does."""
    child = make_child()
    seen: dict[str, Any] = {}
    block_done = threading.Event()

    @dramatiq.actor(broker=stub, max_retries=0)
    async def convert() -> None:
        guard = guarded_exec(*child.args("trap"))
        try:
            async with guard:
                block_done.set()  # no await after this: the guard's exit is waiting
        except Abort:
            seen["stopped"] = guard.stopped
            raise

    worker = start_worker(stub)
    message = convert.send()
    running = child.wait_ready()
    assert block_done.wait(WAIT)
    abort(message.message_id)
    assert ended_as(outcomes, message) == ["Abort"]
    join(stub, "default", worker)
    assert child.log == ["SIGINT", "cleaned up"]
    assert seen == {"stopped": True}
    assert gone(running)


def test_a_shield_holds_the_signal_back(
    stub: StubBroker, outcomes: Outcomes, start_worker: StartWorker, make_child: Callable[[], Child]
) -> None:
    """In a shielded scope the child is not signalled: it ends normally, then Abort is raised."""
    child = make_child()
    events: list[str] = []

    @dramatiq.actor(broker=stub, max_retries=0)
    async def convert() -> None:
        async with abort_scope(shield=True) as scope:
            async with guarded_exec(
                *child.args("trap", "until-eof"), stdin=asyncio.subprocess.PIPE
            ) as process:
                for _ in range(int(WAIT * 1000)):
                    if scope.requested:
                        break
                    await asyncio.sleep(0.001)  # actor code polling its own scope
                events.append(f"requested={scope.requested}")
            events.append(f"exit status {process.returncode}")

    worker = start_worker(stub)
    message = convert.send()
    child.wait_ready()
    abort(message.message_id)
    assert ended_as(outcomes, message) == ["Abort"]
    join(stub, "default", worker)
    assert events == ["requested=True", "exit status 0"]
    assert child.log == ["eof"]


# -- outside a worker ----------------------------------------------------------------


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_outside_a_worker_an_exception_stops_the_child(
    make_child: Callable[[], Child], pidfd: bool, error: type[BaseException]
) -> None:
    """Under plain asyncio.run, any exception (KeyboardInterrupt too) stops the child's group."""
    child = make_child()
    seen: dict[str, Any] = {}

    async def main() -> None:
        async with guarded_exec(*child.args("trap", "grandchild")) as process:
            seen["process"] = process
            seen["running"] = await asyncio.to_thread(child.wait_ready)
            seen["grandchild"], _ = child.grandchild()
            raise error()

    with pytest.raises(error):
        asyncio.run(main())
    assert child.log == ["SIGINT", f"grandchild exited {-signal.SIGINT}", "cleaned up"]
    assert seen["process"].returncode == 7
    assert gone(seen["running"])
    assert gone(seen["grandchild"])


def test_outside_a_worker_a_cancelled_task_stops_the_child(
    make_child: Callable[[], Child],
) -> None:
    """Cancelling the task that runs the block stops the child, then CancelledError propagates."""
    child = make_child()
    seen: dict[str, Any] = {}

    async def run() -> None:
        async with guarded_exec(*child.args("trap")) as process:
            seen["process"] = process
            await process.wait()

    async def main() -> None:
        task = asyncio.create_task(run())
        await asyncio.to_thread(child.wait_ready)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert child.log == ["SIGINT", "cleaned up"]
    assert seen["process"].returncode == 7


def test_a_second_cancellation_kills_at_once(
    make_child: Callable[[], Child], caplog: pytest.LogCaptureFixture
) -> None:
    """A cancellation during the interrupt grace skips the rest: SIGKILL, reap, CancelledError."""
    child = make_child()
    signalled = child.announce_signals()
    seen: dict[str, Any] = {}

    async def run() -> None:
        try:
            async with guarded_exec(*child.args("immortal"), interrupt_grace=60_000) as process:
                seen["process"] = process
                await asyncio.to_thread(child.wait_ready)
                raise ValueError("stop it")
        except BaseException as error:
            seen["left by"] = (type(error).__name__, type(error.__context__).__name__)
            seen["returncode then"] = process.returncode
            raise

    async def main() -> None:
        task = asyncio.create_task(run())
        line = await asyncio.to_thread(read_line, signalled, "the child to handle SIGINT")
        assert line == "SIGINT\n"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert child.log == ["SIGINT"]
    # The cancellation left the block (the ValueError as its context) once the child was reaped.
    assert seen["left by"] == ("CancelledError", "ValueError")
    assert seen["returncode then"] == -signal.SIGKILL
    assert caplog.records[-1].getMessage() == (
        f"Sending SIGKILL to the process group of child {child.pid} (ValueError left its block)"
        ": CancelledError cut its grace short."
    )


def test_closing_an_async_generator_kills_the_child(make_child: Callable[[], Child]) -> None:
    """aclose() throws GeneratorExit, which allows no grace: the child gets SIGKILL at once."""
    child = make_child()

    async def stream() -> AsyncIterator[asyncio.subprocess.Process]:
        async with guarded_exec(*child.args("trap")) as process:
            yield process

    async def main() -> None:
        frames = stream()
        process = await frames.__anext__()
        await asyncio.to_thread(child.wait_ready)
        await frames.aclose()
        assert await process.wait() == -signal.SIGKILL

    asyncio.run(main())
    assert child.log == []


def test_outside_a_worker_it_waits_for_the_child(make_child: Callable[[], Child]) -> None:
    """Leaving the block normally after communicate() signals nothing; the output is there."""
    child = make_child()
    guard = guarded_exec(
        *child.args("upper"), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )

    async def main() -> bytes:
        async with guard as process:
            out, _ = await process.communicate(b"abc")
        return out

    assert asyncio.run(main()) == b"ABC"
    assert guard.process is not None and guard.process.returncode == 0
    assert guard.stopped is False


def test_a_child_reaped_in_the_block_is_not_signalled(make_child: Callable[[], Child]) -> None:
    """Once the child has exited and been reaped, an exception signals nothing."""
    child = make_child()
    guard = guarded_exec(*child.args("upper", "3"), stdin=asyncio.subprocess.DEVNULL)

    async def main() -> None:
        async with guard as process:
            assert await process.wait() == 3
            raise ValueError("after the child ended")

    with pytest.raises(ValueError, match="after the child ended"):
        asyncio.run(main())
    assert guard.stopped is False


def test_the_interrupt_signal_can_be_chosen(make_child: Callable[[], Child]) -> None:
    """interrupt_signal picks the first signal of the escalation."""
    child = make_child()

    async def main() -> None:
        async with guarded_exec(*child.args("trap"), interrupt_signal=signal.SIGTERM):
            await asyncio.to_thread(child.wait_ready)
            raise ValueError("stop it")

    with pytest.raises(ValueError):
        asyncio.run(main())
    assert child.log == ["SIGTERM", "cleaned up"]


def test_the_child_leads_a_new_session_by_default(make_child: Callable[[], Child]) -> None:
    """By default the child runs in a session and process group of its own."""
    child = make_child()

    async def main() -> None:
        async with guarded_exec(*child.args("trap")) as process:
            await asyncio.to_thread(child.wait_ready)
            assert os.getsid(process.pid) == process.pid
            assert os.getpgid(process.pid) == process.pid
            process.send_signal(signal.SIGINT)

    asyncio.run(main())
    assert child.log == ["SIGINT", "cleaned up"]


def test_a_child_left_in_the_callers_group_is_signalled_alone(
    make_child: Callable[[], Child], pidfd: bool
) -> None:
    """With start_new_session=False the child shares our group, so only the child is signalled."""
    child = make_child()

    async def main() -> None:
        async with guarded_exec(*child.args("trap"), start_new_session=False) as process:
            await asyncio.to_thread(child.wait_ready)
            assert os.getpgid(process.pid) == os.getpgid(0)
            raise ValueError("stop it")

    with pytest.raises(ValueError):
        asyncio.run(main())
    # This process, in the same group, was not interrupted.
    assert child.log == ["SIGINT", "cleaned up"]


def test_the_escalation_is_logged(
    make_child: Callable[[], Child], caplog: pytest.LogCaptureFixture
) -> None:
    """Each signal is logged with its target and reason; the later ones as warnings."""
    child = make_child()
    caplog.set_level(logging.INFO, logger="dramatiq_abort")

    async def main() -> None:
        async with guarded_exec(*child.args("stubborn"), interrupt_grace=GRACE) as process:
            await asyncio.to_thread(child.wait_ready)
            raise ValueError(f"stop {process.pid}")

    with pytest.raises(ValueError):
        asyncio.run(main())
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    pid = child.pid
    assert lines == [
        (
            logging.INFO,
            f"Sending SIGINT to the process group of child {pid} (ValueError left its block).",
        ),
        (
            logging.WARNING,
            f"Sending SIGTERM to the process group of child {pid} (ValueError left its block)"
            ": it outlived its grace.",
        ),
    ]


# -- arguments and reuse -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"interrupt_signal": "SIGINT"}, TypeError, "interrupt_signal must be a signal such as"),
        ({"interrupt_signal": True}, TypeError, "interrupt_signal must be a signal such as"),
        ({"interrupt_signal": 0}, ValueError, "interrupt_signal must be a valid signal number"),
        ({"interrupt_signal": 10_000}, ValueError, "not 10000: see signal.valid_signals()"),
        ({"interrupt_grace": -1}, ValueError, "interrupt_grace must be 0 or more whole"),
        ({"terminate_grace": "5s"}, TypeError, "terminate_grace must be a number of milli"),
        ({"terminate_grace": float("nan")}, ValueError, "terminate_grace must be a finite"),
    ],
)
def test_a_bad_signal_or_grace_is_named(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """A bad signal or grace raises at once, naming the value and what is expected."""
    with pytest.raises(error, match=re.escape(message)):
        guarded_exec("true", **kwargs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            (["ffmpeg", "-i", "in.mkv"],),
            "not ['ffmpeg', '-i', 'in.mkv']: unpack the list with guarded_exec(*args)",
        ),
        (("sleep", 5), "argument 1 must be a str, bytes or os.PathLike, not 5: convert it"),
        ((None,), "guarded_exec's program must be a str, bytes or os.PathLike, not None"),
    ],
)
def test_a_bad_program_or_argument_is_named(args: tuple[Any, ...], message: str) -> None:
    """A command given as a list, or an argument that is no string, raises TypeError and the fix."""
    with pytest.raises(TypeError, match=re.escape(message)):
        guarded_exec(*args)


def test_a_guard_starts_one_child_only() -> None:
    """Entering a guard a second time raises RuntimeError saying to call guarded_exec() again."""
    guard = guarded_exec("true")

    async def main() -> None:
        async with guard:
            pass
        with pytest.raises(RuntimeError, match=re.escape("call guarded_exec() again")):
            await guard.__aenter__()

    asyncio.run(main())


def test_a_child_that_cannot_start_raises_asyncios_error() -> None:
    """A missing program raises asyncio's own error and leaves nothing behind."""
    guard = guarded_exec("/nonexistent/program")

    async def main() -> None:
        async with guard:
            pass

    with pytest.raises(FileNotFoundError):
        asyncio.run(main())
    assert guard.process is None


def test_repr_and_properties() -> None:
    """The guard shows its command, pid, state and escalation; its settings are readable."""
    guard = guarded_exec(
        "true", interrupt_signal=signal.SIGTERM, interrupt_grace=timedelta(seconds=1)
    )
    assert isinstance(guard, GuardedExec)
    assert repr(guard) == (
        "<GuardedExec args=['true'] pid=None state=new interrupt_signal=SIGTERM "
        "interrupt_grace=1000 terminate_grace=5000>"
    )
    assert (guard.interrupt_signal, guard.interrupt_grace, guard.terminate_grace) == (
        signal.SIGTERM,
        1000,
        5000,
    )

    async def main() -> asyncio.subprocess.Process:
        async with guard as process:
            return process

    process = asyncio.run(main())
    assert guard.process is process
    assert f"pid={process.pid} state=closed" in repr(guard)
    assert guard.stopped is False
    assert sys.modules["dramatiq_abort"].guarded_exec is guarded_exec
