"""A cc or bcc address suppressed after its campaign was created gets no more copies.

A campaign whose cc or bcc is on the suppression list is refused at creation
(tests/test_inbox_safety.py). An address suppressed later (its mailbox hard-bounced, it
complained) is checked as the recipients are: by each batch, right before it sends. The
messages sent after that go without the copy, each still to its To recipient, and the
log names the address left out and why.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis
from redis.asyncio.client import Pipeline

from dispatch import campaign_reads, suppressions
from dispatch.limits import quota_keys
from dispatch.settings import get_settings
from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer

BOSS, ARCHIVE = "boss@example.com", "archive@example.com"


@pytest.fixture
def batches_of_two(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCH_BATCH_SIZE", "2")
    get_settings.cache_clear()


@pytest.mark.parametrize("preference_center", ["none", "system"])
def test_a_cc_suppressed_between_two_batches_gets_no_more_copies(
    redis_client: redis.Redis,
    smtp: SmtpTestServer,
    batches_of_two: None,
    caplog: pytest.LogCaptureFixture,
    preference_center: str,
) -> None:
    """``system``: the copies go in a transaction of their own (the To recipient's
    one-click link stays out of them); ``none``: one transaction for all."""
    smtp_provider(
        redis_client, smtp.port, preference_center=preference_center,
        daily_recipient_quota=1000,
    )  # fmt: skip
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(4),
            "cc": ["Boss@Example.com"], "bcc": [ARCHIVE]}  # fmt: skip
    cid, batches = create_held(redis_client, body)
    assert [b for _, b in batches] == [0, 1]

    run_batches(batches[:1])
    suppressions.add(BOSS, reason="hard_bounce", source="callback:local:bounce")
    with caplog.at_level(logging.WARNING, logger="dispatch.batch_campaign"):
        run_batches(batches[1:])

    counters = campaign_reads.get_counters(cid, redis_client)
    assert (counters["sent"], counters["queued"], counters["failed"]) == (4, 0, 0)
    got: dict[str, list[str]] = {}  # who received the message of each To recipient
    for m in smtp.messages:
        got.setdefault(m.message["To"], []).extend(a.lower() for a in m.rcpt_tos)
    copies = [BOSS, ARCHIVE]
    assert {to: sorted(who) for to, who in got.items()} == {
        "user0@example.com": sorted(["user0@example.com", *copies]),
        "user1@example.com": sorted(["user1@example.com", *copies]),
        "user2@example.com": ["archive@example.com", "user2@example.com"],
        "user3@example.com": ["archive@example.com", "user3@example.com"],
    }
    for m in smtp.messages:  # the Cc header names only those who get a copy
        copied = m.message["To"] in ("user0@example.com", "user1@example.com")
        assert m.message["Cc"] == ("Boss@example.com" if copied else None)

    # The daily recipient quota counted the copies that went: 3 a message, then 2.
    window = quota_keys("local")[1]
    assert redis_client.hget(window, "sum") == str(2 * 3 + 2 * 2)

    # Where an operator looks: the log names the campaign, the address, the entry.
    lines = [r for r in caplog.records if "left out" in r.getMessage()]
    assert len(lines) == 1
    assert (
        lines[0]
        .getMessage()
        .startswith(
            f"campaign {cid}: cc Boss@Example.com is on the suppression list "
            "(hard_bounce, callback:local:bounce, since "
        )
    )
    assert "still goes to its To recipient" in lines[0].getMessage()
    assert (lines[0].__dict__["campaign_id"], lines[0].__dict__["field"]) == (cid, "cc")


def test_a_bcc_suppressed_before_the_first_batch_and_its_campaign_completes(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """Suppressed after creation, before any batch: no copy at all; the cc still gets
    its copies (one address of two left out)."""
    smtp_provider(redis_client, smtp.port)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(3),
            "cc": [BOSS], "bcc": [ARCHIVE]}  # fmt: skip
    cid, batches = create_held(redis_client, body)
    suppressions.add(ARCHIVE, reason="spam", source="api")
    run_batches(batches)
    assert sorted(m.rcpt_tos for m in smtp.messages) == [
        [f"user{i}@example.com", BOSS] for i in range(3)
    ]
    assert campaign_reads.get_counters(cid, redis_client)["sent"] == 3
    assert campaign_reads.get_status(cid, redis_client).value == "completed"


def test_the_load_reads_nothing_more_for_a_campaign_without_cc_or_bcc(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copies' suppression is read in the batch's load (its one MULTI), and only for
    a campaign with cc or bcc: without, the load is what it was, and so is each message
    (one transaction, its To alone)."""
    loads: list[list[str]] = []
    execute = Pipeline.execute

    async def recorded(self: Pipeline, raise_on_error: bool = True) -> Any:
        names = [str(args[0]) for args, _ in self.command_stack]
        if "LRANGE" in names:  # the load (begin and the ledger writes are scripts alone)
            loads.append(names)
        return await execute(self, raise_on_error)

    monkeypatch.setattr(Pipeline, "execute", recorded)
    smtp_provider(redis_client, smtp.port)
    plain = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(2)}
    _, batches = create_held(redis_client, plain)
    run_batches(batches)
    assert loads == [["LRANGE", "EVAL"]]
    assert sorted(m.rcpt_tos for m in smtp.messages) == [
        ["user0@example.com"],
        ["user1@example.com"],
    ]

    _, batches = create_held(redis_client, {**plain, "id": "with-cc", "cc": [BOSS]})
    run_batches(batches)
    assert loads[1:] == [["LRANGE", "EVAL", "HMGET"]]
