"""Review L7: what happens at once, found by a randomized soak (many campaigns, chaotic
sinks, operators acting meanwhile), each pinned here by a deterministic test."""

from __future__ import annotations

import redis

from dispatch import campaign_reads, store, suppressions
from dispatch.ledger import parse_record
from dispatch.suppressions import suppression_key
from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer


def test_an_address_suppressed_while_its_batch_sends_gets_nothing(
    redis_client: redis.Redis,
) -> None:
    # A batch reads the suppression list when it loads; a long one (a slow pace, a big
    # list) sends for minutes after that. An unsubscribe, a complaint or a manual entry
    # committed meanwhile must hold for the messages not claimed yet (DESIGN §5:
    # "checked again right before sending"). The soak saw messages go out seconds after
    # their address was put on the list.
    n = 12
    with SmtpTestServer() as smtp:

        def rcpt_reply(address: str) -> str | None:
            if address == "user0@example.com":  # the batch's first message is on the wire
                suppressions.add("user9@example.com", reason="manual", source="api")
                redis_client.sadd(store.optout_key("news"), suppression_key("user10@example.com"))
            return None

        smtp.handler.rcpt_reply = rcpt_reply
        smtp_provider(redis_client, smtp.port, max_connections=1)
        body = {"provider": "local", "subject": "s", "html": "h", "category": "news",
                "recipients": recipients(n)}  # fmt: skip
        cid, batches = create_held(redis_client, body)
        run_batches(batches)
        received = sorted(m.rcpt_tos[0] for m in smtp.messages)
    assert "user9@example.com" not in received and "user10@example.com" not in received
    assert len(received) == n - 2
    ledger = redis_client.hgetall(store.ledger_key(cid))
    listed, opted = parse_record(ledger["9"]), parse_record(ledger["10"])
    assert listed is not None and listed["state"] == "suppressed"
    assert listed["detail"] == "on the suppression list"
    assert opted is not None and opted["state"] == "suppressed"
    assert opted["detail"] == 'opted out of category "news" in the preference center'
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["sent"], summary["suppressed"], summary["queued"]) == (n - 2, 2, 0)
    assert summary["status"] == "completed"
    stats = redis_client.hgetall(store.MESSAGE_STATS_HASH)
    assert (stats["local|sent"], stats["local|suppressed"]) == (str(n - 2), "2")
