"""Review P10: callbacks without meta matched by the provider's message id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from dispatch import campaign_reads
from dispatch.provider_ids import DAY, MAX_ID_LENGTH, index_key, lookup
from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer


def sendgrid_campaign(r: redis.Redis, smtp: SmtpTestServer, n: int) -> tuple[str, list[Any]]:
    smtp.handler.data_reply = lambda envelope: f"250 Ok: queued as id{envelope.rcpt_tos[0]}"
    smtp_provider(r, smtp.port, "sg", kind="sendgrid", username="")
    body = {"provider": "sg", "subject": "s", "html": "h", "recipients": recipients(n)}
    return create_held(r, body)


def test_outcomes_are_written_when_keeping_the_ids_fails(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """The ids are kept before the outcomes are written: a failure of the first (here
    WRONGTYPE) leaves the second as they are."""
    today = datetime.now(UTC).strftime("%Y%m%d")
    redis_client.set(index_key(today), "not a hash")  # every HSET on it: WRONGTYPE
    campaign_id, batches = sendgrid_campaign(redis_client, smtp, 3)
    run_batches(batches)
    assert campaign_reads.get_counters(campaign_id, redis_client)["sent"] == 3


def test_a_days_ids_are_kept_their_days_past_the_days_end(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """DISPATCH_PROVIDER_ID_DAYS (7) past the end of the day they were sent, not 7 days
    past the day's last send plus a day: the README's memory figure is 7 days' ids."""
    _, batches = sendgrid_campaign(redis_client, smtp, 2)
    run_batches(batches)
    now = datetime.now(UTC)
    key = index_key(now.strftime("%Y%m%d"))
    assert redis_client.hget(key, "iduser1@example.com") is not None
    day_end = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    expires_at = now.timestamp() + redis_client.ttl(key)
    assert abs(expires_at - (day_end.timestamp() + 7 * DAY)) <= 2


def test_an_id_kept_under_tomorrow_is_found(redis_client: redis.Redis) -> None:
    """A sending worker whose clock runs ahead writes the next day's hash before midnight
    on the callback worker's clock."""
    meta = "x@example.com|a|c|20000101|0|d|1|"
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y%m%d")
    redis_client.hset(index_key(tomorrow), "id-1", meta)
    assert lookup(redis_client, ["id-1"], 7) == {"id-1": meta}


def test_an_id_longer_than_any_providers_is_not_looked_up(redis_client: redis.Redis) -> None:
    """Each id asked for goes to Redis in up to four candidates for each day searched:
    a request of 1000 events with 8 KB ids is not turned into 160 MB of HMGET."""
    meta = "x@example.com|a|c|20000101|0|d|1|"
    today = datetime.now(UTC).strftime("%Y%m%d")
    long_id, longest = "a" * (MAX_ID_LENGTH + 1), "b" * MAX_ID_LENGTH
    redis_client.hset(index_key(today), mapping={long_id: meta, longest: meta})
    assert lookup(redis_client, [long_id, longest], 7) == {longest: meta}
    assert lookup(redis_client, [long_id], 7) == {}
