"""The :class:`Abortable` middleware: dramatiq's hooks and the ``abortable`` option."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

import dramatiq
from dramatiq.broker import Broker, MessageProxy
from dramatiq.common import q_name
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import Middleware, SkipMessage
from dramatiq.worker import Worker

from ._async import _AsyncGuarded, is_async_actor_fn
from ._lookahead import Lookahead
from ._outcomes import Outcomes
from ._registry import PENDING, REGISTRY, _Guarded, _Running
from ._request import (
    DEFAULT_GRACE,
    MAX_MS,
    AbortMode,
    AbortRequest,
    Duration,
    check_reason,
    coerce_mode,
    grace_ms,
    key_for,
    to_ms,
)
from ._targets import Single, expand, is_many, message_id_of
from ._watcher import Watcher
from .events import Event, EventBackend
from .exceptions import (
    Abort,
    BackendUnavailableError,
    DramatiqAbortError,
    StatusUnavailableError,
    TrackingUnavailableError,
    describe,
)
from .status import AbortBatch, AbortHandle, AbortStatus, from_record

__all__ = ["Abortable"]

#: Seconds between two warnings about the backend failing on the hot path.
_WARN_EVERY = 30.0
#: Delayed messages noted before the stale ones are pruned (then twice as many) ...
_DELAYED_PRUNE_AT = 10_000
#: ... those whose ETA passed this many ms ago.
_DELAYED_STALE_MS = 600_000


class Abortable(Middleware):
    """Middleware that interrupts actors whose message has been aborted.

    It adds an ``abortable`` option to actors and to ``send_with_options``;
    the message's value wins over the actor's, which wins over this
    middleware's default.  It also adds an ``abort_timeout`` actor option:
    the grace (ms or ``timedelta``) an abort gives this actor's messages when
    :func:`~dramatiq_abort.abort` is called without one.

    Args:
        backend: Event backend that carries requests from clients to
            workers, such as :class:`~dramatiq_abort.backends.RedisBackend`
            or the in-memory :class:`~dramatiq_abort.backends.StubBackend`.
        abortable: Default of the ``abortable`` option for every actor.
        abort_ttl: Milliseconds a request stays valid for a message that
            has not started yet (a ``timedelta`` works too).
        switch_interval_ms: While a worker runs a message whose actor may
            run long (its last message here ran 20 ms or more, or none has
            run yet), lower CPython's thread switch interval
            (``sys.setswitchinterval``) to this many milliseconds, unless
            it is already lower; restored as soon as no such message runs.
            The thread that delivers ``Abort`` needs the GIL, and a
            CPU-bound actor holds it for a whole interval (5 ms by default)
            before handing it over, so this bounds abort latency; short
            messages don't pay for the extra thread switches.  ``None``
            leaves the interpreter's setting alone.
        cleanup_timeout: For ``async def`` actors: how long (ms or
            ``timedelta``) the coroutine may go on after ``Abort`` was
            thrown into it, cleaning up in ``except``/``finally`` blocks that
            may ``await``, before its task is cancelled.  The message ends as
            aborted either way.
        track_messages: Default of the ``track_messages`` actor option:
            record in the event backend which messages of the actor are
            outstanding, so :func:`~dramatiq_abort.abort_actor` can count and
            abort them.  It costs a background write per message sent and
            per message done (batched, off the hot path); off by default.

    Note:
        ``Abort`` is raised in the worker thread as an asynchronous
        exception, so it lands the next time that thread runs Python code:
        it can't cancel a system call or a long C function.  The toolkit
        (``abort_scope``, ``guarded_popen``) keeps waits interruptible.
        Only CPython is supported.

    Example:
        >>> from dramatiq.brokers.stub import StubBroker
        >>> from dramatiq_abort import Abortable, backends
        >>> broker = StubBroker()
        >>> broker.add_middleware(Abortable(backend=backends.StubBackend()))

    """

    def __init__(
        self,
        *,
        backend: EventBackend,
        abortable: bool = True,
        abort_ttl: Duration = 90000,
        switch_interval_ms: float | None = 1.0,
        cleanup_timeout: Duration = 5000,
        track_messages: bool = False,
    ) -> None:
        if not isinstance(backend, EventBackend):
            msg = (
                f"backend must be an EventBackend such as backends.RedisBackend or "
                f"backends.StubBackend, not {backend!r}"
            )
            raise TypeError(msg)
        if not isinstance(abortable, bool):
            msg = f"abortable must be True or False, not {abortable!r}"
            raise TypeError(msg)
        self.backend = backend
        self.abortable = abortable
        self.abort_ttl = to_ms(abort_ttl, "abort_ttl", allow_zero=False)
        if switch_interval_ms is not None and (
            isinstance(switch_interval_ms, bool) or not isinstance(switch_interval_ms, (int, float))
        ):
            msg = (
                "switch_interval_ms must be None or a number of milliseconds, "
                f"not {switch_interval_ms!r}"
            )
            raise TypeError(msg)
        if switch_interval_ms is not None and not 0 < switch_interval_ms <= 1000:
            msg = (
                "switch_interval_ms must be None or a number of milliseconds in (0, 1000], "
                f"not {switch_interval_ms!r}"
            )
            raise ValueError(msg)
        self.switch_interval_ms = switch_interval_ms
        self.cleanup_timeout = to_ms(cleanup_timeout, "cleanup_timeout")
        if not isinstance(track_messages, bool):
            msg = f"track_messages must be True or False, not {track_messages!r}"
            raise TypeError(msg)
        self.track_messages = track_messages
        #: Ids this process re-enqueued while running them (a retry): their
        #: delivery's ack must not untrack them.
        self._requeued: set[str] = set()
        #: Whether any actor's messages are tracked; ``None``: not worked out yet.
        self._any_tracked: bool | None = None
        self.logger = dramatiq.logging.get_logger(__name__, type(self))
        self._registry = REGISTRY
        self._lookahead = Lookahead()
        self._outcomes = Outcomes(backend)
        if track_messages and not self._outcomes.tracks:
            self.logger.warning(
                "track_messages=True has no effect: %s does not track messages "
                "(use backends.RedisBackend or backends.StubBackend, or implement track() "
                "and tracked())",
                type(backend).__name__,
            )
        #: Messages in this worker's delay queue (sent with ``delay``, or
        #: waiting for a retry): id -> ETA, wall-clock ms.
        self._delayed: dict[str, float] = {}
        self._prune_delayed_at = _DELAYED_PRUNE_AT
        #: The ``abort_timeout`` option of each actor declared here, in ms.
        self._actor_grace: dict[str, int] = {}
        self._watcher = Watcher(
            backend, REGISTRY, self._lookahead, self._outcomes, self._request_for_delayed
        )
        self._read_ahead = bool(getattr(backend, "_read_ahead", False))
        self._last_warning = 0.0

    @property
    def actor_options(self) -> set[str]:
        """The ``abortable``, ``abort_timeout`` and ``track_messages`` actor options."""
        return {"abortable", "abort_timeout", "track_messages"}

    # -- lifecycle -----------------------------------------------------------

    def after_process_boot(self, broker: Broker) -> None:
        """Start the watcher in a freshly booted worker process."""
        self._start()

    def before_worker_boot(self, broker: Broker, worker: Worker) -> None:
        """Start the watcher before the worker takes messages."""
        if self._read_ahead:
            self._lookahead.attach(worker)
        self._start()

    def after_worker_shutdown(self, broker: Broker, worker: Worker) -> None:
        """Stop the watcher once the worker's threads have finished."""
        self._lookahead.detach()
        self._delayed.clear()
        if self in _RUNNING:
            _RUNNING.remove(self)
        self._watcher.stop()
        self._outcomes.stop()
        self._registry.release_switch_interval()

    def _start(self) -> None:
        self._watcher.start()
        if self not in _RUNNING:
            _RUNNING.append(self)
        _catch_swallowed_aborts()
        if self.switch_interval_ms is not None:
            self._registry.want_switch_interval(self.switch_interval_ms / 1000)

    def _abort_swallowed(self) -> None:
        entry = self._registry.swallowed()
        if entry is not None:
            self._watcher.redeliver(entry)

    # -- actors --------------------------------------------------------------

    def after_declare_actor(self, broker: Broker, actor: dramatiq.Actor[Any, Any]) -> None:
        """Prepare each actor so ``Abort`` only lands inside its code."""
        self._any_tracked = None  # it may be tracked: look again
        self._prepare(actor)

    def _prepare(self, actor: dramatiq.Actor[Any, Any]) -> None:
        grace = actor.options.get("abort_timeout")
        if grace is not None:
            actor.options["abort_timeout"] = to_ms(
                grace, f"abort_timeout of actor {actor.actor_name!r}"
            )
            self._actor_grace[actor.actor_name] = actor.options["abort_timeout"]
        # The guard confines delivery to the actor's own code; listing Abort
        # in ``throws`` makes Retries fail the message instead of retrying it
        # and makes the worker log one line instead of a traceback.
        if is_async_actor_fn(actor.fn):
            actor.fn = _AsyncGuarded(actor.fn, self._registry)
        else:
            actor.fn = self._registry.guard(actor.fn)
        throws = actor.options.get("throws") or ()
        if not isinstance(throws, tuple):
            throws = (throws,)
        if Abort not in throws:
            actor.options["throws"] = (*throws, Abort)

    def _is_abortable(self, actor: dramatiq.Actor[Any, Any], message: MessageProxy) -> bool:
        value = message.options.get("abortable")
        if value is None:
            value = actor.options.get("abortable", self.abortable)
        return bool(value)

    # -- tracking (abort_actor) ----------------------------------------------

    def _tracking(self, broker: Broker) -> bool:
        """Whether any message here may be tracked: worked out once, not per message."""
        tracking = self._any_tracked
        if tracking is None:
            tracking = self._any_tracked = self._outcomes.tracks and (
                self.track_messages
                or any(a.options.get("track_messages") for a in broker.actors.values())
            )
        return tracking

    def _tracked_actor(self, broker: Broker, actor_name: str) -> bool:
        try:
            actor = broker.get_actor(actor_name)
        except ActorNotFound:
            return self.track_messages
        value = actor.options.get("track_messages")
        return self.track_messages if value is None else bool(value)

    def after_enqueue(self, broker: Broker, message: dramatiq.Message[Any], delay: int) -> None:
        """Track a message sent (or sent again) of an actor whose messages are tracked."""
        if not self._tracking(broker) or not self._tracked_actor(broker, message.actor_name):
            return
        eta = message.options.get("eta")
        start = eta if isinstance(eta, (int, float)) else message.message_timestamp
        if delay is not None and message.options.get("retries"):
            # Retries sent it again: the ack of the failed delivery comes next.
            self._requeued.add(message.message_id)
        self._outcomes.track("add", message.actor_name, message.message_id, start)

    def after_ack(self, broker: Broker, message: MessageProxy) -> None:
        """Untrack a message done for good (not a retry, not a delayed message moving on)."""
        self._untrack(broker, message)

    def after_nack(self, broker: Broker, message: MessageProxy) -> None:
        """Untrack a message rejected (dead-lettered)."""
        self._untrack(broker, message)

    def _untrack(self, broker: Broker, message: MessageProxy) -> None:
        if not self._tracking(broker):
            return  # the default: nothing tracked, nothing to do per message
        message_id = message.message_id
        if message_id in self._requeued:
            self._requeued.discard(message_id)
            return
        if q_name(message.queue_name) != message.queue_name:
            return  # left the delay queue for its queue: still outstanding
        if self._tracked_actor(broker, message.actor_name):
            self._outcomes.track("remove", message.actor_name, message_id, 0)

    # -- messages ------------------------------------------------------------

    def before_delay_message(self, broker: Broker, message: MessageProxy) -> None:
        """Note a message put in this worker's delay queue; keep a request for it alive."""
        eta = message.options.get("eta")
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta):
            return
        delayed = self._delayed
        if len(delayed) >= self._prune_delayed_at:
            # Those long past their ETA came up elsewhere (or were requeued).
            stale = time.time() * 1000 - _DELAYED_STALE_MS
            # list() copies in one C call: worker threads pop from it meanwhile.
            for message_id, when in list(delayed.items()):
                if when < stale:
                    delayed.pop(message_id, None)
            self._prune_delayed_at = max(_DELAYED_PRUNE_AT, 2 * len(delayed))
        delayed[message.message_id] = eta
        # A request made before this worker took the message may expire first.
        self._outcomes.extend(message.message_id, eta + self.abort_ttl)

    def _request_for_delayed(self, message_id: str) -> None:
        """A request was announced for a message not running here: keep it until its ETA."""
        eta = self._delayed.get(message_id)
        if eta is not None:
            self._outcomes.extend(message_id, eta + self.abort_ttl)

    def before_process_message(self, broker: Broker, message: MessageProxy) -> None:
        """Skip a message with a request; otherwise register it as running."""
        actor = broker.get_actor(message.actor_name)
        if not isinstance(actor.fn, (_Guarded, _AsyncGuarded)):
            self._prepare(actor)  # declared before this middleware was added
        if self._delayed:
            self._delayed.pop(message.message_id, None)  # it came up
        if not self._is_abortable(actor, message):
            return
        # Register first, then look: a request announced in between is
        # recorded on the entry by the watcher, so none falls in the gap.
        entry = self._registry.register(
            message.message_id,
            actor.options.get("abort_timeout") or 0,
            self.cleanup_timeout / 1000,
            actor.actor_name,
            # The actor's, not message.queue_name: MessageProxy's __getattr__
            # costs a microsecond on every message, and they are the same
            # (a delayed message is processed from its actor's queue).
            actor.queue_name,
        )
        if self._watcher.healthy or not self._watcher.running:
            entry.checked = self._check_backend(entry, broker)
        if not self._registry.start(entry):
            self._outcomes.skipped(
                message.message_id, entry.request, actor.actor_name, actor.queue_name
            )
            message.fail()
            raise SkipMessage(f"message {message.message_id} was aborted before it started")

    def _check_backend(self, entry: _Running, broker: Broker) -> bool:
        """Look for a request for the entry's message; ``False`` if the backend failed."""
        noted: list[Any] = []
        try:
            if self._read_ahead:
                watcher = self._watcher
                generation = watcher.live_generation()
                self._lookahead.want()
                if generation is not None:
                    # Settled first: an announcement that reached this process
                    # before now is then in the note (see Watcher.settled); and
                    # the generation again, since the subscription may have
                    # been lost (or lost and remade) meanwhile.
                    settled = watcher.settled()
                    hit, request = self._lookahead.take(entry.message_id, generation)
                    if hit and settled and watcher.generation == generation:
                        if request is not None:
                            self._registry.request(request, live=False)
                        return True
                    waiting, new = self._waiting(broker, entry.message_id, generation)
                    noted = self._lookahead.reserve(new, generation, waiting)
                keys = [key_for(entry.message_id), *(key_for(n.message_id) for n in noted)]
                events = self.backend.poll_many(keys)
            else:
                event = self.backend.poll(key_for(entry.message_id))
                events = [] if event is None else [event]
        except Exception as exc:
            self._lookahead.drop(noted)
            now = time.monotonic()
            if now - self._last_warning >= _WARN_EVERY:
                self._last_warning = now
                self.logger.warning(
                    "Could not check the event backend for message %s (%s: %s); running it.",
                    entry.message_id,
                    type(exc).__name__,
                    exc,
                )
            return False
        for event in events:
            request = AbortRequest.from_event(event)
            if request is None:
                continue
            if request.message_id == entry.message_id:
                self._registry.request(request, live=False)
            else:
                self._lookahead.offer(request)
        if noted:
            self._lookahead.complete(noted)
        return True

    def _waiting(self, broker: Broker, current: str, generation: int) -> tuple[set[str], list[str]]:
        """Ids of every message waiting in the work queue, and of the abortable ones to read."""
        waiting: set[str] = set()
        ids = []
        lookahead = self._lookahead
        for message in lookahead.waiting():
            message_id = message.message_id
            if message_id == current or not isinstance(message_id, str):
                continue
            waiting.add(message_id)
            if lookahead.noted(message_id, generation):
                continue
            try:
                actor = broker.get_actor(message.actor_name)
            except ActorNotFound:  # dramatiq fails it when it comes up; nothing to check
                continue
            if self._is_abortable(actor, message):
                ids.append(message_id)
        return waiting, ids

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        """Forget the message; record how a message that had a request ended."""
        entry = self._registry.current_thread_entry()
        if entry is None or entry.message_id != message.message_id:
            return
        received, late = self._registry.unregister(entry, succeeded=exception is None)
        if received is not None:
            self._ended(entry, received, exception)
        elif late is not None and exception is None:
            self._outcomes.too_late(late, entry.actor_name, entry.queue_name, running=False)

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        """Forget a skipped message; give it an ``Abort`` as its error, for ``Results``."""
        entry = self._registry.current_thread_entry()
        if entry is None or entry.message_id != message.message_id:
            return
        request = entry.request
        if entry.state == PENDING and request is not None and message.failed:
            # dramatiq stuffed our SkipMessage into it; Results stores this instead.
            what = "cancelled" if request.mode is AbortMode.CANCEL else "aborted"
            text = describe(message.message_id, f"{what} before it started", request.reason)
            message.stuff_exception(
                Abort(text, reason=request.reason, message_id=message.message_id)
            )
        received, _ = self._registry.unregister(entry)
        if received is not None:  # another middleware skipped it after it received one
            self._ended(entry, received, SkipMessage())

    def _ended(
        self, entry: _Running, received: AbortRequest, exception: BaseException | None
    ) -> None:
        self._outcomes.ended(
            entry.message_id,
            received,
            entry.actor_name,
            entry.queue_name,
            exception,
            entry.received_at,
        )

    # -- client side ---------------------------------------------------------

    @overload
    def abort(
        self,
        message_id: Single,
        abort_ttl: Duration | None = None,
        mode: AbortMode | str = AbortMode.ABORT,
        abort_timeout: Duration = DEFAULT_GRACE,
        *,
        reason: str | None = None,
    ) -> AbortHandle: ...

    @overload
    def abort(
        self,
        message_id: dramatiq.group | dramatiq.pipeline,
        abort_ttl: Duration | None = None,
        mode: AbortMode | str = AbortMode.ABORT,
        abort_timeout: Duration = DEFAULT_GRACE,
        *,
        reason: str | None = None,
    ) -> AbortBatch: ...

    def abort(
        self,
        message_id: Single | dramatiq.group | dramatiq.pipeline,
        abort_ttl: Duration | None = None,
        mode: AbortMode | str = AbortMode.ABORT,
        abort_timeout: Duration = DEFAULT_GRACE,
        *,
        reason: str | None = None,
    ) -> AbortHandle | AbortBatch:
        """Abort a message, a group or a pipeline; see :func:`~dramatiq_abort.abort`."""
        if isinstance(message_id, (dramatiq.group, dramatiq.pipeline)):
            return self.abort_many(message_id, abort_ttl, mode, abort_timeout, reason=reason)
        if is_many(message_id):
            msg = (
                f"abort() takes one message, its id, a group or a pipeline, not {message_id!r}: "
                "pass an iterable of them to abort_many()"
            )
            raise TypeError(msg)
        message_id_of(message_id)  # a bad id gets its own error
        return self.abort_many([message_id], abort_ttl, mode, abort_timeout, reason=reason)[0]

    def abort_many(
        self,
        targets: Iterable[Single | dramatiq.group | dramatiq.pipeline]
        | dramatiq.group
        | dramatiq.pipeline,
        abort_ttl: Duration | None = None,
        mode: AbortMode | str = AbortMode.ABORT,
        abort_timeout: Duration = DEFAULT_GRACE,
        *,
        reason: str | None = None,
    ) -> AbortBatch:
        """Request the abort of many messages at once; see :func:`~dramatiq_abort.abort_many`."""
        if isinstance(targets, (str, bytes)):
            msg = (
                f"abort_many() takes an iterable of targets, a group or a pipeline, not the "
                f"string {targets!r}: pass [{targets!r}], or call abort()"
            )
            raise TypeError(msg)
        timeout = grace_ms(abort_timeout)
        return self._abort_all(
            lambda: expand(targets, self._grace_of(timeout)), abort_ttl, mode, abort_timeout, reason
        )

    def _grace_of(self, timeout: int | None) -> Callable[[str], int]:
        """The grace a running message of an actor gets: ``timeout``, else the actor's own."""
        if timeout is not None:
            return lambda actor_name: timeout
        return lambda actor_name: self._actor_grace.get(actor_name, 0)

    def abort_actor(
        self,
        actor: dramatiq.Actor[Any, Any] | str,
        abort_ttl: Duration | None = None,
        mode: AbortMode | str = AbortMode.ABORT,
        abort_timeout: Duration = DEFAULT_GRACE,
        *,
        reason: str | None = None,
        dry_run: bool = False,
    ) -> AbortBatch:
        """Abort every outstanding message of an actor; see :func:`~dramatiq_abort.abort_actor`."""
        if isinstance(actor, dramatiq.Actor):
            actor_name = actor.actor_name
        elif isinstance(actor, str) and actor:
            actor_name = actor
        else:
            msg = f"actor must be a dramatiq Actor or an actor's name, not {actor!r}"
            raise TypeError(msg)
        if not isinstance(dry_run, bool):
            msg = f"dry_run must be True or False, not {dry_run!r}"
            raise TypeError(msg)
        self._outcomes.flush(1.0)  # what this process sent is in the backend first
        outstanding = _read(
            lambda: self.backend.tracked(actor_name),
            TrackingUnavailableError,
            f"read the messages of actor {actor_name!r}",
        )
        now = time.time() * 1000
        extra = {message_id: max(0, round(start - now)) for message_id, start in outstanding}
        if dry_run:
            checked = coerce_mode(mode)
            return AbortBatch(
                [AbortHandle(self, i, checked, check_reason(reason)) for i in extra], sent=False
            )
        return self._abort_all(lambda: extra, abort_ttl, mode, abort_timeout, reason)

    def _abort_all(
        self,
        targets: Callable[[], dict[str, int]],
        abort_ttl: Duration | None,
        mode: AbortMode | str,
        abort_timeout: Duration,
        reason: str | None,
    ) -> AbortBatch:
        """Check the arguments, then request the abort of every id ``targets()`` gives.

        ``targets`` returns each id with the ms its request must live beyond
        the TTL; it is called once the other arguments are checked.
        """
        mode = coerce_mode(mode)
        ttl = (
            self.abort_ttl if abort_ttl is None else to_ms(abort_ttl, "abort_ttl", allow_zero=False)
        )
        timeout = grace_ms(abort_timeout)
        reason = check_reason(reason)
        extra = targets()
        requests = [AbortRequest.create(i, mode, timeout, reason) for i in extra]
        batch = [(r.to_event(), min(MAX_MS, ttl + extra[r.message_id])) for r in requests]
        try:
            if batch:
                _notify(self.backend, batch)
        except (TypeError, ValueError):
            raise  # a bad argument, not an outage
        except Exception as exc:
            what = (
                f"record the abort of message {requests[0].message_id!r}"
                if len(requests) == 1
                else f"record the abort of {len(requests)} messages"
            )
            raise _unavailable(what, exc, "it may not have been recorded") from exc
        because = f" (reason: {reason})" if reason else ""
        if len(requests) == 1:
            self.logger.info(
                "Requested %s of message %s%s.", mode.value, requests[0].message_id, because
            )
        elif requests:
            self.logger.info("Requested %s of %d messages%s.", mode.value, len(requests), because)
        return AbortBatch([AbortHandle(self, i, mode, reason) for i in extra])

    def abort_status(self, message_id: Single) -> AbortStatus | None:
        """The status of the abort of a message; see :func:`dramatiq_abort.abort_status`."""
        return self.abort_statuses([message_id])[0]

    def abort_statuses(self, message_ids: Iterable[Single]) -> list[AbortStatus | None]:
        """The status of each message's abort, in one backend call; ``None`` where none is known."""
        ids = [message_id_of(message_id) for message_id in message_ids]
        records = _read(
            lambda: self.backend.read_status(ids), StatusUnavailableError, "read abort statuses"
        )
        return [from_record(i, record) for i, record in zip(ids, records, strict=True)]

    def abort_requested(self, message_id: Single | None = None) -> float | None:
        """Milliseconds left before ``Abort``; see :func:`dramatiq_abort.abort_requested`."""
        if message_id is None:
            entry = self._registry.current()
        else:
            entry = self._registry.get(message_id_of(message_id))
        return None if entry is None else self._registry.remaining_ms(entry)


def _notify(backend: EventBackend, batch: list[tuple[Event, int]]) -> None:
    """``notify_many``, unless a subclass overrides ``notify`` below it: then that ``notify``."""
    cls = type(backend)
    notify_owner = next(c for c in cls.__mro__ if "notify" in c.__dict__)
    many_owner = next(c for c in cls.__mro__ if "notify_many" in c.__dict__)
    if issubclass(many_owner, notify_owner):
        backend.notify_many(batch)
    else:
        EventBackend.notify_many(backend, batch)  # one notify() per TTL


_T = TypeVar("_T")


def _read(read: Callable[[], _T], unsupported: type[DramatiqAbortError], what: str) -> _T:
    """Call ``read``; a missing capability raises ``unsupported``, an outage its own error.

    A bad argument (``TypeError``, ``ValueError``) propagates as it is.
    """
    try:
        return read()
    except NotImplementedError as exc:
        raise unsupported(str(exc)) from exc
    except (TypeError, ValueError):
        raise
    except Exception as exc:
        raise _unavailable(what, exc) from exc


def _unavailable(what: str, exc: Exception, consequence: str = "") -> BackendUnavailableError:
    """The error for a backend that failed while trying to ``what``."""
    advice = (
        "check the backend's credentials"
        if "authentic" in f"{type(exc).__name__} {exc}".lower()
        else "try again once it is back"
    )
    msg = (
        f"could not {what}: the event backend failed ({type(exc).__name__}: {exc}); "
        f"{consequence + ', ' if consequence else ''}{advice}"
    )
    return BackendUnavailableError(msg)


#: The middlewares whose watchers run in this process, latest started last.
_RUNNING: list[Abortable] = []


def _catch_swallowed_aborts() -> None:
    """Chain a ``sys.unraisablehook`` that has an ``Abort`` ignored by CPython raised again.

    Installed once per process; it asks the latest started middleware whose
    watcher still runs to deliver it again.  Any other unraisable
    exception goes on to the hook that was there before.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_dramatiq_abort", False):
        return

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, Abort) and _RUNNING:
            try:
                _RUNNING[-1]._abort_swallowed()
                return
            except Exception:  # never let the hook itself fail; report as before
                pass
        previous(unraisable)

    hook._dramatiq_abort = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook
