"""gevent: what only greenlet workers do, and what gevent costs a process without it.

The whole suite also runs under gevent's monkey-patching (``nox -s
gevent``, through ``tests/run_gevent.py``); the tests here that need the
patching run there, and are skipped in a plain run with that reason.  The
real ``dramatiq-gevent`` command is in ``tests/faults/test_gevent_worker.py``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import dramatiq
import pytest
from dramatiq import Worker

from conftest import WAIT, Outcomes, gevent_patched
from dramatiq_abort import Abort, Abortable, AbortState, EventBackend, abort

StartWorker = Callable[..., Worker]

needs_gevent = pytest.mark.skipif(
    not gevent_patched(), reason="runs under gevent's patching: nox -s gevent"
)


class Blocked:
    """What a blocked actor saw: started, and how its wait ended."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.ended = threading.Event()
        self.outcome = ""
        self.waited = 0.0


def _blocking_actor(
    broker: dramatiq.Broker, seen: Blocked, wait: Callable[[], None]
) -> dramatiq.Actor[[], None]:
    @dramatiq.actor(broker=broker, max_retries=0)
    def blocked() -> None:
        seen.started.set()
        began = time.monotonic()
        try:
            wait()
            seen.outcome = "returned"
        except Abort:
            seen.outcome = "aborted"
            raise
        finally:
            seen.waited = time.monotonic() - began
            seen.ended.set()

    return blocked


def _run_and_abort(
    event_backend: EventBackend, start_worker: StartWorker, wait: Callable[[], None]
) -> Blocked:
    from dramatiq.brokers.stub import StubBroker

    broker = StubBroker()
    broker.emit_after("process_boot")
    outcomes = Outcomes()
    broker.add_middleware(outcomes)
    middleware = Abortable(backend=event_backend)
    broker.add_middleware(middleware)
    seen = Blocked()
    actor = _blocking_actor(broker, seen, wait)
    try:
        start_worker(broker)
        message = actor.send()
        assert seen.started.wait(WAIT)
        handle = abort(message.message_id, middleware=middleware)
        assert seen.ended.wait(WAIT), "the blocked greenlet was not interrupted"
        assert outcomes.ended(message.message_id) == "Abort"
        status = handle.wait(WAIT * 1000)
        assert status is not None and status.state is AbortState.INTERRUPTED
        return seen
    finally:
        broker.close()


@needs_gevent
def test_an_abort_ends_a_greenlet_blocked_in_a_socket_read(
    event_backend: EventBackend, start_worker: StartWorker
) -> None:
    """A read nothing answers (60 s timeout) ends with Abort as soon as the abort arrives."""
    reader, writer = socket.socketpair()
    reader.settimeout(60)
    try:
        seen = _run_and_abort(event_backend, start_worker, lambda: reader.recv(1) and None)
    finally:
        reader.close()
        writer.close()
    assert seen.outcome == "aborted"
    assert seen.waited < 60  # cut short: a thread would have sat in recv() until its timeout


@needs_gevent
def test_an_abort_ends_a_greenlet_in_gevent_sleep(
    event_backend: EventBackend, start_worker: StartWorker
) -> None:
    """gevent.sleep(60) (and the patched time.sleep) ends with Abort when the abort arrives."""
    import gevent

    seen = _run_and_abort(event_backend, start_worker, lambda: gevent.sleep(60))
    assert seen.outcome == "aborted"
    assert seen.waited < 60


def test_the_library_works_where_gevent_cannot_be_imported() -> None:
    """With gevent's import refused, a message runs and an abort is sent; nothing asked for it.

    dramatiq itself tries ``import gevent`` (to learn whether it patched
    anything); the library only looks in ``sys.modules``, once.
    """
    program = textwrap.dedent(
        """
        import importlib.abc
        import sys

        tried = []

        class NoGevent(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("gevent", "greenlet"):
                    caller = sys._getframe(1)
                    while caller and caller.f_globals.get("__name__", "").startswith("importlib"):
                        caller = caller.f_back
                    tried.append(caller.f_globals.get("__name__") if caller else None)
                    raise ImportError(f"no {name} here")
                return None

        sys.meta_path.insert(0, NoGevent())

        import dramatiq
        from dramatiq import Worker
        from dramatiq.brokers.stub import StubBroker
        from dramatiq_abort import Abortable, abort, backends
        from dramatiq_abort import _green

        broker = StubBroker()
        broker.emit_after("process_boot")
        middleware = Abortable(backend=backends.StubBackend())
        broker.add_middleware(middleware)

        @dramatiq.actor(broker=broker)
        def noop():
            pass

        worker = Worker(broker, worker_threads=1)
        worker.start()
        message = noop.send()
        broker.join(noop.queue_name)
        abort(message.message_id, middleware=middleware)
        worker.stop()
        print(_green._FOUND, sorted({t for t in tried if t and "abort" in t}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[None] []", result.stdout + result.stderr
