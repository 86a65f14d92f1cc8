"""Measure what abort statuses cost and how soon they tell the outcome.

Against a throwaway ``redis-server`` (the event backend alone, so its
``INFO commandstats`` count only this library's commands):

1. **abort() with its status**: the time one ``abort()`` call takes, the
   Redis commands it sends (the request script, the status script, one
   ``PUBLISH`` in one round trip) and the memory of one status record.
2. **Time to a final status**: an in-process worker (``StubBroker``, 2
   threads) runs a CPU-bound actor; from ``abort()`` returning to
   ``handle.wait()`` returning ``interrupted``; and, for a message that
   had finished, to ``too_late``.  ``wait()`` polls 2 ms apart at first.
3. **Status writes**: how many worker updates per second the writer
   thread sends (``update_status``, batches of up to 500; 5,000 queued at
   once, below the 10,000 it keeps), and ``abort_statuses()`` reading
   1,000 ids.

Run it from the repository root::

    python benchmarks/outcomes.py
    python benchmarks/outcomes.py --samples 200

It takes about 20 s.  It deletes nothing it did not write: the server is
its own, and stopped at the end.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid

import dramatiq
import redis
from dramatiq.brokers.stub import StubBroker

from _common import command_counts, redis_server_binary, throwaway_redis
from dramatiq_abort import Abort, Abortable, AbortState, backends
from dramatiq_abort._outcomes import Outcomes
from dramatiq_abort._status import update


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def row(name: str, values: list[float], unit: str = "ms") -> None:
    """Print one line: p50, p95, p99 and max of ``values``."""
    print(
        f"  {name:<38} p50 {pct(values, 50):7.2f}  p95 {pct(values, 95):7.2f}  "
        f"p99 {pct(values, 99):7.2f}  max {max(values):7.2f} {unit}  (n={len(values)})"
    )


def abort_cost(url: str, samples: int) -> None:
    """Part 1: abort() calls, their commands, a status record's memory."""
    client = redis.Redis.from_url(url)
    backend = backends.RedisBackend(client=client, namespace=f"bench:{uuid.uuid4().hex}:")
    broker = StubBroker()
    middleware = Abortable(backend=backend)
    broker.add_middleware(middleware)
    for i in range(50):  # load the scripts, open the connection
        middleware.abort(f"warm-{i}")
    before = command_counts(client)
    took = []
    for i in range(samples):
        started = time.perf_counter()
        middleware.abort(f"m-{i}", reason="benchmark")
        took.append((time.perf_counter() - started) * 1000)
    after = command_counts(client)
    counts = {
        name: (after.get(name, 0) - before.get(name, 0)) / samples
        for name in after
        if after.get(name, 0) != before.get(name, 0) and name != "info"
    }
    print("1. abort() with its status")
    row("abort() call", took)
    print("  commands per abort: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(counts.items())))
    record = client.memory_usage(f"{backend.namespace}status:m-0")
    request = client.memory_usage(f"{backend.namespace}abort:m-0")
    print(f"  memory: status record {record} bytes, request {request} bytes (MEMORY USAGE)")
    client.close()


def final_status(url: str, samples: int) -> None:
    """Part 2: from abort() returning to a final status read back."""
    client = redis.Redis.from_url(url)
    backend = backends.RedisBackend(client=client, namespace=f"bench:{uuid.uuid4().hex}:")
    broker = StubBroker()
    middleware = Abortable(backend=backend)
    broker.add_middleware(middleware)
    started = threading.Event()

    @dramatiq.actor(broker=broker, max_retries=0)
    def spin(limit_s: float) -> None:
        began = time.monotonic()
        started.set()
        x = 0
        try:
            while time.monotonic() - began < limit_s:
                for _ in range(2000):
                    x = (x * 1_103_515_245 + 12_345) & 0x7FFF_FFFF
        except Abort:
            raise

    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    interrupted, too_late, wrong = [], [], 0
    try:
        for _ in range(samples):
            started.clear()
            message = spin.send(30.0)
            started.wait(30)
            began = time.perf_counter()
            handle = middleware.abort(message.message_id)
            status = handle.wait(30_000)
            interrupted.append((time.perf_counter() - began) * 1000)
            wrong += status is None or status.state is not AbortState.INTERRUPTED
        for _ in range(samples):
            message = spin.send(0.0)
            broker.join(spin.queue_name, fail_fast=False)
            worker.join()
            began = time.perf_counter()
            status = middleware.abort(message.message_id).wait(30_000)
            too_late.append((time.perf_counter() - began) * 1000)
            wrong += status is None or status.state is not AbortState.TOO_LATE
    finally:
        worker.stop()
        client.close()
    print("2. time to a final status (abort() returned -> wait() returned)")
    row("running message -> interrupted", interrupted)
    row("finished message -> too_late", too_late)
    print(f"  wrong or missing final states: {wrong}")


def status_writes(url: str, count: int) -> None:
    """Part 3: the writer thread's throughput, and reading many statuses."""
    client = redis.Redis.from_url(url)
    backend = backends.RedisBackend(client=client, namespace=f"bench:{uuid.uuid4().hex}:")
    outcomes = Outcomes(backend)
    began = time.perf_counter()
    for i in range(count):
        outcomes._put(update("skipped", f"w-{i}", ended_at=1, actor_name="a", queue_name="q"))
    flushed = outcomes.flush(60)
    seconds = time.perf_counter() - began
    outcomes.stop()
    middleware = Abortable(backend=backend)
    ids = [f"w-{i}" for i in range(1000)]
    reads = []
    for _ in range(20):
        t = time.perf_counter()
        statuses = middleware.abort_statuses(ids)
        reads.append((time.perf_counter() - t) * 1000)
    found = sum(s is not None for s in statuses)
    print("3. status writes and reads")
    print(
        f"  writer: {count} updates in {seconds:.2f} s = {count / seconds:,.0f} updates/s"
        f" (all written: {flushed})"
    )
    row(f"abort_statuses() of 1,000 ids ({found} found)", reads)
    client.close()


def main(argv: list[str] | None = None) -> int:
    """Run the three parts and print their figures."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--samples", type=int, default=100, help="samples per latency row")
    args = parser.parse_args(argv)
    if redis_server_binary() is None:
        print("needs redis-server on PATH", file=sys.stderr)
        return 1
    with throwaway_redis("dramatiq-abort-outcomes-") as url:
        abort_cost(url, max(args.samples * 10, 500))
        final_status(url, args.samples)
        status_writes(url, 5_000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
