"""Type-level checks of the public API: mypy checks this module, pytest never runs it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import dramatiq
from typing_extensions import assert_type

from dramatiq_abort import (
    Abort,
    Abortable,
    AbortHandle,
    AbortMode,
    AbortState,
    AbortStatus,
    Event,
    EventBackend,
    abort,
    abort_requested,
    abort_status,
    backends,
)


def check_signatures(broker: dramatiq.Broker) -> None:
    """Every public call with the types users pass."""
    backend: EventBackend = backends.StubBackend()
    redis_backend = backends.RedisBackend.from_url("redis://localhost:6379/0", namespace="x:")
    assert_type(redis_backend, backends.RedisBackend)
    cluster_backend = backends.RedisBackend.from_url("redis://localhost:7000", cluster=True)
    assert_type(cluster_backend, backends.RedisBackend)
    pg_backend = backends.PostgresBackend.from_url("postgresql://localhost/app", namespace="x")
    assert_type(pg_backend, backends.PostgresBackend)
    pg_backend.create_tables()
    pg_backend.close()
    middleware = Abortable(backend=backend, abortable=True, abort_ttl=90_000)
    broker.add_middleware(middleware)
    handle = abort("id", reason="user cancelled")
    assert_type(handle, AbortHandle)
    assert_type(handle.wait(5000), AbortStatus | None)
    assert_type(handle.wait(timedelta(seconds=5)), AbortStatus | None)
    status = abort_status("id", middleware)
    assert_type(status, AbortStatus | None)
    if status is not None:
        assert_type(status.state, AbortState)
        assert_type(status.final, bool)
        assert_type(status.to_dict(), dict[str, Any])
    assert_type(
        backends.StubBackend(status_ttl=timedelta(hours=1)).read_status(["id"]),
        list[dict[str, Any] | None],
    )
    abort("id", middleware, 1000, AbortMode.CANCEL, 0)
    abort("id", abort_ttl=timedelta(hours=1), abort_timeout=timedelta(seconds=2))
    abort("id", mode="cancel")
    assert_type(abort_requested(), float | None)
    assert_type(abort_requested("id", middleware), float | None)
    assert_type(backend.poll("abort:id"), Event | None)
    assert_type(backend.wait_many(["abort:id"], 100), Event | None)
    backend.notify([Event("abort:id", {"mode": "abort"})], ttl=1000)
    try:
        pass
    except Abort as exc:
        assert_type(exc, Abort)
        assert_type(exc.reason, str | None)
