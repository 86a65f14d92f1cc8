"""The Redis event backend.

Each request is stored under ``<namespace><event key>`` with a TTL, so a
worker that takes the message later still finds it, and every batch is
announced with one ``PUBLISH`` on ``<namespace>events``, so a running
message learns of it at once.  The status of each abort is a JSON record
under ``<namespace>status:<message id>`` (see ``_status``).  A small server-side script stores each
request, combined with one already there (the stronger wins, see
``_merge``), and the last one publishes the batch: one pipelined round
trip.  Workers hold one subscribed connection each and read it with a
timeout: an idle worker sends Redis no commands.  Values are JSON.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
import redis.cluster

from .._fdcheck import readable_check, wait_readable
from .._merge import MERGE_FUNCTIONS, MERGE_LUA
from .._request import MAX_MS, Duration, key_for, to_ms
from .._status import STATUS_FUNCTIONS, STATUS_LUA, check_update, request_update, status_key
from ..events import Event, EventBackend, StatusUpdate, Subscription
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
from ._redis_urls import URL_DEFAULTS, client_from_url

__all__ = ["RedisBackend"]

_logger = logging.getLogger(__name__)

#: Seconds to wait for Redis to confirm a subscription.
_SUBSCRIBE_TIMEOUT = 5.0
#: Seconds a cluster node a subscription failed on is left out of the next picks.
_AVOID_FAILED_NODE_S = 30.0
#: Many requests in one call: ``KEYS`` hold each request's key and its status
#: key; ``ARGV[1]`` and ``ARGV[2]`` the channel and the announcement (``''``:
#: none); ``ARGV[3]`` a JSON list with, per request, its JSON, its TTL, its
#: status update (JSON) and the status's life (one argument, not four per
#: request: redis-py's packing of arguments was most of a bulk call's time).
_BULK_LUA = (
    MERGE_FUNCTIONS
    + STATUS_FUNCTIONS
    + """
local items = cjson.decode(ARGV[3])
for i, item in ipairs(items) do
  apply_status(KEYS[2 * i], item[3], item[4])
  store_request(KEYS[2 * i - 1], item[1], item[2])
end
if ARGV[1] ~= '' then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return #items
"""
)
#: Keep ``KEYS[1]``, if it exists, alive at least ``ARGV[1]`` ms from now.
_EXTEND_LUA = """
local want = tonumber(ARGV[1])
local left = redis.call('PTTL', KEYS[1])
if left >= 0 and left < want then redis.call('PEXPIRE', KEYS[1], want) return 1 end
return 0
"""
#: Move the ``expires_at`` of the status record at ``KEYS[1]`` to at least
#: ``ARGV[1]`` (wall-clock ms), and keep it alive ``ARGV[2]`` ms at least; only
#: a ``requested`` record whose request still lives (its ``expires_at`` is not
#: before ``ARGV[3]``, now): an expired one must not come back.
_EXTEND_STATUS_LUA = """
local raw = redis.pcall('GET', KEYS[1])
if type(raw) ~= 'string' then return 0 end
local ok, record = pcall(cjson.decode, raw)
if not ok or type(record) ~= 'table' or record.state ~= 'requested' then return 0 end
if type(record.expires_at) == 'number' and record.expires_at < tonumber(ARGV[3]) then
  return 0
end
local until_ms = tonumber(ARGV[1])
if type(record.expires_at) ~= 'number' or record.expires_at < until_ms then
  record.expires_at = until_ms
end
local keep = tonumber(ARGV[2])
local left = redis.call('PTTL', KEYS[1])
if left > keep then keep = left end
redis.call('SET', KEYS[1], cjson.encode(record), 'PX', keep)
return 1
"""
#: Track: ``KEYS`` the actor's outstanding set and its done set; ``ARGV[1]``
#: ``add`` or ``remove``, ``ARGV[2]`` now (ms), ``ARGV[3]`` and ``ARGV[4]`` the
#: stamps before which outstanding and done members are dropped, ``ARGV[5]``
#: the sets' life (ms); then ``id, ms`` pairs (add) or ids (remove).  An id
#: done (removed) is not added again: its add came late, from another process.
_TRACK_LUA = """
local first = 6
if ARGV[1] == 'add' then
  for i = first, #ARGV, 2 do
    if not redis.call('ZSCORE', KEYS[2], ARGV[i]) then
      redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
    end
  end
else
  for i = first, #ARGV do
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[i])
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
"""
#: The scripts by digest, computed here so no round trip is needed to learn them.
_SCRIPTS = {
    hashlib.sha1(lua.encode("utf-8")).hexdigest(): lua
    for lua in (MERGE_LUA, STATUS_LUA, _BULK_LUA, _EXTEND_LUA, _EXTEND_STATUS_LUA, _TRACK_LUA)
}
_MERGE_SHA, _STATUS_SHA, _BULK_SHA, _EXTEND_SHA, _EXTEND_STATUS_SHA, _TRACK_SHA = _SCRIPTS
#: From this many abort requests on, ``notify_many`` uses the bulk script ...
_BULK_FROM = 16
#: ... with this many requests per call.
_BULK_CHUNK = 500
#: Tracked messages of an actor live in a sorted set under this key prefix
#: (followed by ``{actor name}``: a hash tag, so both sets share a slot) ...
ACTOR_PREFIX = "actor:"
#: ... and the ids done lately in another, for an hour.
DONE_PREFIX = "actor-done:"
_DONE_FOR_MS = 3_600_000
#: The set itself outlives its newest member by this much, in ms.
_TRACK_SLACK_MS = 60_000
#: How long a tracked message is remembered at most by default: 7 days, in ms.
DEFAULT_TRACK_TTL = 7 * 86_400_000
#: The longest life ``extend`` gives a key, in ms.
_MAX_TTL_MS = MAX_MS
#: How long status records are kept by default: one day, in ms.
DEFAULT_STATUS_TTL = 86_400_000
#: Most replies one ``drain`` reads before the watcher handles them.
_DRAIN_REPLIES = 100
#: From this many keys on, ``poll_many`` asks ``EXISTS`` first: requests are rare,
#: and parsing one integer costs far less than parsing a nil per key.
_EXISTS_FIRST = 8
#: Most keys in one MGET or EXISTS; more go in several, pipelined.
_MGET_KEYS = 1000


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)


def _decode_params(key: str, raw: Any) -> Event | None:
    try:
        params = json.loads(_text(raw))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        _logger.warning("Ignoring a value that is not JSON at %r: %s", key, exc)
        return None
    if not isinstance(params, dict):
        _logger.warning("Ignoring a value that is not a JSON object at %r: %r", key, params)
        return None
    return Event(key, params)


def _decode_batch(raw: Any) -> list[Event]:
    try:
        items = json.loads(_text(raw))
        if not isinstance(items, list):
            raise ValueError("not a list")
        events = []
        for item in items:
            key, params = item
            if not isinstance(key, str) or not isinstance(params, dict):
                raise ValueError(f"bad item {item!r}")
            events.append(Event(key, params))
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError) as exc:
        _logger.warning("Ignoring a malformed announcement %r: %s", raw, exc)
        return []
    return events


def _status_args(change: StatusUpdate, keep: int) -> tuple[str, int]:
    body = {"rank": change.rank, "state": change.state, "changes": change.changes}
    return json.dumps(body), keep


class _RedisSubscription:
    """A subscribed connection, read with a timeout.

    It is read at the connection level, not through ``PubSub.get_message``:
    redis-py silently reconnects and resubscribes a pub/sub connection that
    failed, and announcements published meanwhile would be lost unnoticed.
    A connect callback marks the subscription as remade instead, and every
    read then raises, so the watcher opens a new one and re-checks.
    """

    def __init__(self, pubsub: Any, channel: str) -> None:
        self._pubsub = pubsub
        self._connection: Any = None
        self._sock: Any = None
        self._ssl_pending: Callable[[], int] | None = None
        self._remade = False
        #: ``time.monotonic()`` of the last reply or message read.
        self.heard_at = float("-inf")
        try:
            self._pubsub.subscribe(channel)
            deadline = time.monotonic() + _SUBSCRIBE_TIMEOUT
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise redis.ConnectionError(f"Redis did not confirm SUBSCRIBE {channel}")
                message = self._pubsub.get_message(timeout=remaining)
                if message is not None and message["type"] in ("subscribe", b"subscribe"):
                    self.heard_at = time.monotonic()
                    break
            self._connection = self._pubsub.connection
            self._connection.register_connect_callback(self._reconnected)
            # redis-py's socket: no public accessor; pending() treats it as opaque.
            self._sock = getattr(self._connection, "_sock", None)
            if isinstance(self._sock, ssl.SSLSocket):
                self._ssl_pending = self._sock.pending
            self._readable_now = readable_check(self._sock.fileno() if self._sock else -1)
            parameters = inspect.signature(self._connection.read_response).parameters
            self._read_options = {"disconnect_on_error": False}
            if "push_request" in parameters:  # RESP3: pub/sub messages are pushes
                self._read_options["push_request"] = True
        except BaseException:
            self.close()
            raise

    def _reconnected(self, connection: Any) -> None:
        self._remade = True

    def _check(self) -> Any:
        if self._remade:
            msg = "the subscription's connection was lost and remade; announcements may be lost"
            raise redis.ConnectionError(msg)
        return self._connection

    def _read(self, timeout: float) -> tuple[bool, list[Event]]:
        """Read one reply if one arrives within ``timeout``: (read one?, its events)."""
        connection = self._check()
        if not connection.can_read(timeout=timeout):
            self._check()
            return False, []
        # The rest of a reply that arrived in part comes within socket_timeout.
        response = connection.read_response(**self._read_options)
        self._check()
        self.heard_at = time.monotonic()
        if (
            isinstance(response, (list, tuple))
            and len(response) >= 3
            and response[0] in (b"message", "message")
        ):
            return True, _decode_batch(response[2])
        return True, []  # our PING's reply

    def get(self, timeout: float) -> list[Event]:
        """Wait at most ``timeout`` seconds for one announcement."""
        # One read per call: every extra socket call releases the GIL, and a
        # CPU-bound actor thread then keeps it for a whole switch interval
        # before the watcher can deliver.  The next call reads what follows.
        return self._read(timeout)[1]

    def ready(self, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds for something to read, reading nothing."""
        self._check()
        return self._readable(timeout)

    def drain(self) -> tuple[list[Event], bool]:
        """Read what has arrived, without waiting: (events, whether more may be buffered)."""
        events: list[Event] = []
        for _ in range(_DRAIN_REPLIES):
            read, batch = self._read(0)
            if not read:
                return events, False
            events.extend(batch)
        return events, True

    def pending(self) -> bool:
        """Whether something reached the connection that no read took yet (any thread).

        Asked for every message that starts, so it neither waits nor
        releases the GIL (see ``_fdcheck``).
        """
        sock = self._sock
        if self._remade or sock is None or getattr(self._connection, "_sock", None) is not sock:
            return True  # remade, or disconnected: the next read fails
        if self._ssl_pending is not None and self._ssl_pending():
            return True  # decrypted, buffered in the TLS layer
        return self._readable_now()

    def _readable(self, timeout: float) -> bool:
        sock = getattr(self._connection, "_sock", None)
        if sock is None:
            return True  # disconnected: the next read reconnects and fails
        return wait_readable(sock.fileno(), timeout)

    def ping(self) -> None:
        """Send a PING; a later read takes its reply."""
        self._check()
        self._pubsub.ping("dramatiq-abort")

    def close(self) -> None:
        """Unsubscribe and give the connection back."""
        if self._connection is not None:
            try:
                self._connection.deregister_connect_callback(self._reconnected)
            except Exception:  # only a missing callback; nothing to undo
                _logger.debug("Could not deregister a connect callback.", exc_info=True)
        try:
            self._pubsub.close()
        except Exception:  # closing a broken connection may fail; nothing to keep
            _logger.debug("Error while closing a Redis subscription.", exc_info=True)


class RedisBackend(EventBackend):
    """An event backend for Redis.

    Args:
        client: A ``redis.Redis`` client; ``None`` connects to Redis on
            localhost:6379, database 0, with the timeouts of :meth:`from_url`.
        namespace: Prefix of every key and of the announcement channel.
        track_ttl: How long (ms or ``timedelta``) a tracked message (see
            ``Abortable(track_messages=True)``) is remembered at most, if
            no worker says it is done.  Seven days, dramatiq's longest
            delay, by default.
        status_ttl: How long (ms or ``timedelta``) the status of an abort
            is kept after its last change; a request's own status lives at
            least its ``abort_ttl`` longer.  One day by default.

    Example:
        >>> import redis
        >>> from dramatiq_abort import backends
        >>> backend = backends.RedisBackend(client=redis.Redis())

    """

    _read_ahead = True  # a read is a round trip: check prefetched messages in batches

    def __init__(
        self,
        *,
        client: Any = None,
        namespace: str = "dramatiq:aborts:",
        status_ttl: Duration = DEFAULT_STATUS_TTL,
        track_ttl: Duration = DEFAULT_TRACK_TTL,
    ) -> None:
        if not isinstance(namespace, str) or not namespace:
            msg = (
                f"namespace must be a non-empty string such as 'dramatiq:aborts:', "
                f"not {namespace!r}"
            )
            raise (ValueError if isinstance(namespace, str) else TypeError)(msg)
        try:
            namespace.encode("utf-8")
        except UnicodeEncodeError:
            msg = (
                f"namespace must be a string that can be encoded as UTF-8 (no lone "
                f"surrogates), such as 'dramatiq:aborts:', not {namespace!r}"
            )
            raise ValueError(msg) from None
        if client is not None and (
            not all(callable(getattr(client, name, None)) for name in ("get", "pipeline", "pubsub"))
            or inspect.iscoroutinefunction(getattr(client, "execute_command", None))
        ):
            msg = (
                f"client must be a redis.Redis client (not a redis.asyncio one), or None "
                f"for Redis on localhost:6379, not {client!r}"
            )
            raise TypeError(msg)
        if client is None:
            client = redis.Redis(**URL_DEFAULTS)
        self.client = client
        #: A Redis Cluster: no command names keys of two slots (see ``docs/architecture.md``).
        self._cluster = isinstance(client, redis.cluster.RedisCluster)
        #: Cluster nodes a subscription just failed on: name -> monotonic time to retry.
        self._failed_nodes: dict[str, float] = {}
        opened = namespace.find("{")
        if self._cluster and opened >= 0 and "}" not in namespace[opened:]:
            msg = (
                f"namespace {namespace!r} opens a hash tag ('{{') it does not close: on a "
                f"Redis Cluster an actor's two tracking sets would land in different slots; "
                f"close it ('{{myapp}}:aborts:' puts every key in one slot) or drop the brace"
            )
            raise ValueError(msg)
        self.namespace = namespace
        self.channel = namespace + "events"
        self.status_ttl = to_ms(status_ttl, "status_ttl", allow_zero=False)
        self.track_ttl = to_ms(track_ttl, "track_ttl", allow_zero=False)

    def __repr__(self) -> str:
        return f"RedisBackend(client={self.client!r}, namespace={self.namespace!r})"

    @classmethod
    def from_url(cls, url: str, *args: Any, cluster: bool = False, **kwargs: Any) -> RedisBackend:
        """Initialize the backend from a Redis URL such as ``redis://localhost:6379/0``.

        Three kinds of URL are understood:

        - ``redis://``, ``rediss://``, ``unix://``: one Redis server.
        - ``redis+cluster://host:7000,host:7001``: a Redis Cluster, found
          from any node named; or a ``redis://`` URL of one node with
          ``cluster=True``.
        - ``redis+sentinel://host:26379,host2:26379/mymaster/0``: the
          primary that the Sentinels (port 26379 by default) name for the
          service ``mymaster``; database 0.  A user and password before the
          addresses are the primary's; ``sentinel_password`` in the query
          string is the Sentinels' own.

        The client gets finite socket timeouts and (one server, Sentinel)
        a health check every 30 seconds; options in the URL's query string
        win.  Extra keyword arguments (``namespace=``) are passed on to the
        default constructor.

        Raises:
            TypeError: ``url`` is not a string, or extra arguments are
                positional or include ``client``.
            ValueError: ``url`` is not a valid Redis URL, or names an option
                redis-py does not know (the password is masked in the
                message), or ``namespace`` is empty.
            redis.ConnectionError: A cluster URL, and no node named answers
                as a cluster node: a ``RedisCluster`` asks for the cluster's
                layout when it is made.
        """
        if args:
            msg = (
                f"from_url takes the URL, then keyword arguments only, such as "
                f"namespace='dramatiq:aborts:', not the positional arguments {args!r}"
            )
            raise TypeError(msg)
        if "client" in kwargs:
            msg = (
                "from_url makes the client from the URL: pass client= to RedisBackend(), "
                "or put client options in the URL's query string (?socket_timeout=5)"
            )
            raise TypeError(msg)
        if not isinstance(cluster, bool):
            raise TypeError(f"cluster must be True or False, not {cluster!r}")
        return cls(client=client_from_url(url, cluster=cluster), **kwargs)

    def _key(self, key: str) -> str:
        return self.namespace + key

    def notify(self, events: Iterable[Event], ttl: int) -> None:
        """Store each event for ``ttl`` ms (combined with a stored one) and announce the batch.

        See :meth:`notify_many`, which this calls with one TTL for all.
        """
        check_ttl(ttl)
        self.notify_many([(event, ttl) for event in check_events(events)])

    def notify_many(self, batch: Iterable[tuple[Event, int]]) -> None:
        """Store each event for its own TTL (ms), combined with a stored one; announce them all.

        The status of each abort request is recorded first (``requested``).
        One pipelined round trip: a script call per key for a few events;
        from 16 abort requests on, one script call per 500 of them (their
        request and status keys in one call: see ``docs/architecture.md``
        on Redis Cluster).  The first call after Redis lost its script
        cache (a restart) takes two more round trips, to load the scripts
        and run again.
        """
        items = check_pairs(batch)
        if not items:
            return
        announcement = json.dumps([[event.key, event.params] for event, _ in items])
        changes = [request_update(event, ttl) for event, ttl in items]
        requests = [
            (event, ttl, change)
            for (event, ttl), change in zip(items, changes, strict=True)
            if change is not None
        ]
        # On a cluster every call names one key, and the announcement waits
        # until every node has stored its share: the nodes run the pipeline
        # side by side, so a PUBLISH in it could overtake a store.
        publish_after = self._cluster
        if len(items) >= _BULK_FROM and len(requests) == len(items) and not self._cluster:
            calls = self._bulk_calls(requests, announcement)
        else:
            calls = []
            for (_, ttl), change in zip(items, changes, strict=True):
                if change is not None:
                    args = _status_args(change, ttl + self.status_ttl)
                    calls.append((_STATUS_SHA, [self._status_key(change.message_id)], args))
            for index, (event, ttl) in enumerate(items):
                # Only the last call publishes: if the script is missing,
                # nothing is announced before the requests are stored.
                last = index == len(items) - 1 and not publish_after
                channel, payload = (self.channel, announcement) if last else ("", "")
                value = json.dumps(event.params)
                calls.append((_MERGE_SHA, [self._key(event.key)], (value, ttl, channel, payload)))
        self._run_scripts(calls)
        if publish_after:
            self.client.publish(self.channel, announcement)

    def _bulk_calls(
        self, requests: list[tuple[Event, int, StatusUpdate]], announcement: str
    ) -> list[tuple[str, list[str], tuple[Any, ...]]]:
        """Calls of the bulk script, 500 requests each; the last one announces them all."""
        calls: list[tuple[str, list[str], tuple[Any, ...]]] = []
        for start in range(0, len(requests), _BULK_CHUNK):
            keys: list[str] = []
            items: list[Any] = []
            for event, ttl, change in requests[start : start + _BULK_CHUNK]:
                keys += [self._key(event.key), self._status_key(change.message_id)]
                status, keep = _status_args(change, ttl + self.status_ttl)
                items.append([json.dumps(event.params), ttl, status, keep])
            last = start + _BULK_CHUNK >= len(requests)
            head = (self.channel, announcement) if last else ("", "")
            calls.append((_BULK_SHA, keys, (*head, json.dumps(items))))
        return calls

    def _run_scripts(self, calls: list[tuple[str, list[str], tuple[Any, ...]]]) -> None:
        """Run each ``(digest, keys, args)`` script call, in order, pipelined.

        Calls whose script Redis lost (a restart) run again, in order, once
        the scripts are loaded.
        """
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            for sha, keys, args in calls:
                # execute_command: a cluster pipeline refuses its evalsha(), not
                # the command.  Routed here by the first key: left to itself,
                # redis-py 8 asks one node COMMAND GETKEYS for every such call,
                # one round trip each, before it sends the pipeline.
                options = (
                    {"target_nodes": self.client.get_node_from_key(keys[0])}
                    if self._cluster
                    else {}
                )
                pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args, **options)
            results = pipe.execute(raise_on_error=False)
            missing = []
            for call, result in zip(calls, results, strict=True):
                if isinstance(result, redis.exceptions.NoScriptError):
                    missing.append(call)
                elif isinstance(result, Exception):
                    raise result
            if not missing:
                return
            if attempt == 0:
                for sha in dict.fromkeys(sha for sha, _, _ in missing):
                    self.client.script_load(_SCRIPTS[sha])
                calls = missing
        msg = "Redis does not keep the request scripts (SCRIPT LOAD had no effect)"
        raise redis.exceptions.NoScriptError(msg)

    def _status_key(self, message_id: str) -> str:
        return self._key(status_key(message_id))

    def update_status(self, updates: Iterable[StatusUpdate]) -> None:
        """Apply workers' updates to the status records, in one pipelined round trip."""
        changes = [check_update(change) for change in updates]
        keep = self.status_ttl
        calls = [
            (_STATUS_SHA, [self._status_key(c.message_id)], _status_args(c, keep)) for c in changes
        ]
        if calls:
            self._run_scripts(calls)

    def extend(self, until: Iterable[tuple[str, int]]) -> None:
        """Keep each message's request alive until a wall-clock time, in ms; its status says so.

        The status record's ``expires_at`` moves to that time too.  A script
        call per key, pipelined: one round trip.
        """
        now = time.time() * 1000
        calls: list[tuple[str, list[str], tuple[Any, ...]]] = []
        for message_id, until_ms in until:
            check_ids([message_id])
            if not encodable(message_id):
                continue  # Redis cannot hold its key: it has no request
            want = min(_MAX_TTL_MS, max(1, round(until_ms - now)))
            calls.append((_EXTEND_SHA, [self._key(key_for(message_id))], (want,)))
            keep = min(_MAX_TTL_MS, want + self.status_ttl)
            args = (round(until_ms), keep, round(now))
            calls.append((_EXTEND_STATUS_SHA, [self._status_key(message_id)], args))
        if calls:
            self._run_scripts(calls)

    def _actor_keys(self, actor_name: str) -> list[str]:
        """The actor's outstanding set and its set of done ids, in one hash slot.

        A name with a brace could end the hash tag early (``}x`` makes it
        empty, and the keys' slots differ): such a name is tagged by its
        digest instead.
        """
        if "{" in actor_name or "}" in actor_name:
            actor_name = "sha1-" + hashlib.sha1(actor_name.encode("utf-8")).hexdigest()
        tag = "{" + actor_name + "}"
        return [self._key(ACTOR_PREFIX + tag), self._key(DONE_PREFIX + tag)]

    def track(self, changes: Iterable[tuple[str, str, str, int]]) -> None:
        """Add and remove messages in their actor's sorted set, in order, in one round trip.

        A removed id is remembered for an hour, and an ``add`` of it comes
        too late and is ignored: the add of a message (written by its
        sender) may reach Redis after its remove (written by the worker
        that finished it).  Members older than ``track_ttl`` are dropped as
        the set is written.
        """
        batch = check_tracking(changes)
        if not batch:
            return
        now = round(time.time() * 1000)
        head = (now, now - self.track_ttl, now - _DONE_FOR_MS, self.track_ttl + _TRACK_SLACK_MS)
        calls: list[tuple[str, list[str], tuple[Any, ...]]] = []
        # Consecutive changes of one kind to one actor go in one call; the
        # order between runs is kept (an add, then the remove of the same id).
        run: tuple[str, str] = ("", "")
        members: list[Any] = []
        for change, actor_name, message_id, start_ms in [*batch, ("", "", "", 0)]:
            if (change, actor_name) != run and members:
                kind, name = run
                calls.append((_TRACK_SHA, self._actor_keys(name), (kind, *head, *members)))
                members = []
            run = (change, actor_name)
            if change == "add":
                members += [message_id, start_ms]
            elif change:
                members.append(message_id)
        self._run_scripts(calls)

    def tracked(self, actor_name: str) -> list[tuple[str, int]]:
        """The outstanding messages of ``actor_name``: (message id, ms when it may start)."""
        check_ids([actor_name])
        key = self._actor_keys(actor_name)[0]
        pipe = self.client.pipeline(transaction=False)
        pipe.zremrangebyscore(key, "-inf", f"({time.time() * 1000 - self.track_ttl}")
        pipe.zrange(key, 0, -1, withscores=True)
        _, members = pipe.execute()
        return [(_text(member), round(score)) for member, score in members]

    def read_status(self, message_ids: Iterable[str]) -> list[dict[str, Any] | None]:
        """Return each message's status record, ``None`` where there is none (``MGET``)."""
        ids = check_ids(message_ids)
        records: list[dict[str, Any] | None] = [None] * len(ids)
        readable = [i for i, message_id in enumerate(ids) if encodable(message_id)]
        if not readable:
            return records
        names = [self._status_key(ids[i]) for i in readable]
        replies = (raw for reply in self._per_chunk("mget", names) for raw in reply)
        for index, name, raw in zip(readable, names, replies, strict=True):
            if raw is not None:
                event = _decode_params(name, raw)
                records[index] = event.params if event is not None else None
        return records

    def poll(self, key: str) -> Event | None:
        """Return the event stored under ``key`` without consuming it."""
        check_key(key)
        try:
            raw = self.client.get(self._key(key))
        except UnicodeEncodeError:
            # Raised while packing the command, before anything is sent: Redis
            # cannot hold such a key (a lone surrogate), so it has no request.
            return None
        except redis.ResponseError as exc:  # e.g. WRONGTYPE: someone else's key
            _logger.warning("Ignoring unreadable key %r: %s", self._key(key), exc)
            return None
        return None if raw is None else _decode_params(key, raw)

    def poll_many(self, keys: Iterable[str]) -> list[Event]:
        """Return the stored events among ``keys``, with ``MGET``.

        From eight keys on, an ``EXISTS`` of them all comes first, and the
        ``MGET`` only when one exists: a second round trip, but only when
        there is a request to read.  A key that holds another type than a
        string (not a request this library wrote) reads as absent: ``MGET``
        answers nil for it.
        """
        # A key Redis cannot hold (a message id with a lone surrogate, which
        # a broker may still deliver) has no request: skip it, don't fail them all.
        wanted = [key for key in check_keys(keys) if encodable(key)]
        if not wanted:
            return []
        names = [self._key(key) for key in wanted]
        if len(names) >= _EXISTS_FIRST and not any(self._per_chunk("exists", names)):
            return []
        found = []
        replies = (raw for reply in self._per_chunk("mget", names) for raw in reply)
        for key, raw in zip(wanted, replies, strict=True):
            if raw is not None:
                event = _decode_params(key, raw)
                if event is not None:
                    found.append(event)
        return found

    def _per_chunk(self, command: str, names: list[str]) -> list[Any]:
        """Run ``command`` (``mget`` or ``exists``) on ``names``, 1,000 at a time, one round trip.

        Returns:
            One reply per chunk.

        """
        if self._cluster:
            # One command per hash slot, pipelined to each node by redis-py.
            if command == "mget":
                return [self.client.mget_nonatomic(names)]
            return [self.client.exists(*names)]
        chunks = [names[i : i + _MGET_KEYS] for i in range(0, len(names), _MGET_KEYS)]
        if len(chunks) == 1:
            return [getattr(self.client, command)(*chunks[0])]
        pipe = self.client.pipeline(transaction=False)
        for chunk in chunks:
            getattr(pipe, command)(*chunk)
        return list(pipe.execute())

    def wait_many(self, keys: Iterable[str], timeout: int) -> Event | None:
        """Wait up to ``timeout`` ms for one of ``keys``, stored or announced."""
        return _subscribed.wait_many(self, keys, timeout)

    def subscribe(self) -> Subscription:
        """Open a subscription to the announcement channel, live on return."""
        if self._cluster:
            return self._subscribe_to_a_node()
        return _RedisSubscription(self.client.pubsub(), self.channel)

    def _subscribe_to_a_node(self) -> Subscription:
        """Subscribe on a primary of the cluster picked at random, avoiding recent failures.

        Any node will do: a PUBLISH reaches every node of a cluster.  At
        random, the workers' subscriptions spread over the nodes.  A node
        that just failed stays in the client's list of primaries until the
        cluster has promoted a replica, so it is left out for a while.
        """
        now = time.monotonic()
        failed = self._failed_nodes
        for name in [name for name, until in failed.items() if until <= now]:
            del failed[name]
        primaries = self.client.get_primaries()
        node = random.choice([n for n in primaries if n.name not in failed] or primaries)
        try:
            return _RedisSubscription(self.client.pubsub(node=node), self.channel)
        except (redis.RedisError, OSError):
            failed[node.name] = now + _AVOID_FAILED_NODE_S
            raise
