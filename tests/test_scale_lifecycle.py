"""A big campaign's operations stay bounded: the Redis commands an operation sends grow
with its windows of a thousand messages, not with each message (a few thousand
recipients here, counted, never timed)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from dispatch import campaign_reads, campaigns, lifecycle, store
from dispatch.ledger import parse_record
from dispatch.models import CampaignRequest, CampaignStatus
from dispatch.redis_server import ensure_redis_url
from dispatch.settings import Settings
from tests.helpers import http_provider, recipients, run_batches, run_inline
from tests.http_sink import HttpSink, Reply

N = 3000


class CountingRedis(aioredis.Redis):
    """An asyncio client that counts the commands it sends (a pipeline's each)."""

    sent = 0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        CountingRedis.sent += 1
        return await super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        async def counted(raise_on_error: bool = True) -> Any:
            CountingRedis.sent += len(pipe.command_stack)
            return await execute(raise_on_error)

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[CountingRedis]]:
    """The operations' asyncio clients count their commands."""
    CountingRedis.sent = 0
    url = ensure_redis_url()
    monkeypatch.setattr(
        store, "async_client", lambda: CountingRedis.from_url(url, decode_responses=True)
    )
    yield CountingRedis


def test_retry_failed_of_thousands_sends_a_few_commands_a_window(
    redis_client: redis.Redis, counting: type[CountingRedis]
) -> None:
    """Every message of a campaign failed (the provider answered 400). retry-failed
    queues all of them again in a few commands per thousand messages (it sent one SADD
    and one ledger write per message: 52 s in the API for 900,000 failures), each once,
    and the next run sends each exactly once."""
    settings = Settings(pause_after_failures=0)  # every message fails: no breaker
    with HttpSink() as sink:
        sink.script(*[Reply(400, b'{"error": "nope"}')] * (N // 1000))  # one request a batch
        http_provider(redis_client, sink.url)
        body = {"id": "many-failed", "provider": "esp", "subject": "Hi {{ name }}",
                "html": "<p>{{ name }}</p>", "recipients": recipients(N)}  # fmt: skip
        campaign_id, _ = run_inline(redis_client, body, settings)
        assert campaign_reads.get_counters(campaign_id, redis_client)["failed"] == N

        batches: list[tuple[str, int]] = []
        counting.sent = 0
        report, summary = lifecycle.retry_failed(
            campaign_id, client=redis_client, enqueue=lambda c, b: batches.append((c, b))
        )
        windows = N // lifecycle.WINDOW
        assert counting.sent <= 4 * windows + 2, counting.sent
        assert report.retried == N and summary["queued"] == N and summary["failed"] == 0
        assert summary["status"] == "running" and len(batches) == N // 1000
        ledger = redis_client.hgetall(store.ledger_key(campaign_id))
        states = {parse_record(raw)["state"] for raw in ledger.values()}  # type: ignore[index]
        assert states == {"retry"} and len(ledger) == N
        assert redis_client.scard(store.retried_key(campaign_id)) == N

        before = len(sink.requests)
        run_batches(batches, settings)
        sent = [m["to"] for r in sink.requests[before:] for m in r.json()["msgs"]]
        assert sorted(sent) == sorted(r["email"] for r in recipients(N))

    done = campaign_reads.campaign_summary(campaign_id, redis_client)
    assert (done["sent"], done["failed"], done["queued"]) == (N, 0, 0)
    again, _ = lifecycle.retry_failed(campaign_id, client=redis_client, enqueue=lambda c, b: None)
    assert (again.retried, again.skipped_already_retried) == (0, 0)


class CountingSyncRedis(redis.Redis):
    """A client that counts the commands it sends (a pipeline's each) and its round
    trips."""

    sent = 0
    round_trips = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        CountingSyncRedis.sent += 1
        CountingSyncRedis.round_trips += 1
        return super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        def counted(raise_on_error: bool = True) -> Any:
            CountingSyncRedis.sent += len(pipe.command_stack)
            CountingSyncRedis.round_trips += 1
            return execute(raise_on_error)

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe


def test_a_page_of_a_thousand_campaigns_is_one_round_trip(redis_client: redis.Redis) -> None:
    """The campaign list reads a page in a few round trips, and never the campaigns'
    templates (two commands a campaign, each waiting for its answer, read the whole
    content of every campaign: 0.5 s for a page of 1000 with 200 KB templates)."""
    http_provider(redis_client, "http://127.0.0.1:9")
    html = "<p>{{ name }}</p>" + "x" * 20_000
    for i in range(1050):
        body = {"id": f"c-{i:04d}", "provider": "esp", "subject": "Hi", "html": html,
                "vars": {"name": "N"}, "draft": True}  # fmt: skip
        campaigns.create_campaign(CampaignRequest.model_validate(body), client=redis_client)
    campaigns.start_campaign("c-1040", client=redis_client, enqueue=lambda c, b: None)
    counting = CountingSyncRedis(connection_pool=redis_client.connection_pool)
    redis_client.config_resetstat()

    page, cursor = campaign_reads.list_campaigns(limit=1000, client=counting)
    assert CountingSyncRedis.round_trips <= 3, CountingSyncRedis.round_trips
    assert [c["id"] for c in page] == [f"c-{i:04d}" for i in range(1049, 49, -1)]
    assert page[0] == campaign_reads.campaign_summary("c-1049", redis_client)
    assert {c["provider"] for c in page} == {"esp"} and page[0]["status"] == "draft"
    read = int(redis_client.info("stats")["total_net_output_bytes"])
    assert read < 5_000_000, read  # not 1000 templates of 20 KB

    rest, end = campaign_reads.list_campaigns(cursor=int(cursor or 0), limit=1000, client=counting)
    assert len(rest) == 50 and end is None
    done, _ = campaign_reads.list_campaigns(
        limit=1000, status=CampaignStatus.COMPLETED, client=counting
    )
    assert [c["id"] for c in done] == ["c-1040"]
