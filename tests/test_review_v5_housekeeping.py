"""Beat's housekeeping when two sweeps meet (review V5): two beat processes by mistake, or
a rolling restart, send ``dispatch.housekeeping`` twice a period, and two workers run the
sweeps at once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pytest
import redis

from dispatch import housekeeping, store
from tests.helpers import create_held, recipients, smtp_provider


def _stalled(r: redis.Redis, n: int) -> tuple[str, list[tuple[str, int]]]:
    """A running campaign whose batch tasks were lost long ago (no worker ever ran one)."""
    smtp_provider(r, 2525)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(n)}
    campaign_id, lost = create_held(r, body)
    r.hset(store.campaign_key(campaign_id), "started_at", str(time.time() - 10_000))
    return campaign_id, lost


def _meanwhile(monkeypatch: pytest.MonkeyPatch, act: Callable[[], object]) -> None:
    """``act()`` runs once, after the sweep read its campaigns and before it restarts one
    (where it asks whether a batch of it runs)."""
    real = housekeeping._batch_runs
    pending = [act]

    def batch_runs(r: redis.Redis, campaign_id: str) -> bool:
        if pending:
            pending.pop()()
        return real(r, campaign_id)

    monkeypatch.setattr(housekeeping, "_batch_runs", batch_runs)


def test_two_sweeps_at_once_enqueue_a_stalled_campaign_once(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both read it stalled and both enqueued every batch again: each batch twice (a
    # million-recipient campaign, a thousand tasks more) and the restart counted twice.
    campaign_id, lost = _stalled(redis_client, 2500)
    enqueued: list[tuple[str, int]] = []
    results: list[dict[str, list[str]]] = []

    def other_sweep() -> None:
        results.append(housekeeping.sweep(redis_client, lambda c, b: enqueued.append((c, b))))

    _meanwhile(monkeypatch, other_sweep)
    first = housekeeping.sweep(redis_client, lambda c, b: enqueued.append((c, b)))
    assert sorted(enqueued) == sorted(lost)  # each batch once
    assert Counter(campaign_id in r["restarted"] for r in [first, *results])[True] == 1
    assert redis_client.hget(store.INCIDENTS_HASH, "restarted") == "1"


def test_a_campaign_that_moves_while_the_sweep_runs_is_not_restarted(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read quiet, then a batch wrote (a worker took the task up) or a person paused it:
    # the sweep acts on what is, not on what it read.
    campaign_id, _ = _stalled(redis_client, 10)
    key = store.campaign_key(campaign_id)
    enqueued: list[tuple[str, int]] = []
    for field, value in (("progress_at", str(time.time())), ("status", "paused")):
        redis_client.hset(key, mapping={"status": "running", "progress_at": "1000"})
        _meanwhile(monkeypatch, lambda f=field, v=value: redis_client.hset(key, f, v))
        done = housekeeping.sweep(redis_client, lambda c, b: enqueued.append((c, b)))
        assert (done["restarted"], enqueued) == ([], []), field
        assert redis_client.hget(key, field) == value  # (as it changed, not overwritten)
