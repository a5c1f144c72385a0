"""DISPATCH_REDIS_URL forms redis-py reads (a unix socket, TLS) reach Celery too: the same
Redis and database for the broker and the result backend as for dispatch's own clients,
and the server's certificate checked (review M25)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from dispatch import celery_app, store
from dispatch.redis_server import _free_port, find_redis_server
from dispatch.settings import get_settings
from tests.smtp_server import self_signed_cert

PASSWORD = "p:w@d/x"  # (percent-encoded in the URLs)
ENCODED = "p%3Aw%40d%2Fx"


def _serve(args: list[str], client: redis.Redis) -> subprocess.Popen[bytes]:
    """A redis-server run with ``args``, once ``client`` reaches it."""
    proc = subprocess.Popen([find_redis_server(), "--save", "", *args])
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"redis-server {args} did not answer within 10 s (built without TLS?)")
            time.sleep(0.05)


def _use(monkeypatch: pytest.MonkeyPatch, url: str) -> Celery:
    """A Celery app configured as dispatch's, on ``url``."""
    monkeypatch.setenv("DISPATCH_REDIS_URL", url)
    get_settings.cache_clear()
    store.reset_clients()
    app = Celery("review-m25", set_as_current=False)
    app.config_from_object(celery_app._Config())
    return app


def _publish_and_store(app: Celery) -> None:
    app.send_task("dispatch.canary", queue="default")
    app.backend.store_result("m25-result", "done", "SUCCESS")


@pytest.fixture
def socket_redis(tmp_path: Path) -> Iterator[redis.Redis]:
    """A Redis on a unix socket only, with a password; a client of its db 3."""
    sock = tmp_path / "redis.sock"
    client = redis.Redis(unix_socket_path=str(sock), password=PASSWORD, db=3)
    args = ["--port", "0", "--unixsocket", str(sock), "--dir", str(tmp_path)]
    proc = _serve([*args, "--requirepass", PASSWORD], client)
    yield client
    client.close()
    proc.kill()
    proc.wait()
    store.reset_clients()


@pytest.mark.parametrize(
    "url",
    [f"unix://:{ENCODED}@{{sock}}?db=3", f"unix://{{sock}}?db=3&password={ENCODED}"],
)
def test_a_unix_socket_url_serves_the_broker_and_backend_in_its_db(
    url: str, socket_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu and Celery know no ``unix`` scheme: every worker ended at start ("No such
    transport: unix") while the API's own reads worked."""
    sock = socket_redis.connection_pool.connection_kwargs["path"]
    app = _use(monkeypatch, url.format(sock=sock))
    try:
        _publish_and_store(app)
    finally:
        app.close()
    assert socket_redis.llen("default") == 1
    assert socket_redis.exists("celery-task-meta-m25-result")
    assert store.sync_client().connection_pool.connection_kwargs["db"] == 3
    zero = redis.Redis(unix_socket_path=str(sock), password=PASSWORD, db=0)
    assert zero.dbsize() == 0
    zero.close()


def _tls_client(port: int, cert: Path) -> redis.Redis:
    """A client of the TLS Redis's db 4, trusting its certificate."""
    return redis.Redis(
        host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(cert), password=PASSWORD, db=4
    )


@pytest.fixture
def tls_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, Path]]:
    """A Redis answering on TLS alone, its certificate for 127.0.0.1 (port, cert)."""
    cert, key = self_signed_cert(tmp_path)
    port = _free_port()
    client = _tls_client(port, cert)
    args = ["--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    tls = ["--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-auth-clients", "no"]
    proc = _serve([*args, *tls, "--requirepass", PASSWORD], client)
    yield port, cert
    client.close()
    proc.kill()
    proc.wait()
    store.reset_clients()


def test_a_rediss_url_without_options_works_for_the_worker(
    tls_redis: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A managed Redis with a certificate the system trusts, given as a plain rediss://
    URL: Celery's result backend refused it ("must have parameter ssl_cert_reqs"), and
    the worker ended at start."""
    port, cert = tls_redis
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the system's CAs, for this test
    app = _use(monkeypatch, f"rediss://:{ENCODED}@127.0.0.1:{port}/4")
    try:
        _publish_and_store(app)
    finally:
        app.close()
    kept = _tls_client(port, cert)
    assert kept.llen("default") == 1
    assert kept.exists("celery-task-meta-m25-result")
    kept.close()


def test_the_broker_checks_a_rediss_certificate(
    tls_redis: tuple[int, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu took a rediss:// URL without ``ssl_cert_reqs`` as CERT_NONE: the broker
    talked to any server that answered (dispatch's own clients refused it)."""
    port, _ = tls_redis
    (tmp_path / "other").mkdir()
    other, _ = self_signed_cert(tmp_path / "other")
    monkeypatch.setenv("SSL_CERT_FILE", str(other))  # the server's certificate untrusted
    app = _use(monkeypatch, f"rediss://:{ENCODED}@127.0.0.1:{port}/4")
    try:
        with app.connection_for_write() as conn, pytest.raises(Exception, match="CERTIFICATE"):
            conn.ensure_connection(max_retries=1, interval_start=0)
            conn.default_channel.client.ping()
    finally:
        app.close()
