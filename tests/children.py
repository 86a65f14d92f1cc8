"""Test children for the subprocess guards: a child that traps signals, and its grandchild.

Shared by tests/test_process.py (threads) and tests/test_aprocess.py (asyncio).
"""

from __future__ import annotations

import os
import select
import sys
import time
from pathlib import Path

import psutil
import pytest

#: Bound, in seconds, on any single wait for a child.
WAIT = 30.0

#: The test child.  ``child.py DIR BEHAVIOUR [OPTION...]``; behaviours:
#: ``trap`` exits (7) on SIGINT or SIGTERM, ``stubborn`` only on SIGTERM,
#: ``immortal`` on neither (SIGKILL ends it), ``upper`` echoes stdin upper-
#: cased and exits with the status given as an option.  Options:
#: ``grandchild`` starts a grandchild that dies of SIGINT and that the
#: child reaps on its way out; ``leave-grandchild`` starts one that ignores
#: SIGINT and leaves it behind; ``until-eof`` ends normally (0) at the end
#: of stdin.  A child says it is ready on the FIFO ``DIR/ready``, and names
#: each signal it handles on the FIFO ``DIR/signalled`` if the test made one.
CHILD = """
import os, signal, subprocess, sys, time

out, behaviour, *options = sys.argv[1:]
grandchild = None


def note(text):
    with open(os.path.join(out, "log"), "a") as log:
        log.write(text + "\\n")


def on_signal(number, frame):
    note(signal.Signals(number).name)
    if os.path.exists(os.path.join(out, "signalled")):
        with open(os.path.join(out, "signalled"), "w") as signalled:
            signalled.write(signal.Signals(number).name + "\\n")
    if behaviour == "trap" or (behaviour == "stubborn" and number == signal.SIGTERM):
        if grandchild is not None and "leave-grandchild" not in options:
            note(f"grandchild exited {grandchild.wait()}")
        note("cleaned up")
        sys.exit(7)


if behaviour == "upper":
    sys.stdout.write(sys.stdin.read().upper())
    sys.stderr.write("done")
    sys.exit(int(options[0]) if options else 0)
signal.signal(signal.SIGINT, on_signal)
signal.signal(signal.SIGTERM, on_signal)
if "grandchild" in options or "leave-grandchild" in options:
    mode = "ignore" if "leave-grandchild" in options else "default"
    script = os.path.join(os.path.dirname(__file__), "grandchild.py")
    # The grandchild keeps the child's stdout; it says it is ready on a pipe of its own.
    read_end, write_end = os.pipe()
    grandchild = subprocess.Popen(
        [sys.executable, script, mode, str(write_end)], pass_fds=[write_end]
    )
    os.close(write_end)
    os.read(read_end, 10)
with open(os.path.join(out, "ready"), "w") as ready:
    ready.write(f"{os.getpid()} {grandchild.pid if grandchild else 0}\\n")
if "until-eof" in options:
    sys.stdin.read()
    note("eof")
    sys.exit(0)
time.sleep(60)
note("ran out")
sys.exit(3)
"""

#: The grandchild: ``grandchild.py default|ignore FD``; says it is ready on FD, then sleeps.
GRANDCHILD = """
import os, signal, sys, time

if sys.argv[1] == "ignore":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
os.write(int(sys.argv[2]), b"ready")
os.close(int(sys.argv[2]))
time.sleep(60)
"""


def read_line(fifo: Path, what: str) -> str:
    """Read one line from a FIFO as soon as a writer sends it; fail after WAIT seconds."""
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    data = b""
    deadline = time.monotonic() + WAIT
    try:
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                pytest.fail(f"timed out after {WAIT} s waiting for {what}")
            data += os.read(fd, 100)
    finally:
        os.close(fd)
    return data.decode()


class Child:
    """One test child: its directory, readiness FIFO and signal log."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.dir = directory
        (directory / "child.py").write_text(CHILD)
        (directory / "grandchild.py").write_text(GRANDCHILD)
        self.fifo = directory / "ready"
        os.mkfifo(self.fifo)
        self.pid = 0
        self.grandchild_pid = 0
        self.fds: list[int] = []

    def args(self, behaviour: str, *options: str) -> list[str]:
        """The command line of a child with this behaviour."""
        return [sys.executable, str(self.dir / "child.py"), str(self.dir), behaviour, *options]

    def wait_ready(self) -> psutil.Process:
        """Wait until the child has set its handlers; return it (and note its grandchild)."""
        data = read_line(self.fifo, f"the child in {self.dir} to get ready")
        self.pid, self.grandchild_pid = (int(word) for word in data.split())
        return psutil.Process(self.pid)

    def grandchild(self) -> tuple[psutil.Process, int]:
        """The running grandchild, and a pidfd that becomes readable when it ends."""
        pid = self.grandchild_pid
        process = psutil.Process(pid)
        fd = os.pidfd_open(pid)
        self.fds.append(fd)
        return process, fd

    def announce_signals(self) -> Path:
        """Make the FIFO on which the child names each signal it handles."""
        path = self.dir / "signalled"
        os.mkfifo(path)
        return path

    @property
    def log(self) -> list[str]:
        """What the child noted: the signals it handled, and how it ended."""
        path = self.dir / "log"
        return path.read_text().splitlines() if path.exists() else []


def ended(pidfd: int) -> bool:
    """Wait until the process of this pidfd has ended (it need not be our child)."""
    return bool(select.select([pidfd], [], [], WAIT)[0])


def gone(process: psutil.Process) -> bool:
    """Whether the process has ended and been reaped (a zombie still counts as running)."""
    return not process.is_running()


def dead(process: psutil.Process) -> bool:
    """Whether the process has ended, reaped or a zombie waiting for init to reap it."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
