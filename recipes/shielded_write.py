"""Protect a critical section with ``abort_scope(shield=True)``: a file is never half-written.

The actor saves a series of snapshots to one file.  Each save writes a
temporary file next to it and renames it into place, so readers only ever
see a whole snapshot, but an ``Abort`` landing between the first line and
the rename would still leave a half-written temporary file behind and lose
the snapshot being saved.  Inside ``abort_scope(shield=True)`` an abort that
comes due is held back until the block exits, then raised at once: the
snapshot in progress is completed and renamed, and the actor stops right
after it.

The recipe calls ``abort()`` (no grace) just after the actor entered the
shielded block, and checks that the ``Abort`` arrived only after the rename,
that the file holds the whole snapshot and that no temporary file is left.

Run it::

    python recipes/shielded_write.py                                # in memory
    REDIS_URL=redis://localhost:6379/0 python recipes/shielded_write.py  # on Redis

It exits with status 0 when the snapshot was saved whole despite the abort.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time

from _setup import Recipe, expect, wait_for

from dramatiq_abort import Abort, abort, abort_scope, abortable_actor

#: Lines in one snapshot, and seconds to write each one (a slow disk, say).
LINES = 10
LINE_TIME = 0.02
#: The snapshot during whose save the recipe calls abort().
ABORT_DURING = 3

RECIPE = Recipe("shielded_write")
saving_target = threading.Event()
timeline: dict[str, float] = {}
saved: list[int] = []


def write_whole(path: str, number: int) -> None:
    """Write snapshot ``number`` to a temporary file, then rename it to ``path``."""
    directory = os.path.dirname(path)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".snapshot-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(f"snapshot {number}\n")
        for line in range(LINES):
            out.write(f"{number}.{line}\n")
            time.sleep(LINE_TIME)
        out.write("end\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


@abortable_actor()
def save_snapshots(path: str, count: int) -> None:
    """Compute and save ``count`` snapshots to ``path``, each one whole or not at all."""
    try:
        for number in range(1, count + 1):
            time.sleep(0.05)  # computing the snapshot: an abort may land here at once
            with abort_scope(shield=True):
                if number == ABORT_DURING:
                    saving_target.set()
                write_whole(path, number)
                saved.append(number)
                timeline["renamed"] = time.monotonic()
    except Abort:
        timeline["aborted"] = time.monotonic()
        print(f"  save_snapshots: Abort arrived after snapshot {saved[-1]} was saved whole")
        raise


def main() -> None:
    """Abort the actor in the middle of a shielded save; check the file is whole."""
    with RECIPE, RECIPE.worker(), tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "state.txt")
        message = save_snapshots.send(path, 100)
        wait_for(saving_target, f"save_snapshots to start saving snapshot {ABORT_DURING}")

        print(f"main: abort(message_id) while snapshot {ABORT_DURING} is being written (shielded)")
        called = time.monotonic()
        abort(message.message_id)
        outcome = RECIPE.outcomes.wait(message)
        print(f"main: the message {outcome}")

        with open(path, encoding="utf-8") as state:
            lines = state.read().splitlines()
        leftovers = [name for name in os.listdir(tmp) if name != "state.txt"]
        held_ms = (timeline.get("aborted", called) - called) * 1000
        print(
            f"main: the Abort was held back {held_ms:.0f} ms, until the save was complete; "
            f"{os.path.basename(path)} starts {lines[0]!r}, ends {lines[-1]!r}, "
            f"temporary files left: {leftovers}"
        )

        expect(outcome == "failed with Abort", f"the actor should end with Abort: {outcome}")
        expect(saved == list(range(1, ABORT_DURING + 1)), f"unexpected saves: {saved}")
        expect(
            timeline.get("aborted", 0.0) >= timeline["renamed"] >= called,
            "Abort should have arrived after the rename, not during the save",
        )
        expect(lines[0] == f"snapshot {ABORT_DURING}", f"the file holds {lines[0]!r}")
        expect(len(lines) == LINES + 2 and lines[-1] == "end", "the snapshot is not whole")
        expect(not leftovers, f"temporary files were left behind: {leftovers}")
    RECIPE.ok(f"snapshot {ABORT_DURING} was saved whole, then the abort took effect")


if __name__ == "__main__":
    main()
