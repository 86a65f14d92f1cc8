"""Cancel a whole group: ``abort(group)`` stops every member, queued or running.

An upload fans out into a ``dramatiq.group`` of eight ``resize`` messages;
the worker (two threads) starts on the first two, then the user cancels the
upload.  One ``abort(group)`` call (one round trip to the event backend)
interrupts the two running members and skips the six queued ones, and the
batch it returns waits for every outcome.  A group's completion callback
would never run after this (its barrier never completes): don't rely on it
to clean up after a cancelled group.

Run it::

    python recipes/cancel_group.py                                # in memory
    REDIS_URL=redis://localhost:6379/0 python recipes/cancel_group.py  # on Redis

It exits with status 0 when the running members were interrupted, the
others never ran, and every status says so.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import dramatiq
from _setup import STEP_TIMEOUT, Recipe, expect

from dramatiq_abort import Abort, abort, abortable_actor

RECIPE = Recipe("cancel_group")
started: list[str] = []
two_started = threading.Event()
lock = threading.Lock()


@abortable_actor()
def resize(image: str) -> None:
    """Resize one image (here: a loop of short steps until aborted)."""
    with lock:
        started.append(image)
        if len(started) == 2:
            two_started.set()
    try:
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            time.sleep(0.01)  # one step of work
    except Abort:
        print(f"  resize: {image} interrupted")
        raise


def main() -> None:
    """Run a group, cancel it while two members run, and check every outcome."""
    with RECIPE, RECIPE.worker(threads=2):
        upload = dramatiq.group(resize.message(f"img-{i}.png") for i in range(8)).run()
        print("main: sent a group of 8 resize messages")
        expect(two_started.wait(STEP_TIMEOUT), "the worker never started two members")
        batch = abort(upload, reason="upload cancelled")
        print(f'main: abort(group, reason="upload cancelled") -> {batch!r}')
        statuses = batch.wait(STEP_TIMEOUT * 1000)
        states = Counter(s.state.value for s in statuses if s is not None)
        print(f"main: outcomes: {dict(sorted(states.items()))}")
        expect(
            states == Counter({"interrupted": 2, "skipped": 6}),
            f"two members should be interrupted and six skipped, not {dict(states)}",
        )
        expect(len(started) == 2, f"{len(started)} members ran, not just the first two")
        expect(all(s is not None and s.state.final for s in statuses), "a status is not final")
        expect(
            all(s is not None and s.reason == "upload cancelled" for s in statuses),
            "a status lost the reason",
        )
    RECIPE.ok("one call stopped the whole group: 2 interrupted, 6 never ran")


if __name__ == "__main__":
    main()
