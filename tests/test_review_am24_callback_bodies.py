"""Odd callback bodies found by fuzzing (review AM24): the real app over HTTP on a real
Redis, the stored batches applied in-process as the worker applies them."""

from __future__ import annotations

import httpx
import redis

from dispatch import campaign_reads, effects, store
from providers.callbacks import EventType, parse_ses_message
from tests.callback_support import callback_entries, draft_campaign, inbox_empty, post

# Valid JSON (RFC 8259 §6 sets no bound on a number), but past the digits Python turns
# into an int (sys.get_int_max_str_digits(), 4300 by default).
LONG_INTEGER = "1" * 5000


def apply_inbox(r: redis.Redis) -> None:
    for batch_id in r.hkeys(store.CALLBACK_INBOX_HASH):
        effects.apply_batch(batch_id, client=r)


def test_an_integer_too_long_for_python_costs_only_its_own_event(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis
) -> None:
    """Before, the whole request was refused as "body is not valid JSON" (the neighbours
    lost, the provider retrying it for a day); now the long number is read as a number
    too large for any field: an unreadable timestamp is noted, as others are."""
    metas = draft_campaign(redis_client, "c-long-int", ["a@example.com", "b@example.com"])
    generic = (
        f'[{{"type": "delivered", "email": "a@example.com", "meta": "{metas[0]}", '
        f'"timestamp": {LONG_INTEGER}}}, '
        f'{{"type": "hard_bounce", "email": "b@example.com", "meta": "{metas[1]}", '
        f'"description": "550 no such user", "x-provider-id": {LONG_INTEGER}}}]'
    ).encode()
    sendgrid = (
        f'[{{"event": "click", "email": "a@example.com", "url": "https://x.example/",'
        f' "clevertap_meta": "{metas[0]}", "timestamp": 1795426000, "asm_group_id": '
        f"{LONG_INTEGER}}}]"
    ).encode()

    answers = [
        post(api, paths["gen"], generic),
        post(api, paths["web"], generic),
        post(api, paths["sg"], sendgrid),
    ]

    success = {"status": "success", "message": "Callback processed successfully"}
    assert [(a.status_code, a.json()) for a in answers] == [
        (200, success),
        (200, {"TOTAL_EVENTS": 2, "PROCESSED_EVENTS": 2, "UNPROCESSED_EVENTS": []}),
        (200, success),
    ]
    apply_inbox(redis_client)
    assert inbox_empty(redis_client)
    counters = campaign_reads.get_counters("c-long-int", redis_client)
    assert (counters["delivered"], counters["hard_bounced"], counters["clicked"]) == (1, 1, 1)
    assert redis_client.hexists(store.SUPPRESSIONS_HASH, "b@example.com")
    assert [e["email"] for e in callback_entries(redis_client)].count("b@example.com") == 4


def test_an_ses_message_with_a_long_integer_is_still_read() -> None:
    """The SES payload inside a verified SNS envelope is read the same way: before, its
    every recipient was lost with "SNS Message is not SES JSON"."""
    message = (
        '{"notificationType": "Bounce", "mail": {"messageId": "m", "destination": '
        '["a@example.com"]}, "bounce": {"bounceType": "Permanent", "feedbackId": '
        f'{LONG_INTEGER}, "bouncedRecipients": [{{"emailAddress": "a@example.com"}}]}}}}'
    )

    result = parse_ses_message(message, message_id="sns-1")

    assert [(e.email, e.type) for e in result.events] == [("a@example.com", EventType.HARD_BOUNCE)]
