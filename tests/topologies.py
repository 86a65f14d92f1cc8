"""Throwaway Redis topologies on loopback ports: a Redis Cluster, a Sentinel-managed primary.

Each is made of real ``redis-server`` processes (see ``conftest.RedisServer``)
in temporary directories, started and joined the way an operator would:
``redis-cli --cluster create`` for the cluster, ``replicaof`` and a
``redis-server --sentinel`` for Sentinel.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from conftest import RedisServer, free_port

#: Seconds a topology may take to form before the test fails.
FORM_WITHIN = 30.0


def _until(what: str, check: Any, within: float = FORM_WITHIN) -> None:
    """Poll ``check()`` (a server we started, settling) until true; fail after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass  # not up yet
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {within} s")
        time.sleep(0.05)


class ClusterServers:
    """A Redis Cluster of ``primaries`` primaries (and ``replicas`` replicas each).

    Args:
        primaries: How many primaries share the 16,384 hash slots.
        replicas: Replicas per primary.
    """

    def __init__(self, primaries: int = 3, replicas: int = 0) -> None:
        self.replicas = replicas
        self.servers = [
            RedisServer(
                args=lambda port: [
                    "--port",
                    str(port),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    # The bus port is the port + 10,000 by default: past 65,535
                    # for a high free port.
                    "--cluster-port",
                    str(free_port()),
                ]
            )
            for _ in range(primaries * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming every node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def start(self) -> None:
        """Start the servers, join them into a cluster and wait until it serves every slot."""
        for server in self.servers:
            server.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{s.port}" for s in self.servers),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=FORM_WITHIN,
        )
        for server in self.servers:
            client = redis.Redis(port=server.port, socket_timeout=2, decode_responses=True)
            try:
                _until(
                    f"node {server.port} did not see the cluster as ok",
                    lambda c=client: c.cluster("info")["cluster_state"] == "ok",
                )
                # A replica not yet in sync refuses to take over from its primary.
                _until(
                    f"replica {server.port} did not sync with its primary",
                    lambda c=client: (
                        c.info("replication")["role"] == "master"
                        or c.info("replication")["master_link_status"] == "up"
                    ),
                )
            finally:
                client.close()

    def owner(self, key: str) -> RedisServer:
        """The server that is the primary of ``key``'s slot now."""
        for server in self.servers:
            if server.process is None:
                continue
            client = redis.Redis(port=server.port, socket_timeout=2)
            try:
                slot = client.cluster("keyslot", key)
                for start, end, primary, *_ in client.cluster("slots"):
                    if start <= slot <= end:
                        port = int(primary[1])
                        return next(s for s in self.servers if s.port == port)
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise RuntimeError(f"no live node knows the owner of {key!r}")

    def wait_promoted(self, dead: RedisServer) -> None:
        """Wait until the cluster serves every slot again without ``dead``."""
        live = [s for s in self.servers if s is not dead and s.process is not None]

        def healed() -> bool:
            for server in live:
                client = redis.Redis(port=server.port, socket_timeout=2, decode_responses=True)
                try:
                    if client.cluster("info")["cluster_state"] != "ok":
                        return False
                    owners = {int(row[2][1]) for row in client.cluster("slots")}
                    if dead.port in owners:
                        return False
                finally:
                    client.close()
            return True

        _until("the cluster did not promote a replica", healed)

    def close(self) -> None:
        """Stop every server and remove its directory."""
        for server in self.servers:
            server.close()


class SentinelServers:
    """A primary, a replica of it, and one Sentinel watching them as ``mymaster``.

    The Sentinel declares a primary down after 1 s without an answer and
    needs one vote (its own) to fail over.
    """

    service = "mymaster"

    def __init__(self) -> None:
        self.primary = RedisServer()
        self.replica = RedisServer(
            args=lambda port: [
                "--port",
                str(port),
                "--replicaof",
                "127.0.0.1",
                str(self.primary.port),
            ]
        )
        self.sentinel_port = free_port()
        self.sentinel_dir = Path(self.primary.dir) / "sentinel"
        self.sentinel: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """A ``redis+sentinel://`` URL of the service, database 0."""
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.service}/0"

    def sentinel_client(self) -> redis.Redis:
        """A client of the Sentinel itself."""
        return redis.Redis(port=self.sentinel_port, socket_timeout=2, decode_responses=True)

    def primary_port(self) -> int:
        """The port of the primary the Sentinel names now."""
        client = self.sentinel_client()
        try:
            _, port = client.sentinel_get_master_addr_by_name(self.service)
            return int(port)
        finally:
            client.close()

    def start(self) -> None:
        """Start the three and wait until the Sentinel knows the replica is in sync."""
        self.primary.start()
        self.replica.start()
        self.sentinel_dir.mkdir()
        config = self.sentinel_dir / "sentinel.conf"
        config.write_text(
            f"port {self.sentinel_port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.sentinel_dir}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
            f"sentinel failover-timeout {self.service} 10000\n"
            f"sentinel parallel-syncs {self.service} 1\n"
        )
        self.sentinel = subprocess.Popen(
            ["redis-server", str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.sentinel_client()
        replica = redis.Redis(port=self.replica.port, socket_timeout=2, decode_responses=True)
        try:
            _until(
                "the replica did not sync with the primary",
                lambda: replica.info("replication")["master_link_status"] == "up",
            )
            _until(
                "the Sentinel did not find the replica",
                lambda: any(
                    "s_down" not in r["flags"] and r.get("master-link-status") == "ok"
                    for r in client.sentinel_slaves(self.service)
                ),
            )
        finally:
            client.close()
            replica.close()

    def fail_over(self, *, kill_primary: bool) -> int:
        """Make the replica the primary; return its port once the Sentinel names it.

        Args:
            kill_primary: Kill the primary (the Sentinel notices after 1 s)
                rather than ask the Sentinel for a failover (``SENTINEL
                FAILOVER``, which demotes the old primary to a replica).
        """
        old = self.primary.port
        client = self.sentinel_client()
        try:
            if kill_primary:
                self.primary.stop()
            else:
                client.sentinel_failover(self.service)
            _until("the Sentinel named no new primary", lambda: self.primary_port() != old)
            # Until the failover ends the Sentinel still flags the primary as
            # down, and redis-py's Sentinel client refuses it (MasterNotFoundError).
            _until(
                "the Sentinel did not end the failover",
                lambda: client.sentinel_master(self.service)["flags"] == "master",
            )
        finally:
            client.close()
        new = redis.Redis(port=self.replica.port, socket_timeout=2, decode_responses=True)
        try:
            _until(
                "the new primary did not take writes",
                lambda: new.info("replication")["role"] == "master",
            )
        finally:
            new.close()
        return self.primary_port()

    def close(self) -> None:
        """Stop the Sentinel and both servers, and remove their directories."""
        if self.sentinel is not None:
            self.sentinel.kill()
            self.sentinel.wait()
        self.replica.close()
        self.primary.close()
