"""The Redis backend on a Redis Cluster and on a Sentinel-managed primary, and their URLs.

The contract suite and the end-to-end abort tests run on the cluster too
(the ``cluster`` parameter of ``event_backend`` and ``broker``); these are
what only a cluster or a Sentinel has: keys spread over nodes, a script
cache lost on one node, subscriptions on any node, URLs, and a worker that
follows the primary the Sentinel names.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from conftest import WAIT, Hold, Outcomes, delete_prefix, free_port
from dramatiq_abort import Abortable, AbortState, Event, abort, abort_many
from dramatiq_abort.backends import RedisBackend

StartWorker = Callable[..., Worker]


def _primaries(backend: RedisBackend) -> list[redis.Redis]:
    """A plain client of each primary of the backend's cluster."""
    return [
        redis.Redis(host=node.host, port=node.port, socket_timeout=5)
        for node in backend.client.get_primaries()
    ]


def test_keys_spread_over_every_primary(cluster_backend: RedisBackend) -> None:
    """Requests and status records of many messages land on all three primaries."""
    ids = [f"spread-{i}" for i in range(300)]
    cluster_backend.notify_many([(Event(f"abort:{i}", {"mode": "abort"}), 60_000) for i in ids])
    per_node = Counter[int]()
    for node in _primaries(cluster_backend):
        try:
            for key in node.scan_iter(match=cluster_backend.namespace + "*", count=1000):
                assert node.type(key) == b"string", key
                per_node[node.connection_pool.connection_kwargs["port"]] += 1
        finally:
            node.close()
    assert len(per_node) == 3, per_node
    assert sum(per_node.values()) == 2 * len(ids)  # a request and a status each
    assert min(per_node.values()) > 100, per_node  # 600 keys over 3 nodes, by hash


def test_a_node_that_lost_its_scripts_gets_them_again(cluster_backend: RedisBackend) -> None:
    """After SCRIPT FLUSH on one primary (as after its restart), requests are still stored."""
    nodes = _primaries(cluster_backend)
    try:
        cluster_backend.notify([Event("abort:warm", {})], ttl=60_000)
        nodes[0].script_flush()
        events = [Event(f"abort:flushed-{i}", {"i": i}) for i in range(40)]
        cluster_backend.notify(events, ttl=60_000)
        found = cluster_backend.poll_many([event.key for event in events])
        assert sorted(event.params["i"] for event in found) == list(range(40))
    finally:
        for node in nodes:
            node.close()


def test_a_subscription_on_any_primary_hears_every_announcement(
    cluster_backend: RedisBackend,
) -> None:
    """A PUBLISH reaches subscribers of every node, whichever node stores the requests."""
    from dramatiq_abort.backends.redis import _RedisSubscription

    client: Any = cluster_backend.client
    subscriptions = [
        _RedisSubscription(client.pubsub(node=node), cluster_backend.channel)
        for node in client.get_primaries()
    ]
    try:
        cluster_backend.notify([Event("abort:heard", {"n": 1})], ttl=60_000)
        for subscription in subscriptions:
            assert subscription.get(WAIT) == [Event("abort:heard", {"n": 1})]
    finally:
        for subscription in subscriptions:
            subscription.close()


def test_cluster_from_url_forms(redis_cluster_url: str, namespace: str) -> None:
    """A redis+cluster:// URL of one node, and a redis:// URL with cluster=True, both work."""
    first = redis_cluster_url.removeprefix("redis+cluster://").split(",")[0]
    for url, options in (
        (f"redis+cluster://{first}", {}),
        (f"redis://{first}/0", {"cluster": True}),
    ):
        backend = RedisBackend.from_url(url, namespace=namespace, **options)
        try:
            assert isinstance(backend.client, redis.cluster.RedisCluster)
            assert len(backend.client.get_primaries()) == 3
            backend.notify([Event("abort:url", {"u": url})], ttl=60_000)
            assert backend.poll("abort:url") == Event("abort:url", {"u": url})
        finally:
            delete_prefix(backend.client, namespace)
            backend.client.close()


@pytest.mark.parametrize(
    ("url", "options", "match"),
    [
        ("redis+cluster://h:1/3", {}, r"database 0 only"),
        ("redis://h:1/3", {"cluster": True}, r"database 0 only"),
        ("redis+cluster://h", {}, r"'h' needs a port, such as h:7000"),
        ("redis+cluster://h:1,h:x", {}, r"port of 'h:x' is not a port number"),
        ("redis+cluster://:1", {}, r"':1' names no host"),
        ("redis+sentinel://h", {}, r"service name, then the database: /mymaster/0"),
        ("redis+sentinel://h/m/x", {}, r"service name, then the database"),
        ("redis+sentinel://h/m", {"cluster": True}, r"cluster=True cannot be used"),
        ("rediss+cluster://h:1", {}, r"TLS with a cluster or Sentinels: pass client="),
        ("unix:///tmp/r.sock", {"cluster": True}, r"cluster=True takes a redis://"),
        ("redis+sentinel://h/m?bogus_option=1", {}, r"bogus_option"),
        ("redis+cluster://h:1?bogus_option=1", {}, r"bogus_option"),
        ("redis+cluster://h:1?health_check_interval=3", {}, r"ignores the option\(s\) health_"),
        ("redis+sentinel://::1/m", {}, r"IPv6 address of '::1' in brackets, such as \[::1\]"),
        ("redis+sentinel://[::1]:x/m", {}, r"port of '\[::1\]:x' is not a port number"),
    ],
)
def test_bad_topology_urls_fail_naming_the_url(url: str, options: Any, match: str) -> None:
    """A malformed cluster or Sentinel URL raises ValueError with the URL and the fix."""
    with pytest.raises(
        ValueError, match=r"url must be a Redis URL.*" + re.escape(repr(url))
    ) as info:
        RedisBackend.from_url(url, **options)
    assert info.match(match)


@pytest.mark.parametrize(
    "url",
    [
        "redis://h:1/0?password=hunter2&bogus=1",
        "redis+cluster://h:1?PASSWORD=hunter2&bogus=1",
        "redis+sentinel://h/m?ssl_password=hunter2&bogus=1",
        "redis+sentinel://h/m?Sentinel_Password=hunter2&bogus=1",
    ],
)
def test_passwords_in_the_query_are_masked_in_url_errors(url: str) -> None:
    """A password given as a query option never appears in an error either."""
    with pytest.raises(ValueError, match="bogus") as info:
        RedisBackend.from_url(url)
    assert "hunter2" not in str(info.value)
    assert "=***&bogus=1" in str(info.value)


def test_sentinel_url_addresses_and_timeouts() -> None:
    """IPv6 in brackets, the default port, and the query's timeouts for the Sentinels too."""
    url = "redis+sentinel://[::1]:2,h/m/1?socket_timeout=1&socket_connect_timeout=0.5"
    pool = RedisBackend.from_url(url).client.connection_pool
    sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    assert [(k["host"], k["port"]) for k in sentinels] == [("::1", 2), ("h", 26379)]
    assert [(k["socket_timeout"], k["socket_connect_timeout"]) for k in sentinels] == [
        (1.0, 0.5),
        (1.0, 0.5),
    ]
    assert (pool.service_name, pool.connection_kwargs["db"]) == ("m", 1)
    assert pool.connection_kwargs["socket_timeout"] == 1.0
    only = RedisBackend.from_url("redis+sentinel://[::1]/m").client.connection_pool
    assert only.sentinel_manager.sentinels[0].connection_pool.connection_kwargs["port"] == 26379


def test_passwords_are_masked_in_url_errors() -> None:
    """Neither the primary's nor the Sentinels' password appears in an error."""
    url = "redis+sentinel://u:hunter2@h/m/x?sentinel_password=swordfish"
    with pytest.raises(ValueError) as info:
        RedisBackend.from_url(url)
    assert "hunter2" not in str(info.value)
    assert "swordfish" not in str(info.value)
    assert "u:***" not in str(info.value)
    assert "***@h/m/x?sentinel_password=***" in str(info.value)


def test_cluster_calls_are_routed_by_key_not_by_asking_a_node(
    cluster_backend: RedisBackend,
) -> None:
    """Script calls go straight to their key's node: no COMMAND GETKEYS round trips."""
    nodes = _primaries(cluster_backend)

    def getkeys() -> int:
        return sum(
            int(node.info("commandstats").get("cmdstat_command|getkeys", {}).get("calls", 0))
            for node in nodes
        )

    try:
        before = getkeys()
        ids = [f"routed-{i}" for i in range(100)]
        cluster_backend.notify_many([(Event(f"abort:{i}", {"mode": "abort"}), 60_000) for i in ids])
        cluster_backend.extend([(i, 1e15) for i in ids[:10]])
        now = round(time.time() * 1000)
        cluster_backend.track([("add", "routed", i, now) for i in ids[:10]])
        assert len(cluster_backend.tracked("routed")) == 10
        assert getkeys() == before
    finally:
        for node in nodes:
            node.close()


def test_actor_names_with_braces_keep_their_tracking_sets_together(
    cluster_backend: RedisBackend,
) -> None:
    """An actor named '}x' (an empty hash tag) or 'a{b}' is tracked in one slot."""
    now = round(time.time() * 1000)
    for name in ("}x", "a{b}", "{"):
        cluster_backend.track([("add", name, "m1", now), ("add", name, "m2", now)])
        cluster_backend.track([("remove", name, "m1", now)])
        assert [m for m, _ in cluster_backend.tracked(name)] == ["m2"]


def test_a_namespace_with_an_open_hash_tag_is_refused_on_a_cluster(
    cluster_backend: RedisBackend,
) -> None:
    """namespace='ns{' would split an actor's tracking sets over two slots: refused, with why."""
    with pytest.raises(ValueError, match=r"namespace 'ns\{' opens a hash tag.*close it"):
        RedisBackend(client=cluster_backend.client, namespace="ns{")
    RedisBackend(client=cluster_backend.client, namespace="{ns}:")  # closed: one slot


def test_cluster_needs_a_bool() -> None:
    """cluster= takes True or False, naming a wrong value."""
    with pytest.raises(TypeError, match=r"cluster must be True or False, not 'yes'"):
        RedisBackend.from_url("redis://h:1", cluster="yes")  # type: ignore[arg-type]


def test_an_unreachable_cluster_fails_at_from_url() -> None:
    """redis-py's RedisCluster asks for the layout when made: no node answering raises then."""
    url = f"redis+cluster://127.0.0.1:{free_port()}"
    with pytest.raises(
        redis.ConnectionError, match=re.escape(f"layout of the Redis Cluster at '{url}'")
    ):
        RedisBackend.from_url(url)


@pytest.fixture
def sentinel_backend(sentinel_servers: Any, namespace: str) -> Iterator[RedisBackend]:
    """A backend on the Sentinel's primary, from its redis+sentinel:// URL."""
    backend = RedisBackend.from_url(sentinel_servers.url, namespace=namespace)
    yield backend
    delete_prefix(backend.client, namespace)
    backend.client.close()


def test_sentinel_url_reaches_the_primary(
    sentinel_servers: Any, sentinel_backend: RedisBackend
) -> None:
    """Through the Sentinel the backend writes to the primary, and the replica has it."""
    sentinel_backend.notify([Event("abort:s", {"via": "sentinel"})], ttl=60_000)
    assert sentinel_backend.poll("abort:s") == Event("abort:s", {"via": "sentinel"})
    primary = redis.Redis(port=sentinel_servers.primary.port)
    replica = redis.Redis(port=sentinel_servers.replica.port)
    try:
        key = sentinel_backend.namespace + "abort:s"
        assert primary.get(key) is not None
        primary.wait(1, 5000)  # the replica has it once it acknowledges
        assert replica.get(key) is not None
    finally:
        primary.close()
        replica.close()


def test_a_client_made_with_redis_sentinel_works_too(
    sentinel_servers: Any, namespace: str, start_worker: StartWorker
) -> None:
    """RedisBackend(client=Sentinel(...).master_for(...)): a running message is aborted."""
    from redis.sentinel import Sentinel

    sentinel = Sentinel([("127.0.0.1", sentinel_servers.sentinel_port)], socket_timeout=5)
    backend = RedisBackend(client=sentinel.master_for("mymaster"), namespace=namespace)
    broker = StubBroker()
    broker.emit_after("process_boot")
    outcomes = Outcomes()
    broker.add_middleware(outcomes)
    middleware = Abortable(backend=backend)
    broker.add_middleware(middleware)
    hold = Hold()

    @dramatiq.actor(broker=broker, max_retries=0)
    def held(name: str) -> None:
        hold.run(name)

    try:
        start_worker(broker)
        message = held.send("one")
        hold.wait("started", "one")
        handle = abort(message.message_id, middleware=middleware)
        assert outcomes.ended(message.message_id) == "Abort"
        assert hold.outcome["one"] == "aborted"
        status = handle.wait(WAIT * 1000)
        assert status is not None and status.state is AbortState.INTERRUPTED
    finally:
        hold.release.set()
        broker.close()
        delete_prefix(backend.client, namespace)
        backend.client.close()


def test_a_bulk_abort_on_the_cluster_reaches_each_running_message(
    cluster_backend: RedisBackend, start_worker: StartWorker
) -> None:
    """abort_many on a cluster: many requests, per-key calls, one announcement, all delivered."""
    broker = StubBroker()
    broker.emit_after("process_boot")
    outcomes = Outcomes()
    broker.add_middleware(outcomes)
    middleware = Abortable(backend=cluster_backend)
    broker.add_middleware(middleware)
    hold = Hold()
    started = threading.Barrier(9, timeout=WAIT)

    @dramatiq.actor(broker=broker, max_retries=0)
    def held(name: str) -> None:
        started.wait()
        hold.run(name)

    try:
        start_worker(broker, worker_threads=8)
        running = [held.send(f"r{i}") for i in range(8)]
        started.wait()
        queued = [held.send(f"q{i}") for i in range(30)]
        batch = abort_many([*running, *queued], middleware=middleware)
        for message in running:
            assert outcomes.ended(message.message_id) == "Abort"
        for message in queued:
            assert outcomes.ended(message.message_id) == "skipped"
        states = Counter(s.state for s in batch.wait(WAIT * 1000) if s is not None)
        assert states == Counter({AbortState.INTERRUPTED: 8, AbortState.SKIPPED: 30})
    finally:
        hold.release.set()
        broker.close()
