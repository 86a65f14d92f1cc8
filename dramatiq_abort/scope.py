"""``abort_scope()``: checkpoints, cleanup callbacks and shielded critical sections."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import Any

from ._registry import REGISTRY, _Running
from .exceptions import Abort

__all__ = ["AbortScope", "abort_scope", "current_scope"]

_logger = logging.getLogger("dramatiq_abort")
_CURRENT: ContextVar[AbortScope | None] = ContextVar("dramatiq_abort_scope", default=None)


class AbortScope:
    """A block of actor code that knows about aborts; made by :func:`abort_scope`.

    Outside a running message (a plain call in a test) the scope is inert:
    ``requested`` is ``False``, ``remaining`` is ``None`` and ``check()``
    does nothing.
    """

    __slots__ = ("_callbacks", "_entry", "_shield", "_token")

    def __init__(self, *, shield: bool = False) -> None:
        if not isinstance(shield, bool):
            msg = f"shield must be True or False, not {shield!r}"
            raise TypeError(msg)
        self._shield = shield
        self._entry: _Running | None = None
        self._callbacks: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
        self._token: Token[AbortScope | None] | None = None

    def __repr__(self) -> str:
        message = self._entry.message_id if self._entry is not None else None
        return (
            f"<AbortScope message={message!r} shield={self._shield} "
            f"requested={self.requested} remaining={self.remaining} reason={self.reason!r}>"
        )

    @property
    def shield(self) -> bool:
        """Whether a due ``Abort`` is held back until the block exits."""
        return self._shield

    @property
    def message_id(self) -> str | None:
        """The id of the message this scope belongs to, or ``None`` outside a worker."""
        return None if self._entry is None else self._entry.message_id

    @property
    def requested(self) -> bool:
        """Whether an abort was requested for the current message."""
        return self.remaining is not None

    @property
    def remaining(self) -> float | None:
        """Milliseconds left before ``Abort`` is forced, or ``None`` without a request."""
        entry = self._entry
        return None if entry is None else REGISTRY.remaining_ms(entry)

    @property
    def reason(self) -> str | None:
        """The reason given to ``abort(reason=...)`` once an abort was requested, else ``None``."""
        entry = self._entry
        if entry is None or REGISTRY.remaining_ms(entry) is None:
            return None
        request = entry.request
        return None if request is None else request.reason

    def check(self) -> None:
        """Raise ``Abort`` now if an abort was requested: a cooperative checkpoint.

        Raises:
            Abort: An abort was requested, whatever grace was left.
        """
        if self._entry is not None:
            REGISTRY.abort_now(self._entry)

    def callback(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        """Register ``fn(*args, **kwargs)`` to run if the block is left because of an abort.

        Callbacks run last registered first; one that raises is logged and
        the others still run.
        """
        if not callable(fn):
            msg = f"callback needs a callable, not {fn!r}"
            raise TypeError(msg)
        self._callbacks.append((fn, args, kwargs))

    def __enter__(self) -> AbortScope:
        if self._token is not None:
            msg = f"{self!r} is already active; make a new abort_scope() for each block"
            raise RuntimeError(msg)
        self._entry = REGISTRY.current()
        if self._shield and self._entry is not None:
            REGISTRY.shield_enter(self._entry)
        self._token = _CURRENT.set(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token, self._token = self._token, None
        if token is not None:
            _CURRENT.reset(token)
        held: Abort | None = None
        if self._shield and self._entry is not None:
            try:
                REGISTRY.shield_exit(self._entry)
            except Abort as raised:
                held = raised
        if held is not None or self._left_by_abort(exc):
            self._run_callbacks()
        if held is not None:
            raise held

    def _left_by_abort(self, exc: BaseException | None) -> bool:
        if isinstance(exc, Abort):
            return True
        # In an async def actor an abort ends as a cancellation once the
        # coroutine outlived its cleanup time (see _async).
        entry = self._entry
        return isinstance(exc, asyncio.CancelledError) and entry is not None and entry.delivered

    async def __aenter__(self) -> AbortScope:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def _run_callbacks(self) -> None:
        while self._callbacks:
            fn, args, kwargs = self._callbacks.pop()
            try:
                fn(*args, **kwargs)
            except Exception:
                _logger.exception("Abort cleanup callback %r failed.", fn)


def abort_scope(*, shield: bool = False) -> AbortScope:
    """Open a block of actor code that knows about aborts.

    Args:
        shield: Make the block a critical section: an ``Abort`` that comes
            due inside it is held back and raised as soon as the block exits.

    Returns:
        An :class:`AbortScope` to use with ``with`` (or ``async with``).

    Example:
        >>> with abort_scope() as scope:  # doctest: +SKIP
        ...     scope.callback(os.remove, "partial.csv")
        ...     for chunk in chunks:
        ...         scope.check()
        ...         write(chunk)
    """
    return AbortScope(shield=shield)


def current_scope() -> AbortScope | None:
    """Return the innermost active scope of the running message, if any."""
    scope = _CURRENT.get()
    # An Abort landing inside a scope's own __enter__/__exit__ can leave it in
    # the worker thread's context; it belongs to a message that has ended.
    if scope is None or scope._token is None or scope._entry is not REGISTRY.current():
        return None
    return scope
