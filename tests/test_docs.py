"""The README's snippets and the reference contract's examples run as written.

README.md: its ```python blocks run in order in one namespace per test, as
a reader pasting them into one module would: the README says the snippets
build on each other (later ones use the setup and actors of earlier ones).
Each block is found by the heading above it and has a driver here that
checks what the text around it promises; a block without a driver fails.

The reference contract (``../shared/spec/dramatiq-abort-reference.txt``
beside the repository) is read at test time; its examples are the code
paragraphs of its example sections, run with one fix only:
``get_broker.add_middleware`` -> ``get_broker().add_middleware``.  They
use names the text never imports (``dramatiq``, ``abort``, ``AbortMode``,
``sleep``, ...); the test provides them, and ``args``/``kwargs`` as the
subprocess example's inputs.  The reference's ``RedisBackend()`` writes to
Redis on localhost:6379, database 0, under ``dramatiq:aborts:``: the tests
delete exactly the keys of the messages they sent, and never flush.

Pacing: an example sends a message and aborts it on the next line.  To see
the behaviour its text describes, a snippet runs statement by statement,
and before each top-level ``abort(...)`` call the test brings the message
to the state the text is about (still queued, running, or inside the
block the text is about, which the test learns from what the actor
prints).  The code itself runs unchanged.

Brokers: StubBroker and RedisBroker (each under this test's namespace).  Not
RabbitMQ: the examples' actors use the ``default`` queue, which on RabbitMQ
is server-wide and may be shared with other test runs; test_abort.py covers
RabbitMQ with queues of the tests' own.
"""

from __future__ import annotations

import ast
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.broker import Broker, MessageProxy
from dramatiq.middleware import Middleware

from conftest import BACKEND_DB, require
from conftest import Outcomes as Ended
from dramatiq_abort import Abort, Abortable, AbortMode, abort, abort_requested, backends

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
REFERENCE = ROOT.parent / "shared" / "spec" / "dramatiq-abort-reference.txt"

#: Seconds any one wait of these tests may take before it fails.
WAIT = 15.0
#: The reference backend's server and key prefix: RedisBackend() defaults.
REFERENCE_REDIS = "redis://localhost:6379/0"
REFERENCE_NAMESPACE = "dramatiq:aborts:"


# -- watching what the worker does ---------------------------------------------


@dataclass(frozen=True)
class Ending:
    """How the worker ended one message."""

    skipped: bool
    exception: BaseException | None
    at: float  # time.monotonic()


class Outcomes(Middleware):
    """Record which messages were sent, started and ended, for the test thread to wait on.

    Added after ``Abortable``, so a message counts as started only once
    ``Abortable`` let it through.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.sent: list[str] = []
        self.retries: list[tuple[str, int]] = []
        self.started: set[str] = set()
        self.ended: dict[str, Ending] = {}
        self.settled: dict[str, str] = {}

    def after_enqueue(self, broker: Broker, message: dramatiq.Message[Any], delay: int) -> None:
        """Note a sent message, or a retry (an enqueue of a known id with a delay)."""
        with self._cond:
            if message.message_id in self.sent:
                self.retries.append((message.message_id, delay))
            else:
                self.sent.append(message.message_id)
            self._cond.notify_all()

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        """Note that the actor is about to run."""
        with self._cond:
            self.started.add(message.message_id)
            self._cond.notify_all()

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        """Note the exception the message ended with, if any."""
        self._end(message.message_id, Ending(False, exception, time.monotonic()))

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        """Note that the worker skipped the message."""
        self._end(message.message_id, Ending(True, None, time.monotonic()))

    def after_ack(self, broker: Broker, message: MessageProxy) -> None:
        """Note that the worker acknowledged the message: it is done with it."""
        self._settle(message.message_id, "ack")

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        """Note that the worker rejected the message: it failed and is dead-lettered."""
        self._settle(message.message_id, "nack")

    def _settle(self, message_id: str, how: str) -> None:
        with self._cond:
            self.settled[message_id] = how
            self._cond.notify_all()

    def _end(self, message_id: str, ending: Ending) -> None:
        with self._cond:
            self.ended[message_id] = ending
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait until ``predicate()`` holds, or fail the test."""
        with self._cond:
            if not self._cond.wait_for(predicate, WAIT):
                pytest.fail(f"timed out after {WAIT} s waiting for {what}")

    def last_sent(self) -> str:
        """The id of the latest message sent."""
        with self._cond:
            return self.sent[-1]

    def wait_started(self, message_id: str) -> None:
        """Wait until the message's actor is about to run."""
        self.wait(lambda: message_id in self.started, f"message {message_id} to start")

    def wait_ended(self, message_id: str) -> Ending:
        """Wait until the worker is done with the message, and say how it ended."""
        self.wait(lambda: message_id in self.ended, f"message {message_id} to end")
        return self.ended[message_id]

    def wait_settled(self, message_id: str) -> str:
        """Wait until the worker acks or nacks the message; return ``"ack"`` or ``"nack"``."""
        self.wait(lambda: message_id in self.settled, f"message {message_id} to be settled")
        return self.settled[message_id]


# -- running snippets --------------------------------------------------------------


def is_abort_call(node: ast.stmt) -> bool:
    """Whether a top-level statement is a call of ``abort(...)``, its value kept or not."""
    return (
        isinstance(node, (ast.Expr, ast.Assign))
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name)
        and node.value.func.id == "abort"
    )


def run_snippet(
    source: str,
    namespace: dict[str, Any],
    *,
    before_abort: Callable[[], None] | None = None,
    filename: str = "<snippet>",
) -> None:
    """Run ``source`` in ``namespace`` statement by statement, pacing its ``abort()`` calls."""
    for node in ast.parse(source, filename).body:
        if before_abort is not None and is_abort_call(node):
            before_abort()
        exec(compile(ast.Module(body=[node], type_ignores=[]), filename, "exec"), namespace)


def delete_keys_of(client: Any, namespace: str, message_ids: list[str]) -> None:
    """Delete the keys under ``namespace`` naming one of ``message_ids``, and nothing else."""
    for message_id in message_ids:
        keys = list(client.scan_iter(match=f"{namespace}*{message_id}", count=1000))
        if keys:
            client.delete(*keys)


class Env:
    """A broker with ``Outcomes`` on it, the workers the test starts, and a namespace."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.outcomes = Outcomes()
        self.workers: list[Worker] = []
        self.namespace: dict[str, Any] = {"__name__": "docs_example"}
        self.marks: dict[str, float] = {}

    def watch(self) -> None:
        """Add ``Outcomes`` to the broker (after the snippet's ``Abortable``)."""
        self.broker.add_middleware(self.outcomes)

    def start_worker(self) -> Worker:
        """Start a worker on the broker."""
        worker = Worker(self.broker, worker_threads=2, worker_timeout=50)
        worker.start()
        self.workers.append(worker)
        return worker

    def stop_workers(self) -> None:
        """Stop every worker, waiting for their messages to finish."""
        while self.workers:
            self.workers.pop().stop()

    def abortable(self) -> Abortable:
        """The ``Abortable`` a snippet put on the broker."""
        found = [m for m in self.broker.middleware if isinstance(m, Abortable)]
        assert len(found) == 1, f"expected one Abortable on the broker, found {found}"
        return found[0]

    def close_backend(self) -> None:
        """Close the Redis client of the snippet's backend, if it made one."""
        for middleware in self.broker.middleware:
            if isinstance(middleware, Abortable) and hasattr(middleware.backend, "client"):
                middleware.backend.client.close()


@pytest.fixture(params=["stub", "redis"])
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    """A fresh global broker of each kind; its workers are stopped at teardown."""
    broker: Broker = request.getfixturevalue(f"{request.param}_broker")
    assert dramatiq.get_broker() is broker
    env = Env(broker)
    yield env
    env.stop_workers()
    env.close_backend()


# -- a child process that reports over TCP ------------------------------------------

#: A child that connects to the test, says "up", sleeps ``argv[2]`` seconds,
#: then says "finished"; on SIGINT it says "interrupted" and exits.  "up" is
#: sent inside the ``try``: a SIGINT may follow it within microseconds.
CHILD = """
import socket, sys, time
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
try:
    conn.sendall(b"up;")
    time.sleep(float(sys.argv[2]))
    conn.sendall(b"finished;")
except KeyboardInterrupt:
    conn.sendall(b"interrupted;")
conn.close()
"""


class ChildListener:
    """A loopback socket the child connects to: its messages are events to wait on."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(WAIT)
        self.port = self.server.getsockname()[1]
        self.conn: socket.socket | None = None
        self.unread = b""  # received but not yet returned by read_until_closed

    def argv(self, seconds: float) -> list[str]:
        """The command of a child that sleeps ``seconds`` unless interrupted."""
        return [sys.executable, "-c", CHILD, str(self.port), str(seconds)]

    def wait_up(self) -> None:
        """Wait until the child has connected and said it is up."""
        self.conn, _ = self.server.accept()
        self.conn.settimeout(WAIT)
        assert self.read_until_closed(stop_at=b"up;") == b"up;"

    def read_until_closed(self, stop_at: bytes | None = None) -> bytes:
        """Read what the child says next, until it exits (or up to ``stop_at``)."""
        assert self.conn is not None
        while stop_at is None or stop_at not in self.unread:
            chunk = self.conn.recv(64)
            if not chunk:
                break
            self.unread += chunk
        end = len(self.unread)
        if stop_at is not None and stop_at in self.unread:
            end = self.unread.index(stop_at) + len(stop_at)
        data, self.unread = self.unread[:end], self.unread[end:]
        return data

    def close(self) -> None:
        """Close both sockets."""
        if self.conn is not None:
            self.conn.close()
        self.server.close()


@pytest.fixture
def child_listener() -> Iterator[ChildListener]:
    """A listener for one child process."""
    listener = ChildListener()
    yield listener
    listener.close()


# -- seeing an actor reach a line ------------------------------------------------------


class PrintWatch:
    """Stand in for ``sys.stdout``, passing everything on, and note when ``text`` is printed.

    A driver waits on it to know an actor reached a given line of its code
    without changing that code: the actor prints, the event is set.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.printed = threading.Event()
        self._seen = ""
        self._lock = threading.Lock()
        self._stream: Any = None

    def __enter__(self) -> PrintWatch:
        self._stream, sys.stdout = sys.stdout, self
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.stdout = self._stream

    def write(self, data: str) -> int:
        """Pass ``data`` on; set the event once ``text`` has gone by."""
        with self._lock:
            self._seen += data
            if self.text in self._seen:
                self.printed.set()
        return int(self._stream.write(data))

    def flush(self) -> None:
        """Flush the stream it stands in for."""
        self._stream.flush()

    def wait(self) -> None:
        """Wait until ``text`` was printed, or fail the test."""
        if not self.printed.wait(WAIT):
            pytest.fail(f"timed out after {WAIT} s waiting for {self.text!r} to be printed")


# -- README.md -----------------------------------------------------------------------


def readme_blocks() -> list[tuple[str, str]]:
    """The README's Python blocks, each with the heading above it."""
    blocks: list[tuple[str, str]] = []
    heading, fenced = "", False
    code: list[str] | None = None
    for line in README.read_text(encoding="utf-8").splitlines():
        if code is not None:
            if line.strip() == "```":
                blocks.append((heading, "\n".join(code) + "\n"))
                code = None
            else:
                code.append(line)
        elif line.startswith("```"):
            if line.strip() == "```python":
                code = []
            else:
                fenced = not fenced
        elif not fenced and line.startswith("#"):
            heading = line.lstrip("#").strip()
    return blocks


@pytest.fixture
def readme_redis(redis_base_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Point the README's REDIS_URL at the tests' database; a client of it."""
    import redis

    url = f"{redis_base_url}/{BACKEND_DB}"
    monkeypatch.setenv("REDIS_URL", url)
    client = redis.Redis.from_url(url)
    yield client
    client.close()


def test_readme_blocks_all_have_a_driver() -> None:
    """Every Python block of the README is one that test_readme_runs drives."""
    headings = [heading for heading, _ in readme_blocks()]
    assert headings == list(README_DRIVERS)


def test_readme_runs(
    env: Env,
    readme_redis: Any,
    capsys: pytest.CaptureFixture[str],
    child_listener: ChildListener,
    redis_cluster_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The README's snippets run in order and do what the text around them says."""
    monkeypatch.setenv("REDIS_CLUSTER_URL", redis_cluster_url)
    try:
        for heading, code in readme_blocks():
            driver = README_DRIVERS.get(heading)
            assert driver is not None, f"no test drives the README block under {heading!r}"
            driver(env, code, capsys, child_listener)
    finally:
        env.stop_workers()
        delete_keys_of(readme_redis, REFERENCE_NAMESPACE, env.outcomes.sent)


ReadmeDriver = Callable[[Env, str, pytest.CaptureFixture[str], ChildListener], None]


def readme_console(heading: str) -> list[str]:
    """The ``$ `` lines of the README's console block under ``heading``."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(f"### {heading}\n") :]
    block = section[section.index("```console\n") + len("```console\n") :]
    block = block[: block.index("```")]
    return [line[2:] for line in block.splitlines() if line.startswith("$ ")]


def test_readme_command_line_runs(
    redis_broker: Broker, redis_base_url: str, start_worker: Callable[..., Worker]
) -> None:
    """The README's command-line example aborts a running message and reads its status.

    The lines run as written in one shell, with ``MESSAGE_ID`` set and the
    URL of the ``export`` line pointed at the tests' database.
    """
    import json
    import os

    from conftest import Hold

    url = f"{redis_base_url}/{BACKEND_DB}"
    backend = backends.RedisBackend.from_url(url, namespace=REFERENCE_NAMESPACE)
    redis_broker.add_middleware(Abortable(backend=backend))
    hold = Hold()

    @dramatiq.actor(broker=redis_broker, queue_name="readme-cli", max_retries=0)
    def long_job() -> None:
        hold.run("job")

    lines = readme_console("Command line")
    assert lines[0].startswith("export DRAMATIQ_ABORT_URL=redis://")
    script = "\n".join(["set -e", f"export DRAMATIQ_ABORT_URL={url}", *lines[1:]])
    start_worker(redis_broker)
    message = long_job.send()
    try:
        hold.wait("started", "job")
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL",)}
        env["MESSAGE_ID"] = message.message_id
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        result = subprocess.run(
            ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        hold.wait("ended", "job")
        assert hold.outcome["job"] == "aborted"
        statuses = json.loads(result.stdout[result.stdout.index("[") :])
        assert statuses[0]["state"] == "interrupted"
        assert statuses[0]["reason"] == "user left"
    finally:
        delete_keys_of(backend.client, REFERENCE_NAMESPACE, [message.message_id])
        backend.client.close()


def drive_setup(env: Env, code: str, capsys: Any, child: ChildListener) -> None:
    """Set up: the broker gets an Abortable on a RedisBackend from REDIS_URL."""
    run_snippet(code, env.namespace, filename="README: Set up")
    backend = env.abortable().backend
    assert isinstance(backend, backends.RedisBackend)
    assert backend.client.connection_pool.connection_kwargs["db"] == BACKEND_DB
    env.watch()


def drive_abort(env: Env, code: str, capsys: Any, child: ChildListener) -> None:
    """Abort a message: the running actor catches Abort, cleans up, and the message fails."""

    def running() -> None:
        env.start_worker()
        env.outcomes.wait_started(env.outcomes.last_sent())

    run_snippet(code, env.namespace, before_abort=running, filename="README: Abort")
    message_id = env.namespace["message"].message_id
    assert isinstance(env.outcomes.wait_ended(message_id).exception, Abort)
    assert env.outcomes.wait_settled(message_id) == "nack"  # failed, not retried
    assert "crunch: aborted, cleaning up" in capsys.readouterr().out


def drive_cancel(env: Env, code: str, capsys: Any, child: ChildListener) -> None:
    """Cancel a queued message: a worker that starts later skips it; the actor never runs."""
    env.stop_workers()  # so the message is still queued when it is cancelled
    run_snippet(code, env.namespace, filename="README: Cancel")
    message_id = env.namespace["message"].message_id
    env.start_worker()
    assert env.outcomes.wait_ended(message_id).skipped
    assert env.outcomes.wait_settled(message_id) == "nack"
    assert message_id not in env.outcomes.started


def drive_graceful(env: Env, code: str, capsys: Any, child: ChildListener) -> None:
    """Stop gracefully: the actor sees abort_requested() and returns well before the deadline."""

    def running() -> None:
        env.outcomes.wait_started(env.outcomes.last_sent())
        env.marks["abort"] = time.monotonic()

    run_snippet(code, env.namespace, before_abort=running, filename="README: Graceful")
    message_id = env.namespace["message"].message_id
    ending = env.outcomes.wait_ended(message_id)
    assert not ending.skipped
    assert ending.exception is None
    assert ending.at - env.marks["abort"] < 2.0
    assert env.outcomes.wait_settled(message_id) == "ack"
    assert re.search(r"export: stopping cleanly after \d+ rows", capsys.readouterr().out)


def drive_outcome(env: Env, code: str, capsys: Any, child: ChildListener) -> None:
    """Follow the outcome: the running message is interrupted, and the status says why."""

    def running() -> None:
        env.outcomes.wait_started(env.outcomes.last_sent())

    run_snippet(code, env.namespace, before_abort=running, filename="README: Outcome")
    message_id = env.namespace["message"].message_id
    assert isinstance(env.outcomes.wait_ended(message_id).exception, Abort)
    assert "crunch: interrupted, reason: user left\n" in capsys.readouterr().out
    status = env.namespace["status"]
    assert status.final and status.ended_with == "Abort"


def drive_many(env: Env, code: str, capsys: Any, child: ChildListener) -> None:
    """Bulk: three crunch messages are aborted in one call, each skipped or interrupted."""
    run_snippet(code, env.namespace, filename="README: Many at once")
    batch = env.namespace["batch"]
    assert len(batch) == 3
    for message in env.namespace["messages"]:
        assert env.outcomes.wait_settled(message.message_id) == "nack"
    out = capsys.readouterr().out
    states = re.search(r"crunch: 3 aborted: \[(.*)\]\n", out)
    assert states is not None, out
    assert set(re.findall(r"'(\w+)'", states[1])) <= {"skipped", "interrupted"}


def drive_actor_count(env: Env, code: str, capsys: Any, child: ChildListener) -> None:
    """All messages of one actor: crunch is not tracked here, so the dry run counts 0."""
    run_snippet(code, env.namespace, filename="README: abort_actor")
    assert "crunch: 0 outstanding\n" in capsys.readouterr().out


def drive_topologies(env: Env, code: str, capsys: Any, child: ChildListener) -> None:
    """Redis Cluster and Sentinel: a cluster backend from REDIS_CLUSTER_URL, a Sentinel one."""
    import redis.cluster
    import redis.sentinel

    run_snippet(code, env.namespace, filename="README: Redis Cluster and Sentinel")
    cluster = env.namespace["cluster_backend"]
    sentinel = env.namespace["sentinel_backend"]
    try:
        assert isinstance(cluster.client, redis.cluster.RedisCluster)
        assert len(cluster.client.get_primaries()) == 3  # it found the cluster's layout
        pool = sentinel.client.connection_pool  # made without connecting
        assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
        assert pool.service_name == "mymaster"
        assert pool.connection_kwargs["db"] == 0
        addresses = [
            (
                c.connection_pool.connection_kwargs["host"],
                c.connection_pool.connection_kwargs["port"],
            )
            for c in pool.sentinel_manager.sentinels
        ]
        assert addresses == [("127.0.0.1", 26379), ("127.0.0.1", 26380)]
    finally:
        cluster.client.close()
        sentinel.client.close()


def drive_postgres(env: Env, code: str, capsys: Any, child: ChildListener) -> None:
    """PostgreSQL: from_url makes a PostgresBackend in the default schema, without connecting."""
    from dramatiq_abort.backends.postgres import PostgresBackend

    run_snippet(code, env.namespace, filename="README: PostgreSQL")
    backend = env.namespace["pg_backend"]
    try:
        assert isinstance(backend, PostgresBackend)
        assert backend.namespace == "dramatiq_aborts"
    finally:
        backend.close()


def drive_actor_grace(env: Env, code: str, capsys: Any, child: ChildListener) -> None:
    """Grace and cleanup per actor: Abort comes after the actor's 1 s; on_abort gets its args."""

    def running() -> None:
        env.outcomes.wait_started(env.outcomes.last_sent())
        env.marks["abort"] = time.monotonic()

    run_snippet(code, env.namespace, before_abort=running, filename="README: Grace")
    assert env.namespace["convert"].options["abort_timeout"] == 1000
    message_id = env.namespace["message"].message_id
    ending = env.outcomes.wait_ended(message_id)
    assert isinstance(ending.exception, Abort)
    assert 1.0 <= ending.at - env.marks["abort"] < 2.0  # the actor's grace, not an instant abort
    assert env.outcomes.wait_settled(message_id) == "nack"
    assert "convert: aborted, removing video.mp4.part" in capsys.readouterr().out


def drive_scope(env: Env, code: str, capsys: Any, child: ChildListener) -> None:
    """Checkpoints: the actor sees the request and its grace, check() raises, the callback runs."""

    def running() -> None:
        env.outcomes.wait_started(env.outcomes.last_sent())
        env.marks["abort"] = time.monotonic()

    run_snippet(code, env.namespace, before_abort=running, filename="README: Checkpoints")
    message_id = env.namespace["message"].message_id
    ending = env.outcomes.wait_ended(message_id)
    assert isinstance(ending.exception, Abort)
    assert ending.at - env.marks["abort"] < 2.0  # at the checkpoint, well before the 5 s grace
    assert env.outcomes.wait_settled(message_id) == "nack"
    out = capsys.readouterr().out
    stopping = re.search(r"reindex: stopping at document \d+, (\d+) ms early\n", out)
    assert stopping is not None, out
    assert 3000 < int(stopping[1]) <= 5000  # the actor's 5000 ms grace, counting down
    assert out.index("reindex: aborted, rolling back\n") >= stopping.end()


def drive_shield(env: Env, code: str, capsys: Any, child: ChildListener) -> None:
    """Critical sections: an abort during the shielded block lands at its end, not inside it."""
    with PrintWatch("transfer: debit") as debiting:
        run_snippet(code, env.namespace, before_abort=debiting.wait, filename="README: Shield")
        message_id = env.namespace["message"].message_id
        ending = env.outcomes.wait_ended(message_id)
    assert isinstance(ending.exception, Abort)
    assert env.outcomes.wait_settled(message_id) == "nack"
    out = capsys.readouterr().out
    assert "transfer: debit 100\ntransfer: credit 100\n" in out
    assert "transfer: receipt" not in out


def drive_subprocess(env: Env, code: str, capsys: Any, child: ChildListener) -> None:
    """Subprocesses: an abort interrupts the child at once, and the message ends with Abort."""
    run_snippet(code, env.namespace, filename="README: Subprocesses")
    message = env.namespace["run_command"].send(child.argv(seconds=WAIT * 2))
    child.wait_up()
    env.outcomes.wait_started(message.message_id)
    called = time.monotonic()
    abort(message.message_id)
    assert child.read_until_closed(stop_at=b"interrupted;") == b"interrupted;"
    assert time.monotonic() - called < 1.0  # milliseconds, in fact; never the child's 30 s
    assert isinstance(env.outcomes.wait_ended(message.message_id).exception, Abort)
    assert env.outcomes.wait_settled(message.message_id) == "nack"
    assert child.read_until_closed() == b""  # the child has exited


def drive_async(env: Env, code: str, capsys: Any, child: ChildListener) -> None:
    """Async def actors: a graceful abort lets the coroutine return; a plain one interrupts it.

    The block sets up its own StubBroker; the README's broker is restored after.
    """
    previous = dramatiq.get_broker()
    namespace: dict[str, Any] = {}
    try:
        run_snippet(code, namespace, filename="README: async def actors")
        broker = namespace["broker"]
        outcomes = Ended()
        broker.add_middleware(outcomes)
        worker = Worker(broker, worker_threads=2)
        worker.start()
        try:
            for grace in (5000, None):
                with PrintWatch("pages to fetch") as started:
                    message = namespace["crawl"].send([f"page-{i}" for i in range(100_000)])
                    assert started.printed.wait(WAIT)
                if grace is None:
                    abort(message.message_id)
                else:
                    abort(message.message_id, abort_timeout=grace)
                outcomes.wait(1 if grace else 2)
            broker.join(namespace["crawl"].queue_name, fail_fast=False)
        finally:
            worker.stop()
    finally:
        dramatiq.set_broker(previous)
    graceful, interrupted = outcomes.by_id.values()
    assert (graceful, interrupted) == (["done"], ["Abort"])
    out = capsys.readouterr().out
    assert re.search(r"crawl: asked to stop, \d+ pages fetched\n", out), out
    assert "crawl: aborted mid-page\n" in out


README_DRIVERS: dict[str, ReadmeDriver] = {
    "Set up": drive_setup,
    "Abort a message": drive_abort,
    "Cancel a queued message": drive_cancel,
    "Stop gracefully": drive_graceful,
    "Say why, and follow the outcome": drive_outcome,
    "Grace and cleanup per actor": drive_actor_grace,
    "Checkpoints and cleanup in a block": drive_scope,
    "Critical sections": drive_shield,
    "Subprocesses": drive_subprocess,
    "`async def` actors": drive_async,
    "Bulk, groups and pipelines": drive_many,
    "All messages of one actor": drive_actor_count,
    "Redis Cluster and Sentinel": drive_topologies,
    "PostgreSQL": drive_postgres,
}


# -- the reference contract ------------------------------------------------------------

#: The reference's sections that hold examples, in order, and the section after them.
EXAMPLE_SECTIONS = [
    "Configuring dramatiq-abort",
    "Abort a task",
    "Gracefully aborting tasks",
    "Abort a task using a custom abort_ttl value",
    "Abort a task running a subprocess",
]
AFTER_EXAMPLES = "API"
#: The one fix the reference's examples need.
TYPO, FIX = "get_broker.add_middleware", "get_broker().add_middleware"


def is_code(paragraph: str) -> bool:
    """Whether a paragraph of the reference is Python (its prose does not parse)."""
    try:
        compile(paragraph, "<paragraph>", "exec")
    except SyntaxError:
        return False
    return True


def reference_examples(text: str) -> dict[str, str]:
    """The example of each example section of the reference, with the one fix applied."""
    lines = text.replace(TYPO, FIX).splitlines()
    starts = []
    for title in [*EXAMPLE_SECTIONS, AFTER_EXAMPLES]:
        found = [i for i, line in enumerate(lines) if line.strip() == title]
        assert found, f"the reference has no section titled {title!r}"
        starts.append(found[0])
    examples = {}
    for title, start, end in zip(EXAMPLE_SECTIONS, starts, starts[1:], strict=False):
        paragraphs = "\n".join(lines[start + 1 : end]).split("\n\n")
        code = [p.strip("\n") for p in paragraphs if p.strip() and is_code(p)]
        assert code, f"the reference section {title!r} has no example"
        examples[title] = "\n\n".join(code) + "\n"
    return examples


@pytest.fixture(scope="module")
def reference() -> dict[str, str]:
    """The reference's examples, or a skip when the reference is not beside the repository."""
    require(REFERENCE.is_file(), f"the reference contract is not at {REFERENCE}")
    text = REFERENCE.read_text(encoding="utf-8")
    assert text.count(TYPO) <= 1
    return reference_examples(text)


@pytest.fixture
def reference_redis() -> Iterator[Any]:
    """A client of the Redis the reference's ``RedisBackend()`` uses."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REFERENCE_REDIS, socket_connect_timeout=1)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        client.close()
        require(False, f"the reference's RedisBackend() needs Redis on localhost:6379: {exc}")
    yield client
    client.close()


@pytest.fixture
def ref(env: Env, reference: dict[str, str], reference_redis: Any) -> Iterator[Env]:
    """``env`` configured by the reference's configuration example, with its names provided."""
    env.namespace.update(
        dramatiq=dramatiq,
        abort=abort,
        abort_requested=abort_requested,
        Abort=Abort,
        AbortMode=AbortMode,
        sleep=time.sleep,
        subprocess=subprocess,
        signal=signal,
    )
    run_snippet(
        reference["Configuring dramatiq-abort"], env.namespace, filename="reference: configuring"
    )
    env.watch()
    yield env
    env.stop_workers()
    delete_keys_of(reference_redis, REFERENCE_NAMESPACE, env.outcomes.sent)


def test_reference_examples_found(reference: dict[str, str]) -> None:
    """Each example section of the reference yields the example its text describes."""
    assert FIX in reference["Configuring dramatiq-abort"]
    assert "abort(message_id, mode=AbortMode.CANCEL)" in reference["Abort a task"]
    assert "abort_requested()" in reference["Gracefully aborting tasks"]
    assert "abort_ttl=2*60*60*1000" in reference["Abort a task using a custom abort_ttl value"]
    assert "process.signal(signal.SIGINT)" in reference["Abort a task running a subprocess"]
    for example in reference.values():
        assert "•" not in example  # no prose came along


def test_reference_configuring(ref: Env) -> None:
    """The configuration example puts an Abortable on a RedisBackend at localhost:6379/0."""
    backend = ref.abortable().backend
    assert isinstance(backend, backends.RedisBackend)
    assert backend.namespace == REFERENCE_NAMESPACE
    kwargs = backend.client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("localhost", 6379, 0)
    assert ref.abortable().abort_ttl == 90_000


def test_reference_abort_a_task(ref: Env, reference: dict[str, str]) -> None:
    """Aborting, then cancelling, a queued message makes the worker skip it."""
    run_snippet(reference["Abort a task"], ref.namespace, filename="reference: abort a task")
    message_id = ref.namespace["message_id"]
    ref.start_worker()
    assert ref.outcomes.wait_ended(message_id).skipped
    assert ref.outcomes.wait_settled(message_id) == "nack"
    assert message_id not in ref.outcomes.started


def test_reference_gracefully_aborting(ref: Env, reference: dict[str, str]) -> None:
    """The graceful example's actor sees abort_requested() and breaks out before the timeout."""

    def running() -> None:
        ref.outcomes.wait_started(ref.outcomes.last_sent())
        ref.marks["abort"] = time.monotonic()

    ref.start_worker()
    run_snippet(
        reference["Gracefully aborting tasks"],
        ref.namespace,
        before_abort=running,
        filename="reference: gracefully aborting",
    )
    ending = ref.outcomes.wait_ended(ref.namespace["message"].message_id)
    assert not ending.skipped
    assert ending.exception is None
    assert ending.at - ref.marks["abort"] < 2.0  # abort_timeout=2000: it stopped on its own
    assert ref.outcomes.wait_settled(ref.namespace["message"].message_id) == "ack"


def test_reference_custom_abort_ttl(
    ref: Env, reference: dict[str, str], reference_redis: Any
) -> None:
    """The request for a message delayed by an hour outlives the delay (TTL two hours)."""
    ref.start_worker()
    run_snippet(
        reference["Abort a task using a custom abort_ttl value"],
        ref.namespace,
        filename="reference: abort_ttl",
    )
    message_id = ref.namespace["message_id"]
    keys = list(reference_redis.scan_iter(match=f"{REFERENCE_NAMESPACE}abort:{message_id}"))
    assert len(keys) == 1
    ttl = reference_redis.pttl(keys[0])
    assert 60 * 60 * 1000 < ttl <= 2 * 60 * 60 * 1000
    assert message_id not in ref.outcomes.started


def test_reference_subprocess_example_is_broken(
    ref: Env, reference: dict[str, str], child_listener: ChildListener
) -> None:
    """The subprocess example, aborted, ends with AttributeError; its child is never signalled."""
    ref.namespace["args"] = (child_listener.argv(seconds=1.5),)
    ref.namespace["kwargs"] = {}
    ref.start_worker()
    run_snippet(
        reference["Abort a task running a subprocess"],
        ref.namespace,
        filename="reference: subprocess",
    )
    message = ref.namespace["my_subprocess"].send()
    child_listener.wait_up()
    abort(message.message_id)
    # Popen has no .signal(): the handler itself fails, the child runs to its
    # end (leaving the with block waits for it), and the error is retried.
    assert child_listener.read_until_closed() == b"finished;"
    ending = ref.outcomes.wait_ended(message.message_id)
    assert isinstance(ending.exception, AttributeError)
    assert "'Popen' object has no attribute 'signal'" in str(ending.exception)
    assert isinstance(ending.exception.__context__, Abort)
    ref.outcomes.wait(
        lambda: any(mid == message.message_id for mid, _ in ref.outcomes.retries),
        "dramatiq to schedule a retry",
    )
    assert ref.outcomes.wait_settled(message.message_id) == "ack"  # done; the retry is queued
