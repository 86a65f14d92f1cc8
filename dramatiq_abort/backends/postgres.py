"""The PostgreSQL event backend, for teams that run PostgreSQL and no Redis.

Requests and statuses are rows of tables in one schema (the namespace),
each with an expiry time; a request is combined with one already stored
inside a transaction that locks the rows (``INSERT ... ON CONFLICT DO
UPDATE``, which also locks a row it creates), by the same Python rules as
the in-memory backend (``_merge``, ``_status``).
The transaction also announces the batch with ``pg_notify`` on a channel
named after the namespace, so PostgreSQL delivers the announcement only
once the rows are committed.  Workers ``LISTEN`` on a connection of their
own, read with a timeout: an idle worker sends nothing.  Expired rows are
deleted by the writers themselves, a bounded batch at a time, after
their write has committed (see ``docs/architecture.md``).  Values are JSON
text.  A worker polls each message as it starts, with no read-ahead: an
announcement may reach it a few ms after ``abort()`` returned, the table
has the request at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import psycopg
import psycopg.conninfo
import psycopg.errors
import psycopg.pq
import psycopg_pool

from .._fdcheck import readable_check, wait_readable
from .._merge import merge_params
from .._request import MAX_MS, Duration, key_for, to_ms
from .._status import apply_update, check_update, request_update
from ..events import Event, EventBackend, StatusUpdate, Subscription
from ..exceptions import DramatiqAbortError
from . import _subscribed
from ._checks import (
    check_events,
    check_ids,
    check_key,
    check_keys,
    check_pairs,
    check_tracking,
    check_ttl,
    encodable,
)

__all__ = ["PostgresBackend", "TableShapeError"]

_logger = logging.getLogger(__name__)
_T = TypeVar("_T")

#: The default namespace: the schema of the tables and the channel's name.
DEFAULT_NAMESPACE = "dramatiq_aborts"
#: How long status records are kept by default: one day, in ms.
DEFAULT_STATUS_TTL = 86_400_000
#: How long a tracked message is remembered at most by default: 7 days, in ms.
DEFAULT_TRACK_TTL = 7 * 86_400_000
#: A removed (done) id is remembered this long, so a late add of it is ignored.
_DONE_FOR = "1 hour"
#: A namespace is a plain lower-case SQL identifier: a schema and a channel name.
_NAMESPACE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
#: Schemas that belong to the database or the application, never to the backend
#: (``pg_*`` ones are refused by the identifier check).
_RESERVED_NAMESPACES = frozenset({"public", "information_schema"})
#: The longest announcement sent in one NOTIFY, in bytes (PostgreSQL refuses 8000).
_PAYLOAD_BYTES = 7900
#: Seconds between two sweeps of expired rows by one backend object (see ``_sweep``).
_SWEEP_EVERY = 10.0
#: Most rows of one table a sweep deletes; a full sweep makes the next one come sooner.
_SWEEP_ROWS = 1000
#: Attempts of one call when PostgreSQL reports a deadlock or a stale pooled connection.
_ATTEMPTS = 3
#: The pool this backend makes from a DSN: sizes and the wait for a free connection (s).
_POOL_MIN, _POOL_MAX, _POOL_TIMEOUT = 1, 10, 5.0
#: Seconds a new connection may take, unless the DSN says otherwise.
_CONNECT_TIMEOUT = "5"
#: Keys that start with this character, or hold a NUL (which ``text`` cannot),
#: are stored as this character followed by their JSON string: an injective
#: mapping that leaves every ordinary key as it is.
_ESCAPE = "\x7f"

#: Every write transaction starts with this: its commit does not wait for the
#: WAL to reach the disk (a few ms).  Requests and statuses are short-lived;
#: a server crash may lose the last fraction of a second of them, as Redis
#: without an fsync per write would.  Atomicity and ordering are unchanged.
_NO_FLUSH_WAIT = "SET LOCAL synchronous_commit TO off"

# _LOCK_ORDER: every write transaction takes its row locks in one global order,
# so two writers never wait for each other in a cycle (a deadlock, which
# PostgreSQL breaks only after deadlock_timeout, 1 s by default, by failing one
# of them): rows of ``statuses``, then rows of ``requests``, each in sorted key
# order (the columns are COLLATE "C": byte order, as Python sorts str).  Changes
# to ``tracked`` and ``done`` first take a transaction advisory lock per
# (actor, message id), in sorted order of the lock ids; their rows come next,
# sorted by (actor, message id) within each statement.  The sweep never waits
# (SKIP LOCKED), so it cannot close a cycle.

#: Each table's columns and their types, as ``information_schema`` names them.
TABLES: dict[str, dict[str, str]] = {
    "requests": {"key": "text", "params": "text", "expires_at": "timestamp with time zone"},
    "statuses": {
        "message_id": "text",
        "record": "text",
        "expires_at": "timestamp with time zone",
    },
    "tracked": {"actor": "text", "message_id": "text", "start_ms": "bigint"},
    "done": {"actor": "text", "message_id": "text", "done_at": "timestamp with time zone"},
}
#: Each table's primary key columns, in order: the ``ON CONFLICT`` targets.
PRIMARY_KEYS: dict[str, list[str]] = {
    "requests": ["key"],
    "statuses": ["message_id"],
    "tracked": ["actor", "message_id"],
    "done": ["actor", "message_id"],
}
_CREATE = """
CREATE TABLE IF NOT EXISTS {ns}.requests (
    key text COLLATE "C" PRIMARY KEY,
    params text,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_expires_at ON {ns}.requests (expires_at);
CREATE TABLE IF NOT EXISTS {ns}.statuses (
    message_id text COLLATE "C" PRIMARY KEY,
    record text,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS statuses_expires_at ON {ns}.statuses (expires_at);
CREATE TABLE IF NOT EXISTS {ns}.tracked (
    actor text COLLATE "C" NOT NULL,
    message_id text COLLATE "C" NOT NULL,
    start_ms bigint NOT NULL,
    PRIMARY KEY (actor, message_id)
);
CREATE INDEX IF NOT EXISTS tracked_start_ms ON {ns}.tracked (start_ms);
CREATE TABLE IF NOT EXISTS {ns}.done (
    actor text COLLATE "C" NOT NULL,
    message_id text COLLATE "C" NOT NULL,
    done_at timestamptz NOT NULL,
    PRIMARY KEY (actor, message_id)
);
CREATE INDEX IF NOT EXISTS done_done_at ON {ns}.done (done_at);
"""


class TableShapeError(DramatiqAbortError, RuntimeError):
    """A table the backend needs is missing, or exists with other columns or primary key.

    The backend never alters an existing table: rename or drop the table,
    or choose another ``namespace``.
    """


def _db_key(key: str) -> str:
    """``key`` as stored: itself, unless it holds a NUL or starts with the escape character."""
    if "\x00" in key or key.startswith(_ESCAPE):
        return _ESCAPE + json.dumps(key)
    return key


def _from_db_key(stored: str) -> str:
    return str(json.loads(stored[1:])) if stored.startswith(_ESCAPE) else stored


def _decode(where: str, raw: str | None) -> dict[str, Any] | None:
    """A stored JSON object, or ``None`` (logged) for anything else."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        _logger.warning("Ignoring a value that is not JSON at %r: %s", where, exc)
        return None
    if not isinstance(value, dict):
        _logger.warning("Ignoring a value that is not a JSON object at %r: %r", where, value)
        return None
    return value


def _payloads(events: list[Event]) -> list[str]:
    """The batch's announcement, in NOTIFY payloads of at most ``_PAYLOAD_BYTES``.

    Each payload is a JSON list of ``[key, params]``.  An event too large
    for one payload (a key of thousands of characters) is announced by the
    MD5 of its stored key instead, in a payload ``{"fetch": [...]}``, and
    subscribers read it from the table.
    """
    payloads: list[str] = []
    chunk: list[str] = []
    size = 2
    fetch: list[str] = []
    for event in events:
        item = json.dumps([event.key, event.params])  # ASCII: characters are bytes
        if len(item) + 2 > _PAYLOAD_BYTES:
            fetch.append(hashlib.md5(_db_key(event.key).encode("utf-8")).hexdigest())
            continue
        if size + len(item) + 1 > _PAYLOAD_BYTES:
            payloads.append("[" + ",".join(chunk) + "]")
            chunk, size = [], 2
        chunk.append(item)
        size += len(item) + 1
    if chunk:
        payloads.append("[" + ",".join(chunk) + "]")
    for start in range(0, len(fetch), 200):  # 200 digests: about 7 kB
        payloads.append(json.dumps({"fetch": fetch[start : start + 200]}))
    return payloads


def _decode_payload(raw: str) -> tuple[list[Event], list[str]]:
    """An announcement's events and the digests of those to read from the table."""
    try:
        value = json.loads(raw)
        if isinstance(value, dict):
            digests = value.get("fetch")
            if not isinstance(digests, list) or not all(isinstance(d, str) for d in digests):
                raise ValueError("not a list of digests")
            return [], digests
        if not isinstance(value, list):
            raise ValueError("not a list")
        events = []
        for item in value:
            key, params = item
            if not isinstance(key, str) or not isinstance(params, dict):
                raise ValueError(f"bad item {item!r}")
            events.append(Event(key, params))
    except (ValueError, TypeError, RecursionError) as exc:
        _logger.warning("Ignoring a malformed announcement %r: %s", raw[:200], exc)
        return [], []
    return events, []


class _PostgresSubscription:
    """A connection of its own that LISTENs on the backend's channel, read with a timeout.

    It is read at the libpq level (``consume_input``, ``notifies``), so the
    watcher can wait on the socket (``ready``), read what arrived
    (``drain``) and ask whether something waits unread (``pending``).  A
    lost connection is never remade: every read after it raises, so the
    watcher opens a new subscription and re-checks its messages.
    """

    def __init__(self, backend: PostgresBackend) -> None:
        self._backend = backend
        self._channel = backend.namespace.encode("ascii")
        self._backlog: list[Event] = []
        self._fetch: list[str] = []
        self._broken: Exception | None = None
        self._pinging = False
        self._closed = False
        conninfo, kwargs = backend._listen_conninfo()
        self._conn = psycopg.connect(conninfo, **kwargs)
        try:
            # What psycopg reads while it runs LISTEN comes through this handler.
            self._conn.add_notify_handler(self._noted)
            self._conn.execute(f'LISTEN "{backend.namespace}"')
            self._pgconn = self._conn.pgconn
            self._fd = self._pgconn.socket
            self._readable_now = readable_check(self._fd)
        except BaseException:
            self.close()
            raise
        #: ``time.monotonic()`` of the last thing read.
        self.heard_at = time.monotonic()

    @property
    def backend_pid(self) -> int:
        """The server process id of the listening connection."""
        return int(self._pgconn.backend_pid)

    def _noted(self, notify: psycopg.Notify) -> None:
        if notify.channel == self._backend.channel:
            self._take(notify.payload)

    def _take(self, payload: str) -> None:
        events, digests = _decode_payload(payload)
        self._backlog.extend(events)
        self._fetch.extend(digests)

    def _check(self) -> None:
        if self._broken is not None:
            msg = (
                f"the subscription's connection was lost ({self._broken}); "
                "announcements may be lost"
            )
            raise psycopg.OperationalError(msg)
        if self._closed:
            raise psycopg.OperationalError("the subscription is closed")

    def _read(self) -> None:
        """Read what reached the socket into the backlog; raise for a lost connection."""
        self._check()
        pgconn = self._pgconn
        try:
            pgconn.consume_input()
            while (notify := pgconn.notifies()) is not None:
                if notify.relname == self._channel:
                    self._take(notify.extra.decode("utf-8"))
            while self._pinging and not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:
                    self._pinging = False
                elif result.status == psycopg.pq.ExecStatus.FATAL_ERROR:
                    raise psycopg.OperationalError(result.get_error_message())
            if pgconn.status != psycopg.pq.ConnStatus.OK:
                raise psycopg.OperationalError("the connection is broken")
        except Exception as exc:
            self._broken = exc
            raise
        self.heard_at = time.monotonic()

    def _events(self) -> list[Event]:
        events, self._backlog = self._backlog, []
        if self._fetch:
            digests, self._fetch = self._fetch, []
            try:
                events.extend(self._backend._fetch_by_digest(digests))
            except Exception as exc:
                self._broken = exc  # the watcher re-checks every running message
                raise
        return events

    def get(self, timeout: float) -> list[Event]:
        """Wait at most ``timeout`` seconds for announcements."""
        if not self._backlog and not self._fetch:
            if not self.ready(timeout):
                return []
            self._read()
        return self._events()

    def ready(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for something to read, reading nothing."""
        self._check()
        if self._backlog or self._fetch:
            return True
        return wait_readable(self._fd, timeout)

    def drain(self) -> tuple[list[Event], bool]:
        """Read what has arrived, without waiting: (events, whether more may be waiting)."""
        for _ in range(100):
            if not self._readable_now():
                break
            self._read()
        events = self._events()
        return events, self._readable_now()

    def pending(self) -> bool:
        """Whether something reached the connection that no read took yet (any thread).

        Asked for every message that starts, so it neither waits nor
        releases the GIL (see ``_fdcheck``).
        """
        if self._broken is not None or self._closed or self._backlog or self._fetch:
            return True
        return self._readable_now()

    def ping(self) -> None:
        """Send an empty query; a later read takes its reply."""
        self._check()
        if self._pinging:
            return
        try:
            self._pgconn.send_query(b"")
            while self._pgconn.flush():
                select.select([], [self._fd], [], 0.1)  # a full send buffer: wait to write
        except Exception as exc:
            self._broken = exc
            raise
        self._pinging = True

    def close(self) -> None:
        """Close the connection (the server forgets the LISTEN with it)."""
        self._closed = True
        try:
            self._conn.close()
        except Exception:  # closing a broken connection may fail; nothing to keep
            _logger.debug("Error while closing a PostgreSQL subscription.", exc_info=True)


def _life_left(db_key: str, params: dict[str, Any], ttl: int) -> int:
    """The TTL (ms) of an abort request, less the time since it was stamped, on this host's clock.

    Its status expires at ``requested_at + ttl``; the row lives ``ttl`` from
    when the server writes it, which may be a pool's opening later, and
    must not outlive the status.  Measured on this host's clock alone, and
    only when the stamp lies within the TTL behind it: a stamp from a host
    whose clock is off (or a made-up one) leaves the TTL as it is.
    """
    change = request_update(Event(_from_db_key(db_key), params), ttl)
    if change is None or "requested_at" not in change.changes:
        return ttl
    elapsed = time.time() * 1000 - change.changes["requested_at"][1]
    return max(1, round(ttl - elapsed)) if 0 <= elapsed < ttl else ttl


class PostgresBackend(EventBackend):
    """An event backend for PostgreSQL (psycopg 3).

    Requests, statuses and tracked messages are rows of four tables in the
    schema ``namespace``, created on first use (see :meth:`create_tables`);
    announcements go out with ``NOTIFY`` on the channel ``namespace``, in
    the transaction that stores them.

    Args:
        dsn: A libpq connection string or URL, such as
            ``"postgresql://user@db.example/app"``: the backend makes a
            pool of 1 to 10 connections (in autocommit mode, with a 5 s
            connect timeout unless the DSN sets one), opened on first use.
        pool: Or an existing ``psycopg_pool.ConnectionPool``, shared with
            the application; pass ``kwargs={"autocommit": True}`` when
            making it, else each read also costs a ``COMMIT``.  Workers
            also open one connection of their own, with the pool's
            connection string and arguments, to ``LISTEN`` on.
        namespace: The schema of the tables and the channel's name: a
            lower-case SQL identifier, naming a schema of the backend's
            own (not ``public``).
        status_ttl: How long (ms or ``timedelta``) the status of an abort
            is kept after its last change; a request's own status lives at
            least its ``abort_ttl`` longer.  One day by default.
        track_ttl: How long (ms or ``timedelta``) a tracked message is
            remembered at most, as in ``RedisBackend``.  Seven days by
            default.
        create_tables: Create the schema and tables on first use if they
            are missing (``CREATE ... IF NOT EXISTS``).  With ``False``,
            they must exist (:meth:`create_tables`, run once by a role
            allowed to create them), and a missing one raises
            :class:`TableShapeError`.

    Raises:
        TypeError: Neither or both of ``dsn`` and ``pool``, or a ``pool``
            that is not a ``psycopg_pool.ConnectionPool``.
        ValueError: ``namespace`` is not a lower-case identifier, is a
            schema of the database or the application (``public``,
            ``information_schema``, ``pg_*``), or a duration is not a
            positive number of ms.

    Note:
        Tables are never altered: a table of the namespace with other
        columns or another primary key than the backend's raises
        :class:`TableShapeError` on first use.  Each message is checked
        with one query as it starts (no read-ahead of prefetched
        messages): a request stored when ``abort()`` returns is seen by
        every message that starts after that.  Expired rows are deleted
        by the writers (clients and workers) after their write, at most
        1,000 per table every 10 seconds per process, more often while
        that many expire: no cron job is needed, a failed sweep is logged
        and never fails the write, and reads ignore expired rows that are
        still there.

    Example:
        >>> from dramatiq_abort import backends
        >>> backend = backends.PostgresBackend(dsn="postgresql://postgres@localhost/app")

    """

    # No read-ahead: each message is polled as it starts, one round trip.  With
    # read-ahead, a NOTIFY can reach the worker several ms after abort() has
    # returned (24 in 6,116 cancels under stress, up to 8.5 ms), so a message
    # whose read-ahead note said "no request" could start after a cancel had
    # returned; with one poll per message this never happened (0 in 4,109).
    _read_ahead = False

    def __init__(
        self,
        *,
        dsn: str | None = None,
        pool: psycopg_pool.ConnectionPool[Any] | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        status_ttl: Duration = DEFAULT_STATUS_TTL,
        track_ttl: Duration = DEFAULT_TRACK_TTL,
        create_tables: bool = True,
    ) -> None:
        if not isinstance(namespace, str):
            msg = f"namespace must be a string such as {DEFAULT_NAMESPACE!r}, not {namespace!r}"
            raise TypeError(msg)
        if not _NAMESPACE.fullmatch(namespace) or namespace.startswith("pg_"):
            msg = (
                f"namespace must be a lower-case SQL identifier (letters, digits and _, "
                f"at most 63, not starting with a digit or pg_) such as "
                f"{DEFAULT_NAMESPACE!r}: it names a schema and a channel; not {namespace!r}"
            )
            raise ValueError(msg)
        if namespace in _RESERVED_NAMESPACES:
            msg = (
                f"namespace must be a schema of the backend's own, such as "
                f"{DEFAULT_NAMESPACE!r}, not {namespace!r}: that schema holds other "
                f"objects, and the backend creates and drops tables in its schema"
            )
            raise ValueError(msg)
        if (dsn is None) == (pool is None):
            msg = (
                "PostgresBackend needs dsn= (such as 'postgresql://user@host/db') or pool= "
                f"(a psycopg_pool.ConnectionPool), exactly one of them; got dsn={dsn!r}, "
                f"pool={pool!r}"
            )
            raise TypeError(msg)
        if pool is not None and not isinstance(pool, psycopg_pool.ConnectionPool):
            msg = (
                f"pool must be a psycopg_pool.ConnectionPool (not an AsyncConnectionPool), "
                f"not {pool!r}"
            )
            raise TypeError(msg)
        if dsn is not None:
            dsn = _check_dsn(dsn, "dsn")
        if not isinstance(create_tables, bool):
            raise TypeError(f"create_tables must be True or False, not {create_tables!r}")
        self.namespace = namespace
        self.channel = namespace
        self.status_ttl = to_ms(status_ttl, "status_ttl", allow_zero=False)
        self.track_ttl = to_ms(track_ttl, "track_ttl", allow_zero=False)
        self.dsn = dsn
        self._given_pool = pool
        self._own_pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._pool_pid = 0
        self._create = create_tables
        self._ready = False
        self._lock = threading.Lock()
        self._next_sweep = time.monotonic()
        self._sweep_failures: set[str] = set()  # kinds of sweep errors logged as warnings
        ns = f'"{namespace}"'
        self._q_poll = f"SELECT params FROM {ns}.requests WHERE key = %s AND expires_at > now()"
        self._q_poll_many = (
            f"SELECT key, params FROM {ns}.requests WHERE key = ANY(%s) AND expires_at > now()"
        )
        self._q_read_status = (
            f"SELECT message_id, record FROM {ns}.statuses "
            f"WHERE message_id = ANY(%s) AND expires_at > now()"
        )

    def __repr__(self) -> str:
        where = f"dsn={_mask(self.dsn)!r}" if self.dsn is not None else f"pool={self._given_pool!r}"
        return f"PostgresBackend({where}, namespace={self.namespace!r})"

    @classmethod
    def from_url(cls, url: str, *args: Any, **kwargs: Any) -> PostgresBackend:
        """Initialize the backend from a URL such as ``postgresql://user@localhost:5432/app``.

        ``postgres://`` is accepted too.  Extra keyword arguments
        (``namespace=``) are passed on to the constructor.

        Raises:
            TypeError: ``url`` is not a string, or extra arguments are
                positional or include ``dsn`` or ``pool``.
            ValueError: ``url`` is not a PostgreSQL URL libpq can parse (the
                password is masked in the message).
        """
        if args:
            msg = (
                f"from_url takes the URL, then keyword arguments only, such as "
                f"namespace={DEFAULT_NAMESPACE!r}, not the positional arguments {args!r}"
            )
            raise TypeError(msg)
        for name in ("dsn", "pool"):
            if name in kwargs:
                msg = (
                    f"from_url makes the connections from the URL: pass {name}= "
                    "to PostgresBackend()"
                )
                raise TypeError(msg)
        if not isinstance(url, str):
            msg = f"url must be a PostgreSQL URL such as 'postgresql://localhost/app', not {url!r}"
            raise TypeError(msg)
        if not url.startswith(("postgresql://", "postgres://")):
            msg = (
                f"url must be a PostgreSQL URL such as 'postgresql://localhost/app', "
                f"not {_mask(url)!r}"
            )
            raise ValueError(msg)
        return cls(dsn=url, **kwargs)

    # -- connections ------------------------------------------------------------

    def _pool(self) -> psycopg_pool.ConnectionPool[Any]:
        if self._given_pool is not None:
            return self._given_pool
        pid = os.getpid()
        pool = self._own_pool
        if pool is not None and self._pool_pid == pid:
            return pool
        with self._lock:
            if self._own_pool is None or self._pool_pid != pid:
                # A pool inherited through fork is left alone (its sockets
                # are the parent's; psycopg closes nothing in another process).
                conninfo, kwargs = self._own_conninfo()
                pool = psycopg_pool.ConnectionPool(
                    conninfo,
                    kwargs={**kwargs, "autocommit": True},
                    min_size=_POOL_MIN,
                    max_size=_POOL_MAX,
                    timeout=_POOL_TIMEOUT,
                    open=False,
                    name=f"dramatiq-abort-{self.namespace}",
                )
                pool.open(wait=False)
                self._own_pool, self._pool_pid = pool, pid
            return self._own_pool

    def _own_conninfo(self) -> tuple[str, dict[str, Any]]:
        if self.dsn is None:
            raise RuntimeError("a PostgresBackend built from a pool has no DSN of its own")
        params = psycopg.conninfo.conninfo_to_dict(self.dsn)
        extra = {} if "connect_timeout" in params else {"connect_timeout": _CONNECT_TIMEOUT}
        return self.dsn, extra

    def _listen_conninfo(self) -> tuple[str, dict[str, Any]]:
        """The connection string and arguments of a listening connection (autocommit)."""
        if self._given_pool is not None:
            given = self._given_pool.kwargs
            kwargs = dict((given() if callable(given) else given) or {})
            kwargs.pop("row_factory", None)
            conninfo = self._given_pool.conninfo
            if not isinstance(conninfo, str):
                conninfo = ""
        else:
            conninfo, kwargs = self._own_conninfo()
        kwargs["autocommit"] = True
        if "connect_timeout" not in psycopg.conninfo.conninfo_to_dict(conninfo):
            kwargs.setdefault("connect_timeout", _CONNECT_TIMEOUT)
        return conninfo, kwargs

    def close(self) -> None:
        """Close the pool this backend made (a given pool is the caller's to close)."""
        with self._lock:
            pool, self._own_pool = self._own_pool, None
        if pool is not None and self._pool_pid == os.getpid():
            pool.close()

    def _run(self, work: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        """Run ``work`` on a pooled connection, with the tables ready.

        A deadlock is tried again, and so is a connection that broke under
        ``work`` (a pooled connection left over from before a restart): the
        pool's idle connections are checked first.  Every write here may be
        applied twice without harm.
        """
        pool = self._pool()
        for attempt in range(_ATTEMPTS):
            conn: psycopg.Connection[Any] | None = None
            try:
                with pool.connection() as conn:
                    if not self._ready:
                        self._prepare(conn)
                    return work(conn)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == _ATTEMPTS - 1:
                    raise
            except psycopg_pool.PoolTimeout as exc:
                raise self._why_no_connection(exc) from exc
            except psycopg.OperationalError:
                if attempt == _ATTEMPTS - 1 or conn is None or not conn.broken:
                    raise
                pool.check()
        raise AssertionError("unreachable")  # pragma: no cover

    def _why_no_connection(self, exc: psycopg_pool.PoolTimeout) -> psycopg.OperationalError:
        """The pool gave no connection in time: say why, from one connection attempt of our own."""
        conninfo, kwargs = self._listen_conninfo()
        try:
            psycopg.connect(conninfo, **kwargs).close()
        except psycopg.Error as cause:
            reason = " ".join(str(cause).split())
            return psycopg.OperationalError(f"{exc}; connecting: {reason}")
        return psycopg.OperationalError(f"{exc} (all of the pool's connections were busy)")

    # -- tables -------------------------------------------------------------------

    def create_tables(self) -> None:
        """Create the schema and the tables if they are missing, and check their shape.

        Safe to run at any time and from several processes at once (an
        advisory lock serialises it); an existing table is never altered.
        Run it once (as a role allowed to create tables) before using
        ``create_tables=False``.

        Raises:
            TableShapeError: A table of the namespace has other columns or
                another primary key.
        """
        with self._pool().connection() as conn:
            self._create_tables(conn)

    def drop_tables(self) -> None:
        """Drop the backend's four tables, then its schema if nothing else is in it.

        For tests and uninstalls.  Nothing is dropped in cascade: another
        table of the schema is left in place (and so is the schema), and an
        object of the application that depends on one of the backend's
        tables (a view) makes this raise, dropping nothing.

        Raises:
            psycopg.errors.DependentObjectsStillExist: Another object depends
                on one of the tables; drop it first.
        """
        ns = f'"{self.namespace}"'
        with self._pool().connection() as conn, conn.transaction():
            conn.execute(f"DROP TABLE IF EXISTS {', '.join(f'{ns}.{t}' for t in TABLES)}")
            try:
                with conn.transaction():  # a savepoint: a schema in use stays
                    conn.execute(f"DROP SCHEMA IF EXISTS {ns}")
            except psycopg.errors.DependentObjectsStillExist:
                _logger.info("Left the schema %r in place: it holds other objects.", self.namespace)
        self._ready = False

    def _prepare(self, conn: psycopg.Connection[Any]) -> None:
        if self._create:
            self._create_tables(conn)
        else:
            self._check_tables(conn)
        self._ready = True

    def _create_tables(self, conn: psycopg.Connection[Any]) -> None:
        ns = f'"{self.namespace}"'
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ["dramatiq_abort:" + ns])
            # Look first: CREATE SCHEMA IF NOT EXISTS needs the CREATE
            # privilege on the database even when the schema exists.
            exists = conn.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", [self.namespace]
            ).fetchone()
            if exists is None:
                conn.execute(f"CREATE SCHEMA {ns}")
            if self._shape_errors(conn, missing_ok=True):
                self._check_tables(conn)  # raises before anything is created
            conn.execute(_CREATE.format(ns=ns))
        self._check_tables(conn)
        self._ready = True

    def _shape_errors(self, conn: psycopg.Connection[Any], *, missing_ok: bool) -> list[str]:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = ANY(%s)",
            [self.namespace, list(TABLES)],
        ).fetchall()
        found: dict[str, dict[str, str]] = {}
        for table, column, data_type in rows:
            found.setdefault(table, {})[column] = data_type
        keys: dict[str, list[str]] = dict(
            conn.execute(
                "SELECT c.relname, array_agg(a.attname::text ORDER BY k.n) "
                "FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indrelid "
                "JOIN pg_namespace AS s ON s.oid = c.relnamespace "
                "CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) "
                "JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum = k.attnum "
                "WHERE i.indisprimary AND s.nspname = %s AND c.relname = ANY(%s) "
                "GROUP BY c.relname",
                [self.namespace, list(TABLES)],
            ).fetchall()
        )
        errors = []
        for table, columns in TABLES.items():
            have = found.get(table)
            if have is None:
                if not missing_ok:
                    errors.append(f"{self.namespace}.{table} does not exist")
            elif have != columns:
                errors.append(f"{self.namespace}.{table} has the columns {have!r}, not {columns!r}")
            elif (key := keys.get(table)) != PRIMARY_KEYS[table]:
                errors.append(
                    f"{self.namespace}.{table} has "
                    + ("no primary key" if key is None else f"the primary key {key!r}")
                    + f", not the primary key {PRIMARY_KEYS[table]!r}"
                )
        return errors

    def _check_tables(self, conn: psycopg.Connection[Any]) -> None:
        errors = self._shape_errors(conn, missing_ok=False)
        if errors:
            msg = (
                f"the tables of PostgresBackend(namespace={self.namespace!r}) are not as "
                f"expected: {'; '.join(errors)}. The backend never alters a table: choose "
                f"another namespace, or drop or rename the table"
                + (
                    ""
                    if self._create
                    else ", or create the tables with PostgresBackend(...).create_tables()"
                )
            )
            raise TableShapeError(msg)

    # -- requests -----------------------------------------------------------------

    def notify(self, events: Iterable[Event], ttl: int) -> None:
        """Store each event for ``ttl`` ms (combined with a stored one) and announce the batch.

        See :meth:`notify_many`, which this calls with one TTL for all.
        """
        check_ttl(ttl)
        self.notify_many([(event, ttl) for event in check_events(events)])

    def notify_many(self, batch: Iterable[tuple[Event, int]]) -> None:
        """Store each event for its own TTL (ms), combined with a stored one; announce them all.

        One transaction, two round trips: the rows are locked and read
        (made if missing), then written, announced (``pg_notify``, in
        payloads of up to 7.9 kB) and committed.  The status of each abort request is recorded as
        ``requested``.
        """
        items = check_pairs(batch)
        if not items:
            return
        requests: dict[str, list[tuple[dict[str, Any], int]]] = {}
        for event, ttl in items:
            requests.setdefault(_db_key(event.key), []).append((event.params, ttl))
        statuses: dict[str, list[tuple[StatusUpdate, int]]] = {}
        for event, ttl in items:
            change = request_update(event, ttl)
            if change is not None:
                statuses.setdefault(_db_key(change.message_id), []).append(
                    (change, ttl + self.status_ttl)
                )
        for params, _ in (pair for pairs in requests.values() for pair in pairs):
            json.dumps(params)  # not JSON: refused before anything is written
        payloads = _payloads([event for event, _ in items])

        def work(conn: psycopg.Connection[Any]) -> None:
            with conn.pipeline(), conn.transaction():
                conn.execute(_NO_FLUSH_WAIT)
                read_statuses = self._lock_rows(conn, "statuses", statuses) if statuses else dict
                read_requests = self._lock_rows(conn, "requests", requests)
                stored_statuses, stored_requests = read_statuses(), read_requests()
                self._write_statuses(conn, statuses, stored_statuses)
                rows = []
                for key, pairs in requests.items():
                    current, live = stored_requests[key]
                    params = _decode(key, current) if live else None
                    for new, _ in pairs:
                        params = new if params is None else merge_params(params, new)
                    longest = max(_life_left(key, new, ttl) for new, ttl in pairs)
                    rows.append((key, json.dumps(params), longest, live))
                self._write(conn, "requests", "key", "params", rows)
                conn.execute(
                    "SELECT pg_notify(%s, payload) FROM unnest(%s::text[]) AS payload",
                    [self.channel, payloads],
                )

        self._run(work)
        self._sweep_quietly()

    def _lock_rows(
        self, conn: psycopg.Connection[Any], table: str, keys: Iterable[str]
    ) -> Callable[[], dict[str, tuple[str | None, bool]]]:
        """Lock the row of each key (made if missing); return what reads them back.

        One statement, queued in the pipeline: an ``INSERT ... ON CONFLICT
        DO UPDATE`` that inserts a placeholder (never live) for a missing
        key and locks an existing row, returning it as it was.  A placeholder
        expires at ``infinity`` (its JSON is null, so it is never live): its
        dead index entry then sits where no sweep looks.  So two
        writers of a new key wait for one another, and a sweep deleting a
        row meanwhile cannot slip in between.  Keys go in sorted order, so
        writers of overlapping batches lock alike.  The returned function
        gives ``{key: (stored JSON or None, live)}``, syncing the pipeline.
        """
        column, value = ("key", "params") if table == "requests" else ("message_id", "record")
        cursor = conn.execute(
            f'INSERT INTO "{self.namespace}".{table} AS t ({column}, {value}, expires_at) '
            f"SELECT k, NULL, 'infinity' FROM unnest(%s::text[]) AS k "
            f"ON CONFLICT ({column}) DO UPDATE SET {value} = t.{value} "
            f"RETURNING t.{column}, t.{value}, t.expires_at > now()",
            [sorted(keys)],
        )

        def read() -> dict[str, tuple[str | None, bool]]:
            return {
                key: (raw, bool(live) and raw is not None) for key, raw, live in cursor.fetchall()
            }

        return read

    def _write(
        self,
        conn: psycopg.Connection[Any],
        table: str,
        column: str,
        value: str,
        rows: list[tuple[str, str, int, bool]],
    ) -> None:
        """Write ``(key, JSON, ms, live)`` rows locked by ``_lock_rows``.

        Each lives ``ms`` from now, or longer if it was live and lived longer.
        """
        if not rows:
            return
        keys, values, keeps, lives = (list(column_) for column_ in zip(*rows, strict=True))
        conn.execute(
            f'UPDATE "{self.namespace}".{table} AS t SET {value} = v.value, expires_at = '
            f"CASE WHEN v.live THEN greatest(t.expires_at, now() + v.ms * interval '1 ms') "
            f"ELSE now() + v.ms * interval '1 ms' END "
            f"FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bool[]) "
            f"AS v(key, value, ms, live) WHERE t.{column} = v.key",
            [keys, values, keeps, lives],
        )

    def _write_statuses(
        self,
        conn: psycopg.Connection[Any],
        changes: dict[str, list[tuple[StatusUpdate, int]]],
        stored: dict[str, tuple[str | None, bool]],
    ) -> None:
        """Apply each message's updates (in order) to its locked record, as the stub does."""
        rows = []
        for message_id, updates in changes.items():
            raw, live = stored[message_id]
            record: Any = None
            if live and raw is not None:
                try:
                    record = json.loads(raw)
                except (ValueError, RecursionError):
                    record = None  # garbage: the update starts a new record
            keep = 0
            for change, ms in updates:
                applied = apply_update(record, change)
                if applied is not None:
                    record, keep = applied, max(keep, ms)
            if keep:
                rows.append((message_id, json.dumps(record), keep, live))
        self._write(conn, "statuses", "message_id", "record", rows)

    def _sweep_statements(self) -> list[str]:
        """The statements of one sweep: each deletes a bounded batch of one table's expired rows."""
        ns = f'"{self.namespace}"'
        statements = []
        for table, condition in (
            ("requests", "expires_at < now()"),
            ("statuses", "expires_at < now()"),
            ("tracked", f"start_ms < {round(time.time() * 1000) - self.track_ttl}"),
            ("done", f"done_at < now() - interval '{_DONE_FOR}'"),
        ):
            statements.append(
                f"DELETE FROM {ns}.{table} WHERE ctid = ANY(ARRAY("
                f"SELECT ctid FROM {ns}.{table} WHERE {condition} "
                f"LIMIT {_SWEEP_ROWS} FOR UPDATE SKIP LOCKED))"
            )
        return statements

    def _sweep_quietly(self) -> None:
        """Sweep if one is due, after a write has committed; an error is logged, never raised.

        The write is done whatever the sweep does, so it neither fails the
        call nor runs the write again: a sweep that fails (a role without
        ``DELETE``, a lost connection) waits for its next turn.  The first
        failure of each kind is a warning, the others are debug messages.
        """
        if time.monotonic() < self._next_sweep:
            return
        try:
            with self._pool().connection() as conn:
                self._sweep(conn)
        except Exception as exc:
            kind = f"{type(exc).__name__} {getattr(exc, 'sqlstate', None) or ''}".strip()
            first = kind not in self._sweep_failures
            self._sweep_failures.add(kind)
            _logger.log(
                logging.WARNING if first else logging.DEBUG,
                "Could not delete the expired rows of PostgreSQL schema %r "
                "(tried again in %s s; this is logged once per kind of error): %s",
                self.namespace,
                _SWEEP_EVERY,
                exc,
            )

    def _sweep(self, conn: psycopg.Connection[Any]) -> None:
        """Delete expired rows, at most ``_SWEEP_ROWS`` per table, every ``_SWEEP_EVERY`` s.

        Called after a write has committed (see ``_sweep_quietly``).  Rows
        locked by a writer are skipped (``SKIP LOCKED``), so a sweep never
        waits for one.
        """
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_EVERY
        cursors = []
        with conn.pipeline(), conn.transaction():
            conn.execute(_NO_FLUSH_WAIT)
            for statement in self._sweep_statements():
                cursors.append(conn.execute(statement))
        full = any(cursor.rowcount >= _SWEEP_ROWS for cursor in cursors)
        if full:
            self._next_sweep = now  # more are due: the next write sweeps again

    def poll(self, key: str) -> Event | None:
        """Return the live event stored under ``key``, leaving it in place."""
        check_key(key)
        if not encodable(key):
            return None  # no row can hold such a key: it has no request

        def work(conn: psycopg.Connection[Any]) -> Any:
            return conn.execute(self._q_poll, [_db_key(key)]).fetchone()

        row = self._run(work)
        if row is None:
            return None
        params = _decode(key, row[0])
        return None if params is None else Event(key, params)

    def poll_many(self, keys: Iterable[str]) -> list[Event]:
        """Return the live events among ``keys``, in their order: one query (``= ANY``)."""
        wanted = [key for key in check_keys(keys) if encodable(key)]
        if not wanted:
            return []
        stored = [_db_key(key) for key in wanted]

        def work(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(self._q_poll_many, [stored]).fetchall()

        found = dict(self._run(work))
        events = []
        for key, db_key in zip(wanted, stored, strict=True):
            if db_key in found:
                params = _decode(key, found[db_key])
                if params is not None:
                    events.append(Event(key, params))
        return events

    def _fetch_by_digest(self, digests: list[str]) -> list[Event]:
        """The live requests whose stored key has one of these MD5 digests (oversized ones)."""

        def work(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(
                f'SELECT key, params FROM "{self.namespace}".requests '
                f"WHERE md5(key) = ANY(%s) AND expires_at > now()",
                [digests],
            ).fetchall()

        events = []
        for db_key, raw in self._run(work):
            key = _from_db_key(db_key)
            params = _decode(key, raw)
            if params is not None:
                events.append(Event(key, params))
        return events

    def wait_many(self, keys: Iterable[str], timeout: int) -> Event | None:
        """Wait up to ``timeout`` ms for one of ``keys``, stored or announced."""
        return _subscribed.wait_many(self, keys, timeout)

    def subscribe(self) -> Subscription:
        """Open a connection that LISTENs on the channel; live on return."""
        return _PostgresSubscription(self)

    # -- statuses -----------------------------------------------------------------

    def update_status(self, updates: Iterable[StatusUpdate]) -> None:
        """Apply workers' updates to the status records: one transaction, two round trips."""
        changes: dict[str, list[tuple[StatusUpdate, int]]] = {}
        for change in updates:
            check_update(change)
            if encodable(change.message_id):  # else no record can exist
                changes.setdefault(_db_key(change.message_id), []).append((change, self.status_ttl))
        if not changes:
            return

        def work(conn: psycopg.Connection[Any]) -> None:
            with conn.pipeline(), conn.transaction():
                conn.execute(_NO_FLUSH_WAIT)
                stored = self._lock_rows(conn, "statuses", changes)()
                self._write_statuses(conn, changes, stored)

        self._run(work)
        self._sweep_quietly()

    def read_status(self, message_ids: Iterable[str]) -> list[dict[str, Any] | None]:
        """Return each message's status record, ``None`` where there is none (one query)."""
        ids = check_ids(message_ids)
        readable = [_db_key(i) for i in ids if encodable(i)]
        found: dict[str, str] = {}
        if readable:

            def work(conn: psycopg.Connection[Any]) -> list[Any]:
                return conn.execute(self._q_read_status, [readable]).fetchall()

            found = dict(self._run(work))
        records: list[dict[str, Any] | None] = []
        for message_id in ids:
            raw = found.get(_db_key(message_id)) if encodable(message_id) else None
            records.append(_decode(f"status of {message_id!r}", raw))
        return records

    def extend(self, until: Iterable[tuple[str, int]]) -> None:
        """Keep each message's request alive until a wall-clock time, in ms; its status says so.

        The status record's ``expires_at`` moves to that time too, but only
        for a ``requested`` record whose request has not expired.
        """
        wall = time.time() * 1000
        pairs: dict[str, int] = {}
        for message_id, until_ms in until:
            check_ids([message_id])
            if encodable(message_id):  # else it has no request
                pairs[_db_key(message_id)] = max(pairs.get(_db_key(message_id), 0), until_ms)
        if not pairs:
            return
        ns = f'"{self.namespace}"'

        want = {
            message_id: min(MAX_MS, max(0, round(until_ms - wall)))
            for message_id, until_ms in pairs.items()
        }
        keys = sorted((_db_key(key_for(_from_db_key(m))), ms) for m, ms in want.items())

        def work(conn: psycopg.Connection[Any]) -> None:
            with conn.pipeline(), conn.transaction():
                conn.execute(_NO_FLUSH_WAIT)
                # Rows are locked in the order of every writer (see _LOCK_ORDER):
                # the statuses, then the requests, each by sorted key.
                rows_cursor = conn.execute(
                    f"SELECT message_id, record FROM {ns}.statuses WHERE message_id = ANY(%s) "
                    f"AND expires_at > now() AND record IS NOT NULL "
                    f"ORDER BY message_id FOR UPDATE",
                    [sorted(want)],
                )
                conn.execute(
                    f"SELECT 1 FROM {ns}.requests WHERE key = ANY(%s) ORDER BY key FOR UPDATE",
                    [[key for key, _ in keys]],
                )
                conn.execute(
                    f"UPDATE {ns}.requests AS t SET expires_at = now() + v.ms * interval '1 ms' "
                    f"FROM unnest(%s::text[], %s::bigint[]) AS v(key, ms) "
                    f"WHERE t.key = v.key AND t.expires_at > now() "
                    f"AND t.expires_at < now() + v.ms * interval '1 ms'",
                    [[key for key, _ in keys], [ms for _, ms in keys]],
                )
                rows = rows_cursor.fetchall()
                writes = []
                for message_id, raw in rows:
                    record = _decode(f"status of {message_id!r}", raw)
                    if record is None or record.get("state") != "requested":
                        continue
                    stamp = record.get("expires_at")
                    if not isinstance(stamp, (int, float)) or isinstance(stamp, bool):
                        stamp = None
                    if stamp is not None and stamp < wall:
                        continue  # its request expired: it must not come back
                    until_ms = pairs[message_id]
                    if stamp is None or stamp < until_ms:
                        record["expires_at"] = round(until_ms)
                    keep = min(2 * MAX_MS, want[message_id] + self.status_ttl)
                    writes.append((message_id, json.dumps(record), keep, True))
                self._write(conn, "statuses", "message_id", "record", writes)

        self._run(work)

    # -- tracking -----------------------------------------------------------------

    def track(self, changes: Iterable[tuple[str, str, str, int]]) -> None:
        """Add and remove messages of their actor's table, in order, in one transaction.

        A removed id is remembered for an hour, and an ``add`` of it comes
        too late and is ignored, as in ``RedisBackend``.
        """
        batch = [
            (change, _db_key(actor), _db_key(message_id), start_ms)
            for change, actor, message_id, start_ms in check_tracking(changes)
            if encodable(actor) and encodable(message_id)
        ]
        if not batch:
            return
        ns = f'"{self.namespace}"'
        add = (
            f"INSERT INTO {ns}.tracked (actor, message_id, start_ms) "
            f"SELECT v.actor, v.id, v.ms FROM unnest(%s::text[], %s::text[], %s::bigint[]) "
            f"AS v(actor, id, ms) WHERE NOT EXISTS (SELECT 1 FROM {ns}.done AS d "
            f"WHERE d.actor = v.actor AND d.message_id = v.id "
            f"AND d.done_at > now() - interval '{_DONE_FOR}') "
            f"ON CONFLICT (actor, message_id) DO UPDATE SET start_ms = EXCLUDED.start_ms"
        )
        remove = (
            f"WITH v AS (SELECT * FROM unnest(%s::text[], %s::text[]) AS v(actor, id)), "
            f"gone AS (DELETE FROM {ns}.tracked AS t USING v "
            f"WHERE t.actor = v.actor AND t.message_id = v.id) "
            f"INSERT INTO {ns}.done (actor, message_id, done_at) "
            f"SELECT DISTINCT actor, id, now() FROM v "
            f"ON CONFLICT (actor, message_id) DO UPDATE SET done_at = now()"
        )

        locks = sorted(
            {self._track_lock_id(actor, message_id) for _, actor, message_id, _ in batch}
        )

        def work(conn: psycopg.Connection[Any]) -> None:
            with conn.pipeline(), conn.transaction():
                conn.execute(_NO_FLUSH_WAIT)
                # The changes must keep their order (an add, then the remove of
                # the same id), so the rows cannot be taken in one sorted pass:
                # a lock per message, in sorted order, comes first (see _LOCK_ORDER).
                conn.execute(
                    "SELECT pg_advisory_xact_lock(u.id) "
                    "FROM unnest(%s::bigint[]) WITH ORDINALITY AS u(id, n) ORDER BY u.n",
                    [locks],
                )
                for kind, run in _runs(batch):
                    if kind == "add":
                        # Within one statement, the last add of an id wins.
                        last = sorted({(a, i): ms for _, a, i, ms in run}.items())
                        conn.execute(
                            add,
                            [
                                [a for (a, _), _ in last],
                                [i for (_, i), _ in last],
                                [ms for _, ms in last],
                            ],
                        )
                    else:
                        pairs = sorted({(a, i) for _, a, i, _ in run})
                        conn.execute(remove, [[a for a, _ in pairs], [i for _, i in pairs]])

        self._run(work)
        self._sweep_quietly()

    def _track_lock_id(self, actor: str, message_id: str) -> int:
        """The advisory lock id of a stored (actor, message id) of this namespace: 64 bits."""
        name = json.dumps(["dramatiq_abort", self.namespace, actor, message_id])
        digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    def tracked(self, actor_name: str) -> list[tuple[str, int]]:
        """The outstanding messages of ``actor_name``: (message id, ms when it may start)."""
        check_ids([actor_name])
        if not encodable(actor_name):
            return []
        stale = round(time.time() * 1000) - self.track_ttl
        ns = f'"{self.namespace}"'

        def work(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(
                f"SELECT message_id, start_ms FROM {ns}.tracked "
                f"WHERE actor = %s AND start_ms >= %s ORDER BY start_ms, message_id",
                [_db_key(actor_name), stale],
            ).fetchall()

        return [(_from_db_key(message_id), int(ms)) for message_id, ms in self._run(work)]


def _runs(
    batch: list[tuple[str, str, str, int]],
) -> Iterator[tuple[str, list[tuple[str, str, str, int]]]]:
    """Consecutive changes of one kind, in order (an add, then the remove of the same id)."""
    run: list[tuple[str, str, str, int]] = []
    for item in batch:
        if run and item[0] != run[0][0]:
            yield run[0][0], run
            run = []
        run.append(item)
    if run:
        yield run[0][0], run


def _mask(dsn: str | None) -> str | None:
    """``dsn`` with its password replaced by ``***``."""
    if dsn is None:
        return None
    masked = re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", masked)


def _check_dsn(dsn: Any, name: str) -> str:
    """Return ``dsn`` if libpq can parse it; the error masks the password."""
    if not isinstance(dsn, str):
        msg = (
            f"{name} must be a libpq connection string such as "
            f"'postgresql://user@localhost/app', not {dsn!r}"
        )
        raise TypeError(msg)
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        msg = (
            f"{name} must be a libpq connection string such as "
            f"'postgresql://user@localhost/app', not {_mask(dsn)!r} ({exc})"
        )
        raise ValueError(msg) from None
    return dsn
