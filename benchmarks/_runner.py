"""Run one scenario of ``compare.py`` against the installed dramatiq-abort; print JSON.

``benchmarks/compare.py`` runs this very file in two virtualenvs, one with
this project and one with dramatiq-abort 1.2.1 (the same import name,
``dramatiq_abort``), so it only uses what both versions offer:
``Abortable(backend=backends.RedisBackend(client=...))``, ``abort()``,
``abort_requested()``, ``Abort`` and ``AbortMode``.  Each middleware is
used with its defaults, as a user would get it.  What it shares with
``abort_latency.py`` lives in ``_common.py``, next to it (Python puts the
script's directory on ``sys.path``), under the same rule.

Every scenario runs a ``dramatiq.Worker`` (a ``RedisBroker``, 2 threads) in
a child process and the client (``actor.send()``, ``abort()``) in this one.
The actors report to the client over a pipe, stamped with
``time.monotonic()`` (``CLOCK_MONOTONIC``, one clock for every process on
Linux).  Scenarios:

``info``
    the versions installed here, and of the two Redis servers.
``latency``
    abort a running CPU-bound actor; ms from ``abort()`` returning to
    ``Abort`` caught in the actor.  Phase ``a`` aborts as soon as the actor
    reports its start, ``b`` at a random moment of its first second, ``c``
    after 1 to 1.5 s (steady state).
``graceful``
    the same with ``abort_timeout``; the actor also polls
    ``abort_requested()`` and reports when it first sees the request.
``cancel``
    queue messages with no worker running, cancel every other one with
    ``AbortMode.CANCEL``, then start the worker and time the drain; count
    the cancelled messages that ran anyway.
``throughput``
    drain no-op messages with and without the middleware; with
    ``--isolated`` (the event backend alone on its Redis server), count the
    commands it received from ``INFO commandstats``.  Each drain also
    reports the worker process's CPU time.  With ``work_ms``, the messages
    keep the CPU busy that many milliseconds each instead of doing nothing.
``hooks``
    the cost of the middleware's hooks alone: drain no-op messages on a
    ``StubBroker`` (in memory, no broker round trips) with one worker
    thread, in this process, with and without the middleware (its event
    backend still on Redis), and report the CPU time per message.

The broker lives on ``--broker-url`` and the event backend on
``--backend-url``, each under a namespace unique to this run; at the end
this script deletes the keys under those namespaces and nothing else.
The last line on stdout is the JSON result; logs and errors go to stderr.
Worker processes log at ERROR level, so neither version pays for log
lines in the timings.

Run it by hand (normally ``compare.py`` does)::

    python benchmarks/_runner.py latency --params '{"a": 5, "b": 5, "c": 2}'
    python benchmarks/_runner.py throughput --params '{"messages": 500, "variants": ["none"]}'
    python benchmarks/_runner.py hooks --params '{"messages": 5000, "variants": ["none"]}'

(``--broker-url`` and ``--backend-url`` default to ``redis://127.0.0.1:6379/15``.)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import logging
import math
import os
import random
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

import dramatiq_abort
from _common import (
    WORKER_THREADS,
    WORKER_TIMEOUT_MS,
    WorkerPipes,
    command_counts,
    declare_spin,
    delete_keys,
    next_sample_id,
    serve,
)
from dramatiq_abort import Abort, Abortable, abort, abort_requested, backends

try:
    from dramatiq_abort import AbortMode
except ImportError:  # dramatiq-abort 1.2.1 does not re-export it
    from dramatiq_abort.middleware import AbortMode

#: Where the broker and the event backend live unless told.
DEFAULT_URL = "redis://127.0.0.1:6379/15"
#: Messages a consumer may hold (``dramatiq_queue_prefetch``).  dramatiq's
#: default, 2 per worker thread, keeps a consumer of no-op messages asleep in
#: its back-off most of the time, so every setup drains them at the same
#: rate and the middleware's cost is hidden; with more, the worker is busy.
QUEUE_PREFETCH = 100
#: Seconds an actor spins past its planned abort (and grace) before giving up.
SPARE_S = 3.5
#: Seconds to wait for any one report from an actor.
REPORT_TIMEOUT_S = 15.0
#: Seconds to wait for a queue to drain.
DRAIN_TIMEOUT_S = 300.0
#: Before each message of phases ``a`` and ``b`` and of the graceful scenario,
#: the client idles a random time up to this many seconds, so messages start
#: at random moments of the other version's once-a-second watcher cycle, as
#: real traffic does, instead of in lockstep with it.
IDLE_GAP_S = 1.0
#: When to abort, in seconds after the actor reported its start, per phase.
PHASES: dict[str, Callable[[], float]] = {
    "a": lambda: 0.0,
    "b": lambda: random.uniform(0.0, 1.0),
    "c": lambda: random.uniform(1.0, 1.5),
}


@dataclass(frozen=True)
class Settings:
    """Where a broker and its event backend live, and whether the middleware is on."""

    broker_url: str
    backend_url: str
    namespace: str
    abortable: bool = True

    @property
    def backend_namespace(self) -> str:
        """Prefix of the event backend's keys."""
        return f"{self.namespace}:aborts:"


class Tally(Middleware):
    """Counts the messages a worker is done with, whether they ran or were skipped."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.count = 0
        #: ``time.monotonic()`` when the last one was done.
        self.last_at = 0.0
        #: The count ``wait_for`` waits for: waking it for every message
        #: would cost the worker a thread switch per message.
        self._target = 0

    def _add(self) -> None:
        with self._cond:
            self.count += 1
            self.last_at = time.monotonic()
            if self.count >= self._target:
                self._cond.notify_all()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        """Count a message that ran."""
        self._add()

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        """Count a message that was skipped."""
        self._add()

    def wait_for(self, target: int, timeout: float) -> tuple[int, float]:
        """Wait until ``target`` messages are done; return the count and when it was reached."""
        with self._cond:
            self._target = target
            self._cond.wait_for(lambda: self.count >= target, timeout)
            return self.count, self.last_at


@dataclass
class Actors:
    """The scenarios' actors, declared on one broker."""

    spin: dramatiq.Actor[[int, float], None]
    graceful: dramatiq.Actor[[int, float], None]
    mark: dramatiq.Actor[[int, bool], None]
    noop: dramatiq.Actor[[], None]
    busy: dramatiq.Actor[[float], None]
    #: Runs of ``mark``, by whether the message had been cancelled.
    marked: dict[bool, int]


def declare_actors(broker: dramatiq.Broker, report: Callable[[str, int], None]) -> Actors:
    """Declare the actors; ``report(kind, sample)`` tells the client what happened."""
    marked = {True: 0, False: 0}
    marked_lock = threading.Lock()
    spin = declare_spin(broker, report, "cmp_spin")

    @dramatiq.actor(broker=broker, actor_name="cmp_graceful", max_retries=0)
    def graceful(sample: int, limit_s: float) -> None:
        """Spin like ``spin``, asking ``abort_requested()`` every few microseconds."""
        started = time.monotonic()
        x = 0
        seen = False
        try:
            report("started", sample)
            while time.monotonic() - started < limit_s:
                if not seen and abort_requested() is not None:
                    seen = True
                    report("seen", sample)
                for _ in range(200):
                    x = (x * 1_103_515_245 + 12_345) & 0x7FFF_FFFF
        except Abort:
            report("caught", sample)
            raise
        report("finished", sample)

    @dramatiq.actor(broker=broker, actor_name="cmp_mark", max_retries=0)
    def mark(index: int, cancelled: bool) -> None:
        """Count this run, by whether the message had been cancelled."""
        with marked_lock:
            marked[cancelled] += 1

    @dramatiq.actor(broker=broker, actor_name="cmp_noop", max_retries=0)
    def noop() -> None:
        """Do nothing."""

    @dramatiq.actor(broker=broker, actor_name="cmp_busy", max_retries=0)
    def busy(ms: float) -> None:
        """Keep the CPU busy for ``ms`` milliseconds."""
        end = time.perf_counter() + ms / 1000
        while time.perf_counter() < end:
            pass

    return Actors(spin, graceful, mark, noop, busy, marked)


def build_broker(
    settings: Settings, report: Callable[[str, int], None]
) -> tuple[RedisBroker, Actors, Tally]:
    """Return a ``RedisBroker`` (with ``Abortable`` if asked), its actors and its tally."""
    broker = RedisBroker(url=settings.broker_url, namespace=settings.namespace)
    if settings.abortable:
        client = redis.Redis.from_url(settings.backend_url)
        backend = backends.RedisBackend(client=client, namespace=settings.backend_namespace)
        broker.add_middleware(Abortable(backend=backend))
    tally = Tally()
    broker.add_middleware(tally)
    dramatiq.set_broker(broker)
    return broker, declare_actors(broker, report), tally


# -- the worker process ------------------------------------------------------


def worker_main(settings: Settings, events: Connection, control: Connection) -> None:
    """Build the broker and its actors, then obey the client's commands.

    Commands, answered with ``("ok", value)`` or ``("error", text)``:
    ``("start",)`` starts the ``dramatiq.Worker``; ``("done", n)`` waits
    until ``n`` messages are done; ``("stop",)`` stops the worker and ends.
    """
    logging.basicConfig(level=logging.ERROR, format="worker: %(name)s: %(message)s")
    send_lock = threading.Lock()

    def report(kind: str, sample: int) -> None:
        stamp = time.monotonic()
        with send_lock:  # the worker threads share the pipe
            events.send((kind, sample, stamp))

    broker, actors, tally = build_broker(settings, report)
    worker: dramatiq.Worker | None = None

    def handle(command: tuple[Any, ...]) -> dict[str, Any]:
        nonlocal worker
        if command[0] == "start":
            started = time.monotonic()
            worker = dramatiq.Worker(
                broker, worker_threads=WORKER_THREADS, worker_timeout=WORKER_TIMEOUT_MS
            )
            worker.start()
            return {
                "started": started,
                "cpu": time.process_time(),
                "switch_interval_ms": sys.getswitchinterval() * 1000,
                "prefetch": worker.queue_prefetch,
            }
        if command[0] == "done":
            count, at = tally.wait_for(command[1], DRAIN_TIMEOUT_S)
            cpu = time.process_time()  # of this process: every thread's CPU time
            return {"count": count, "at": at, "cpu": cpu, "marked": dict(actors.marked)}
        raise ValueError(f"unknown command {command!r}")

    control.send(("ok", None))
    try:
        serve(control, handle)
    finally:
        if worker is not None:
            worker.stop()
        broker.close()
        control.send(("ok", None))


class WorkerProcess(WorkerPipes):
    """A worker in a child process, and the pipes to it."""

    #: A drain may take :data:`DRAIN_TIMEOUT_S`; the reply comes after it.
    call_timeout = DRAIN_TIMEOUT_S + 30

    def __init__(self, settings: Settings) -> None:
        super().__init__(worker_main, (settings,), "compare-worker")

    def __enter__(self) -> WorkerProcess:
        self.start("boot")
        return self

    def report(self, sample: int, kinds: tuple[str, ...], seen: dict[str, float]) -> str:
        """Wait for a report of one of ``kinds`` about ``sample``; return its kind.

        Every report about ``sample`` on the way is stored in ``seen`` (kind
        to time); reports about earlier samples are dropped.
        """
        deadline = time.monotonic() + REPORT_TIMEOUT_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._events.poll(remaining):
                raise RuntimeError(f"no {'/'.join(kinds)} report in {REPORT_TIMEOUT_S} s")
            kind, about, at = self._events.recv()
            if about == sample:
                seen[kind] = at
                if kind in kinds:
                    return str(kind)


# -- the client's side -------------------------------------------------------


def abort_running(
    worker: WorkerProcess,
    actor: dramatiq.Actor[[int, float], None],
    wait_s: float,
    abort_timeout: int = 0,
    gap_s: float = 0.0,
) -> list[float | None]:
    """Abort one running actor ``wait_s`` after its start.

    Returns:
        ``[latency, call, seen]`` in ms: from ``abort()`` returning to
        ``Abort`` caught (``None`` if the actor ran to its end), how long
        ``abort()`` took, and from ``abort()`` returning to the actor's
        first non-``None`` ``abort_requested()`` (``None`` if it never
        looked or never saw one).

    """
    if gap_s:
        time.sleep(random.uniform(0.0, gap_s))
    sample = next_sample_id()
    seen: dict[str, float] = {}
    message = actor.send(sample, wait_s + abort_timeout / 1000 + SPARE_S)
    worker.report(sample, ("started",), seen)
    remaining = seen["started"] + wait_s - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
    called = time.monotonic()
    if abort_timeout:
        abort(message.message_id, abort_timeout=abort_timeout)
    else:
        abort(message.message_id)
    returned = time.monotonic()
    kind = worker.report(sample, ("caught", "finished"), seen)
    latency = (seen["caught"] - returned) * 1000 if kind == "caught" else None
    noticed = (seen["seen"] - returned) * 1000 if "seen" in seen else None
    return [latency, (returned - called) * 1000, noticed]


def drained(worker: WorkerProcess, count: int) -> dict[str, Any]:
    """Wait until the worker is done with ``count`` messages; return what it said."""
    done: dict[str, Any] = worker.call("done", count)
    if done["count"] < count:
        raise RuntimeError(
            f"the worker was done with {done['count']} of {count} messages "
            f"after {DRAIN_TIMEOUT_S:g} s"
        )
    return done


@contextlib.contextmanager
def client_side(settings: Settings) -> Iterator[Actors]:
    """Build this process's broker (the default one, for ``abort()``); yield its actors."""
    broker, actors, _ = build_broker(settings, lambda kind, sample: None)
    try:
        yield actors
    finally:
        broker.close()


def run_latency(settings: Settings, params: dict[str, int]) -> dict[str, Any]:
    """Abort a spinning actor at each phase; ``params`` maps a phase to its sample count."""
    with client_side(settings) as actors, WorkerProcess(settings) as worker:
        boot = worker.call("start")
        abort_running(worker, actors.spin, 0.0)  # warm-up: connections, first calls
        results = {}
        for phase in ("a", "b", "c"):
            gap = IDLE_GAP_S if phase in ("a", "b") else 0.0
            results[phase] = [
                abort_running(worker, actors.spin, PHASES[phase](), gap_s=gap)
                for _ in range(params.get(phase, 0))
            ]
    return {"samples": results, "worker": worker_facts(boot)}


def run_graceful(settings: Settings, params: dict[str, int]) -> dict[str, Any]:
    """Abort with each ``abort_timeout`` (ms); ``params`` maps it to its sample count."""
    with client_side(settings) as actors, WorkerProcess(settings) as worker:
        boot = worker.call("start")
        abort_running(worker, actors.graceful, 0.05, abort_timeout=100)  # warm-up
        results = {}
        for timeout, count in params.items():
            results[timeout] = [
                abort_running(
                    worker,
                    actors.graceful,
                    random.uniform(0.02, 0.1),
                    abort_timeout=int(timeout),
                    gap_s=IDLE_GAP_S,
                )
                for _ in range(count)
            ]
    return {"samples": results, "worker": worker_facts(boot)}


def run_cancel(settings: Settings, params: dict[str, int]) -> dict[str, Any]:
    """Queue ``params["queued"]`` messages, cancel every other one, then drain them."""
    queued = params["queued"]
    with client_side(settings) as actors, WorkerProcess(settings) as worker:
        messages = [actors.mark.send(index, index % 2 == 0) for index in range(queued)]
        calls = []
        for message in messages[::2]:
            called = time.monotonic()
            abort(message.message_id, mode=AbortMode.CANCEL)
            calls.append((time.monotonic() - called) * 1000)
        boot = worker.call("start")
        done = drained(worker, queued)
    return {
        "queued": queued,
        "cancelled": len(calls),
        "done": done["count"],
        "cancelled_ran": done["marked"][True],
        "kept_ran": done["marked"][False],
        "drain_s": done["at"] - boot["started"],
        "call_ms": calls,
        "worker": worker_facts(boot),
    }


def run_throughput(
    settings: Settings, params: dict[str, Any], backend_client: redis.Redis | None
) -> dict[str, Any]:
    """Drain ``params["messages"]`` no-ops for each of ``params["variants"]``, in order.

    A variant is ``"none"`` (no middleware) or ``"abortable"``, and may
    come more than once; each run gets a fresh worker process and
    namespace.  ``params["warmup"]`` messages are drained first, uncounted.
    With ``backend_client`` (the event backend alone on its server), the
    commands that server ran during each drain are counted.
    """
    variants = params["variants"]
    # A first, shorter drain that is not counted: the first run after the
    # previous scenario tends to be slower, whatever runs it.
    drains = [(variants[0], params.get("warmup", 0), False)] if params.get("warmup") else []
    drains += [(variant, params["messages"], True) for variant in variants]
    runs = []
    for variant, count, counted in drains:
        tuned = replace(settings, namespace=new_namespace(), abortable=variant == "abortable")
        NAMESPACES.append(tuned.namespace)
        with client_side(tuned) as actors, WorkerProcess(tuned) as worker:
            work_ms = params.get("work_ms", 0)
            for _ in range(count):
                if work_ms:
                    actors.busy.send(work_ms)
                else:
                    actors.noop.send()
            before = counts_of(backend_client)
            boot = worker.call("start")
            done = drained(worker, count)
            after = counts_of(backend_client)
        if not counted:
            continue
        commands = None
        if before is not None and after is not None:
            commands = {
                name: calls - before.get(name, 0)
                for name, calls in sorted(after.items())
                if calls != before.get(name, 0) and name != "info"
            }
        runs.append(
            {
                "variant": variant,
                "messages": count,
                "done": done["count"],
                "seconds": done["at"] - boot["started"],
                "cpu_s": done["cpu"] - boot["cpu"],
                "commands": commands,
                "worker": worker_facts(boot),
            }
        )
    return {"runs": runs, "worker": runs[-1]["worker"]}


def run_hooks(settings: Settings, params: dict[str, Any]) -> dict[str, Any]:
    """Drain ``params["messages"]`` no-ops on a ``StubBroker`` per variant; CPU per message.

    Each drain gets a fresh broker, middleware and one-thread worker in this
    process; the CPU time is the whole process's from the worker's start to
    the last message, so it holds the consumer thread, the worker thread and
    the middleware's own threads.
    """
    from dramatiq.brokers.stub import StubBroker

    runs = []
    drains = (
        [(params["variants"][0], params.get("warmup", 0), False)] if params.get("warmup") else []
    )
    drains += [(variant, params["messages"], True) for variant in params["variants"]]
    for variant, count, counted in drains:
        broker = StubBroker()
        client = None
        if variant == "abortable":
            namespace = new_namespace()
            NAMESPACES.append(namespace)
            client = redis.Redis.from_url(settings.backend_url)
            backend = backends.RedisBackend(client=client, namespace=f"{namespace}:aborts:")
            broker.add_middleware(Abortable(backend=backend))
        tally = Tally()
        broker.add_middleware(tally)

        @dramatiq.actor(broker=broker, actor_name="hooks_noop", max_retries=0)
        def noop() -> None:
            """Do nothing."""

        for _ in range(count):
            noop.send()
        worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=WORKER_TIMEOUT_MS)
        # dramatiq read dramatiq_queue_prefetch when this process imported it,
        # before main() set it; the worker reads this attribute at start.
        worker.queue_prefetch = QUEUE_PREFETCH
        started, cpu = time.monotonic(), time.process_time()
        worker.start()
        done, at = tally.wait_for(count, DRAIN_TIMEOUT_S)
        cpu = time.process_time() - cpu
        worker.stop()
        broker.close()
        if client is not None:
            client.close()
        if done < count:
            raise RuntimeError(f"the worker was done with {done} of {count} messages")
        if counted:
            runs.append(
                {
                    "variant": variant,
                    "messages": count,
                    "seconds": at - started,
                    "cpu_s": cpu,
                }
            )
    return {"runs": runs, "worker": {"switch_interval_ms": sys.getswitchinterval() * 1000}}


def worker_facts(boot: dict[str, Any]) -> dict[str, Any]:
    """Return how the worker process was set up, from its answer to ``start``."""
    return {"switch_interval_ms": boot["switch_interval_ms"], "prefetch": boot["prefetch"]}


def counts_of(client: redis.Redis | None) -> dict[str, int] | None:
    """Return the calls of each command the server has run, or ``None`` without a client."""
    return None if client is None else command_counts(client)


# -- setup, cleanup, output ----------------------------------------------------

#: Every namespace this run used; their keys are deleted at the end.
NAMESPACES: list[str] = []


def new_namespace() -> str:
    """Return a namespace no one else uses."""
    return f"dramatiq-abort-compare-{uuid.uuid4().hex[:12]}"


def delete_namespaces(url: str, namespaces: list[str]) -> int:
    """Delete the keys under ``namespaces`` on the server at ``url``; return how many."""
    client = redis.Redis.from_url(url)
    try:
        return sum(delete_keys(client, f"{namespace}:") for namespace in namespaces)
    finally:
        client.close()


def info(broker_url: str, backend_url: str) -> dict[str, Any]:
    """Return the versions in this virtualenv and of the two Redis servers."""
    servers = {}
    for name, url in (("broker", broker_url), ("backend", backend_url)):
        client = redis.Redis.from_url(url, socket_connect_timeout=5)
        try:
            servers[name] = client.info("server")["redis_version"]
        finally:
            client.close()
    return {
        "dramatiq_abort": importlib.metadata.version("dramatiq-abort"),
        "path": dramatiq_abort.__file__,
        "requires": importlib.metadata.requires("dramatiq-abort") or [],
        "dramatiq": dramatiq.__version__,
        "redis_py": redis.__version__,
        "python": sys.version.split()[0],
        "servers": servers,
    }


def clean(value: Any) -> Any:
    """Replace infinities and NaNs, which JSON lacks, with ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    """Run one scenario and print its result as one line of JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "scenario", choices=["info", "latency", "graceful", "cancel", "throughput", "hooks"]
    )
    parser.add_argument("--broker-url", default=DEFAULT_URL, help="Redis URL of the broker")
    parser.add_argument("--backend-url", default=DEFAULT_URL, help="Redis URL of the event backend")
    parser.add_argument("--params", default="{}", help="the scenario's sample counts, as JSON")
    parser.add_argument(
        "--isolated",
        action="store_true",
        help="the event backend is alone on its Redis server: count its commands",
    )
    args = parser.parse_args(argv)
    params = json.loads(args.params)
    logging.basicConfig(level=logging.ERROR, format="runner: %(name)s: %(message)s")
    # Read by dramatiq.worker when the worker processes import it.
    os.environ.setdefault("dramatiq_queue_prefetch", str(QUEUE_PREFETCH))

    if args.scenario == "info":
        print(json.dumps(info(args.broker_url, args.backend_url)), flush=True)
        return 0

    settings = Settings(args.broker_url, args.backend_url, new_namespace())
    NAMESPACES.append(settings.namespace)
    backend_client = redis.Redis.from_url(args.backend_url) if args.isolated else None
    started = time.monotonic()
    try:
        if args.scenario == "latency":
            result = run_latency(settings, params)
        elif args.scenario == "graceful":
            result = run_graceful(settings, params)
        elif args.scenario == "cancel":
            result = run_cancel(settings, params)
        elif args.scenario == "hooks":
            result = run_hooks(settings, params)
        else:
            result = run_throughput(settings, params, backend_client)
    finally:
        if backend_client is not None:
            backend_client.close()
        deleted = delete_namespaces(args.broker_url, NAMESPACES)
        if args.backend_url != args.broker_url:
            deleted += delete_namespaces(args.backend_url, NAMESPACES)
    output = {
        "scenario": args.scenario,
        "dramatiq_abort": importlib.metadata.version("dramatiq-abort"),
        "seconds": time.monotonic() - started,
        "deleted_keys": deleted,
        "result": result,
    }
    print(json.dumps(clean(output)), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(1)
