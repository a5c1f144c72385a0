"""Loops over the suppression list, the campaigns and their batches in rounds, driven
past one round (review R25): each constant made small, with the sizes around it, so
that a second round and a partly filled last one are exercised."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis

from dispatch import housekeeping, metrics, store, suppressions
from dispatch.api import suppressions as api_suppressions
from tests.helpers import create_held, recipients, smtp_provider


@pytest.mark.parametrize("n", [3, 6, 7, 5])
def test_an_import_adds_every_round_and_counts_a_repeat_in_a_later_one(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    monkeypatch.setattr(suppressions, "CHUNK", 3)
    suppressions.add(f"u{n - 1}@example.com", reason="manual", source="cli", client=redis_client)
    emails = [f"u{i}@example.com" for i in range(n)]
    emails[1:1] = ["not an address"]
    emails.append("U0@Example.com")  # u0 again, in the last round
    bad: list[int] = []
    added, already = suppressions.add_many(
        emails, reason="bounced", source="cli", client=redis_client,
        invalid=lambda at, email, exc: bad.append(at),
    )  # fmt: skip
    assert (added, already, bad) == (n - 1, 2, [2])
    entries = list(suppressions.iter_entries(client=redis_client))
    assert sorted(e["email"] for e in entries) == sorted(f"u{i}@example.com" for i in range(n))
    assert redis_client.hlen(store.SUPPRESSIONS_HASH) == n


def test_the_api_import_names_each_bad_item_by_its_line_in_every_round(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(suppressions, "CHUNK", 3)
    lines = []
    for i in range(10):
        lines.append(b'{"email": "nope%d"}' % i if i % 4 == 1 else b'{"email": "a%d@x.org"}' % i)
    body = b"\n".join(lines) + b"\n"

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    result = asyncio.run(api_suppressions._import(chunks(), "manual", "api"))
    assert (result.added, result.invalid) == (7, 3)
    assert [e.line for e in result.errors] == [2, 6, 10]
    assert redis_client.hlen(store.SUPPRESSIONS_HASH) == 7


def _running(r: redis.Redis, count: int, size: int) -> list[str]:
    smtp_provider(r, 2525)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(size)}
    return [create_held(r, body)[0] for _ in range(count)]


@pytest.mark.parametrize("count", [2, 4, 5])
def test_a_sweep_restarts_every_stalled_campaign_read_in_rounds(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    monkeypatch.setattr(housekeeping, "CAMPAIGNS_PER_READ", 2)
    monkeypatch.setattr(housekeeping, "LEASES_PER_READ", 2)
    cids = _running(redis_client, count, 5)
    for cid in cids:
        redis_client.hset(store.campaign_key(cid), "batch_size", 1)  # five batches each
    # A worker holds the last batch of the last campaign: in the third round of leases.
    redis_client.set(store.batch_lease_key(cids[-1], 4), "token", ex=60)
    enqueued: list[tuple[str, int]] = []
    later = time.time() + 3600
    done = housekeeping.sweep(redis_client, lambda c, b: enqueued.append((c, b)), now=later)
    assert sorted(done["restarted"]) == sorted(cids[:-1])
    assert sorted(enqueued) == sorted((cid, b) for cid in cids[:-1] for b in range(5))


@pytest.mark.parametrize("count", [2, 4, 5])
def test_metrics_count_the_status_of_every_active_campaign(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    monkeypatch.setattr(metrics, "_STATUS_CHUNK", 2)
    cids = _running(redis_client, count, 1)
    redis_client.hset(store.campaign_key(cids[0]), "status", "paused")
    counts = metrics._campaign_statuses(redis_client, [])
    assert (counts.get("running"), counts.get("paused")) == (count - 1, 1)
