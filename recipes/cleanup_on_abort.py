"""Clean up after an aborted actor with ``@abortable_actor(on_abort=...)``.

The actor "downloads" a file: it writes chunks to ``<path>.part`` and
renames that to ``<path>`` once complete.  Aborted midway, it would leave
the ``.part`` file behind.  ``on_abort`` is the place to remove it: the
handler is called once, in the worker, with the message's own arguments,
after the actor's code has stopped (its ``with`` blocks have closed the
file) and before ``Abort`` ends the message.  The message then fails with
``Abort`` and is not retried.

Run it::

    python recipes/cleanup_on_abort.py                                # in memory
    REDIS_URL=redis://localhost:6379/0 python recipes/cleanup_on_abort.py  # on Redis

It exits with status 0 when the handler ran once and nothing was left behind.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time

from _setup import Recipe, expect, wait_for

from dramatiq_abort import abort, abortable_actor

#: Chunks to download: 1000 chunks of 10 ms take 10 s when nobody aborts.
CHUNKS = 1000

RECIPE = Recipe("cleanup_on_abort")
downloading = threading.Event()
cleanups: list[str] = []


def remove_partial(url: str, path: str) -> None:
    """Remove the half-written ``.part`` file of an aborted download."""
    partial = path + ".part"
    size = 0
    if os.path.exists(partial):
        size = os.path.getsize(partial)
        os.remove(partial)
    print(f"  on_abort: removed {os.path.basename(partial)} ({size} bytes) of {url}")
    cleanups.append(path)


@abortable_actor(on_abort=remove_partial)
def download(url: str, path: str) -> None:
    """Write ``url``'s content to ``path``, through a ``.part`` file renamed when complete."""
    partial = path + ".part"
    with open(partial, "wb") as out:
        for chunk in range(CHUNKS):
            out.write(b"#" * 1024)  # one chunk received
            time.sleep(0.01)  # waiting for the next one
            if chunk == 20:
                downloading.set()
    os.replace(partial, path)


def main() -> None:
    """Start a download, abort it, and check that ``on_abort`` cleaned up."""
    with RECIPE, RECIPE.worker(), tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dataset.bin")
        message = download.send("https://example.com/dataset.bin", path)
        wait_for(downloading, "the download to start")

        print("main: abort(message_id) while the download is in progress")
        abort(message.message_id)
        outcome = RECIPE.outcomes.wait(message)
        print(f"main: the message {outcome}")
        left = sorted(os.listdir(tmp))
        print(f"main: files left in the download directory: {left}")

        expect(outcome == "failed with Abort", f"the download should end with Abort: {outcome}")
        expect(cleanups == [path], f"on_abort should have run once, it ran {len(cleanups)} times")
        expect(not left, f"the download left files behind: {left}")
    RECIPE.ok("the aborted download was cleaned up by on_abort")


if __name__ == "__main__":
    main()
