"""The operator commands ``abort``, ``abort-actor`` and ``status``, run as users run them.

Each test runs the installed console script in a subprocess against real
Redis (the event backend's database, this test's own namespace) and, where
a message must run, a real dramatiq worker in this process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker

from conftest import BACKEND_DB, Hold, RedisServer, free_port, require
from dramatiq_abort import Abortable, backends

#: Seconds a command may take (the longest --wait below is 10).
TIMEOUT = 60
#: The environment variables the command line reads the backend's URL from.
URL_VARIABLES = ("DRAMATIQ_ABORT_URL", "REDIS_URL")

StartWorker = Callable[..., Worker]


def command_line(
    *args: str, env: dict[str, str] | None = None, module: bool = False
) -> tuple[list[str], dict[str, str]]:
    """The command and environment of :func:`cli`, which says what the arguments are."""
    if module:
        command = [sys.executable, "-m", "dramatiq_abort"]
    else:
        script = shutil.which("dramatiq-abort", path=str(Path(sys.executable).parent))
        require(
            script is not None, "the dramatiq-abort script is not installed next to this Python"
        )
        command = [str(script)]
    environ = {k: v for k, v in os.environ.items() if k not in URL_VARIABLES}
    environ.update(env or {})
    return [*command, *args], environ


def cli(
    *args: str, env: dict[str, str] | None = None, module: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the command line in a fresh process, with no backend URL in its environment but ``env``.

    Args:
        *args: The arguments after the program name.
        env: Environment variables to set on top of this process's, which
            lose ``DRAMATIQ_ABORT_URL`` and ``REDIS_URL``.
        module: Run ``python -m dramatiq_abort`` instead of the console script.

    """
    command, environ = command_line(*args, env=env, module=module)
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=environ,
        check=False,
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    """What the command printed, for assertion messages."""
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


@pytest.fixture
def backend_url(redis_base_url: str) -> str:
    """The URL of the tests' event-backend database."""
    return f"{redis_base_url}/{BACKEND_DB}"


@pytest.fixture
def backend_args(backend_url: str, namespace: str, redis_client: Any) -> list[str]:
    """``--url`` and ``--namespace`` of this test's backend (its keys go at teardown)."""
    return ["--url", backend_url, "--namespace", namespace]


@pytest.fixture
def hold_actor(
    redis_broker: dramatiq.Broker, redis_backend: backends.RedisBackend
) -> Iterator[tuple[dramatiq.Actor[[str], None], Hold]]:
    """An actor on a RedisBroker with Abortable that runs until released or aborted."""
    redis_broker.add_middleware(Abortable(backend=redis_backend))
    hold = Hold()

    @dramatiq.actor(max_retries=0)
    def hold_job(name: str) -> None:
        hold.run(name)

    yield hold_job, hold
    hold.release.set()  # never leave a message running


def keys(client: Any, namespace: str) -> list[bytes]:
    """The keys under this test's namespace."""
    return list(client.scan_iter(match=namespace + "*"))


def test_abort_running_message_and_wait(
    hold_actor: tuple[dramatiq.Actor[[str], None], Hold],
    redis_broker: dramatiq.Broker,
    start_worker: StartWorker,
    backend_args: list[str],
) -> None:
    """Aborting a running message with --wait --json reports it interrupted by Abort."""
    actor, hold = hold_actor
    start_worker(redis_broker)
    message = actor.send("running")
    hold.wait("started", "running")

    args = ["abort", message.message_id, "--reason", "user left", "--wait", "10", "--json"]
    result = cli(*args, *backend_args)

    assert result.returncode == 0, output(result)
    [status] = json.loads(result.stdout)
    assert status["message_id"] == message.message_id
    assert status["state"] == "interrupted"
    assert status["mode"] == "abort"
    assert status["reason"] == "user left"
    assert status["ended_with"] == "Abort"
    assert status["actor_name"] == "hold_job"
    assert status["final"] is True
    hold.wait("ended", "running")
    assert hold.outcome["running"] == "aborted"
    assert result.stderr == ""


def test_abort_running_message_human_output(
    hold_actor: tuple[dramatiq.Actor[[str], None], Hold],
    redis_broker: dramatiq.Broker,
    start_worker: StartWorker,
    backend_args: list[str],
) -> None:
    """Without --json, --wait prints one line: the id, the state, the reason and the ending."""
    actor, hold = hold_actor
    start_worker(redis_broker)
    message = actor.send("running")
    hold.wait("started", "running")

    result = cli(
        "abort", message.message_id, "--reason", "user left", "--wait", "10", *backend_args
    )

    assert result.returncode == 0, output(result)
    [line] = result.stdout.splitlines()
    assert line.startswith(f"{message.message_id}  interrupted  (abort, reason: user left; ")
    assert "actor hold_job, ended with Abort, " in line
    assert line.endswith(" after the request)")


def test_cancel_before_start_then_status_skipped(
    hold_actor: tuple[dramatiq.Actor[[str], None], Hold],
    redis_broker: dramatiq.Broker,
    start_worker: StartWorker,
    backend_args: list[str],
) -> None:
    """A message cancelled while queued is skipped once a worker starts: status --wait says so."""
    actor, hold = hold_actor
    message = actor.send("queued")  # no worker yet: it waits in the queue

    result = cli("abort", message.message_id, "--mode", "cancel", "--reason", "dup", *backend_args)
    assert result.returncode == 0, output(result)
    assert result.stdout == f"requested cancel of {message.message_id} (reason: dup)\n"

    start_worker(redis_broker)
    result = cli("status", message.message_id, "--wait", "10", *backend_args)

    assert result.returncode == 0, output(result)
    [line] = result.stdout.splitlines()
    assert line.startswith(f"{message.message_id}  skipped      (cancel, reason: dup; ")
    assert "never started" in line
    assert not hold.event("started", "queued").is_set()


def test_status_of_unknown_id(backend_args: list[str]) -> None:
    """An id without a status exits 3; --json gives it a null state."""
    result = cli("status", "no-such-message", *backend_args)
    assert result.returncode == 3, output(result)
    assert result.stdout.startswith("no-such-message  unknown  ")

    result = cli("status", "no-such-message", "--json", *backend_args)
    assert result.returncode == 3, output(result)
    assert json.loads(result.stdout) == [{"message_id": "no-such-message", "state": None}]


def test_status_of_known_and_unknown_ids(
    backend_args: list[str], redis_backend: backends.RedisBackend
) -> None:
    """Statuses come back in the order of the ids; one unknown id is enough for exit 3."""
    Abortable(backend=redis_backend).abort("known", reason="test")

    result = cli("status", "known", "missing", "--json", *backend_args)

    assert result.returncode == 3, output(result)
    known, missing = json.loads(result.stdout)
    assert (known["message_id"], known["state"], known["reason"]) == ("known", "requested", "test")
    assert missing == {"message_id": "missing", "state": None}


@pytest.mark.parametrize("command", ["abort", "abort-actor", "status"])
def test_unreachable_backend(command: str, namespace: str) -> None:
    """A backend on a closed port is a one-line error on stderr and exit 1, no traceback."""
    url = f"redis://127.0.0.1:{free_port()}/0"

    result = cli(command, "some-id", "--url", url, "--namespace", namespace)

    assert result.returncode == 1, output(result)
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("dramatiq-abort: error: could not ")
    assert "Connection refused" in line or "connecting" in line
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["abort", "abort-actor", "status"])
def test_missing_url(command: str) -> None:
    """With no --url and neither variable set, the error names all three, and exit is 1."""
    result = cli(command, "some-id")

    assert result.returncode == 1, output(result)
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("dramatiq-abort: error: ")
    for name in ("--url", "DRAMATIQ_ABORT_URL", "REDIS_URL"):
        assert name in line


def test_invalid_url() -> None:
    """A URL that is not a Redis URL is reported with where it came from, exit 1."""
    result = cli("status", "some-id", env={"REDIS_URL": "http://localhost"})

    assert result.returncode == 1, output(result)
    assert result.stderr.startswith("dramatiq-abort: error: REDIS_URL: url must be a Redis URL")


def test_dramatiq_abort_url_wins_over_redis_url(
    backend_url: str, namespace: str, redis_backend: backends.RedisBackend
) -> None:
    """DRAMATIQ_ABORT_URL is used before REDIS_URL, and --url before both."""
    Abortable(backend=redis_backend).abort("from-env")
    closed = f"redis://127.0.0.1:{free_port()}/0"

    result = cli(
        "status",
        "from-env",
        "--namespace",
        namespace,
        env={"DRAMATIQ_ABORT_URL": backend_url, "REDIS_URL": closed},
    )
    assert result.returncode == 0, output(result)
    assert result.stdout.startswith("from-env  requested ")
    assert "(abort; no worker has it yet" in result.stdout

    result = cli("status", "from-env", "--namespace", namespace, env={"REDIS_URL": backend_url})
    assert result.returncode == 0, output(result)

    env = {"DRAMATIQ_ABORT_URL": closed, "REDIS_URL": closed}
    result = cli("status", "from-env", "--namespace", namespace, "--url", backend_url, env=env)
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize(
    ("option", "error"),
    [
        (["--mode", "stop"], "argument --mode: invalid choice: 'stop'"),
        (["--timeout", "-5"], "dramatiq-abort: error: --timeout must be 0 or more"),
        (["--timeout", "soon"], "argument --timeout: not a number of milliseconds: 'soon'"),
        (["--ttl", "0"], "dramatiq-abort: error: --ttl must be at least 1"),
        (["--wait", "-1"], "argument --wait: must be 0 or more seconds"),
        (["--reason", "x" * 501], "dramatiq-abort: error: reason must be at most 500"),
    ],
)
def test_bad_values_exit_2(
    option: list[str], error: str, backend_args: list[str], redis_client: Any, namespace: str
) -> None:
    """An invalid value is a usage error, exit 2, and nothing is sent to the backend."""
    result = cli("abort", "some-id", *option, *backend_args)

    assert result.returncode == 2, output(result)
    assert error in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert keys(redis_client, namespace) == []


def test_blank_id_exits_2(backend_args: list[str]) -> None:
    """A blank message id is a usage error for both commands."""
    for command in ("abort", "status"):
        result = cli(command, "ok", " ", *backend_args)
        assert result.returncode == 2, output(result)
        assert "message_id must be a non-empty string" in result.stderr


def test_wait_times_out(backend_args: list[str]) -> None:
    """A request nobody acts on is still requested when --wait runs out: exit 4."""
    result = cli("abort", "nobody-runs-it", "--wait", "0.2", "--json", *backend_args)

    assert result.returncode == 4, output(result)
    [status] = json.loads(result.stdout)
    assert (status["state"], status["final"]) == ("requested", False)

    result = cli("status", "nobody-runs-it", "--wait", "0.2", *backend_args)
    assert result.returncode == 4, output(result)
    assert result.stdout.startswith("nobody-runs-it  requested  ")


def test_abort_without_wait_json(backend_args: list[str]) -> None:
    """Abort with --json but no --wait prints each id's recorded status once, exit 0."""
    result = cli(
        "abort", "a", "b", "a", "--ttl", "60000", "--timeout", "250", "--json", *backend_args
    )

    assert result.returncode == 0, output(result)
    statuses = json.loads(result.stdout)
    assert [s["message_id"] for s in statuses] == ["a", "b"]
    assert {s["state"] for s in statuses} == {"requested"}


@pytest.mark.parametrize("command", ["abort", "abort-actor", "status"])
def test_help(command: str) -> None:
    """--help of each backend command exits 0 and shows the options, an example and exit codes."""
    result = cli(command, "--help")

    assert result.returncode == 0, output(result)
    assert result.stdout.startswith(f"usage: dramatiq-abort {command} ")
    for option in ("--url", "--namespace", "--json", "--wait", "examples:", "exit status:"):
        assert option in result.stdout
    if command in ("abort", "abort-actor"):
        for option in ("--mode", "--timeout", "--ttl", "--reason"):
            assert option in result.stdout
    if command == "abort-actor":
        assert "--dry-run" in result.stdout
        assert "track_messages" in result.stdout


def test_help_with_python_m() -> None:
    """The status help works under `python -m dramatiq_abort` too, with that name."""
    result = cli("status", "--help", module=True)

    assert result.returncode == 0, output(result)
    assert result.stdout.startswith("usage: python -m dramatiq_abort status ")


def test_top_level_help_lists_the_commands() -> None:
    """The top-level --help lists abort, abort-actor, status and demo."""
    result = cli("--help")

    assert result.returncode == 0, output(result)
    listed = re.findall(r"^    (\S+)", result.stdout, re.MULTILINE)  # help may wrap below
    for command in ("abort", "abort-actor", "status", "demo"):
        assert command in listed, result.stdout


def test_abort_many_ids_json(backend_args: list[str]) -> None:
    """Abort of three ids with --json records all three, each requested."""
    result = cli("abort", "id-1", "id-2", "id-3", "--reason", "bulk", "--json", *backend_args)

    assert result.returncode == 0, output(result)
    statuses = json.loads(result.stdout)
    assert [s["message_id"] for s in statuses] == ["id-1", "id-2", "id-3"]
    assert {(s["state"], s["reason"]) for s in statuses} == {("requested", "bulk")}


def evalsha_calls(client: Any) -> int:
    """How many EVALSHA commands the server has run."""
    stats: dict[str, dict[str, int]] = client.info("commandstats")
    return stats.get("cmdstat_evalsha", {}).get("calls", 0)


def test_abort_is_one_round_trip(redis_server: RedisServer, namespace: str) -> None:
    """Twenty ids are requested by one bulk script call, not one call per id."""
    import redis

    args = ["--url", f"{redis_server.url}/0", "--namespace", namespace, "--json"]
    warm_up = cli("abort", *(f"warm-{i}" for i in range(20)), *args)  # loads the scripts
    assert warm_up.returncode == 0, output(warm_up)
    client = redis.Redis.from_url(redis_server.url)
    try:
        before = evalsha_calls(client)
        ids = [f"bulk-{i}" for i in range(20)]
        result = cli("abort", *ids, *args)
        after = evalsha_calls(client)
    finally:
        client.close()

    assert result.returncode == 0, output(result)
    statuses = json.loads(result.stdout)
    assert [(s["message_id"], s["state"]) for s in statuses] == [(i, "requested") for i in ids]
    assert after - before == 1


def wait_for_announcement(pubsub: Any) -> None:
    """Block until the backend's channel announces a batch of requests (fail after TIMEOUT s)."""
    deadline = time.monotonic() + TIMEOUT
    while (left := deadline - time.monotonic()) > 0:
        message = pubsub.get_message(timeout=left)
        if message is not None and message["type"] == "message":
            return
    pytest.fail(f"no abort request was announced within {TIMEOUT} s")


def test_abort_actor_dry_run_then_cancel(
    redis_broker: dramatiq.Broker,
    redis_backend: backends.RedisBackend,
    redis_client: Any,
    start_worker: StartWorker,
    backend_args: list[str],
) -> None:
    """A dry run lists an actor's queued messages; a cancel of them all has each one skipped."""
    middleware = Abortable(backend=redis_backend)
    redis_broker.add_middleware(middleware)
    ran: list[int] = []

    @dramatiq.actor(max_retries=0, track_messages=True)
    def tracked_job(number: int) -> None:
        ran.append(number)

    ids = sorted(tracked_job.send(number).message_id for number in range(3))
    # This process writes what it tracks in the background: a dry run here writes it first.
    assert sorted(middleware.abort_actor(tracked_job, dry_run=True).message_ids) == ids

    result = cli("abort-actor", "tracked_job", "--dry-run", "--json", *backend_args)
    assert result.returncode == 0, output(result)
    data = json.loads(result.stdout)
    assert {**data, "message_ids": sorted(data["message_ids"])} == {
        "actor": "tracked_job",
        "count": 3,
        "message_ids": ids,
        "dry_run": True,
    }

    result = cli("abort-actor", "tracked_job", "--dry-run", *backend_args)
    assert result.returncode == 0, output(result)
    head, *listed = result.stdout.splitlines()
    assert (head, sorted(listed)) == ("3 messages of actor tracked_job outstanding", ids)
    assert middleware.abort_statuses(ids) == [None, None, None]  # a dry run requests nothing

    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(redis_backend.channel)
    command, environ = command_line(
        "abort-actor", "tracked_job", "--mode", "cancel", "--wait", "10", "--json", *backend_args
    )
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ
    ) as process:
        try:
            wait_for_announcement(pubsub)  # the cancels are recorded: now a worker may start
        finally:
            pubsub.close()
        start_worker(redis_broker)
        stdout, stderr = process.communicate(timeout=TIMEOUT)

    assert process.returncode == 0, f"exit {process.returncode}\n{stdout}\n{stderr}"
    statuses = json.loads(stdout)
    assert sorted(s["message_id"] for s in statuses) == ids
    assert {(s["state"], s["mode"]) for s in statuses} == {("skipped", "cancel")}
    assert ran == []


def test_abort_actor_with_nothing_outstanding(backend_args: list[str]) -> None:
    """An actor with no tracked message has nothing to abort: a message and exit 0."""
    result = cli("abort-actor", "idle_actor", *backend_args)

    assert result.returncode == 0, output(result)
    assert result.stdout == "no outstanding messages of actor idle_actor\n"
    assert result.stderr == ""

    result = cli("abort-actor", "idle_actor", "--json", *backend_args)
    assert result.returncode == 0, output(result)
    assert json.loads(result.stdout) == []
