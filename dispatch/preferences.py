"""One-click unsubscribe (RFC 8058), re-subscribe, and the system preference center's
choices."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from dispatch import campaign_reads, campaigns, store, suppressions
from dispatch.effects import InboxEvent, apply_events, suppression_entry, system_events
from dispatch.ledger import system_event
from dispatch.settings import get_settings
from dispatch.suppressions import suppression_key
from dispatch.unsubscribe import UnsubscribeToken
from providers.callbacks.events import EventType
from providers.meta import build_meta

log = logging.getLogger(__name__)


# A suppression entry the person's own unsubscribe wrote (:func:`unsubscribe`: one-click,
# the confirmation page's button, the center's "unsubscribe from all"), as effects stores
# it: the only kind the person may lift (:func:`resubscribe`). A provider's unsubscribe
# callback is "callback:<nickname>:<its own event name>" (SendGrid's "dropped" too), a
# bounce or complaint has another reason, an operator's entry another source.
OWN_SOURCE = re.compile(r"callback:[a-z0-9-]{1,64}:list-unsubscribe")
# The system event of a re-subscribe: not DESIGN §6's "Channel Unsubscribed" (a consumer
# that reads the event's name must never take it for one), its counterpart.
RESUBSCRIBED_EVENT = "Channel Subscribed"
# Suppress again, with its "Channel Unsubscribed", only if the address is not (atomic: two
# repeats at once publish one). KEYS: the list, the stream. ARGV: address, entry, maxlen,
# the event.
_SUPPRESS_AGAIN = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'json', ARGV[4])
return 1
"""
# Lift the entry only if it is still the one checked (an operator may have replaced it
# since it was read), with its event. KEYS: the list, the stream. ARGV: address, the entry
# read, maxlen, the event.
_LIFT = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'json', ARGV[4])
return 1
"""


@dataclass(frozen=True, slots=True)
class _Message:
    """What the events about a token's message name: the campaign ("" when it is not
    stored: a test message, or another account's token), the sending provider's nickname
    and kind, the message's meta."""

    campaign_id: str
    provider: str
    kind: str
    meta: str


def _message(token: UnsubscribeToken, r: redis.Redis) -> _Message:
    try:
        content = campaign_reads.load_content(token.campaign_id, r)
    except campaigns.CampaignNotFoundError:
        return _Message("", "preference-center", "", "")
    meta = ""
    send_date = r.hget(store.campaign_key(token.campaign_id), "send_date")
    with contextlib.suppress(ValueError):  # not sent yet, or another account's token
        meta = build_meta(
            email=token.email,
            account_id=get_settings().account_id,
            campaign_id=token.campaign_id,
            send_date=str(send_date or ""),
            seq=token.seq,
            variant=content.variant,
            category=content.category,
        )
    stored = r.get(store.provider_key(content.provider))
    kind = str(orjson.loads(stored).get("kind") or "") if stored else ""
    return _Message(token.campaign_id, content.provider, kind, meta)


def unsubscribe(token: UnsubscribeToken, how: str, client: redis.Redis | None = None) -> bool:
    """Unsubscribe the token's recipient from everything; False if this message's
    unsubscribe was applied before.

    Applied like a provider's ``unsubscribed`` callback, once per message: the address
    is suppressed, the campaign's ``unsubscribed`` counter moves and ``Channel
    Unsubscribed`` is published (``Type`` = ``how``). A repeat suppresses the address
    again if its entry was removed since (a re-subscribe, an operator's DELETE), and then
    publishes ``Channel Unsubscribed`` again (a consumer that saw the re-subscribe would
    otherwise take the address for subscribed); the counter moves once all the same.
    """
    r = client or store.sync_client()
    message = _message(token, r)
    event = InboxEvent(
        type=EventType.UNSUBSCRIBED,
        provider_type="list-unsubscribe",
        email=token.email,
        meta=message.meta,
        campaign_id=message.campaign_id,
        account_id=get_settings().account_id,
        seq=token.seq if message.campaign_id else None,
        description=how,
        ts=time.time(),
        dedupe=f"unsubscribe:{token.campaign_id}:{token.seq}",
    )
    applied = apply_events(
        [event],
        provider=message.provider,
        kind="preference-center",
        sender_kind=message.kind,  # of a Notification Sent this unsubscribe may prove
        client=r,
    )
    if applied > 0:
        return True
    # A repeat of this message's unsubscribe (remembered for days): its counter stays as
    # it was, but the person asks again, so they are suppressed again if the entry was
    # removed meanwhile (it used to change nothing while the page said "You are
    # unsubscribed"; and, since re-subscribing publishes, it published nothing either).
    now = time.time()
    address, entry = suppression_entry(event, provider=message.provider, received=now)
    (published,) = system_events(
        event, provider=message.provider, kind="preference-center", received=now
    )
    r.eval(
        _SUPPRESS_AGAIN, 2, store.SUPPRESSIONS_HASH, store.EVENTS_STREAM,
        address, entry, get_settings().events_maxlen, published,
    )  # fmt: skip
    return False


def own_unsubscribe(entry: Mapping[str, Any] | None) -> bool:
    """``entry`` (a suppression entry, or None) is the person's own unsubscribe, by a link
    of ours: the one kind the person may lift from the preference center."""
    return (
        entry is not None
        and entry.get("reason") == EventType.UNSUBSCRIBED.value
        and OWN_SOURCE.fullmatch(str(entry.get("source", ""))) is not None
    )


def resubscribe(token: UnsubscribeToken, client: redis.Redis | None = None) -> bool:
    """Send to the token's address again, if its suppression entry is its own unsubscribe
    (:func:`own_unsubscribe`); whether it was lifted.

    Never a bounce, a complaint, a provider's report or an operator's entry (False, nothing
    changed), nor an entry that changed since it was read, nor by a token only a previous
    key reads (:attr:`UnsubscribeToken.current_key`: it may have been forged with a key
    that leaked). Publishes ``Channel
    Subscribed`` (``Type``: ``Preference center``) with the campaign and meta of the
    token's message, as its unsubscribe published ``Channel Unsubscribed``; the campaign's
    ``unsubscribed`` counter stays (that unsubscribe happened). The categories the person
    switched off stay off. Logged at INFO with the entry lifted, as
    :func:`suppressions.remove` logs one.
    """
    if not token.current_key:
        return False
    r = client or store.sync_client()
    address = suppression_key(token.email)
    raw = r.hget(store.SUPPRESSIONS_HASH, address)
    if raw is None or not own_unsubscribe(orjson.loads(raw)):
        return False
    message = _message(token, r)
    published = system_event(
        RESUBSCRIBED_EVENT,
        email=token.email,
        campaign_id=message.campaign_id,
        meta=message.meta,
        provider=message.provider,
        properties={"Type": "Preference center"},
    )
    lifted = r.eval(
        _LIFT, 2, store.SUPPRESSIONS_HASH, store.EVENTS_STREAM,
        address, raw, get_settings().events_maxlen, published,
    )  # fmt: skip
    if lifted:
        log.info(
            "suppression lifted by its address's re-subscribe: %s (%s)",
            address,
            suppressions.describe(orjson.loads(raw)),
            extra={"email": address, "suppression": orjson.loads(raw)},
        )
    return bool(lifted)


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
