"""The client side: :func:`abort`, :func:`abort_status` and :func:`abort_requested`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, overload

import dramatiq

from ._request import DEFAULT_GRACE, AbortMode, Duration
from ._targets import Single
from .exceptions import MiddlewareMissingError
from .middleware import Abortable
from .status import AbortBatch, AbortHandle, AbortStatus

__all__ = ["AbortMode", "abort", "abort_actor", "abort_many", "abort_requested", "abort_status"]


def _find_middleware(middleware: Abortable | None, caller: str) -> Abortable:
    if middleware is not None:
        if not isinstance(middleware, Abortable):
            msg = f"{caller}() needs an Abortable middleware or None, not {middleware!r}"
            raise TypeError(msg)
        return middleware
    broker = dramatiq.get_broker()
    for candidate in broker.middleware:
        if isinstance(candidate, Abortable):
            return candidate
    msg = (
        f"{caller}() needs the Abortable middleware on the broker {broker!r}: call "
        "broker.add_middleware(Abortable(backend=...)) before sending messages, "
        f"or pass middleware= to {caller}()"
    )
    raise MiddlewareMissingError(msg)


@overload
def abort(
    message_id: Single,
    middleware: Abortable | None = None,
    abort_ttl: Duration | None = None,
    mode: AbortMode | str = AbortMode.ABORT,
    abort_timeout: Duration = DEFAULT_GRACE,
    *,
    reason: str | None = None,
) -> AbortHandle: ...


@overload
def abort(
    message_id: dramatiq.group | dramatiq.pipeline,
    middleware: Abortable | None = None,
    abort_ttl: Duration | None = None,
    mode: AbortMode | str = AbortMode.ABORT,
    abort_timeout: Duration = DEFAULT_GRACE,
    *,
    reason: str | None = None,
) -> AbortBatch: ...


def abort(
    message_id: Single | dramatiq.group | dramatiq.pipeline,
    middleware: Abortable | None = None,
    abort_ttl: Duration | None = None,
    mode: AbortMode | str = AbortMode.ABORT,
    abort_timeout: Duration = DEFAULT_GRACE,
    *,
    reason: str | None = None,
) -> AbortHandle | AbortBatch:
    """Abort a pending or running message given its ``message_id``.

    Args:
        message_id: The ``message_id`` of what ``actor.send()`` returned, or
            that ``Message`` itself: then a message sent with ``delay`` is
            cancelled however far its ETA, as the request lives until that
            ETA plus ``abort_ttl``.  A dramatiq ``group`` or ``pipeline``
            aborts every message in it (see :func:`abort_many`).
        middleware: The ``Abortable`` to use; ``None`` finds the one on
            ``dramatiq.get_broker()``.
        abort_ttl: Milliseconds (or a ``timedelta``) the request stays
            valid for a message that has not started; ``None`` uses the
            middleware's ``abort_ttl``.
        mode: ``AbortMode.ABORT`` (or ``"abort"``) stops the message
            whether pending or running; ``AbortMode.CANCEL`` (``"cancel"``)
            only if it has not started.
        abort_timeout: With ``ABORT``, milliseconds (or a ``timedelta``)
            of grace: the running message sees the countdown through
            :func:`abort_requested` and gets ``Abort`` when it runs out.
            Left out, the actor's own grace applies (its ``abort_timeout``
            option, as set by ``@abortable_actor(timeout=...)``), else none.
        reason: Why (a short string, at most 500 characters).  The worker
            logs it, the running code reads it as ``Abort.reason`` and
            ``AbortScope.reason``, and the status keeps it.

    Returns:
        A handle on the request: ``handle.status()`` reads its
        :class:`AbortStatus` and ``handle.wait(timeout)`` waits for a final
        one.  Code written for 1.x, which returned ``None``, ignores it.
        For a group or a pipeline, an :class:`AbortBatch`.

    Raises:
        MiddlewareMissingError: No ``Abortable`` is on the broker.
        BackendUnavailableError: The event backend could not be reached.
        TypeError: An argument has the wrong type.
        ValueError: An argument is out of range.

    Example:
        >>> abort(message.message_id)  # doctest: +SKIP
        >>> abort(message.message_id, mode="cancel")  # doctest: +SKIP
        >>> abort(message.message_id, reason="user left").wait(5000).state  # doctest: +SKIP
        <AbortState.INTERRUPTED: 'interrupted'>

    """
    found = _find_middleware(middleware, "abort")
    return found.abort(message_id, abort_ttl, mode, abort_timeout, reason=reason)


def abort_many(
    targets: Iterable[Single | dramatiq.group | dramatiq.pipeline]
    | dramatiq.group
    | dramatiq.pipeline,
    middleware: Abortable | None = None,
    abort_ttl: Duration | None = None,
    mode: AbortMode | str = AbortMode.ABORT,
    abort_timeout: Duration = DEFAULT_GRACE,
    *,
    reason: str | None = None,
) -> AbortBatch:
    """Abort many messages in one backend round trip.

    Args:
        targets: Message ids, ``Message`` objects, dramatiq ``group`` and
            ``pipeline`` objects, or an iterable of them: every message they
            stand for is aborted, each once.  For a pipeline, every stage:
            the running one stops, and no later stage starts after this
            returns (each later stage's request lives ``abort_ttl`` plus the
            delays of the stages before it plus the longest grace before
            it: ``abort_timeout``, else the actors' own, when they are
            declared in this process).  With ``mode="cancel"`` the running
            stage runs on, and a later stage is skipped only if it comes up
            within ``abort_ttl``; a stage whose actor is not abortable is
            not stopped.
        middleware: As in :func:`abort`.
        abort_ttl: As in :func:`abort`; a ``Message`` with an ETA gets it
            on top, as in :func:`abort`.
        mode: As in :func:`abort`.
        abort_timeout: As in :func:`abort`.
        reason: As in :func:`abort`, for every message.

    Returns:
        An :class:`AbortBatch`: a handle per message, with ``statuses()``
        and ``wait(timeout)`` over all of them.

    Raises:
        MiddlewareMissingError: No ``Abortable`` is on the broker.
        BackendUnavailableError: The event backend could not be reached;
            none, some or all of the requests may have been recorded.
        TypeError: A target is of a kind it cannot abort.
        ValueError: An argument is out of range.

    Example:
        >>> batch = abort_many(group([...]).run(), reason="upload cancelled")  # doctest: +SKIP
        >>> [status.state for status in batch.wait(5000)]  # doctest: +SKIP

    """
    found = _find_middleware(middleware, "abort_many")
    return found.abort_many(targets, abort_ttl, mode, abort_timeout, reason=reason)


def abort_actor(
    actor: dramatiq.Actor[Any, Any] | str,
    middleware: Abortable | None = None,
    abort_ttl: Duration | None = None,
    mode: AbortMode | str = AbortMode.ABORT,
    abort_timeout: Duration = DEFAULT_GRACE,
    *,
    reason: str | None = None,
    dry_run: bool = False,
) -> AbortBatch:
    """Abort every pending and running message of one actor: the operators' big red button.

    Only messages *tracked* are found: those of an actor whose
    ``track_messages`` option is on (``Abortable(track_messages=True)``, or
    the actor's own option), sent by a process whose broker has the
    middleware, since it was installed.  A worker untracks a message once
    it is acknowledged or dead-lettered, so running ones, delayed ones and
    retries waiting for their backoff are all found.

    Args:
        actor: The actor, or its name.
        middleware: As in :func:`abort`.
        abort_ttl: As in :func:`abort`; a delayed message's request lives
            until its ETA plus this.
        mode: As in :func:`abort`.
        abort_timeout: As in :func:`abort`.
        reason: As in :func:`abort`.
        dry_run: Abort nothing: the batch returned lists what would be
            aborted (``len(batch)`` counts it; ``batch.sent`` is ``False``).

    Returns:
        An :class:`AbortBatch` of the messages found.

    Raises:
        MiddlewareMissingError: No ``Abortable`` is on the broker.
        TrackingUnavailableError: The backend does not track messages.
        BackendUnavailableError: The event backend could not be reached.

    Example:
        >>> abort_actor("resize_image", dry_run=True)  # doctest: +SKIP
        <AbortBatch of 1204 messages (dry run: not sent)>
        >>> abort_actor("resize_image", reason="bad deploy").wait(10_000)  # doctest: +SKIP

    """
    found = _find_middleware(middleware, "abort_actor")
    return found.abort_actor(actor, abort_ttl, mode, abort_timeout, reason=reason, dry_run=dry_run)


def abort_status(message_id: Single, middleware: Abortable | None = None) -> AbortStatus | None:
    """The status of the abort of ``message_id``, from any process that shares the backend.

    Args:
        message_id: The message (or its id) whose abort was requested.
        middleware: As in :func:`abort`.

    Returns:
        The stored :class:`AbortStatus`, or ``None`` when no request is
        known (never made, or older than the backend's ``status_ttl``).

    Raises:
        MiddlewareMissingError: No ``Abortable`` is on the broker.
        StatusUnavailableError: The event backend does not store statuses.
        BackendUnavailableError: The event backend could not be reached.

    """
    return _find_middleware(middleware, "abort_status").abort_status(message_id)


def abort_requested(
    message_id: Single | None = None, middleware: Abortable | None = None
) -> float | None:
    """Milliseconds until the current message is aborted, or ``None``.

    Inside a running actor, returns ``None`` while no abort is requested;
    after a request it returns the grace left, a float that counts down to
    ``0.0`` and never goes negative.  Outside a worker it returns ``None``.

    Args:
        message_id: Ask about another message running in this process
            instead of the current one.
        middleware: As in :func:`abort`.

    Raises:
        MiddlewareMissingError: No ``Abortable`` is on the broker.

    """
    return _find_middleware(middleware, "abort_requested").abort_requested(message_id)
