"""/metrics reports what every worker did, read from Redis at scrape time."""

from __future__ import annotations

import re

import redis

from dispatch.settings import Settings
from tests.api_server import ApiServer
from tests.helpers import recipients, run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer


def _metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{{{wanted}}} not in /metrics"
    return float(match.group(1))


def test_messages_by_provider_and_outcome(api_server: ApiServer, redis_client: redis.Redis) -> None:
    with SmtpTestServer() as smtp:
        smtp.handler.rcpt_reply = lambda a: "550 5.1.1 unknown" if a.startswith("user1@") else None
        smtp_provider(redis_client, smtp.port)
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(4)}
        run_inline(redis_client, body, Settings(retry_base_seconds=0.05))
    with api_server.client() as http:
        text = http.get("/metrics").text
    assert _metric(text, "dispatch_messages_total", outcome="sent", provider="local") == 3
    assert _metric(text, "dispatch_messages_total", outcome="failed", provider="local") == 1
    assert _metric(text, "dispatch_queue_depth", queue="sends") >= 0
