"""Parse Amazon SES notifications delivered through SNS into normalized events.

The SNS envelope is verified first (:mod:`providers.callbacks.sns`); its ``Message`` is
the SES payload (reference §1.4), read by ``eventType`` (event publishing) and then
``notificationType`` (classic notifications). One event per recipient; the meta comes
from the original ``X-CleverTap_META`` header in ``mail.headers``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

from providers.addresses import same_address
from providers.callbacks.events import (
    CallbackEvent,
    CallbackRejected,
    CallbackResult,
    EventType,
    InvalidEvent,
    collect,
    decoded_meta,
    json_integer,
    normalize_email,
    read_meta,
    timestamp_or_note,
)
from providers.callbacks.sns import SnsMessageType, SnsVerifier
from providers.meta import META_HEADER, parse_meta

SOURCE = "ses"

# SES type (eventType, else notificationType) → event type. Bounce is decided by
# BOUNCE_TYPES; every other type (Send, Reject, Open, DeliveryDelay, Rendering Failure,
# new ones) is recorded in the OTHER bucket.
EVENT_TYPES: dict[str, EventType] = {
    "Delivery": EventType.DELIVERED,
    "Complaint": EventType.SPAM,
    "Click": EventType.CLICKED,
}
# Classify by bounceType, never by the DSN status class: a Transient bounce may carry
# 5.2.2 (reference §1.4). Unknown bounce types are soft: never suppress on a guess.
BOUNCE_TYPES: dict[str, EventType] = {
    "Permanent": EventType.HARD_BOUNCE,
    "Transient": EventType.SOFT_BOUNCE,
    "Undetermined": EventType.SOFT_BOUNCE,
}
# The bounceSubType of a Bounce, and complaintSubType of a Complaint, about an address on
# the account-level suppression list: SES did not try the message and does not count it
# in the account's bounce or complaint rate (reference §1.4). Still a hard bounce or a
# complaint here (the address stays suppressed), marked ``not_attempted``.
ON_ACCOUNT_SUPPRESSION_LIST = "OnAccountSuppressionList"
# A Complaint whose feedback report (ARF, RFC 5965 §7.3) says the message is not spam
# corrects an earlier report: recorded and ignored, never a complaint that suppresses.
NOT_SPAM = "not-spam"
# The type-specific object is the lower-camel type name, except "Rendering Failure".
EVENT_OBJECTS: dict[str, str] = {"Rendering Failure": "failure"}
# Where each type lists its recipients: (list in the type's object, address key in each
# entry or None for plain strings). Other types (Open, Click, Send...) are about the
# message, not one recipient: they concern the ``mail.destination`` address the meta
# names, else every one, as anymail does (see _message_recipients).
RECIPIENTS: dict[str, tuple[str, str | None]] = {
    "Bounce": ("bouncedRecipients", "emailAddress"),
    "Complaint": ("complainedRecipients", "emailAddress"),
    "Delivery": ("recipients", None),
    "DeliveryDelay": ("delayedRecipients", "emailAddress"),
}
# Setup messages that arrive as Notifications and are recorded and ignored.
SUBSCRIPTION_SUCCEEDED = "AmazonSnsSubscriptionSucceeded"
VALIDATION_MESSAGE = "Successfully validated SNS topic for Amazon SES event publishing."


def parse_ses_callback(
    body: bytes | str,
    *,
    verifier: SnsVerifier,
    topic_arns: Collection[str],
    headers: Mapping[str, str] | None = None,
    max_age: timedelta | None = None,
    now: datetime | None = None,
) -> CallbackResult:
    """Verify an SNS request and parse the SES events it carries.

    ``max_age`` and ``now`` bound the age of the envelope (see :meth:`SnsVerifier.verify`).
    A ``SubscriptionConfirmation`` gives a result whose ``subscribe_url`` the caller
    must GET; an ``UnsubscribeConfirmation`` and the SES setup messages give a result
    with ``ignored`` set and no items. Raises :class:`CallbackRejected` (see
    :meth:`SnsVerifier.verify`; also 400 when a verified ``Message`` is not SES JSON).
    """
    envelope = verifier.verify(
        body, topic_arns=topic_arns, headers=headers, max_age=max_age, now=now
    )
    if envelope.type is SnsMessageType.SUBSCRIPTION_CONFIRMATION:
        return CallbackResult(
            subscribe_url=envelope.subscribe_url or "",
            ignored=f"SNS SubscriptionConfirmation for {envelope.topic_arn}: GET SubscribeURL",
        )
    if envelope.type is SnsMessageType.UNSUBSCRIBE_CONFIRMATION:
        return CallbackResult(ignored=f"SNS UnsubscribeConfirmation for {envelope.topic_arn}")
    return parse_ses_message(
        envelope.message, message_id=envelope.message_id, sns_timestamp=envelope.timestamp
    )


def parse_ses_message(
    message: str, *, message_id: str = "", sns_timestamp: str = ""
) -> CallbackResult:
    """Parse the SES payload of a verified SNS ``Notification`` (its ``Message`` string).

    ``message_id`` (SNS ``MessageId``, kept on redelivery) makes the event ids;
    ``sns_timestamp`` is the fallback event time. Raises :class:`CallbackRejected` (400)
    when the message is not an SES payload.
    """
    if message.strip() == VALIDATION_MESSAGE:
        return CallbackResult(ignored="SES event publishing validation message")
    try:
        payload = json.loads(message, parse_int=json_integer)
    except (ValueError, RecursionError) as exc:
        raise CallbackRejected("invalid payload: SNS Message is not SES JSON") from exc
    if not isinstance(payload, dict):
        raise CallbackRejected("invalid payload: SNS Message is not SES JSON")
    kind = payload.get("eventType") or payload.get("notificationType")
    if kind == SUBSCRIPTION_SUCCEEDED:
        return CallbackResult(ignored=f"SES {SUBSCRIPTION_SUCCEEDED} setup message")
    mail = payload.get("mail")
    if not isinstance(kind, str) or not isinstance(mail, dict):
        raise CallbackRejected("Mandatory parameter missing: eventType or notificationType, mail")
    detail = payload.get(EVENT_OBJECTS.get(kind, kind[:1].lower() + kind[1:]))
    detail = detail if isinstance(detail, dict) else {}
    list_key, address_key = RECIPIENTS.get(kind, ("", None))
    recipients = detail.get(list_key) if list_key else mail.get("destination")
    if not isinstance(recipients, list):
        raise CallbackRejected(f"invalid payload: SES {kind} message lists no recipients")
    meta, meta_notes = meta_header(mail)
    entries = list(enumerate(recipients))
    if not list_key:
        entries = _message_recipients(entries, meta)

    def build(entry: tuple[int, Any]) -> CallbackEvent:
        index, recipient = entry
        if address_key and not isinstance(recipient, dict):
            raise InvalidEvent(f"recipient {index} is not an object")
        address = recipient.get(address_key) if isinstance(recipient, dict) else recipient
        notes = list(meta_notes)
        event_type = _event_type(kind, detail)
        email = normalize_email(address)
        meta_fields = read_meta(meta, email, notes, strict=False)
        timestamp = timestamp_or_note(detail.get("timestamp") or sns_timestamp, notes)
        return CallbackEvent(
            source=SOURCE,
            type=event_type,
            provider_type=kind,
            email=email,
            meta=meta,
            meta_fields=meta_fields,
            campaign_id=meta_fields.campaign_id if meta_fields else "",
            description=_description(kind, detail, recipient),
            timestamp=timestamp,
            provider_event_id=f"{message_id}/{index}" if message_id else "",
            id_is_stable=bool(message_id),
            provider_message_id=_text(mail.get("messageId")),
            url=_text(detail.get("link")) if kind == "Click" else "",
            not_attempted=_not_attempted(kind, detail),
            notes=tuple(notes),
            raw=payload,
        )

    return CallbackResult(items=collect(entries, build))


def _message_recipients(entries: list[tuple[int, Any]], meta: str) -> list[tuple[int, Any]]:
    """Of an event about the whole message (a Click: SES cannot tell which of its
    recipients clicked), the destination its meta names, the message's own recipient:
    one click of the To made a click of every Cc and Bcc sent in the same transaction
    (an archive Bcc "clicked" every link every recipient clicked). Every destination
    when the meta names none of them (or there is no meta to read)."""
    try:
        address = parse_meta(meta).email
    except ValueError:
        return entries
    own = [(i, r) for i, r in entries if isinstance(r, str) and same_address(r, address)]
    return own[:1] or entries


def _event_type(kind: str, detail: Mapping[str, Any]) -> EventType:
    if kind == "Bounce":
        return BOUNCE_TYPES.get(_text(detail.get("bounceType")), EventType.SOFT_BOUNCE)
    if kind == "Complaint" and _text(detail.get("complaintFeedbackType")).lower() == NOT_SPAM:
        return EventType.OTHER
    return EVENT_TYPES.get(kind, EventType.OTHER)


def _not_attempted(kind: str, detail: Mapping[str, Any]) -> bool:
    """SES reports an address on the account's own suppression list (it did not try it)."""
    field = {"Bounce": "bounceSubType", "Complaint": "complaintSubType"}.get(kind)
    return field is not None and _text(detail.get(field)) == ON_ACCOUNT_SUPPRESSION_LIST


def meta_header(mail: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The ``X-CleverTap_META`` value of the original message and notes on its absence.

    Names match case-insensitively; the first occurrence wins; RFC 2047 encoded-words
    are decoded when the value does not parse as it is (:func:`decoded_meta`). Missing
    or truncated headers give ``""``.
    """
    if mail.get("headersTruncated") is True:
        return "", ["mail.headers truncated: no meta"]
    headers = mail.get("headers")
    if not isinstance(headers, list):
        return "", ["original headers not included: no meta"]
    wanted = META_HEADER.lower()
    for item in headers:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        if item["name"].strip().lower() == wanted and isinstance(item.get("value"), str):
            return decoded_meta(item["value"].strip()), []
    return "", [f"no {META_HEADER} header"]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _description(kind: str, detail: Mapping[str, Any], recipient: Any) -> str:
    """Human text for the event: the DSN diagnostic, the complaint type, the reply."""
    entry = recipient if isinstance(recipient, dict) else {}
    diagnostic = _text(entry.get("diagnosticCode")) or _text(entry.get("status"))
    if kind == "Bounce":
        text = f"{_text(detail.get('bounceType'))}/{_text(detail.get('bounceSubType'))}"
        return f"{text}: {diagnostic}" if diagnostic else text
    if kind == "Complaint":
        reason = _text(detail.get("complaintFeedbackType")) or _text(detail.get("complaintSubType"))
        return f"Complaint: {reason}" if reason else "Complaint"
    if kind == "DeliveryDelay":
        return ": ".join(filter(None, (_text(detail.get("delayType")), diagnostic)))
    for key in ("smtpResponse", "link", "reason", "errorMessage"):
        if _text(detail.get(key)):
            return _text(detail.get(key))
    return kind
