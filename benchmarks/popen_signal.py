"""Measure how soon an abort reaches a child process started with ``guarded_popen()``.

What it measures: the delay from the moment ``abort()`` *returns* to the
moment the child receives SIGINT.  An actor starts a small Python child in
``guarded_popen()`` and blocks in ``proc.wait()``; the child takes
``time.monotonic()`` in its SIGINT handler and writes it to a file.  On
Linux ``CLOCK_MONOTONIC`` is one clock for the whole system, so the
child's reading and the client's compare directly.  The delay from the
``abort()`` *call* is printed too.  A delay below zero means the signal
arrived before ``abort()`` had returned.

Two setups, ``--samples`` aborts each (default 30), worker and client in
this process (a ``dramatiq.Worker`` with one thread):

- ``RedisBroker`` + ``RedisBackend`` on Redis at ``REDIS_URL`` (default
  ``redis://127.0.0.1:6379``), database 15, under a unique namespace; at the
  end it deletes the keys under that namespace and nothing else;
- ``StubBroker`` + ``StubBackend``, in memory.

Target: every delay within 50 ms.

Run it from the repository root::

    python benchmarks/popen_signal.py
    python benchmarks/popen_signal.py --samples 100

It takes a few seconds and exits 0 whether or not the target is met; it
exits 1 only if it could not measure (no Redis, a lost sample).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dramatiq
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from _common import with_db
from dramatiq_abort import Abort, Abortable, EventBackend, abort, backends, guarded_popen

#: Redis database of every key the benchmark writes.
DB = 15
#: Milliseconds from ``abort()`` returning to SIGINT in the child, at most.
TARGET_MS = 50.0
#: Seconds to wait for any one event before giving up on a sample.
EVENT_TIMEOUT_S = 10.0

#: The child: note when SIGINT arrives, then exit; say it is ready first.
CHILD = """
import signal, sys, time

def on_sigint(number, frame):
    received = time.monotonic()
    with open(sys.argv[1], "w") as out:
        out.write(repr(received))
    sys.exit(0)

signal.signal(signal.SIGINT, on_sigint)
print("ready", flush=True)
time.sleep(60)
sys.exit(3)
"""


class Bench:
    """One setup's actor and the events it reports to the measuring thread."""

    def __init__(self, broker: dramatiq.Broker, workdir: Path) -> None:
        self.ready = threading.Event()
        self.ended = threading.Event()
        self.outcome = ""
        self.child = workdir / "child.py"
        self.child.write_text(CHILD)
        self.stamp = workdir / "sigint"

        @dramatiq.actor(broker=broker, max_retries=0, queue_name="popen-signal")
        def run_child() -> None:
            try:
                with guarded_popen(
                    [sys.executable, str(self.child), str(self.stamp)], stdout=subprocess.PIPE
                ) as proc:
                    assert proc.stdout is not None
                    proc.stdout.readline()
                    self.ready.set()
                    proc.wait()
                self.outcome = "the child ran to its end"
            except Abort:
                self.outcome = "aborted"
                raise
            finally:
                self.ended.set()

        self.actor = run_child

    def sample(self) -> tuple[float, float]:
        """Abort one running child; return the delays (ms) from the call and from the return."""
        self.ready.clear()
        self.ended.clear()
        self.stamp.unlink(missing_ok=True)
        message = self.actor.send()
        if not self.ready.wait(EVENT_TIMEOUT_S):
            raise RuntimeError("the actor did not start its child")
        called = time.monotonic()
        abort(message.message_id)
        returned = time.monotonic()
        if not self.ended.wait(EVENT_TIMEOUT_S) or self.outcome != "aborted":
            raise RuntimeError(f"the message was not aborted ({self.outcome or 'still running'})")
        received = float(self.stamp.read_text())
        return (received - called) * 1000, (received - returned) * 1000


def percentile(values: list[float], p: float) -> float:
    """Return the nearest-rank ``p``-th percentile of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@contextmanager
def stub_setup() -> Iterator[tuple[dramatiq.Broker, EventBackend]]:
    """A StubBroker and the in-memory StubBackend."""
    broker = StubBroker()
    try:
        yield broker, backends.StubBackend()
    finally:
        broker.close()


@contextmanager
def redis_setup(url: str) -> Iterator[tuple[dramatiq.Broker, EventBackend]]:
    """A RedisBroker and a RedisBackend under a unique namespace; its keys go at the end."""
    import redis
    from dramatiq.brokers.redis import RedisBroker

    namespace = f"dramatiq-abort-bench-popen-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(with_db(url, DB))
    broker = RedisBroker(url=with_db(url, DB), namespace=namespace)
    try:
        yield broker, backends.RedisBackend(client=client, namespace=f"{namespace}:aborts:")
    finally:
        broker.close()
        keys = list(client.scan_iter(match=f"{namespace}:*", count=500))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        print(f"  {'':<24} deleted the {len(keys)} keys it wrote under {namespace}:")
        client.close()


def measure(
    label: str,
    setup: Callable[[], Any],
    samples: int,
) -> bool:
    """Run one setup's samples and print them; return whether the target was met."""
    with setup() as (broker, backend), tempfile.TemporaryDirectory() as workdir:
        broker.add_middleware(Abortable(backend=backend))
        broker.emit_after("process_boot")
        dramatiq.set_broker(broker)
        bench = Bench(broker, Path(workdir))
        worker = Worker(broker, worker_threads=1, worker_timeout=100)
        worker.start()
        try:
            bench.sample()  # warm-up: connections, imports, the first fork
            measured = [bench.sample() for _ in range(samples)]
        finally:
            worker.stop()
        from_call = [call for call, _ in measured]
        from_return = [ret for _, ret in measured]
        ok = max(from_return) <= TARGET_MS
        for name, values in (("from abort() returning", from_return), ("from the call", from_call)):
            print(
                f"  {label:<24} {name:<23} n={len(values):<4} "
                f"p50={percentile(values, 50):7.2f}  p95={percentile(values, 95):7.2f}  "
                f"max={max(values):7.2f}  min={min(values):7.2f}"
            )
        verdict = "met" if ok else "MISSED"
        print(f"  {label:<24} target max <= {TARGET_MS:g} ms from the return: {verdict}")
    return ok


def main(argv: list[str] | None = None) -> int:
    """Measure both setups and print the delays in milliseconds."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--samples", type=int, default=30, help="aborts per setup (default: 30)")
    args = parser.parse_args(argv)
    import redis

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
    print("guarded_popen: delay from abort() to SIGINT in the child, ms")
    print(
        f"Python {sys.version.split()[0]}, dramatiq {dramatiq.__version__}, "
        f"{os.cpu_count()} CPUs, {args.samples} samples per setup"
    )
    status = 0
    try:
        redis.Redis.from_url(with_db(url, DB), socket_connect_timeout=2).ping()
    except (redis.RedisError, OSError) as exc:
        print(f"  Redis at {url} does not answer ({exc}): set REDIS_URL; measuring in memory only")
        status = 1
    else:
        measure("RedisBroker+RedisBackend", lambda: redis_setup(url), args.samples)
    measure("StubBroker+StubBackend", stub_setup, args.samples)
    return status


if __name__ == "__main__":
    sys.exit(main())
