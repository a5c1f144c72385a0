"""Claims a batch run took and did not attempt, given back to wait for a later send."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence

from dispatch.batch_items import Item
from dispatch.ledger import LeaseLostError, LedgerWriter, Records, claim_record
from dispatch.models import MessageState

log = logging.getLogger(__name__)


async def give_back_claims(
    writer: LedgerWriter,
    items: Iterable[Item],
    detail: str = "claimed, not attempted: the batch stopped first",
) -> None:
    """Those of ``items`` the load claimed and this run did not attempt (it paused, no
    connection slot came, it failed first, it must wait) wait to be sent again, as after
    a configuration error: a claim left behind would read as a lost send. They are
    marked unclaimed at once, before the write: a sender of the batch that takes one
    meanwhile claims it again, in the same writer's order, after this write. Their
    throttled tries are kept (a chunk claimed by its sender, then given back for a lost
    connection slot: sending.BatchSender._unclaim; a run cut short counts one)."""
    left = [item for item in items if item.claimed]
    if left:
        for item in left:
            item.claimed = False
        made = Records()
        await writer.give_back_many(
            [
                (
                    i.seq,
                    made.get(MessageState.RETRY, i.attempts, detail=detail, throttles=i.throttles),
                    "",
                )
                for i in left
            ]
        )


# How long a run that failed keeps trying to give back the claims it did not attempt
# while Redis does not answer (at most half its lease's TTL: see
# give_back_after_failure).
GIVE_BACK_SECONDS = 10.0


async def give_back_after_failure(
    writer: LedgerWriter,
    items: list[Item],
    lease_ttl_ms: int,
    outcomes: Sequence[tuple[int, bytes, str]] = (),
) -> None:
    """Give back the claims of ``items`` (the run's) that this run never attempted, once
    Redis answers again (its error ended the run): claimed by the load, or by a claim
    whose answer was lost, they would be recorded ``unknown`` by the next run, never
    sent. So would the messages it sent whose ``outcomes`` it could not record (the
    error came then): they are written too, only over a record still unsettled (one
    the failed write did record stays as it is: written once, counted once).

    Safe whatever happened meanwhile: the write is fenced by this run's lease (taken
    over by another run, or expired, it writes nothing), and it only moves a record
    that is still ``claimed``. Under the lease nobody else claims the run's messages (a
    dead worker's claims, recorded ``unknown`` by the run, are not among ``items``), so
    a claim there is this run's, and not attempted; a message given back already, never
    claimed, or settled (by a cancel too) stays as it is. Gives up after
    :data:`GIVE_BACK_SECONDS` or half the lease's TTL.
    """
    left = [item for item in items if not item.attempted]
    if not left and not outcomes:
        return
    made = Records()
    detail = "claimed, not attempted: the batch stopped first"
    writes = [
        (i.seq, made.get(MessageState.RETRY, i.attempts, detail=detail, throttles=i.throttles), "")
        for i in left
    ]
    deadline = time.monotonic() + min(GIVE_BACK_SECONDS, lease_ttl_ms / 2000)
    pause = 0.05
    while True:
        try:
            if outcomes:
                await writer.put_unsettled_many(outcomes)
                outcomes = ()  # (a retry written again would count twice in /metrics)
            await writer.give_back_many(writes)
            for item in left:
                item.claimed = False
            return
        except LeaseLostError:
            return
        except Exception:
            if time.monotonic() + pause > deadline:
                claims = await _unclaim_first_tries(writer, left)
                if claims != 0:
                    log.warning(
                        "%s: could not give back %s claims of a failed batch run (the "
                        "next run records them unknown)",
                        writer.keys[0],
                        f"up to {len(left)}" if claims is None else claims,
                        extra={"batch": writer.batch, "provider": writer.provider},
                    )
                return
        await asyncio.sleep(pause)
        pause = min(pause * 2, 1.0)


# Under the run's lease (KEYS[2] holding ARGV[1]): deletes the records of the first
# ARGV[3] seqs after it that are still a first try's claim (ARGV[2]), and counts the
# other seqs' records that are still claims. {-1, 0}: the lease is not the run's.
_UNCLAIM = r"""
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {-1, 0} end
local last_fresh = 3 + tonumber(ARGV[3])
local deleted, claimed = 0, 0
for i = 4, #ARGV do
  local rec = redis.call('HGET', KEYS[1], ARGV[i])
  if rec and i <= last_fresh and rec == ARGV[2] then
    deleted = deleted + redis.call('HDEL', KEYS[1], ARGV[i])
  elseif rec and string.find(rec, '"s":"claimed"', 1, true) then
    claimed = claimed + 1
  end
end
return {deleted, claimed}
"""


async def _unclaim_first_tries(writer: LedgerWriter, items: list[Item]) -> int | None:
    """When the give-back failed: delete the claims of those of ``items`` whose claim is
    of a first try no earlier try marked (nothing is lost with such a record: a message
    never tried has none, and its counts do not change, queued counts claims). Redis at
    its memory limit (noeviction) refuses every write that may grow memory, the
    give-back's too, but takes deletions. Fenced by the run's lease like the give-back.

    Returns how many of ``items`` are still claimed in the ledger (the next run records
    them ``unknown``: claims of messages tried before), or None when Redis refused this
    too or the lease is gone (any of them may be)."""
    fresh: list[Item] = []
    others: list[Item] = []
    for item in items:
        (others if item.attempts or item.throttles or item.detail else fresh).append(item)
    ledger, lease = writer.keys[0], writer.keys[3]  # (LedgerWriter's keys: ledger, ..., lease)
    args: list[str | bytes | int] = [writer.token, claim_record(1), len(fresh)]
    args += [i.seq for i in fresh] + [i.seq for i in others]
    try:
        deleted, claimed = await writer.client.eval(_UNCLAIM, 2, ledger, lease, *args)
    except Exception:  # Redis still refuses, or is gone
        return None
    if int(deleted) < 0:
        return None
    for item in fresh:
        item.claimed = False
    if int(deleted):
        log.warning(
            "%s: Redis refused the give-back of a failed batch run's claims; %d first "
            "tries went back by deleting their claims",
            writer.keys[0],
            int(deleted),
            extra={"batch": writer.batch, "provider": writer.provider},
        )
    return int(claimed)


# Why a message the load claimed went back to waiting (its record, until it is claimed
# again): nothing waits claimed for a connection slot or the provider's pace, since a
# worker killed meanwhile would leave a claim that reads as a lost send (``unknown``).
WAITED = "claimed, not attempted: given back while the batch waited for its turn"
