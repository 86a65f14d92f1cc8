"""Abort an ``async def`` actor: ``Abort`` reaches its coroutine, then ``on_abort`` runs.

dramatiq runs ``async def`` actors on an event loop thread, which needs
dramatiq's ``AsyncIO`` middleware on the broker.  When such a message is
aborted, ``Abort`` is thrown into the coroutine at the ``await`` it is
suspended in, within milliseconds, where ``except Abort:``, ``finally`` and
``async with`` blocks run as usual and may ``await``.  Then
``@abortable_actor(on_abort=...)`` calls the handler, which may be ``async``
too, and the message fails with ``Abort``.

The coroutine has ``Abortable(cleanup_timeout=...)`` (5 s by default) to
finish its cleanup; after that its task is cancelled.

Run it::

    python recipes/async_actor.py                                # in memory
    REDIS_URL=redis://localhost:6379/0 python recipes/async_actor.py  # on Redis

It exits with status 0 when the coroutine saw Abort and the handler ran.
"""

from __future__ import annotations

import asyncio
import threading

from _setup import Recipe, expect, wait_for
from dramatiq.middleware import AsyncIO

from dramatiq_abort import Abort, abort, abortable_actor

#: Polls of the job before the actor gives up on its own (0.05 s each: 10 s).
POLLS = 200

RECIPE = Recipe("async_actor", middleware=[AsyncIO()])
polling = threading.Event()
story: list[str] = []


async def release_lease(job_id: str) -> None:
    """Give the job back for someone else to take (an ``async`` on_abort handler)."""
    await asyncio.sleep(0.01)  # e.g. an HTTP call to the job service
    print(f"  on_abort: released the lease on {job_id}")
    story.append("lease released")


@abortable_actor(on_abort=release_lease)
async def follow_job(job_id: str) -> None:
    """Poll a remote job until it completes, holding a lease on it meanwhile."""
    story.append("lease taken")
    try:
        for poll in range(POLLS):
            await asyncio.sleep(0.05)  # waiting for the job's next status
            if poll == 3:
                polling.set()
        story.append("job done")
    except Abort:
        print(f"  follow_job: aborted while awaiting the status of {job_id}")
        await asyncio.sleep(0)  # cleanup may await
        story.append("coroutine aborted")
        raise  # let the abort end the message


def main() -> None:
    """Start the async actor, abort it, and check its coroutine saw Abort."""
    with RECIPE, RECIPE.worker():
        message = follow_job.send("job-42")
        wait_for(polling, "follow_job to start polling")

        print("main: abort(message_id) while the coroutine awaits")
        abort(message.message_id)
        outcome = RECIPE.outcomes.wait(message)
        print(f"main: the message {outcome}; what happened: {', '.join(story)}")

        expect(outcome == "failed with Abort", f"the message should end with Abort: {outcome}")
        expect(
            story == ["lease taken", "coroutine aborted", "lease released"],
            f"unexpected sequence: {story}",
        )
    RECIPE.ok("the coroutine saw Abort and the async on_abort handler ran")


if __name__ == "__main__":
    main()
