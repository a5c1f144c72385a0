"""Review Q14: one campaign whose key holds another type (written by hand, the case
beat's passes now skip) must not blank the whole /metrics scrape."""

from __future__ import annotations

import time

import redis

from dispatch import store
from tests.api_server import ApiServer
from tests.helpers import campaign_body, create_held, smtp_provider
from tests.test_oncall import _scrape
from tests.test_review_q14_fault_metrics import _values


def test_a_campaign_key_of_another_type_in_the_active_index_leaves_metrics_whole(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A watched campaign's key holding a string (the campaign housekeeping skips, so it
    stays in the index) made every scrape report Redis down with no other family: a
    false DispatchRedisDown, and every other alert silent, the skip's among them."""
    smtp_provider(redis_client, 2525)
    create_held(redis_client, campaign_body("q14-running", 1))
    redis_client.zadd(store.ACTIVE_ZSET, {"q14-string": time.time()})
    redis_client.set(store.campaign_key("q14-string"), "not a hash")
    text = _scrape(api_server)
    assert "dispatch_redis_up 1.0" in text.splitlines()
    assert _values(text, "dispatch_campaigns", "status")["running"] == 1.0
