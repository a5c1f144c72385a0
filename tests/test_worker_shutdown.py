"""A worker asked to stop (SIGTERM: compose, systemd, a deploy) hands its running batches
on instead of finishing them at the provider's pace past its supervisor's patience."""

from __future__ import annotations

from collections import Counter

import redis
from celery import Celery

from dispatch import campaigns, store
from dispatch.ledger import parse_record
from dispatch.models import CampaignRequest
from dispatch.redis_server import RedisServer
from dispatch.tasks import send_batch
from tests.helpers import recipients, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.worker import WorkerProcess, wait_for


def states(r: redis.Redis, campaign_id: str) -> Counter[str]:
    return Counter(
        str((parse_record(raw) or {}).get("state"))
        for raw in r.hvals(store.ledger_key(campaign_id))
    )


def test_a_stopping_worker_hands_its_batch_on_and_the_next_one_finishes_it(
    smtp: SmtpTestServer,
) -> None:
    server = RedisServer().start()
    first = WorkerProcess(server.url, concurrency=1).start()
    second = WorkerProcess(server.url, concurrency=1)
    r = redis.Redis.from_url(server.url, decode_responses=True)
    broker = Celery(broker=server.url)

    def enqueue(campaign_id: str, batch: int) -> None:  # on this test's Redis
        with broker.connection_for_write() as conn:
            send_batch.apply_async((campaign_id, batch), queue="sends", connection=conn)

    try:
        wait_for(lambda: bool(r.exists("_kombu.binding.sends")), timeout=60)
        # One batch of 200 at 20 a second: about ten seconds of sending.
        smtp_provider(r, smtp.port, max_connections=1, rate_per_second=20)
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(200)}
        campaign_id, _ = campaigns.create_campaign(
            CampaignRequest.model_validate(body), client=r, enqueue=enqueue
        )
        wait_for(lambda: len(smtp.messages) >= 20, timeout=60)

        assert first.proc is not None
        first.proc.terminate()  # SIGTERM: Celery's warm shutdown
        first.proc.wait(timeout=60)
        # It stopped mid-batch: what it had not sent is queued again, nothing unknown.
        sent_by_first = campaigns.campaign_summary(campaign_id, r)["sent"]
        assert 20 <= sent_by_first < 200
        assert set(states(r, campaign_id)) <= {"sent"}
        assert len(smtp.messages) == sent_by_first
        assert list(r.scan_iter(match=store.worker_stopping_key("*"))) == []  # cleared at exit

        second.start()
        wait_for(lambda: campaigns.get_status(campaign_id, r).value == "completed", timeout=90)
        assert states(r, campaign_id) == Counter({"sent": 200})
        received = Counter(m.rcpt_tos[0] for m in smtp.messages)
        assert len(received) == 200 and max(received.values()) == 1
    finally:
        first.stop()
        second.stop()
        r.close()
        server.stop()
