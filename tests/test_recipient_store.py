"""How recipients are stored: pages of documents and of address keys side by side, each
address once."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis

from dispatch import campaign_reads, campaigns, recipient_pages, store
from dispatch.batch_items import load_batch
from dispatch.models import CampaignRequest
from dispatch.recipient_append import RecipientAppender
from dispatch.recipient_pages import PAGE
from tests.helpers import create_held, http_provider, recipients, smtp_provider


def _draft(r: redis.Redis) -> str:
    http_provider(r, "http://127.0.0.1:9")
    body = {"provider": "esp", "subject": "Hi", "html": "<p>Hi</p>", "draft": True}
    cid, _ = campaigns.create_campaign(CampaignRequest.model_validate(body), client=r)
    return cid


def _person(email: str) -> dict[str, object]:
    return {"email": email, "vars": {"name": email.split("@")[0]}}


def _stored(r: redis.Redis, cid: str) -> tuple[list[str], list[str]]:
    """The stored addresses (from the documents) and address keys, in seq order; every
    page but the last holds exactly PAGE lines, both lists alike."""
    doc_pages = r.lrange(store.recipients_key(cid), 0, -1)
    key_pages = r.lrange(store.address_keys_key(cid), 0, -1)
    assert len(doc_pages) == len(key_pages)
    for docs, keys in zip(doc_pages[:-1], key_pages[:-1], strict=True):
        assert len(docs.split("\n")) == len(keys.split("\n")) == PAGE
    docs = [orjson.loads(d)["email"] for page in doc_pages for d in page.split("\n")]
    keys = [k for page in key_pages for k in page.split("\n")]
    assert len(docs) == len(keys) == campaign_reads.get_counters(cid, r)["total"]
    return docs, keys


def test_repeats_in_a_chunk_and_addresses_already_stored_are_skipped_by_position(
    redis_client: redis.Redis,
) -> None:
    cid = _draft(redis_client)
    appender = RecipientAppender(cid, redis_client)
    assert appender.add([_person("c@example.com")]) == (1, [])
    chunk = ["a@example.com", "B@example.com", "A@Example.com", "c@example.com", "d@example.com"]
    assert appender.add([_person(e) for e in chunk]) == (3, [2, 3])  # type: ignore[misc]
    docs, keys = _stored(redis_client, cid)
    assert docs == ["c@example.com", "a@example.com", "B@example.com", "d@example.com"]
    assert keys == ["c@example.com", "a@example.com", "b@example.com", "d@example.com"]


def test_a_chunk_larger_than_one_command_piece(redis_client: redis.Redis) -> None:
    cid = _draft(redis_client)
    appender = RecipientAppender(cid, redis_client)
    people = [_person(f"u{i}@example.com") for i in range(4500)]
    assert appender.add(people[:100]) == (100, [])
    count, skipped = appender.add(people)  # type: ignore[arg-type]
    assert (count, skipped) == (4400, list(range(100)))
    docs, keys = _stored(redis_client, cid)
    assert docs == keys == [f"u{i}@example.com" for i in range(4500)]
    assert redis_client.llen(store.recipients_key(cid)) == 5  # pages of 1000


def test_appends_fill_the_last_page_first(redis_client: redis.Redis) -> None:
    cid = _draft(redis_client)
    appender = RecipientAppender(cid, redis_client)
    emails = [f"u{i}@example.com" for i in range(2600)]
    for start, stop in ((0, 1), (1, 999), (999, 1000), (1000, 1250), (1250, 2600)):
        appender.add([_person(e) for e in emails[start:stop]])
    # Repeats of stored addresses amid new ones, at a page's edge: the new ones only.
    count, skipped = appender.add([_person(e) for e in ("u5@example.com", "new@example.com")])
    assert (count, skipped) == (1, [0])
    docs, keys = _stored(redis_client, cid)
    assert docs == keys == [*emails, "new@example.com"]
    assert redis_client.llen(store.recipients_key(cid)) == 3


def test_a_batch_reads_its_lines_across_two_pages(redis_client: redis.Redis) -> None:
    cid = _draft(redis_client)
    RecipientAppender(cid, redis_client).add([_person(f"u{i}@example.com") for i in range(1500)])

    async def load(start: int, size: int) -> list[str]:
        r = store.async_client()
        try:
            loaded = await load_batch(r, cid, start, size, "default")
        finally:
            await r.aclose()
        assert loaded.seqs == list(range(start, start + len(loaded.seqs)))
        return [doc["email"] for doc in loaded.recipients]

    assert asyncio.run(load(900, 300)) == [f"u{i}@example.com" for i in range(900, 1200)]
    assert asyncio.run(load(1200, 300)) == [f"u{i}@example.com" for i in range(1200, 1500)]
    assert asyncio.run(load(1400, 300)) == [f"u{i}@example.com" for i in range(1400, 1500)]
    assert asyncio.run(load(1500, 300)) == []


def test_a_list_posted_with_its_campaign_is_stored_once_per_address(
    redis_client: redis.Redis,
) -> None:
    """Filled by create_campaign (addresses checked by the caller, across chunks); an
    address with a line break keeps the pages aligned."""
    http_provider(redis_client, "http://127.0.0.1:9")
    emails = [f"u{i}@example.com" for i in range(2500)]
    emails[1700] = "U3@EXAMPLE.com"  # a repeat of a previous chunk's address
    emails[2100] = "bad\nline@example.com"
    people = [_person(e) for e in emails]
    body = {"provider": "esp", "subject": "Hi", "html": "<p>Hi</p>", "recipients": people}
    cid, _ = campaigns.create_campaign(
        CampaignRequest.model_validate(body), client=redis_client, enqueue=lambda c, b: None
    )
    docs, keys = _stored(redis_client, cid)
    expected = [e for i, e in enumerate(emails) if i != 1700]
    assert docs == expected
    assert keys == [e.lower().replace("\n", "\\n") for e in expected]
    assert not redis_client.exists(store.addresses_key(cid))


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


def test_messages_pages_read_across_a_page_edge(redis_client: redis.Redis) -> None:
    from dispatch.message_pages import messages_page

    cid = _draft(redis_client)
    RecipientAppender(cid, redis_client).add([_person(f"u{i}@example.com") for i in range(1500)])
    items, cursor = messages_page(cid, cursor=990, limit=20, client=redis_client)
    assert [(m["seq"], m["email"]) for m in items] == [
        (i, f"u{i}@example.com") for i in range(990, 1010)
    ]
    assert cursor == 1010
    items, cursor = messages_page(cid, cursor=1490, limit=20, client=redis_client)
    assert [m["seq"] for m in items] == list(range(1490, 1500))
    assert cursor is None


def test_an_address_is_found_on_any_page_read_in_any_chunk(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recipient_pages, "FIND_PAGES_PER_READ", 2)  # 3 pages: 2 reads
    body = {"provider": "p", "subject": "s", "html": "h", "recipients": recipients(2500)}
    smtp_provider(redis_client, 2525, nickname="p")
    cid, _ = create_held(redis_client, body)
    for seq in (0, 999, 1000, 1999, 2000, 2499):
        key = f"user{seq}@example.com"
        assert recipient_pages.seqs_of_address(redis_client, cid, key) == [seq]
    assert recipient_pages.seqs_of_address(redis_client, cid, "user25@example.co") == []
    assert recipient_pages.seqs_of_address(redis_client, cid, "ser1@example.com") == []
