"""The generic callback format of the smtp, gmail and http kinds (seeds, DESIGN §6)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from providers.callbacks import (
    TOO_MANY_EVENTS,
    CallbackEvent,
    CallbackRejected,
    CallbackResult,
    EventType,
    parse_generic,
)

DATA = Path(__file__).parent / "data" / "callbacks"
# The Generic HTTP seed's "Sample Callback Request", verbatim (its comments removed).
SEED_NESTED = json.loads((DATA / "generic-seed-nested.json").read_text())
META = "user1@example.com|1568798080|1730714617|20241104|0|wzrk_default|-17005904|"


def body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def flat(**fields: Any) -> dict[str, Any]:
    event = {
        "version": "v2",
        "event": "failed",
        "type": "hard_bounce",
        "email": "user1@example.com",
    }
    event.update(meta=META, description="Hard bounce detected")
    event.update(fields)
    return event


def only_event(result: CallbackResult) -> CallbackEvent:
    assert result.total == 1 and result.failed == 0, result.errors
    return result.events[0]


def test_seed_nested_example_gives_five_events_success_first() -> None:
    result = parse_generic(body(SEED_NESTED))

    assert result.total == 5 and result.processed == 5 and result.failed == 0
    summary = [
        (i.index, i.event.type, i.event.email, i.event.description) for i in result.items if i.event
    ]
    assert summary == [
        (0, EventType.DELIVERED, "user@example.com", "Delivered"),
        (1, EventType.UNSUBSCRIBED, "user1@example.com", "User Unsubscribed"),
        (2, EventType.HARD_BOUNCE, "user3@example.com", "Hard bounce detected"),
        (3, EventType.SOFT_BOUNCE, "user5@example.com", "Recipient Inbox Full"),
        (4, EventType.SPAM, "user4@example.com", "Marked as spam"),
    ]
    hard = result.events[2]
    assert hard.campaign_id == "1730799638"
    assert hard.meta_fields is not None and hard.meta_fields.seq == -17005910
    assert hard.source == "generic" and hard.raw == SEED_NESTED["events"]["failed"][1]


def test_meta_for_another_recipient_is_kept_with_a_note() -> None:
    # The seed's soft bounce is for user5 but its meta names "usert5": attribute, but say so.
    soft = parse_generic(body(SEED_NESTED)).events[3]

    assert soft.email == "user5@example.com"
    assert soft.meta_fields is not None and soft.meta_fields.email == "usert5@example.com"
    assert any("differs from event email" in note for note in soft.notes)


def test_seed_flat_event() -> None:
    event = only_event(parse_generic(body(flat())))

    assert event.type is EventType.HARD_BOUNCE
    assert event.provider_type == "hard_bounce"
    assert event.meta == META and event.campaign_id == "1730714617"
    assert event.description == "Hard bounce detected"
    assert event.timestamp is None and event.notes == ()


def test_array_of_flat_events_version_optional() -> None:
    events = [
        {"type": "delivered", "email": "a@example.com", "meta": META, "timestamp": 1425744000},
        {"type": "clicked", "email": "b@example.com", "meta": META, "url": "https://x.example/a"},
    ]

    result = parse_generic(body(events))

    assert [e.type for e in result.events] == [EventType.DELIVERED, EventType.CLICKED]
    assert result.events[0].timestamp == datetime(2015, 3, 7, 16, 0, tzinfo=UTC)
    assert result.events[1].url == "https://x.example/a"
    assert result.events[1].description == "Link clicked"


def test_legacy_gmail_form() -> None:
    soft = {
        "event": "softbounce",
        "data": [
            {"e": "a@Example.com", "ts": 1435322805},
            {"e": "b@example.com", "ts": 1435322805},
        ],
    }
    hard = {"event": "hardbounce", "data": [{"e": "c@example.com", "ts": 1435322805}]}

    soft_result = parse_generic(body(soft))
    hard_result = parse_generic(body(hard))

    assert [(e.type, e.email) for e in soft_result.events] == [
        (EventType.SOFT_BOUNCE, "a@example.com"),
        (EventType.SOFT_BOUNCE, "b@example.com"),
    ]
    event = only_event(hard_result)
    assert event.type is EventType.HARD_BOUNCE and event.provider_type == "hardbounce"
    assert event.timestamp == datetime(2015, 6, 26, 12, 46, 45, tzinfo=UTC)
    assert event.meta == "" and event.meta_fields is None


def test_legacy_with_unknown_event_is_rejected() -> None:
    with pytest.raises(CallbackRejected, match="hardbounce or softbounce") as info:
        parse_generic(body({"event": "bounce", "data": [{"e": "a@example.com"}]}))
    assert info.value.status == 400


def test_unknown_extra_keys_are_ignored() -> None:
    event = only_event(parse_generic(body(flat(provider="acme", extra={"nested": [1, 2]}))))

    assert event.type is EventType.HARD_BOUNCE
    assert event.raw["provider"] == "acme"


def test_one_bad_event_is_reported_by_index_and_neighbours_parse() -> None:
    good = {"type": "delivered", "email": "ok@example.com", "meta": META}
    payload = {
        "version": "v2",
        "events": {
            "success": [good, {"type": "delivered", "meta": META}],
            "failed": [
                {"type": "bounced", "email": "x@example.com", "meta": META},
                {"type": "spam", "email": "y@example.com", "meta": "not|a|meta"},
                "not an object",
                {"type": "spam", "email": "no-at-sign", "meta": META},
                {"type": "spam", "email": "y@example.com"},
                {**good, "type": "unsubscribed"},
            ],
        },
    }

    result = parse_generic(body(payload))

    assert result.total == 8 and result.processed == 2 and result.failed == 6
    errors = {item.index: item.error for item in result.errors}
    assert errors[1] == "Mandatory parameter missing: email"
    assert errors[2].startswith("Unknown type 'bounced'")
    assert errors[3].startswith("invalid meta")
    assert "JSON object" in errors[4]
    assert errors[5].startswith("Invalid email format")
    assert errors[6] == "Mandatory parameter missing: meta"
    assert [(i.index, i.event.type) for i in result.items if i.event] == [
        (0, EventType.DELIVERED),
        (7, EventType.UNSUBSCRIBED),
    ]


def test_a_bad_flat_event_is_an_index_error() -> None:
    result = parse_generic(body(flat(type="opened")))

    assert result.total == 1 and result.processed == 0
    assert result.errors[0].index == 0 and "Unknown type 'opened'" in result.errors[0].error


@pytest.mark.parametrize(
    "make",
    [
        lambda n: [flat() for _ in range(n)],
        lambda n: {
            "version": "v2",
            "events": {"success": [flat()] * (n // 2), "failed": [flat()] * (n - n // 2)},
        },
        lambda n: {"event": "hardbounce", "data": [{"e": "a@example.com"}] * n},
    ],
    ids=["array", "nested", "legacy"],
)
def test_more_than_1000_events_are_rejected(make: Any) -> None:
    assert parse_generic(body(make(1000))).total == 1000

    with pytest.raises(CallbackRejected) as info:
        parse_generic(body(make(1001)))

    assert info.value.message == TOO_MANY_EVENTS == "More than allowed events were sent"
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe{", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b'"just a string"', "expected a JSON object or array"),
        (body({"type": "delivered", "email": "a@example.com", "meta": META}), "missing: version"),
        (body(flat(version="v1")), "unsupported version 'v1'"),
        (body({"version": "v2", "events": {"bounced": []}}), "success and/or failed"),
        (body({"version": "v2", "events": {"failed": {"a": 1}}}), "are lists"),
        (body({"event": "hardbounce", "data": {"e": "a@example.com"}}), "data must be a list"),
    ],
)
def test_requests_malformed_as_a_whole_are_rejected(raw: bytes, message: str) -> None:
    with pytest.raises(CallbackRejected) as info:
        parse_generic(raw)

    assert message in info.value.message
    assert info.value.status == 400


def test_email_domain_is_lower_cased_and_type_case_tolerated() -> None:
    event = only_event(
        parse_generic(body(flat(email=" User.Name@EXAMPLE.Com ", type="Soft_Bounce")))
    )

    assert event.email == "User.Name@example.com"
    assert event.type is EventType.SOFT_BOUNCE
    assert event.same_email("user.name@example.com")


def test_missing_description_gets_the_default_of_its_type() -> None:
    event = only_event(parse_generic(body(flat(type="unsubscribed", description=None))))

    assert event.description == "User unsubscribed"


def test_timestamps_iso_and_epoch_milliseconds_bad_one_noted() -> None:
    iso = only_event(parse_generic(body(flat(timestamp="2024-11-04T10:03:39Z"))))
    millis = only_event(parse_generic(body(flat(timestamp=1730714619000))))
    bad = only_event(parse_generic(body(flat(timestamp="yesterday"))))

    assert iso.timestamp == datetime(2024, 11, 4, 10, 3, 39, tzinfo=UTC)
    assert millis.timestamp == datetime(2024, 11, 4, 10, 3, 39, tzinfo=UTC)
    assert bad.timestamp is None and bad.notes and "timestamp ignored" in bad.notes[0]


def test_type_in_the_unexpected_group_is_noted_not_refused() -> None:
    payload = {
        "version": "v2",
        "events": {"failed": [{"type": "delivered", "email": "user1@example.com", "meta": META}]},
    }

    event = only_event(parse_generic(body(payload)))

    assert event.type is EventType.DELIVERED
    assert event.notes == ("type delivered sent as 'failed'",)


def test_redelivery_has_the_same_dedupe_key_other_events_do_not() -> None:
    first = only_event(parse_generic(body(flat(timestamp=1730714619))))
    again = only_event(parse_generic(body(flat(timestamp=1730714619, extra="ignored"))))
    other_type = only_event(parse_generic(body(flat(timestamp=1730714619, type="soft_bounce"))))
    other_time = only_event(parse_generic(body(flat(timestamp=1730714620))))
    other_case = only_event(
        parse_generic(body(flat(timestamp=1730714619, email="USER1@example.com")))
    )

    assert first.dedupe_key() == again.dedupe_key()
    assert first.dedupe_key().startswith("generic:sha256:")
    assert first.dedupe_key() == other_case.dedupe_key()
    assert len({first.dedupe_key(), other_type.dedupe_key(), other_time.dedupe_key()}) == 3


def test_event_is_frozen() -> None:
    event = only_event(parse_generic(body(flat())))

    with pytest.raises(ValueError):
        event.email = "other@example.com"


def test_a_meta_a_relay_re_encoded_as_encoded_words_is_decoded() -> None:
    """A bounce processor that hands on the header as a relay re-encoded it (RFC 2047,
    reference §1.4): the event lands on its message (it was an index error). A meta that
    parses as it is stays as it is, ``=?`` in its text or not."""
    from email.header import Header

    encoded = Header(META, "utf-8").encode()
    assert encoded.startswith("=?utf-8?") and META not in encoded
    legacy = {"event": "hardbounce", "data": [{"e": "user1@example.com", "meta": encoded}]}
    for payload in (flat(meta=encoded), legacy):
        event = only_event(parse_generic(body(payload)))
        assert event.meta == META and event.meta_fields is not None
        assert event.meta_fields.campaign_id == "1730714617"
    literal = META.replace("wzrk_default", "=?x?=")
    event = only_event(parse_generic(body(flat(meta=literal))))
    assert event.meta == literal and event.meta_fields is not None
    assert event.meta_fields.category == "=?x?="
