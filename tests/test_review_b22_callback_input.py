"""Review B22: odd callback input through the real app is the event's error or a 400,
never a 500 that drops the request's good events and makes the provider retry for ever."""

from __future__ import annotations

import json

import httpx
import redis

from dispatch import effects, store, suppressions
from providers.callbacks import EventType, parse_ses_message
from tests.callback_support import draft_campaign, generic_event, nested, post
from tests.test_callbacks_ses import ses_bounce
from tests.worker import wait_for

# An RFC 2047 encoded word whose base64 is broken (one character): email.header raises
# HeaderParseError for it, which is no ValueError.
BROKEN_WORD = "=?utf-8?b?a?="


def _apply_the_inbox(r: redis.Redis) -> None:
    """Apply the stored batches, as ``dispatch.process_callback`` does; a worker of the
    test session's may take one first (both apply it once), so wait for an empty inbox."""
    for batch_id in r.hkeys(store.CALLBACK_INBOX_HASH):
        effects.apply_batch(batch_id, client=r)
    wait_for(lambda: r.hlen(store.CALLBACK_INBOX_HASH) == 0, timeout=10)


def test_a_meta_with_a_broken_encoded_word_is_its_index_error(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis
) -> None:
    metas = draft_campaign(redis_client, "c-b22", ["a@example.com", "b@example.com"])
    payload = nested(
        generic_event("hard_bounce", "a@example.com", metas[0], description="gone"),
        generic_event("soft_bounce", "b@example.com", BROKEN_WORD),
    )
    smtp_answer = post(api, paths["gen"], payload)
    http_answer = post(api, paths["web"], payload)

    assert smtp_answer.status_code == 200, smtp_answer.text
    body = smtp_answer.json()
    assert (body["status"], body["processed"], body["failed"]) == ("partial_success", 1, 1)
    assert [e["event_index"] for e in body["errors"]] == [1]
    assert "invalid meta" in body["errors"][0]["error"]
    assert http_answer.status_code == 200, http_answer.text
    assert http_answer.json()["UNPROCESSED_EVENTS"][0]["index"] == 1
    # The good neighbour was stored before the answer; applied, it suppresses.
    _apply_the_inbox(redis_client)
    entry = suppressions.get("a@example.com", client=redis_client)
    assert entry is not None and entry["reason"] == "hard_bounce"


def test_an_ses_bounce_whose_meta_header_has_a_broken_encoded_word_keeps_its_bounce() -> None:
    message = ses_bounce(
        ["user1@example.com"], headers=[{"name": "X-CleverTap_META", "value": BROKEN_WORD}]
    )
    result = parse_ses_message(json.dumps(message), message_id="m-b22")

    assert [e.type for e in result.events] == [EventType.HARD_BOUNCE]
    event = result.events[0]
    assert (event.email, event.meta, event.meta_fields) == ("user1@example.com", BROKEN_WORD, None)


def test_a_legacy_form_whose_event_is_not_text_is_a_400(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis
) -> None:
    for event in ([], {}, ["hardbounce"]):
        payload = {"event": event, "data": [{"e": "old@example.com", "ts": 1730714617}]}
        for nickname in ("mail", "web"):
            answer = post(api, paths[nickname], payload)
            assert answer.status_code == 400, answer.text
            assert answer.json() == {
                "status": "error",
                "message": "invalid payload: event must be hardbounce or softbounce",
                "error_code": 400,
            }
    assert redis_client.hlen(store.CALLBACK_INBOX_HASH) == 0


def test_a_meta_naming_another_key_of_a_campaign_does_not_stall_its_batch(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis
) -> None:
    metas = draft_campaign(redis_client, "c-b22", ["a@example.com", "b@example.com"])
    # A meta of this account whose campaign id is the campaign's list of address pages:
    # the effects read it as a campaign (a HGET on a list failed the script every time,
    # and the batch stayed in the inbox with its good neighbour never applied).
    forged = metas[1].replace("|c-b22|", "|c-b22:address-keys|")
    assert redis_client.type(store.address_keys_key("c-b22")) == "list"
    answer = post(
        api,
        paths["gen"],
        nested(
            generic_event("hard_bounce", "a@example.com", metas[0]),
            generic_event("delivered", "b@example.com", forged),
        ),
    )
    assert answer.status_code == 200, answer.text

    _apply_the_inbox(redis_client)  # (WRONGTYPE before, and the batch stayed)
    entry = suppressions.get("a@example.com", client=redis_client)
    assert entry is not None and entry["reason"] == "hard_bounce"
    counters = redis_client.hgetall(store.counters_key("c-b22"))
    assert (counters.get("hard_bounced"), counters.get("delivered", "0")) == ("1", "0")
