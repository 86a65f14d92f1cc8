"""What ``abort_latency.py`` and ``_runner.py`` share: the worker process, the spinning actor.

Both scripts run a ``dramatiq.Worker`` in a child process, talk to it over
pipes, abort a CPU-bound actor that reports its start and its ``Abort``,
count the commands a Redis server ran and delete the keys they wrote.

Note:
    ``_runner.py`` also runs in a virtualenv with dramatiq-abort 1.2.1
    installed (see ``compare.py``), so this module uses only what that
    version offers: ``dramatiq_abort.Abort``.  Both scripts run as
    ``python benchmarks/<script>.py``, which puts this directory first on
    ``sys.path``; the ``spawn`` start method hands that path to the worker
    processes, so they import this module too.

"""

from __future__ import annotations

import contextlib
import multiprocessing
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import dramatiq
import redis

from dramatiq_abort import Abort

#: Worker threads of every benchmark's ``dramatiq.Worker``.
WORKER_THREADS = 2
#: How often an idle dramatiq consumer polls, in ms.  Lower than dramatiq's
#: default (1000) so a new sample is picked up at once; dramatiq's own
#: threads then wake ten times a second, one more thing the watcher
#: competes with for the GIL.
WORKER_TIMEOUT_MS = 100

_sample_ids: Iterator[int] = iter(range(1, sys.maxsize))


def next_sample_id() -> int:
    """Return a sample id this process has not used yet, from 1 up."""
    return next(_sample_ids)


def declare_spin(
    broker: dramatiq.Broker, report: Callable[[str, int], None], actor_name: str
) -> dramatiq.Actor[[int, float], None]:
    """Declare the CPU-bound actor whose abort is timed.

    Args:
        broker: The broker to declare it on.
        report: Called as ``report(kind, sample)`` with ``"started"``, then
            ``"caught"`` (``Abort`` was raised in it) or ``"finished"``.
        actor_name: The actor's name, so each script keeps its own.

    Returns:
        The actor; it takes ``(sample, limit_s)``.

    """

    @dramatiq.actor(broker=broker, actor_name=actor_name, max_retries=0)
    def spin(sample: int, limit_s: float) -> None:
        """Do small arithmetic in pure Python until aborted or ``limit_s`` passes."""
        started = time.monotonic()
        x = 0
        try:
            # Inside the try: an abort sent the instant this report arrives
            # can land before the call has returned.
            report("started", sample)
            while time.monotonic() - started < limit_s:
                for _ in range(2000):
                    x = (x * 1_103_515_245 + 12_345) & 0x7FFF_FFFF
        except Abort:
            report("caught", sample)
            raise
        report("finished", sample)

    return spin


def serve(control: Connection, handle: Callable[[tuple[Any, ...]], Any]) -> None:
    """Answer the parent's commands on ``control`` until it sends ``("stop",)``.

    Each reply is ``("ok", handle(command))``, or ``("error", text)`` when
    ``handle`` raised.  The caller sends the last ``("ok", None)`` once it
    has stopped its worker.
    """
    while (command := control.recv())[0] != "stop":
        try:
            reply = handle(command)
        except Exception as exc:
            control.send(("error", f"{type(exc).__name__}: {exc}"))
        else:
            control.send(("ok", reply))


class WorkerPipes:
    """A child process running ``target(*args, events, control)``, and the pipes to it.

    ``events`` carries the actors' reports to this process; ``control``
    carries commands (see :func:`serve`) and their replies.  The child is
    started with ``spawn``, so it imports the script afresh.  Entering
    starts it; leaving sends ``("stop",)`` and makes sure it ended.
    """

    #: Seconds :meth:`call` waits for a reply unless told.
    call_timeout: float = 300.0

    def __init__(self, target: Callable[..., None], args: tuple[Any, ...], name: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._events, child_events = context.Pipe(duplex=False)
        self._control, child_control = context.Pipe()
        self._process = context.Process(
            target=target, args=(*args, child_events, child_control), name=name, daemon=True
        )

    def start(self, what: str) -> Any:
        """Start the child process; return its first reply, named ``what`` in errors."""
        self._process.start()
        return self._reply(what, 60)

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(OSError, EOFError, RuntimeError):
            self.call("stop", timeout=30)
        self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)

    def call(self, *command: Any, timeout: float | None = None) -> Any:
        """Send a command to the worker process and return its reply."""
        self._control.send(command)
        return self._reply(command[0], self.call_timeout if timeout is None else timeout)

    def _reply(self, what: str, timeout: float) -> Any:
        if not self._control.poll(timeout):
            raise RuntimeError(f"the worker process did not answer {what!r} within {timeout} s")
        status, value = self._control.recv()
        if status != "ok":
            raise RuntimeError(f"the worker process failed at {what!r}: {value}")
        return value


def command_counts(client: redis.Redis) -> dict[str, int]:
    """Return the calls of each command the server has run, from ``INFO commandstats``."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in stats.items()}


def delete_keys(client: redis.Redis, prefix: str) -> int:
    """Delete the keys starting with ``prefix``; return how many were deleted."""
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    deleted = 0
    for start in range(0, len(keys), 1000):
        deleted += int(client.delete(*keys[start : start + 1000]))
    return deleted


def with_db(url: str, db: int) -> str:
    """Return the Redis ``url`` pointed at database ``db``."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


def free_port() -> int:
    """Return a loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str | None:
    """The ``redis-server`` program, or ``None`` if this machine has none."""
    return shutil.which("redis-server")


@contextlib.contextmanager
def throwaway_redis(prefix: str) -> Iterator[str]:
    """Run a private ``redis-server`` without persistence; yield its URL."""
    binary = redis_server_binary() or "/usr/bin/redis-server"
    port = free_port()
    with tempfile.TemporaryDirectory(prefix=prefix) as workdir:
        args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", workdir]
        process = subprocess.Popen(
            [binary, *args, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            client = redis.Redis(port=port, socket_connect_timeout=1)
            for _ in range(100):
                with contextlib.suppress(redis.ConnectionError):
                    if client.ping():
                        break
                time.sleep(0.05)  # polling a server we just started; nothing to wait on
            else:
                raise RuntimeError(f"{binary} did not answer on port {port}")
            client.close()
            yield f"redis://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(10)


@contextlib.contextmanager
def throwaway_cluster(prefix: str, primaries: int = 3) -> Iterator[tuple[str, list[str]]]:
    """Run a private Redis Cluster of ``primaries`` nodes; yield its URL and each node's URL."""
    binary = redis_server_binary() or "/usr/bin/redis-server"
    ports = [free_port() for _ in range(primaries)]
    processes = []
    with tempfile.TemporaryDirectory(prefix=prefix) as workdir:
        try:
            for port in ports:
                node_dir = Path(workdir) / str(port)
                node_dir.mkdir()
                args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir)]
                args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
                # The bus port is port + 10,000 by default: past 65,535 for a high port.
                args += ["--cluster-port", str(free_port())]
                processes.append(
                    subprocess.Popen(
                        [binary, *args, "--save", "", "--appendonly", "no"],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            nodes = [redis.Redis(port=port, socket_connect_timeout=1) for port in ports]
            for node in nodes:
                for _ in range(100):
                    with contextlib.suppress(redis.ConnectionError):
                        if node.ping():
                            break
                    time.sleep(0.05)  # polling a server we just started; nothing to wait on
            subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{p}" for p in ports),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=60,
            )
            for node in nodes:
                for _ in range(200):
                    with contextlib.suppress(redis.ConnectionError):
                        if node.cluster("info")["cluster_state"] == "ok":
                            break
                    time.sleep(0.05)  # polling the cluster forming; nothing to wait on
                else:
                    raise RuntimeError("the throwaway cluster did not form")
                node.close()
            url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
            yield url, [f"redis://127.0.0.1:{p}" for p in ports]
        finally:
            for process in processes:
                process.terminate()
                process.wait(10)
