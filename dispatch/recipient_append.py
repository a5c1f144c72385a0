"""Appending recipients to a campaign: each address at most once, in pages, atomically."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import orjson
import redis

from dispatch import store
from dispatch.campaign_checks import RECIPIENT, RecipientChecker
from dispatch.campaign_errors import CampaignStateError
from dispatch.campaign_reads import get_status, load_content
from dispatch.models import CampaignStatus, Recipient
from dispatch.provider_store import ProviderNotFoundError, load_provider
from dispatch.recipient_pages import PAGE, line_safe
from dispatch.suppressions import suppression_keys
from providers.config import ProviderBase

APPEND_CHUNK = 1000


_APPEND = r"""
-- Appends go to drafts; and to a campaign create_campaign is still filling while its
-- first batches already send (the 'appending' mark), paused meanwhile or not.
local status = redis.call('HGET', KEYS[1], 'status')
local filling = (status == 'running' or status == 'paused')
  and redis.call('HEXISTS', KEYS[1], 'appending') == 1
if status ~= 'draft' and not filling then return {-1} end
-- Filling: ARGV[6] is how far into its list the filler had got, ARGV[7] how far this
-- chunk takes it; another filler that took over (this one seemed dead) moved it: stop.
local progress = ARGV[6] ~= nil and ARGV[6] ~= ''
if progress and redis.call('HGET', KEYS[1], 'filled') ~= ARGV[6] then return {-2} end
-- ARGV: n, check ('1': skip the addresses the campaign has, through its addresses set;
-- '0': the caller knows they are new), then n address keys and their n documents, one
-- per line (recipient_pages). Stored as pages of PAGE lines (ARGV[5]).
local find, sub, concat = string.find, string.sub, table.concat
local n, keys, docs, PAGE = tonumber(ARGV[1]), ARGV[3], ARGV[4], tonumber(ARGV[5])
local function lines(blob)
  local out, pos = {}, 1
  while true do
    local nl = find(blob, '\n', pos, true)
    if not nl then out[#out + 1] = sub(blob, pos); return out end
    out[#out + 1] = sub(blob, pos, nl - 1)
    pos = nl + 1
  end
end
local PIECE = 2000  -- arguments per command: Lua's C stack holds a few thousand
-- Redis keeps what a script wrote before it raised: the addresses marked known, the
-- pages pushed, and the retry then skipped every address of the chunk as a repeat (its
-- recipients never stored, or stored and not counted: never sent). What can make the
-- writes raise (counters that are not integers, a last page missing that the total
-- says is part-filled, a key of another type: a hand edit, a bug) is refused first.
local function integer(v)
  return not v or v == '0' or (#v <= 18 and find(v, '^%-?[1-9]%d*$') ~= nil)
end
for key, kind in pairs({[KEYS[2]] = 'list', [KEYS[3]] = 'set', [KEYS[4]] = 'hash',
                        [KEYS[5]] = 'list'}) do
  local found = redis.call('TYPE', key).ok
  if found ~= kind and found ~= 'none' then
    return redis.error_reply(key .. ' is a ' .. found .. ': nothing appended')
  end
end
local counts = redis.call('HMGET', KEYS[4], 'total', 'queued')
for i, field in ipairs({'total', 'queued'}) do
  if not integer(counts[i]) then
    return redis.error_reply(KEYS[4] .. ' ' .. field .. ' is ' .. counts[i]
      .. ', not an integer: nothing appended')
  end
end
local total = tonumber(counts[1] or '0')
local room = (PAGE - total % PAGE) % PAGE  -- lines the last page still takes
if room > 0 and (redis.call('LLEN', KEYS[2]) == 0 or redis.call('LLEN', KEYS[5]) == 0) then
  return redis.error_reply(KEYS[4] .. ' total is ' .. total
    .. ' but the last page of its recipients is missing: nothing appended')
end
local out, count = {0}, n
if ARGV[2] == '1' then
  local ks = lines(keys)
  local known = {}
  for first = 1, n, PIECE do
    local last = math.min(n, first + PIECE - 1)
    local part = redis.call('SMISMEMBER', KEYS[3], unpack(ks, first, last))
    for i = 1, #part do
      if part[i] == 1 then
        known[first + i - 1] = true
        out[#out + 1] = first + i - 1
      end
    end
  end
  if #out > 1 then  -- keep the new ones
    local ds, new_keys, new_docs = lines(docs), {}, {}
    for i = 1, n do
      if not known[i] then
        new_keys[#new_keys + 1] = ks[i]
        new_docs[#new_docs + 1] = ds[i]
      end
    end
    ks, count = new_keys, #new_keys
    keys, docs = concat(new_keys, '\n'), concat(new_docs, '\n')
  end
  for first = 1, count, PIECE do
    redis.call('SADD', KEYS[3], unpack(ks, first, math.min(count, first + PIECE - 1)))
  end
end
if progress then
  redis.call('HSET', KEYS[1], 'filled', ARGV[7], 'filled_at', redis.call('TIME')[1])
end
if count == 0 then return out end
-- The end of the k-th line of a blob (its line break, or one past the end).
local function line_end(blob, k)
  local pos = 0
  for _ = 1, k do pos = find(blob, '\n', pos + 1, true) or #blob + 1 end
  return pos
end
local left = count
while left > 0 do
  local take = room > 0 and math.min(room, left) or math.min(PAGE, left)
  local k_end, d_end = #keys + 1, #docs + 1
  local k, d = keys, docs  -- (all of them: not cut, which hashes a copy of each byte)
  if take < left then
    k_end, d_end = line_end(keys, take), line_end(docs, take)
    k, d = sub(keys, 1, k_end - 1), sub(docs, 1, d_end - 1)
  end
  if room > 0 then
    redis.call('LSET', KEYS[5], -1, redis.call('LINDEX', KEYS[5], -1) .. '\n' .. k)
    redis.call('LSET', KEYS[2], -1, redis.call('LINDEX', KEYS[2], -1) .. '\n' .. d)
    room = 0
  else
    redis.call('RPUSH', KEYS[5], k)
    redis.call('RPUSH', KEYS[2], d)
  end
  keys, docs, left = sub(keys, k_end + 1), sub(docs, d_end + 1), left - take
end
out[1] = count
redis.call('HINCRBY', KEYS[4], 'total', count)
redis.call('HINCRBY', KEYS[4], 'queued', count)
return out
"""


def stored_recipient(recipient: Recipient) -> str:
    """How a recipient is stored: compact JSON text (orjson, and pydantic's encoder for
    the unusual value orjson cannot write). Its address key is stored beside it, in
    ``store.address_keys_key`` at the same position.

    Text, not bytes: a chunk's thousand small orjson bytes kept alive cost about 2.5 µs
    each to allocate on this machine; their str copies about 0.1 µs.
    """
    try:
        return orjson.dumps(recipient).decode()
    except TypeError:
        return RECIPIENT.dump_json(recipient).decode()


def stored_recipients(recipients: Sequence[Recipient]) -> str:
    """:func:`stored_recipient` of each, one a line, written by one orjson call (a call a
    recipient cost about 0.3 µs more): the recipients with a ``null`` between each two
    are an array whose separating ``,null,`` are the only ones, unless a recipient holds
    one itself (a null in a list in its vars), and then there are more of them.
    """
    spaced: list[Recipient | None] = [None] * (2 * len(recipients) - 1)
    spaced[::2] = recipients
    try:
        text = orjson.dumps(spaced)[1:-1]
    except TypeError:  # a value only pydantic's encoder writes
        return "\n".join(map(stored_recipient, recipients))
    if text.count(b",null,") != len(recipients) - 1:
        return "\n".join(map(stored_recipient, recipients))
    return text.replace(b",null,", b"\n").decode()


class RecipientAppender:
    """Appends checked recipients to a draft campaign, one address at most once.

    Each :meth:`add` is one atomic script call: it refuses to append once the campaign
    has left ``draft``, and skips an address the campaign already has (DESIGN §5: no
    recipient is sent the same campaign twice), which also makes a retried append safe.
    """

    def __init__(
        self, campaign_id: str, client: redis.Redis | None = None, *, filling: bool = False
    ) -> None:
        """Raises :class:`CampaignNotFoundError`, :class:`CampaignStateError`."""
        self.r = client or store.sync_client()
        self.campaign_id = campaign_id
        content = load_content(campaign_id, self.r)
        if not filling:
            self._check_open(get_status(campaign_id, self.r))
        try:
            provider: ProviderBase | None = load_provider(content.provider, self.r)
        except ProviderNotFoundError:
            provider = None  # the campaign pauses when it sends; recipients are still data
        self.checker = RecipientChecker(content, provider)
        self._keys = [
            store.campaign_key(campaign_id),
            store.recipients_key(campaign_id),
            store.addresses_key(campaign_id),
            store.counters_key(campaign_id),
            store.address_keys_key(campaign_id),
        ]
        self._script = self.r.register_script(_APPEND)
        # Filling a campaign create_campaign has just made: the addresses so far are all
        # here (and not in Redis: nothing else can append to it).
        self._seen: set[str] | None = set() if filling else None

    def know_stored(self) -> None:
        """Filling again after an interruption: the addresses stored so far count."""
        pages = self.r.lrange(store.address_keys_key(self.campaign_id), 0, -1)
        self._seen = {key for page in pages for key in str(page).split("\n")}

    def _check_open(self, status: CampaignStatus) -> None:
        if status is not CampaignStatus.DRAFT:
            raise CampaignStateError(
                f"campaign {self.campaign_id!r} is {status}: recipients can only be appended "
                "to a draft",
                field="status",
            )

    def add(
        self, recipients: Sequence[Recipient], progress: tuple[int, int] | None = None
    ) -> tuple[int, list[int]]:
        """Append ``recipients`` (checked); returns how many were appended and the
        positions (0-based, within ``recipients``) of those skipped as duplicates.

        ``progress``: filling, the positions in the campaign's posted list before and
        after these recipients (stored with them: a repeat of the request resumes there).
        Raises :class:`CampaignStateError` when the campaign has left ``draft``, or when
        another filler took the campaign over.
        """
        if not recipients and progress is None:
            return 0, []
        keys = suppression_keys([r["email"] for r in recipients])
        # An address twice (in the chunk, or for a campaign being filled in any chunk
        # before): the first one counts. ``kept``: the positions left (None: all).
        repeated: list[int] = []
        kept: list[int] | None = None
        known: set[str] = self._seen if self._seen is not None else set()
        fresh = set(keys)
        if len(fresh) == len(keys) and known.isdisjoint(fresh):
            if self._seen is not None:
                self._seen |= fresh
        else:
            kept = []
            for position, key in enumerate(keys):
                if key in known:
                    repeated.append(position)
                else:
                    known.add(key)
                    kept.append(position)
            keys = [keys[i] for i in kept]
            recipients = [recipients[i] for i in kept]
        if not keys and progress is None:
            return 0, repeated
        docs = stored_recipients(recipients)
        check = "1" if self._seen is None else "0"  # filled: every address is known here
        key_lines = "\n".join(keys)
        if key_lines.count("\n") != len(keys) - 1:  # an address with a line break
            key_lines = "\n".join(map(line_safe, keys))
        args: list[str | int] = [len(keys), check, key_lines, docs, PAGE]
        if progress is not None:
            args += [str(progress[0]), str(progress[1])]
        result = [int(x) for x in self._script(keys=self._keys, args=args)]
        if result[0] == -1:
            self._check_open(get_status(self.campaign_id, self.r))
        if result[0] == -2:
            raise CampaignStateError(
                f"campaign {self.campaign_id!r} is being filled by another request",
                field="status",
            )
        stored = [p - 1 if kept is None else kept[p - 1] for p in result[1:]]
        return result[0], sorted(stored + repeated)


def append_recipients(
    campaign_id: str, recipients: Iterable[Recipient], *, client: redis.Redis | None = None
) -> int:
    """Append recipients to a draft campaign, streaming in chunks; returns how many were
    appended (addresses the campaign already has are skipped).

    The recipients are taken as they are: an inline list of ``POST /v1/campaigns`` was
    checked with the campaign (``validate_content``), and an address that cannot be sent
    to fails alone at send time (``SMTP invalid email ID``). The streamed append checks
    each one first (:class:`RecipientChecker`) to report it by line. Raises
    :class:`CampaignNotFoundError`, :class:`CampaignStateError` if it has started.
    """
    appender = RecipientAppender(campaign_id, client)
    count = 0
    for chunk in chunks(recipients, APPEND_CHUNK):
        count += appender.add(chunk)[0]
    return count


def chunks(items: Iterable[Recipient], size: int) -> Iterator[list[Recipient]]:
    if isinstance(items, list):  # sliced: no step per recipient
        for start in range(0, len(items), size):
            yield items[start : start + size]
        return
    chunk: list[Recipient] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
