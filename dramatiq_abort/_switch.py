"""CPython's thread switch interval, lowered only while actor code that may run long runs.

The thread that delivers ``Abort`` needs the GIL, and a CPU-bound actor
thread hands it over only after the waiting thread has waited a whole
switch interval (5 ms by default), so ``Abortable`` lowers the interval
(1 ms by default).  A short interval costs every worker thread more
forced switches, though: on no-op messages, worker CPU per message rose
by about a third with 1 ms on two cores.  So the interval is lowered only
while at least one message runs whose actor may run long, and restored
as soon as none does.

Whether an actor may run long is a guess from its last message in this
process: one that ran at least ``LONG_S``, or was aborted (cut short, and
of an actor whose aborts happen), or none yet, means yes.  An actor that
usually finishes in a few milliseconds but runs long once is guessed
wrong for that message, whose abort then waits up to one default
interval longer.

The registry updates it in ``_enter`` and ``_leave`` under its lock, with
no Python calls (an ``Abort`` arriving late could fire at the start of a
called Python function there), and calls :meth:`SwitchInterval.want` and
:meth:`~SwitchInterval.release` under the same lock, so this class holds
no lock of its own.
"""

from __future__ import annotations

import sys

#: Seconds a message must run for its actor to count as one that may run long.
LONG_S = 0.02


class SwitchInterval:
    """The process's switch interval and which actors may run long."""

    def __init__(self) -> None:
        #: The interval to set while long actor code runs (seconds), or ``None``.
        self.wanted: float | None = None
        #: The interpreter's interval while it is lowered, else ``None``.
        self.saved: float | None = None
        #: Messages of actors that may run long whose code runs now.
        self.running = 0
        #: Seconds the last message of each actor ran, by actor name.
        self.last: dict[str, float] = {}

    def want(self, seconds: float | None) -> None:
        """Lower the interval to ``seconds`` while long actor code runs (the lowest asked wins)."""
        if seconds is None:
            return
        if self.wanted is None or seconds < self.wanted:
            self.wanted = seconds
            if self.running:
                self.restore()
                self.lower()

    def release(self) -> None:
        """Stop lowering it (the worker stopped) and restore the interpreter's setting."""
        self.wanted = None
        self.restore()

    def lower(self) -> None:
        """Set the wanted interval now, if it is lower than the interpreter's."""
        wanted = self.wanted
        if wanted is None or self.saved is not None:
            return
        current = sys.getswitchinterval()
        if wanted < current:
            self.saved = current
            sys.setswitchinterval(wanted)

    def restore(self) -> None:
        """Put the interpreter's interval back if it was lowered.

        ``saved`` is cleared only once the interval is back, so if this is
        cut short by an exception raised into the thread, a later call
        still restores it.
        """
        if self.saved is not None:
            sys.setswitchinterval(self.saved)
            self.saved = None
