"""A campaign's messages, page by page: each one's state, its meta and the callbacks
counted for it (``GET /v1/campaigns/{id}/messages``, ``dispatch messages``)."""

from __future__ import annotations

from typing import Any

import orjson
import redis

from dispatch import campaign_reads, retention, store
from dispatch.ledger import parse_record
from dispatch.models import CALLBACK_COUNTERS, CampaignContent, MessageState
from dispatch.recipient_pages import lines_of, page_span, seqs_of_address, stored_count
from dispatch.settings import get_settings
from dispatch.suppressions import suppression_key
from providers.addresses import InvalidAddressError, normalize_address

WINDOW = 1000  # messages read per round trip
MAX_PAGE = 1000
# A filtered page looks at this many messages at most, then hands back a cursor.
PAGE_SCAN_LIMIT = 20_000
QUEUED = "queued"  # the state of a message the ledger has no record of yet
MESSAGE_STATUSES = (QUEUED, *(state.value for state in MessageState))


def _meta(email: str, seq: int, content: CampaignContent, send_date: str) -> str:
    """The message's meta (DESIGN §3), as the sender builds it; empty before the start,
    and for a text no message can carry a meta for: one that is no address, or an
    address with a ``|`` (the meta's separator), fails at send time without one
    (``BatchCampaign.build``), and its log line has none either."""
    if not send_date:
        return ""
    try:
        email = normalize_address(email)  # meta carries what the sender used
    except InvalidAddressError:
        return ""
    if "|" in email:
        return ""
    account = get_settings().account_id
    return f"{email}|{account}|{content.id}|{send_date}|{content.variant}|{content.category}|{seq}|"


def holds_address(campaign_id: str, email: str, client: redis.Redis | None = None) -> bool:
    """Whether the campaign was given ``email``, compared as :func:`messages_page`
    compares (a text that is no address too: an inline list is stored as it was given,
    and such a recipient fails at send time). Raises
    :class:`campaigns.CampaignNotFoundError`, :class:`retention.CampaignPurgedError`."""
    r = client or store.sync_client()
    campaign_reads.load_content(campaign_id, r)
    held = bool(seqs_of_address(r, campaign_id, suppression_key(email)))
    retention.ensure_not_purged(r, campaign_id)  # after the read: a purge during it too
    return held


def messages_page(
    campaign_id: str,
    *,
    status: str | None = None,
    cursor: int = 0,
    limit: int = 100,
    email: str | None = None,
    callback: str | None = None,
    client: redis.Redis | None = None,
) -> tuple[list[dict[str, Any]], int | None]:
    """Per-message outcomes in seq order from ``cursor``, and the next cursor (None: done).

    With ``email``, the messages to that address (compared as the suppression list
    compares: caselessly), in that status if one is given, all on one page.

    With ``status`` a page holds only messages in that state (``queued`` for those not
    settled yet), with ``callback`` only those a callback of that counter was counted
    for (``clicked``: who clicked), among the next :data:`PAGE_SCAN_LIMIT` messages, so
    it may be short or empty while the cursor moves on.

    Each message's ``callbacks`` lists the callback counters it was counted in (each
    once, however many such callbacks came), in :data:`CALLBACK_COUNTERS` order. Raises
    :class:`campaigns.CampaignNotFoundError`, :class:`retention.CampaignPurgedError`
    (also when the purge comes while the page is read), ``ValueError`` for an unknown
    status or callback.
    """
    if status is not None and status not in MESSAGE_STATUSES:
        raise ValueError(f"status: one of {', '.join(MESSAGE_STATUSES)}")
    if callback is not None and callback not in CALLBACK_COUNTERS:
        raise ValueError(f"callback: one of {', '.join(CALLBACK_COUNTERS)}")

    def wanted(state: str, counted: list[str]) -> bool:
        return (status is None or state == status) and (callback is None or callback in counted)

    r = client or store.sync_client()
    content = campaign_reads.load_content(campaign_id, r)
    retention.ensure_not_purged(r, campaign_id)
    if email is not None:
        found: list[dict[str, Any]] = []
        held_at = seqs_of_address(r, campaign_id, suppression_key(email))
        retention.ensure_not_purged(r, campaign_id)  # (purged while read: it found none)
        for at in held_at:
            one, _ = messages_page(campaign_id, cursor=at, limit=1, client=r)
            found += [m for m in one if wanted(m["status"], m["callbacks"])]
        return found, None
    send_date = str(r.hget(store.campaign_key(campaign_id), "send_date") or "")
    total = stored_count(r, campaign_id)
    limit = max(1, min(limit, MAX_PAGE))
    items: list[dict[str, Any]] = []
    seq = max(0, cursor)
    scan_end = min(total, seq + max(PAGE_SCAN_LIMIT, limit))
    while seq < scan_end and len(items) < limit:
        filtered = status is not None or callback is not None
        window = min(WINDOW, scan_end - seq, WINDOW if filtered else limit - len(items))
        seqs = [str(s) for s in range(seq, seq + window)]
        first, last, at = page_span(seq, window)
        pipe = r.pipeline(transaction=False)
        pipe.lrange(store.recipients_key(campaign_id), first, last)
        pipe.hmget(store.ledger_key(campaign_id), seqs)
        pipe.smismember(store.retried_key(campaign_id), seqs)
        bytes_read = _callback_bytes(pipe, campaign_id, seq, window)
        # Read last: a purge (one script) that came after the check above, or between
        # two of these reads, is seen here (its reads found no recipients, or no records:
        # every message would have read as queued).
        pipe.hget(store.campaign_key(campaign_id), "purged_at")
        pages, records, retried, *bits, purged = pipe.execute()
        if purged is not None:
            raise retention.CampaignPurgedError(campaign_id, float(purged))
        docs = lines_of(pages, at, window)
        for offset, (doc, rec_raw, was_retried) in enumerate(
            zip(docs, records, retried, strict=True)
        ):
            rec = parse_record(rec_raw) or {}
            state = str(rec.get("state", QUEUED))
            counted = _counted(bits, bytes_read, seq + offset)
            if not wanted(state, counted):
                continue
            email = str(orjson.loads(doc)["email"])
            items.append(
                {
                    "seq": seq + offset,
                    "email": email,
                    "meta": _meta(email, seq + offset, content, send_date),
                    "status": state,
                    "error_class": rec.get("error_class", ""),
                    "detail": rec.get("detail", ""),
                    "attempts": rec.get("attempts", 0),
                    "throttles": rec.get("throttles", 0),
                    "next_attempt_at": (rec.get("next_at") or None) if state == "retry" else None,
                    "updated_at": rec.get("updated_at", 0.0),
                    "retried": bool(was_retried),
                    "provider_message_id": rec.get("provider_message_id", ""),
                    "callbacks": counted,
                }
            )
            if len(items) >= limit:
                seq += offset + 1
                break
        else:
            seq += window
    return items, (seq if seq < total else None)


def _callback_bytes(pipe: Any, campaign_id: str, seq: int, window: int) -> int:
    """Queue on ``pipe`` the bytes of each callback counter's bitmap (bit ``seq`` of
    :func:`store.callback_bits_key`, the first bit of a byte its highest) that hold seqs
    ``seq`` .. ``seq + window - 1``, one ``BITFIELD_RO`` each (a GETRANGE would answer
    bytes a decoding client cannot read; ``BITFIELD`` is a write command, which a
    read-only replica refuses); returns the first byte's index."""
    first, last = seq // 8, (seq + window - 1) // 8
    gets = [part for at in range(first, last + 1) for part in ("GET", "u8", f"#{at}")]
    for counter in CALLBACK_COUNTERS:
        pipe.execute_command("BITFIELD_RO", store.callback_bits_key(campaign_id, counter), *gets)
    return first


def _counted(bits: list[list[int]], first: int, seq: int) -> list[str]:
    """The callback counters whose bitmap (bytes from ``first`` on) has ``seq`` set."""
    at, mask = seq // 8 - first, 0x80 >> (seq % 8)
    return [name for name, held in zip(CALLBACK_COUNTERS, bits, strict=True) if held[at] & mask]
