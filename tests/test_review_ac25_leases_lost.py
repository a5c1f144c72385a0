"""Review AC25: a batch run whose lease lapsed under it (its process stalled past
DISPATCH_LEASE_TTL_MS) is counted in /metrics and fires an alert. It was a WARNING line
only: operators saw its messages end ``unknown`` (DispatchMessagesUnknown, whose advice is
a provider's timeout or a killed worker), nothing said that workers stall past the lease."""

from __future__ import annotations

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from dispatch import store, tasks
from tests.api_server import ApiServer
from tests.helpers import create_held, http_provider, recipients
from tests.http_sink import HttpSink
from tests.test_oncall import Watch, _scrape
from tests.test_review_i25_lease_lost import Lapse

LOST = "dispatch_batch_leases_lost_total"


def _lost(api_server: ApiServer) -> list[tuple[dict[str, str], float]]:
    """The counter's samples in a real scrape: its labels (none) and value."""
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(_scrape(api_server))
        for sample in family.samples
        if sample.name == LOST
    ]


def test_a_run_that_lost_its_lease_is_counted_and_fires_an_alert(
    api_server: ApiServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks.send_batch, "apply_async", lambda *args, **kwargs: None)
    watch = Watch(api_server)
    watch.scrape()
    # There from the first scrape, at 0: increase() counts nothing in a series' first sample.
    assert _lost(api_server) == [({}, 0.0)]
    lapse = Lapse(redis_client)
    with HttpSink(answer=lapse) as sink:
        http_provider(redis_client, sink.url, batch_size=1, max_connections=1)
        body = {"provider": "esp", "subject": "s", "html": "h", "recipients": recipients(3)}
        campaign_id, _ = create_held(redis_client, body)
        lapse.key = store.batch_lease_key(campaign_id, 0)
        # Before, the run was logged only (a WARNING), the counter did not exist.
        assert tasks.send_batch(campaign_id, 0) == {"lease_lost": True}
        assert len(sink.requests) == 1

    assert _lost(api_server) == [({}, 1.0)]
    watch.scrape()
    firing = watch.firing()
    assert list(firing["DispatchBatchLeasesLost"].values()) == [1.0]
