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

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import redis
import redis.asyncio as aioredis

from dispatch import store

log = logging.getLogger(__name__)

# The kinds whose callbacks may come without the meta but with the provider's id.
INDEXED_KINDS = frozenset({"ses", "sendgrid"})
DAY = 24 * 3600


def index_key(day: str) -> str:
    """Hash: provider message id -> meta, of the messages sent on ``day`` (YYYYMMDD, UTC)."""
    return f"{store.PREFIX}:provider-ids:{day}"


def _day(when: datetime) -> str:
    return when.strftime("%Y%m%d")


async def remember(client: aioredis.Redis, metas: dict[str, str], days: float) -> None:
    """Keep ``metas`` (provider id -> meta) for ``days``; a no-op for none or ``days`` 0.

    The day's hash lives ``days`` past the day's end. Raises ``redis.RedisError``.
    """
    if not metas or days <= 0:
        return
    key = index_key(_day(datetime.now(UTC)))
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, items=[part for pair in metas.items() for part in pair])
    pipe.expire(key, int(days * DAY) + DAY)
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
    asked for; the days searched are the ones a stored id can still be in. One command
    a day for all the ids. Raises ``redis.RedisError``."""
    if not provider_ids or days <= 0:
        return {}
    wanted = {pid: candidates(pid) for pid in dict.fromkeys(provider_ids)}
    fields = list(dict.fromkeys(c for found in wanted.values() for c in found))
    today = datetime.now(UTC)
    pipe = r.pipeline(transaction=False)
    for back in range(int(days) + 2):  # each day's hash lives `days` past its end
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
