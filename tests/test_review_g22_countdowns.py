"""A batch task never hands itself back with a countdown past the broker's visibility
timeout (DESIGN §7, PITFALLS: Redis would hand the waiting task out a second time)."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from dispatch import store, tasks
from dispatch.settings import get_settings
from tests.helpers import create_held, http_provider, recipients
from tests.http_sink import HttpSink


def test_a_batch_held_elsewhere_comes_back_within_the_visibility_timeout(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its lease held by another run for long, the batch polls less and less often, at
    most until that lease would lapse: a minute and a second at the default lease,
    longer than DISPATCH_VISIBILITY_TIMEOUT=60 (allowed). It now comes back within a
    quarter of the visibility timeout, as a batch waiting for a retry does."""
    monkeypatch.setenv("DISPATCH_VISIBILITY_TIMEOUT", "60")
    get_settings.cache_clear()
    handed: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(
        tasks.send_batch, "apply_async", lambda *args, **kwargs: handed.append((args, kwargs))
    )
    with HttpSink() as sink:
        http_provider(redis_client, sink.url)
        body = {"provider": "esp", "subject": "s", "html": "h", "recipients": recipients(1)}
        campaign_id, _ = create_held(redis_client, body)
        redis_client.set(store.batch_lease_key(campaign_id, 0), "another-run", px=60_000)
        assert tasks.send_batch(campaign_id, 0, busy_polls=10) == {"busy": True}
        assert sink.requests == []
    ((args, options),) = handed
    assert args == ((campaign_id, 0), {"busy_polls": 11})
    assert 0 < options["countdown"] <= 60 / 4
