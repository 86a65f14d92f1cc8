"""Type-level checks of the toolkit: mypy checks this module, pytest never runs it.

Each ``# type: ignore[...]`` line is a call a type checker must reject:
``mypy --strict`` turns on ``warn_unused_ignores``, so if an actor's
parameter types were lost (``Actor[..., Any]``) those ignores would be
unused and mypy would fail.  The functions whose actor type is asserted
exactly take positional-only parameters, because ``assert_type`` also
compares parameter names (``Actor[[int], str]`` has none).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import dramatiq
from typing_extensions import assert_type

from dramatiq_abort import AbortScope, abort_scope, abortable_actor, current_scope, guarded_exec


def render(x: int, /) -> str:
    """A plain function to make actors of."""
    return str(x)


async def fetch(x: int, /) -> str:
    """An ``async def`` function to make actors of."""
    return str(x)


def forget(x: int) -> None:
    """A plain abort handler taking the actors' arguments."""


async def forget_later(x: int) -> None:
    """An async abort handler taking the actors' arguments."""


def check_abortable_actor_keeps_types(broker: dramatiq.Broker) -> None:
    """Every call form gives an actor with the function's parameter and return types."""

    @abortable_actor
    def bare(x: int, /) -> str:
        return str(x)

    @abortable_actor(timeout=2000)
    def configured(x: int, /) -> str:
        return str(x)

    assert_type(bare, dramatiq.Actor[[int], str])
    assert_type(configured, dramatiq.Actor[[int], str])
    assert_type(abortable_actor(render), dramatiq.Actor[[int], str])
    assert_type(
        abortable_actor(
            actor_name="render",
            queue_name="renders",
            priority=10,
            broker=broker,
            timeout=timedelta(seconds=5),
            on_abort=forget,
            abortable=True,
            max_retries=0,
        )(render),
        dramatiq.Actor[[int], str],
    )
    assert_type(abortable_actor(fetch), dramatiq.Actor[[int], str])
    assert_type(
        abortable_actor(timeout=0.5, on_abort=forget_later)(fetch), dramatiq.Actor[[int], str]
    )
    assert_type(bare(1), str)
    assert_type(bare.send(1), dramatiq.Message[str])
    assert_type(configured.send_with_options(args=(1,), abortable=False), dramatiq.Message[str])


def check_abortable_actor_rejects_wrong_arguments() -> None:
    """Sending or calling an actor with wrong arguments is a type error."""

    @abortable_actor
    def bare(x: int) -> str:
        return str(x)

    @abortable_actor(timeout=timedelta(seconds=1), on_abort=forget)
    def configured(x: int) -> str:
        return str(x)

    async_actor = abortable_actor(fetch)
    assert_type(bare.send(x=1), dramatiq.Message[str])
    assert_type(configured.send(1), dramatiq.Message[str])
    bare.send("1")  # type: ignore[arg-type]
    bare.send(y=1)  # type: ignore[call-arg]
    configured.send("1")  # type: ignore[arg-type]
    async_actor.send("1")  # type: ignore[arg-type]
    bare("1")  # type: ignore[arg-type]


def check_abort_scope() -> None:
    """``abort_scope`` and its scope's members have precise types."""
    assert_type(abort_scope(), AbortScope)
    with abort_scope() as scope:
        assert_type(scope, AbortScope)
        assert_type(scope.requested, bool)
        assert_type(scope.remaining, float | None)
        assert_type(scope.message_id, str | None)
        assert_type(scope.shield, bool)
        assert_type(scope.check(), None)
        assert_type(scope.callback(forget, 1), None)
        scope.callback(print, "cleaning up", sep=" ")
        with abort_scope(shield=True) as critical:
            assert_type(critical, AbortScope)
    assert_type(current_scope(), AbortScope | None)


async def check_async_abort_scope() -> None:
    """``async with abort_scope()`` gives an ``AbortScope`` too."""
    async with abort_scope(shield=False) as scope:
        assert_type(scope, AbortScope)


async def check_guarded_exec() -> None:
    """guarded_exec() yields the asyncio Process of the child."""
    async with guarded_exec("true", interrupt_grace=timedelta(seconds=1)) as process:
        assert_type(process, asyncio.subprocess.Process)
