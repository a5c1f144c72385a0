"""A provider's pace and daily quotas as its user would measure them at the server, with
two real worker processes (tests.test_limits_workers) or a batch run in-process."""

from __future__ import annotations

import time
from collections import Counter

import redis

from dispatch import campaign_reads, lifecycle, store
from dispatch.settings import Settings
from tests.helpers import recipients, run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.test_limits_workers import Workers, workers  # noqa: F401 (the fixture)
from tests.worker import wait_for


def test_a_low_rate_holds_over_a_window_without_bursts(workers: Workers) -> None:  # noqa: F811
    """1 a second, two campaigns, four senders in two processes: counted at the server
    over twelve seconds, about 13 (one at the start, then one a second), never a chunk of
    several at once followed by silence."""
    arrivals: list[float] = []
    with SmtpTestServer() as smtp:
        smtp.handler.data_reply = lambda envelope: arrivals.append(time.monotonic())  # type: ignore[assignment,func-returns-value]
        smtp_provider(workers.r, smtp.port, max_connections=4, rate_per_second=1)
        ids = [workers.campaign("local", 30, f"c{i}.example") for i in range(2)]
        wait_for(lambda: bool(arrivals), timeout=30)
        time.sleep(12.5)
        for campaign_id in ids:
            # Claimed batches are handed back to these workers' Redis, not through this
            # process's own Celery app (its broker is the session's Redis, not yet set:
            # its connection pool would keep an embedded one's for the whole session).
            lifecycle.cancel(campaign_id, client=workers.r, enqueue=workers.enqueue)
        window = [t for t in arrivals if t <= arrivals[0] + 12]
    # A correct pace sends 13; a slow machine may send fewer (not judged here: no speed in
    # a pass/fail test), never a burst more.
    assert 1 <= len(window) <= 15
    busiest = max(sum(1 for t in arrivals if s <= t < s + 1) for s in arrivals)
    assert busiest <= 3  # a chunk of 4 at once was the fault


def test_a_daily_quota_is_used_to_the_last_message_then_resumed_the_next_day(
    workers: Workers,  # noqa: F811
) -> None:
    """A quota of 10 and two campaigns of 8 at once: exactly 10 go out today, the rest
    wait in a paused campaign that says why; the next day resume sends them, once each."""
    with SmtpTestServer() as smtp:
        smtp_provider(workers.r, smtp.port, max_connections=4, daily_quota=10)
        ids = [workers.campaign("local", 8, f"c{i}.example") for i in range(2)]
        stopped = ("paused", "completed")
        wait_for(lambda: all(workers.status(c) in stopped for c in ids), timeout=40)
        time.sleep(1)  # nothing more goes out
        assert len(smtp.messages) == 10
        summaries = [campaign_reads.campaign_summary(c, workers.r) for c in ids]
        paused = [s for s in summaries if s["status"] == "paused"]
        assert paused and all("daily quota of 10 messages" in s["reason"] for s in paused)
        assert all("the campaign resumes by itself at" in s["reason"] for s in paused)
        assert sum(s["sent"] for s in summaries) == 10
        assert sum(s["queued"] for s in summaries) == 6 and sum(s["failed"] for s in summaries) == 0

        for key in workers.r.scan_iter(match=f"{store.PREFIX}:quota:local:*"):
            workers.r.delete(key)  # 24 hours later: the sends left the quota's window
        for s in paused:
            lifecycle.resume(str(s["id"]), client=workers.r, enqueue=workers.enqueue)
        wait_for(lambda: all(workers.status(c) == "completed" for c in ids), timeout=40)
        received = Counter(m.rcpt_tos[0] for m in smtp.messages)
    assert len(received) == 16 and max(received.values()) == 1


def gmail_with_cc(r: redis.Redis, daily_recipient_quota: int, n: int) -> tuple[str, int]:
    """A campaign of ``n`` through Gmail, each message with 4 cc (5 of its recipients a
    day), run in this process: its id and how many messages the server received."""
    with SmtpTestServer() as smtp:
        smtp_provider(
            r,
            smtp.port,
            "gm",
            kind="gmail",
            daily_recipient_quota=daily_recipient_quota,
            max_connections=1,
        )
        cc = [f"boss{i}@acme.example" for i in range(4)]
        body = {"provider": "gm", "subject": "s", "html": "h", "cc": cc}
        body["recipients"] = recipients(n)
        cid, _ = run_inline(r, body, Settings(retry_base_seconds=0.05))
        return cid, len(smtp.messages)


def test_gmail_pauses_at_its_daily_recipient_limit_with_cc(redis_client: redis.Redis) -> None:
    """Each message with 4 cc is 5 of Gmail's recipients a day: a limit of 12 takes two
    messages (10), then the campaign pauses naming the recipient limit; nothing fails."""
    cid, delivered = gmail_with_cc(redis_client, 12, 5)
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["status"], summary["sent"], summary["queued"]) == ("paused", 2, 3)
    assert delivered == 2
    assert "daily recipient quota of 12 recipients (to, cc and bcc; 5 a message)" in str(
        summary["reason"]
    )


def test_messages_the_server_refused_do_not_use_the_quota(redis_client: redis.Redis) -> None:
    """A quota of 5 counts messages that went out: two refused recipients do not make the
    campaign pause with only three sent."""
    with SmtpTestServer() as smtp:
        refused = {"user1@example.com", "user2@example.com"}
        smtp.handler.rcpt_reply = lambda a: "550 5.1.1 no such user" if a in refused else None
        smtp_provider(redis_client, smtp.port, daily_quota=5, max_connections=1)
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(8)}
        cid, _ = run_inline(redis_client, body, Settings(retry_base_seconds=0.05))
        delivered = len(smtp.messages)
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["sent"], summary["failed"], summary["queued"]) == (5, 2, 1)
    assert delivered == 5 and summary["status"] == "paused"
