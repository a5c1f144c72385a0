"""A Lua script that raised after it had written lost what came after, for good
(review AA25). Redis does not roll a script back, and the retry finds the writes made.

- Callback events: one campaign's bad counters hash lost the counts of the other
  campaigns in the same chunk (their events already marked seen). Such a group is now
  found before the first write, counts nothing, and is logged by name.
- The ledger and a cancel's settling: one bad field of the shared per-provider tally
  (``dispatch:stats:messages``) made every write of every campaign on that provider raise
  after its records were written: no campaign completed, a cancel answered an error.
  Only that field's move is now lost, and logged.
"""

from __future__ import annotations

import logging

import pytest
import redis

from dispatch import campaigns, effects, lifecycle, store
from dispatch.effects import InboxEvent
from dispatch.models import CampaignRequest
from providers.callbacks import EventType
from tests.helpers import campaign_body, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.test_review_p14_counts_close import event, sent


def delivered(metas: dict[str, str], n: int, dedupe: str) -> InboxEvent:
    email = f"user{n}@example.com"
    return event(EventType.DELIVERED, email, metas[email], dedupe)


def counter(r: redis.Redis, campaign_id: str, name: str) -> str | None:
    found = r.hget(store.counters_key(campaign_id), name)
    return None if found is None else str(found)


@pytest.mark.parametrize(
    ("field", "value"),
    [("delivered", "lots"), ("total", "many"), ("delivered", "1.5"), ("delivered", "007")],
)
def test_a_bad_counter_of_one_campaign_loses_no_count_of_the_others_in_the_chunk(
    redis_client: redis.Redis, smtp: SmtpTestServer, caplog: pytest.LogCaptureFixture,
    field: str, value: str,
) -> None:  # fmt: skip
    r = redis_client
    first, bad, last = (sent(r, smtp, f"aa25-{name}") for name in ("first", "bad", "last"))
    r.hset(store.counters_key("aa25-bad"), field, value)  # a hand edit, an old bug
    events = [
        delivered(m, n, f"aa25-{field}-{value}-{i}-{n}")
        for i, m in enumerate((first, bad, last))
        for n in range(3)
    ]
    with caplog.at_level(logging.ERROR, logger="dispatch.effects"):
        assert effects.apply_events(events, provider="local", kind="smtp", client=r) == 9
    assert counter(r, "aa25-first", "delivered") == "3"
    assert counter(r, "aa25-last", "delivered") == "3"
    assert counter(r, "aa25-bad", field) == value  # left for a person to mend
    assert "aa25-bad" in caplog.text and field in caplog.text
    # applied again (a redelivery), nothing moves twice
    assert effects.apply_events(events, provider="local", kind="smtp", client=r) == 0
    assert counter(r, "aa25-last", "delivered") == "3"


def test_a_bad_field_of_the_shared_tally_stops_no_campaign_completing(
    redis_client: redis.Redis, smtp: SmtpTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    r = redis_client
    r.hset(store.MESSAGE_STATS_HASH, "local|sent", "lots")
    with caplog.at_level(logging.ERROR, logger="dispatch.ledger"):
        sent(r, smtp, "aa25-tally")  # completed
    assert counter(r, "aa25-tally", "sent") == "3"
    assert counter(r, "aa25-tally", "queued") == "0"
    assert r.hget(store.MESSAGE_STATS_HASH, "local|sent") == "lots"
    assert "local|sent" in caplog.text


def test_a_bad_field_of_the_shared_tally_fails_no_cancel(
    redis_client: redis.Redis, smtp: SmtpTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    r = redis_client
    smtp_provider(r, smtp.port)
    request = CampaignRequest.model_validate(campaign_body("aa25-cancel", 5))
    campaigns.create_campaign(request, client=r, enqueue=lambda c, b: None)  # batches held
    r.hset(store.MESSAGE_STATS_HASH, "local|cancelled", "lots")
    with caplog.at_level(logging.ERROR, logger="dispatch.lifecycle"):
        summary = lifecycle.cancel("aa25-cancel", client=r)
    assert (summary["status"], summary["queued"], summary["cancelled"]) == ("cancelled", 0, 5)
    assert r.hget(store.campaign_key("aa25-cancel"), "progress_at")
    assert "local|cancelled" in caplog.text
