"""What Redis keeps for good is planned for: the README's Redis memory section names the
suppression list and the opt-outs (per address, never purged) with figures that hold on
a real Redis (review N24: the plan listed only the retention period's recipients and the
stream, so a year of bounces and unsubscribes grew Redis past it unannounced)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import redis

from dispatch import effects, store, suppressions
from providers.callbacks import EventType

README = Path(__file__).resolve().parents[1] / "README.md"
N = 10_000


def _memory_section() -> str:
    text = " ".join(README.read_text().split())
    start = text.index("**Redis memory.**")
    return text[start : text.index("**Is a worker taking tasks?**", start)]


def _figure(section: str, pattern: str) -> int:
    found = re.search(pattern, section)
    assert found, pattern
    return int(found.group(1))


def test_the_plan_names_the_suppression_list_and_opt_outs_with_figures_that_hold(
    redis_client: redis.Redis,
) -> None:
    section = _memory_section()
    assert "Plan Redis for" in section
    plan = section[section.index("Plan Redis for") :].split("noeviction")[0]
    assert "suppression list" in plan and "opt-outs" in plan
    by_hand = _figure(section, r"about (\d+) bytes an entry added by hand")
    by_callback = _figure(section, r"(\d+) one a callback made")
    opt_out = _figure(section, r"(\d+) an address for each category")

    r = redis_client
    emails = [f"user{i:07d}@example.com" for i in range(N)]  # 23 characters, as measured
    suppressions.add_many(emails, reason="manual", source="api", client=r)
    assert r.hlen(store.SUPPRESSIONS_HASH) == N
    per_entry = (r.memory_usage(store.SUPPRESSIONS_HASH) or 0) / N
    assert 0.8 * by_hand <= per_entry <= 1.1 * by_hand

    r.delete(store.SUPPRESSIONS_HASH)
    pipe = r.pipeline(transaction=False)
    for i, email in enumerate(emails):
        event = effects.InboxEvent(
            type=EventType.HARD_BOUNCE,
            provider_type="Permanent",
            email=email,
            meta=f"{email}|1|campaign-2026-11-25|20261125|0|default|{i}|",
            campaign_id="campaign-2026-11-25",
            description="smtp; 550 5.1.1 user unknown",
            dedupe=str(i),
        )
        pipe.hset(
            store.SUPPRESSIONS_HASH,
            *effects.suppression_entry(event, provider="ses", received=time.time()),
        )
    pipe.execute()
    per_entry = (r.memory_usage(store.SUPPRESSIONS_HASH) or 0) / N
    assert 0.8 * by_callback <= per_entry <= 1.1 * by_callback

    r.sadd(store.optout_key("news"), *emails)
    per_address = (r.memory_usage(store.optout_key("news")) or 0) / N
    assert 0.8 * opt_out <= per_address <= 1.1 * opt_out
