"""Seeded races between abort() and a worker process starting, finishing or retrying a message.

Each test draws its schedule (modes, delays) from ``random.Random`` seeded
with ``FAULTS_SEED`` (a fixed default), so a failure can be replayed with
the same schedule; the machine's timing still varies from run to run, and
the checks hold for every interleaving.  Times are ``time.monotonic()``,
comparable between processes on Linux.

The guarantee under test, as the docs state it: **an abort that returned
before the worker started the message always skips it**, where "started"
is the delivery reaching the worker's ``before_process_message``; and an
``ABORT`` that returned before the actor's code began never lets it
complete.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

from faultkit import Scenario, report, scenario

SEED = int(os.environ.get("FAULTS_SEED", "20261125"))
#: How long each raced message's actor runs, in seconds.
HOLD = 0.3
#: An ABORT that returned while the actor still had this much work left
#: (seconds) must interrupt it; delivery takes milliseconds.
MARGIN = 0.25


def _first(world: Scenario, ev: str, name: str) -> dict[str, Any] | None:
    steps = world.log.of(ev, name)
    return steps[0] if steps else None


def test_abort_racing_the_start_skips_whenever_it_returned_first(
    redis_base_url: str, tmp_path: Path
) -> None:
    """Aborts sent 0-8 ms after each message: each ends exactly as its timing allows.

    Modes are drawn among cancel, abort, cancel-then-abort, abort-then-cancel
    and abort twice.  For every message: it never runs twice; a request that
    returned before the delivery reached the worker skips it; an abort (in
    any order with a cancel) that returned before the actor began, or while
    it had at least ``MARGIN`` left to run, ends it as aborted.  Control
    messages sent in between are never touched.
    """
    rng = random.Random(SEED)
    plans = ["cancel", "abort", "cancel+abort", "abort+cancel", "abort+abort"]
    raced: dict[str, tuple[str, list[tuple[str, float]]]] = {}
    controls: list[str] = []
    with scenario(redis_base_url, tmp_path) as world:
        worker = world.worker(threads=8)
        for i in range(240):
            name = f"race-{i}"
            plan = rng.choice(plans)
            delay = rng.uniform(0, 0.008)
            message = world.client.send("hold", name, HOLD)
            time.sleep(delay)  # the drawn schedule, not a wait for anything
            returns = []
            for mode in plan.split("+"):
                returns.append((mode, world.client.abort(message.message_id, mode=mode)))
            raced[name] = (plan, returns)
            if i % 4 == 0:
                controls.append(f"control-{i}")
                world.client.send("hold", controls[-1], 0.005)
        world.log.wait(lambda s: s["ev"] in ("end", "skipped"), count=len(raced) + len(controls))
        worker.terminate()
        assert worker.wait(30) == 0
        world.log.drain()

    outcomes = world.log.outcomes()
    starts = world.log.counts("start")
    tally = {"skipped": 0, "aborted_at_entry": 0, "interrupted": 0, "completed": 0}
    for name, (plan, returns) in raced.items():
        where = f"{name} ({plan}, seed {SEED})"
        assert starts[name] <= 1, f"{where} ran twice"
        assert len(outcomes[name]) == 1, f"{where} ended {outcomes[name]}"
        outcome = outcomes[name][0]
        pre = _first(world, "pre", name)
        start = _first(world, "start", name)
        assert pre is not None
        first_return = returns[0][1]
        if first_return < pre["t"]:
            assert outcome == "skipped", f"{where}: request returned first, yet {outcome}"
        abort_returns = [t for mode, t in returns if mode == "abort"]
        # No start step: Abort was raised as the guard entered the actor.
        in_time = abort_returns and (
            start is None or min(abort_returns) < start["t"] + HOLD - MARGIN
        )
        if in_time and outcome != "skipped":
            assert outcome == "Abort", f"{where}: abort returned in time, yet {outcome}"
        if plan == "cancel" and outcome != "skipped":
            assert outcome == "done", f"{where}: a cancel interrupted a running message"
        if outcome == "Abort" and start is None:
            tally["aborted_at_entry"] += 1
        else:
            tally[{"skipped": "skipped", "Abort": "interrupted"}.get(outcome, "completed")] += 1
    assert all(outcomes[name] == ["done"] for name in controls), "a control message was touched"
    assert tally["skipped"] and tally["interrupted"], f"the race was not exercised: {tally}"
    report(
        "abort racing the start",
        seed=SEED,
        messages=len(raced) + len(controls),
        **tally,
        controls_done=len(controls),
        ran_twice=0,
    )


def test_abort_racing_the_finish_never_touches_anything_else(
    redis_base_url: str, tmp_path: Path
) -> None:
    """Aborts landing around the last instants of a 20 ms message: it ends done or aborted.

    Each raced message is followed by a control message on the same worker
    thread; the control always ends done, so an Abort never leaks into the
    next message.
    """
    rng = random.Random(SEED + 1)
    names = []
    with scenario(redis_base_url, tmp_path) as world:
        worker = world.worker(threads=1)
        for i in range(150):
            name = f"finish-{i}"
            names.append(name)
            message = world.client.send("hold", name, 0.02)
            world.client.send("hold", f"next-{i}", 0.002)
            world.log.wait_for("start", name)
            time.sleep(rng.uniform(0.005, 0.035))  # the drawn schedule
            world.client.abort(message.message_id)
        world.log.wait_for("end", f"next-{len(names) - 1}")
        worker.terminate()
        assert worker.wait(30) == 0
        world.log.drain()

    outcomes = world.log.outcomes()
    ends = [outcomes[name] for name in names]
    assert all(end in (["done"], ["Abort"]) for end in ends), f"seed {SEED + 1}: {ends}"
    assert all(outcomes[f"next-{i}"] == ["done"] for i in range(len(names)))
    aborted = sum(end == ["Abort"] for end in ends)
    assert 0 < aborted < len(names), f"the race was not exercised ({aborted} aborted)"
    report(
        "abort racing the finish",
        seed=SEED + 1,
        messages=2 * len(names),
        aborted=aborted,
        finished=len(names) - aborted,
        next_message_touched=0,
    )


def test_abort_racing_a_retry_stops_every_later_delivery(
    redis_base_url: str, tmp_path: Path
) -> None:
    """Aborts around a failing first attempt and its retry: no delivery after the abort runs.

    The actor fails its first attempt after 10 ms and dramatiq retries it
    within 1-20 ms.  Whatever the order, a delivery that reached the worker
    after abort() returned is skipped, and the message never completes if
    the abort returned before its last attempt began.
    """
    rng = random.Random(SEED + 2)
    returned: dict[str, float] = {}
    with scenario(redis_base_url, tmp_path) as world:
        worker = world.worker(threads=4)
        for i in range(120):
            name = f"retry-{i}"
            message = world.client.send("flaky", name, 0.01, 1)
            world.log.wait_for("start", name)
            time.sleep(rng.uniform(0, 0.04))  # the drawn schedule
            returned[name] = world.client.abort(message.message_id)
        for name in returned:
            world.log.wait(
                lambda s, name=name: (
                    s.get("name") == name
                    and (
                        s["ev"] == "skipped"
                        or (s["ev"] == "end" and s["outcome"] in ("done", "Abort"))
                    )
                )
            )
        worker.terminate()
        assert worker.wait(30) == 0
        world.log.drain()

    tally = {"aborted_first_attempt": 0, "retry_skipped": 0, "retry_aborted": 0, "done": 0}
    for name, when in returned.items():
        where = f"{name} (seed {SEED + 2})"
        deliveries = world.log.of("pre", name)
        starts = world.log.of("start", name)
        outcomes = world.log.outcomes()[name]
        late = [s for s in deliveries if s["t"] > when]
        assert not [s for s in starts if s["t"] > when], f"{where}: a delivery after the abort ran"
        assert len(starts) <= 2, f"{where}: ran {len(starts)} times"
        if late:
            assert outcomes[-1] == "skipped", f"{where}: {outcomes}"
        if outcomes[-1] == "done":
            assert starts[-1]["t"] < when, f"{where}: completed although aborted first"
        key = {
            ("Abort",): "aborted_first_attempt",
            ("RuntimeError", "skipped"): "retry_skipped",
            ("RuntimeError", "Abort"): "retry_aborted",
            ("RuntimeError", "done"): "done",
        }.get(tuple(outcomes))
        assert key is not None, f"{where}: unexpected outcomes {outcomes}"
        tally[key] += 1
    report("abort racing a retry", seed=SEED + 2, messages=len(returned), **tally)
