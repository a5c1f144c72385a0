"""Parse the generic callback format of the ``smtp``, ``gmail`` and ``http`` kinds (DESIGN §6).

Accepted bodies (seeds: Generic SMTP "SMTP Callbacks", Generic HTTP "Set Up Callbacks",
Gmail "Processing Bounces"):

- v2 flat, one event: ``{"version": "v2", "event": "failed", "type": "hard_bounce",
  "email": ..., "meta": ..., "description": ...}``. ``type`` decides what happened;
  ``event`` is only the event's name (``failed``) and is not needed;
- v2 nested: ``{"version": "v2", "events": {"success": [...], "failed": [...]}}``. Indexes
  run through ``success`` first, then ``failed``;
- a JSON array of flat events (``version`` optional on each);
- legacy: ``{"event": "hardbounce" | "softbounce", "data": [{"e": email, "ts": epoch}]}``.

``type``, ``email`` and ``meta`` are mandatory in v2 events; ``description``,
``timestamp`` and ``url`` are optional; other keys are ignored.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from providers.callbacks.events import (
    MAX_EVENTS,
    CallbackEvent,
    CallbackRejected,
    CallbackResult,
    EventType,
    InvalidEvent,
    check_count,
    collect,
    decoded_meta,
    get_str,
    load_json,
    normalize_email,
    read_meta,
    timestamp_or_note,
)

SOURCE = "generic"
VERSION = "v2"
GROUPS = ("success", "failed")

# v2 ``type`` values (seeds): every event type except the ``other`` bucket.
TYPES: dict[str, EventType] = {t.value: t for t in EventType if t is not EventType.OTHER}
# Gmail seed, legacy form: the top-level ``event`` names the bounce kind of every item.
LEGACY_EVENTS: dict[str, EventType] = {
    "hardbounce": EventType.HARD_BOUNCE,
    "softbounce": EventType.SOFT_BOUNCE,
}
# Used when an event carries no description; wording from the seeds' examples.
DEFAULT_DESCRIPTIONS: dict[EventType, str] = {
    EventType.DELIVERED: "Delivered",
    EventType.HARD_BOUNCE: "Hard bounce detected",
    EventType.SOFT_BOUNCE: "Soft bounce detected",
    EventType.SPAM: "Marked as spam",
    EventType.UNSUBSCRIBED: "User unsubscribed",
    EventType.CLICKED: "Link clicked",
}
# The group an event type belongs in; a type sent in the other group is only noted.
SUCCESS_TYPES = frozenset({EventType.DELIVERED, EventType.CLICKED})


class _Entry(NamedTuple):
    legacy: bool
    group: str  # "success"/"failed" (nested), the flat event's "event", or the legacy event
    raw: Any


def parse_generic(body: bytes | str, *, max_events: int | None = MAX_EVENTS) -> CallbackResult:
    """Parse a generic callback body into one item per event.

    Raises :class:`CallbackRejected` (400) when the body is not JSON, has no supported
    shape or version, or carries more than ``max_events`` events.
    """
    entries = _entries(load_json(body), max_events)
    return CallbackResult(items=collect(entries, _build))


def _entries(payload: Any, max_events: int | None) -> list[_Entry]:
    if isinstance(payload, list):
        check_count(len(payload), max_events)
        return [_Entry(False, _event_name(item), item) for item in payload]
    if not isinstance(payload, dict):
        raise CallbackRejected("invalid payload: expected a JSON object or array")
    if "events" in payload:
        _check_version(payload)
        groups = payload["events"]
        if not isinstance(groups, dict) or not any(g in groups for g in GROUPS):
            raise CallbackRejected("invalid payload: events must hold success and/or failed")
        lists = {group: groups.get(group) or [] for group in GROUPS}
        if not all(isinstance(items, list) for items in lists.values()):
            raise CallbackRejected("invalid payload: events.success and events.failed are lists")
        check_count(sum(len(items) for items in lists.values()), max_events)
        return [_Entry(False, group, item) for group in GROUPS for item in lists[group]]
    if "data" in payload and "version" not in payload:
        name = payload.get("event")
        if not isinstance(name, str) or name not in LEGACY_EVENTS:  # a list is unhashable
            raise CallbackRejected("invalid payload: event must be hardbounce or softbounce")
        data = payload["data"]
        if not isinstance(data, list):
            raise CallbackRejected("invalid payload: data must be a list")
        check_count(len(data), max_events)
        return [_Entry(True, name, item) for item in data]
    _check_version(payload)
    return [_Entry(False, _event_name(payload), payload)]


def _check_version(payload: dict[str, Any]) -> None:
    version = payload.get("version")
    if version is None:
        raise CallbackRejected("Mandatory parameter missing: version")
    if not isinstance(version, str) or version.strip().lower() != VERSION:
        raise CallbackRejected(f"invalid payload: unsupported version {version!r}")


def _event_name(item: Any) -> str:
    name = item.get("event") if isinstance(item, dict) else None
    return name if isinstance(name, str) else ""


def _build(entry: _Entry) -> CallbackEvent:
    """One normalized event from one generic item; raises :class:`InvalidEvent`."""
    raw = entry.raw
    if not isinstance(raw, dict):
        raise InvalidEvent("invalid payload: an event must be a JSON object")
    notes: list[str] = []
    if entry.legacy:
        event_type = LEGACY_EVENTS[entry.group]
        provider_type = entry.group
        email = normalize_email(get_str(raw, "e", required=True))
        timestamp = timestamp_or_note(raw.get("ts"), notes)
        meta = decoded_meta(get_str(raw, "meta"))
        meta_fields = read_meta(meta, email, notes, strict=False)
    else:
        version = raw.get("version", VERSION)
        if not isinstance(version, str) or version.strip().lower() != VERSION:
            raise InvalidEvent(f"unsupported version {version!r}")
        provider_type = get_str(raw, "type", required=True)
        event_type = TYPES.get(provider_type.strip().lower(), EventType.OTHER)
        if event_type is EventType.OTHER:
            raise InvalidEvent(f"Unknown type {provider_type!r}: expected one of {list(TYPES)}")
        email = normalize_email(get_str(raw, "email", required=True))
        meta = decoded_meta(get_str(raw, "meta", required=True))
        meta_fields = read_meta(meta, email, notes, strict=True)
        timestamp = timestamp_or_note(raw.get("timestamp"), notes)
        expected_group = "success" if event_type in SUCCESS_TYPES else "failed"
        if entry.group in GROUPS and entry.group != expected_group:
            notes.append(f"type {event_type.value} sent as {entry.group!r}")
    return CallbackEvent(
        source=SOURCE,
        type=event_type,
        provider_type=provider_type,
        email=email,
        meta=meta,
        meta_fields=meta_fields,
        campaign_id=meta_fields.campaign_id if meta_fields else "",
        description=get_str(raw, "description") or DEFAULT_DESCRIPTIONS[event_type],
        timestamp=timestamp,
        url=get_str(raw, "url"),
        notes=tuple(notes),
        raw=raw,
    )
