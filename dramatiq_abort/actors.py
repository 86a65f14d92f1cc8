"""``abortable_actor``: ``dramatiq.actor`` with a grace period and an abort handler."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar, overload

import dramatiq
import wrapt
from dramatiq.actor import Actor, ActorDecorator

from ._registry import REGISTRY
from ._request import to_ms
from .exceptions import Abort, MiddlewareMissingError
from .middleware import Abortable

__all__ = ["abortable_actor"]

P = ParamSpec("P")
R = TypeVar("R")

_logger = logging.getLogger("dramatiq_abort")


def _call_on_abort(on_abort: Callable[..., Any], args: Any, kwargs: Any) -> Any:
    """Call the handler; log (never raise) what it raises, return what it returns."""
    try:
        return on_abort(*args, **kwargs)
    except Exception:
        _logger.exception("on_abort handler %r failed; the message still ends aborted.", on_abort)
        return None


def _sync_wrapper(on_abort: Callable[..., Any]) -> Any:
    @wrapt.decorator
    def on_abort_sync(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        try:
            return wrapped(*args, **kwargs)
        except Abort:
            _call_on_abort(on_abort, args, kwargs)
            raise

    return on_abort_sync


def _async_wrapper(on_abort: Callable[..., Any]) -> Any:
    @wrapt.decorator
    def on_abort_async(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        # This part runs in the worker thread (the async guard calls it there),
        # so the running message is known; the coroutine then runs on the
        # event loop thread, where an abort arrives as Abort, or as a
        # cancellation once the cleanup time ran out.
        entry = REGISTRY.current()
        coroutine = wrapped(*args, **kwargs)

        async def guarded() -> Any:
            try:
                return await coroutine
            except (Abort, asyncio.CancelledError) as exc:
                if isinstance(exc, Abort) or (entry is not None and entry.delivered):
                    result = _call_on_abort(on_abort, args, kwargs)
                    if inspect.isawaitable(result):
                        try:
                            await result
                        except Exception:
                            _logger.exception("on_abort handler %r failed.", on_abort)
                raise

        return guarded()

    return on_abort_async


def _check_broker(broker: dramatiq.Broker | None) -> dramatiq.Broker:
    broker = broker or dramatiq.get_broker()
    if not any(isinstance(m, Abortable) for m in broker.middleware):
        msg = (
            f"abortable_actor needs the Abortable middleware on the broker {broker!r}: call "
            "broker.add_middleware(Abortable(backend=...)) before declaring actors"
        )
        raise MiddlewareMissingError(msg)
    return broker


@overload
def abortable_actor(fn: Callable[P, Awaitable[R]]) -> Actor[P, R]: ...


@overload
def abortable_actor(fn: Callable[P, R]) -> Actor[P, R]: ...


@overload
def abortable_actor(
    *,
    actor_class: Callable[..., Actor[Any, Any]] = Actor,
    actor_name: str | None = None,
    queue_name: str = "default",
    priority: int = 0,
    broker: dramatiq.Broker | None = None,
    timeout: int | float | timedelta | None = None,
    on_abort: Callable[..., Any] | None = None,
    **options: Any,
) -> ActorDecorator: ...


def abortable_actor(
    fn: Callable[..., Any] | None = None,
    *,
    actor_class: Callable[..., Actor[Any, Any]] = Actor,
    actor_name: str | None = None,
    queue_name: str = "default",
    priority: int = 0,
    broker: dramatiq.Broker | None = None,
    timeout: int | float | timedelta | None = None,
    on_abort: Callable[..., Any] | None = None,
    **options: Any,
) -> Any:
    """Declare an abortable actor, as ``dramatiq.actor`` does, with abort handling built in.

    Args:
        fn: The function (plain or ``async def``); given when used bare.
        actor_class: As in ``dramatiq.actor``.
        actor_name: As in ``dramatiq.actor``.
        queue_name: As in ``dramatiq.actor``.
        priority: As in ``dramatiq.actor``.
        broker: As in ``dramatiq.actor``; it needs the ``Abortable`` middleware.
        timeout: Grace period (ms or ``timedelta``) of this actor's messages
            when :func:`~dramatiq_abort.abort` is called without an
            ``abort_timeout``; an explicit ``abort_timeout`` wins.
        on_abort: Called as ``on_abort(*args, **kwargs)`` with the message's
            arguments, once, in the worker, when a running message is ended
            by an abort: after the actor's code stopped and before ``Abort``
            propagates.  What it raises is logged, and ``Abort`` still ends
            the message.  For an ``async def`` actor it may be ``async`` too.
        **options: Actor options such as ``max_retries``; ``abortable``
            defaults to ``True``.

    Returns:
        The actor, or a decorator that makes one.

    Raises:
        TypeError: Applied to an existing ``Actor`` (stacked on
            ``@dramatiq.actor``), or ``on_abort`` is not callable or is
            ``async`` for a plain function; or another argument has the
            wrong type.
        ValueError: ``queue_name`` is not one dramatiq accepts, or
            ``timeout`` is out of range.
        MiddlewareMissingError: The broker has no ``Abortable``.

    Example:
        >>> @abortable_actor(timeout=2000, on_abort=lambda path: print("cleanup", path))
        ... def convert(path): ...  # doctest: +SKIP

    """
    if not callable(actor_class):
        msg = f"actor_class must be an Actor class such as dramatiq.Actor, not {actor_class!r}"
        raise TypeError(msg)
    if actor_name is not None and not isinstance(actor_name, str):
        msg = f"actor_name must be a string, or None for the function's name, not {actor_name!r}"
        raise TypeError(msg)
    if actor_name is not None and not actor_name.isprintable():
        # Also rules out lone surrogates, which no broker could encode.
        msg = f"actor_name must be a printable string, not {actor_name!r}"
        raise ValueError(msg)
    if not isinstance(queue_name, str):
        msg = f"queue_name must be a string such as 'default', not {queue_name!r}"
        raise TypeError(msg)
    if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9._-]*", queue_name):
        msg = (
            "queue_name must be a letter or an underscore followed by letters, digits, dots, "
            f"dashes or underscores, as dramatiq requires, not {queue_name!r}"
        )
        raise ValueError(msg)
    if isinstance(priority, bool) or not isinstance(priority, int):
        msg = f"priority must be a whole number (lower numbers run first), not {priority!r}"
        raise TypeError(msg)
    if broker is not None and not isinstance(broker, dramatiq.Broker):
        msg = f"broker must be a dramatiq Broker, or None for the global broker, not {broker!r}"
        raise TypeError(msg)
    if not isinstance(options.get("abortable", True), bool):
        msg = f"abortable must be True or False, not {options['abortable']!r}"
        raise TypeError(msg)
    if on_abort is not None and not callable(on_abort):
        msg = f"on_abort must be a callable taking the actor's arguments, not {on_abort!r}"
        raise TypeError(msg)
    grace = None if timeout is None else to_ms(timeout, "timeout")

    def decorator(fn: Callable[..., Any]) -> Actor[Any, Any]:
        if isinstance(fn, Actor):
            msg = (
                f"abortable_actor was applied to {fn!r}, which is already a dramatiq actor: "
                "use @abortable_actor(...) instead of @dramatiq.actor, not on top of it"
            )
            raise TypeError(msg)
        if not callable(fn):
            msg = f"abortable_actor decorates a function, not {fn!r}"
            raise TypeError(msg)
        target = _check_broker(broker)
        is_async = inspect.iscoroutinefunction(fn)
        if on_abort is not None:
            if not is_async and inspect.iscoroutinefunction(on_abort):
                msg = (
                    f"on_abort {on_abort!r} is async but the actor {fn!r} is a plain "
                    "function: give it a plain function, or make the actor async def"
                )
                raise TypeError(msg)
            fn = (_async_wrapper if is_async else _sync_wrapper)(on_abort)(fn)
        actor_options = dict(options)
        actor_options.setdefault("abortable", True)
        if grace is not None:
            actor_options["abort_timeout"] = grace
        declare = dramatiq.actor(
            actor_class=actor_class,
            actor_name=actor_name,
            queue_name=queue_name,
            priority=priority,
            broker=target,
            **actor_options,
        )
        return declare(fn)

    if fn is None:
        return decorator
    return decorator(fn)
