"""Ending a big campaign (cancel, expiry) answers at once; a worker settles its unsent
messages right after, and housekeeping finishes a settling that was cut short.

A cancel of 2.24 million unsent messages settled every one before answering (23 s: a
proxy's timeout turned it into an error the operator retried). Commands are counted
here, never timed.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from dispatch import campaign_reads, campaigns, housekeeping, lifecycle, store
from dispatch.ledger import LedgerWriter, claim_record, parse_record, record
from dispatch.models import CampaignRequest, CampaignStatus, MessageState
from tests.api_server import ApiServer
from tests.api_support import api_client, wait_for_campaign
from tests.helpers import campaign_body, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.test_invariants import check_books
from tests.test_lifecycle import start_slow_campaign, until_no_batch_runs
from tests.worker import WorkerProcess

N = 25_000  # more than a cancel settles before it answers (lifecycle.INLINE_SETTLE_LIMIT)
Settle = tuple[str, CampaignStatus]


class CountingRedis(redis.Redis):
    """A client that counts the commands it sends (a pipeline's each)."""

    sent = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        CountingRedis.sent += 1
        return super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        def counted(raise_on_error: bool = True) -> Any:
            CountingRedis.sent += len(pipe.command_stack)
            return execute(raise_on_error)

        pipe.execute = counted  # type: ignore[method-assign]
        return pipe


def _create(r: redis.Redis, campaign_id: str, **fields: Any) -> None:
    """A running (or, with ``draft``, draft) campaign of N recipients; batches held."""
    request = CampaignRequest.model_validate(campaign_body(campaign_id, N, **fields))
    campaigns.create_campaign(request, client=r, enqueue=lambda c, b: None)


def _put(campaign_id: str, states: dict[int, MessageState]) -> None:
    async def go() -> None:
        client = store.async_client()
        writer = LedgerWriter(client, campaign_id, provider="local")
        await writer.put_many([(seq, record(s, attempts=3), "") for seq, s in states.items()])
        await client.aclose()

    asyncio.run(go())


def _claim(campaign_id: str, seq: int) -> bool:
    """What a batch that has not seen the status yet does before it sends ``seq``."""

    async def go() -> bool:
        client = store.async_client()
        try:
            return await LedgerWriter(client, campaign_id).claim(seq, claim_record(1))
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_a_big_cancel_answers_in_a_few_commands_and_nothing_is_claimed_after_it(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel's own work does not grow with the campaign (it walked every message
    first, two round trips a thousand); the settling is handed on once, and until it
    runs no batch can claim a message to send it. Then every unsent message ends
    ``cancelled``, a retry's attempts are kept, a claimed message is left to its worker
    (its batch handed out again), and the books balance; a second cancel changes
    nothing."""
    assert N > lifecycle.INLINE_SETTLE_LIMIT
    smtp_provider(redis_client, 2525)
    _create(redis_client, "big")
    _put("big", {0: MessageState.SENT, 7: MessageState.RETRY, 12_345: MessageState.CLAIMED})
    handed: list[Settle] = []
    counting = CountingRedis(connection_pool=redis_client.connection_pool)
    # The settling must not run in the answer, through any client.
    monkeypatch.setattr(store, "async_client", lambda: pytest.fail("settled in the answer"))

    CountingRedis.sent = 0
    summary = lifecycle.cancel("big", client=counting, settle_later=lambda *a: handed.append(a))
    assert CountingRedis.sent <= 10, CountingRedis.sent
    assert handed == [("big", CampaignStatus.CANCELLED)]
    assert summary["status"] == "cancelled" and summary["queued"] == N - 1
    assert redis_client.zscore(store.ACTIVE_ZSET, "big") is not None  # housekeeping watches
    monkeypatch.undo()
    assert not _claim("big", 5)  # a batch that has not seen the cancel sends nothing more

    batches: list[tuple[str, int]] = []
    settled = lifecycle.settle_ended(
        "big", CampaignStatus.CANCELLED, redis_client, lambda c, b: batches.append((c, b))
    )
    assert settled == N - 2
    assert batches == [("big", 12_345 // 1000)]
    _put("big", {12_345: MessageState.SENT})  # its worker records what it sent
    books = check_books(redis_client, "big")
    assert (books["cancelled"], books["sent"], books["queued"]) == (N - 2, 2, 0)
    ledger = redis_client.hgetall(store.ledger_key("big"))
    retried = parse_record(ledger["7"])
    assert retried is not None and (retried["state"], retried["attempts"]) == ("cancelled", 3)
    stats = redis_client.hgetall(store.MESSAGE_STATS_HASH)
    assert int(stats["local|cancelled"]) == N - 2

    again = lifecycle.cancel("big", client=redis_client, settle_later=lambda *a: handed.append(a))
    assert again == books and len(handed) == 1
    assert lifecycle.settle_ended("big", CampaignStatus.CANCELLED, redis_client, None) == 0
    assert check_books(redis_client, "big") == books


class FailingRedis(redis.Redis):
    """A client whose Redis goes away after ``scripts`` script calls (settling cut short)."""

    scripts = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if args[0] in ("EVALSHA", "EVAL"):
            FailingRedis.scripts -= 1
            if FailingRedis.scripts < 0:
                raise redis.ConnectionError("Redis went away")
        return super().execute_command(*args, **options)


def test_a_settling_cut_short_is_finished_by_housekeeping(redis_client: redis.Redis) -> None:
    """A big draft (never on the active index) is cancelled and its settling dies after
    two windows (Redis restarted under the worker). Housekeeping's sweep settles the rest
    once the campaign is quiet, and lets it go once nothing is left."""
    smtp_provider(redis_client, 2525)
    _create(redis_client, "cut", draft=True)
    failing = FailingRedis(connection_pool=redis_client.connection_pool)
    redis_client.script_load(lifecycle._SETTLE_WINDOW)  # each call below is one window

    def die_half_way(campaign_id: str, status: CampaignStatus) -> None:
        FailingRedis.scripts = 2
        with pytest.raises(redis.ConnectionError):
            lifecycle.settle_ended(campaign_id, status, failing, None)

    lifecycle.cancel("cut", client=redis_client, settle_later=die_half_way)
    left = campaign_reads.campaign_summary("cut", redis_client)
    assert left["cancelled"] == 2 * lifecycle.SETTLE_WINDOW and left["queued"] > 0

    enqueued: list[tuple[str, int]] = []
    later = time.time() + 3600
    housekeeping.sweep(redis_client, lambda c, b: enqueued.append((c, b)), now=later)
    books = check_books(redis_client, "cut")
    assert (books["status"], books["cancelled"], books["queued"]) == ("cancelled", N, 0)
    assert enqueued == []
    housekeeping.sweep(redis_client, lambda c, b: enqueued.append((c, b)), now=later)
    assert redis_client.zscore(store.ACTIVE_ZSET, "cut") is None


def test_a_big_expiry_is_handed_on_too(redis_client: redis.Redis) -> None:
    """Beat's expiry of a big paused campaign hands its settling on like a cancel; the
    messages end ``expired``."""
    smtp_provider(redis_client, 2525)
    soon = datetime.now(UTC) + timedelta(seconds=30)
    _create(redis_client, "exp", expires_at=soon.isoformat())
    lifecycle.pause("exp", client=redis_client)
    handed: list[Settle] = []
    expired = lifecycle.expire_due(
        now=soon.timestamp() + 1, client=redis_client, settle_later=lambda *a: handed.append(a)
    )
    assert expired == ["exp"] and handed == [("exp", CampaignStatus.EXPIRED)]
    assert not _claim("exp", 0)
    lifecycle.settle_ended("exp", CampaignStatus.EXPIRED, redis_client, None)
    books = check_books(redis_client, "exp")
    assert (books["status"], books["expired"], books["queued"]) == ("expired", N, 0)


def test_a_big_running_campaign_cancelled_over_the_api_is_settled_by_the_worker(
    api_server: ApiServer,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    smtp: SmtpTestServer,
) -> None:
    """The real path: the API answers ``cancelled`` and the worker's
    ``dispatch.settle_ended`` task settles every unsent message without anyone calling
    again; what went out is ``sent``, the rest ``cancelled``, nothing twice."""
    with api_client(api_server) as api:
        start_slow_campaign(api, smtp, "big-api", N, until_sent=50)
        answer = api.post("/v1/campaigns/big-api/cancel")
        assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
        until_no_batch_runs(redis_client, "big-api")
        summary = wait_for_campaign(api, "big-api", lambda s: s["queued"] == 0, 60)
    books = check_books(redis_client, "big-api")
    assert books == summary and summary["status"] == "cancelled"
    assert summary["sent"] == len(smtp.messages) < N and summary["unknown"] == 0
    assert summary["sent"] + summary["cancelled"] == N
    rcpts = Counter(m.rcpt_tos[0] for m in smtp.messages)
    assert max(rcpts.values()) == 1
