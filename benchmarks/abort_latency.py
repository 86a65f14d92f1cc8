"""Measure how fast dramatiq-abort stops a running message, and what it costs Redis.

What it measures, against real Redis on loopback:

1. **Abort latency**: from the moment ``abort()`` *returns* to the moment
   ``Abort`` is caught inside a running pure-Python, CPU-bound actor (the
   actor takes ``time.monotonic()`` in ``except Abort:``; the clock is
   ``CLOCK_MONOTONIC``, shared by all processes on Linux).  Three phases:
   (a) abort sent as soon as the actor reports that it started, (b) at a
   random moment in its first second, (c) in steady state, once it has run
   for 1 to 1.5 s.  Two clients: one in another process (the realistic
   case) and one in a thread of the worker process itself.
2. **Graceful deadline**: with ``abort_timeout`` of 100, 500 and 2000 ms, the
   time from ``abort()`` returning to ``Abort`` caught, and its error
   against the deadline, counted from ``abort()`` returning and from the
   call.
3. **Redis commands** the middleware sends: per processed message (2,000
   no-op messages, after 100 that open the connections) and from an idle
   worker (over 5 s).
4. **PostgreSQL** (when psycopg is installed and PostgreSQL answers at
   ``POSTGRES_URL``, default ``postgresql://postgres@127.0.0.1:5432/test``):
   the same latencies (1.) and graceful deadline (2.) with the event
   backend on ``PostgresBackend`` instead (the broker stays Redis), and
   the backend calls the middleware makes, counted in the worker process:
   per no-op message and from an idle worker.  Each read is one round
   trip, each write two.  A last table puts the Redis and PostgreSQL p50
   and p99 side by side.  It writes in a schema of its own, dropped at
   the end.
5. **Async abort latency**: the same as 1. for ``async def`` actors, on a
   worker with dramatiq's ``AsyncIO`` middleware: from ``abort()``
   returning to ``Abort`` caught inside the coroutine (``except Abort:``
   takes ``time.monotonic()`` on the event loop's thread).  One actor
   awaits ``asyncio.sleep(0.001)`` in a loop, the other one long
   ``asyncio.sleep()``; both are aborted at random moments (phases (a),
   (b), and (c) for the loop).  This is the path ``Abort`` takes into the
   coroutine (the watcher wakes the loop, ``Abort`` is thrown at the
   ``await``), not dramatiq's 100 ms polling of the worker thread.  A
   last table puts the p50 and p99 of the sync and async actors side by
   side.

It runs three worker processes in turn: one with the library's default (the
middleware lowers CPython's GIL switch interval to 1 ms while a message that
may run long runs: one whose actor's last message ran 20 ms or more), one
opted out (``Abortable(switch_interval_ms=None)``) with CPython's default
5 ms, and one with the default and the ``AsyncIO`` middleware for the
``async def`` actors.  The interval is how long the watcher thread waits
for the GIL before the CPU-bound actor is made to hand it over, so it sets
a floor under the latency.

Setup: a ``RedisBroker`` on ``REDIS_URL`` (default ``redis://127.0.0.1:6379``),
database 15, under a unique namespace; the event backend
(``RedisBackend``) alone on a throwaway ``redis-server`` started here, so
its ``INFO commandstats`` count only the middleware's commands; a
``dramatiq.Worker`` with 2 threads in a child process.  At the end it
deletes the keys it wrote and stops the throwaway server.

Run it from the repository root::

    python benchmarks/abort_latency.py
    python benchmarks/abort_latency.py --samples 200   # tighter tails, ~4x longer
    python benchmarks/abort_latency.py --only async    # the async def actors alone
    python benchmarks/abort_latency.py --only postgres # the PostgreSQL backend alone

It takes about 190 s (``--only sync`` about 100 s, ``--only async`` about
50 s, ``--only postgres`` about 40 s).  Sample counts are in :data:`PLANS`,
:data:`ASYNC_PLAN` and :data:`POSTGRES_PLAN`: phase (c) and the extra
configurations get fewer samples than phases (a) and (b), to keep to that
time.  It exits 0 when it could measure, whether or not the targets were
met (a missed target is a finding, listed at the end); 1 when Redis is
unreachable, or PostgreSQL with ``--only postgres`` (otherwise the
PostgreSQL run is skipped, saying why).

Note:
    Percentiles are nearest-rank: below 100 samples, p99 is the largest
    value, so read it as the worst case seen.  A latency below zero means
    ``Abort`` was caught before ``abort()`` had returned: the announcement
    reached the worker before the reply reached the client.  An actor that
    never saw ``Abort`` counts as an infinite latency.  Columns of the
    latency tables besides the percentiles: ``abort at``, median ms from
    the actor's start to the ``abort()`` call; ``call``, median ms
    ``abort()`` took; ``took``, seconds the row took.

"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import math
import os
import queue
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Protocol

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO

from _common import (
    WORKER_THREADS,
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
from dramatiq_abort import Abort, Abortable, abort
from dramatiq_abort.backends import RedisBackend

#: Redis database of every key the benchmark writes.
DB = 15
#: Seconds a spinning actor runs past its planned abort before giving up.
SPIN_SPARE_S = 3.0
#: Seconds to wait for any one event from the worker.
EVENT_TIMEOUT_S = 10.0
HOT_PATH_MESSAGES = 2000
IDLE_SECONDS = 5.0
#: Targets stated by the issue.
LATENCY_P50_MS = 5.0
LATENCY_P99_MS = 25.0
DEADLINE_SLACK_MS = 25.0
#: The phases of the latency measurement: label, and when to abort after
#: the actor started (seconds).
PHASES: dict[str, tuple[str, Callable[[], float]]] = {
    "a": ("(a) just started", lambda: 0.0),
    "b": ("(b) random, 1st s", lambda: random.uniform(0.0, 1.0)),
    "c": ("(c) steady, 1-1.5 s", lambda: random.uniform(1.0, 1.5)),
    "graceful": ("graceful, 20-100 ms", lambda: random.uniform(0.02, 0.1)),
}
#: The actors whose abort latency is measured, and how the tables name them.
KINDS: dict[str, str] = {
    "spin": "sync, CPU-bound",
    "tick": "async, 1 ms awaits",
    "wait": "async, one long await",
}
#: Width of the first column of the async latency tables.
ASYNC_LABEL_WIDTH = 42
#: Where the client calling ``abort()`` runs.
REMOTE = "client in another process"
LOCAL = "client in the worker process"


@dataclass(frozen=True)
class Settings:
    """Where the worker process connects, and how it is tuned."""

    broker_url: str
    backend_url: str
    namespace: str
    switch_interval: float | None = None
    #: Add dramatiq's ``AsyncIO`` middleware, which ``async def`` actors need.
    asyncio: bool = False

    @property
    def postgres(self) -> bool:
        """Whether the event backend is PostgreSQL (a ``postgresql://`` URL)."""
        return self.backend_url.startswith(("postgresql://", "postgres://"))

    @property
    def backend_namespace(self) -> str:
        """Prefix of the event backend's keys and channel (PostgreSQL: its schema)."""
        if self.postgres:
            return self.namespace.replace("-", "_")
        return f"{self.namespace}:aborts:"


@dataclass(frozen=True)
class Sample:
    """One abort of a spinning actor, all times in milliseconds."""

    #: When ``abort()`` was called, counted from the actor's start.
    offset_ms: float
    #: How long ``abort()`` took.
    call_ms: float
    #: From ``abort()`` returning to ``Abort`` caught in the actor.
    latency_ms: float


class Inbox(Protocol):
    """Where the actors' reports arrive: ``(kind, sample id, monotonic time)``."""

    def get(self, timeout: float) -> tuple[str, int, float]:
        """Return the next report; raise ``TimeoutError`` after ``timeout`` seconds."""


class PipeInbox:
    """Reports sent by a worker in another process."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def get(self, timeout: float) -> tuple[str, int, float]:
        """Return the next report; raise ``TimeoutError`` after ``timeout`` seconds."""
        if not self._conn.poll(timeout):
            raise TimeoutError(f"no report from the worker in {timeout} s")
        report: tuple[str, int, float] = self._conn.recv()
        return report


class QueueInbox:
    """Reports from actors running in this process."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[tuple[str, int, float]] = queue.SimpleQueue()

    def get(self, timeout: float) -> tuple[str, int, float]:
        """Return the next report; raise ``TimeoutError`` after ``timeout`` seconds."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no report from the actor in {timeout} s") from None


class Reporter:
    """What the actors call to report; it can be pointed at a pipe or a queue."""

    def __init__(self, target: Callable[[tuple[str, int, float]], None]) -> None:
        self.target = target

    def __call__(self, kind: str, sample: int) -> None:
        """Report ``kind`` for ``sample``, stamped with ``time.monotonic()`` now."""
        self.target((kind, sample, time.monotonic()))


class Counter:
    """A thread-safe count that can be waited on."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.value = 0

    def add(self) -> None:
        """Count one."""
        with self._cond:
            self.value += 1
            self._cond.notify_all()

    def wait_for(self, target: int, timeout: float) -> int:
        """Wait until the count reaches ``target`` or ``timeout`` seconds pass."""
        with self._cond:
            self._cond.wait_for(lambda: self.value >= target, timeout)
            return self.value


@dataclass
class Actors:
    """The benchmark's actors declared on one broker."""

    spin: dramatiq.Actor[[int, float], None]
    tick: dramatiq.Actor[[int, float], None]
    wait: dramatiq.Actor[[int, float], None]
    noop: dramatiq.Actor[[], None]
    processed: Counter

    def latency_actor(self, kind: str) -> dramatiq.Actor[[int, float], None]:
        """Return the actor of ``kind``, a key of :data:`KINDS`."""
        actor: dramatiq.Actor[[int, float], None] = getattr(self, kind)
        return actor


def declare_actors(broker: dramatiq.Broker, report: Reporter) -> Actors:
    """Declare the actors that report their start and their ``Abort``, and a no-op.

    One is CPU-bound (``spin``), two are ``async def`` (``tick``, ``wait``);
    the async ones only run on a worker with the ``AsyncIO`` middleware.
    """
    processed = Counter()
    spin = declare_spin(broker, report, "bench_spin")

    @dramatiq.actor(broker=broker, actor_name="bench_async_tick", max_retries=0)
    async def tick(sample: int, limit_s: float) -> None:
        """Await ``asyncio.sleep(0.001)`` in a loop until aborted or ``limit_s`` passes."""
        started = time.monotonic()
        try:
            report("started", sample)
            while time.monotonic() - started < limit_s:
                await asyncio.sleep(0.001)
        except Abort:
            report("caught", sample)  # stamped in the coroutine, on the loop's thread
            raise
        report("finished", sample)

    @dramatiq.actor(broker=broker, actor_name="bench_async_wait", max_retries=0)
    async def wait(sample: int, limit_s: float) -> None:
        """Await one long ``asyncio.sleep(limit_s)``, longer than any planned abort."""
        try:
            report("started", sample)
            await asyncio.sleep(limit_s)
        except Abort:
            report("caught", sample)
            raise
        report("finished", sample)

    @dramatiq.actor(broker=broker, actor_name="bench_noop", max_retries=0)
    def noop() -> None:
        """Do nothing but count."""
        processed.add()

    return Actors(spin, tick, wait, noop, processed)


#: What the PostgreSQL backend was asked by the worker process, by method name.
BACKEND_CALLS: collections.Counter[str] = collections.Counter()
#: The methods counted: each one round trip (reads) or two (writes).
COUNTED = ("poll", "poll_many", "read_status", "notify_many", "update_status", "extend", "track")


def counting_postgres_backend(url: str, namespace: str) -> Any:
    """A ``PostgresBackend`` whose round-trip methods count their calls in :data:`BACKEND_CALLS`."""
    from dramatiq_abort.backends import PostgresBackend

    backend = PostgresBackend.from_url(url, namespace=namespace)
    for name in COUNTED:
        method = getattr(backend, name)

        def counted(*args: Any, _name: str = name, _method: Any = method, **kwargs: Any) -> Any:
            BACKEND_CALLS[_name] += 1
            return _method(*args, **kwargs)

        setattr(backend, name, counted)
    return backend


def build_broker(settings: Settings, report: Reporter) -> tuple[RedisBroker, Actors]:
    """Return a broker with ``Abortable`` on the settings' event backend, and its actors."""
    broker = RedisBroker(url=settings.broker_url, namespace=settings.namespace)
    backend: Any
    if settings.postgres:
        backend = counting_postgres_backend(settings.backend_url, settings.backend_namespace)
    else:
        backend = RedisBackend.from_url(settings.backend_url, namespace=settings.backend_namespace)
    # None: the library's default (it lowers the interval to 1 ms in workers);
    # a value: opt out (switch_interval_ms=None) and run with that interval.
    lowered = 1.0 if settings.switch_interval is None else None
    if settings.asyncio:
        broker.add_middleware(AsyncIO())
    broker.add_middleware(Abortable(backend=backend, switch_interval_ms=lowered))
    dramatiq.set_broker(broker)
    return broker, declare_actors(broker, report)


# -- the measurement, run by whichever process holds the client ----------------


def expect(inbox: Inbox, sample: int, kinds: tuple[str, ...]) -> tuple[str, float]:
    """Wait for a report of one of ``kinds`` about ``sample``, dropping stale ones."""
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    while True:
        kind, about, at = inbox.get(max(0.0, deadline - time.monotonic()))
        if about == sample and kind in kinds:
            return kind, at


def sleep_until(moment: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``moment``."""
    remaining = moment - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


def measure(
    actors: Actors,
    inbox: Inbox,
    phase: str,
    count: int,
    abort_timeout: int = 0,
    kind: str = "spin",
) -> list[tuple[float, float, float]]:
    """Abort ``count`` running actors one after another; return their timings.

    Args:
        actors: The actors, declared on this process's broker.
        inbox: Where this process receives the actors' reports.
        phase: A key of :data:`PHASES`: when to abort after the actor started.
        count: How many samples.
        abort_timeout: Passed to :func:`dramatiq_abort.abort`, in ms.
        kind: A key of :data:`KINDS`: which actor to abort.

    Returns:
        ``(offset_ms, call_ms, latency_ms)`` per sample, plain tuples so they
        pickle across processes.  An actor that ran to its end without
        seeing ``Abort`` counts as an infinite latency.

    """
    delay = PHASES[phase][1]
    actor = actors.latency_actor(kind)
    timings = []
    for _ in range(count):
        sample = next_sample_id()
        wait = delay()
        message = actor.send(sample, wait + abort_timeout / 1000 + SPIN_SPARE_S)
        _, started = expect(inbox, sample, ("started",))
        sleep_until(started + wait)
        called = time.monotonic()
        abort(message.message_id, abort_timeout=abort_timeout)
        returned = time.monotonic()
        kind, caught = expect(inbox, sample, ("caught", "finished"))
        latency = (caught - returned) * 1000 if kind == "caught" else math.inf
        timings.append(((called - started) * 1000, (returned - called) * 1000, latency))
    return timings


# -- the worker process ---------------------------------------------------------


def worker_process(settings: Settings, events: Connection, control: Connection) -> None:
    """Run a dramatiq worker and answer the parent's commands until told to stop.

    Actors report to the parent over ``events``; ``control`` carries
    commands and replies (``("ok", value)`` or ``("error", text)``):
    ``("processed", n)`` waits for ``n`` no-op messages in all,
    ``("measure", phase, count, abort_timeout, kind)`` runs :func:`measure`
    with a client in this process, ``("calls",)`` returns the PostgreSQL
    backend's calls so far (:data:`BACKEND_CALLS`), ``("stop",)`` stops the
    worker.
    """
    if settings.switch_interval is not None:
        sys.setswitchinterval(settings.switch_interval)
    send_lock = threading.Lock()

    def send_to_parent(report: tuple[str, int, float]) -> None:
        with send_lock:  # two worker threads share the pipe
            events.send(report)

    reporter = Reporter(send_to_parent)
    broker, actors = build_broker(settings, reporter)
    worker = dramatiq.Worker(
        broker, worker_threads=WORKER_THREADS, worker_timeout=WORKER_TIMEOUT_MS
    )
    worker.start()

    def handle(command: tuple[Any, ...]) -> Any:
        if command[0] == "processed":
            return actors.processed.wait_for(command[1], timeout=120)
        if command[0] == "calls":
            return dict(BACKEND_CALLS)
        inbox = QueueInbox()
        reporter.target = inbox.queue.put
        try:
            return measure(actors, inbox, *command[1:])
        finally:
            reporter.target = send_to_parent

    control.send(("ok", sys.getswitchinterval()))
    try:
        serve(control, handle)
    finally:
        worker.stop()
        broker.close()
        control.send(("ok", None))


class WorkerProcess(WorkerPipes):
    """A worker in a child process, the pipes to it, and the parent's client."""

    def __init__(self, settings: Settings, actors: Actors) -> None:
        super().__init__(worker_process, (settings,), "bench-worker")
        self.settings = settings
        self.actors = actors
        self.inbox = PipeInbox(self._events)
        self.switch_interval = 0.0

    def __enter__(self) -> WorkerProcess:
        self.switch_interval = self.start("start")
        return self

    def measure_remote(
        self, phase: str, count: int, abort_timeout: int = 0, kind: str = "spin"
    ) -> list[Sample]:
        """Measure with the client here, in another process than the worker."""
        timings = measure(self.actors, self.inbox, phase, count, abort_timeout, kind)
        return [Sample(*t) for t in timings]

    def measure_local(
        self, phase: str, count: int, abort_timeout: int = 0, kind: str = "spin"
    ) -> list[Sample]:
        """Measure with the client in a thread of the worker process."""
        return [Sample(*t) for t in self.call("measure", phase, count, abort_timeout, kind)]


# -- Redis helpers ---------------------------------------------------------------


def count_commands(client: redis.Redis, during: Callable[[], None]) -> dict[str, int]:
    """Return the commands the server ran while ``during()`` ran, without our ``INFO``."""
    before = command_counts(client)
    during()
    after = command_counts(client)
    delta = {name: calls - before.get(name, 0) for name, calls in after.items()}
    return {name: calls for name, calls in sorted(delta.items()) if calls and name != "info"}


def wait_subscribers(client: redis.Redis, channel: str, count: int) -> None:
    """Wait until ``channel`` has ``count`` subscribers: the watcher is listening."""
    for _ in range(200):
        if dict(client.pubsub_numsub(channel)).get(channel.encode(), 0) >= count:
            return
        time.sleep(0.05)
    raise RuntimeError(f"no watcher subscribed to {channel!r} within 10 s")


# -- reporting ---------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Return the nearest-rank ``p``-th percentile of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def say(text: str = "") -> None:
    """Print a line at once, so progress shows while the benchmark runs."""
    print(text, flush=True)


def verdict(ok: bool) -> str:
    """Return how a figure compares with its target."""
    return "met" if ok else "MISSED"


def latency_header(title: str, width: int = 20) -> None:
    """Print a latency table's title and column names; ``width`` is the first column's."""
    say()
    say(title)
    say(
        f"  {'phase':<{width}} {'n':>4} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7} {'min':>7}  "
        f"{'p50<=5':<6} {'p99<=25':<7}  {'abort at':>8} {'call':>5} {'took':>5}"
    )


def latency_row(label: str, samples: list[Sample], seconds: float, width: int = 20) -> str | None:
    """Print one phase's latencies, ms; return what missed its target, if anything.

    Also printed: ``abort at``, the median time from the actor's start to the
    ``abort()`` call; ``call``, the median duration of ``abort()``; ``took``,
    the seconds the phase took.
    """
    values = [s.latency_ms for s in samples]
    p50, p99 = percentile(values, 50), percentile(values, 99)
    ok50, ok99 = p50 <= LATENCY_P50_MS, p99 <= LATENCY_P99_MS
    lost = sum(math.isinf(v) for v in values)
    say(
        f"  {label:<{width}} {len(values):>4} {p50:>7.2f} {percentile(values, 95):>7.2f} "
        f"{p99:>7.2f} {max(values):>7.2f} {min(values):>7.2f}  "
        f"{verdict(ok50):<6} {verdict(ok99):<7}  "
        f"{percentile([s.offset_ms for s in samples], 50):>8.2f} "
        f"{percentile([s.call_ms for s in samples], 50):>5.2f} {seconds:>5.1f}"
        + (f"  {lost} never aborted" if lost else "")
    )
    return None if ok50 and ok99 else f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"


def deadline_header(title: str) -> None:
    """Print the graceful deadline table's title and column names."""
    say()
    say(title)
    say(
        f"  {'timeout':>7} {'n':>3} {'min':>8} {'p50':>8} {'max':>8}  "
        f"{'error from return':>17}  {'in [t, t+25]':<12}  {'error from call':>15}"
    )


def deadline_row(timeout: int, samples: list[Sample]) -> str | None:
    """Print one ``abort_timeout``'s figures, ms; return what missed the target window, if any.

    The error is printed twice: counted from ``abort()`` returning (the
    target's definition) and from the call, when the request is stamped.
    """
    values = [s.latency_ms for s in samples]
    from_call = [s.latency_ms + s.call_ms for s in samples]
    low, high = min(values), max(values)
    ok = timeout <= low and high <= timeout + DEADLINE_SLACK_MS
    say(
        f"  {timeout:>7} {len(values):>3} {low:>8.2f} {percentile(values, 50):>8.2f} "
        f"{high:>8.2f}  {low - timeout:>+7.2f} .. {high - timeout:>+6.2f}  {verdict(ok):<12}  "
        f"{min(from_call) - timeout:>+6.2f} .. {max(from_call) - timeout:>+6.2f}"
    )
    return None if ok else f"{low:.2f} .. {high:.2f} ms after abort() returned"


#: Latency samples of the library's default configuration, by (kind, client, phase).
Figures = dict[tuple[str, str, str], list[Sample]]


def comparison(figures: Figures, where: str) -> None:
    """Print the p50 and p99 of each actor kind side by side, one row per phase."""
    kinds = [kind for kind in KINDS if any(key[:2] == (kind, where) for key in figures)]
    if not kinds:
        return
    say()
    say(
        f"Sync vs async: p50 / p99, ms from abort() returning to Abort caught ({where}; "
        f"targets p50 <= {LATENCY_P50_MS:g}, p99 <= {LATENCY_P99_MS:g})"
    )
    say(f"  {'phase':<20}" + "".join(f" {KINDS[kind]:>22}" for kind in kinds))
    for phase in ("a", "b", "c"):
        cells = []
        for kind in kinds:
            samples = figures.get((kind, where, phase))
            if samples:
                values = [s.latency_ms for s in samples]
                cells.append(f"{percentile(values, 50):.2f} / {percentile(values, 99):.2f}")
            else:
                cells.append("-")
        if any(cell != "-" for cell in cells):
            say(f"  {PHASES[phase][0]:<20}" + "".join(f" {cell:>22}" for cell in cells))


def commands_text(counts: dict[str, int]) -> str:
    """Return command counts as ``name=calls`` pairs, or ``none``."""
    return ", ".join(f"{name}={calls}" for name, calls in counts.items()) or "none"


# -- the run ------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How many samples to take with one worker process, at ``--samples 50``."""

    #: Samples per latency phase with the client in another process.
    remote: dict[str, int]
    #: Samples per latency phase with the client in the worker process.
    local: dict[str, int]
    #: Samples per ``abort_timeout`` (ms) of the graceful deadline.
    graceful: dict[int, int]


#: How the tables name the library's default switch interval handling.
DEFAULT_LABEL = "switch interval 1 ms while long actor code runs"
#: One plan per switch interval of the worker process (``None``: Python's
#: default).  The counts fit the run in about 100 s: phase (c) costs
#: over a second a sample and gets fewer; the client in the worker process
#: only runs phases (a) and (b); the 1 ms interval gets fewer samples.
PLANS: dict[float | None, Plan] = {
    None: Plan(
        remote={"a": 100, "b": 50, "c": 15},
        local={"a": 30, "b": 8},
        graceful={100: 6, 500: 8, 2000: 3},
    ),
    0.005: Plan(
        remote={"a": 50, "b": 15, "c": 6},
        local={"a": 20, "b": 5},
        graceful={500: 5},
    ),
}


@dataclass(frozen=True)
class AsyncPlan:
    """How many samples to take of the ``async def`` actors, at ``--samples 50``."""

    #: Samples per (kind, phase) with the client in another process.
    remote: dict[tuple[str, str], int]
    #: Samples per (kind, phase) with the client in the worker process.
    local: dict[tuple[str, str], int]


#: The ``async def`` actors run on one worker process with the library's
#: default switch interval (1 ms), in about 50 s: ``tick`` awaits 1 ms
#: sleeps in a loop, ``wait`` awaits one long sleep.
ASYNC_PLAN = AsyncPlan(
    remote={
        ("tick", "a"): 50,
        ("tick", "b"): 30,
        ("tick", "c"): 8,
        ("wait", "a"): 30,
        ("wait", "b"): 20,
    },
    local={("tick", "a"): 20, ("tick", "b"): 8, ("wait", "a"): 20, ("wait", "b"): 8},
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--samples",
        type=int,
        default=50,
        help="samples of phase (b) with the default switch interval, client in another "
        "process; every other count scales with it (default: 50, about 150 s)",
    )
    parser.add_argument(
        "--only",
        choices=["sync", "async", "postgres"],
        help="run only the sync part (CPU-bound actor, graceful deadlines, Redis commands; "
        "about 100 s), only the async def actors (about 50 s), or only the PostgreSQL "
        "backend (about 40 s); default: all three",
    )
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error(f"--samples must be 1 or more, not {args.samples}")
    return args


def measure_commands(worker: WorkerProcess, client: redis.Redis) -> list[str]:
    """Count the commands an idle worker, then a busy one, sends the backend; print them."""
    missed = []
    say()
    say("Redis commands sent by the middleware (INFO commandstats of the backend-only server)")
    idle = count_commands(client, lambda: time.sleep(IDLE_SECONDS))
    total = sum(idle.values())
    ok = total <= IDLE_SECONDS
    say(f"  idle worker, {IDLE_SECONDS:g} s: {total} ({commands_text(idle)})  {verdict(ok)}")
    if not ok:
        missed.append(f"idle worker: {total} commands in {IDLE_SECONDS:g} s")

    sent = 0

    def process(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            worker.actors.noop.send()
        sent += count
        done = worker.call("processed", sent)
        if done < sent:
            raise RuntimeError(f"the worker processed {done} of {sent} no-op messages")

    warm_up = 100
    cold = count_commands(client, lambda: process(warm_up))
    say(
        f"  first {warm_up} no-op messages: {sum(cold.values()) / warm_up:.3f} per message "
        f"({commands_text(cold)}; includes opening the pool's connections)"
    )
    started = time.monotonic()
    busy = count_commands(client, lambda: process(HOT_PATH_MESSAGES))
    elapsed = time.monotonic() - started
    per_message = sum(busy.values()) / HOT_PATH_MESSAGES
    ok = per_message <= 1
    say(
        f"  next {HOT_PATH_MESSAGES} no-op messages ({elapsed:.1f} s): {per_message:.3f} "
        f"per message ({commands_text(busy)})  {verdict(ok)}"
    )
    if not ok:
        missed.append(f"hot path: {per_message:.3f} commands per message")
    return missed


def measure_latencies(
    worker: WorkerProcess, plan: Plan, scale: float, label: str, figures: Figures | None = None
) -> list[str]:
    """Run the latency phases with each client; print them; return the missed targets.

    With ``figures``, the samples are also stored there, for :func:`comparison`.
    """
    missed = []
    for where, measure_with, counts in (
        (REMOTE, worker.measure_remote, plan.remote),
        (LOCAL, worker.measure_local, plan.local),
    ):
        latency_header(
            f"Abort latency, ms from abort() returning to Abort caught ({where}, {label})"
        )
        for phase, count in counts.items():
            started = time.monotonic()
            samples = measure_with(phase, max(3, round(count * scale)))
            miss = latency_row(PHASES[phase][0], samples, time.monotonic() - started)
            if figures is not None:
                figures["spin", where, phase] = samples
            if miss:
                missed.append(f"latency {PHASES[phase][0]}, {where}, {label}: {miss}")
    return missed


def measure_async(
    worker: WorkerProcess, plan: AsyncPlan, scale: float, label: str, figures: Figures
) -> list[str]:
    """Abort the ``async def`` actors with each client; print and store the figures.

    Returns:
        The missed targets.

    """
    missed = []
    for where, measure_with, counts in (
        (REMOTE, worker.measure_remote, plan.remote),
        (LOCAL, worker.measure_local, plan.local),
    ):
        latency_header(
            f"Async abort latency, ms from abort() returning to Abort caught in the coroutine "
            f"({where}, {label})",
            width=ASYNC_LABEL_WIDTH,
        )
        for (kind, phase), count in counts.items():
            started = time.monotonic()
            samples = measure_with(phase, max(3, round(count * scale)), kind=kind)
            label_row = f"{KINDS[kind]}, {PHASES[phase][0]}"
            miss = latency_row(label_row, samples, time.monotonic() - started, ASYNC_LABEL_WIDTH)
            figures[kind, where, phase] = samples
            if miss:
                missed.append(f"latency {label_row}, {where}, {label}: {miss}")
    return missed


def measure_deadlines(worker: WorkerProcess, plan: Plan, scale: float, label: str) -> list[str]:
    """Abort with each ``abort_timeout``; print the figures; return the missed targets."""
    missed = []
    deadline_header(f"Graceful deadline, ms from abort() returning to Abort caught ({label})")
    for timeout, count in plan.graceful.items():
        samples = worker.measure_remote("graceful", max(3, round(count * scale)), timeout)
        miss = deadline_row(timeout, samples)
        if miss:
            missed.append(f"graceful deadline, abort_timeout={timeout}, {label}: {miss}")
    return missed


def run(
    settings: Settings,
    backend_client: redis.Redis,
    samples: int,
    only: str | None = None,
    figures: Figures | None = None,
) -> list[str]:
    """Run every Redis measurement, printing the figures; return the targets that were missed.

    Args:
        settings: Where the worker processes connect.
        backend_client: A client of the event backend's own server.
        samples: ``--samples``; every count scales with it.
        only: ``"sync"`` or ``"async"`` to run only that part; ``None`` runs both.
        figures: Where to keep the latency samples of the default configuration.

    """
    broker, actors = build_broker(settings, Reporter(lambda _: None))  # actors run elsewhere
    channel = settings.backend_namespace + "events"
    scale = samples / 50
    missed = []
    figures = {} if figures is None else figures
    plans = {} if only in ("async", "postgres") else PLANS
    try:
        for switch_interval, plan in plans.items():
            tuned = dataclasses.replace(settings, switch_interval=switch_interval)
            with WorkerProcess(tuned, actors) as worker:
                wait_subscribers(backend_client, channel, 1)
                default = switch_interval is None  # the targets are for the library's default
                label = (
                    DEFAULT_LABEL
                    if default
                    else f"switch interval {worker.switch_interval * 1000:g} ms"
                )
                say()
                say(f"=== Worker process, GIL {label} ===")
                if default:
                    missed += measure_commands(worker, backend_client)
                found = measure_latencies(worker, plan, scale, label, figures if default else None)
                found += measure_deadlines(worker, plan, scale, label)
                if default:
                    missed += found
        if only is None or only == "async":
            # A worker of its own, so the sync figures above are taken without
            # the AsyncIO middleware, as before this scenario existed.
            tuned = dataclasses.replace(settings, asyncio=True)
            with WorkerProcess(tuned, actors) as worker:
                wait_subscribers(backend_client, channel, 1)
                label = DEFAULT_LABEL
                say()
                say(f"=== Worker process with the AsyncIO middleware, GIL {label} ===")
                missed += measure_async(worker, ASYNC_PLAN, scale, label, figures)
        for where in (REMOTE, LOCAL):
            comparison(figures, where)
    finally:
        broker.close()
    return missed


# -- PostgreSQL ----------------------------------------------------------------------

#: PostgreSQL of the PostgreSQL run: ``POSTGRES_URL``, else this.
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
#: The PostgreSQL run: one worker process with the library's default switch interval.
POSTGRES_PLAN = Plan(
    remote={"a": 50, "b": 30, "c": 8},
    local={"a": 20, "b": 5},
    graceful={500: 5},
)
POSTGRES_LABEL = f"PostgresBackend, {DEFAULT_LABEL}"


def postgres_problem(url: str) -> str:
    """Why the PostgreSQL run cannot happen, or ``""``."""
    try:
        import psycopg
        import psycopg_pool  # noqa: F401 - PostgresBackend needs it
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install 'dramatiq-abort[postgres]')"
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as exc:
        return " ".join(str(exc).split())
    return ""


def wait_listeners(url: str, namespace: str, count: int) -> None:
    """Wait until ``count`` connections LISTEN on ``namespace``: the watcher is listening."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(200):
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query = %s",
                [f'LISTEN "{namespace}"'],
            ).fetchone()
            if row is not None and row[0] >= count:
                return
            time.sleep(0.05)
    raise RuntimeError(f"no watcher listening on {namespace!r} within 10 s")


def measure_backend_calls(worker: WorkerProcess) -> list[str]:
    """Count the backend calls an idle worker, then a busy one, makes; print them."""
    missed = []
    say()
    say("PostgreSQL backend calls made by the middleware (counted in the worker process)")

    def delta(during: Callable[[], None]) -> dict[str, int]:
        before = worker.call("calls")
        during()
        after = worker.call("calls")
        changed = {name: calls - before.get(name, 0) for name, calls in sorted(after.items())}
        return {name: calls for name, calls in changed.items() if calls}

    idle = delta(lambda: time.sleep(IDLE_SECONDS))
    total = sum(idle.values())
    ok = total <= IDLE_SECONDS
    say(f"  idle worker, {IDLE_SECONDS:g} s: {total} ({commands_text(idle)})  {verdict(ok)}")
    if not ok:
        missed.append(f"PostgreSQL, idle worker: {total} calls in {IDLE_SECONDS:g} s")
    sent = 0

    def process(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            worker.actors.noop.send()
        sent += count
        done = worker.call("processed", sent)
        if done < sent:
            raise RuntimeError(f"the worker processed {done} of {sent} no-op messages")

    warm_up = 100
    cold = delta(lambda: process(warm_up))
    say(
        f"  first {warm_up} no-op messages: {sum(cold.values()) / warm_up:.3f} per message "
        f"({commands_text(cold)}; includes opening the pool's connections)"
    )
    started = time.monotonic()
    busy = delta(lambda: process(HOT_PATH_MESSAGES))
    elapsed = time.monotonic() - started
    per_message = sum(busy.values()) / HOT_PATH_MESSAGES
    ok = per_message <= 1
    say(
        f"  next {HOT_PATH_MESSAGES} no-op messages ({elapsed:.1f} s, "
        f"{HOT_PATH_MESSAGES / elapsed:.0f}/s): {per_message:.3f} per message "
        f"({commands_text(busy)})  {verdict(ok)}"
    )
    if not ok:
        missed.append(f"PostgreSQL hot path: {per_message:.3f} calls per message")
    return missed


def backend_comparison(redis_figures: Figures, postgres_figures: Figures) -> None:
    """Print the p50 and p99 of the Redis and PostgreSQL backends side by side."""
    say()
    say(
        "Redis vs PostgreSQL backend: p50 / p99, ms from abort() returning to Abort caught "
        "(sync, CPU-bound actor)"
    )
    say(f"  {'phase':<20} {'client':<30} {'Redis':>16} {'PostgreSQL':>16}")
    for where in (REMOTE, LOCAL):
        for phase in ("a", "b", "c"):
            cells = []
            for figures in (redis_figures, postgres_figures):
                samples = figures.get(("spin", where, phase))
                values = [s.latency_ms for s in samples or []]
                cells.append(
                    f"{percentile(values, 50):.2f} / {percentile(values, 99):.2f}"
                    if values
                    else "-"
                )
            if cells != ["-", "-"]:
                say(f"  {PHASES[phase][0]:<20} {where:<30} {cells[0]:>16} {cells[1]:>16}")


def run_postgres(settings: Settings, url: str, samples: int, redis_figures: Figures) -> list[str]:
    """The PostgreSQL run: backend calls, latencies, a graceful deadline; drops its schema."""
    from dramatiq_abort.backends import PostgresBackend

    settings = dataclasses.replace(settings, backend_url=url)
    scale = samples / 50
    missed: list[str] = []
    figures: Figures = {}
    broker, actors = build_broker(settings, Reporter(lambda _: None))  # actors run elsewhere
    try:
        with WorkerProcess(settings, actors) as worker:
            wait_listeners(url, settings.backend_namespace, 1)
            say()
            say(f"=== Worker process, event backend PostgreSQL, GIL {DEFAULT_LABEL} ===")
            missed += measure_backend_calls(worker)
            missed += measure_latencies(worker, POSTGRES_PLAN, scale, POSTGRES_LABEL, figures)
            missed += measure_deadlines(worker, POSTGRES_PLAN, scale, POSTGRES_LABEL)
    finally:
        broker.close()
        cleanup = PostgresBackend.from_url(url, namespace=settings.backend_namespace)
        cleanup.drop_tables()
        cleanup.close()
    backend_comparison(redis_figures, figures)
    return missed


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures."""
    args = parse_args(argv)
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
    broker_url = with_db(redis_url, DB)
    namespace = f"dramatiq-abort-bench-{uuid.uuid4().hex[:12]}"
    broker_client = redis.Redis.from_url(broker_url, socket_connect_timeout=5)
    try:
        broker_client.ping()
    except redis.ConnectionError as exc:
        say(f"Redis is not reachable at {broker_url} ({exc}): set REDIS_URL")
        return 1

    say(
        "dramatiq-abort benchmark: abort latency (sync and async def actors), "
        "graceful deadlines, Redis commands, the PostgreSQL backend"
    )
    say(
        f"Python {sys.version.split()[0]}, dramatiq {dramatiq.__version__}, "
        f"redis-py {redis.__version__}, {os.cpu_count()} CPUs"
    )
    say(
        f"Broker: {broker_url}, namespace {namespace!r}; worker: {WORKER_THREADS} threads, "
        f"worker_timeout={WORKER_TIMEOUT_MS} ms, in a child process"
    )
    started = time.monotonic()
    with throwaway_redis("abort-bench-redis-") as server_url:
        backend_client = redis.Redis.from_url(with_db(server_url, DB))
        settings = Settings(broker_url, with_db(server_url, DB), namespace)
        version = backend_client.info("server")["redis_version"]
        say(f"Event backend: throwaway redis-server {version} at {settings.backend_url}")
        deleted = 0
        figures: Figures = {}
        try:
            missed: list[str] = []
            if args.only != "postgres":
                missed += run(settings, backend_client, args.samples, args.only, figures)
            if args.only in (None, "postgres"):
                pg_url = os.environ.get("POSTGRES_URL") or POSTGRES_URL
                problem = postgres_problem(pg_url)
                if problem:
                    say()
                    say(f"PostgreSQL backend: skipped, {pg_url} is not usable ({problem})")
                    if args.only == "postgres":
                        return 1
                else:
                    missed += run_postgres(settings, pg_url, args.samples, figures)
        finally:
            deleted += delete_keys(broker_client, namespace + ":")
            deleted += delete_keys(backend_client, settings.backend_namespace)
            backend_client.close()
            broker_client.close()

    say()
    say(f"Done in {time.monotonic() - started:.0f} s; deleted the {deleted} keys it wrote.")
    if missed:
        say(f"Targets missed ({len(missed)}):")
        for line in missed:
            say(f"  - {line}")
    else:
        say("Every target was met.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
