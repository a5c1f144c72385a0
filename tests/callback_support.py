"""Helpers for the callback gateway's tests: providers, payloads, HTTPS server, stream reads."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import select
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis

from dispatch import campaigns, store
from dispatch.models import CampaignRequest
from dispatch.provider_store import load_provider_with_token, save_provider
from dispatch.settings import get_settings
from providers.meta import build_meta
from tests.smtp_server import free_port, self_signed_cert
from tests.worker import wait_for

DATA = Path(__file__).parent / "data" / "callbacks"
TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-campaign-events"
SAMPLE_CERT_NAME = "SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem"
# Matches the AWS hosts of the samples and, for the SubscribeURL test, a local server.
TEST_HOST_PATTERN = r"^(sns\.[a-zA-Z0-9\-]{3,}\.amazonaws\.com(\.cn)?|127\.0\.0\.1:[0-9]+)$"
HTTP_BODY = {
    "to": "$$To",
    "subject": "$$Subject",
    "from": "$$FromName",
    "sender": "$$FromAddress",
    "html": "$$HTML",
    "mid": "$$MessageID",
}

# A callback answer when Redis cannot serve (DESIGN §6 shape; the provider retries).
REFUSED = {"status": "error", "message": "Server error", "error_code": 503}


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


def save_providers(r: redis.Redis, **extra: dict[str, Any]) -> dict[str, str]:
    """The test providers, one per kind; returns nickname -> callback path."""
    smtp = {"kind": "smtp", "host": "127.0.0.1", "port": 2525, "security": "none"}
    configs: dict[str, dict[str, Any]] = {
        "gen": smtp,
        "mail": {"kind": "gmail", "username": "a@example.com"},
        "web": {"kind": "http", "method": "POST", "endpoint": "http://127.0.0.1:9/send",
                "body": HTTP_BODY},
        "ses": {"kind": "ses", "sns_topic_arns": [TOPIC]},
        "ses-other": {"kind": "ses", "sns_topic_arns": [TOPIC + "-other"]},
        "sg": {"kind": "sendgrid"},
        **extra,
    }  # fmt: skip
    paths = {}
    for nickname, fields in configs.items():
        save_provider(
            {"nickname": nickname, "from_name": "Acme", "from_address": "deals@acme.example",
             **fields},
            r,
        )  # fmt: skip
        paths[nickname] = callback_path(r, nickname)
    return paths


def callback_path(r: redis.Redis, nickname: str) -> str:
    token = load_provider_with_token(nickname, r)[1]
    return f"/v1/callbacks/{nickname}/{token}"


def draft_campaign(r: redis.Redis, campaign_id: str, emails: list[str]) -> list[str]:
    """A draft campaign to ``emails`` (counters exist, nothing is sent); returns metas."""
    request = CampaignRequest.model_validate(
        {"id": campaign_id, "provider": "gen", "subject": "s", "html": "h", "draft": True,
         "recipients": [{"email": e} for e in emails]}
    )  # fmt: skip
    campaigns.create_campaign(request, client=r)
    today = datetime.now(UTC).date()
    return [
        build_meta(
            email=email,
            account_id=get_settings().account_id,
            campaign_id=campaign_id,
            send_date=today,
            seq=seq,
        )
        for seq, email in enumerate(emails)
    ]


def generic_event(kind: str, email: str, meta: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "email": email, "meta": meta, **extra}


def nested(*events: dict[str, Any]) -> dict[str, Any]:
    success = [e for e in events if e.get("type") in ("delivered", "clicked")]
    failed = [e for e in events if e.get("type") not in ("delivered", "clicked")]
    return {"version": "v2", "events": {"success": success, "failed": failed}}


def stream(r: redis.Redis) -> list[dict[str, Any]]:
    """Every ``dispatch:events`` entry, decoded (each has the one field ``json``)."""
    entries = []
    for _, fields in r.xrange(store.EVENTS_STREAM):
        assert list(fields) == ["json"]
        entries.append(orjson.loads(fields["json"]))
    return entries


def callback_entries(r: redis.Redis) -> list[dict[str, Any]]:
    """The stream entries made by callbacks (not the dispatcher's own)."""
    return [e for e in stream(r) if "Callback Type" in e["properties"]]


def inbox_empty(r: redis.Redis) -> bool:
    return r.hlen(store.CALLBACK_INBOX_HASH) == 0 and r.zcard(store.CALLBACK_PENDING_ZSET) == 0


def post(
    client: httpx.Client, path: str, payload: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return client.post(path, content=body, headers=headers or {})


@contextlib.contextmanager
def api_process(redis_url: str, **env: str) -> Iterator[httpx.Client]:
    """``dispatch api`` in a child process on ``redis_url`` (its own Redis: a test may stop
    or starve it), with ``env`` added; yields a client of it once it answers."""
    port = free_port()
    full_env = {**os.environ, "DISPATCH_REDIS_URL": redis_url, "DISPATCH_API_TOKENS": "", **env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatch.cli", "api", "--port", str(port)],
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def up() -> bool:
        try:
            return client.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=30)
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


def metric(client: httpx.Client, name: str, **labels: str) -> float | None:
    """The value of one series of the API's ``/metrics``, None when it is not exposed."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in client.get("/metrics").text.splitlines():
        found = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if found and found[1] == name and ",".join(sorted((found[2] or "").split(","))) == wanted:
            return float(found[3])
    return None


class _Recorder(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        server: HttpsServer = self.server.owner  # type: ignore[attr-defined]
        server.paths.append(self.path)
        self.send_response(server.status)
        self.send_header("Content-Length", str(server.promised_length or 2))
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class HttpsServer:
    """An HTTPS server on 127.0.0.1 recording GET paths; ``ca_file`` is its certificate.

    ``hosts``: DNS names its certificate also holds (reached through :class:`ConnectProxy`).
    ``promised_length``: the Content-Length its answers announce (their body is 2 bytes).
    """

    def __init__(
        self, status: int = 200, hosts: list[str] | None = None, promised_length: int = 0
    ) -> None:
        self.status = status
        self.promised_length = promised_length
        self.paths: list[str] = []
        self._dir = tempfile.TemporaryDirectory()
        cert, key = self_signed_cert(Path(self._dir.name), hosts or [])
        self.ca_file = str(cert)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        self._server.owner = self  # type: ignore[attr-defined]
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> HttpsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._dir.cleanup()


class _Tunnel(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        proxy: ConnectProxy = self.server.owner  # type: ignore[attr-defined]
        request = self.rfile.readline().decode("latin-1").split()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        if len(request) < 2 or request[0] != "CONNECT":
            self.wfile.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            return
        proxy.targets.append(request[1])
        upstream = socket.create_connection(("127.0.0.1", proxy.port))
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.wfile.flush()
        sockets = [self.connection, upstream]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 5)
                if not readable:
                    return
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is self.connection else self.connection).sendall(data)
        finally:
            upstream.close()


class ConnectProxy:
    """An HTTP proxy that tunnels every CONNECT to 127.0.0.1:``port``, recording targets.

    Lets a client that honours ``HTTPS_PROXY`` reach "sns.us-east-1.amazonaws.com"
    offline: the TLS session (and its certificate check) is the local server's.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.targets: list[str] = []
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Tunnel)
        self._server.daemon_threads = True
        self._server.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> ConnectProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
