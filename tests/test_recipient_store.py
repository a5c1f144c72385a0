"""How recipients are stored: documents and address keys side by side, each address once."""

from __future__ import annotations

import orjson
import pytest
import redis

from dispatch import campaigns, store
from dispatch.campaigns import RecipientAppender
from dispatch.models import CampaignRequest
from tests.helpers import http_provider


def _draft(r: redis.Redis) -> str:
    http_provider(r, "http://127.0.0.1:9")
    body = {"provider": "esp", "subject": "Hi", "html": "<p>Hi</p>", "draft": True}
    cid, _ = campaigns.create_campaign(CampaignRequest.model_validate(body), client=r)
    return cid


def _person(email: str) -> dict[str, object]:
    return {"email": email, "vars": {"name": email.split("@")[0]}}


def test_repeats_in_a_chunk_and_addresses_already_stored_are_skipped_by_position(
    redis_client: redis.Redis,
) -> None:
    cid = _draft(redis_client)
    appender = RecipientAppender(cid, redis_client)
    assert appender.add([_person("c@example.com")]) == (1, [])
    chunk = ["a@example.com", "B@example.com", "A@Example.com", "c@example.com", "d@example.com"]
    assert appender.add([_person(e) for e in chunk]) == (3, [2, 3])  # type: ignore[misc]
    docs = [orjson.loads(d)["email"] for d in redis_client.lrange(store.recipients_key(cid), 0, -1)]
    assert docs == ["c@example.com", "a@example.com", "B@example.com", "d@example.com"]
    keys = redis_client.lrange(store.address_keys_key(cid), 0, -1)
    assert keys == ["c@example.com", "a@example.com", "b@example.com", "d@example.com"]
    assert campaigns.get_counters(cid, redis_client)["total"] == 4


def test_a_chunk_larger_than_one_command_piece(redis_client: redis.Redis) -> None:
    cid = _draft(redis_client)
    appender = RecipientAppender(cid, redis_client)
    people = [_person(f"u{i}@example.com") for i in range(4500)]
    assert appender.add(people[:100]) == (100, [])
    count, skipped = appender.add(people)  # type: ignore[arg-type]
    assert (count, skipped) == (4400, list(range(100)))
    assert redis_client.llen(store.recipients_key(cid)) == 4500
    assert redis_client.llen(store.address_keys_key(cid)) == 4500
    assert redis_client.lindex(store.address_keys_key(cid), 4499) == "u4499@example.com"


def test_batches_are_handed_out_in_order_and_a_failure_reaches_the_caller(
    redis_client: redis.Redis,
) -> None:
    """A long list is stored while its batches are handed out by a thread of their own."""
    http_provider(redis_client, "http://127.0.0.1:9")
    handed: list[int] = []

    def enqueue(campaign_id: str, batch: int) -> None:
        handed.append(batch)
        if batch == 1:
            raise ConnectionError("broker unreachable")

    people = [_person(f"u{i}@example.com") for i in range(3500)]
    body = {"provider": "esp", "subject": "Hi", "html": "<p>Hi</p>", "recipients": people}
    with pytest.raises(ConnectionError, match="broker unreachable"):
        campaigns.create_campaign(CampaignRequest.model_validate(body), enqueue=enqueue)
    assert handed == [0, 1]  # nothing more after the failure

    handed.clear()
    body["id"] = "in-order"
    campaigns.create_campaign(
        CampaignRequest.model_validate(body), enqueue=lambda c, b: handed.append(b)
    )
    assert handed == [0, 1, 2, 3]


def test_a_request_is_validated_with_the_collector_paused_and_restored() -> None:
    import gc

    from pydantic import ValidationError

    from dispatch.models import campaign_request

    body = {"provider": "esp", "subject": "Hi", "html": "<p>Hi</p>"}
    many = {**body, "recipients": [_person(f"u{i}@example.com") for i in range(20_000)]}
    seen: list[bool] = []
    gc.callbacks.append(lambda phase, info: seen.append(True))
    try:
        CampaignRequest.model_validate(many)
        unpaused, seen[:] = len(seen), []
        request = campaign_request(many)
        assert len(request.recipients) == 20_000
        # Dozens of collections (a start and a stop each) without the pause; with it, at
        # most the one the allocations made meanwhile set off once it is over.
        assert unpaused > 20 and len(seen) <= 2
        assert gc.isenabled()
        with pytest.raises(ValidationError):
            campaign_request({**body, "recipients": [{"email": 1}]})
        assert gc.isenabled()
        gc.disable()  # a caller that had paused it finds it paused still
        campaign_request(body)
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.callbacks.pop()
