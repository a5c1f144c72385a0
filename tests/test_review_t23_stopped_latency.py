"""The send-latency histogram after a pause stopped an SMTP chunk (review T23): real
Redis, a real aiosmtpd server, the batch run as a worker runs it.

``dispatch_send_seconds`` counts each message handed over to the provider with the time
its exchange took. The messages of a chunk a pause stopped before their turn were never
handed over, yet each was counted with the whole wait for the first one's answer
(minutes, for a server that checks content): a pause made the provider look slower and
busier than it was.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis

from dispatch import lifecycle, store
from providers.smtp import SmtpSession
from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer


def test_messages_a_pause_kept_from_the_wire_are_not_counted_as_sends(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    told, holding = threading.Event(), threading.Event()
    stop = SmtpSession.stop

    def stop_told(self: SmtpSession) -> None:
        told.set()
        stop(self)

    def data_reply(envelope: Any) -> None:  # holds user0's answer until the batch stops
        if envelope.rcpt_tos[0] == "user0@example.com":
            holding.set()
            told.wait(4)

    monkeypatch.setattr(SmtpSession, "stop", stop_told)
    smtp.handler.data_reply = data_reply  # type: ignore[assignment]
    smtp_provider(redis_client, smtp.port, max_connections=1)
    body = {"provider": "local", "subject": "Hi", "html": "<p>hi</p>", "recipients": recipients(8)}
    cid, batches = create_held(redis_client, body)
    runner = threading.Thread(target=run_batches, args=(batches,))
    runner.start()
    assert holding.wait(10), "the first message never reached the server"
    lifecycle.pause(cid, client=redis_client)
    runner.join(20)
    assert not runner.is_alive()

    assert [m.rcpt_tos[0] for m in smtp.messages] == ["user0@example.com"]
    stats = redis_client.hgetall(store.SEND_STATS_HASH)
    counted = sum(int(v) for k, v in stats.items() if k.startswith("local|le="))
    assert counted == 1, stats
