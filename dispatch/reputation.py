"""The reputation guard: a running campaign whose hard bounces or spam complaints climb
past a safe share of what it sent pauses itself.

A list gone stale (hard bounces) or mail its recipients did not want (complaints) hurts
the sender's reputation with every further message: Gmail and Yahoo want complaints kept
under 0.1 % and never at 0.3 % (reference §6), and ESPs review accounts whose bounces pass
a few percent (SES: 5 %). Once at least
``DISPATCH_PAUSE_MIN_SENT`` messages of a campaign were sent, a callback batch that takes
its ``hard_bounced`` past ``DISPATCH_PAUSE_HARD_BOUNCE_RATE`` of ``sent``, or its ``spam``
past ``DISPATCH_PAUSE_SPAM_RATE``, pauses it with the figures as the reason (a rate of 0
turns that check off). Messages the provider did not try, to addresses on its own
suppression list (SES ``OnAccountSuppressionList``), count in neither the rates nor
``sent``: the provider does not hold them against the sender, and a list moved to it with
many such addresses is no sign of a stale list (their addresses are suppressed here).
Resuming it is a person's decision that the list is fine: the guard then stands down for
that campaign.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis

from dispatch import beat_pass, incidents, store
from dispatch.settings import get_settings

log = logging.getLogger(__name__)

# The campaign hash's ``guard`` field: "paused" while the guard holds it, "off" once a
# person resumed it after that.
_PAUSE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HGET', KEYS[1], 'guard') == 'off' then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'status', 'paused', 'reason', ARGV[1], 'status_at', t[1],
  'guard', 'paused')
return 1
"""

_STAND_DOWN = """
if redis.call('HGET', KEYS[1], 'guard') == 'paused' then
  redis.call('HSET', KEYS[1], 'guard', 'off')
end
"""


# The counter beside a guarded one that also counts its messages the provider did not try
# (an address on its own suppression list: ``dispatch.effects.InboxEvent.not_attempted``),
# which the guard leaves out; not one of the campaign's counters (DESIGN §5).
NOT_ATTEMPTED = {"hard_bounced": "hard_bounced_not_attempted", "spam": "spam_not_attempted"}
_READ = ("sent", *NOT_ATTEMPTED, *NOT_ATTEMPTED.values())  # the counters the guard reads


def _reason(counters: dict[str, int]) -> str:
    """Why the campaign must pause, or "" when it need not."""
    settings = get_settings()
    untried = {name: counters.get(untried, 0) for name, untried in NOT_ATTEMPTED.items()}
    skipped = sum(untried.values())
    sent = max(counters["sent"] - skipped, 0)
    if sent <= 0 or sent < settings.pause_min_sent:
        return ""
    checks = (
        ("hard bounces", "hard_bounced", settings.pause_hard_bounce_rate,
         "DISPATCH_PAUSE_HARD_BOUNCE_RATE"),
        ("spam complaints", "spam", settings.pause_spam_rate, "DISPATCH_PAUSE_SPAM_RATE"),
    )  # fmt: skip
    for what, name, limit, setting in checks:
        count = max(counters[name] - untried[name], 0)
        if limit > 0 and count / sent > limit:
            untried_note = (
                f", not counting {skipped:,} to addresses on the provider's own suppression "
                "list (it did not try them)"
                if skipped
                else ""
            )
            rate, shown_limit = _percents(count / sent, limit)
            return (
                f"reputation guard: {what} are {rate} of the {sent:,} messages "
                f"sent ({count:,}){untried_note}, above {setting} {shown_limit}; check the "
                "list, then resume (the guard then stands down for this campaign)"
            )
    return ""


def _percents(rate: float, limit: float) -> tuple[str, str]:
    """``rate`` and ``limit`` as percentages, with the decimals (2 or more) that show the
    limit as set and the rate above it: the guard pauses as soon as a rate passes its
    limit, so at 2 decimals a campaign of 100,000 read "0.30% ... above 0.30%"."""
    for digits in range(2, 7):
        shown = f"{rate:.{digits}%}", f"{limit:.{digits}%}"
        if shown[0] != shown[1] and float(shown[1][:-1]) == round(limit * 100, 6):
            break
    return shown


def check(r: redis.Redis, campaign_ids: Iterable[str]) -> list[str]:
    """Pause the running campaigns of ``campaign_ids`` that are past a limit; their ids."""
    ids = sorted(set(campaign_ids))
    if not ids:
        return []
    pipe = r.pipeline(transaction=False)
    for campaign_id in ids:
        pipe.hmget(store.counters_key(campaign_id), _READ)
    paused = []
    # (An error is given to its campaign, not raised: each is judged on its own.)
    for campaign_id, values in zip(ids, pipe.execute(raise_on_error=False), strict=True):
        with beat_pass.skipped_on_error(log, "reputation guard", campaign_id, r):
            if _pause_if_past(r, campaign_id, values):
                paused.append(campaign_id)
    return paused


def _pause_if_past(r: redis.Redis, campaign_id: str, values: list[str | None] | Exception) -> bool:
    """Pause one campaign of :func:`check` (``values``: its counters as read) if it is past
    a limit; whether it paused. Raises what it cannot read."""
    if isinstance(values, Exception):
        raise values
    reason = _reason({name: int(v or 0) for name, v in zip(_READ, values, strict=True)})
    if not reason or not r.eval(_PAUSE, 1, store.campaign_key(campaign_id), reason):
        return False
    provider = str(r.hget(store.campaign_key(campaign_id), "provider") or "")
    incidents.paused_sync(r, campaign_id, provider, incidents.PauseKind.REPUTATION, reason)
    return True


def stand_down(r: redis.Redis, campaign_id: str) -> None:
    """A person resumed a campaign the guard paused: the guard leaves it alone."""
    r.eval(_STAND_DOWN, 1, store.campaign_key(campaign_id))
