"""What happened to each message after its send: the callbacks counted for it, in
``GET /v1/campaigns/{id}/messages`` (``callbacks``, and ``callback=`` to keep those of a
kind: who clicked, who bounced), the client and ``dispatch messages``. Callbacks posted to
the real API over HTTP, applied as the worker applies them, on a real Redis."""

from __future__ import annotations

import json

import httpx
import pytest
import redis

from dispatch import effects, message_pages, store
from dispatch.api.schemas import CallbackCounter
from dispatch.cli import main
from dispatch.models import CALLBACK_COUNTERS
from tests.api_server import ApiServer
from tests.api_support import api_client, covers, dispatch_client
from tests.callback_support import draft_campaign, generic_event, inbox_empty, post

EMAILS = [f"user{i}@example.com" for i in range(6)]


def _apply_all(r: redis.Redis) -> None:
    """Apply every stored callback batch, as ``dispatch.process_callback`` does."""
    for batch_id in r.zrange(store.CALLBACK_PENDING_ZSET, 0, -1):
        effects.apply_batch(batch_id, r)
    assert inbox_empty(r)


def _campaign_with_callbacks(
    api: httpx.Client, r: redis.Redis, paths: dict[str, str], campaign_id: str
) -> None:
    metas = draft_campaign(r, campaign_id, EMAILS)
    events = [
        ("delivered", 0), ("delivered", 1), ("clicked", 1), ("clicked", 1),
        ("hard_bounce", 2), ("soft_bounce", 3), ("delivered", 3), ("spam", 5),
        ("unsubscribed", 5),
    ]  # fmt: skip
    for n, (kind, seq) in enumerate(events):
        event = generic_event(kind, EMAILS[seq], metas[seq], timestamp=1_795_000_000 + n)
        assert post(api, paths["gen"], {"version": "v2", **event}).status_code == 200
    _apply_all(r)


@covers("GET /v1/campaigns/{campaign_id}/messages")
def test_each_message_lists_the_callbacks_counted_for_it(
    api: httpx.Client, api_server: ApiServer, redis_client: redis.Redis, paths: dict[str, str]
) -> None:
    _campaign_with_callbacks(api, redis_client, paths, "mc-1")
    with api_client(api_server) as http:
        page = http.get("/v1/campaigns/mc-1/messages").json()
        counted = {m["seq"]: m["callbacks"] for m in page["items"]}
        assert counted == {
            0: ["delivered"],
            1: ["delivered", "clicked"],  # two clicks: counted once
            2: ["hard_bounced"],
            3: ["delivered", "soft_bounced"],
            4: [],
            5: ["unsubscribed", "spam"],  # (CALLBACK_COUNTERS order)
        }
        assert {m["status"] for m in page["items"]} == {"queued"}  # a draft: not sent

        def seqs(**params: str) -> list[int]:
            answer = http.get("/v1/campaigns/mc-1/messages", params=params)
            assert answer.status_code == 200, answer.text
            return [m["seq"] for m in answer.json()["items"]]

        assert seqs(callback="clicked") == [1]
        assert seqs(callback="delivered") == [0, 1, 3]
        assert seqs(callback="delivered", status="queued") == [0, 1, 3]
        assert seqs(callback="delivered", status="sent") == []
        assert seqs(callback="delivered", limit="2") == [0, 1]
        assert seqs(callback="hard_bounced", email="USER2@example.com") == [2]
        assert seqs(callback="clicked", email="user2@example.com") == []
        refused = http.get("/v1/campaigns/mc-1/messages", params={"callback": "opened"})
        assert refused.status_code == 422, refused.text
        assert refused.json()["field"] == "callback"


def test_a_message_past_the_first_byte_of_a_window_reads_its_own_bits(
    api: httpx.Client, redis_client: redis.Redis, paths: dict[str, str]
) -> None:
    """Bits are read a byte at a time from the page's first seq: a page that starts
    mid-byte, or a message far into the campaign, reads its own."""
    _campaign_with_callbacks(api, redis_client, paths, "mc-2")
    from dispatch.message_pages import messages_page

    for cursor in range(6):
        items, _ = messages_page("mc-2", cursor=cursor, limit=2, client=redis_client)
        for m in items:
            expected = [
                c
                for c in CALLBACK_COUNTERS
                if redis_client.getbit(store.callback_bits_key("mc-2", c), m["seq"])
            ]
            assert m["callbacks"] == expected
    redis_client.setbit(store.callback_bits_key("mc-2", "clicked"), 4, 1)
    (m4,), _ = messages_page("mc-2", cursor=4, limit=1, client=redis_client)
    assert m4["callbacks"] == ["clicked"]


def test_the_client_and_the_cli_filter_by_callback(
    api: httpx.Client,
    api_server: ApiServer,
    redis_client: redis.Redis,
    paths: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _campaign_with_callbacks(api, redis_client, paths, "mc-3")
    client = dispatch_client(api_server)
    clickers = list(client.iter_messages("mc-3", callback="clicked", page_size=2))
    assert [(m.email, m.callbacks) for m in clickers] == [(EMAILS[1], ["delivered", "clicked"])]
    assert [m.seq for m in client.messages("mc-3", callback="spam").items] == [5]

    assert main(["messages", "mc-3", "--callback", "hard_bounced"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["email"] for line in lines] == [EMAILS[2]]
    assert main(["messages", "mc-3", "--callback", "opened"]) == 2
    assert "error: --callback 'opened': give one of delivered" in capsys.readouterr().err


def test_the_listed_callbacks_are_the_counters_callbacks_move() -> None:
    """Three spellings of one list (the effects' map, the pages' order, the API's enum)
    must agree: a counter missing from one would be counted but never listed or kept."""
    assert set(effects.COUNTERS.values()) == set(CALLBACK_COUNTERS)
    assert [c.value for c in CallbackCounter] == list(CALLBACK_COUNTERS)


def test_a_read_only_connection_reads_the_callbacks(
    api: httpx.Client, redis_client: redis.Redis, paths: dict[str, str]
) -> None:
    """Reading a campaign's messages writes nothing, so a connection that may only read
    (a read-only replica, a reporting user) answers them: ``BITFIELD`` is a write
    command, which such a connection is refused."""
    _campaign_with_callbacks(api, redis_client, paths, "mc-ro")
    redis_client.execute_command(
        "ACL", "SETUSER", "reader", "on", ">reader-pw", "~*", "+@read", "+@scripting",
        "+@connection", "-@write",
    )  # fmt: skip
    try:
        kwargs = redis_client.connection_pool.connection_kwargs
        reader = redis.Redis(
            host=kwargs.get("host", "127.0.0.1"), port=kwargs.get("port", 6379),
            username="reader", password="reader-pw", decode_responses=True,
        )  # fmt: skip
        with pytest.raises(redis.exceptions.NoPermissionError):
            reader.hset(store.campaign_key("mc-ro"), "x", "1")  # it can only read
        items, _ = message_pages.messages_page("mc-ro", client=reader)
        assert [m["callbacks"] for m in items][:3] == [["delivered"], ["delivered", "clicked"],
                                                       ["hard_bounced"]]  # fmt: skip
    finally:
        redis_client.execute_command("ACL", "DELUSER", "reader")
