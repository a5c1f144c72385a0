"""Beat's sweep stays bounded in a big Redis: what it asks about a campaign does not grow
with the other keys Redis holds (counted, never timed)."""

from __future__ import annotations

from typing import Any

import redis

from dispatch import campaigns, housekeeping, store
from dispatch.models import CampaignRequest
from tests.helpers import recipients, smtp_provider

OTHER_KEYS = 20_000  # callback dedupe keys (a busy provider leaves millions)


class CountingRedis(redis.Redis):
    """A client that counts the commands it sends."""

    sent = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        CountingRedis.sent += 1
        return super().execute_command(*args, **options)


def test_finding_a_running_batch_does_not_walk_the_keyspace(redis_client: redis.Redis) -> None:
    """Whether a worker holds a lease on one of a campaign's batches is asked about its
    batches' lease keys: a SCAN of the keyspace for them cost 14 s with a million
    callback dedupe keys, for each quiet campaign the sweep looked at."""
    smtp_provider(redis_client, 2525)
    body = {"id": "swept", "provider": "local", "subject": "Hi", "html": "<p>Hi</p>",
            "recipients": recipients(2500)}  # fmt: skip
    campaigns.create_campaign(
        CampaignRequest.model_validate(body), client=redis_client, enqueue=lambda c, b: None
    )
    pipe = redis_client.pipeline(transaction=False)
    for i in range(OTHER_KEYS):
        pipe.set(store.callback_seen_key("local", f"{i:040x}"), "1", ex=600)
    pipe.execute()
    counting = CountingRedis(connection_pool=redis_client.connection_pool)

    CountingRedis.sent = 0
    assert not housekeeping._batch_runs(counting, "swept")
    assert CountingRedis.sent <= 3, CountingRedis.sent

    redis_client.set(store.batch_lease_key("swept", 2), "token", px=60_000)  # the last batch
    CountingRedis.sent = 0
    assert housekeeping._batch_runs(counting, "swept")
    assert CountingRedis.sent <= 3, CountingRedis.sent
    assert not housekeeping._batch_runs(counting, "other-campaign")
