"""Measure bulk aborts: ``abort_many()`` of many ids in one call.

Against a throwaway ``redis-server`` on loopback (the event backend alone,
so ``INFO commandstats`` counts only this call's commands):

1. ``abort_many()`` of 100, 1,000 and 10,000 fresh ids: seconds per call
   (median and max of ``--runs`` calls each), and the script calls and
   ``PUBLISH`` of one call.
2. The same 10,000 ids aborted again (each request combined with the
   stored one).
3. For comparison, 10,000 ids as 10,000 ``abort()`` calls.
4. What ``track_messages`` (for ``abort_actor``) costs: CPU time of this
   process per no-op message sent and processed (a ``StubBroker`` worker
   with one thread in this process, the event backend on the throwaway
   Redis), with tracking off and on, alternating, median of ``--runs``.

Run it from the repository root::

    python benchmarks/bulk.py
    python benchmarks/bulk.py --runs 10

It takes about 30 s, and stops its server at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid

import redis

from _common import command_counts, redis_server_binary, throwaway_redis
from dramatiq_abort import Abortable, backends


def main(argv: list[str] | None = None) -> int:
    """Time bulk aborts and print the figures."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="calls timed per size (default 5)")
    args = parser.parse_args(argv)
    if redis_server_binary() is None:
        print("needs redis-server on PATH", file=sys.stderr)
        return 1
    with throwaway_redis("dramatiq-abort-bulk-") as url:
        client = redis.Redis.from_url(url)
        backend = backends.RedisBackend(client=client, namespace="bulk:")
        middleware = Abortable(backend=backend)
        middleware.abort_many([f"warm-{i}" for i in range(100)])  # load the scripts
        print(
            f"abort_many() on loopback Redis, redis-py {redis.__version__}; {args.runs} calls a row"
        )
        for size in (100, 1_000, 10_000):
            took = []
            for _ in range(args.runs):
                ids = [uuid.uuid4().hex for _ in range(size)]
                before = command_counts(client)
                started = time.perf_counter()
                middleware.abort_many(ids, reason="bulk benchmark")
                took.append(time.perf_counter() - started)
                after = command_counts(client)
            calls = after.get("evalsha", 0) - before.get("evalsha", 0)
            published = after.get("publish", 0) - before.get("publish", 0)
            print(
                f"  {size:>6,} fresh ids: median {statistics.median(took):.3f} s, "
                f"max {max(took):.3f} s; {calls} script calls and {published} PUBLISH per call"
            )
        again = []
        for _ in range(args.runs):
            started = time.perf_counter()
            middleware.abort_many(ids, reason="again")
            again.append(time.perf_counter() - started)
        print(
            f"  {len(ids):>6,} ids aborted again: median {statistics.median(again):.3f} s, "
            f"max {max(again):.3f} s"
        )
        singles = [uuid.uuid4().hex for _ in range(10_000)]
        started = time.perf_counter()
        for message_id in singles:
            middleware.abort(message_id)
        print(f"  10,000 abort() calls, one per id: {time.perf_counter() - started:.3f} s")
        client.close()
        track_cost(url, args.runs)
    return 0


def track_cost(url: str, runs: int, messages: int = 3000) -> None:
    """Part 4: CPU per message with ``track_messages`` off and on."""
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    figures: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(runs):
        for track in (False, True):
            client = redis.Redis.from_url(url)
            broker = StubBroker()
            middleware = Abortable(
                backend=backends.RedisBackend(
                    client=client, namespace=f"track:{uuid.uuid4().hex}:"
                ),
                track_messages=track,
            )
            broker.add_middleware(middleware)

            @dramatiq.actor(broker=broker, actor_name="noop", max_retries=0)
            def noop() -> None:
                pass

            worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
            worker.start()
            started = time.process_time()
            for _ in range(messages):
                noop.send()
            broker.join(noop.queue_name)
            worker.join()
            middleware._outcomes.flush(30)
            figures[track].append((time.process_time() - started) / messages * 1e6)
            worker.stop()
            client.close()
    off, on = statistics.median(figures[False]), statistics.median(figures[True])
    print(
        f"  track_messages: CPU per message sent and processed {off:.0f} µs off, "
        f"{on:.0f} µs on (+{on - off:.0f} µs; medians of {runs} alternating drains "
        f"of {messages:,})"
    )


if __name__ == "__main__":
    sys.exit(main())
