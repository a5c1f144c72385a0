"""A provider's limits as its user would measure them at the server, with two real worker
processes sending several campaigns of that provider at once (DESIGN §7)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis

from dispatch import campaign_reads, campaigns
from dispatch.models import CampaignRequest
from dispatch.redis_server import RedisServer
from tests.helpers import http_provider, recipients, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.worker import WorkerProcess, batch_enqueuer, wait_for, wait_for_queues


class Workers:
    """Two ``dispatch worker --concurrency 2`` processes on a Redis of their own."""

    def __init__(self, **env: str) -> None:
        self.server = RedisServer().start()
        self.r = redis.Redis.from_url(self.server.url, decode_responses=True)
        self.procs = [
            WorkerProcess(self.server.url, concurrency=2, **env).start() for _ in range(2)
        ]
        self.enqueue = batch_enqueuer(self.server.url)
        wait_for_queues(self.r)

    def campaign(self, provider: str, n: int, domain: str, **fields: Any) -> str:
        body = {"provider": provider, "subject": "s", "html": "h", **fields}
        body["recipients"] = recipients(n, domain)
        campaign_id, _ = campaigns.create_campaign(
            CampaignRequest.model_validate(body), client=self.r, enqueue=self.enqueue
        )
        return campaign_id

    def status(self, campaign_id: str) -> str:
        return campaign_reads.get_status(campaign_id, self.r).value

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()
        self.r.close()
        self.server.stop()


@pytest.fixture
def workers() -> Iterator[Workers]:
    # Small batches: several of each campaign run at once in both processes.
    started = Workers(DISPATCH_BATCH_SIZE="20")
    yield started
    started.stop()


class _Counting(BaseHTTPRequestHandler):
    """Counts open connections and requests in progress (``server.peak_*``)."""

    protocol_version = "HTTP/1.1"
    server: CountingHttpServer

    def setup(self) -> None:
        super().setup()
        self.server.change("connections", 1)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.change("connections", -1)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.change("requests", 1)
        time.sleep(0.02)  # long enough for requests of other senders to overlap
        self.server.change("requests", -1)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class CountingHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Counting)
        self.lock = threading.Lock()
        self.now = {"connections": 0, "requests": 0}
        self.peak = {"connections": 0, "requests": 0}
        self.served = 0

    def change(self, what: str, by: int) -> None:
        with self.lock:
            self.now[what] += by
            self.peak[what] = max(self.peak[what], self.now[what])
            self.served += what == "requests" and by > 0

    def __enter__(self) -> CountingHttpServer:
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.02}).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


def test_smtp_max_connections_hold_across_worker_processes(workers: Workers) -> None:
    """Three campaigns of one provider over four senders in two processes, with
    connections kept idle between batches: never more open at once than allowed."""
    with SmtpTestServer() as smtp:
        smtp.handler.data_reply = lambda envelope: time.sleep(0.003)  # type: ignore[assignment,func-returns-value]
        smtp_provider(workers.r, smtp.port, max_connections=3)
        ids = [workers.campaign("local", 150, f"c{i}.example") for i in range(3)]
        wait_for(lambda: all(workers.status(c) == "completed" for c in ids), timeout=50)
        assert len(smtp.messages) == 450
        assert 1 <= smtp.handler.peak <= 3


def test_http_max_connections_hold_across_worker_processes(workers: Workers) -> None:
    with CountingHttpServer() as server:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        http_provider(workers.r, url, max_connections=2, batch_size=5)
        ids = [workers.campaign("esp", 100, f"c{i}.example") for i in range(3)]
        wait_for(lambda: all(workers.status(c) == "completed" for c in ids), timeout=50)
        assert server.served == 60  # 300 messages, 5 a request
        assert 1 <= server.peak["requests"] <= 2
        assert 1 <= server.peak["connections"] <= 2
