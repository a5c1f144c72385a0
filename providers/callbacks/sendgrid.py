"""Parse SendGrid Event Webhook posts and check their Signed Event Webhook signature.

The body is a JSON array of events (reference §2.2); our unique args come back flattened
into each event as ``clevertap_meta`` and ``campaign_id`` (§2.3). With a public key
configured, the ECDSA P-256 / SHA-256 signature over timestamp + raw body is checked
(§2.5). SendGrid redelivers events, sometimes with a new ``sg_event_id``, so events are
deduplicated on their content (PITFALLS).
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from providers.callbacks.events import (
    CallbackEvent,
    CallbackRejected,
    CallbackResult,
    EventType,
    InvalidEvent,
    check_count,
    collect,
    get_str,
    header,
    load_json,
    normalize_email,
    optional_str,
    read_meta,
    timestamp_or_note,
)

SOURCE = "sendgrid"

# SendGrid ``event`` → event type (DESIGN §6). ``bounce`` is decided by BOUNCE_TYPES;
# processed, deferred, open, group_resubscribe and unknown names go to OTHER.
EVENT_TYPES: dict[str, EventType] = {
    "delivered": EventType.DELIVERED,
    "dropped": EventType.UNSUBSCRIBED,
    "unsubscribe": EventType.UNSUBSCRIBED,
    "group_unsubscribe": EventType.UNSUBSCRIBED,
    "spamreport": EventType.SPAM,
    "click": EventType.CLICKED,
}
# A bounce's ``type``: ``bounce`` is a permanent refusal, ``blocked`` a temporary one.
# Absent means ``bounce`` (older payloads); an unknown value is soft: never suppress on a
# guess.
BOUNCE_TYPES: dict[str, EventType] = {
    "bounce": EventType.HARD_BOUNCE,
    "blocked": EventType.SOFT_BOUNCE,
}
# Our unique args (``X-SMTPAPI`` ``unique_args``), flattened into every event.
META_KEY = "clevertap_meta"
CAMPAIGN_KEY = "campaign_id"

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
# SendGrid retries for up to 24 h and may not re-sign retries with a fresh timestamp
# (reference §2.5): the window must be longer than that.
DEFAULT_SIGNATURE_TOLERANCE = timedelta(hours=72)
# A post is at most 768 KB (reference §2.1), which can hold more than 1000 small events;
# refusing a real batch would make SendGrid retry it for a day, so the cap only stops abuse.
MAX_SENDGRID_EVENTS = 10_000


def parse_sendgrid(
    body: bytes | str,
    *,
    headers: Mapping[str, str] | None = None,
    public_key: str | None = None,
    tolerance: timedelta | None = DEFAULT_SIGNATURE_TOLERANCE,
    now: datetime | None = None,
    max_events: int | None = MAX_SENDGRID_EVENTS,
) -> CallbackResult:
    """Parse a SendGrid Event Webhook body, checking its signature when a key is given.

    ``public_key`` is the provider's ``webhook_public_key`` (base64 DER); ``headers``
    must then hold the two ``X-Twilio-Email-Event-Webhook-*`` headers. Raises
    :class:`CallbackRejected`: 400 for a bad signature, a body that is not a JSON array
    or one with more than ``max_events`` events; 500 when ``public_key`` is unusable.
    """
    if public_key:
        verify_signature(
            body,
            public_key=public_key,
            signature=header(headers, SIGNATURE_HEADER),
            timestamp=header(headers, TIMESTAMP_HEADER),
            tolerance=tolerance,
            now=now,
        )
    payload = load_json(body)
    if not isinstance(payload, list):
        raise CallbackRejected("invalid payload: expected a JSON array of events")
    check_count(len(payload), max_events)
    return CallbackResult(items=collect(payload, _build))


def _build(raw: Any) -> CallbackEvent:
    """One normalized event from one SendGrid event; raises :class:`InvalidEvent`.

    Only ``event`` and (for events we act on) ``email`` are needed: any other field that
    is not a scalar is noted and read as absent, so that an unsubscribe with an odd
    ``asm_group_id`` or ``reason`` still unsubscribes.
    """
    if not isinstance(raw, dict):
        raise InvalidEvent("invalid payload: an event must be a JSON object")
    name = get_str(raw, "event", required=True)
    notes: list[str] = []
    if name == "bounce":
        # Absent is a hard bounce; a type that is not text is unknown, so soft.
        bounce = optional_str(raw, "type", notes) if raw.get("type") not in (None, "") else "bounce"
        event_type = BOUNCE_TYPES.get(bounce, EventType.SOFT_BOUNCE)
    else:
        event_type = EVENT_TYPES.get(name, EventType.OTHER)
    address = get_str(raw, "email", required=event_type is not EventType.OTHER)
    # Account events (account_status_change) name no recipient; we ignore them anyway.
    email = normalize_email(address) if address else ""
    meta = optional_str(raw, META_KEY, notes)
    meta_fields = read_meta(meta, email, notes, strict=False)
    campaign_id = optional_str(raw, CAMPAIGN_KEY, notes)
    return CallbackEvent(
        source=SOURCE,
        type=event_type,
        provider_type=name,
        email=email,
        meta=meta,
        meta_fields=meta_fields,
        campaign_id=campaign_id or (meta_fields.campaign_id if meta_fields else ""),
        description=_description(name, raw, notes),
        timestamp=timestamp_or_note(raw.get("timestamp"), notes),
        provider_event_id=optional_str(raw, "sg_event_id", notes),
        id_is_stable=False,
        # sg_message_id may be missing from an asynchronous bounce (reference §2.2); its
        # smtp-id, "<id@host>", still names the message.
        provider_message_id=(
            optional_str(raw, "sg_message_id", notes) or optional_str(raw, "smtp-id", notes)
        ),
        url=optional_str(raw, "url", notes) if event_type is EventType.CLICKED else "",
        notes=tuple(notes),
        raw=raw,
    )


def _description(name: str, raw: Mapping[str, Any], notes: list[str]) -> str:
    """The server's or SendGrid's reason, the delivery reply, else the event name."""
    text = optional_str(raw, "reason", notes) or optional_str(raw, "response", notes)
    if text:
        return text
    if name == "click":
        return optional_str(raw, "url", []) or name
    group = optional_str(raw, "asm_group_id", notes)
    return f"{name} (asm_group_id {group})" if group else name


@functools.lru_cache(maxsize=16)
def load_public_key(key: str) -> ec.EllipticCurvePublicKey:
    """Load a Signed Event Webhook key: base64 DER as SendGrid shows it, or PEM.

    Raises ``ValueError`` when it is not a P-256 public key (check it when the provider
    configuration is saved).
    """
    text = key.strip()
    try:
        if text.startswith("-----BEGIN"):
            loaded = serialization.load_pem_public_key(text.encode())
        else:
            loaded = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, UnsupportedAlgorithm) as exc:
        raise ValueError(f"webhook_public_key is not a public key: {exc}") from exc
    if not isinstance(loaded, ec.EllipticCurvePublicKey) or not isinstance(
        loaded.curve, ec.SECP256R1
    ):
        raise ValueError("webhook_public_key is not an ECDSA P-256 key")
    return loaded


def verify_signature(
    body: bytes | str,
    *,
    public_key: str,
    signature: str | None,
    timestamp: str | None,
    tolerance: timedelta | None = DEFAULT_SIGNATURE_TOLERANCE,
    now: datetime | None = None,
) -> None:
    """Check the Signed Event Webhook signature over ``timestamp`` + the raw ``body``.

    ``signature`` and ``timestamp`` are the header values as received; ``tolerance``
    bounds the distance between the timestamp and ``now`` (None: no bound). Raises
    :class:`CallbackRejected`: 400 when headers are missing, the timestamp is out of
    bounds or the signature does not verify; 500 when ``public_key`` is unusable.
    """
    if not signature or not timestamp:
        raise CallbackRejected(
            f"invalid payload: missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER} header"
        )
    if not (timestamp.isascii() and timestamp.isdigit()):
        raise CallbackRejected(f"invalid payload: {TIMESTAMP_HEADER} is not epoch seconds")
    if tolerance is not None:
        current = now or datetime.now(UTC)
        try:
            signed_at = datetime.fromtimestamp(int(timestamp), tz=UTC)
        except (OverflowError, OSError, ValueError):
            signed_at = datetime.min.replace(tzinfo=UTC)
        if abs(current - signed_at) > tolerance:
            raise CallbackRejected(f"invalid payload: {TIMESTAMP_HEADER} is too far from now")
    try:
        decoded = base64.b64decode(signature, validate=True)
    except ValueError as exc:  # binascii.Error, or a header with non-ASCII characters
        raise CallbackRejected(f"invalid payload: {SIGNATURE_HEADER} is not base64") from exc
    try:
        key = load_public_key(public_key)
    except ValueError as exc:
        raise CallbackRejected(f"provider misconfigured: {exc}", 500) from exc
    data = body.encode() if isinstance(body, str) else body
    try:
        key.verify(decoded, timestamp.encode() + data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise CallbackRejected("invalid payload: SendGrid signature does not verify") from exc
