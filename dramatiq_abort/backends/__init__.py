"""Event backends: in memory (:class:`StubBackend`), :class:`RedisBackend` and PostgreSQL.

``RedisBackend`` and ``PostgresBackend`` are imported on first use, so
redis-py and psycopg are only needed by those who use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .stub import StubBackend

if TYPE_CHECKING:
    from .postgres import PostgresBackend
    from .redis import RedisBackend

__all__ = ["PostgresBackend", "RedisBackend", "StubBackend"]


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
    if name == "PostgresBackend":
        try:
            from .postgres import PostgresBackend
        except ImportError as exc:
            if exc.name not in ("psycopg", "psycopg_pool"):
                raise
            msg = (
                f"backends.PostgresBackend needs psycopg 3 and psycopg-pool ({exc.name} is "
                "missing): pip install 'dramatiq-abort[postgres]'"
            )
            raise ImportError(msg, name=exc.name) from exc
        return PostgresBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
