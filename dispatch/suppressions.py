"""The suppression list: addresses we never send to again, with why and since when."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

from dispatch import store
from providers.addresses import InvalidAddressError, drop_root_dot, idna_domain, normalize_address

log = logging.getLogger(__name__)

# The longest reason or source an entry is given by hand (the API's, the CLI's --reason).
MAX_REASON = 200


def suppression_key(email: str) -> str:
    """The list's key for an address: normalised and lower-cased (compared caselessly).

    For an ASCII address that is the address stripped and lower-cased, without a trailing
    root dot (IDNA changes only non-ASCII domains); the full normalisation runs for the
    others (a non-ASCII local part in NFC, RFC 6532). An address it refuses (one we could
    not send to, which callbacks may still report) gets its domain in IDNA form all the
    same, so that both spellings of a domain are one key.
    """
    if email.isascii():
        return drop_root_dot(email.strip()).lower()
    try:
        return normalize_address(email).lower()
    except InvalidAddressError:
        local, sep, domain = email.strip().rpartition("@")
        return f"{local}{sep}{_key_domain(drop_root_dot(domain)) if sep else domain}".lower()


# What str.strip() takes from an ASCII address (the line breaks joining them aside).
_ASCII_SPACES = b" \t\x0b\x0c\r\x1c\x1d\x1e\x1f"


def suppression_keys(emails: list[str]) -> list[str]:
    """:func:`suppression_key` of each address. A list of ASCII addresses without
    whitespace, line breaks or a root dot (nearly every list) is lower-cased as one text:
    a million calls of suppression_key cost about 0.4 s."""
    text = "\n".join(emails)
    if (
        text.isascii()
        and text.count("\n") == len(emails) - 1  # (none holds a line break)
        and ".\n" not in text
        and not text.endswith(".")
    ):
        raw = text.encode()
        if len(raw.translate(None, _ASCII_SPACES)) == len(raw):
            return text.lower().split("\n")
    return [suppression_key(email) for email in emails]


@functools.lru_cache(maxsize=1024)
def _key_domain(domain: str) -> str:
    """``domain`` in IDNA form, as normalize_address writes it; as given when IDNA
    refuses it (it is not a host name then, and no spelling of it is another)."""
    try:
        return idna_domain(domain)
    except UnicodeError:
        return domain


# The entry of a person's own unsubscribe by one of our links (dispatch.preferences
# .own_unsubscribe), as a Lua pattern over its JSON: keys in the order entries are
# written (email, reason, source), a quote inside a value escaped. It is the one entry the
# person may lift ("Subscribe again"), so another that comes later replaces it: an
# operator's (a block they could otherwise lift), a bounce's, a complaint's or a
# provider's unsubscribe report (dispatch.effects). Otherwise an address's first entry
# stands.
OWN_UNSUBSCRIBE_PATTERN = '"reason":"unsubscribed","source":"callback:[%w%-]+:list%-unsubscribe"'
# KEYS[1] the list; ARGV: address, entry, OWN_UNSUBSCRIBE_PATTERN. CREATED when the
# address had no entry, REPLACED when it had the person's own unsubscribe, 0 when its
# entry stands.
CREATED, REPLACED = 1, 2
_SET = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then return 1 end
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held and string.find(held, ARGV[3]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return 2
end
return 0
"""


def _set(pipe: Any, key: str, entry: bytes) -> None:
    """Queue on ``pipe`` the write of ``entry`` for ``key`` (see :data:`_SET`)."""
    pipe.eval(_SET, 1, store.SUPPRESSIONS_HASH, key, entry, OWN_UNSUBSCRIBE_PATTERN)


def add(
    email: str,
    *,
    reason: str,
    source: str,
    client: redis.Redis | None = None,
    ts: float | None = None,
) -> dict[str, Any]:
    """Suppress ``email`` by hand; an existing entry is kept (the first reason stands),
    but for the person's own unsubscribe, which it replaces (:data:`OWN_UNSUBSCRIBE_PATTERN`).

    Raises :class:`InvalidAddressError` when ``email`` is not an address we could send to
    (:func:`normalize_address`): such an entry would never match a recipient.
    """
    return _write(client or store.sync_client(), _new_entry(email, reason, source, ts))[0]


def put(email: str, reason: str, source: str) -> tuple[dict[str, Any], bool]:
    """:func:`add` now, and whether the address was not suppressed before this call (of
    two at once, one created it): False too when this entry replaced the person's own
    unsubscribe, the address was on the list already."""
    return _write(store.sync_client(), _new_entry(email, reason, source, None))


def _new_entry(email: str, reason: str, source: str, ts: float | None) -> dict[str, Any]:
    return {
        "email": suppression_key(normalize_address(email)),
        "reason": reason,
        "source": source,
        "ts": ts if ts is not None else time.time(),
    }


def _write(r: redis.Redis, entry: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Store ``entry`` unless its address has one (but the person's own unsubscribe); the
    entry kept, and whether the address had none."""
    pipe = r.pipeline()  # MULTI: the entry answered is the one the write found or made
    _set(pipe, entry["email"], orjson.dumps(entry))
    pipe.hget(store.SUPPRESSIONS_HASH, entry["email"])
    written, raw = pipe.execute()
    stored: dict[str, Any] = orjson.loads(raw) if raw is not None else entry
    return stored, written == CREATED


# Addresses per round trip of a bulk import (add_many) and entries per scan of iter_entries.
CHUNK = 1000


def add_many(
    emails: Iterable[str | tuple[str, str] | tuple[str, str, str]],
    *,
    reason: str,
    source: str,
    client: redis.Redis | None = None,
    invalid: Callable[[int, str, InvalidAddressError], None] | None = None,
) -> tuple[int, int]:
    """Suppress every address of ``emails`` (read as they come: a file of millions is
    never held whole), :data:`CHUNK` to a round trip; ``(added, already suppressed)``.
    Each is an address (entered with ``reason``) or an ``(address, its own reason)``
    pair, or ``(address, reason, its own source)`` (``POST /v1/suppressions``; the
    caller checked them). The one import of both the CLI's ``suppressions add --file``
    and the API's.

    An existing entry is kept (or replaced) as :func:`add` does; a replaced one counts as
    already suppressed, as :func:`put` tells it. An address we could not
    send to is given to ``invalid`` with its position (1-based) and the error; its
    neighbours are added all the same. Blank ones (an empty line) are skipped.
    """
    r = client or store.sync_client()
    added = already = 0
    chunk: dict[str, bytes] = {}

    def flush() -> None:
        nonlocal added, already
        pipe = r.pipeline(transaction=False)
        for key, entry in chunk.items():
            pipe.hsetnx(store.SUPPRESSIONS_HASH, key, entry)
        kept = [key for key, created in zip(chunk, pipe.execute(), strict=True) if not created]
        if kept:  # (but a person's own unsubscribe is replaced: see _SET)
            for key in kept:
                _set(pipe, key, chunk[key])
            # One removed since the first pass is created now.
            kept = [
                k for k, written in zip(kept, pipe.execute(), strict=True) if written != CREATED
            ]
        new = len(chunk) - len(kept)
        added, already = added + new, already + len(chunk) - new
        chunk.clear()

    for position, item in enumerate(emails, 1):
        email, why, origin = (
            (item, reason, source) if isinstance(item, str) else _given(item, source)
        )
        if not email.strip():
            continue
        try:
            entry = _new_entry(email, why, origin, None)
        except InvalidAddressError as exc:
            if invalid is not None:
                invalid(position, email, exc)
            continue
        if entry["email"] in chunk:  # two spellings of one address: the first stands
            already += 1
            continue
        chunk[entry["email"]] = orjson.dumps(entry)
        if len(chunk) >= CHUNK:
            flush()
    if chunk:
        flush()
    return added, already


def _given(item: tuple[str, str] | tuple[str, str, str], source: str) -> tuple[str, str, str]:
    """An :func:`add_many` item's ``(address, reason, source)``."""
    return (item[0], item[1], source) if len(item) == 2 else (item[0], item[1], item[2])


def get(email: str, *, client: redis.Redis | None = None) -> dict[str, Any] | None:
    raw = (client or store.sync_client()).hget(store.SUPPRESSIONS_HASH, suppression_key(email))
    if raw is None:
        return None
    entry: dict[str, Any] = orjson.loads(raw)
    return entry


async def get_async(email: str, client: aioredis.Redis) -> dict[str, Any] | None:
    """:func:`get` on an asyncio client."""
    raw = await client.hget(store.SUPPRESSIONS_HASH, suppression_key(email))
    if raw is None:
        return None
    entry: dict[str, Any] = orjson.loads(raw)
    return entry


def describe(entry: dict[str, Any]) -> str:
    """An entry in words, for an error message: ``reason, source, since <UTC time>``."""
    when = datetime.fromtimestamp(float(entry.get("ts", 0)), UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{entry.get('reason', '?')}, {entry.get('source', '?')}, since {when}"


def remove(email: str, *, client: redis.Redis | None = None) -> bool:
    """Send to ``email`` again; False if it was not suppressed. The entry removed (its
    reason, source and time: often a complaint or a bounce, the evidence) is logged at
    INFO, since the list no longer holds it."""
    r = client or store.sync_client()
    key = suppression_key(email)
    pipe = r.pipeline()  # MULTI: the entry logged is the one removed
    pipe.hget(store.SUPPRESSIONS_HASH, key)
    pipe.hdel(store.SUPPRESSIONS_HASH, key)
    raw, removed = pipe.execute()
    if not removed:
        return False
    entry: dict[str, Any] = orjson.loads(raw)
    log.info(
        "suppression removed: %s (%s)",
        key,
        describe(entry),
        extra={"email": key, "suppression": entry},
    )
    return True


def page(
    cursor: int = 0,
    count: int = 100,
    *,
    reason: str | None = None,
    source: str | None = None,
    client: redis.Redis | None = None,
) -> tuple[int, list[dict[str, Any]]]:
    """One page of entries and the cursor of the next (0 when done); with ``reason`` or
    ``source``, those of the page's entries whose reason or source is exactly that. The
    filter applies to the entries one scan step read (HSCAN's MATCH sees only the
    addresses), so a filtered page may be short, or empty with a next cursor."""
    r = client or store.sync_client()
    next_cursor, items = r.hscan(store.SUPPRESSIONS_HASH, cursor=cursor, count=count)
    values = items.values() if isinstance(items, dict) else items
    entries = [orjson.loads(v) for v in values]
    if reason is not None or source is not None:
        entries = [
            e
            for e in entries
            if (reason is None or e.get("reason") == reason)
            and (source is None or e.get("source") == source)
        ]
    return int(next_cursor), entries


def iter_entries(*, client: redis.Redis | None = None) -> Iterator[dict[str, Any]]:
    """Every entry, page by page as :func:`page` reads them (no particular order): a
    list of millions is never held whole."""
    cursor = 0
    while True:
        cursor, items = page(cursor, CHUNK, client=client)
        yield from items
        if cursor == 0:
            return
