"""A provider's retry hint is foreign data: it never parks a message for ever."""

from __future__ import annotations

import math

import pytest

from dispatch.batch_items import LoadedBatch, unsettled
from dispatch.batch_outcomes import backoff_delay
from dispatch.settings import Settings
from providers.http import MAX_RETRY_AFTER

SETTINGS = Settings(retry_base_seconds=2, retry_max_seconds=600, inline_retry_seconds=30)


@pytest.mark.parametrize("hint", [math.inf, math.nan, 1e400, 10.0**12])
def test_an_absurd_hint_gives_a_bounded_delay(hint: float) -> None:
    delay = backoff_delay(1, SETTINGS, hint)
    assert math.isfinite(delay) and 1.0 <= delay <= MAX_RETRY_AFTER


def test_a_reasonable_hint_is_honoured() -> None:
    assert backoff_delay(1, SETTINGS, 120.0) == 120.0


def test_a_retry_record_without_a_time_is_due_now() -> None:
    """A record stored with ``"n": null`` (an infinite hint once became that) is sent
    again instead of failing the batch run, and every run after it."""
    loaded = LoadedBatch(
        seqs=[0, 1],
        records={0: '{"s":"retry","a":1,"n":null}', 1: '{"s":"retry","a":1}'},
        recipients=[{"email": "a@example.com"}, {"email": "b@example.com"}],
        suppressed=set(),
    )
    items, stale, retry_at = unsettled(loaded, SETTINGS)
    assert [i.seq for i in items] == [0, 1] and stale == [] and retry_at is None
