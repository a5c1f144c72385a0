"""Review B13: the batch run's deadline (just before Celery's hard time limit) cuts every
wait on the provider, the opening of its session too.

V12 cut a chunk's hand-over (``session.send``) at the deadline, but the session was
opened outside that cut: a connection's greeting, EHLO, STARTTLS or AUTH each wait up
to the provider's ``timeout`` (at most 900 s). An opening still on at the time limit
was killed with the task, its chunk claimed: the batch stalled until beat's sweep and
its messages read as lost sends. Now the opening is cut short at the deadline: its
chunk was never handed over, so it waits again (not ``unknown``) and the next run,
started at once, sends it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import redis
from aiosmtpd.smtp import SMTP

from dispatch import campaign_reads, campaigns
from dispatch.models import CampaignRequest
from dispatch.redis_server import RedisServer
from tests.helpers import assert_each_sent_once, campaign_body, smtp_provider
from tests.smtp_server import Handler, SmtpTestServer
from tests.worker import WorkerProcess, batch_enqueuer, wait_for, wait_for_queues


@dataclass
class LateEhloHandler(Handler):
    """:class:`Handler` whose replies to EHLO come ``ehlo_delays`` seconds late, one
    delay a connection in turn (then at once)."""

    ehlo_delays: list[float] = field(default_factory=list)

    async def handle_EHLO(
        self, server: SMTP, session: Any, envelope: Any, host: str, lines: list[str]
    ) -> list[str]:
        if self.ehlo_delays:
            await asyncio.sleep(self.ehlo_delays.pop(0))
        return await super().handle_EHLO(server, session, envelope, host, lines)


def test_a_session_still_opening_at_the_time_limit_is_cut_and_its_chunk_sent_later() -> None:
    """Visibility timeout 60 s: the task is killed at 30 s, the deadline is 27 s. The
    first connection's EHLO is answered 35 s late (within the provider's timeout, 40 s):
    on the old code the kill came mid-opening, the first message stayed claimed and the
    batch never completed (no beat here to sweep it). Now the opening is cut at the
    deadline, the message waits again and the next run sends all three, none unknown."""
    server = RedisServer().start()
    worker = WorkerProcess(server.url, concurrency=1, DISPATCH_VISIBILITY_TIMEOUT="60").start()
    r = redis.Redis.from_url(server.url, decode_responses=True)
    smtp = SmtpTestServer()
    smtp.handler = LateEhloHandler(ehlo_delays=[35.0])
    try:
        wait_for_queues(r)
        with smtp:
            # One message a chunk (rate 1), one connection.
            smtp_provider(
                r, smtp.port, timeout=40.0, data_timeout=40.0, rate_per_second=1.0,
                max_connections=1,
            )  # fmt: skip
            request = CampaignRequest.model_validate(campaign_body("late-ehlo", 3))
            campaigns.create_campaign(request, client=r, enqueue=batch_enqueuer(server.url))
            wait_for(
                lambda: campaign_reads.get_status("late-ehlo", r).value == "completed",
                timeout=90,
                interval=0.5,
            )
            received = [m.rcpt_tos[0] for m in smtp.messages]
        # Each once, and none unknown: the one whose opening was cut was never sent.
        assert assert_each_sent_once(r, "late-ehlo", received) == 0
        assert len(received) == 3, received
    finally:
        worker.stop()
        server.stop()
