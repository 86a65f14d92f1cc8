"""Fixtures: one per real service, a parametrised event backend, brokers and workers.

Services: ``REDIS_URL`` when set, otherwise Redis on 127.0.0.1:6379,
otherwise a throwaway ``redis-server`` started here; RabbitMQ from
``RABBITMQ_URL`` or 127.0.0.1:5672.  A missing service fails the tests
that need it under ``CI=true`` and skips them elsewhere.  Tests write only
under their own namespaces in their own database numbers and delete only
what they wrote.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.broker import MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware

from children import Child
from dramatiq_abort import Abort, Abortable, Event, EventBackend, backends

#: Database numbers of the tests: the event backend's, then the RedisBroker's.
BACKEND_DB = 13
BROKER_DB = 14


def gevent_patched() -> bool:
    """Whether this run is under gevent's monkey-patching (``tests/run_gevent.py``)."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey and monkey.is_module_patched("threading"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under gevent, skip the tests marked ``threads_only``, giving each its reason.

    They run in every other session: what they check (a CPU-bound thread
    interrupted, a thread's switch interval, an asynchronous exception
    swallowed by a finalizer) has no counterpart among greenlets.
    """
    if not gevent_patched():
        return
    for item in items:
        marker = item.get_closest_marker("threads_only")
        if marker is not None:
            reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
            item.add_marker(pytest.mark.skip(reason=f"threads only: {reason}"))


def require(available: bool, reason: str) -> None:
    """Fail under CI=true, skip elsewhere, when a service is missing."""
    if available:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing service is a failure)")
    pytest.skip(reason)


def free_port() -> int:
    """Return a TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A throwaway redis-server on a loopback port; it can be stopped and restarted.

    Args:
        port: The port; a free one by default.
        args: The server's listening arguments for a port (default
            ``--port <port>``), for example a TLS port instead.
        client_options: Options of the client that checks it answers.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        args: Callable[[int], list[str]] | None = None,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="dramatiq-abort-redis-")
        self.args = args(self.port) if args else ["--port", str(self.port)]
        self.client_options = client_options or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL, without a database number."""
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        import redis

        self.process = subprocess.Popen(
            [
                "redis-server",
                *self.args,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2, **self.client_options)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except (redis.ConnectionError, OSError):
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        msg = f"redis-server {self.args} did not start on port {self.port}"
                        raise RuntimeError(msg) from None
                    time.sleep(0.02)  # polling a process we just started; nothing to wait on
        finally:
            client.close()

    def stop(self) -> None:
        """Kill the server and reap it."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _redis_answers(url: str) -> bool:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        client.ping()
        client.close()
    except (redis.RedisError, OSError):
        return False
    return True


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A throwaway redis-server on a free port, started: the test may stop it or cut it off."""
    pytest.importorskip("redis")
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_base_url() -> Iterator[str]:
    """A reachable Redis server's URL, without a database number."""
    pytest.importorskip("redis")
    url = os.environ.get("REDIS_URL")
    if url:
        base = url.rsplit("/", 1)[0] if url.count("/") > 2 else url
        require(_redis_answers(base), f"REDIS_URL={url} does not answer")
        yield base
        return
    if _redis_answers("redis://127.0.0.1:6379"):
        yield "redis://127.0.0.1:6379"
        return
    require(shutil.which("redis-server") is not None, "no Redis on 6379 and no redis-server")
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def namespace() -> str:
    """A key prefix of this test's own."""
    return f"dramatiq-abort-test:{uuid.uuid4().hex}:"


def delete_prefix(client: Any, prefix: str) -> None:
    """Delete the keys under ``prefix`` (this test's own) and nothing else."""
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])


@pytest.fixture
def redis_client(redis_base_url: str, namespace: str) -> Iterator[Any]:
    """A client of the tests' event-backend database; this test's keys go at teardown."""
    import redis

    client = redis.Redis.from_url(f"{redis_base_url}/{BACKEND_DB}")
    yield client
    delete_prefix(client, namespace)
    client.close()


@pytest.fixture
def redis_backend(redis_client: Any, namespace: str) -> backends.RedisBackend:
    """A RedisBackend writing under this test's namespace."""
    return backends.RedisBackend(client=redis_client, namespace=namespace)


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A Redis Cluster's URL: ``REDIS_CLUSTER_URL``, else a throwaway 3-primary cluster."""
    pytest.importorskip("redis")
    url = os.environ.get("REDIS_CLUSTER_URL")
    if url:
        yield url
        return
    for program in ("redis-server", "redis-cli"):
        require(shutil.which(program) is not None, f"{program} is not installed (Redis Cluster)")
    from topologies import ClusterServers

    cluster = ClusterServers()
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.close()


@pytest.fixture
def cluster_backend(redis_cluster_url: str, namespace: str) -> Iterator[backends.RedisBackend]:
    """A RedisBackend on the Redis Cluster, under this test's namespace; its keys go at teardown."""
    backend = backends.RedisBackend.from_url(redis_cluster_url, namespace=namespace)
    yield backend
    delete_prefix(backend.client, namespace)
    backend.client.close()


@pytest.fixture
def sentinel_servers() -> Iterator[Any]:
    """A throwaway primary, replica and Sentinel (``topologies.SentinelServers``), started."""
    pytest.importorskip("redis")
    require(shutil.which("redis-server") is not None, "redis-server is not installed (Sentinel)")
    from topologies import SentinelServers

    servers = SentinelServers()
    try:
        servers.start()
        yield servers
    finally:
        servers.close()


#: PostgreSQL of the tests: ``POSTGRES_URL``, else this (trust authentication).
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _postgres_answers(url: str) -> str:
    """Empty if PostgreSQL at ``url`` answers, else why not."""
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.Error as exc:
        return str(exc).strip()
    return ""


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A reachable PostgreSQL database's URL (``POSTGRES_URL``, else the local ``test``)."""
    import importlib.util

    installed = all(importlib.util.find_spec(name) for name in ("psycopg", "psycopg_pool"))
    require(installed, "psycopg is not installed: pip install 'dramatiq-abort[postgres]'")
    url = os.environ.get("POSTGRES_URL") or POSTGRES_URL
    problem = _postgres_answers(url)
    require(not problem, f"PostgreSQL at {url} does not answer: {problem}")
    return url


@pytest.fixture
def pg_namespace() -> str:
    """A PostgreSQL schema (and channel) name of this test's own."""
    return f"dramatiq_abort_test_{uuid.uuid4().hex[:16]}"


@pytest.fixture
def postgres_backend(postgres_url: str, pg_namespace: str) -> Iterator[Any]:
    """A PostgresBackend in this test's own schema, which is dropped at teardown."""
    backend = backends.PostgresBackend.from_url(postgres_url, namespace=pg_namespace)
    yield backend
    backend.drop_tables()
    backend.close()


@pytest.fixture(params=["stub", "redis", "cluster", "postgres"])
def event_backend(request: pytest.FixtureRequest) -> EventBackend:
    """Every built-in event backend, in turn: in memory, Redis, a Redis Cluster, PostgreSQL."""
    if request.param == "stub":
        return backends.StubBackend()
    backend: EventBackend = request.getfixturevalue(f"{request.param}_backend")
    return backend


@pytest.fixture
def queue_name() -> str:
    """A queue name of this test's own (RabbitMQ queues are server-wide)."""
    return f"dramatiq-abort-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def stub_broker() -> Iterator[StubBroker]:
    """A StubBroker set as the global broker."""
    broker = StubBroker()
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker
    broker.flush_all()
    broker.close()


@pytest.fixture
def redis_broker(redis_base_url: str, namespace: str) -> Iterator[dramatiq.Broker]:
    """A RedisBroker in the tests' broker database, under this test's namespace."""
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=f"{redis_base_url}/{BROKER_DB}", namespace=namespace.rstrip(":"))
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker
    delete_prefix(broker.client, namespace.rstrip(":"))
    broker.close()


@pytest.fixture
def rabbitmq_broker() -> Iterator[dramatiq.Broker]:
    """A RabbitmqBroker; the queues this test declared are deleted at teardown."""
    pytest.importorskip("pika")
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    url = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
    broker = RabbitmqBroker(url=url)
    try:
        broker.connection  # noqa: B018 - connecting is the point
    except Exception as exc:
        require(False, f"RabbitMQ at {url} does not answer: {exc}")
    broker.emit_after("process_boot")
    dramatiq.set_broker(broker)
    yield broker
    with contextlib.suppress(Exception):
        for queue in broker.get_declared_queues():
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                broker.channel.queue_delete(name)
    broker.close()


#: The end-to-end pairs: each broker with its event backend; ``cluster`` is
#: RabbitMQ with the backend on a Redis Cluster (dramatiq's RedisBroker
#: cannot use a cluster), ``postgres`` RabbitMQ with a PostgresBackend.
BROKER_KINDS = ["stub", "redis", "rabbitmq", "cluster", "postgres"]


@pytest.fixture(params=BROKER_KINDS)
def broker(request: pytest.FixtureRequest) -> dramatiq.Broker:
    """Each real broker in turn, with an Abortable on the matching event backend."""
    kind = "rabbitmq" if request.param in ("cluster", "postgres") else request.param
    broker: dramatiq.Broker = request.getfixturevalue(f"{kind}_broker")
    if request.param == "stub":
        backend: EventBackend = backends.StubBackend()
    elif request.param in ("cluster", "postgres"):
        backend = request.getfixturevalue(f"{request.param}_backend")
    else:
        backend = request.getfixturevalue("redis_backend")
    broker.add_middleware(Abortable(backend=backend))
    return broker


@pytest.fixture
def start_worker() -> Iterator[Callable[..., Worker]]:
    """Start workers on demand; each is stopped at teardown.

    ``queue_prefetch`` sets how many messages each consumer may hold
    (dramatiq's default: twice the threads).
    """
    workers: list[Worker] = []

    def start(broker: dramatiq.Broker, queue_prefetch: int = 0, **options: Any) -> Worker:
        options.setdefault("worker_threads", 2)
        options.setdefault("worker_timeout", 50)
        worker = Worker(broker, **options)
        if queue_prefetch:  # read as the worker adds its consumers, at start
            worker.queue_prefetch = queue_prefetch
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def join(broker: dramatiq.Broker, queue_name: str, worker: Worker) -> None:
    """Wait until the queue is drained and the worker has finished its work."""
    if isinstance(broker, StubBroker):
        broker.join(queue_name, fail_fast=False, timeout=30_000)
    else:
        broker.join(queue_name, timeout=30_000)
    worker.join()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the figures the fault scenarios recorded (tests/faults/faultkit.py)."""
    import sys

    faultkit = sys.modules.get("faultkit")
    lines = getattr(faultkit, "REPORT", None)
    if lines:
        terminalreporter.section("fault scenarios")
        for line in lines:
            terminalreporter.write_line(line)


#: Bound, in seconds, on any single wait of the in-process tests.
WAIT = 15.0


class LogWatch(logging.Handler):
    """Collect dramatiq_abort's log records and let the test wait for them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.cond = threading.Condition()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the record and wake the waiting test."""
        with self.cond:
            self.records.append(record)
            self.cond.notify_all()

    def count(self, text: str) -> int:
        """Number of records so far whose message contains ``text``."""
        with self.cond:
            return sum(text in record.getMessage() for record in self.records)

    def wait_for(self, text: str, count: int = 1) -> None:
        """Wait until ``count`` records contain ``text``; fail after :data:`WAIT` seconds."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.count(text) >= count, WAIT):
                pytest.fail(f"no {count} log record(s) containing {text!r} within {WAIT} s")

    def wait_for_any(self, *texts: str) -> None:
        """Wait until a record contains one of ``texts``; fail after :data:`WAIT` seconds."""
        with self.cond:
            if not self.cond.wait_for(lambda: any(self.count(t) for t in texts), WAIT):
                pytest.fail(f"no log record containing any of {texts!r} within {WAIT} s")


@pytest.fixture
def log_watch(caplog: pytest.LogCaptureFixture) -> Iterator[LogWatch]:
    """Watch the library's logs, debug level included (caplog sees them too)."""
    caplog.set_level(logging.DEBUG, logger="dramatiq_abort")
    handler = LogWatch()
    logger = logging.getLogger("dramatiq_abort")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


class Hold:
    """Test actors' view: which messages started, ran, and how they ended."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[tuple[str, str], threading.Event] = {}
        self.runs: Counter[str] = Counter()
        self.outcome: dict[str, str] = {}
        self.release = threading.Event()

    def event(self, kind: str, name: str) -> threading.Event:
        """The ``started`` or ``ended`` event of message ``name``."""
        with self._lock:
            return self._events.setdefault((kind, name), threading.Event())

    def run(self, name: str) -> None:
        """Run until released or aborted, for at most :data:`WAIT` seconds."""
        with self._lock:
            self.runs[name] += 1
        self.event("started", name).set()
        deadline = time.monotonic() + WAIT
        try:
            # The body of a long task: Abort lands between two short waits.
            while not self.release.wait(0.002):
                if time.monotonic() > deadline:
                    self.outcome[name] = "ran out of time"
                    return
            self.outcome[name] = "released"
        except Abort:
            self.outcome[name] = "aborted"
            raise
        finally:
            self.event("ended", name).set()

    def wait(self, kind: str, name: str) -> None:
        """Wait until message ``name`` has started or ended; fail after :data:`WAIT` s."""
        assert self.event(kind, name).wait(WAIT), f"message {name!r} never {kind}"


class Outcomes(Middleware):
    """Spy middleware: how dramatiq ended each message, by message id."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.by_id: dict[str, list[str]] = {}
        self.count = 0

    def _record(self, message_id: str, outcome: str) -> None:
        with self.cond:
            self.by_id.setdefault(message_id, []).append(outcome)
            self.count += 1
            self.cond.notify_all()

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        """Record ``done`` or the name of the exception the message ended with."""
        self._record(message.message_id, "done" if exception is None else type(exception).__name__)

    def after_skip_message(self, broker: dramatiq.Broker, message: MessageProxy) -> None:
        """Record a skipped message."""
        self._record(message.message_id, "skipped")

    def ended(self, message_id: str) -> str:
        """Wait until message ``message_id`` ended; return how it ended last."""
        with self.cond:
            if not self.cond.wait_for(lambda: message_id in self.by_id, WAIT):
                pytest.fail(f"message {message_id} did not end within {WAIT} s")
            return self.by_id[message_id][-1]

    def wait(self, count: int) -> None:
        """Wait until ``count`` messages have ended; fail after :data:`WAIT` seconds."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.count >= count, WAIT):
                pytest.fail(f"only {self.count} of {count} messages ended within {WAIT} s")


@pytest.fixture
def make_child(tmp_path: Path) -> Iterator[Callable[[], Child]]:
    """Make test children, each in a directory of its own."""
    children: list[Child] = []

    def make() -> Child:
        child = Child(tmp_path / f"child{len(children) + 1}")
        children.append(child)
        return child

    yield make
    for child in children:
        for fd in child.fds:
            os.close(fd)


class PlainBackend(EventBackend):
    """A backend written to the 1.x contract only: no subscribe, no poll_many."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._events: dict[str, Event] = {}

    def notify(self, events: Iterable[Event], ttl: int) -> None:
        """Store the events (they never expire here) and wake waiters."""
        with self._cond:
            for event in events:
                self._events[event.key] = event
            self._cond.notify_all()

    def poll(self, key: str) -> Event | None:
        """Return the stored event, leaving it in place."""
        with self._cond:
            return self._events.get(key)

    def wait_many(self, keys: Iterable[str], timeout: int) -> Event | None:
        """Wait for one of the keys, returning it again on every call."""
        wanted = list(keys)
        with self._cond:
            self._cond.wait_for(lambda: any(k in self._events for k in wanted), timeout / 1000)
            return next((self._events[k] for k in wanted if k in self._events), None)
