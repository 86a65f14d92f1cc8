"""Abort a message from another process, as a web app or an admin script would.

The worker runs in this process; a separate Python process (started with
``subprocess.run``) calls ``abort(message_id)``.  The two only share Redis:
the abort request travels through ``backends.RedisBackend``, which stores it
and announces it to every worker, and the running actor gets ``Abort``
within milliseconds.  In the other process, ``abort()`` needs an
``Abortable`` on the same backend and namespace: either the one on its
configured broker (an application that already set up dramatiq just calls
``abort(message_id)``), or one passed with ``middleware=``, as here.

This recipe needs Redis, since the in-memory backend cannot cross
processes.  It uses ``REDIS_URL`` when set, else Redis on 127.0.0.1:6379
(database 0) if it answers, in a namespace of its own whose keys it deletes
at the end.  Without any Redis it prints one line saying so and exits with
status 0.

Run it::

    REDIS_URL=redis://localhost:6379/0 python recipes/abort_from_another_process.py

It exits with status 0 when the other process's abort stopped the actor.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from _setup import STEP_TIMEOUT, Recipe, expect, wait_for

from dramatiq_abort import Abort, abortable_actor

#: Used when ``REDIS_URL`` is not set, if a Redis server answers there.
LOCAL_REDIS = "redis://127.0.0.1:6379/0"

#: The other process: it knows the Redis URL, the namespace and the message id.
ABORTER = """
import os, sys, time
from dramatiq_abort import Abortable, abort, backends

url, namespace, message_id = sys.argv[1:]
backend = backends.RedisBackend.from_url(url, namespace=namespace)
called = time.time()
abort(message_id, middleware=Abortable(backend=backend))
print(f"  aborter (pid {os.getpid()}): abort({message_id!r}) returned")
print(f"called at {called!r}")
"""


def find_redis() -> str | None:
    """Return ``REDIS_URL``, else the local Redis URL if a server answers there, else ``None``."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url
    import redis

    client = redis.Redis.from_url(LOCAL_REDIS, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()
    return LOCAL_REDIS


REDIS_URL = find_redis()
if REDIS_URL is None:
    print(
        "abort_from_another_process: this recipe needs Redis (set REDIS_URL or run one on "
        "127.0.0.1:6379); skipped"
    )
    sys.exit(0)

RECIPE = Recipe("abort_from_another_process", redis_url=REDIS_URL)
crunching = threading.Event()
timeline: dict[str, float] = {}


@abortable_actor()
def crunch(steps: int) -> None:
    """Crunch numbers for ``steps`` steps of 10 ms (until aborted, here)."""
    try:
        for step in range(steps):
            time.sleep(0.01)  # one step of work
            if step == 5:
                crunching.set()
    except Abort:
        timeline["aborted"] = time.time()
        print(f"  crunch (pid {os.getpid()}): got Abort, stopping")
        raise


def main() -> None:
    """Run a long actor here and abort it from a separate Python process."""
    with RECIPE, RECIPE.worker():
        message = crunch.send(1000)  # 10 s if nobody stops it
        wait_for(crunching, "crunch to start")

        print(f"main (pid {os.getpid()}): starting another process to abort {message.message_id}")
        aborter = subprocess.run(
            [
                sys.executable,
                "-c",
                ABORTER,
                RECIPE.redis_url,
                RECIPE.backend_namespace,
                message.message_id,
            ],
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            check=False,
        )
        expect(aborter.returncode == 0, f"the other process failed:\n{aborter.stderr}")
        said, _, called_at = aborter.stdout.rpartition("called at ")
        print(said, end="")
        outcome = RECIPE.outcomes.wait(message)
        print(f"main: the message {outcome}")

        expect(outcome == "failed with Abort", f"the message should end with Abort: {outcome}")
        expect("aborted" in timeline, "crunch never saw Abort")
        # Both processes run on this machine, so their wall clocks agree.
        took_ms = (timeline["aborted"] - float(called_at)) * 1000
        print(
            f"main: Abort landed in crunch {took_ms:.1f} ms after the other process called abort()"
        )
    RECIPE.ok("abort() in another process stopped the actor running in this one")


if __name__ == "__main__":
    main()
