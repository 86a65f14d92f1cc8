"""The dramatiq app that the fault tests run in real worker processes.

Started as ``python -m dramatiq faultapp --path tests/faults ...`` by
:class:`faultkit.WorkerProcess`, and configured by its environment:

``FAULT_BROKER``
    ``redis://...`` (a RedisBroker) or ``amqp://...`` (a RabbitmqBroker).
``FAULT_BROKER_NS``
    the RedisBroker's namespace.
``FAULT_HEARTBEAT_MS``
    optional: the RedisBroker's heartbeat timeout, with maintenance on
    every command, so a killed worker's messages come back quickly.
``FAULT_BACKEND``, ``FAULT_BACKEND_NS``
    the event backend's URL and namespace: a Redis URL, or a
    ``postgresql://`` one (a PostgresBackend; the namespace is its schema).
``FAULT_LOG``, ``FAULT_LOG_KEY``
    where every step is recorded: JSON objects pushed on a Redis list.
``FAULT_QUEUE``
    the queue of every actor here.
``FAULT_BLOCK_SKIP``
    when set, a skipped message's ``after_skip_message`` hook blocks
    forever (before dramatiq acknowledges the message), so a test can kill
    the worker in the middle of a skip.

Steps recorded (``ev``): ``ready`` (worker booted), ``pre`` (a delivery
reaches ``before_process_message``, ahead of ``Abortable``), ``start``,
``grace``, ``aborted``, ``finish`` (the actor's own code; ``ready`` says
whether gevent patched the worker), ``end`` with
``outcome`` (``done`` or the exception's name), ``skipped``, ``state``.
Times are ``time.monotonic()`` values, which on Linux are comparable
between processes.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import sys
import threading
import time
from typing import Any

import dramatiq
import redis
from dramatiq.middleware import CurrentMessage, Middleware

from dramatiq_abort import Abort, Abortable, abort_requested, backends
from dramatiq_abort._registry import REGISTRY

QUEUE = os.environ["FAULT_QUEUE"]
_log_client = redis.Redis.from_url(os.environ["FAULT_LOG"])
_LOG_KEY = os.environ["FAULT_LOG_KEY"]


def record(ev: str, **fields: Any) -> None:
    """Push one step on the test's log list."""
    fields.update(ev=ev, t=time.monotonic(), pid=os.getpid())
    _log_client.rpush(_LOG_KEY, json.dumps(fields))


def _name(message: dramatiq.Message[Any]) -> str | None:
    return str(message.args[0]) if message.args else None


class Recorder(Middleware):
    """Records what dramatiq did with each message; runs ahead of Abortable."""

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """The worker takes messages from now on (under gevent's patching or not)."""
        monkey = sys.modules.get("gevent.monkey")
        record("ready", gevent=bool(monkey and monkey.is_module_patched("threading")))

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        """A delivery of ``message`` is about to be checked and run."""
        record(
            "pre",
            id=message.message_id,
            name=_name(message),
            retries=message.options.get("retries", 0),
        )

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        """How the delivery ended."""
        outcome = "done" if exception is None else type(exception).__name__
        record("end", id=message.message_id, name=_name(message), outcome=outcome)

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        """The delivery was skipped (it had a request); optionally hang here."""
        record("skipped", id=message.message_id, name=_name(message))
        if os.environ.get("FAULT_BLOCK_SKIP"):
            threading.Event().wait()  # the test kills the process now


def _broker() -> dramatiq.Broker:
    url = os.environ["FAULT_BROKER"]
    if url.startswith("amqp"):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=url)
    from dramatiq.brokers.redis import RedisBroker

    options: dict[str, Any] = {}
    if os.environ.get("FAULT_HEARTBEAT_MS"):
        options["heartbeat_timeout"] = int(os.environ["FAULT_HEARTBEAT_MS"])
        options["maintenance_chance"] = 1_000_000
    return RedisBroker(url=url, namespace=os.environ["FAULT_BROKER_NS"], **options)


broker = _broker()
broker.add_middleware(CurrentMessage())
broker.add_middleware(Recorder())
if os.environ["FAULT_BACKEND"].startswith(("postgresql://", "postgres://")):
    backend: Any = backends.PostgresBackend.from_url(
        os.environ["FAULT_BACKEND"], namespace=os.environ["FAULT_BACKEND_NS"]
    )
else:
    backend = backends.RedisBackend.from_url(
        os.environ["FAULT_BACKEND"], namespace=os.environ["FAULT_BACKEND_NS"]
    )
broker.add_middleware(
    Abortable(backend=backend, abort_ttl=int(os.environ.get("FAULT_ABORT_TTL", "90000")))
)
dramatiq.set_broker(broker)


def _run(name: str, seconds: float) -> None:
    """The body of the long actors: short sleeps, so an Abort lands within ms."""
    reported = False
    end = time.monotonic() + seconds
    try:
        record("start", name=name)
        while time.monotonic() < end:
            time.sleep(0.002)
            if not reported:
                left = abort_requested()
                if left is not None:
                    reported = True
                    record("grace", name=name, left=left)
    except Abort:
        record("aborted", name=name)
        raise
    record("finish", name=name)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def hold(name: str, seconds: float) -> None:
    """Run for ``seconds`` unless aborted."""
    _run(name, seconds)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def wait_io(name: str, seconds: float) -> None:
    """Block in one socket read that nothing answers, for up to ``seconds``.

    A thread's ``Abort`` only lands once the read returns; under gevent the
    read is a greenlet's wait, which the abort ends at once.
    """
    reader, writer = socket.socketpair()
    reader.settimeout(seconds)
    try:
        record("start", name=name)
        reader.recv(1)
    except TimeoutError:
        record("finish", name=name)
    except Abort:
        record("aborted", name=name)
        raise
    finally:
        reader.close()
        writer.close()


@dramatiq.actor(queue_name=QUEUE, max_retries=5, min_backoff=1, max_backoff=20)
def flaky(name: str, seconds: float, failures: int) -> None:
    """Fail the first ``failures`` attempts after ``seconds``, then succeed."""
    message = CurrentMessage.get_current_message()
    attempt = message.options.get("retries", 0) if message is not None else 0
    _run(name, seconds)
    if attempt < failures:
        raise RuntimeError(f"{name}: planned failure of attempt {attempt}")


@dramatiq.actor(queue_name=QUEUE, max_retries=0, abortable=False)
def state(name: str) -> None:
    """Record what this process holds: registry entries, objects, memory, threads."""
    gc.collect()
    status = {}
    with open("/proc/self/status", encoding="ascii") as file:
        for line in file:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                status[key] = int(value.split()[0])  # kB
    record(
        "state",
        name=name,
        registry=len(REGISTRY._by_id),
        objects=len(gc.get_objects()),
        rss_kb=status["VmRSS"],
        peak_rss_kb=status["VmHWM"],
        threads=sorted(thread.name for thread in threading.enumerate()),
    )
