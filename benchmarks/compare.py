"""Compare this project with dramatiq-abort 1.2.1: same machine, same run, one table.

Both versions are imported as ``dramatiq_abort``, so each gets its own
virtualenv, and ``benchmarks/_runner.py`` (which only uses the API the two
share) runs the same scenarios in each.  For every scenario the runs
alternate: this project, 1.2.1, this project, 1.2.1, ...  Each run is a
fresh process with a fresh ``dramatiq.Worker`` (a ``RedisBroker``, 2
threads) in a child process; the client that calls ``abort()`` runs in
the parent.  Scenarios:

1. **latency**: abort a running CPU-bound actor as soon as it started, at
   a random moment of its first second, and in steady state (after 1 to
   1.5 s); ms from ``abort()`` returning to ``Abort`` caught in the actor.
2. **graceful**: ``abort_timeout`` of 100, 500 and 2000 ms; the error of
   the moment ``Abort`` is caught against the deadline (``abort()``
   returning + ``abort_timeout``), and how soon the actor's
   ``abort_requested()`` sees the request.
3. **cancel**: 1,000 messages queued while no worker runs, 500 of them
   cancelled (``AbortMode.CANCEL``); how many cancelled ones ran (must be
   0), and how long the worker takes to drain the queue.
4. **throughput**: 5,000 no-op messages drained without the middleware,
   with it, with it, without it (the next round in the other order; four
   rounds), after an uncounted warm-up drain: msg/s and the worker
   process's CPU time per message, medians over the drains; and the Redis
   commands the middleware sends per message (``INFO commandstats`` of a
   Redis server that holds only the event backend).
   The same with messages that keep the CPU busy 1 ms each (1,000 per
   drain), the ``busy`` scenario: what the middleware costs real work.
5. **hooks**: the per-message cost of the middleware's hooks alone: the
   same alternation draining 20,000 no-op messages on a ``StubBroker``
   (in memory: no broker round trips) with one worker thread, in one
   process; CPU per message with the middleware minus without it (its
   reads of the event backend, on Redis, included).

In scenarios 1 and 2 the client idles a random time (up to 1 s) before
each message, so messages start at random moments of 1.2.1's
once-a-second watcher loop, as real traffic would.  Consumers prefetch
100 messages (``dramatiq_queue_prefetch``): with dramatiq's default (2 per
thread) a consumer of no-op messages spends most of its time asleep in
its back-off, and the middleware's cost would not show.

The virtualenvs live under ``--venv-dir``: ``dramatiq-abort-1.2.1`` gets
``dramatiq-abort[redis]==1.2.1`` and the newest dramatiq and redis-py
that pip resolves for it (built once, then reused; ``--rebuild`` to
refresh); ``dramatiq-abort-this`` gets this working tree with the same
dramatiq and redis-py versions (reinstalled on every run), so the library
is the only difference.  Each middleware runs with its defaults.

Setup: the broker on ``REDIS_URL`` (default ``redis://127.0.0.1:6379``),
database 15; the event backend on a throwaway ``redis-server`` started
here (database 15), so its command counts are the middleware's alone.
Every run uses its own namespaces and deletes its keys at the end.

Run it from the repository root (``nox -s bench -- compare`` does the same)::

    python benchmarks/compare.py            # about 8 minutes
    python benchmarks/compare.py --quick    # about 3 minutes, fewer samples
    python benchmarks/compare.py --quick --only cancel throughput
    python benchmarks/compare.py --plot docs/latency.png   # and draw the latencies

The first run also builds the virtualenvs (about 30 s).  It prints
figures and checks nothing: it exits 0 when it could measure, 1 when it
could not (no Redis, a failed install, a run that broke).

Note:
    Percentiles are nearest-rank over every sample of every round, so p99
    of fewer than 100 samples is the largest one.  An actor that never saw
    ``Abort`` counts as an infinite latency.  The ratio is this project
    divided by 1.2.1; a dash where it means nothing (a zero, a negative
    error).  A drain varies by 10 % or more from one run to the next on a
    busy 2-core machine.  The cancel drain shows the best run (other load
    only ever slows it down, as ``timeit`` advises); throughput and hooks
    compare the variants by medians over many alternating drains, and the
    notes under the table give every run's figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import redis_server_binary, throwaway_redis, with_db

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RUNNER = HERE / "_runner.py"
#: Redis database of every key the comparison writes.
DB = 15
#: The published version this project is compared with.
OLD_VERSION = "1.2.1"
THIS, OLD = "this project", OLD_VERSION
#: Seconds one run of the runner may take before it is stopped.
RUN_TIMEOUT_S = 900
#: The latency phases: runner key and label.
PHASES = {"a": "at start", "b": "random 1st s", "c": "steady 1-1.5 s"}


@dataclass(frozen=True)
class Plan:
    """How much to measure, per version, summed over the rounds."""

    rounds: int
    #: Samples per latency phase.
    latency: dict[str, int]
    #: Samples per ``abort_timeout`` (ms).
    graceful: dict[int, int]
    #: Messages queued per round of the cancel scenario (every other one cancelled).
    queued: int
    #: No-op messages per round and variant of the throughput scenario.
    messages: int
    #: Rounds of the throughput and hooks scenarios (each four drains per version).
    drain_rounds: int = 4
    #: No-op messages per drain of the hooks scenario.
    hooks_messages: int = 20_000


PLANS = {
    "default": Plan(
        rounds=2,
        latency={"a": 30, "b": 30, "c": 12},
        graceful={100: 10, 500: 10, 2000: 4},
        queued=1000,
        messages=5000,
        drain_rounds=4,
        hooks_messages=20_000,
    ),
    "quick": Plan(
        rounds=1,
        latency={"a": 10, "b": 8, "c": 4},
        graceful={100: 4, 500: 4, 2000: 2},
        queued=1000,
        messages=2000,
        drain_rounds=2,
        hooks_messages=5_000,
    ),
}
#: No-op messages drained, uncounted, before each throughput run's measured drains.
WARMUP_MESSAGES = 1000
SCENARIOS = ("latency", "graceful", "cancel", "throughput", "busy", "hooks")
#: Scenarios whose runs are drains, with ``Plan.drain_rounds`` rounds.
DRAINS = ("throughput", "busy", "hooks")
#: The runner's scenario behind each of these (``busy`` is a throughput drain).
RUNNER_SCENARIO = {"busy": "throughput"}
#: Milliseconds of CPU work per message in the ``busy`` drains, and their messages.
BUSY_MS, BUSY_MESSAGES = 1.0, 1000


def say(text: str = "") -> None:
    """Print a line at once, so progress shows while the comparison runs."""
    print(text, flush=True)


# -- virtualenvs -----------------------------------------------------------------


def venv_python(path: Path) -> Path:
    """Return the interpreter of the virtualenv at ``path``."""
    return path / "bin" / "python"


def pip_install(python: Path, *requirements: str) -> None:
    """Install ``requirements`` with the virtualenv's pip; raise with pip's output if it fails."""
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *requirements]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        output = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"pip install {' '.join(requirements)} failed:\n{output}")


def installed(python: Path, *names: str) -> list[str]:
    """Return the versions of the distributions ``names`` in a virtualenv."""
    code = "import sys, importlib.metadata as m; print(*(m.version(n) for n in sys.argv[1:]))"
    done = subprocess.run(
        [str(python), "-c", code, *names], capture_output=True, text=True, check=True
    )
    return done.stdout.split()


def fresh_venv(path: Path) -> Path:
    """Create an empty virtualenv at ``path`` (replacing what is there); return its python."""
    shutil.rmtree(path, ignore_errors=True)
    # The interpreter this script runs on may itself be a virtualenv's (nox):
    # venv builds the new one on its base installation.
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return venv_python(path)


def prepare_old_venv(venv_dir: Path, rebuild: bool) -> Path:
    """Build (once) the virtualenv with dramatiq-abort 1.2.1; return its python."""
    old_dir = venv_dir / f"dramatiq-abort-{OLD_VERSION}"
    marker = old_dir / "compare-ready"
    if rebuild or not marker.exists():
        say(f"  building {old_dir} ...")
        fresh_venv(old_dir)
        pip_install(venv_python(old_dir), f"dramatiq-abort[redis]=={OLD_VERSION}", "dramatiq")
        marker.write_text("built by benchmarks/compare.py\n")
    return venv_python(old_dir)


def prepare_this_venv(venv_dir: Path, rebuild: bool, like: Path) -> tuple[Path, list[str]]:
    """Install this working tree, with ``like``'s dramatiq and redis-py; return python, notes."""
    this_dir = venv_dir / "dramatiq-abort-this"
    this_python = venv_python(this_dir)
    if rebuild or not this_python.exists():
        say(f"  building {this_dir} ...")
        fresh_venv(this_dir)
    say(f"  installing this working tree into {this_dir} ...")
    dramatiq_version, redis_version = installed(like, "dramatiq", "redis")
    pins = [f"dramatiq=={dramatiq_version}", f"redis=={redis_version}"]
    try:
        pip_install(this_python, f"{REPO}[redis]", *pins)
    except RuntimeError as exc:
        pip_install(this_python, f"{REPO}[redis]")
        reason = str(exc).splitlines()[-1]
        return this_python, [f"this project cannot use {' and '.join(pins)} ({reason})"]
    return this_python, []


# -- Redis -----------------------------------------------------------------------


# -- running the runner ----------------------------------------------------------


@dataclass
class Side:
    """One virtualenv: its interpreter, what it holds, and what its runs returned."""

    label: str
    python: Path
    info: dict[str, Any] = field(default_factory=dict)
    #: Scenario name -> the results of its rounds.
    results: dict[str, list[Any]] = field(default_factory=dict)
    deleted_keys: int = 0
    worker: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Urls:
    """Where the broker and the event backend live."""

    broker: str
    backend: str
    isolated: bool


def run_runner(side: Side, scenario: str, params: dict[str, Any], urls: Urls) -> dict[str, Any]:
    """Run one scenario in ``side``'s virtualenv; return the JSON it printed."""
    command = [str(side.python), str(RUNNER), scenario, "--params", json.dumps(params)]
    command += ["--broker-url", urls.broker, "--backend-url", urls.backend]
    if urls.isolated:
        command.append("--isolated")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its worker child too can be stopped on a time-out
    )
    try:
        out, err = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise RuntimeError(f"{side.label}: {scenario} took over {RUN_TIMEOUT_S} s") from None
    lines = out.strip().splitlines()
    if process.returncode != 0 or not lines:
        tail = "\n".join(err.strip().splitlines()[-30:])
        raise RuntimeError(f"{side.label}: {scenario} failed ({process.returncode}):\n{tail}")
    output: dict[str, Any] = json.loads(lines[-1])
    return output


def split(total: int, rounds: int) -> int:
    """Samples per round so that ``rounds`` rounds give at least ``total``."""
    return max(1, math.ceil(total / rounds))


def scenario_params(scenario: str, plan: Plan, round_: int) -> dict[str, Any]:
    """The runner's parameters for one round of ``scenario``."""
    if scenario == "latency":
        return {phase: split(n, plan.rounds) for phase, n in plan.latency.items()}
    if scenario == "graceful":
        return {str(t): split(n, plan.rounds) for t, n in plan.graceful.items()}
    if scenario == "cancel":
        return {"queued": plan.queued}
    # ABBA, then BAAB: a drift during the run weighs on both variants alike.
    none, with_ = "none", "abortable"
    variants = [none, with_, with_, none] if round_ % 2 == 0 else [with_, none, none, with_]
    if scenario == "hooks":
        return {"messages": plan.hooks_messages, "variants": variants, "warmup": 2000}
    if scenario == "busy":
        return {"messages": BUSY_MESSAGES, "variants": variants, "warmup": 200, "work_ms": BUSY_MS}
    return {"messages": plan.messages, "variants": variants, "warmup": WARMUP_MESSAGES}


def run_all(sides: list[Side], plan: Plan, urls: Urls, scenarios: list[str]) -> None:
    """Run every round of every scenario, alternating the sides."""
    for scenario in scenarios:
        say()
        say(f"{scenario}:")
        rounds = plan.drain_rounds if scenario in DRAINS else plan.rounds
        for round_ in range(rounds):
            params = scenario_params(scenario, plan, round_)
            for side in sides:
                started = time.monotonic()
                output = run_runner(side, RUNNER_SCENARIO.get(scenario, scenario), params, urls)
                result = output["result"]
                side.results.setdefault(scenario, []).append(result)
                side.deleted_keys += output["deleted_keys"]
                if scenario == "throughput":
                    if not side.worker:  # a run with the middleware tells its setup
                        side.worker = runs_of(side, "abortable")[0]["worker"]
                elif scenario != "hooks":
                    side.worker = result["worker"]
                say(
                    f"  round {round_ + 1}/{rounds}  {side.label:<12} "
                    f"{time.monotonic() - started:5.1f} s"
                )


# -- figures ---------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Return the nearest-rank ``p``-th percentile of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def latency_values(samples: list[list[float | None]], index: int = 0) -> list[float]:
    """Pick one figure of each sample; a missing latency counts as infinite."""
    return [math.inf if s[index] is None else float(s[index]) for s in samples]


@dataclass(frozen=True)
class Row:
    """One line of the table: a figure for each side."""

    scenario: str
    metric: str
    unit: str
    this: float | None
    old: float | None
    n: str = ""


def pooled(side: Side, scenario: str, key: str) -> list[list[float | None]]:
    """Every sample of ``key`` over the rounds of ``scenario``."""
    return [s for result in side.results.get(scenario, []) for s in result["samples"][key]]


def rows_for(this: Side, old: Side, plan: Plan, scenarios: list[str]) -> list[Row]:
    """Turn both sides' raw results into the table's rows."""
    rows: list[Row] = []

    def both(fn: Callable[..., float | None], *args: Any) -> tuple[float | None, float | None]:
        return fn(this, *args), fn(old, *args)

    def count(a: list[Any], b: list[Any]) -> str:
        return str(len(a)) if len(a) == len(b) else f"{len(a)}/{len(b)}"

    if "latency" in scenarios:
        calls: dict[str, list[float]] = {THIS: [], OLD: []}
        for phase, label in PHASES.items():
            mine, theirs = pooled(this, "latency", phase), pooled(old, "latency", phase)
            a, b = latency_values(mine), latency_values(theirs)
            calls[THIS] += latency_values(mine, 1)
            calls[OLD] += latency_values(theirs, 1)
            for name, p in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100)):
                rows.append(
                    Row(
                        "1 latency",
                        f"{label}: {name}",
                        "ms",
                        percentile(a, p),
                        percentile(b, p),
                        count(a, b),
                    )
                )
            lost_a, lost_b = sum(map(math.isinf, a)), sum(map(math.isinf, b))
            if lost_a or lost_b:
                rows.append(Row("1 latency", f"{label}: never aborted", "count", lost_a, lost_b))
        rows.append(
            Row(
                "1 latency",
                "abort() call: p50",
                "ms",
                percentile(calls[THIS], 50),
                percentile(calls[OLD], 50),
                count(calls[THIS], calls[OLD]),
            )
        )

    if "graceful" in scenarios:
        lags: dict[str, list[float]] = {THIS: [], OLD: []}
        for timeout in plan.graceful:
            mine, theirs = (
                pooled(this, "graceful", str(timeout)),
                pooled(old, "graceful", str(timeout)),
            )
            a = [v - timeout for v in latency_values(mine)]
            b = [v - timeout for v in latency_values(theirs)]
            lags[THIS] += latency_values(mine, 2)
            lags[OLD] += latency_values(theirs, 2)
            for name, p in (("min", 0), ("p50", 50), ("max", 100)):
                rows.append(
                    Row(
                        "2 graceful",
                        f"{timeout} ms: error {name}",
                        "ms",
                        min(a) if p == 0 else percentile(a, p),
                        min(b) if p == 0 else percentile(b, p),
                        count(a, b),
                    )
                )
        for name, p in (("p50", 50), ("max", 100)):
            rows.append(
                Row(
                    "2 graceful",
                    f"abort_requested() sees it: {name}",
                    "ms",
                    percentile(lags[THIS], p),
                    percentile(lags[OLD], p),
                    count(lags[THIS], lags[OLD]),
                )
            )

    if "cancel" in scenarios:
        mine, theirs = this.results.get("cancel", []), old.results.get("cancel", [])

        def total(results: list[dict[str, Any]], key: str) -> float:
            return float(sum(r[key] for r in results))

        def calls_of(results: list[dict[str, Any]]) -> list[float]:
            return [c for r in results for c in r["call_ms"]]

        n_cancelled = f"{int(total(mine, 'cancelled'))}"
        n_kept = f"{int(total(mine, 'queued') - total(mine, 'cancelled'))}"
        rows += [
            Row(
                "3 cancel",
                "cancelled that ran (must be 0)",
                "count",
                total(mine, "cancelled_ran"),
                total(theirs, "cancelled_ran"),
                n_cancelled,
            ),
            Row(
                "3 cancel",
                "not cancelled that ran",
                "count",
                total(mine, "kept_ran"),
                total(theirs, "kept_ran"),
                n_kept,
            ),
            Row(
                "3 cancel",
                f"drain {plan.queued} queued: best run",
                "s",
                min(r["drain_s"] for r in mine),
                min(r["drain_s"] for r in theirs),
                f"{int(total(mine, 'queued'))}",
            ),
            Row(
                "3 cancel",
                "abort(mode=CANCEL) call: p50",
                "ms",
                percentile(calls_of(mine), 50),
                percentile(calls_of(theirs), 50),
                count(calls_of(mine), calls_of(theirs)),
            ),
        ]

    if "throughput" in scenarios:

        def rate(side: Side, variant: str) -> float:
            return statistics.median(r["done"] / r["seconds"] for r in runs_of(side, variant))

        def cpu(side: Side, variant: str, scenario: str = "throughput") -> float | None:
            runs = runs_of(side, variant, scenario)
            if not runs or any("cpu_s" not in r for r in runs):
                return None
            return statistics.median(r["cpu_s"] / r["messages"] * 1e6 for r in runs)

        def added(side: Side, scenario: str = "throughput") -> float | None:
            with_, without = cpu(side, "abortable", scenario), cpu(side, "none", scenario)
            return None if with_ is None or without is None else with_ - without

        def per_message(side: Side) -> float | None:
            results = runs_of(side, "abortable")
            if any(r["commands"] is None for r in results):
                return None
            return sum(sum(r["commands"].values()) for r in results) / sum(
                r["messages"] for r in results
            )

        n = str(len(runs_of(this, "none")))
        rows += [
            Row("4 throughput", "no middleware: median", "msg/s", *both(rate, "none"), n),
            Row("4 throughput", "with Abortable: median", "msg/s", *both(rate, "abortable"), n),
            Row(
                "4 throughput",
                "with / without Abortable (medians)",
                "x",
                rate(this, "abortable") / rate(this, "none"),
                rate(old, "abortable") / rate(old, "none"),
                n,
            ),
            Row("4 throughput", "worker CPU per message, without", "us", *both(cpu, "none"), n),
            Row("4 throughput", "worker CPU per message, with", "us", *both(cpu, "abortable"), n),
            Row("4 throughput", "CPU the middleware adds per message", "us", *both(added), n),
            Row(
                "4 throughput",
                "backend commands per message",
                "cmds",
                per_message(this),
                per_message(old),
                n,
            ),
        ]

    if "busy" in scenarios:

        def busy_rate(side: Side, variant: str) -> float:
            return statistics.median(
                r["done"] / r["seconds"] for r in runs_of(side, variant, "busy")
            )

        def busy_added(side: Side) -> float:
            def cpu(variant: str) -> float:
                runs = runs_of(side, variant, "busy")
                return statistics.median(r["cpu_s"] / r["messages"] * 1e6 for r in runs)

            return cpu("abortable") - cpu("none")

        n = str(len(runs_of(this, "none", "busy")))
        label = f"{BUSY_MS:g} ms actor"
        rows += [
            Row(
                "4 throughput",
                f"{label}: with / without (medians)",
                "x",
                busy_rate(this, "abortable") / busy_rate(this, "none"),
                busy_rate(old, "abortable") / busy_rate(old, "none"),
                n,
            ),
            Row("4 throughput", f"{label}: CPU added per message", "us", *both(busy_added), n),
        ]

    if "hooks" in scenarios:

        def hooks_cpu(side: Side, variant: str) -> float | None:
            runs = runs_of(side, variant, "hooks")
            return statistics.median(r["cpu_s"] / r["messages"] * 1e6 for r in runs)

        def hooks_added(side: Side) -> float | None:
            with_, without = hooks_cpu(side, "abortable"), hooks_cpu(side, "none")
            return None if with_ is None or without is None else with_ - without

        n = str(len(runs_of(this, "none", "hooks")))
        rows += [
            Row("5 hooks", "CPU per message, without", "us", *both(hooks_cpu, "none"), n),
            Row("5 hooks", "CPU per message, with", "us", *both(hooks_cpu, "abortable"), n),
            Row("5 hooks", "the middleware's hooks alone", "us", *both(hooks_added), n),
        ]
    return rows


def runs_of(side: Side, variant: str, scenario: str = "throughput") -> list[dict[str, Any]]:
    """Every drain of ``variant`` (``"none"`` or ``"abortable"``) of ``scenario``, all rounds."""
    return [
        run
        for result in side.results.get(scenario, [])
        for run in result["runs"]
        if run["variant"] == variant
    ]


def show(value: float | None, unit: str) -> str:
    """Format a figure for the table."""
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "inf"
    if unit == "count":
        return f"{value:.0f}"
    if unit == "msg/s":
        return f"{value:,.0f}"
    if unit in ("x", "cmds"):
        return f"{value:.3f}"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}"


def ratio(this: float | None, old: float | None) -> str:
    """``this / old`` when both are positive and finite, else a dash."""
    if this is None or old is None or not (0 < this < math.inf and 0 < old < math.inf):
        return "-"
    value = this / old
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def print_table(rows: list[Row]) -> None:
    """Print the rows as one table."""
    header = ("scenario", "metric", "unit", "n", THIS, OLD, "ratio")
    cells = [
        (
            r.scenario,
            r.metric,
            r.unit,
            r.n,
            show(r.this, r.unit),
            show(r.old, r.unit),
            ratio(r.this, r.old),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    left = {0, 1, 2}

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(
            cell.ljust(w) if i in left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    say(line(header))
    say("  ".join("-" * w for w in widths))
    previous = ""
    for row in cells:
        shown = row if row[0] != previous else ("", *row[1:])
        previous = row[0]
        say(line(shown))


def commands_text(side: Side) -> str:
    """The backend's commands per message of ``side``'s throughput runs, by command."""
    results = runs_of(side, "abortable")
    if not results or any(r["commands"] is None for r in results):
        return "not counted"
    totals: dict[str, int] = {}
    for r in results:
        for name, calls in r["commands"].items():
            totals[name] = totals.get(name, 0) + calls
    messages = sum(r["messages"] for r in results)
    return ", ".join(f"{name} {calls / messages:.4f}" for name, calls in sorted(totals.items()))


def requirements_text(requires: list[str]) -> str:
    """Say what a distribution requires, leaving out its extras other than redis."""
    parts = []
    for requirement in requires:
        spec, _, marker = (part.strip() for part in requirement.partition(";"))
        if marker and '"redis"' not in marker:
            continue
        if not any(op in spec for op in "<>=!~"):
            spec += " (any version)"
        parts.append(spec + (" (with its [redis] extra)" if marker else ""))
    return ", ".join(parts) or "nothing"


def drains_text(side: Side) -> str:
    """The drain times of ``side``'s cancel runs."""
    return ", ".join(f"{r['drain_s']:.2f}" for r in side.results.get("cancel", [])) or "none"


def spread_text(side: Side) -> str:
    """The lowest and highest throughput of ``side``'s runs, per variant."""
    parts = []
    for variant, label in (("none", "no middleware"), ("abortable", "with Abortable")):
        rates = [r["done"] / r["seconds"] for r in runs_of(side, variant)]
        if rates:
            parts.append(f"{label} {min(rates):,.0f}-{max(rates):,.0f}")
    return ", ".join(parts) or "none"


def plot_latencies(this: Side, old: Side, path: Path) -> str:
    """Draw each phase's latency distribution, both versions, into ``path``; say what was done."""
    if "latency" not in this.results:
        return "no plot: the latency scenario did not run"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no plot: matplotlib is not installed (nox -s bench installs it)"
    figure, axes = plt.subplots(1, len(PHASES), figsize=(4.2 * len(PHASES), 3.6), sharey=True)
    for ax, (phase, label) in zip(axes, PHASES.items(), strict=True):
        for side, style in ((this, "-"), (old, "--")):
            values = sorted(v for v in latency_values(pooled(side, "latency", phase)))
            finite = [v for v in values if math.isfinite(v)]
            if not finite:
                continue
            shares = [(i + 1) / len(values) for i in range(len(finite))]
            ax.step([max(v, 0.05) for v in finite], shares, style, where="post", label=side.label)
        ax.set_xscale("log")
        ax.set_title(f"abort {label}")
        ax.set_xlabel("ms from abort() returning to Abort caught")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("share of aborts at most that late")
    axes[0].legend(loc="lower right")
    figure.suptitle(f"Abort latency of a CPU-bound actor: this project vs {OLD_VERSION}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"latency distributions drawn into {path}"


def print_notes(this: Side, old: Side, plan: Plan, urls: Urls, notes: list[str]) -> None:
    """Print what the table needs to be read right."""
    say()
    say("How to read it")
    for line in (
        "ratio: this project / 1.2.1; lower is better for ms, s, counts and commands, "
        "higher for msg/s and x.",
        "1 latency: ms from abort() returning (client in another process) to Abort caught "
        "in a CPU-bound actor, aborted as soon as it started, at a random moment of its "
        "first second, or after 1-1.5 s.",
        "2 graceful: error = Abort caught - (abort() returning + abort_timeout); "
        '"sees it": from abort() returning to the first non-None abort_requested() '
        "in the actor.",
        f"3 cancel: {plan.queued} queued with no worker running, every other one cancelled "
        "(AbortMode.CANCEL), then drained; n: messages over all rounds.",
        f"4 throughput: {plan.messages} no-op messages per drain, median over the drains; "
        "worker CPU: the worker process's CPU time per message; backend commands: "
        "INFO commandstats of the event backend's Redis during the drain.",
        f"4 throughput, {BUSY_MS:g} ms actor: {BUSY_MESSAGES} messages per drain that keep "
        f"the CPU busy {BUSY_MS:g} ms each, otherwise as above.",
        f"5 hooks: {plan.hooks_messages} no-op messages per drain on a StubBroker (no broker "
        "round trips), one worker thread, in one process; the middleware's hooks alone: "
        "the median CPU per message with it minus without it (its backend reads included).",
        "3 cancel shows the best drain: other load on the machine only slows a run down; "
        "the notes below give every run.",
        "Percentiles are nearest-rank over all rounds: p99 of fewer than 100 samples is the max.",
        f"Why {OLD_VERSION} looks so: its watcher thread sleeps 1 s while no message runs, "
        "else waits (BLPOP) up to 1 s on the keys of the messages running when the wait "
        "began, and raises a graceful Abort only when such a wait ends.",
    ):
        say(f"  {line}")
    say("Setup")
    for side in (this, old):
        info, worker = side.info, side.worker
        say(
            f"  {side.label}: dramatiq-abort {info['dramatiq_abort']}, dramatiq "
            f"{info['dramatiq']}, redis-py {info['redis_py']}, Python {info['python']}; "
            f"workers ran with a GIL switch interval of "
            f"{worker.get('switch_interval_ms', 0):g} ms"
        )
    same = (old.info["dramatiq"], old.info["redis_py"]) == (
        this.info["dramatiq"],
        this.info["redis_py"],
    )
    say(
        f"  dramatiq-abort {OLD_VERSION} requires {requirements_text(old.info['requires'])};"
        f" it ran on dramatiq {old.info['dramatiq']}"
        + (", the same dramatiq and redis-py as this project's." if same else ".")
    )
    say(
        f"  backend commands per message: {THIS}: {commands_text(this)}; "
        f"{OLD}: {commands_text(old)}"
    )
    say(f"  throughput of each run, msg/s: {THIS}: {spread_text(this)}; {OLD}: {spread_text(old)}")
    say(f"  cancel drain of each run, s: {THIS}: {drains_text(this)}; {OLD}: {drains_text(old)}")
    say(
        f"  worker: dramatiq.Worker with 2 threads in a child process, worker_timeout 100 "
        f"ms, prefetch {this.worker.get('prefetch', '?')}; each middleware with its defaults"
    )
    servers = this.info["servers"]
    say(f"  broker: Redis {servers['broker']} at {urls.broker}")
    say(
        f"  event backend: Redis {servers['backend']} at {urls.backend}"
        + (" (throwaway, backend only)" if urls.isolated else " (shared: commands not counted)")
    )
    for note in notes:
        say(f"  note: {note}")


# -- main ------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples: about 2 minutes")
    parser.add_argument("--rounds", type=int, help="alternations per scenario (default: 2)")
    parser.add_argument(
        "--only", nargs="+", choices=SCENARIOS, metavar="SCENARIO", help="run only these"
    )
    parser.add_argument(
        "--venv-dir",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "dramatiq-abort-compare",
        help="where the two virtualenvs live (default: ~/.cache/dramatiq-abort-compare)",
    )
    parser.add_argument("--rebuild", action="store_true", help="rebuild both virtualenvs")
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="also draw the latency distributions of both versions into this PNG "
        "(needs matplotlib)",
    )
    parser.add_argument(
        "--this-python", type=Path, help="use this interpreter for this project instead"
    )
    parser.add_argument(
        "--old-python", type=Path, help=f"use this interpreter for {OLD_VERSION} instead"
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be 1 or more, not {args.rounds}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Build the virtualenvs, run the scenarios alternately, print the table."""
    args = parse_args(argv)
    plan = PLANS["quick" if args.quick else "default"]
    if args.rounds is not None:
        plan = Plan(args.rounds, plan.latency, plan.graceful, plan.queued, plan.messages)
    scenarios = [s for s in SCENARIOS if not args.only or s in args.only]
    started = time.monotonic()
    say(f"dramatiq-abort: this project vs {OLD_VERSION}, same machine, same run")
    say(f"{os.cpu_count()} CPUs; {plan.rounds} round(s) per scenario, runs alternating")
    notes: list[str] = []
    try:
        if not (args.this_python and args.old_python):
            say(f"Virtualenvs under {args.venv_dir}:")
        old_python = args.old_python or prepare_old_venv(args.venv_dir, args.rebuild)
        this_python = args.this_python
        if this_python is None:
            this_python, notes = prepare_this_venv(args.venv_dir, args.rebuild, old_python)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        say(f"Could not prepare the virtualenvs: {exc}")
        return 1
    this, old = Side(THIS, this_python), Side(OLD, old_python)

    broker_url = with_db(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"), DB)
    with contextlib.ExitStack() as stack:
        server_url = None
        if redis_server_binary() is not None:
            server_url = stack.enter_context(throwaway_redis("abort-compare-redis-"))
        if server_url is None:
            urls = Urls(broker_url, broker_url, isolated=False)
            notes.append("no redis-server binary: the event backend shares the broker's Redis")
        else:
            urls = Urls(broker_url, with_db(server_url, DB), isolated=True)
        try:
            for side in (this, old):
                side.info = run_runner(side, "info", {}, urls)
        except RuntimeError as exc:
            say(f"Could not start: {exc}")
            say("Is Redis running? Set REDIS_URL (default redis://127.0.0.1:6379).")
            return 1
        if old.info["dramatiq_abort"] != OLD_VERSION or this.info["dramatiq_abort"] == OLD_VERSION:
            say(
                f"Wrong versions: {this.info['dramatiq_abort']} ({this.info['path']}) and "
                f"{old.info['dramatiq_abort']} ({old.info['path']})"
            )
            return 1
        try:
            run_all([this, old], plan, urls, scenarios)
        except RuntimeError as exc:
            say(f"A run failed: {exc}")
            return 1

    say()
    rows = rows_for(this, old, plan, scenarios)
    print_table(rows)
    if args.plot is not None:
        notes.append(plot_latencies(this, old, args.plot))
    print_notes(this, old, plan, urls, notes)
    say(
        f"Done in {time.monotonic() - started:.0f} s; the runs deleted the "
        f"{this.deleted_keys + old.deleted_keys} keys they wrote."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
