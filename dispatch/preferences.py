"""One-click unsubscribe (RFC 8058) and the system preference center's choices."""

from __future__ import annotations

import contextlib
import time

import orjson
import redis

from dispatch import campaign_reads, campaigns, store, suppressions
from dispatch.effects import InboxEvent, apply_events
from dispatch.settings import get_settings
from dispatch.suppressions import suppression_key
from dispatch.unsubscribe import UnsubscribeToken
from providers.callbacks.events import EventType
from providers.meta import build_meta


def unsubscribe(token: UnsubscribeToken, how: str, client: redis.Redis | None = None) -> bool:
    """Unsubscribe the token's recipient from everything; False if this message's
    unsubscribe was applied before.

    Applied like a provider's ``unsubscribed`` callback, once per message: the address
    is suppressed, the campaign's ``unsubscribed`` counter moves and ``Channel
    Unsubscribed`` is published (``Type`` = ``how``). A repeat suppresses the address
    again if its entry was removed since.
    """
    r = client or store.sync_client()
    try:
        content = campaign_reads.load_content(token.campaign_id, r)
    except campaigns.CampaignNotFoundError:
        content = None
    provider = content.provider if content else "preference-center"
    account_id = get_settings().account_id
    meta = ""
    if content is not None:  # the message's meta, as it carried it (events name it)
        send_date = r.hget(store.campaign_key(token.campaign_id), "send_date")
        with contextlib.suppress(ValueError):  # not sent yet, or another account's token
            meta = build_meta(
                email=token.email,
                account_id=account_id,
                campaign_id=token.campaign_id,
                send_date=str(send_date or ""),
                seq=token.seq,
                variant=content.variant,
                category=content.category,
            )
    event = InboxEvent(
        type=EventType.UNSUBSCRIBED,
        provider_type="list-unsubscribe",
        email=token.email,
        meta=meta,
        campaign_id=token.campaign_id if content else "",
        account_id=account_id,
        seq=token.seq if content else None,
        description=how,
        ts=time.time(),
        dedupe=f"unsubscribe:{token.campaign_id}:{token.seq}",
    )
    # The sending provider's kind, for a Notification Sent this unsubscribe may prove.
    stored = r.get(store.provider_key(provider)) if content else None
    sender_kind = str(orjson.loads(stored).get("kind") or "") if stored else ""
    applied = apply_events(
        [event], provider=provider, kind="preference-center", sender_kind=sender_kind, client=r
    )
    if applied > 0:
        return True
    # A repeat of this message's unsubscribe: its counter and event stay as they were,
    # but the person asks again, so they are suppressed again if the entry was removed
    # meanwhile (the repeat is remembered for days, and it used to change nothing then
    # while the page said "You are unsubscribed").
    suppressions.add(
        token.email,
        reason=EventType.UNSUBSCRIBED.value,
        source=f"callback:{provider}:list-unsubscribe",
        client=r,
    )
    return False


def categories(client: redis.Redis | None = None) -> list[str]:
    """Every category campaigns were sent in: one switch each in the preference center."""
    return sorted(str(c) for c in (client or store.sync_client()).smembers(store.CATEGORIES_SET))


def opted_out(email: str, client: redis.Redis | None = None) -> set[str]:
    r = client or store.sync_client()
    names = categories(r)
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.sismember(store.optout_key(name), suppression_key(email))
    return {name for name, hit in zip(names, pipe.execute(), strict=True) if hit}


def set_choices(
    email: str,
    wanted: set[str],
    client: redis.Redis | None = None,
    shown: set[str] | None = None,
) -> set[str]:
    """Keep only ``wanted`` categories for ``email``; returns those opted out of.

    ``shown``: the categories the form offered (None: every one). A category first sent
    in after the page was loaded was not among its switches, so is left as it is."""
    r = client or store.sync_client()
    names = [name for name in categories(r) if shown is None or name in shown]
    out = set(names) - wanted
    address = suppression_key(email)
    pipe = r.pipeline()  # MULTI: every switch changes at once
    for name in names:
        if name in out:
            pipe.sadd(store.optout_key(name), address)
        else:
            pipe.srem(store.optout_key(name), address)
    pipe.execute()
    return out
