"""What only the PostgreSQL backend has: its tables, expiry sweeps, NOTIFY payloads, LISTEN.

The backend contract itself runs on PostgreSQL through the ``event_backend``
fixture (tests/test_backends.py and others), and the end-to-end abort tests
through the ``postgres`` broker kind.  Each test works in a schema of its
own and drops it at teardown.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq import Worker

from conftest import WAIT, Hold, LogWatch, Outcomes, free_port
from dramatiq_abort import Abortable, Event, abort, backends

pytest.importorskip("psycopg")

import psycopg

from dramatiq_abort.backends.postgres import (
    _PAYLOAD_BYTES,
    TableShapeError,
    _payloads,
)

StartWorker = Callable[..., Worker]


@pytest.fixture
def sql(postgres_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection of the test's own (autocommit), to look at and tamper with the tables."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        yield conn


def _count(sql: psycopg.Connection[Any], namespace: str, table: str) -> int:
    row = sql.execute(f'SELECT count(*) FROM "{namespace}".{table}').fetchone()
    assert row is not None
    return int(row[0])


def test_tables_are_created_on_first_use(
    postgres_backend: backends.PostgresBackend, sql: psycopg.Connection[Any], pg_namespace: str
) -> None:
    """The first call creates the schema and its four tables; a request is one row."""
    postgres_backend.notify([Event("abort:m", {"mode": "cancel"})], ttl=10_000)
    rows = sql.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
        "ORDER BY table_name",
        [pg_namespace],
    ).fetchall()
    assert [name for (name,) in rows] == ["done", "requests", "statuses", "tracked"]
    assert _count(sql, pg_namespace, "requests") == 1
    assert _count(sql, pg_namespace, "statuses") == 1


def test_a_table_of_another_shape_is_refused_and_left_alone(
    postgres_url: str, sql: psycopg.Connection[Any], pg_namespace: str
) -> None:
    """A table with other columns raises TableShapeError naming it, and is never altered."""
    sql.execute(f'CREATE SCHEMA "{pg_namespace}"')
    try:
        sql.execute(f'CREATE TABLE "{pg_namespace}".requests (key text PRIMARY KEY, value int)')
        backend = backends.PostgresBackend.from_url(postgres_url, namespace=pg_namespace)
        try:
            with pytest.raises(TableShapeError, match=rf"{pg_namespace}\.requests has the columns"):
                backend.poll("abort:x")
            with pytest.raises(TableShapeError, match="never alters a table"):
                backend.create_tables()
        finally:
            backend.close()
        columns = sql.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'requests' ORDER BY column_name",
            [pg_namespace],
        ).fetchall()
        assert columns == [("key",), ("value",)]
        tables = sql.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s",
            [pg_namespace],
        ).fetchone()
        assert tables == (1,)  # nothing else was created either
    finally:
        sql.execute(f'DROP SCHEMA "{pg_namespace}" CASCADE')


def test_without_create_tables_missing_tables_say_how_to_make_them(
    postgres_url: str, pg_namespace: str
) -> None:
    """create_tables=False never creates anything: a missing table names create_tables()."""
    backend = backends.PostgresBackend.from_url(
        postgres_url, namespace=pg_namespace, create_tables=False
    )
    try:
        with pytest.raises(TableShapeError, match=r"does not exist.*create_tables\(\)"):
            backend.poll("abort:x")
        backend.create_tables()
        backend.create_tables()  # twice is harmless
        assert backend.poll("abort:x") is None
    finally:
        backend.drop_tables()
        backend.close()


def test_expired_rows_are_swept_by_writes(
    postgres_backend: backends.PostgresBackend, sql: psycopg.Connection[Any], pg_namespace: str
) -> None:
    """Expired requests and statuses are deleted by a later write; live ones stay."""
    postgres_backend._next_sweep = float("inf")  # no sweep until the test says so
    postgres_backend.notify([Event(f"abort:old{i}", {"mode": "cancel"}) for i in range(5)], ttl=1)
    postgres_backend.notify([Event("abort:live", {"mode": "cancel"})], ttl=60_000)
    sql.execute(  # the statuses of the expired requests too: as after status_ttl
        f"UPDATE \"{pg_namespace}\".statuses SET expires_at = now() - interval '1 s' "
        "WHERE message_id LIKE 'old%'"
    )
    assert _count(sql, pg_namespace, "requests") == 6
    assert postgres_backend.poll("abort:old0") is None  # read as absent before any sweep
    postgres_backend._next_sweep = 0.0  # the next write sweeps (every 10 s otherwise)
    postgres_backend.notify([Event("abort:trigger", {"mode": "cancel"})], ttl=60_000)
    keys = sql.execute(f'SELECT key FROM "{pg_namespace}".requests ORDER BY key').fetchall()
    assert keys == [("abort:live",), ("abort:trigger",)]
    assert _count(sql, pg_namespace, "statuses") == 2


def test_a_request_expires_when_its_status_says_so(
    postgres_backend: backends.PostgresBackend, sql: psycopg.Connection[Any], pg_namespace: str
) -> None:
    """A request reaching the server late (a pool opening first) ends at requested_at + TTL.

    Its status expires then, so the row must not outlive it: a worker
    finding it afterwards would skip a message whose abort reads expired.
    A stamp further back than the TTL (a clock that is off) keeps the TTL.
    """
    from dramatiq_abort import AbortMode
    from dramatiq_abort._request import AbortRequest

    late = AbortRequest.create("late", AbortMode.CANCEL, 0).to_event()
    late.params["requested_at"] -= 40_000  # as if it took 40 s to get here
    skewed = AbortRequest.create("skewed", AbortMode.CANCEL, 0).to_event()
    skewed.params["requested_at"] -= 600_000  # older than the TTL: a clock that is off
    postgres_backend.notify([late, skewed], ttl=60_000)
    left = dict(
        sql.execute(
            "SELECT key, extract(epoch FROM expires_at - now())::float8 "
            f'FROM "{pg_namespace}".requests'
        ).fetchall()
    )
    assert 15 < left["abort:late"] <= 20  # 60 s less the 40 s it was late
    assert 55 < left["abort:skewed"] <= 60
    status = postgres_backend.read_status(["late"])[0]
    assert status is not None
    assert abs(status["expires_at"] / 1000 - time.time() - left["abort:late"]) < 5


def test_payloads_fit_notify_and_keep_the_order() -> None:
    """A large batch is cut into payloads under 8000 bytes that hold every event in order."""
    events = [
        Event(f"abort:{i}", {"mode": "abort", "reason": "é" * 500, "i": i}) for i in range(300)
    ]
    payloads = _payloads(events)
    assert len(payloads) > 10
    assert all(len(p.encode("utf-8")) <= _PAYLOAD_BYTES for p in payloads)
    decoded = [Event(k, v) for p in payloads for k, v in json.loads(p)]
    assert decoded == events


def test_an_oversized_request_is_announced_by_digest(
    postgres_backend: backends.PostgresBackend,
) -> None:
    """A request too large for NOTIFY (a huge key) still reaches subscribers, read back."""
    huge = Event("abort:" + "x" * 10_000, {"mode": "abort", "abort_timeout": 0})
    small = Event("abort:small", {"mode": "cancel"})
    subscription = postgres_backend.subscribe()
    try:
        postgres_backend.notify([small, huge], ttl=10_000)
        received: list[Event] = []
        deadline = time.monotonic() + WAIT
        while len(received) < 2 and time.monotonic() < deadline:
            received.extend(subscription.get(0.5))
        assert received == [small, huge]
    finally:
        subscription.close()
    assert postgres_backend.poll(huge.key) == huge


@pytest.mark.parametrize("key", ["abort:a\x00b", "abort:\x7fdel", '\x7f"abort:x"', "abort:Ω"])
def test_keys_text_cannot_hold_round_trip(
    postgres_backend: backends.PostgresBackend, key: str
) -> None:
    """Keys with a NUL (which text refuses) or the escape character are stored and found."""
    event = Event(key, {"mode": "cancel"})
    postgres_backend.notify([event], ttl=10_000)
    assert postgres_backend.poll(key) == event
    assert postgres_backend.poll_many([key, "abort:a"]) == [event]


def test_concurrent_requests_for_a_new_message_all_count(
    postgres_backend: backends.PostgresBackend,
) -> None:
    """Writers racing on a key nobody stored yet merge, none overwrites another."""
    postgres_backend.poll("abort:warm")  # tables made before the race
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def request(timeout: int) -> None:
        try:
            start.wait(WAIT)
            event = Event("abort:race", {"mode": "abort", "abort_timeout": timeout})
            postgres_backend.notify([event], ttl=60_000)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(100 * (i + 1),)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert errors == []
    stored = postgres_backend.poll("abort:race")
    assert stored is not None and stored.params["abort_timeout"] == 100  # the earliest deadline


def test_constructor_arguments_are_checked() -> None:
    """Bad arguments fail at once, naming the value and what is expected."""
    with pytest.raises(ValueError, match=r"namespace must be a lower-case SQL identifier.*'A-b'"):
        backends.PostgresBackend(dsn="postgresql://localhost/x", namespace="A-b")
    with pytest.raises(ValueError, match=r"namespace.*'pg_x'"):
        backends.PostgresBackend(dsn="postgresql://localhost/x", namespace="pg_x")
    with pytest.raises(TypeError, match=r"needs dsn=.*or pool=.*exactly one"):
        backends.PostgresBackend()
    with pytest.raises(TypeError, match=r"pool must be a psycopg_pool\.ConnectionPool"):
        backends.PostgresBackend(pool=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"url must be a PostgreSQL URL.*'redis://x'"):
        backends.PostgresBackend.from_url("redis://x")
    with pytest.raises(ValueError, match=r"dsn must be a libpq connection string.*\*\*\*"):
        backends.PostgresBackend(dsn="postgresql://u:secret@/db?bogus=1")
    with pytest.raises(TypeError, match="pass pool= to PostgresBackend"):
        backends.PostgresBackend.from_url("postgresql://localhost/x", pool=None)
    with pytest.raises(ValueError, match="status_ttl"):
        backends.PostgresBackend(dsn="postgresql://localhost/x", status_ttl=0)
    backend = backends.PostgresBackend.from_url("postgres://u:secret@localhost/x")
    assert "secret" not in repr(backend) and "***" in repr(backend)


def test_a_given_pool_is_used_and_left_open(postgres_url: str, pg_namespace: str) -> None:
    """A backend on the application's pool works, LISTENs with its settings, and closes nothing."""
    import psycopg_pool

    with psycopg_pool.ConnectionPool(postgres_url, min_size=1, max_size=2) as pool:
        backend = backends.PostgresBackend(pool=pool, namespace=pg_namespace)
        subscription = backend.subscribe()
        try:
            backend.notify([Event("abort:p", {"mode": "cancel"})], ttl=10_000)
            assert backend.poll("abort:p") == Event("abort:p", {"mode": "cancel"})
            received: list[Event] = []
            deadline = time.monotonic() + WAIT
            while not received and time.monotonic() < deadline:
                received.extend(subscription.get(0.5))
            assert received == [Event("abort:p", {"mode": "cancel"})]
        finally:
            subscription.close()
            backend.close()
            backend.drop_tables()
        assert not pool.closed


def _listeners(sql: psycopg.Connection[Any], namespace: str) -> list[int]:
    rows = sql.execute(
        "SELECT pid FROM pg_stat_activity WHERE query = %s AND pid <> pg_backend_pid()",
        [f'LISTEN "{namespace}"'],
    ).fetchall()
    return [int(pid) for (pid,) in rows]


def test_a_lost_listening_connection_is_remade_and_catches_up(
    rabbitmq_broker: dramatiq.Broker,
    postgres_backend: backends.PostgresBackend,
    sql: psycopg.Connection[Any],
    pg_namespace: str,
    queue_name: str,
    start_worker: StartWorker,
    log_watch: LogWatch,
) -> None:
    """Kill the worker's LISTEN connection, abort meanwhile: the watcher listens again, aborts."""
    rabbitmq_broker.add_middleware(Abortable(backend=postgres_backend))
    outcomes = Outcomes()
    rabbitmq_broker.add_middleware(outcomes)
    hold = Hold()

    @dramatiq.actor(queue_name=queue_name, max_retries=0)
    def held(name: str) -> None:
        hold.run(name)

    start_worker(rabbitmq_broker)
    message = held.send("long")
    hold.wait("started", "long")
    deadline = time.monotonic() + WAIT
    while not (pids := _listeners(sql, pg_namespace)):
        assert time.monotonic() < deadline, "the worker never LISTENed"
        time.sleep(0.01)  # waiting for another process's connection: nothing to wait on
    sql.execute("SELECT pg_terminate_backend(%s)", [pids[0]])
    log_watch.wait_for("Lost the event backend")
    abort(message.message_id)  # while no subscription may be live: the resync finds it
    assert outcomes.ended(message.message_id) == "Abort"
    assert hold.outcome["long"] == "aborted"
    log_watch.wait_for("Event backend is reachable again")
    assert _listeners(sql, pg_namespace) != pids[:1]


def test_the_command_line_takes_a_postgresql_url(
    postgres_backend: backends.PostgresBackend, postgres_url: str, pg_namespace: str
) -> None:
    """The abort and status commands take a postgresql:// URL and the schema as namespace."""
    from test_cli import cli, output

    args = ["--url", postgres_url, "--namespace", pg_namespace]
    result = cli("abort", "pg-cli", "--mode", "cancel", "--reason", "from cli", *args)
    assert result.returncode == 0, output(result)
    [record] = postgres_backend.read_status(["pg-cli"])
    assert record is not None and (record["state"], record["reason"]) == ("requested", "from cli")

    result = cli("status", "pg-cli", "--json", *args)
    assert result.returncode == 0, output(result)
    [status] = json.loads(result.stdout)
    assert (status["message_id"], status["state"]) == ("pg-cli", "requested")


def test_the_command_line_reports_an_unreachable_postgresql(postgres_url: str) -> None:
    """A PostgreSQL URL on a closed port is a one-line error and exit 1, no traceback."""
    from test_cli import cli, output

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    result = cli("status", "some-id", "--url", url)
    assert result.returncode == 1, output(result)
    [line] = result.stderr.splitlines()
    assert line.startswith("dramatiq-abort: error: could not "), output(result)
    assert "Traceback" not in result.stderr


def test_a_ping_is_answered_and_an_announcement_still_arrives(
    postgres_backend: backends.PostgresBackend,
) -> None:
    """ping() sends an empty query; its reply is read like an announcement, updating heard_at."""
    subscription: Any = postgres_backend.subscribe()
    try:
        before = subscription.heard_at
        subscription.ping()
        subscription.ping()  # one in flight at a time: the second is a no-op
        while subscription._pinging:  # the reply may come in more than one packet
            assert subscription.ready(WAIT)
            events, _ = subscription.drain()
            assert events == []
        assert subscription.heard_at > before
        postgres_backend.notify([Event("abort:after-ping", {"mode": "cancel"})], ttl=10_000)
        assert subscription.ready(WAIT)
        assert subscription.drain()[0] == [Event("abort:after-ping", {"mode": "cancel"})]
        assert not subscription.pending()
    finally:
        subscription.close()
    with pytest.raises(psycopg.OperationalError, match="closed"):
        subscription.get(0)


class _DeadlockCounting(backends.PostgresBackend):
    """A PostgresBackend that keeps each deadlock PostgreSQL reports, even one a retry hides."""

    deadlocks: list[BaseException]

    def _run(self, work: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        def counted(conn: psycopg.Connection[Any]) -> Any:
            try:
                return work(conn)
            except psycopg.errors.DeadlockDetected as exc:
                self.deadlocks.append(exc)
                raise

        return super()._run(counted)


def test_concurrent_notify_and_extend_never_deadlock(postgres_url: str, pg_namespace: str) -> None:
    """Requests and extensions of the same ids, racing for seconds, lock rows in one order."""
    backend = _DeadlockCounting.from_url(postgres_url, namespace=pg_namespace)
    backend.deadlocks = deadlocks = []
    ids = [f"m{i:03d}" for i in range(20)]
    errors: list[BaseException] = []
    start = threading.Barrier(4)
    stop = threading.Event()

    def requests() -> None:
        start.wait(WAIT)
        while not stop.is_set():
            now = time.time() * 1000
            events = [Event(f"abort:{i}", {"mode": "abort", "requested_at": now}) for i in ids]
            backend.notify(events, 60_000)

    def extensions() -> None:
        start.wait(WAIT)
        while not stop.is_set():
            backend.extend([(i, round(time.time() * 1000) + 120_000) for i in ids[::-1]])

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
            stop.set()

    try:
        backend.notify([Event(f"abort:{i}", {"mode": "cancel"}) for i in ids], 60_000)
        threads = [
            threading.Thread(target=guarded, args=(target,))
            for target in (requests, requests, extensions, extensions)
        ]
        for thread in threads:
            thread.start()
        stop.wait(2.0)  # the race runs for 2 s, or until a call raises
        stop.set()
        for thread in threads:
            thread.join(WAIT)
        assert errors == []
        assert deadlocks == []
    finally:
        backend.drop_tables()
        backend.close()


def test_tracking_changes_in_any_order_never_deadlock(postgres_url: str, pg_namespace: str) -> None:
    """Batches adding and removing the same messages in opposite orders never deadlock."""
    backend = _DeadlockCounting.from_url(postgres_url, namespace=pg_namespace)
    backend.deadlocks = []
    backend.poll("abort:warm")  # tables made before the race
    ids = [f"t{i:03d}" for i in range(20)]
    errors: list[BaseException] = []
    start = threading.Barrier(4)
    stop = threading.Event()

    def changes(order: list[str], kinds: tuple[str, str]) -> None:
        try:
            start.wait(WAIT)
            while not stop.is_set():
                ms = round(time.time() * 1000)
                backend.track([(kinds[n % 2], "actor", i, ms) for n, i in enumerate(order)])
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)
            stop.set()

    threads = [
        threading.Thread(target=changes, args=(ids, ("add", "remove"))),
        threading.Thread(target=changes, args=(ids[::-1], ("remove", "add"))),
        threading.Thread(target=changes, args=(ids[::-1], ("add", "remove"))),
        threading.Thread(target=changes, args=(ids, ("remove", "add"))),
    ]
    try:
        for thread in threads:
            thread.start()
        stop.wait(2.0)  # the race runs for 2 s, or until a call raises
        stop.set()
        for thread in threads:
            thread.join(WAIT)
        assert errors == []
        assert backend.deadlocks == []
    finally:
        backend.drop_tables()
        backend.close()


@pytest.mark.parametrize("namespace", ["public", "information_schema", "pg_catalog"])
def test_a_schema_of_the_database_is_refused_as_namespace(namespace: str) -> None:
    """namespace='public' (or a system schema) raises naming the value: drop_tables would hit it."""
    with pytest.raises(ValueError, match=rf"namespace.*not '{namespace}'"):
        backends.PostgresBackend(dsn="postgresql://localhost/x", namespace=namespace)


def test_drop_tables_leaves_other_objects_and_their_schema(
    postgres_url: str, sql: psycopg.Connection[Any], pg_namespace: str
) -> None:
    """drop_tables() drops the backend's tables only; a schema still in use stays."""
    backend = backends.PostgresBackend.from_url(postgres_url, namespace=pg_namespace)
    try:
        backend.notify([Event("abort:m", {"mode": "cancel"})], ttl=10_000)
        sql.execute(f'CREATE TABLE "{pg_namespace}".orders (id int)')
        sql.execute(f'INSERT INTO "{pg_namespace}".orders VALUES (1)')
        backend.drop_tables()
        rows = sql.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            [pg_namespace],
        ).fetchall()
        assert rows == [("orders",)]
        assert sql.execute(f'SELECT id FROM "{pg_namespace}".orders').fetchall() == [(1,)]
        sql.execute(f'DROP TABLE "{pg_namespace}".orders')
        backend.drop_tables()  # now the schema is empty: it goes too
        gone = sql.execute("SELECT to_regnamespace(%s)", [pg_namespace]).fetchone()
        assert gone == (None,)
    finally:
        backend.close()
        sql.execute(f'DROP SCHEMA IF EXISTS "{pg_namespace}" CASCADE')


@pytest.mark.parametrize(
    ("table", "create", "message"),
    [
        (
            "requests",
            "(key text, params text, expires_at timestamptz NOT NULL)",
            r"requests has no primary key, not the primary key \['key'\]",
        ),
        (
            "tracked",
            "(actor text, message_id text, start_ms bigint, PRIMARY KEY (message_id, actor))",
            r"tracked has the primary key \['message_id', 'actor'\], "
            r"not the primary key \['actor', 'message_id'\]",
        ),
    ],
)
def test_a_table_without_the_primary_key_is_refused(
    postgres_url: str,
    sql: psycopg.Connection[Any],
    pg_namespace: str,
    table: str,
    create: str,
    message: str,
) -> None:
    """The right columns with another primary key (or none) raise TableShapeError naming it."""
    sql.execute(f'CREATE SCHEMA "{pg_namespace}"')
    backend = backends.PostgresBackend.from_url(postgres_url, namespace=pg_namespace)
    try:
        sql.execute(f'CREATE TABLE "{pg_namespace}".{table} {create}')
        with pytest.raises(TableShapeError, match=rf"{pg_namespace}\.{message}"):
            backend.create_tables()
        with pytest.raises(TableShapeError, match=rf"{pg_namespace}\.{message}"):
            backend.notify([Event("abort:m", {"mode": "cancel"})], ttl=10_000)
    finally:
        backend.close()
        sql.execute(f'DROP SCHEMA "{pg_namespace}" CASCADE')


def test_a_failing_sweep_is_logged_and_the_write_stands(
    postgres_url: str,
    sql: psycopg.Connection[Any],
    pg_namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sweep refused after the commit (no DELETE privilege) fails neither call; logged once."""
    owner = backends.PostgresBackend.from_url(postgres_url, namespace=pg_namespace)
    owner.create_tables()
    role = pg_namespace + "_writer"  # may write the tables, not delete from them
    sql.execute(f'CREATE ROLE "{role}" NOLOGIN')
    sql.execute(f'GRANT USAGE ON SCHEMA "{pg_namespace}" TO "{role}"')
    sql.execute(
        f'GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA "{pg_namespace}" TO "{role}"'
    )
    separator = "&" if "?" in postgres_url else "?"
    backend = backends.PostgresBackend.from_url(
        f"{postgres_url}{separator}options=-crole%3D{role}",
        namespace=pg_namespace,
        create_tables=False,
    )
    try:
        with caplog.at_level("DEBUG", logger="dramatiq_abort.backends.postgres"):
            backend.notify([Event("abort:m", {"mode": "abort", "abort_timeout": 1})], 60_000)
            backend._next_sweep = 0.0  # the next write sweeps again, and fails again
            backend.notify([Event("abort:m", {"mode": "abort", "abort_timeout": 2})], 60_000)
        assert backend.poll("abort:m") == Event("abort:m", {"mode": "abort", "abort_timeout": 1})
        [record] = backend.read_status(["m"])
        assert record is not None and record["state"] == "requested"
        warnings = [
            r
            for r in caplog.records
            if r.name == "dramatiq_abort.backends.postgres" and r.levelname == "WARNING"
        ]
        assert len(warnings) == 1, warnings  # once per kind of error
        assert "Could not delete the expired rows" in warnings[0].getMessage()
        assert "permission denied" in warnings[0].getMessage()
    finally:
        backend.close()
        owner.drop_tables()
        owner.close()
        sql.execute(f'DROP ROLE "{role}"')


def test_workers_poll_each_message_without_read_ahead() -> None:
    """PostgresBackend turns read-ahead off: a NOTIFY may arrive ms after abort() returned."""
    assert backends.PostgresBackend._read_ahead is False
    backend = backends.PostgresBackend(dsn="postgresql://localhost/x")
    assert Abortable(backend=backend)._read_ahead is False
