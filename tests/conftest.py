"""Shared fixtures: a real Redis server per session, clean state per test."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from dispatch import limits, store
from dispatch.redis_server import RedisServer
from dispatch.settings import get_settings
from tests.api_server import ApiServer
from tests.callback_support import DATA, SAMPLE_CERT_NAME, TEST_HOST_PATTERN, save_providers
from tests.smtp_server import SmtpTestServer, self_signed_cert
from tests.test_callbacks_ses import OWN_CERT_URL, Signer
from tests.worker import WorkerProcess

os.environ.setdefault("DISPATCH_SECRET_KEY", "test-secret-key")
os.environ.setdefault("DISPATCH_ALLOW_PRIVATE_ENDPOINTS", "true")
# The reference's signed SNS samples are from 2024, far older than the age bound of a
# notification (DISPATCH_SNS_MAX_AGE_SECONDS): the tests of that bound set it themselves.
os.environ.setdefault("DISPATCH_SNS_MAX_AGE_SECONDS", "0")


@pytest.fixture(autouse=True)
def _settings_follow_the_environment() -> Iterator[None]:
    """After each test (and its monkeypatch's undo) the settings are read again: a test
    that set ``DISPATCH_*`` and cleared the cache must not leave its values to the next
    (a batch size of 20 once turned later tests' 1,000-recipient batches into fifty)."""
    yield
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _forget_provider_holds() -> Iterator[None]:
    """What this process saw of providers' holds (dispatch.limits) goes with each test:
    the next test's provider of the same nickname starts unheld."""
    yield
    limits._seen_holds.clear()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    previous = os.environ.get("DISPATCH_REDIS_URL")
    os.environ["DISPATCH_REDIS_URL"] = server.url
    get_settings.cache_clear()
    store.reset_clients()
    yield server
    server.stop()
    if previous is None:
        os.environ.pop("DISPATCH_REDIS_URL", None)
    else:
        os.environ["DISPATCH_REDIS_URL"] = previous
    get_settings.cache_clear()
    store.reset_clients()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, with its append-only file (it can be restarted)."""
    server = RedisServer(appendonly=True).start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on a real Redis emptied of dispatch's keys.

    Celery's own keys stay: kombu's queue bindings are declared once per process, and a
    FLUSHALL would make the broker drop every message published after it.
    """
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    keys = list(client.scan_iter(match="dispatch:*", count=1000))
    if keys:
        client.delete(*keys)
    yield client
    try:
        _session_redis_left_whole(client)
    finally:
        client.close()


def _session_redis_left_whole(client: redis.Redis) -> None:
    """A test that left the session's Redis unfit for the tests after it fails here, and
    what it left is put back: a Celery queue's key of another type (a test of a hand
    edit: the session's worker, its consumer restarting on WRONGTYPE every second, sent
    nothing for the rest of the run), a memory limit or an evicting policy."""
    keys = [key for queue in store.CELERY_QUEUES for key in store.queue_keys(queue)]
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.type(key)
        types = dict(zip(keys, pipe.execute(), strict=True))
    wrong = {key: kind for key, kind in types.items() if kind not in ("none", "list")}
    if wrong:
        client.delete(*wrong)
        raise AssertionError(f"the test left Celery's queue keys of another type: {wrong}")
    config = client.config_get("maxmemory*")
    changed = {
        name: value
        for name, value in config.items()
        if name in SESSION_REDIS_CONFIG and value != SESSION_REDIS_CONFIG[name]
    }
    if changed:
        for name in changed:
            client.config_set(name, SESSION_REDIS_CONFIG[name])
        raise AssertionError(f"the test left the session's Redis configured so: {changed}")


# What the session's Redis runs with (RedisServer's defaults): tests put it back.
SESSION_REDIS_CONFIG = {"maxmemory": "0", "maxmemory-policy": "noeviction"}


@pytest.fixture(scope="session")
def trusted_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (certificate, key) that the session's worker trusts."""
    return self_signed_cert(tmp_path_factory.mktemp("trusted"))


SESSION_WORKER_LOG = "session-worker.log"


@pytest.fixture(scope="session")
def celery_worker(
    redis_server: RedisServer,
    trusted_cert: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    """One real worker for the session (tests wait for their campaigns to settle).

    Its CA bundle is ``trusted_cert`` alone (OpenSSL's ``SSL_CERT_FILE``: the system
    paths the SMTP adapter trusts), so certificates are checked as in production. Its log
    goes to a file that a failed run prints the end of (:func:`pytest_terminal_summary`)."""
    log = tmp_path_factory.getbasetemp() / SESSION_WORKER_LOG
    worker = WorkerProcess(
        redis_server.url, log_path=str(log), SSL_CERT_FILE=str(trusted_cert[0])
    ).start()
    yield worker
    worker.stop()


API_TOKEN = "test-token"


@pytest.fixture(scope="session")
def api_server(redis_server: RedisServer) -> Iterator[ApiServer]:
    """The real app over HTTP on the test Redis; /v1 needs ``Bearer test-token``."""
    os.environ["DISPATCH_API_TOKENS"] = API_TOKEN
    get_settings.cache_clear()
    server = ApiServer().start()
    yield server
    server.stop()


@pytest.fixture
def api(api_server: ApiServer) -> Iterator[httpx.Client]:
    """A client of the real API (no bearer token: callbacks and pages)."""
    with api_server.client() as client:
        yield client


@pytest.fixture
def paths(redis_client: redis.Redis) -> dict[str, str]:
    """The callback test providers saved; nickname -> callback path."""
    return save_providers(redis_client)


@pytest.fixture
def smtp() -> Iterator[SmtpTestServer]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 that records what it receives."""
    with SmtpTestServer() as server:
        yield server


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


@pytest.fixture(scope="module")
def sns_settings(tmp_path_factory: pytest.TempPathFactory, signer: Signer) -> Iterator[Path]:
    """DISPATCH_SNS_CERT_DIR holds the sample certificate and :func:`signer`'s (a module
    of SNS tests uses it for all its tests: ``pytestmark = pytest.mark.usefixtures``)."""
    cert_dir = tmp_path_factory.mktemp("sns-certs")
    shutil.copy(DATA / "sns-test-signing-cert.pem", cert_dir / SAMPLE_CERT_NAME)
    (cert_dir / Path(urlsplit(OWN_CERT_URL).path).name).write_bytes(signer.pem)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISPATCH_SNS_CERT_DIR", str(cert_dir))
        mp.setenv("DISPATCH_SNS_HOST_PATTERN", TEST_HOST_PATTERN)
        get_settings.cache_clear()
        yield cert_dir
    get_settings.cache_clear()


@pytest.fixture
def silent_endpoint() -> Iterator[int]:
    """A port whose TCP connections are taken (by the kernel) and never read."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """A failed run prints the end of each session worker's log: tests that wait for the
    session's worker fail with "not met within N s", which says nothing of why it did
    not send (pytest-xdist's processes each have one, under ``popen-gwN``)."""
    if exitstatus == 0 or not hasattr(config, "_tmp_path_factory"):
        return
    base = config._tmp_path_factory.getbasetemp()
    for log in sorted([base / SESSION_WORKER_LOG, *base.glob(f"popen-gw*/{SESSION_WORKER_LOG}")]):
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-60:]
            terminalreporter.section(f"the last lines of {log}")
            for line in tail:
                terminalreporter.write_line(line[:2000])
