"""Stop a pipeline for good: ``abort(pipeline)`` stops the running stage, and no later one runs.

A three-stage ``dramatiq.pipeline`` (``fetch`` → ``parse`` → ``store``) is
running its first stage when it is aborted.  ``abort(pipeline)`` requests
the abort of every stage, including the ones not enqueued yet: the running
stage is interrupted, and a later stage, should it ever be enqueued, is
skipped when it comes up.  Here the abort is graceful (2 s): ``fetch`` sees
it through ``abort_requested()`` and returns early, so dramatiq does hand
its result to ``parse``, which the worker then skips.

Run it::

    python recipes/stop_pipeline.py                                # in memory
    REDIS_URL=redis://localhost:6379/0 python recipes/stop_pipeline.py  # on Redis

It exits with status 0 when neither later stage ran and the statuses say
``interrupted`` (returned in its grace), ``skipped`` and (never enqueued)
``requested``.
"""

from __future__ import annotations

import threading
import time

import dramatiq
from _setup import STEP_TIMEOUT, Recipe, expect

from dramatiq_abort import abort, abort_requested, abortable_actor

RECIPE = Recipe("stop_pipeline")
fetching = threading.Event()
ran: list[str] = []


@abortable_actor()
def fetch(url: str) -> str:
    """Fetch ``url`` in chunks, stopping early (and cleanly) when asked to."""
    fetching.set()
    deadline = time.monotonic() + STEP_TIMEOUT
    while time.monotonic() < deadline:
        if abort_requested() is not None:
            print("  fetch: asked to stop; returning what it has")
            return "partial page"
        time.sleep(0.01)  # one chunk
    return "whole page"


@abortable_actor()
def parse(page: str) -> str:
    """Parse a page (a later stage)."""
    ran.append("parse")
    return page.upper()


@abortable_actor()
def store(parsed: str) -> None:
    """Store the result (the last stage)."""
    ran.append("store")


def main() -> None:
    """Run a pipeline, abort it during its first stage, and check no later stage ran."""
    with RECIPE, RECIPE.worker():
        pipe = dramatiq.pipeline(
            [fetch.message("https://example.org"), parse.message(), store.message()]
        ).run()
        print("main: running fetch -> parse -> store")
        expect(fetching.wait(STEP_TIMEOUT), "fetch never started")
        batch = abort(pipe, abort_timeout=2000)
        print("main: abort(pipeline, abort_timeout=2000)")
        first, second = batch[0].wait(STEP_TIMEOUT * 1000), batch[1].wait(STEP_TIMEOUT * 1000)
        third = batch[2].status()
        for name, status in zip(("fetch", "parse", "store"), (first, second, third), strict=True):
            state = status.state.value if status else None
            print(f"main: {name}: {state}")
        expect(first is not None and first.ended_with == "returned", f"fetch: {first}")
        expect(second is not None and second.state.value == "skipped", f"parse: {second}")
        expect(third is not None and third.state.value == "requested", f"store: {third}")
        expect(ran == [], f"later stages ran: {ran}")
    RECIPE.ok("the running stage stopped and no later stage ran")


if __name__ == "__main__":
    main()
