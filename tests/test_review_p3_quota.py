"""Review P3: a campaign pauses for a used-up daily quota only when the day's quota is
really used (sent, or still out), with every grant accounted: never sooner because
grants another session of the batch (or another worker) held were given back after it.

Several sessions of a paced provider hold grants at once (each waits its turn at the
pace): the first to find the quota taken once paused the campaign, and the others gave
their grants back when they saw the pause (27 of a quota of 30 sent, a resume the same
day sent 3 more; with 8 sessions at 50 a second, 4 of 30).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
import redis

from dispatch import campaign_reads, campaigns, lifecycle, store
from dispatch.ledger import parse_record
from dispatch.limits import ProviderLimiter, QuotaExhaustedError, quota_keys
from dispatch.settings import Settings
from providers.config import parse_provider_config
from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.test_limits_pace import gmail_with_cc
from tests.test_limits_workers import Workers, workers  # noqa: F401 (the fixture)
from tests.worker import wait_for

FAST = Settings(retry_base_seconds=0.05)


def _states(r: redis.Redis, campaign_id: str) -> Counter[str]:
    return Counter(
        str((parse_record(raw) or {}).get("state"))
        for raw in r.hgetall(store.ledger_key(campaign_id)).values()
    )


def _quota_used(r: redis.Redis) -> int:
    return int(r.hget(quota_keys("local")[0], "sum") or 0)


def _grants_out(r: redis.Redis) -> int:
    return sum(r.zcard(k) for k in r.scan_iter(match=f"{store.PREFIX}:quota-out:local:*"))


def _new_day(r: redis.Redis) -> None:
    """24 hours later: the sends counted have left the quota's window."""
    for k in r.scan_iter(match=f"{store.PREFIX}:quota:local:*"):
        r.delete(k)


def _resume(r: redis.Redis, campaign_id: str) -> list[tuple[str, int]]:
    batches: list[tuple[str, int]] = []
    lifecycle.resume(campaign_id, client=r, enqueue=lambda c, b: batches.append((c, b)))
    return batches


def _run(r: redis.Redis, batches: list[tuple[str, int]], campaign_id: str) -> None:
    run_batches(batches, FAST)
    campaigns.finish_if_done(campaign_id, r)


@pytest.mark.parametrize(("connections", "rate"), [(5, 20.0), (8, 50.0)])
def test_a_paced_batch_pauses_only_once_the_quota_is_really_used(
    redis_client: redis.Redis, connections: int, rate: float
) -> None:
    """A quota of 30, a campaign of 40, several sessions each holding a grant while it
    waits for the pace: exactly 30 go out before the pause that says the quota is used
    up; a resume the same day sends nothing; the next day the 10 others, each once."""
    with SmtpTestServer() as smtp:
        smtp_provider(
            redis_client,
            smtp.port,
            daily_quota=30,
            max_connections=connections,
            rate_per_second=rate,
        )
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(40)}
        cid, batches = create_held(redis_client, body)
        _run(redis_client, batches, cid)
        summary = campaign_reads.campaign_summary(cid, redis_client)
        assert (summary["status"], summary["sent"], summary["queued"]) == ("paused", 30, 10)
        assert str(summary["reason"]).startswith("daily quota of 30 messages for provider")
        assert len(smtp.messages) == 30 == _quota_used(redis_client)
        assert _grants_out(redis_client) == 0  # every grant settled
        states = _states(redis_client, cid)
        assert states["sent"] == 30 and "claimed" not in states  # none left claimed

        _run(redis_client, _resume(redis_client, cid), cid)  # the same day
        summary = campaign_reads.campaign_summary(cid, redis_client)
        assert (summary["status"], summary["sent"], len(smtp.messages)) == ("paused", 30, 30)

        _new_day(redis_client)
        _run(redis_client, _resume(redis_client, cid), cid)
        received = Counter(m.rcpt_tos[0] for m in smtp.messages)
    assert campaign_reads.campaign_summary(cid, redis_client)["status"] == "completed"
    assert sorted(received) == sorted(str(x["email"]) for x in recipients(40))
    assert max(received.values()) == 1
    assert _states(redis_client, cid) == {"sent": 40}


def test_messages_refused_by_a_session_are_sent_by_another_before_the_pause(
    redis_client: redis.Redis,
) -> None:
    """Four paced sessions; two recipients refused by the server: their grants come back
    while the other sessions wait, and are used (10 sent, 2 failed) before the pause."""
    with SmtpTestServer() as smtp:
        refused = {"user1@example.com", "user2@example.com"}
        smtp.handler.rcpt_reply = lambda a: "550 5.1.1 no such user" if a in refused else None
        smtp_provider(
            redis_client, smtp.port, daily_quota=10, max_connections=4, rate_per_second=20.0
        )
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(30)}
        cid, batches = create_held(redis_client, body)
        _run(redis_client, batches, cid)
        delivered = len(smtp.messages)
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["status"], summary["sent"], summary["failed"]) == ("paused", 10, 2)
    assert delivered == 10 == _quota_used(redis_client)
    assert summary["queued"] == 18 and _grants_out(redis_client) == 0


def test_a_campaign_smaller_than_the_quota_completes_and_counts_what_it_sent(
    redis_client: redis.Redis,
) -> None:
    with SmtpTestServer() as smtp:
        smtp_provider(
            redis_client, smtp.port, daily_quota=30, max_connections=8, rate_per_second=50.0
        )
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(20)}
        cid, batches = create_held(redis_client, body)
        _run(redis_client, batches, cid)
        delivered = Counter(m.rcpt_tos[0] for m in smtp.messages)
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["status"], summary["sent"]) == ("completed", 20)
    assert len(delivered) == 20 and max(delivered.values()) == 1
    assert _quota_used(redis_client) == 20 and _grants_out(redis_client) == 0


def test_two_worker_processes_pause_only_once_the_quota_is_used(
    workers: Workers,  # noqa: F811
) -> None:
    """Batches of 20 of one campaign of 100 in two worker processes, each batch's
    sessions holding paced grants: 30 go out, then the pause; a resume the same day
    sends none; the next day's resumes send the rest, each once."""
    r = workers.r
    with SmtpTestServer() as smtp:
        smtp_provider(r, smtp.port, daily_quota=30, max_connections=8, rate_per_second=50.0)
        cid = workers.campaign("local", 100, "example.com")
        wait_for(lambda: workers.status(cid) == "paused", timeout=60)

        def settled() -> dict[str, Any]:
            # Every batch done with: nothing claimed, every grant settled.
            summary = campaign_reads.campaign_summary(cid, r)
            assert summary["status"] == "paused"
            wait_for(lambda: "claimed" not in _states(r, cid) and not _grants_out(r), timeout=30)
            return summary

        summary = settled()
        assert (summary["sent"], summary["queued"], len(smtp.messages)) == (30, 70, 30)
        assert _quota_used(r) == 30

        lifecycle.resume(cid, client=r, enqueue=workers.enqueue)  # the same day
        wait_for(lambda: workers.status(cid) == "paused", timeout=60)
        summary = settled()
        assert (summary["sent"], len(smtp.messages)) == (30, 30)

        for _ in range(4):  # 30 more a day
            _new_day(r)
            lifecycle.resume(cid, client=r, enqueue=workers.enqueue)
            wait_for(lambda: workers.status(cid) in ("paused", "completed"), timeout=60)
            if workers.status(cid) == "completed":
                break
            settled()
        received = Counter(m.rcpt_tos[0] for m in smtp.messages)
    assert workers.status(cid) == "completed"
    assert len(received) == 100 and max(received.values()) == 1


def _config(**fields: object) -> Any:
    return parse_provider_config(
        {"nickname": "local", "kind": "smtp", "host": "127.0.0.1", "port": 25, **fields}
    )


def test_a_taken_quota_is_not_used_up_while_grants_are_out(redis_client: redis.Redis) -> None:
    """A tracked grant holds the last of the quota: a second sender is told to ask again
    (not that the quota is used up) until it is settled; what it gives back is granted
    again; once every grant is settled the quota is used up. An untracked caller (a
    provider's test message) is refused as before."""

    async def go() -> None:
        client = store.async_client()
        try:
            a = ProviderLimiter(client, _config(daily_quota=5))
            b = ProviderLimiter(client, _config(daily_quota=5))
            first = await a.take_some(5, tracked=True)
            assert first.count == 5
            waiting = await b.take_some(3, tracked=True)
            assert waiting.count == 0 and waiting.wait > 0
            with pytest.raises(QuotaExhaustedError):
                await b.take_some(1)  # untracked: no answer to wait for
            await a.settle(first, 2)  # two refused by the provider
            second = await b.take_some(3, tracked=True)
            assert second.count == 2
            await b.settle(second, 0)
            with pytest.raises(QuotaExhaustedError, match="daily quota of 5 messages"):
                await a.take_some(1, tracked=True)
        finally:
            await client.aclose()

    asyncio.run(go())


def test_a_grant_never_settled_lapses(redis_client: redis.Redis) -> None:
    """A worker that died holding a grant does not keep the quota from being used up
    for ever: its grant lapses after ``grant_ttl``."""

    async def go() -> None:
        client = store.async_client()
        try:
            dead = ProviderLimiter(client, _config(daily_quota=2), grant_ttl=0.3)
            assert (await dead.take_some(2, tracked=True)).count == 2
            live = ProviderLimiter(client, _config(daily_quota=2))
            assert (await live.take_some(1, tracked=True)).count == 0
            await asyncio.sleep(0.5)
            with pytest.raises(QuotaExhaustedError):
                await live.take_some(1, tracked=True)
        finally:
            await client.aclose()

    asyncio.run(go())


def test_messages_with_more_recipients_than_the_daily_recipient_quota_say_so(
    redis_client: redis.Redis,
) -> None:
    """Messages of 5 recipients (to and 4 cc) and a daily recipient quota of 3: none can
    go on any day, and the pause says that, not that today's quota is used up and the
    campaign may be resumed after midnight UTC."""
    cid, delivered = gmail_with_cc(redis_client, 3, 3)
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["status"], summary["sent"], summary["queued"]) == ("paused", 0, 3)
    assert delivered == 0
    reason = str(summary["reason"])
    assert "each message has 5 recipients (to, cc and bcc)" in reason
    assert "daily recipient quota of 3" in reason and "00:00 UTC" not in reason
