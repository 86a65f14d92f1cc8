"""What every recipe needs: a broker, an event backend, a worker, and a way to check its story.

With ``REDIS_URL`` set (``redis://host:6379/0``), a recipe uses dramatiq's
``RedisBroker`` and ``backends.RedisBackend`` at that URL, both under a
namespace of its own (``dramatiq-abort-recipe:<name>:<random>``), and
deletes the keys under that namespace, and only those, when it ends.
Without it, it uses dramatiq's ``StubBroker`` and the in-memory
``backends.StubBackend``: no server needed.

This module is not part of the library (the leading underscore keeps it out
of the list of recipes); copy what you need.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, NoReturn

import dramatiq
from dramatiq import Worker
from dramatiq.broker import Broker, MessageProxy
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import Middleware

from dramatiq_abort import Abortable, EventBackend, backends

#: Seconds a recipe waits for any one step before it declares itself failed.
STEP_TIMEOUT = 10.0


class RecipeFailed(SystemExit):
    """What the recipe demonstrates did not happen; exits with status 1 and says why."""


class Outcomes(Middleware):
    """Record how the worker ended each message, so a recipe can check its story."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ended: dict[str, str] = {}

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        """Note that the message ran to its end, or which exception ended it."""
        ending = "succeeded" if exception is None else f"failed with {type(exception).__name__}"
        self._note(message.message_id, ending)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        """Note that the worker skipped the message without running its actor."""
        self._note(message.message_id, "skipped")

    def _note(self, message_id: str, ending: str) -> None:
        with self._cond:
            self._ended[message_id] = ending
            self._cond.notify_all()

    def wait(self, message: dramatiq.Message[Any], timeout: float = STEP_TIMEOUT) -> str:
        """Wait until the worker is done with ``message``; return how it ended.

        Returns:
            ``"succeeded"``, ``"skipped"`` or ``"failed with <exception name>"``.

        Raises:
            RecipeFailed: The worker was not done within ``timeout`` seconds.

        """
        with self._cond:
            if not self._cond.wait_for(lambda: message.message_id in self._ended, timeout):
                fail(f"the worker did not finish {message.actor_name} within {timeout:.0f} s")
            return self._ended[message.message_id]


class Recipe:
    """The broker, event backend and outcomes of one run of a recipe.

    Creating it sets the broker as dramatiq's global broker, so declare the
    recipe's actors after it.  Use it as a context manager around the run:
    leaving closes the broker and deletes the recipe's Redis keys.

    Args:
        name: The recipe's name, used in its Redis namespace and its messages.
        redis_url: Use Redis at this URL; ``None`` reads ``REDIS_URL``, and
            an empty value means the in-memory broker and backend.
        middleware: Middleware to add before ``Abortable``, such as
            dramatiq's ``AsyncIO`` for ``async def`` actors.

    """

    def __init__(
        self, name: str, *, redis_url: str | None = None, middleware: Iterable[Middleware] = ()
    ) -> None:
        self.name = name
        self.redis_url = os.environ.get("REDIS_URL", "") if redis_url is None else redis_url
        self.broker: Broker
        self.backend: EventBackend
        self.namespace = f"dramatiq-abort-recipe:{name}:{uuid.uuid4().hex[:12]}"
        #: The RedisBackend's namespace, for other processes that share it.
        self.backend_namespace = self.namespace + ":aborts:"
        if self.redis_url:
            from dramatiq.brokers.redis import RedisBroker

            self.broker = RedisBroker(url=self.redis_url, namespace=self.namespace)
            self.backend = backends.RedisBackend.from_url(
                self.redis_url, namespace=self.backend_namespace
            )
        else:
            self.broker = StubBroker()
            self.backend = backends.StubBackend()
        for extra in middleware:
            self.broker.add_middleware(extra)
        self.broker.add_middleware(Abortable(backend=self.backend))
        self.outcomes = Outcomes()
        self.broker.add_middleware(self.outcomes)
        dramatiq.set_broker(self.broker)

    def __repr__(self) -> str:
        return f"<Recipe {self.name!r} on {self.where}>"

    @property
    def where(self) -> str:
        """Which broker and backend the recipe runs on, for its first line of output."""
        if self.redis_url:
            return f"Redis at {self.redis_url} (namespace {self.namespace})"
        return "dramatiq's StubBroker and the in-memory StubBackend"

    @contextlib.contextmanager
    def worker(self, threads: int = 2) -> Iterator[Worker]:
        """Run an in-process dramatiq worker for the duration of the block."""
        worker = Worker(self.broker, worker_threads=threads, worker_timeout=100)
        worker.start()
        try:
            yield worker
        finally:
            worker.stop(timeout=int(STEP_TIMEOUT * 1000))

    def ok(self, summary: str) -> None:
        """Print the last line of a recipe that showed what it set out to show."""
        print(f"{self.name}: OK, {summary}")

    def __enter__(self) -> Recipe:
        print(f"{self.name}: running on {self.where}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.broker.close()
        if isinstance(self.backend, backends.RedisBackend):
            client = self.backend.client
            keys = list(client.scan_iter(match=self.namespace + ":*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()


def fail(what: str) -> NoReturn:
    """Stop the recipe with exit status 1, saying what did not happen."""
    raise RecipeFailed(f"recipe FAILED: {what}")


def expect(condition: bool, what: str) -> None:
    """Fail the recipe unless ``condition`` holds; ``what`` says what was expected."""
    if not condition:
        fail(what)


def wait_for(event: threading.Event, what: str, timeout: float = STEP_TIMEOUT) -> None:
    """Wait for ``event``; fail the recipe if it is not set within ``timeout`` seconds."""
    if not event.wait(timeout):
        fail(f"gave up after {timeout:.0f} s waiting for {what}")
