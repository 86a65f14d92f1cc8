"""A Redis that wants a password or speaks only TLS: from_url URLs work end to end.

Each test starts its own ``redis-server``: one with ``--requirepass``, one
listening only on a TLS port with certificates made by ``trustme``.  A
backend built by ``RedisBackend.from_url`` aborts a message running on a
real in-process worker.  A wrong or missing password fails at the first
use, saying authentication failed; a worker configured so logs a warning
saying so and keeps processing messages.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import dramatiq
import pytest
from dramatiq import Worker
from dramatiq.brokers.stub import StubBroker

from conftest import WAIT, Hold, RedisServer, join, require
from dramatiq_abort import Abortable, BackendUnavailableError, abort, backends

StartWorker = Callable[..., Worker]

#: Bound, in seconds, on any single wait of these tests.
#: A password that needs quoting in a URL.
PASSWORD = "s3cret:/@ pw%"


def _require_redis_server() -> None:
    pytest.importorskip("redis")
    require(shutil.which("redis-server") is not None, "redis-server is not installed")


@pytest.fixture
def password_server() -> Iterator[RedisServer]:
    """A redis-server that requires :data:`PASSWORD`."""
    _require_redis_server()
    server = RedisServer(
        args=lambda port: ["--port", str(port), "--requirepass", PASSWORD],
        client_options={"password": PASSWORD},
    )
    server.start()
    yield server
    server.close()


@pytest.fixture
def certificates(tmp_path: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 and localhost, as PEM files."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server_cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server_cert.private_key_pem.write_to_path(str(paths["key"]))
    return paths


@pytest.fixture
def tls_server(certificates: dict[str, Path]) -> Iterator[RedisServer]:
    """A redis-server that listens only on a TLS port; clients need no certificate."""
    _require_redis_server()

    def args(port: int) -> list[str]:
        return [
            *("--port", "0", "--tls-port", str(port)),
            *("--tls-cert-file", str(certificates["cert"])),
            *("--tls-key-file", str(certificates["key"])),
            *("--tls-ca-cert-file", str(certificates["ca"])),
            *("--tls-auth-clients", "no"),
        ]

    server = RedisServer(
        args=args,
        client_options={
            "ssl": True,
            "ssl_ca_certs": str(certificates["ca"]),
            "ssl_cert_reqs": "required",
        },
    )
    server.start()
    yield server
    server.close()


def abort_a_running_message(
    broker: StubBroker, backend: backends.RedisBackend, start_worker: StartWorker
) -> None:
    """Run a message on an in-process worker, abort it through ``backend``, check it ended so."""
    broker.add_middleware(Abortable(backend=backend))
    hold = Hold()

    @dramatiq.actor(broker=broker, queue_name="auth-tls", max_retries=0)
    def hold_actor(name: str) -> None:
        hold.run(name)

    worker = start_worker(broker, worker_threads=1)
    message = hold_actor.send("running")
    hold.wait("started", "running")
    abort(message.message_id)
    hold.wait("ended", "running")
    join(broker, hold_actor.queue_name, worker)
    assert hold.outcome == {"running": "aborted"}
    assert [m.message_id for m in broker.dead_letters] == [message.message_id]
    stored = backend.client.get(f"{backend.namespace}abort:{message.message_id}")
    assert stored is not None, "the request was not stored on the protected server"


@pytest.mark.parametrize("user", ["", "default"], ids=["password-only", "user-and-password"])
def test_password_in_the_url_works_end_to_end(
    user: str,
    password_server: RedisServer,
    stub_broker: StubBroker,
    namespace: str,
    start_worker: StartWorker,
) -> None:
    """redis://[user]:password@host/db (password URL-quoted) aborts a running message."""
    url = f"redis://{user}:{quote(PASSWORD, safe='')}@127.0.0.1:{password_server.port}/0"
    backend = backends.RedisBackend.from_url(url, namespace=namespace)
    try:
        abort_a_running_message(stub_broker, backend, start_worker)
    finally:
        backend.client.close()


@pytest.mark.parametrize(
    "options",
    ["ssl_ca_certs={ca}", "ssl_ca_certs={ca}&ssl_cert_reqs=required&ssl_check_hostname=true"],
    ids=["ca", "ca-and-checks"],
)
def test_tls_url_works_end_to_end(
    options: str,
    tls_server: RedisServer,
    certificates: dict[str, Path],
    stub_broker: StubBroker,
    namespace: str,
    start_worker: StartWorker,
) -> None:
    """rediss://host:port/db?ssl_ca_certs=... verifies the server and aborts a running message."""
    query = options.format(ca=quote(str(certificates["ca"]), safe=""))
    url = f"rediss://127.0.0.1:{tls_server.port}/0?{query}"
    backend = backends.RedisBackend.from_url(url, namespace=namespace)
    try:
        abort_a_running_message(stub_broker, backend, start_worker)
    finally:
        backend.client.close()


@pytest.mark.parametrize(
    ("scheme_and_query", "error"),
    [
        ("rediss://{host}/0", "certificate verify failed"),  # the system CAs do not know ours
        # Plain text to a TLS port: closed or reset, depending on timing.
        ("redis://{host}/0", r"ConnectionError: .*(closed by server|reset by peer)"),
    ],
    ids=["unknown-ca", "plain-text"],
)
def test_tls_without_the_right_settings_fails_clearly(
    scheme_and_query: str,
    error: str,
    tls_server: RedisServer,
    namespace: str,
) -> None:
    """Without the CA, or without TLS, abort() raises BackendUnavailableError saying why."""
    url = scheme_and_query.format(host=f"127.0.0.1:{tls_server.port}")
    backend = backends.RedisBackend.from_url(url, namespace=namespace)
    try:
        with pytest.raises(BackendUnavailableError, match=error):
            abort("m", middleware=Abortable(backend=backend))
    finally:
        backend.client.close()


@pytest.mark.parametrize(
    ("credentials", "error"),
    [
        (":wrong", "AuthenticationError: invalid username-password pair"),
        ("default:wrong", "AuthenticationError: invalid username-password pair"),
        ("", "AuthenticationError: Authentication required"),
    ],
    ids=["wrong", "wrong-with-user", "missing"],
)
def test_a_wrong_password_fails_at_first_use(
    credentials: str, error: str, password_server: RedisServer, namespace: str
) -> None:
    """With a wrong or missing password from_url succeeds; the first abort() says auth failed."""
    at = "@" if credentials else ""
    url = f"redis://{credentials}{at}127.0.0.1:{password_server.port}/0"
    backend = backends.RedisBackend.from_url(url, namespace=namespace)
    try:
        with pytest.raises(BackendUnavailableError, match=error) as caught:
            abort("m", middleware=Abortable(backend=backend))
        assert "could not record the abort of message 'm'" in str(caught.value)
        assert "wrong" not in str(caught.value), "the password leaked into the error"
    finally:
        backend.client.close()


def test_a_worker_with_a_wrong_password_warns_and_keeps_processing(
    password_server: RedisServer,
    stub_broker: StubBroker,
    namespace: str,
    start_worker: StartWorker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker whose password is wrong logs a warning naming the authentication error, runs all."""
    caplog.set_level(logging.WARNING, logger="dramatiq_abort")
    url = f"redis://:wrong@127.0.0.1:{password_server.port}/0"
    backend = backends.RedisBackend.from_url(url, namespace=namespace)
    warned = threading.Event()

    class Spy(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno == logging.WARNING and "AuthenticationError" in record.getMessage():
                warned.set()

    spy = Spy()
    logging.getLogger("dramatiq_abort").addHandler(spy)
    try:
        stub_broker.add_middleware(Abortable(backend=backend))
        ran: Counter[int] = Counter()

        @dramatiq.actor(broker=stub_broker, queue_name="auth-quick", max_retries=0)
        def quick(index: int) -> None:
            ran[index] += 1

        worker = start_worker(stub_broker, worker_threads=2)
        assert warned.wait(WAIT), "no warning naming the authentication error"
        for index in range(20):
            quick.send(index)
        join(stub_broker, quick.queue_name, worker)
    finally:
        logging.getLogger("dramatiq_abort").removeHandler(spy)
        backend.client.close()
    assert ran == Counter(dict.fromkeys(range(20), 1))
    assert not stub_broker.dead_letters
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("invalid username-password pair" in text for text in warnings), warnings
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
