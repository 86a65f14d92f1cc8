"""Abort an actor that runs a subprocess: ``guarded_popen()`` stops the child too.

A worker thread waiting for a child (``proc.wait()``, ``proc.communicate()``)
sits in a system call, where ``Abort`` cannot land, and a plain ``Popen``
would leave the child running after its message ended.  Inside
``with guarded_popen(args) as proc:`` an abort sends SIGINT to the child's
process group at once; the wait returns when the child exits, ``Abort``
lands, and the guard reaps the child before letting ``Abort`` end the
message.  A child still running ``interrupt_grace`` ms after SIGINT gets
SIGTERM, and ``terminate_grace`` ms later SIGKILL.  ``guarded_run()`` does
the same for a ``subprocess.run``-style call.

The child here is a small Python program that this recipe writes to a
temporary directory and runs with the current interpreter, a stand-in for
a long-running tool: it works for ten seconds unless interrupted, traps
SIGINT, and on its way out writes a note saying how far it got, then exits
with status 130.

Run it::

    python recipes/guarded_subprocess.py                                # in memory
    REDIS_URL=redis://localhost:6379/0 python recipes/guarded_subprocess.py  # on Redis

It exits with status 0 when the child was interrupted, wrote its note and
was reaped, and the message ended with ``Abort``.  POSIX only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time

from _setup import Recipe, expect, wait_for

from dramatiq_abort import Abort, abort, abortable_actor, guarded_popen

#: The child: 1000 steps of 10 ms, unless SIGINT asks it to stop.
CHILD = """\
import signal, sys, time

note = sys.argv[1]
interrupted = False


def on_sigint(signum, frame):
    global interrupted
    interrupted = True  # finish the step in hand, then save and leave


signal.signal(signal.SIGINT, on_sigint)
steps = 0
while steps < 1000 and not interrupted:
    time.sleep(0.01)
    steps += 1
    if steps == 10:
        print("working", flush=True)
time.sleep(0.1)  # saving its progress takes a moment
with open(note, "w", encoding="utf-8") as out:
    out.write(f"{'interrupted' if interrupted else 'finished'} at step {steps}\\n")
sys.exit(130 if interrupted else 0)
"""

RECIPE = Recipe("guarded_subprocess")
child_ready = threading.Event()
child: dict[str, int | None] = {}


@abortable_actor()
def run_tool(script: str, note: str) -> None:
    """Run the tool ``script`` to completion; it writes ``note`` when it exits."""
    guard = guarded_popen(
        [sys.executable, script, note], interrupt_grace=2000, stdout=subprocess.PIPE, text=True
    )
    try:
        with guard as proc:
            child["pid"] = proc.pid
            if proc.stdout is not None:
                proc.stdout.readline()  # "working": its SIGINT handler is in place
            child_ready.set()
            proc.communicate()  # no polling needed: an abort ends this wait
    except Abort:
        reaped = guard.process
        child["returncode"] = None if reaped is None else reaped.returncode
        print(
            f"  run_tool: Abort; the guard signalled the child: {guard.stopped}, "
            f"and reaped it: exit status {child['returncode']}"
        )
        raise


def main() -> None:
    """Start the tool in an actor, abort the message, and check the child's goodbye."""
    with RECIPE, RECIPE.worker(), tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "tool.py")
        with open(script, "w", encoding="utf-8") as out:
            out.write(CHILD)
        note = os.path.join(tmp, "note.txt")

        message = run_tool.send(script, note)
        wait_for(child_ready, "the child process to start")
        print(f"main: the child {child['pid']} is working; abort(message_id)")
        called = time.monotonic()
        abort(message.message_id)
        outcome = RECIPE.outcomes.wait(message)
        took_ms = (time.monotonic() - called) * 1000
        print(f"main: the message {outcome}, {took_ms:.0f} ms after abort()")

        expect(os.path.exists(note), "the child did not write its note: it never saw SIGINT")
        with open(note, encoding="utf-8") as written:
            goodbye = written.read().strip()
        print(f"main: the child wrote its goodbye: {goodbye!r}")

        expect(outcome == "failed with Abort", f"the message should end with Abort: {outcome}")
        expect(goodbye.startswith("interrupted at step"), f"unexpected note: {goodbye!r}")
        expect(
            child.get("returncode") == 130,
            f"the child should exit 130 after SIGINT, not {child.get('returncode')}",
        )
    RECIPE.ok("the abort interrupted the child, which cleaned up and was reaped")


if __name__ == "__main__":
    main()
