"""Tools of the fault tests: worker processes, their step log, and the report.

A test starts real ``dramatiq`` worker processes running ``faultapp``,
sends messages and aborts from the test process, and reads what happened
from the step log the workers push to Redis (see ``faultapp``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis

from conftest import BACKEND_DB, BROKER_DB, delete_prefix
from dramatiq_abort import Abortable, BackendUnavailableError, abort, backends

HERE = Path(__file__).resolve().parent
#: Bound, in seconds, on any single wait for a worker's step.
WAIT = 30.0
#: Lines of each scenario's figures, printed at the end of the run.
REPORT: list[str] = []


def report(scenario: str, **figures: Any) -> None:
    """Keep one line of figures for the end-of-run summary."""
    shown = ", ".join(f"{key}={value}" for key, value in figures.items())
    REPORT.append(f"{scenario}: {shown}")


@dataclass
class Config:
    """Where a worker process finds its broker, backend and step log."""

    broker_url: str
    backend_url: str
    log_url: str
    queue: str = field(default_factory=lambda: f"faults-{uuid.uuid4().hex[:10]}")
    broker_ns: str = field(default_factory=lambda: f"dramatiq-abort-test-{uuid.uuid4().hex}")
    backend_ns: str = field(default_factory=lambda: f"dramatiq-abort-test:{uuid.uuid4().hex}:")
    abort_ttl: int = 90_000

    @property
    def log_key(self) -> str:
        """The step log's list, under the backend's namespace."""
        return self.backend_ns + "steps"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a worker process."""
        env = dict(os.environ)
        env.update(
            FAULT_BROKER=self.broker_url,
            FAULT_BROKER_NS=self.broker_ns,
            FAULT_BACKEND=self.backend_url,
            FAULT_BACKEND_NS=self.backend_ns,
            FAULT_LOG=self.log_url,
            FAULT_LOG_KEY=self.log_key,
            FAULT_QUEUE=self.queue,
            FAULT_ABORT_TTL=str(self.abort_ttl),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env


class StepLog:
    """The steps the workers recorded, read as they come (BLPOP, no polling)."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client = client
        self.key = key
        self.steps: list[dict[str, Any]] = []

    def _pull(self, timeout: float) -> list[dict[str, Any]]:
        """Block (BLPOP) up to ``timeout`` s for the next step, then take up to 1,000 more."""
        # At most 2 s a call: redis-py 8 reads with a 5 s socket timeout by
        # default, and a longer BLPOP fails with TimeoutError; the caller loops.
        item = self.client.blpop([self.key], timeout=max(0.01, min(timeout, 2.0)))
        if item is None:
            return []
        raws = [item[1], *(self.client.lpop(self.key, 1000) or [])]  # LPOP count: Redis 6.2+
        steps = [json.loads(raw) for raw in raws]
        self.steps.extend(steps)
        return steps

    def drain(self) -> None:
        """Take every step recorded so far."""
        while True:
            raws = self.client.lpop(self.key, 1000)
            if not raws:
                return
            self.steps.extend(json.loads(raw) for raw in raws)

    def wait(
        self, match: Callable[[dict[str, Any]], bool], count: int = 1, timeout: float = WAIT
    ) -> list[dict[str, Any]]:
        """Wait until ``count`` steps satisfy ``match``; return them."""
        deadline = time.monotonic() + timeout
        found = [step for step in self.steps if match(step)]
        while len(found) < count:
            left = deadline - time.monotonic()
            new = self._pull(left) if left > 0 else []
            if not new and time.monotonic() >= deadline:
                raise AssertionError(
                    f"waited {timeout} s for {count} matching steps, saw {len(found)}; "
                    f"last steps: {self.steps[-5:]}"
                )
            found.extend(step for step in new if match(step))
        return found

    def follow(
        self,
        on_step: Callable[[dict[str, Any]], None],
        done: Callable[[], bool],
        *,
        limit: float = 120.0,
    ) -> None:
        """Hand every new step to ``on_step`` until ``done()``; fail when steps stop coming."""
        deadline = time.monotonic() + limit
        while not done():
            left = min(WAIT, deadline - time.monotonic())
            assert left > 0, f"not done after {limit} s; last steps: {self.steps[-5:]}"
            steps = self._pull(left)
            assert steps, f"no step for {left:.0f} s; last steps: {self.steps[-5:]}"
            for step in steps:
                on_step(step)

    def wait_for(self, ev: str, name: str | None = None, count: int = 1, **kw: Any) -> Any:
        """Wait for ``count`` steps ``ev`` (of message ``name``); return the last."""
        return self.wait(
            lambda s: s["ev"] == ev and (name is None or s.get("name") == name), count, **kw
        )[-1]

    def wait_elsewhere(self, ev: str, name: str, pid: int, timeout: float = 60) -> Any:
        """Wait for step ``ev`` of ``name`` recorded by a process other than ``pid``."""
        return self.wait(
            lambda s: s["ev"] == ev and s.get("name") == name and s["pid"] != pid,
            timeout=timeout,
        )[-1]

    def of(self, ev: str, name: str | None = None) -> list[dict[str, Any]]:
        """Steps ``ev`` seen so far (of message ``name``)."""
        return [s for s in self.steps if s["ev"] == ev and (name is None or s.get("name") == name)]

    def outcomes(self) -> dict[str, list[str]]:
        """Every delivery's end by message name: outcomes, and ``skipped``."""
        ends: dict[str, list[str]] = {}
        for step in self.steps:
            if step["ev"] == "end":
                ends.setdefault(step["name"], []).append(step["outcome"])
            elif step["ev"] == "skipped":
                ends.setdefault(step["name"], []).append("skipped")
        return ends

    def counts(self, ev: str) -> Counter[str]:
        """How many steps ``ev`` each message name has."""
        return Counter(s.get("name") for s in self.steps if s["ev"] == ev)


class WorkerProcess:
    """A real ``dramatiq`` (or ``dramatiq-gevent``) command running ``faultapp``, in its session."""

    def __init__(
        self,
        config: Config,
        log_dir: Path,
        *,
        threads: int = 4,
        processes: int = 1,
        shutdown_timeout_ms: int = 30_000,
        gevent: bool = False,
        **env: str,
    ) -> None:
        self.config = config
        self.processes = processes
        self.log_path = log_dir / f"worker-{uuid.uuid4().hex[:8]}.log"
        # dramatiq-gevent: dramatiq's own script, which patches with gevent first.
        start = (
            [str(Path(sys.executable).parent / "dramatiq-gevent")]
            if gevent
            else [sys.executable, "-m", "dramatiq"]
        )
        self.command = [
            *start,
            "faultapp",
            "--path",
            str(HERE),
            "--processes",
            str(processes),
            "--threads",
            str(threads),
            "--queues",
            config.queue,
            "--worker-shutdown-timeout",
            str(shutdown_timeout_ms),
        ]
        self.env = config.env(**env)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the command; its output goes to a log file kept for failures."""
        with self.log_path.open("wb") as out:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def terminate(self) -> None:
        """Ask for a graceful shutdown, as a deploy does (SIGTERM)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the whole process group: the dramatiq command and its worker."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def wait(self, timeout: float) -> int:
        """Wait for the command to exit; return its exit status."""
        assert self.process is not None
        return self.process.wait(timeout)

    def output(self) -> str:
        """What the command printed (dramatiq's and the library's logs)."""
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        """Make sure nothing of it is left running."""
        if self.process is not None and self.process.poll() is None:
            self.kill()


def client_broker(config: Config) -> dramatiq.Broker:
    """A broker for the test process that sends to the workers' queue."""
    if config.broker_url.startswith("amqp"):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=config.broker_url)
    from dramatiq.brokers.redis import RedisBroker

    return RedisBroker(url=config.broker_url, namespace=config.broker_ns)


#: URL schemes of a PostgreSQL event backend (a PostgresBackend; else Redis).
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class Client:
    """The test process's side: sends messages and aborts them."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.broker = client_broker(config)
        self.broker.declare_queue(config.queue)
        self.backend: Any
        if config.backend_url.startswith(POSTGRES_SCHEMES):
            self.backend = backends.PostgresBackend.from_url(
                config.backend_url, namespace=config.backend_ns
            )
        else:
            self.backend = backends.RedisBackend.from_url(
                config.backend_url, namespace=config.backend_ns
            )
        self.middleware = Abortable(backend=self.backend, abort_ttl=config.abort_ttl)

    def send(self, actor: str, *args: Any, **options: Any) -> dramatiq.Message[Any]:
        """Enqueue a message for ``actor`` of ``faultapp``."""
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=self.config.queue,
            actor_name=actor,
            args=args,
            kwargs={},
            options=options,
        )
        return self.broker.enqueue(message)

    def ready_count(self) -> int:
        """Messages in the queue that no worker has taken (prefetched ones excluded)."""
        if self.config.broker_url.startswith("amqp"):
            channel = self.broker.channel  # type: ignore[attr-defined]
            declared = channel.queue_declare(self.config.queue, passive=True)
            return int(declared.method.message_count)
        return int(self.broker.client.llen(f"{self.config.broker_ns}:{self.config.queue}"))  # type: ignore[attr-defined]

    def wait_taken(self, timeout: float = WAIT) -> None:
        """Wait until the workers have taken every message of the queue into their prefetch.

        Brokers announce no such thing, so this polls the queue's length.
        """
        deadline = time.monotonic() + timeout
        while self.ready_count():
            assert time.monotonic() < deadline, "the workers did not take the queued messages"
            time.sleep(0.02)  # polling a broker count: nothing to wait on

    def abort(self, message_id: str, **options: Any) -> float:
        """Abort ``message_id``; return the monotonic time at which the call returned."""
        abort(message_id, middleware=self.middleware, **options)
        return time.monotonic()

    def close(self) -> None:
        """Delete the test's RabbitMQ queues (Redis keys go with the scenario); disconnect."""
        if self.config.broker_url.startswith("amqp"):
            with contextlib.suppress(Exception):
                for name in ("", ".DQ", ".XQ"):
                    self.broker.channel.queue_delete(self.config.queue + name)  # type: ignore[attr-defined]
        self.broker.close()
        if isinstance(self.backend, backends.PostgresBackend):
            self.backend.close()
        else:
            self.backend.client.close()


@dataclass
class Scenario:
    """One fault test's world: config, step log, client, and its worker processes."""

    config: Config
    log: StepLog
    client: Client
    log_dir: Path
    started: list[WorkerProcess] = field(default_factory=list)

    def worker(self, **options: Any) -> WorkerProcess:
        """Start a worker process and wait until it takes messages."""
        worker = WorkerProcess(self.config, self.log_dir, **options)
        worker.start()
        self.started.append(worker)
        ready = len(self.log.of("ready")) + worker.processes  # one per worker process
        try:
            self.log.wait_for("ready", count=ready)
        except AssertionError:
            raise AssertionError(f"worker did not boot:\n{worker.output()[-3000:]}") from None
        return worker


@contextmanager
def scenario(
    redis_base_url: str,
    log_dir: Path,
    *,
    broker_url: str | None = None,
    backend_url: str | None = None,
    abort_ttl: int = 90_000,
) -> Iterator[Scenario]:
    """Set up a fault test; at the end kill its workers and delete what it wrote.

    The broker defaults to a RedisBroker in the tests' broker database and the
    event backend to the tests' backend database; the step log always lives in
    the backend database of ``redis_base_url``, which the test never stops.
    """
    config = Config(
        broker_url=broker_url or f"{redis_base_url}/{BROKER_DB}",
        backend_url=backend_url or f"{redis_base_url}/{BACKEND_DB}",
        log_url=f"{redis_base_url}/{BACKEND_DB}",
        abort_ttl=abort_ttl,
    )
    postgres = config.backend_url.startswith(POSTGRES_SCHEMES)
    if postgres:  # a schema name, which is also a fine Redis key prefix for the step log
        config.backend_ns = f"dramatiq_abort_test_{uuid.uuid4().hex[:16]}"
    log_client = redis.Redis.from_url(config.log_url)
    client = Client(config)
    world = Scenario(config, StepLog(log_client, config.log_key), client, log_dir)
    try:
        yield world
    finally:
        for worker in world.started:
            worker.close()
        if postgres:
            # The test's own schema, unless its server is down for good.
            with contextlib.suppress(Exception):
                client.backend.drop_tables()
        elif backend_url is not None:
            # The test's own keys on its own backend server (a cluster, a
            # Sentinel's primary); a server the test stopped has none to lose.
            with contextlib.suppress(redis.RedisError):
                delete_prefix(client.backend.client, config.backend_ns)
        client.close()
        delete_prefix(log_client, config.backend_ns)
        if not config.broker_url.startswith("amqp"):
            broker_client = redis.Redis.from_url(config.broker_url)
            delete_prefix(broker_client, config.broker_ns)
            broker_client.close()
        log_client.close()


def assert_clean_output(worker: WorkerProcess) -> None:
    """No traceback, no crashed thread, no failed hook in the worker's output."""
    text = worker.output()
    for bad in ("Traceback", "Exception in thread"):
        assert bad not in text, f"{bad!r} in the worker's output:\n{text[-3000:]}"


#: Seconds each quick message of :func:`run_backend_restart` runs.
QUICK = 0.02


def run_backend_restart(world: Scenario, server: Any, label: str) -> None:
    """Stop and restart the event backend's ``server`` under a busy worker; check nothing is lost.

    A long message starts before the outage; 20 quick messages are sent
    before, 20 during and 20 after it.  While the backend is down,
    ``abort()`` says so (``BackendUnavailableError``); after the restart an
    abort of the long message still lands.  Every quick message ran exactly
    once and ended normally; the worker's background threads are alive and
    it shuts down cleanly.  ``server`` has ``stop()`` and ``start()``.
    """
    worker = world.worker(threads=4)
    long = world.client.send("hold", "long", 120.0)
    world.log.wait_for("start", "long")
    names = [f"before-{i}" for i in range(20)]
    for name in names:
        world.client.send("hold", name, QUICK)
    world.log.wait_for("end", count=20)

    server.stop()
    with pytest.raises(BackendUnavailableError):
        world.client.abort(long.message_id)
    during = [f"during-{i}" for i in range(20)]
    for name in during:
        world.client.send("hold", name, QUICK)
    world.log.wait_for("end", count=40)

    server.start()
    returned = world.client.abort(long.message_id)
    aborted = world.log.wait_for("aborted", "long")
    after = [f"after-{i}" for i in range(20)]
    for name in after:
        world.client.send("hold", name, QUICK)
    world.client.send("state", "state")
    state = world.log.wait_for("state")
    world.log.wait_for("end", count=62)

    worker.terminate()
    assert worker.wait(30) == 0
    world.log.drain()

    outcomes = world.log.outcomes()
    quick = names + during + after
    assert {name: outcomes.get(name) for name in quick} == {name: ["done"] for name in quick}
    assert all(world.log.counts("start")[name] == 1 for name in quick)
    assert outcomes["long"] == ["Abort"]
    assert {"dramatiq-abort-watcher", "dramatiq-abort-timer"} <= set(state["threads"])
    assert_clean_output(worker)
    report(
        label,
        messages=len(quick) + 1,
        aborts_delivered=1,
        lost=0,
        duplicated=0,
        first_abort_after_restart_ms=round((aborted["t"] - returned) * 1000),
    )
