"""Prometheus metrics, when ``prometheus-client`` is installed (``dramatiq-abort[prometheus]``).

The names, labels and units follow dramatiq's own ``Prometheus``
middleware: a ``dramatiq_`` prefix, ``queue_name`` and ``actor_name``
labels, milliseconds.  The metrics are made on first use, in the worker
process (after dramatiq's middleware has chosen prometheus-client's
multiprocess mode, so its exposition server serves them too), and
registered in prometheus-client's default registry.  Without the package
every call here returns at once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from ._request import AbortMode

_logger = logging.getLogger("dramatiq_abort")

#: Delivery latency buckets, in ms: finer than dramatiq's message durations,
#: since an abort lands in milliseconds.
BUCKETS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, float("inf"))

_lock = threading.Lock()
#: ``None`` until first use; then the two metrics, or ``False`` without prometheus-client.
_made: tuple[Any, Any] | bool | None = None


def _metrics() -> tuple[Any, Any] | None:
    global _made
    made = _made
    if made is None:
        with _lock:
            if _made is None:
                _made = _make()
            made = _made
    return made if isinstance(made, tuple) else None


def _make() -> tuple[Any, Any] | bool:
    try:
        import prometheus_client as prom
    except ImportError:
        return False
    try:
        requests = prom.Counter(
            "dramatiq_abort_requests_total",
            "Abort requests seen by workers, by mode and outcome.",
            ["queue_name", "actor_name", "mode", "outcome"],
        )
        latency = prom.Histogram(
            "dramatiq_abort_delivery_latency_milliseconds",
            "Time from abort() to the worker running the message receiving the request.",
            ["queue_name", "actor_name"],
            buckets=BUCKETS,
        )
    except ValueError as exc:  # already registered by something else: don't fight it
        _logger.warning("Not exporting dramatiq-abort metrics: %s", exc)
        return False
    return requests, latency


def outcome(queue: str, actor: str, mode: AbortMode, state: str) -> None:
    """Count one request of ``mode`` that reached ``state`` (received, skipped, ...)."""
    metrics = _metrics()
    if metrics is not None:
        metrics[0].labels(queue, actor, mode.value, state).inc()


def delivered(queue: str, actor: str, latency_ms: float) -> None:
    """Observe how long a request took to reach the worker running its message."""
    metrics = _metrics()
    if metrics is not None:
        metrics[1].labels(queue, actor).observe(latency_ms)
