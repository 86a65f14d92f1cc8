"""Measure abort latency in gevent workers, beside the same run with threads.

What it measures: the delay from the moment ``abort()`` *returns* to the
moment ``Abort`` reaches the running actor, for actors that wait in three
ways:

- ``sleep``: ``time.sleep(5)`` (gevent's sleep once patched);
- ``socket``: one ``recv()`` on a socket nothing writes to (5 s timeout);
- ``busy``: a pure-Python loop that yields every millisecond
  (``time.sleep(0)``), as a CPU-bound greenlet must under gevent;
- ``idle`` (gevent only): the same loop yielding with ``gevent.idle()``,
  which lets gevent's loop poll for I/O (after ``sleep(0)`` it polls only
  every few tens of ms while another greenlet keeps yielding).

Each mode runs in a child interpreter of its own: ``gevent`` patches the
standard library first (as ``dramatiq-gevent`` does), ``threads`` does not.
Worker (4 threads or greenlets) and client share that process; the broker
is a ``StubBroker`` and the event backend ``StubBackend`` (in memory) or,
with ``--redis``, ``RedisBackend`` on Redis at ``REDIS_URL`` (default
``redis://127.0.0.1:6379``), database 15, under a namespace of its own,
deleted at the end.  ``--samples`` aborts per actor (default 50).

Target: p50 within a few ms and every delay within 50 ms, except threads
blocked in ``time.sleep()`` or ``recv()``: a thread's ``Abort`` lands only
when the system call ends (here after 5 s), so those two cells (one sample
each) show what threads cannot do.

Run it from the repository root::

    python benchmarks/gevent_latency.py
    python benchmarks/gevent_latency.py --redis --samples 200

It takes about half a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: Seconds a sample may take before the actor's own wait ends it.
WAIT_S = 5.0
#: How many blocking samples (``sleep``, ``socket``) run in threads: each
#: lasts until its wait ends by itself.
THREAD_BLOCKING_SAMPLES = 1

CHILD = r"""
import json, os, socket, sys, threading, time, uuid

if sys.argv[1] == "gevent":
    from gevent import monkey

    monkey.patch_all()

import dramatiq
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from dramatiq_abort import Abort, Abortable, abort, backends

mode, kind, samples, redis_url = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
WAIT_S = float(sys.argv[5])
namespace = f"dramatiq-abort-bench-{uuid.uuid4().hex[:8]}:"
if redis_url:
    backend = backends.RedisBackend.from_url(redis_url, namespace=namespace)
else:
    backend = backends.StubBackend()
broker = StubBroker()
broker.emit_after("process_boot")
middleware = Abortable(backend=backend)
broker.add_middleware(middleware)
started, landed = threading.Event(), {}


@dramatiq.actor(broker=broker, max_retries=0)
def waiting(sample):
    started.set()
    try:
        if kind == "sleep":
            time.sleep(WAIT_S)
        elif kind == "socket":
            reader, writer = socket.socketpair()
            reader.settimeout(WAIT_S)
            try:
                reader.recv(1)
            except TimeoutError:
                pass
            finally:
                reader.close()
                writer.close()
        else:
            if kind == "idle":
                import gevent

                pause = gevent.idle
            else:
                pause = lambda: time.sleep(0)
            end = time.monotonic() + WAIT_S
            while time.monotonic() < end:
                step = time.monotonic() + 0.001
                while time.monotonic() < step:
                    pass
                pause()
    except Abort:
        landed[sample] = time.monotonic()
        raise


worker = Worker(broker, worker_threads=4, worker_timeout=50)
worker.start()
delays = []
try:
    for sample in range(samples):
        started.clear()
        message = waiting.send(sample)
        if not started.wait(10):
            raise SystemExit("the actor did not start")
        time.sleep(0.005)  # let it settle into its wait
        abort(message.message_id, middleware=middleware)
        returned = time.monotonic()
        broker.join(waiting.queue_name, fail_fast=False, timeout=int(WAIT_S * 2000))
        if sample in landed:
            delays.append((landed[sample] - returned) * 1000)
        else:
            delays.append(None)
finally:
    worker.stop()
    if redis_url:
        client = backend.client
        keys = list(client.scan_iter(match=namespace + "*", count=1000))
        if keys:
            client.delete(*keys)
print(json.dumps(delays))
"""


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    """Run each (mode, actor) pair in a child interpreter and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=50, help="aborts per actor (default 50)")
    parser.add_argument("--redis", action="store_true", help="RedisBackend instead of in memory")
    options = parser.parse_args()
    redis_url = ""
    if options.redis:
        base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
        redis_url = base.rsplit("/", 1)[0] + "/15" if base.count("/") > 2 else base + "/15"
    backend = "RedisBackend" if redis_url else "StubBackend"
    print(f"abort() returned -> Abort in the actor, ms ({backend}, StubBroker, 4 workers)")
    print(f"{'mode':<8} {'actor':<7} {'n':>4} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}")
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    for mode in ("threads", "gevent"):
        for kind in ("sleep", "socket", "busy") + (("idle",) if mode == "gevent" else ()):
            blocking = mode == "threads" and kind != "busy"
            samples = THREAD_BLOCKING_SAMPLES if blocking else options.samples
            result = subprocess.run(
                [sys.executable, "-c", CHILD, mode, kind, str(samples), redis_url, str(WAIT_S)],
                capture_output=True,
                text=True,
                env=env,
                timeout=WAIT_S * (samples + 2) + 60,
            )
            if result.returncode != 0:
                print(result.stderr[-2000:], file=sys.stderr)
                return 1
            raw = json.loads(result.stdout.strip().splitlines()[-1])
            delays = [d for d in raw if d is not None]
            missing = len(raw) - len(delays)
            if not delays:
                print(f"{mode:<8} {kind:<7} {len(raw):>4}   no Abort landed ({missing} missing)")
                continue
            cells = [_quantile(delays, q) for q in (0.5, 0.95, 0.99)] + [max(delays)]
            row = " ".join(f"{cell:>8.2f}" for cell in cells)
            note = f"  ({missing} missing)" if missing else ""
            print(f"{mode:<8} {kind:<7} {len(raw):>4} {row}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
