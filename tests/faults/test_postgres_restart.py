"""The event backend's PostgreSQL restarts under a busy worker process, on RabbitMQ.

The backend runs on a throwaway PostgreSQL instance (``initdb`` and
``pg_ctl`` in a temporary directory, on a free port) that the test stops
and starts again, so the machine's own server is never disturbed; the
broker is RabbitMQ and the step log stays on the tests' Redis, so only the
event backend goes away.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import free_port, require
from faultkit import run_backend_restart, scenario

#: Where Debian puts the PostgreSQL programs (the newest version installed);
#: ``PG_BINDIR`` overrides.
BINDIR = os.environ.get("PG_BINDIR") or max(
    glob.glob("/usr/lib/postgresql/*/bin"),
    key=lambda path: int(path.split("/")[-2]) if path.split("/")[-2].isdigit() else 0,
    default="/usr/lib/postgresql/15/bin",
)


class PostgresServer:
    """A throwaway PostgreSQL instance in a directory of its own; it can be stopped and started.

    ``initdb`` refuses to run as root, so as root the programs run as the
    ``postgres`` user, who then owns the directory.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="dramatiq-abort-pg-"))
        self.data = self.dir / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-N")

    @property
    def url(self) -> str:
        """The URL of its ``postgres`` database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, f"{BINDIR}/{program}", *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections (``pg_ctl -w``)."""
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off"
        log = str(self.dir / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        """Stop the server at once (``immediate``: as a crash would); every connection breaks."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def close(self) -> None:
        """Stop the server if it runs, and remove its directory."""
        subprocess.run(
            [*self.as_user, f"{BINDIR}/pg_ctl", "-D", str(self.data), "-m", "immediate", "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server on a free port, started."""
    pytest.importorskip("psycopg")
    require(os.path.exists(f"{BINDIR}/initdb"), f"no PostgreSQL programs in {BINDIR}")
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


def test_postgres_restart_loses_nothing_and_aborts_reach_older_messages(
    redis_base_url: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """Across a backend restart: every message runs once, and a later abort stops an older one.

    A long message starts before the outage; quick messages are sent before,
    during and after it.  After the restart an abort of the long message
    still lands; every quick message ran exactly once and ended normally;
    the worker's background threads are alive and it shuts down cleanly.
    """
    broker_url = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
    with scenario(
        redis_base_url, tmp_path, broker_url=broker_url, backend_url=postgres_server.url
    ) as world:
        run_backend_restart(world, postgres_server, "postgres restart")
