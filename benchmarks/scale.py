"""Show that the cost of an abort does not grow with the number of running messages.

What it measures, against real Redis on loopback:

1. **Scale**: a worker running N abortable messages at once (N = 1, 10,
   100, 1,000; the worker has N threads), N - 1 of them idle in the
   background and one the sample, aborted.  Samples are aborted one at a
   time, each a few ms after it reported its start.  Per N: the abort
   latency (from ``abort()`` returning to ``Abort`` caught in the actor),
   p50 / p95 / p99 / max in ms, and the commands the event backend's own
   Redis server ran per sample (``INFO commandstats`` delta: the sample's
   ``GET`` when it starts, the ``EVALSHA`` and the ``PUBLISH`` inside it
   that ``abort()`` sends).  Twice: sync actors (the sample is the
   CPU-bound actor of ``abort_latency.py``, the background ones sleep in
   0.2 s steps) and ``async def`` actors on dramatiq's ``AsyncIO``
   middleware (N coroutines on one event loop, each in one long
   ``await asyncio.sleep()``; each async message still holds a worker
   thread, hence N threads).  The verdict "flat" means: p50 at the largest
   N within 2x of p50 at N = 1 (or within 1 ms), and the same commands per
   sample at every N.
2. **Memory**: 100,000 ``CANCEL`` requests for messages not yet enqueued,
   sent while an idle worker (8 threads) listens, then the 100,000
   messages enqueued and skipped by it.  The worker reads a request only
   when it takes the message (one ``GET``) and drops announcements about
   messages it does not run, so the requests live in Redis, not in the
   worker.  Printed: the worker's RSS (``VmRSS`` of ``/proc/<pid>/status``)
   before, after the announcements and after the drain, its peak
   (``VmHWM``), and the event backend server's ``used_memory`` growth per
   stored request.

Setup: a ``RedisBroker`` on ``REDIS_URL`` (default ``redis://127.0.0.1:6379``),
database 15, under a namespace unique to the run; the event backend
(``RedisBackend``) alone on a throwaway ``redis-server`` started here, so
its ``INFO`` figures are the middleware's alone.  Workers run in child
processes.  At the end it deletes the broker keys it wrote and stops the
throwaway server.

Run it from the repository root::

    python benchmarks/scale.py            # about 3 to 5 minutes on 2 cores
    python benchmarks/scale.py --quick    # smaller counts, under a minute

It exits 0 when it could measure, flat or not (a figure that is not flat is
a finding, listed at the end); 1 when Redis is unreachable.

Note:
    Percentiles are nearest-rank: below 100 samples, p99 is the largest
    value.  An actor that never saw ``Abort`` counts as an infinite latency.
    On a 2-core machine 1,000 worker threads compete with the client and
    both Redis servers, so the tails are noisy; compare p50s.  Two costs do
    grow with the number of threads, neither in Redis: delivery to a sync
    actor looks its thread's frame up in ``sys._current_frames()``, which
    walks every thread (about 0.25 ms at 1,000 threads), and the watcher
    competes for the GIL with every thread that wakes (the background
    actors wake every 0.2 s).

"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO, Middleware

from _common import (
    WORKER_TIMEOUT_MS,
    WorkerPipes,
    command_counts,
    declare_spin,
    delete_keys,
    next_sample_id,
    serve,
    throwaway_redis,
    with_db,
)
from dramatiq_abort import Abort, Abortable, AbortMode, abort
from dramatiq_abort.backends import RedisBackend

#: Redis database of every broker key the benchmark writes.
DB = 15
#: Seconds a background or sample actor runs unless aborted.
LONG_S = 600.0
#: Seconds to wait for any one report from a worker.
EVENT_TIMEOUT_S = 30.0
#: Worker threads of the memory scenario.
MEMORY_THREADS = 8
#: Milliseconds a memory-scenario request lives: longer than the scenario.
MEMORY_TTL_MS = 900_000
#: Samples aborted before the measured ones, at every N.
WARMUP = 3
#: The calls clients make, compared across N.  The commands a script runs vary
#: a little: a status update that finds a later one already written stops
#: after its GET (the worker's received and interrupted race).
CLIENT_CALLS = frozenset({"evalsha", "mget", "exists"})
#: Flat: p50 at the largest N within this factor of p50 at N = 1 ...
FLAT_FACTOR = 2.0
#: ... or within this many ms of it (sub-ms p50s are all noise).
FLAT_SLACK_MS = 1.0


@dataclass(frozen=True)
class Settings:
    """Where a worker process connects, and how it runs."""

    broker_url: str
    backend_url: str
    namespace: str
    threads: int
    asyncio: bool = False

    @property
    def backend_namespace(self) -> str:
        """Prefix of the event backend's keys and channel."""
        return f"{self.namespace}:aborts:"


@dataclass
class Actors:
    """The benchmark's actors, declared the same way in every process."""

    spin: dramatiq.Actor[[int, float], None]
    idle: dramatiq.Actor[[int, float], None]
    await_long: dramatiq.Actor[[int, float], None]
    skipped: dramatiq.Actor[[], None]


class SkipCounter(Middleware):
    """Count skipped messages, and messages that ran, of the memory scenario."""

    def __init__(self) -> None:
        """Start both counts at zero."""
        self.skipped = 0
        self.ran = 0
        self._lock = threading.Lock()

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        """Count one skipped message."""
        with self._lock:
            self.skipped += 1


def declare_actors(
    broker: dramatiq.Broker, report: Callable[[str, int], None], counter: SkipCounter
) -> Actors:
    """Declare the sample, background and memory-scenario actors on ``broker``."""
    spin = declare_spin(broker, report, "scale_spin")

    @dramatiq.actor(broker=broker, actor_name="scale_idle", max_retries=0)
    def idle(sample: int, limit_s: float) -> None:
        """Sleep in 0.2 s steps until aborted or ``limit_s`` passes."""
        started = time.monotonic()
        try:
            report("started", sample)
            while time.monotonic() - started < limit_s:
                time.sleep(0.2)
        except Abort:
            report("caught", sample)
            raise

    @dramatiq.actor(broker=broker, actor_name="scale_await", max_retries=0)
    async def await_long(sample: int, limit_s: float) -> None:
        """Await one ``asyncio.sleep(limit_s)`` until aborted."""
        try:
            report("started", sample)
            await asyncio.sleep(limit_s)
        except Abort:
            report("caught", sample)  # stamped on the event loop's thread
            raise

    @dramatiq.actor(broker=broker, actor_name="scale_skipped", max_retries=0)
    def skipped() -> None:
        """Count a run: every message of this actor is cancelled, so none should run."""
        counter.ran += 1

    return Actors(spin, idle, await_long, skipped)


def build_broker(
    settings: Settings, report: Callable[[str, int], None]
) -> tuple[RedisBroker, RedisBackend, Actors, SkipCounter]:
    """Return a broker with ``Abortable`` on a ``RedisBackend``, the backend, actors, counter."""
    # redis-py 8 caps a pool at 100 connections; a worker with more threads
    # than that needs a bigger pool for the broker and for the backend.
    pool = f"max_connections={settings.threads + 64}"
    broker = RedisBroker(url=f"{settings.broker_url}?{pool}", namespace=settings.namespace)
    backend = RedisBackend.from_url(
        f"{settings.backend_url}?{pool}", namespace=settings.backend_namespace
    )
    if settings.asyncio:
        broker.add_middleware(AsyncIO())
    broker.add_middleware(Abortable(backend=backend))
    counter = SkipCounter()
    broker.add_middleware(counter)
    dramatiq.set_broker(broker)
    return broker, backend, declare_actors(broker, report, counter), counter


def worker_process(settings: Settings, events: Connection, control: Connection) -> None:
    """Run a dramatiq worker with ``settings.threads`` threads until told to stop.

    Actors report ``(kind, sample, monotonic time)`` over ``events``.  The
    first reply on ``control`` is this process's pid; ``("skipped",)``
    returns ``(skipped, ran)`` of the memory scenario; ``("stop",)`` stops.
    """
    # dramatiq logs every skipped message (a WARNING); keep its errors only.
    logging.getLogger("dramatiq").setLevel(logging.ERROR)
    lock = threading.Lock()

    def report(kind: str, sample: int) -> None:
        at = time.monotonic()
        with lock:  # worker threads share the pipe
            events.send((kind, sample, at))

    broker, _, _, counter = build_broker(settings, report)
    worker = dramatiq.Worker(
        broker, worker_threads=settings.threads, worker_timeout=WORKER_TIMEOUT_MS
    )
    worker.start()

    def handle(command: tuple[Any, ...]) -> Any:
        if command[0] == "skipped":
            return counter.skipped, counter.ran
        raise ValueError(f"unknown command {command[0]!r}")

    control.send(("ok", os.getpid()))
    try:
        serve(control, handle)
    finally:
        worker.stop()
        broker.close()
        control.send(("ok", None))


class WorkerProcess(WorkerPipes):
    """A worker in a child process, the pipes to it, and what the parent reads of it."""

    def __init__(self, settings: Settings) -> None:
        """Prepare (not start) a worker process with ``settings``."""
        super().__init__(worker_process, (settings,), "scale-worker")
        self.pid = 0

    def __enter__(self) -> WorkerProcess:
        """Start the worker process and learn its pid."""
        self.pid = self.start("start")
        return self

    def report(self, timeout: float = EVENT_TIMEOUT_S) -> tuple[str, int, float]:
        """Return the next ``(kind, sample, time)`` report; raise ``TimeoutError`` if none."""
        if not self._events.poll(timeout):
            raise TimeoutError(f"no report from the worker in {timeout} s")
        report: tuple[str, int, float] = self._events.recv()
        return report

    def expect(self, sample: int, kind: str) -> float:
        """Wait for ``kind`` about ``sample``, dropping other reports; return its time."""
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while True:
            got, about, at = self.report(max(0.0, deadline - time.monotonic()))
            if about == sample and got == kind:
                return at

    def expect_many(self, samples: set[int], kind: str) -> None:
        """Wait until every one of ``samples`` has reported ``kind``."""
        waiting = set(samples)
        while waiting:
            got, about, _ = self.report()
            if got == kind:
                waiting.discard(about)

    def memory_kb(self) -> dict[str, int]:
        """Return ``VmRSS`` and ``VmHWM`` of the worker process, in kB."""
        figures = {}
        with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    figures[name] = int(value.split()[0])
        return figures


# -- Redis helpers ---------------------------------------------------------------


def wait_subscribers(client: redis.Redis, channel: str) -> None:
    """Wait until ``channel`` has a subscriber: the worker's watcher is listening."""
    for _ in range(400):
        if dict(client.pubsub_numsub(channel)).get(channel.encode(), 0) >= 1:
            return
        time.sleep(0.05)
    raise RuntimeError(f"no watcher subscribed to {channel!r} within 20 s")


def command_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Return the commands run between two :func:`command_counts`, without ``INFO``."""
    delta = {name: calls - before.get(name, 0) for name, calls in after.items()}
    return {name: calls for name, calls in sorted(delta.items()) if calls and name != "info"}


# -- reporting ---------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Return the nearest-rank ``p``-th percentile of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def say(text: str = "") -> None:
    """Print a line at once, so progress shows while the benchmark runs."""
    print(text, flush=True)


def per_sample(counts: dict[str, int], samples: int) -> str:
    """Return commands per sample as text, such as ``evalsha 1, get 1, publish 1``."""
    return ", ".join(f"{name} {calls / samples:g}" for name, calls in counts.items()) or "none"


@dataclass(frozen=True)
class Row:
    """The figures of one N."""

    running: int
    latencies: list[float]
    commands: dict[str, int]
    seconds: float

    @property
    def per_abort(self) -> float:
        """Backend commands per sample (start + abort + status writes)."""
        return sum(self.commands.values()) / len(self.latencies)

    @property
    def calls_per_abort(self) -> float:
        """The calls clients made per sample: scripts and reads, not what a script runs."""
        calls = sum(v for k, v in self.commands.items() if k in CLIENT_CALLS)
        return calls / len(self.latencies)


# -- scale ---------------------------------------------------------------------------


def measure_scale(
    base: Settings, running: int, samples: int, backend_client: redis.Redis, actors: Actors
) -> Row:
    """Keep ``running`` messages running, abort ``samples`` of them one at a time.

    ``running - 1`` background messages start first; each sample is sent,
    aborted a few ms after it reported its start, and caught before the next
    one is sent, so ``running`` messages run at every abort.
    """
    settings = Settings(
        base.broker_url, base.backend_url, base.namespace, threads=running, asyncio=base.asyncio
    )
    background_actor = actors.await_long if base.asyncio else actors.idle
    sample_actor = actors.await_long if base.asyncio else actors.spin
    started_at = time.monotonic()
    with WorkerProcess(settings) as worker:
        wait_subscribers(backend_client, f"{settings.backend_namespace}events")
        background = {next_sample_id() for _ in range(running - 1)}
        messages = [background_actor.send(sample, LONG_S) for sample in sorted(background)]
        worker.expect_many(background, "started")
        latencies: list[float] = []
        before: dict[str, int] = {}
        for index in range(WARMUP + samples):
            if index == WARMUP:
                before = settled_counts(backend_client)
            sample = next_sample_id()
            message = sample_actor.send(sample, LONG_S)
            started = worker.expect(sample, "started")
            time.sleep(max(0.0, started + random.uniform(0.002, 0.02) - time.monotonic()))
            abort(message.message_id)
            returned = time.monotonic()
            try:
                caught = worker.expect(sample, "caught")
            except TimeoutError:
                caught = math.inf
            if index >= WARMUP:
                latencies.append((caught - returned) * 1000)
        commands = command_delta(before, settled_counts(backend_client))
        for message in messages:
            abort(message.message_id)
        worker.expect_many(background, "caught")
    return Row(running, latencies, commands, time.monotonic() - started_at)


def scale_table(title: str, rows: list[Row]) -> str | None:
    """Print one variant's table; return a finding when it is not flat."""
    say()
    say(title)
    say(
        f"  {'running':>7} {'n':>4} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}  "
        f"{'cmds/abort':>10}  {'took':>5}  backend server's calls per sample (INFO commandstats)"
    )
    for row in rows:
        values = row.latencies
        say(
            f"  {row.running:>7,} {len(values):>4} {percentile(values, 50):>7.2f} "
            f"{percentile(values, 95):>7.2f} {percentile(values, 99):>7.2f} "
            f"{max(values):>7.2f}  {row.per_abort:>10.2f}  {row.seconds:>5.1f}  "
            f"{per_sample(row.commands, len(values))}"
        )
    first, last = rows[0], rows[-1]
    p50_first, p50_last = percentile(first.latencies, 50), percentile(last.latencies, 50)
    latency_flat = p50_last <= max(p50_first * FLAT_FACTOR, p50_first + FLAT_SLACK_MS)
    commands_flat = len({round(row.calls_per_abort, 2) for row in rows}) == 1
    lost = sum(math.isinf(v) for row in rows for v in row.latencies)
    flat = latency_flat and commands_flat and not lost
    say(
        f"  flat? {'yes' if flat else 'NO'}: p50 at {last.running:,} is {p50_last:.2f} ms "
        f"against {p50_first:.2f} ms at {first.running:,} "
        f"({'within' if latency_flat else 'beyond'} {FLAT_FACTOR:g}x or +{FLAT_SLACK_MS:g} ms); "
        f"calls per abort (EVALSHA, MGET, EXISTS) {'equal' if commands_flat else 'DIFFER'} "
        "at every N" + (f"; {lost} aborts never caught" if lost else "")
    )
    say(
        "  (Redis counts the commands a script runs. abort()'s round trip runs two EVALSHA:\n"
        "  the request's script (GET, PTTL, SET, PUBLISH) and its status record's (GET,\n"
        "  PTTL, SET). The MGET is the worker's check as the sample starts; the other two\n"
        "  EVALSHA are the worker's status writes, received and interrupted, sent by its\n"
        "  writer thread after the fact (the counts are read once they have settled).\n"
        "  So 2 round trips on the hot path per sample, and 1 or 2 for the status.)"
    )
    return None if flat else f"{title}: not flat"


def settled_counts(client: redis.Redis) -> dict[str, int]:
    """:func:`command_counts` once the worker's status writes, sent after the fact, are in.

    The counts must stay the same (``INFO`` aside) for 100 ms; at most 5 s.
    """
    counts = command_counts(client)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        time.sleep(0.1)  # nothing announces that a writer is done: look again
        again = command_counts(client)
        if not command_delta(counts, again):
            return again
        counts = again
    return counts


# -- memory ----------------------------------------------------------------------------


def measure_memory(
    base: Settings, requests: int, backend_client: redis.Redis, actors: Actors
) -> list[str]:
    """Cancel ``requests`` messages before they exist, enqueue them, let a worker skip them."""
    settings = Settings(base.broker_url, base.backend_url, base.namespace, MEMORY_THREADS)
    findings = []
    say()
    say(f"Memory: {requests:,} outstanding CANCEL requests, worker with {MEMORY_THREADS} threads")
    with WorkerProcess(settings) as worker:
        wait_subscribers(backend_client, f"{settings.backend_namespace}events")
        # The server is this run's alone: drop the scale scenario's requests
        # (they expire over the next 90 s), so the used_memory delta is ours.
        backend_client.flushall()
        time.sleep(1.0)  # let the worker settle before the baseline
        rss_before = worker.memory_kb()
        used_before = int(backend_client.info("memory")["used_memory"])
        messages = [actors.skipped.message() for _ in range(requests)]
        clock = time.monotonic()
        for message in messages:
            abort(message.message_id, mode=AbortMode.CANCEL, abort_ttl=MEMORY_TTL_MS)
        cancel_s = time.monotonic() - clock
        time.sleep(1.0)  # let the watcher read the last announcements
        rss_announced = worker.memory_kb()
        used_after = int(backend_client.info("memory")["used_memory"])
        stored = int(backend_client.dbsize())
        broker = dramatiq.get_broker()
        clock = time.monotonic()
        for message in messages:
            broker.enqueue(message)
        enqueue_s = time.monotonic() - clock
        clock = time.monotonic()
        skipped, ran = 0, 0
        highest_rss = rss_announced["VmRSS"]
        while skipped + ran < requests and time.monotonic() - clock < 600:
            time.sleep(0.25)
            skipped, ran = worker.call("skipped")
            highest_rss = max(highest_rss, worker.memory_kb()["VmRSS"])
        drain_s = time.monotonic() - clock
        rss_after = worker.memory_kb()
    per_request = (used_after - used_before) / requests
    say(
        f"  cancels sent in {cancel_s:.1f} s ({requests / cancel_s:,.0f}/s); "
        f"{stored:,} keys stored on the event backend's server"
    )
    say(
        f"  event backend server used_memory: +{(used_after - used_before) / 2**20:.1f} MiB, "
        f"{per_request:.0f} bytes per request"
    )
    say(
        f"  messages enqueued in {enqueue_s:.1f} s; drained in {drain_s:.1f} s "
        f"({requests / drain_s:,.0f}/s): {skipped:,} skipped, {ran:,} ran"
    )
    mib = 1024
    say(f"  worker RSS, MiB: {'before':>8} {'announced':>10} {'drain max':>10} {'after':>8}")
    say(
        f"  {'':16} {rss_before['VmRSS'] / mib:>8.1f} {rss_announced['VmRSS'] / mib:>10.1f} "
        f"{highest_rss / mib:>10.1f} {rss_after['VmRSS'] / mib:>8.1f}"
        f"   peak (VmHWM) {rss_after['VmHWM'] / mib:.1f} MiB"
    )
    if ran:
        findings.append(f"memory: {ran} cancelled messages ran anyway")
    if skipped + ran < requests:
        findings.append(f"memory: only {skipped + ran:,} of {requests:,} messages drained")
    return findings


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=(
            "dramatiq-abort benchmark: abort latency and Redis commands per abort with "
            "1 to 1,000 running messages (sync and async def), and memory with 100,000 "
            "outstanding cancel requests"
        )
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="10 samples per N and 10,000 requests, under a minute "
        "(default: 50 samples per N and 100,000 requests, about 3 to 5 minutes)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run both scenarios and print their tables; return the exit status."""
    args = parse_args(argv)
    samples, requests = (10, 10_000) if args.quick else (50, 100_000)
    counts = (1, 10, 100, 1000)
    broker_url = with_db(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"), DB)
    try:
        redis.Redis.from_url(broker_url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        say(f"Redis is unreachable at {broker_url}: {exc}")
        return 1
    namespace = f"abort-scale-{uuid.uuid4().hex[:8]}"
    findings: list[str] = []
    with throwaway_redis("abort-scale-redis-") as backend_url:
        backend_client = redis.Redis.from_url(backend_url)
        base = Settings(broker_url, backend_url, namespace, threads=1)

        def no_reports(kind: str, sample: int) -> None:
            """Actors never run in this process."""

        broker, _, actors, _ = build_broker(base, no_reports)
        say(
            f"Broker: {broker_url} (namespace {namespace}); event backend: throwaway "
            f"redis-server {backend_client.info('server')['redis_version']} at {backend_url}"
        )
        say(
            f"Python {sys.version.split()[0]}, dramatiq {dramatiq.__version__}, "
            f"redis-py {redis.__version__}, {os.cpu_count()} CPUs; {samples} samples per N"
        )
        try:
            for asynchronous, title in (
                (False, "Sync actors: abort latency (ms) and backend commands per abort"),
                (True, "async def actors (AsyncIO): abort latency (ms) and backend commands"),
            ):
                variant = Settings(broker_url, backend_url, namespace, 1, asynchronous)
                rows = []
                for running in counts:
                    rows.append(measure_scale(variant, running, samples, backend_client, actors))
                    say(f"  ... {running:,} running: {rows[-1].seconds:.1f} s")
                finding = scale_table(title, rows)
                if finding:
                    findings.append(finding)
            findings += measure_memory(base, requests, backend_client, actors)
        finally:
            broker.close()
            deleted = delete_keys(redis.Redis.from_url(broker_url), namespace)
            say()
            say(f"Deleted {deleted:,} broker keys under {namespace}; stopped the throwaway server.")
    say()
    say(
        "Findings: none, every figure flat."
        if not findings
        else "Findings:\n  " + "\n  ".join(findings)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
