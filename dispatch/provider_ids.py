"""The provider's message ids of sent messages, to attribute callbacks that carry no meta.

SES's notifications carry the message's headers, and with them its meta, only when
"include original headers" is on; SendGrid's asynchronous bounces can come without the
unique arguments that carry it (reference §1.4 and §2.3). Both always name the id the
provider gave the message when it took it (SES ``mail.messageId``: the id of its
``250 Ok <id>`` reply; SendGrid ``sg_message_id``: the ``queued as`` id, then
``.filter...``). The reference's advice: keep that id at send time and join on it.

Sends through those kinds write ``<provider id> -> <meta>`` into a hash per UTC day,
kept :attr:`Settings.provider_id_days` days; a callback event without meta whose
provider id is there takes that meta, and from then on is applied as if the provider had
echoed it (the usual checks hold: its recipient must be the message's).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import redis
import redis.asyncio as aioredis

from dispatch import store
from providers.mime import message_id_local_part

log = logging.getLogger(__name__)

# The kinds whose callbacks may come without the meta but with the provider's id.
INDEXED_KINDS = frozenset({"ses", "sendgrid"})
DAY = 24 * 3600
# Longer ids are not looked up: no provider's is near this (SES 60 characters, SendGrid's
# sg_message_id about 70, an smtp-id about 50), and each id asked for is sent to Redis in
# up to four candidates for every day searched (a request of 1000 events of 8 KB ids
# made about 160 MB of HMGET arguments, half a second of Redis).
MAX_ID_LENGTH = 256


def entries(kind: str, campaign_id: str, sent: list[tuple[str, str, int]]) -> dict[str, str]:
    """What to keep of messages sent through ``kind``, each ``(provider id, meta, seq)``:
    id -> meta. For SendGrid also the local part of the message's own Message-ID: with an
    authenticated sender domain its events' ``smtp-id`` is that Message-ID (django-anymail
    #108), and an asynchronous bounce may carry nothing else."""
    kept = {pid: meta for pid, meta, _ in sent}
    if kind == "sendgrid":
        for _, meta, seq in sent:
            with contextlib.suppress(ValueError):  # a meta no message could be written with
                kept[message_id_local_part(meta, campaign_id, seq)] = meta
    return kept


def index_key(day: str) -> str:
    """Hash: provider message id -> meta, of the messages sent on ``day`` (YYYYMMDD, UTC)."""
    return f"{store.PREFIX}:provider-ids:{day}"


def _day(when: datetime) -> str:
    return when.strftime("%Y%m%d")


async def remember(client: aioredis.Redis, metas: dict[str, str], days: float) -> None:
    """Keep ``metas`` (provider id -> meta) for ``days``; a no-op for none or ``days`` 0.

    The day's hash lives ``days`` past the day's end (so an id is kept ``days`` to
    ``days`` + 1): an expiry counted from each write instead kept the ids written late
    in the day a day longer, and nine days' hashes for seven. Raises ``redis.RedisError``.
    """
    if not metas or days <= 0:
        return
    now = datetime.now(UTC)
    day_end = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    key = index_key(_day(now))
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, items=[part for pair in metas.items() for part in pair])
    pipe.expireat(key, math.ceil(day_end.timestamp() + days * DAY))
    await pipe.execute()


def candidates(provider_id: str) -> list[str]:
    """The ids a callback's ``provider_id`` may have been stored under: itself; for
    SendGrid's ``sg_message_id``, the ``queued as`` id before its ``.filter...`` (or
    before its first dot); for an ``smtp-id``, the part of ``<id@host>`` before the ``@``."""
    found = (
        provider_id,
        provider_id.split(".filter", 1)[0],
        provider_id.split(".", 1)[0],
        provider_id.strip("<>").split("@", 1)[0],
    )
    return [c for c in dict.fromkeys(found) if c]


def lookup(r: redis.Redis, provider_ids: Sequence[str], days: float) -> dict[str, str]:
    """The metas stored under ``provider_ids`` (or their :func:`candidates`), by the id
    asked for; the days searched are the ones a stored id can still be in, and the next
    one (a sending worker whose clock runs a little ahead writes it before midnight
    here). One command a day for all the ids. Raises ``redis.RedisError``."""
    if days <= 0:
        return {}
    wanted = {
        pid: candidates(pid) for pid in dict.fromkeys(provider_ids) if len(pid) <= MAX_ID_LENGTH
    }
    if not wanted:
        return {}
    fields = list(dict.fromkeys(c for found in wanted.values() for c in found))
    today = datetime.now(UTC)
    pipe = r.pipeline(transaction=False)
    for back in range(-1, math.ceil(days) + 1):  # each day's hash lives `days` past its end
        pipe.hmget(index_key(_day(today - timedelta(days=back))), fields)
    stored: dict[str, str] = {}
    for values in pipe.execute():  # newest day first: its meta stands
        for name, value in zip(fields, values, strict=True):
            if value is not None and name not in stored:
                stored[name] = value.decode() if isinstance(value, bytes) else value
    metas = {}
    for pid, names in wanted.items():
        meta = next((stored[n] for n in names if n in stored), None)
        if meta is not None:
            metas[pid] = meta
    return metas
