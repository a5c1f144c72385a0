"""Upgrading a running installation: data an earlier version wrote into Redis (a saved
provider, failures its workers recorded) is read and acted on by this one as it meant
(README, Operations: Upgrading). The data is written here as the earlier version stored
it, not by running that version."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import redis

from dispatch import lifecycle, provider_store, store
from dispatch.ledger import LedgerWriter, record
from dispatch.models import MessageState
from tests.api_server import ApiServer
from tests.api_support import api_client
from tests.helpers import create_held, run_batches, smtp_provider
from tests.http_sink import HttpSink

CRM_LINK = "https://crm.example/unsubscribe?u=17"


def _saved_before_links(r: redis.Redis, endpoint: str) -> dict[str, Any]:
    """An HTTP provider as versions before $$UnsubscribeURL was a system placeholder saved
    it: the name was a custom one, filled from each recipient's vars, with no preference
    center (a rule refuses that on save now)."""
    message = {
        "to": "$$To", "subject": "$$Subject", "html": "$$HTML", "mid": "$$MessageID",
        "from": "$$FromName <$$FromAddress>", "unsubscribe": "$$UnsubscribeURL",
    }  # fmt: skip
    data = {
        "nickname": "crm-esp", "kind": "http", "method": "POST", "endpoint": endpoint,
        "batch": True, "body": {"msgs": [message]}, "from_name": "Acme",
        "from_address": "news@acme.example", "preference_center": "system",
    }  # fmt: skip
    provider_store.save_provider(data, client=r)
    stored = orjson.loads(r.get(store.provider_key("crm-esp")) or b"")
    stored["preference_center"] = "none"
    r.set(store.provider_key("crm-esp"), orjson.dumps(stored))
    return stored


def test_a_provider_saved_before_a_newer_rule_is_still_read_and_sends_what_it_did(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    with HttpSink() as sink, api_client(api_server) as api:
        stored = _saved_before_links(redis_client, f"{sink.url}/send")
        # Readable: listed, shown (with a warning saying what the name means now), and
        # its ESP's callbacks are taken (they answered 422 / 500: every event retried).
        assert "crm-esp" in api.get("/v1/providers").text
        view = api.get("/v1/providers/crm-esp")
        assert view.status_code == 200, view.text
        assert any("$$UnsubscribeURL" in w for w in view.json()["warnings"]), view.text
        meta = "x@example.com|1|none|20250101|0|default|0|"
        event = {"version": "v2", "type": "delivered", "email": "x@example.com", "meta": meta}
        token = stored[provider_store.CALLBACK_TOKEN_FIELD]
        answer = api.post(f"/v1/callbacks/crm-esp/{token}", json=event)
        assert answer.status_code == 200, answer.text

        # Its campaigns send each recipient's own value, as before; a recipient without
        # one fails alone, as it did (its worker crashed on the configuration instead).
        body = {
            "id": "upgrade-links", "provider": "crm-esp", "subject": "Hi", "html": "<p>Hi</p>",
            "recipients": [
                {"email": "ann@example.com", "vars": {"UnsubscribeURL": CRM_LINK}},
                {"email": "bob@example.com"},
            ],
        }  # fmt: skip
        campaign_id, batches = create_held(redis_client, body)
        run_batches(batches)
        sent = [m for request in sink.requests for m in request.json()["msgs"]]
        assert [(m["to"], m["unsubscribe"]) for m in sent] == [("ann@example.com", CRM_LINK)]
        summary = api.get(f"/v1/campaigns/{campaign_id}").json()
        assert (summary["sent"], summary["failed"]) == (1, 1), summary
        failed = api.get(f"/v1/campaigns/{campaign_id}/messages?status=failed").json()
        assert failed["items"][0]["detail"] == "no value for $$UnsubscribeURL for this recipient"


# What workers of an earlier version recorded for messages this version sends, when they
# ran beside a newer API during a rolling upgrade.
_EARLIER_NON_ASCII = (
    "SMTP invalid email ID",
    "'jörg@example.com': local part is not ASCII; it needs SMTPUTF8 (RFC 6531), "
    "which dispatch does not send",
)
_EARLIER_LINKS = (
    "Invalid message",
    "no value for $$UnsubscribeURL, $$PreferencesURL for this recipient",
)


def test_failures_of_an_earlier_worker_that_this_version_can_send_are_retried(
    redis_client: redis.Redis,
) -> None:
    smtp_provider(redis_client, 9)
    body = {"id": "upgrade-retry", "provider": "local", "subject": "Hi", "html": "<p>Hi</p>",
            "recipients": [{"email": f"u{i}@example.com"} for i in range(4)]}  # fmt: skip
    campaign_id, _ = create_held(redis_client, body)
    failures = {
        0: _EARLIER_NON_ASCII,
        1: _EARLIER_LINKS,
        2: ("Invalid message", "no value for $$UnsubscribeURL, $$coupon for this recipient"),
        3: ("SMTP invalid email ID", "550 5.1.1 no such user"),
    }

    async def put() -> None:
        client = store.async_client()
        writer = LedgerWriter(client, campaign_id)
        for seq, (error_class, detail) in failures.items():
            failed = record(MessageState.FAILED, attempts=1, error_class=error_class, detail=detail)
            await writer.put(seq, failed)
        await client.aclose()

    asyncio.run(put())
    report, _ = lifecycle.retry_failed(campaign_id, client=redis_client, enqueue=lambda c, b: None)
    # (2: a payload placeholder without value is retried since review I23, whoever refused it)
    assert (report.retried, report.skipped_not_retryable) == (3, 1)


def test_retryable_failures_of_earlier_versions() -> None:
    assert lifecycle.is_retryable(*_EARLIER_NON_ASCII)
    assert lifecycle.is_retryable(*_EARLIER_LINKS)
    assert lifecycle.is_retryable(
        "Invalid message", "no value for $$PreferencesURL for this recipient"
    )
    # This version's own refusals stay final.
    detail = "html: line 3: TypeError: must be real number, not str"
    assert not lifecycle.is_retryable("Invalid message", detail)
    assert not lifecycle.is_retryable(
        "SMTP invalid email ID", "'a b@x.com': local part has characters we cannot send to"
    )
