"""Event backends: the in-memory :class:`StubBackend` and the :class:`RedisBackend`.

``RedisBackend`` is imported on first use, so redis-py is only needed by
those who use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .stub import StubBackend

if TYPE_CHECKING:
    from .redis import RedisBackend

__all__ = ["RedisBackend", "StubBackend"]


def __getattr__(name: str) -> Any:
    if name == "RedisBackend":
        try:
            from .redis import RedisBackend
        except ImportError as exc:
            if exc.name != "redis":
                raise
            msg = "backends.RedisBackend needs redis-py: pip install 'dramatiq-abort[redis]'"
            raise ImportError(msg, name="redis") from exc
        return RedisBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
