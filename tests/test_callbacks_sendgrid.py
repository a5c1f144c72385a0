"""SendGrid Event Webhook: event mapping, content dedupe and the Signed Event Webhook."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from providers.callbacks import (
    TOO_MANY_EVENTS,
    CallbackRejected,
    CallbackResult,
    EventType,
    load_public_key,
    parse_sendgrid,
    verify_signature,
)
from providers.callbacks.sendgrid import SIGNATURE_HEADER, TIMESTAMP_HEADER

DATA = Path(__file__).parent / "data" / "callbacks"
VECTOR: dict[str, Any] = json.loads((DATA / "sendgrid-signed-webhook-vector.json").read_text())
VECTOR_BODY: bytes = VECTOR["raw_body"].encode()
VECTOR_TIME = datetime.fromtimestamp(int(VECTOR["headers"][TIMESTAMP_HEADER]), tz=UTC)
META = "user2@example.com|1568798080|1730714617|20241104|0|wzrk_default|-17005904|"


class Key:
    """A P-256 key signing webhook posts as SendGrid does (reference §2.5)."""

    def __init__(self, curve: ec.EllipticCurve | None = None) -> None:
        self.private = ec.generate_private_key(curve or ec.SECP256R1())
        der = self.private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public = base64.b64encode(der).decode()

    def headers(self, body: bytes, timestamp: int) -> dict[str, str]:
        signature = self.private.sign(str(timestamp).encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            SIGNATURE_HEADER: base64.b64encode(signature).decode(),
            TIMESTAMP_HEADER: str(timestamp),
        }


def event(**fields: Any) -> dict[str, Any]:
    item = {
        "email": "user2@example.com",
        "timestamp": 1730714682,
        "event": "delivered",
        "sg_event_id": "_ecC4EnIa2PpK5IrlJWjyg",
        "sg_message_id": "Vb3nT6qLQfK1hZ9xW2cRyA.filterdrecv-1",
        "response": "250 2.0.0 OK",
        "clevertap_meta": META,
        "campaign_id": "1568798080",
    }
    item.update(fields)
    return {k: v for k, v in item.items() if v is not None}


def parse(events: list[Any]) -> CallbackResult:
    return parse_sendgrid(json.dumps(events).encode())


def test_sample_batch_maps_every_event() -> None:
    raw = json.loads((DATA / "sendgrid-events.json").read_text())

    result = parse_sendgrid((DATA / "sendgrid-events.json").read_bytes())

    assert result.total == 12 and result.failed == 0
    assert [(e.provider_type, e.type, e.email) for e in result.events] == [
        ("processed", EventType.OTHER, "user2@example.com"),
        ("deferred", EventType.OTHER, "user2@example.com"),
        ("delivered", EventType.DELIVERED, "user2@example.com"),
        ("bounce", EventType.HARD_BOUNCE, "user1@example.com"),
        ("bounce", EventType.SOFT_BOUNCE, "user4@example.com"),
        ("dropped", EventType.UNSUBSCRIBED, "user5@example.com"),
        ("open", EventType.OTHER, "user2@example.com"),
        ("click", EventType.CLICKED, "user2@example.com"),
        ("spamreport", EventType.SPAM, "user3@example.com"),
        ("unsubscribe", EventType.UNSUBSCRIBED, "user3@example.com"),
        ("group_unsubscribe", EventType.UNSUBSCRIBED, "user2@example.com"),
        ("group_resubscribe", EventType.OTHER, "user2@example.com"),
    ]
    for parsed, item in zip(result.events, raw, strict=True):
        assert parsed.raw == item and parsed.source == "sendgrid"
        assert parsed.meta == item["clevertap_meta"] and parsed.campaign_id == "1568798080"
        assert parsed.meta_fields is not None and parsed.meta_fields.email == parsed.email
        assert parsed.timestamp == datetime.fromtimestamp(item["timestamp"], tz=UTC)
        assert parsed.provider_event_id == item["sg_event_id"] and not parsed.id_is_stable
        assert parsed.provider_message_id == item["sg_message_id"]
        assert parsed.notes == ()
    hard, soft, dropped, click = (result.events[i] for i in (3, 4, 5, 7))
    assert hard.description.startswith("550 5.1.1 The email account")
    assert soft.description.startswith("554 5.7.1 Service unavailable")
    assert dropped.description == "Bounced Address"
    assert (
        click.url == "https://shop.example.com/nov-picks?utm_source=email&utm_campaign=1568798080"
    )
    assert result.events[10].description == "group_unsubscribe (asm_group_id 4242)"
    assert result.events[2].description.startswith("250 2.0.0 OK")


def test_bounce_without_type_is_hard_unknown_type_is_soft() -> None:
    result = parse([event(event="bounce", type=None), event(event="bounce", type="expired")])

    assert [e.type for e in result.events] == [EventType.HARD_BOUNCE, EventType.SOFT_BOUNCE]


def test_unknown_event_names_go_to_other() -> None:
    result = parse([event(event="account_status_change")])

    assert result.events[0].type is EventType.OTHER
    assert result.events[0].provider_type == "account_status_change"


def test_events_without_unique_args_keep_email_and_message_id() -> None:
    # Return-Path bounces can arrive without unique args (reference §2.3).
    bare = parse([event(event="bounce", type="bounce", clevertap_meta=None, campaign_id=None)])
    campaign_only = parse([event(clevertap_meta=None, campaign_id=77)])
    from_meta = parse([event(campaign_id=None)])

    only = bare.events[0]
    assert (only.type, only.email, only.meta, only.campaign_id) == (
        EventType.HARD_BOUNCE,
        "user2@example.com",
        "",
        "",
    )
    assert only.provider_message_id == "Vb3nT6qLQfK1hZ9xW2cRyA.filterdrecv-1"
    assert campaign_only.events[0].campaign_id == "77"
    assert from_meta.events[0].campaign_id == "1730714617"


def test_unparseable_meta_is_noted_and_the_event_kept() -> None:
    parsed = parse([event(clevertap_meta="opaque-id")]).events[0]

    assert parsed.type is EventType.DELIVERED and parsed.meta == "opaque-id"
    assert parsed.meta_fields is None and parsed.notes[0].startswith("invalid meta")


def test_one_bad_event_is_reported_by_index_and_neighbours_parse() -> None:
    result = parse(
        [
            event(),
            event(email=None),
            "not an object",
            event(event=None),
            event(email="no at sign"),
            event(email={"x": 1}),
            event(event="click", url="https://x.example", email="Someone@EXAMPLE.com"),
        ]
    )

    assert (result.total, result.processed, result.failed) == (7, 2, 5)
    assert {i.index: i.error for i in result.errors} == {
        1: "Mandatory parameter missing: email",
        2: "invalid payload: an event must be a JSON object",
        3: "Mandatory parameter missing: event",
        4: "Invalid email format: 'no at sign'",
        5: "email must be a string",
    }
    assert (
        result.events[1].email == "Someone@example.com"
        and result.events[1].url == "https://x.example"
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "not valid JSON"),
        (json.dumps({"event": "delivered"}).encode(), "JSON array"),
    ],
)
def test_requests_malformed_as_a_whole_are_rejected(raw: bytes, message: str) -> None:
    with pytest.raises(CallbackRejected, match=message) as info:
        parse_sendgrid(raw)
    assert info.value.status == 400


def test_event_cap_refuses_abuse_but_not_a_full_sendgrid_post() -> None:
    # A 768 KB post can hold more than 1000 small events: those must be accepted.
    assert parse([event()] * 1500).total == 1500

    with pytest.raises(CallbackRejected) as info:
        parse([event()] * 10_001)
    with pytest.raises(CallbackRejected) as capped:
        parse_sendgrid(json.dumps([event()] * 1001).encode(), max_events=1000)

    assert info.value.message == capped.value.message == TOO_MANY_EVENTS


def test_redelivery_with_a_new_sg_event_id_has_the_same_dedupe_key() -> None:
    first, again, later, other_reason = parse(
        [
            event(event="bounce", type="bounce", reason="550 no such user"),
            event(event="bounce", type="bounce", reason="550 no such user", sg_event_id="NEW-ID"),
            event(event="bounce", type="bounce", reason="550 no such user", timestamp=1730714699),
            event(event="bounce", type="blocked", reason="550 no such user"),
        ]
    ).events

    assert first.dedupe_key() == again.dedupe_key()
    assert first.dedupe_key().startswith("sendgrid:sha256:")
    assert len({first.dedupe_key(), later.dedupe_key(), other_reason.dedupe_key()}) == 3


# --- Signed Event Webhook ------------------------------------------------------------------


def test_reference_vector_verifies() -> None:
    result = parse_sendgrid(
        VECTOR_BODY, headers=VECTOR["headers"], public_key=VECTOR["public_key"], tolerance=None
    )
    near = parse_sendgrid(
        VECTOR_BODY,
        headers=VECTOR["headers"],
        public_key=VECTOR["public_key"],
        now=VECTOR_TIME + timedelta(hours=25),
    )

    assert VECTOR["expect_valid"] is True
    assert [e.provider_type for e in result.events] == ["processed", "deferred", "delivered"]
    assert near.total == 3


def _tampered(what: str) -> tuple[bytes, dict[str, str]]:
    headers = dict(VECTOR["headers"])
    body = VECTOR_BODY
    if what == "one byte of raw_body changed":
        index = body.index(b"user2")
        body = body[:index] + b"U" + body[index + 1 :]
    elif what == "timestamp header changed by +1":
        headers[TIMESTAMP_HEADER] = str(int(headers[TIMESTAMP_HEADER]) + 1)
    elif what.startswith("body re-serialised"):
        body = json.dumps(json.loads(body)).encode()
    else:
        raise AssertionError(f"unknown tamper case {what!r}")
    return body, headers


@pytest.mark.parametrize("case", VECTOR["tamper_cases"], ids=lambda case: case["what"])
def test_reference_tamper_cases_fail(case: dict[str, Any]) -> None:
    body, headers = _tampered(case["what"])
    assert body != VECTOR_BODY or headers != VECTOR["headers"]

    with pytest.raises(CallbackRejected, match="signature does not verify") as info:
        parse_sendgrid(body, headers=headers, public_key=VECTOR["public_key"], tolerance=None)

    assert case["expect_valid"] is False and info.value.status == 400


def test_own_key_signs_and_verifies_with_lower_case_headers() -> None:
    key = Key()
    body = json.dumps([event()]).encode() + b"\r\n"
    now = datetime(2025, 1, 1, tzinfo=UTC)
    headers = {k.lower(): v for k, v in key.headers(body, int(now.timestamp())).items()}

    result = parse_sendgrid(body, headers=headers, public_key=key.public, now=now)

    assert [e.type for e in result.events] == [EventType.DELIVERED]


def test_another_key_does_not_verify() -> None:
    body = json.dumps([event()]).encode()
    headers = Key().headers(body, 1730714687)

    with pytest.raises(CallbackRejected, match="does not verify"):
        parse_sendgrid(body, headers=headers, public_key=VECTOR["public_key"], tolerance=None)


def test_timestamp_tolerance() -> None:
    key = Key()
    body = json.dumps([event()]).encode()
    signed_at = datetime(2025, 1, 1, tzinfo=UTC)
    headers = key.headers(body, int(signed_at.timestamp()))

    def check(now: datetime, tolerance: timedelta | None) -> None:
        parse_sendgrid(body, headers=headers, public_key=key.public, now=now, tolerance=tolerance)

    check(signed_at + timedelta(hours=30), timedelta(hours=72))  # SendGrid's 24 h of retries
    check(signed_at + timedelta(days=400), None)
    for now in (signed_at + timedelta(hours=73), signed_at - timedelta(hours=73)):
        with pytest.raises(CallbackRejected, match="too far from now"):
            check(now, timedelta(hours=72))
    with pytest.raises(CallbackRejected, match="too far from now"):
        check(signed_at + timedelta(minutes=6), timedelta(minutes=5))


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing"),
        ({TIMESTAMP_HEADER: "1730714687"}, "missing"),
        ({SIGNATURE_HEADER: VECTOR["headers"][SIGNATURE_HEADER]}, "missing"),
        ({**VECTOR["headers"], TIMESTAMP_HEADER: "17307146.87"}, "not epoch seconds"),
        ({**VECTOR["headers"], TIMESTAMP_HEADER: " 1730714687"}, "not epoch seconds"),
        ({**VECTOR["headers"], SIGNATURE_HEADER: "%%%"}, "not base64"),
        (
            {**VECTOR["headers"], SIGNATURE_HEADER: base64.b64encode(b"junk").decode()},
            "does not verify",
        ),
    ],
)
def test_bad_signature_headers_are_rejected(headers: dict[str, str], message: str) -> None:
    with pytest.raises(CallbackRejected, match=message) as info:
        parse_sendgrid(
            VECTOR_BODY, headers=headers, public_key=VECTOR["public_key"], tolerance=None
        )
    assert info.value.status == 400


def test_without_a_public_key_no_signature_is_needed() -> None:
    assert parse_sendgrid(VECTOR_BODY).total == 3


def test_verify_signature_takes_str_body() -> None:
    verify_signature(
        VECTOR["raw_body"],
        public_key=VECTOR["public_key"],
        signature=VECTOR["headers"][SIGNATURE_HEADER],
        timestamp=VECTOR["headers"][TIMESTAMP_HEADER],
        tolerance=None,
    )


def test_public_key_forms() -> None:
    pem = load_public_key(VECTOR["public_key"]).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    assert (
        load_public_key(pem.decode()).public_numbers()
        == load_public_key(VECTOR["public_key"]).public_numbers()
    )
    with pytest.raises(ValueError, match="not an ECDSA P-256 key"):
        load_public_key(Key(ec.SECP384R1()).public)
    with pytest.raises(ValueError, match="not a public key"):
        load_public_key("not base64!")


def test_unusable_configured_key_is_a_server_error() -> None:
    with pytest.raises(CallbackRejected, match="provider misconfigured") as info:
        parse_sendgrid(
            VECTOR_BODY, headers=VECTOR["headers"], public_key="bm90IGEga2V5", tolerance=None
        )

    assert info.value.status == 500
