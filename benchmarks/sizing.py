"""Size Redis for many worker processes: connections and commands per process.

It runs the real ``dramatiq`` command (``benchmarks/_sizing_app.py``) with
1, 2 and 4 worker processes of 8 threads each, the event backend alone on a
throwaway ``redis-server`` (so its ``INFO`` counts only this library), and
measures per worker process:

1. **Connections** the library holds on the event backend's server, once
   every process subscribed, and after a drain has opened the connections
   of the threads' reads (``connected_clients``, minus this script's).
2. **Idle commands**: what the backend server runs in 10 s while nothing
   is sent (an idle worker should send nothing).
3. **Commands per message** while 2,000 no-op messages are drained (no
   aborts: the hot path only).

and prints them with what they come to for 100 processes.  It does so on
one server, then on a throwaway Redis Cluster of 3 primaries
(``redis+cluster://``), where each figure is summed over the nodes and the
busiest node's connections are given too (``--only single|cluster`` runs
one).  The broker is a
RedisBroker on ``REDIS_URL`` (default ``redis://127.0.0.1:6379``), database
15, under a namespace of its own, deleted at the end.

Run it from the repository root::

    python benchmarks/sizing.py

It takes about two minutes.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from _common import (
    command_counts,
    delete_keys,
    redis_server_binary,
    throwaway_cluster,
    throwaway_redis,
    with_db,
)

HERE = Path(__file__).resolve().parent
THREADS = 8
MESSAGES = 2_000
IDLE_S = 10.0
#: The calls a RedisBackend client makes itself (not what its scripts run).
OWN = ("evalsha", "mget", "exists", "get", "ping", "subscribe", "publish", "hello", "client")


def _clients(nodes: list[redis.Redis]) -> int:
    return sum(int(node.info("clients")["connected_clients"]) for node in nodes)


def _counts(nodes: list[redis.Redis]) -> dict[str, int]:
    total: dict[str, int] = {}
    for node in nodes:
        for name, calls in command_counts(node).items():
            total[name] = total.get(name, 0) + calls
    return total


def settle(nodes: list[redis.Redis], channel: str, subscribers: int) -> None:
    """Wait until ``subscribers`` watchers listen on ``channel`` and connections stop changing.

    On a cluster each node counts only its own subscribers: they are summed.
    """
    deadline = time.monotonic() + 60
    while (
        sum(dict(node.pubsub_numsub(channel)).get(channel.encode(), 0) for node in nodes)
        < subscribers
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {subscribers} watchers subscribed within 60 s")
        time.sleep(0.1)  # polling the server: nothing announces a subscription
    last = -1
    while (now := _clients(nodes)) != last:
        last = now
        time.sleep(0.5)


def run(
    processes: int, backend_url: str, node_urls: list[str], broker_url: str
) -> dict[str, float]:
    """Start the command with ``processes`` processes; measure; stop it.

    ``backend_url`` is what the workers use; ``node_urls`` are the servers
    behind it (one, or each node of a cluster), measured and summed.
    """
    namespace = f"dramatiq-abort-sizing-{uuid.uuid4().hex[:8]}"
    queue = f"sizing-{uuid.uuid4().hex[:8]}"
    env = dict(
        os.environ,
        SIZING_BROKER=broker_url,
        SIZING_BROKER_NS=namespace,
        SIZING_BACKEND=backend_url,
        SIZING_QUEUE=queue,
        PYTHONPATH=str(HERE),
    )
    nodes = [redis.Redis.from_url(url) for url in node_urls]
    base = [int(node.info("clients")["connected_clients"]) for node in nodes]
    command = [sys.executable, "-m", "dramatiq", "_sizing_app", "--path", str(HERE)]
    command += ["--processes", str(processes), "--threads", str(THREADS), "--queues", queue]
    worker = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    broker = RedisBroker(url=broker_url, namespace=namespace)
    try:
        settle(nodes, "dramatiq:aborts:events", processes)
        connections = _clients(nodes) - sum(base)
        before = _counts(nodes)
        time.sleep(IDLE_S)  # measuring what an idle worker sends over time
        idle = sum(v for k, v in _counts(nodes).items() if k != "info") - sum(
            v for k, v in before.items() if k != "info"
        )
        message = dramatiq.Message(
            queue_name=queue, actor_name="noop", args=(), kwargs={}, options={}
        )
        before = _counts(nodes)
        for _ in range(MESSAGES):
            broker.enqueue(message.copy(message_id=str(uuid.uuid4())))
        broker.join(queue, timeout=120_000)
        after = _counts(nodes)
        busy = {k: after.get(k, 0) - before.get(k, 0) for k in after if k != "info"}
        per_node = [
            int(node.info("clients")["connected_clients"]) - b
            for node, b in zip(nodes, base, strict=True)
        ]
        per_message = sum(v for k, v in busy.items() if k in OWN) / MESSAGES
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        delete_keys(broker.client, namespace)
        broker.close()
        for node in nodes:
            node.close()
    return {
        "connections": connections / processes,
        "busy_connections": sum(per_node) / processes,
        "busy_per_node": max(per_node) / processes,
        "idle_per_s": idle / processes / IDLE_S,
        "per_message": per_message,
    }


def _table(backend_url: str, node_urls: list[str], broker_url: str) -> list[dict[str, float]]:
    print("processes  connections/process (idle, after work)  idle cmds/s/process  calls/message")
    rows = []
    for processes in (1, 2, 4):
        row = run(processes, backend_url, node_urls, broker_url)
        rows.append(row)
        pair = f"{row['connections']:.1f}, {row['busy_connections']:.1f}"
        print(
            f"{processes:>9}  {pair:>37}  {row['idle_per_s']:>19.2f}  {row['per_message']:>13.3f}"
        )
    return rows


def main() -> int:
    """Measure 1, 2 and 4 processes on one server, then on a 3-primary cluster; print both."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", choices=["single", "cluster"], help="measure one topology (default: both)"
    )
    options = parser.parse_args()
    if redis_server_binary() is None:
        print("needs redis-server on PATH", file=sys.stderr)
        return 1
    broker_url = with_db(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"), 15)
    print(f"dramatiq command, {THREADS} threads a process; event backend alone on its servers")
    if options.only in (None, "single"):
        print("\nOne Redis server:")
        with throwaway_redis("dramatiq-abort-sizing-") as backend_url:
            rows = _table(backend_url, [backend_url], broker_url)
        connections = max(row["busy_connections"] for row in rows)
        print(
            f"For 100 processes: about {connections * 100:.0f} connections to the event "
            f"backend's Redis (raise maxclients above that), no commands while idle, and "
            f"about {max(row['per_message'] for row in rows):.2f} calls per message processed."
        )
    if options.only in (None, "cluster"):
        print("\nA Redis Cluster of 3 primaries (connections and calls summed over the nodes):")
        with throwaway_cluster("dramatiq-abort-sizing-") as (cluster_url, node_urls):
            rows = _table(cluster_url, node_urls, broker_url)
        total = max(row["busy_connections"] for row in rows)
        node = max(row["busy_per_node"] for row in rows)
        print(
            f"For 100 processes: about {total * 100:.0f} connections in all, at most "
            f"{node * 100:.0f} on one node (each node's maxclients must allow that), no "
            f"commands while idle, and about {max(row['per_message'] for row in rows):.2f} "
            f"calls per message processed, over all nodes."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
