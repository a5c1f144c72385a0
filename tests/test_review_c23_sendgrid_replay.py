"""Review C23: a signed SendGrid post is accepted no longer than its events are remembered.

A signed post was accepted for DISPATCH_SENDGRID_SIGNATURE_TOLERANCE_SECONDS (72 h) after
its timestamp, its events recognised as redeliveries for DISPATCH_CALLBACK_DEDUPE_TTL_SECONDS
after they were applied. With the dedupe TTL lowered to a day (SendGrid retries for up
to 24 h), settings that started, a captured post replayed 30 h after it was signed
passed the signature check and was applied again: an unsubscribe suppressed again the
address taken off the list by hand, and a second ``Channel Unsubscribed`` was published.
The tolerance may now not exceed the dedupe TTL (as DISPATCH_SNS_MAX_AGE_SECONDS); at
most equal, a post is received after it is signed, so a replay within the window is
recognised.
"""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest
import redis
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dispatch import store, suppressions
from dispatch.settings import SettingsError, get_settings
from tests.callback_support import callback_entries, save_providers
from tests.test_review_o3_sns_age import apply_inbox

DAY = 24 * 3600


def test_a_tolerance_longer_than_the_dedupe_ttl_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DISPATCH_CALLBACK_DEDUPE_TTL_SECONDS", str(DAY))
    # (given: left unset, it follows a shorter TTL, review H23)
    monkeypatch.setenv("DISPATCH_SENDGRID_SIGNATURE_TOLERANCE_SECONDS", str(3 * DAY))
    get_settings.cache_clear()

    with pytest.raises(SettingsError) as caught:
        get_settings()

    assert str(caught.value) == (
        "DISPATCH_SENDGRID_SIGNATURE_TOLERANCE_SECONDS='259200': must not be more than "
        "DISPATCH_CALLBACK_DEDUPE_TTL_SECONDS (86400): a signed SendGrid post replayed "
        "after that would be applied again"
    )
    for tolerance in ("0", str(DAY)):  # no bound, or the TTL itself: taken
        monkeypatch.setenv("DISPATCH_SENDGRID_SIGNATURE_TOLERANCE_SECONDS", tolerance)
        get_settings.cache_clear()
        assert get_settings().sendgrid_signature_tolerance_seconds == int(tolerance)


def test_a_replay_within_an_allowed_tolerance_is_recognised(
    api: httpx.Client, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCH_CALLBACK_DEDUPE_TTL_SECONDS", str(DAY))
    monkeypatch.setenv("DISPATCH_SENDGRID_SIGNATURE_TOLERANCE_SECONDS", str(DAY))
    get_settings.cache_clear()
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    sg = {"kind": "sendgrid", "webhook_public_key": base64.b64encode(der).decode()}
    path = save_providers(redis_client, sg=sg)["sg"]
    signed_at = str(int(time.time()) - DAY + 600)
    body = json.dumps(
        [{"event": "unsubscribe", "email": "u@example.com", "timestamp": int(signed_at) - 5}]
    ).encode()
    signature = key.sign(signed_at.encode() + body, ec.ECDSA(hashes.SHA256()))
    headers = {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": signed_at,
    }

    first = api.post(path, content=body, headers=headers)
    apply_inbox(redis_client)
    redis_client.hdel(store.SUPPRESSIONS_HASH, "u@example.com")  # lifted by hand
    replay = api.post(path, content=body, headers=headers)
    apply_inbox(redis_client)

    assert (first.status_code, replay.status_code) == (200, 200)
    assert [e["event"] for e in callback_entries(redis_client)] == ["Channel Unsubscribed"]
    assert suppressions.get("u@example.com", client=redis_client) is None
