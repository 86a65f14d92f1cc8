"""Prometheus metrics of the worker: with prometheus-client, without it, in multiprocess mode."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import dramatiq
from dramatiq import Worker

from conftest import WAIT, Hold, join
from dramatiq_abort import Abortable, AbortState, abort, backends

StartWorker = Callable[..., Worker]

REQUESTS = "dramatiq_abort_requests_total"
LATENCY_COUNT = "dramatiq_abort_delivery_latency_milliseconds_count"
MODES = ("abort", "cancel")
OUTCOMES = ("received", "skipped", "interrupted", "too_late")


def test_worker_counts_requests_by_mode_and_outcome(
    stub_broker: dramatiq.Broker, queue_name: str, start_worker: StartWorker
) -> None:
    """A cancelled pending message and an aborted running one each count once, with their labels."""
    import prometheus_client  # a test dependency: its absence must fail, not skip

    registry = prometheus_client.REGISTRY
    stub_broker.add_middleware(Abortable(backend=backends.StubBackend()))
    hold = Hold()

    @dramatiq.actor(broker=stub_broker, queue_name=queue_name, max_retries=0)
    def counted(name: str) -> None:
        hold.run(name)

    def sample(name: str, **labels: str) -> float:
        labels = {"queue_name": queue_name, "actor_name": "counted", **labels}
        return registry.get_sample_value(name, labels) or 0.0

    def requests() -> dict[tuple[str, str], float]:
        return {(m, o): sample(REQUESTS, mode=m, outcome=o) for m in MODES for o in OUTCOMES}

    # The registry is process-wide: compare with what it held before.
    before, latency_before = requests(), sample(LATENCY_COUNT)
    pending = counted.send("pending")
    cancelled = abort(pending.message_id, mode="cancel")
    worker = start_worker(stub_broker)
    running = counted.send("running")
    hold.wait("started", "running")
    aborted = abort(running.message_id)
    hold.wait("ended", "running")
    skipped_status, interrupted_status = cancelled.wait(WAIT * 1000), aborted.wait(WAIT * 1000)
    join(stub_broker, queue_name, worker)
    assert skipped_status is not None
    assert skipped_status.state is AbortState.SKIPPED
    assert interrupted_status is not None
    assert interrupted_status.state is AbortState.INTERRUPTED

    after = requests()
    grown = {key: after[key] - before[key] for key in after if after[key] != before[key]}
    assert grown == {
        ("cancel", "skipped"): 1.0,
        ("abort", "received"): 1.0,
        ("abort", "interrupted"): 1.0,
    }
    assert sample(LATENCY_COUNT) - latency_before == 1.0


def run_child(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter of this venv; fail with its output if it fails."""
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PRELUDE) + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert child.returncode == 0, f"child failed:\n{child.stdout}\n{child.stderr}"
    return child


#: The child's common part: a StubBroker worker whose one running message it aborts.
PRELUDE = """
    import sys, threading

    def abort_one_running_message(extra_middleware=()):
        import dramatiq
        from dramatiq import Worker
        from dramatiq.brokers.stub import StubBroker
        from dramatiq_abort import Abort, Abortable, AbortState, abort, backends

        broker = StubBroker()
        for middleware in extra_middleware:
            broker.add_middleware(middleware)
        broker.add_middleware(Abortable(backend=backends.StubBackend()))
        broker.emit_after("process_boot")
        dramatiq.set_broker(broker)
        started, outcome = threading.Event(), []

        @dramatiq.actor(broker=broker, queue_name="metered", max_retries=0)
        def metered():
            started.set()
            try:
                for _ in range(7500):  # 15 s of work in slices, so Abort can land
                    threading.Event().wait(0.002)
                outcome.append("ran out of time")
            except Abort:
                outcome.append("aborted")
                raise

        worker = Worker(broker, worker_threads=1, worker_timeout=50)
        worker.start()
        try:
            message = metered.send()
            assert started.wait(15), "the message never started"
            status = abort(message.message_id, reason="metered").wait(15_000)
            broker.join("metered", fail_fast=False, timeout=15_000)
            worker.join()
        finally:
            worker.stop()
        assert outcome == ["aborted"], outcome
        assert status is not None and status.state is AbortState.INTERRUPTED, status
"""


def test_without_prometheus_client_aborts_work_and_nothing_is_exported() -> None:
    """With prometheus-client unimportable the abort still works and no metric is made."""
    run_child(
        """
        sys.modules["prometheus_client"] = None  # as if it were not installed
        abort_one_running_message()
        from dramatiq_abort import _metrics
        assert _metrics._made is False, _metrics._made
        assert sys.modules["prometheus_client"] is None
        print("ok")
        """
    )


def test_metrics_are_shared_under_dramatiq_multiprocess_setup(tmp_path: Path) -> None:
    """Under dramatiq's Prometheus middleware the counts land in the multiprocess directory."""
    import prometheus_client  # a test dependency: its absence must fail, not skip
    from prometheus_client.multiprocess import MultiProcessCollector

    # dramatiq's Prometheus middleware reads dramatiq_prom_db when imported
    # and points PROMETHEUS_MULTIPROC_DIR at it on process boot.
    run_child(
        """
        import os
        from dramatiq.middleware.prometheus import Prometheus
        abort_one_running_message([Prometheus()])
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == os.environ["dramatiq_prom_db"]
        """,
        env={"dramatiq_prom_db": str(tmp_path)},
    )
    registry = prometheus_client.CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    labels = {"queue_name": "metered", "actor_name": "metered", "mode": "abort"}
    assert registry.get_sample_value(REQUESTS, {**labels, "outcome": "received"}) == 1.0
    assert registry.get_sample_value(REQUESTS, {**labels, "outcome": "interrupted"}) == 1.0
    assert (
        registry.get_sample_value(LATENCY_COUNT, {"queue_name": "metered", "actor_name": "metered"})
        == 1.0
    )
