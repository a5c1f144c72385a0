"""Review M2: nothing waits claimed, with a real worker killed (-9) while it waits.

DESIGN §5/§7: ``unknown`` only for a send whose outcome was really lost. A batch that
goes out as one chunk is claimed by its load; whatever of it is not on the wire must
not read as lost when its worker dies.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from dispatch import campaigns, store
from dispatch.ledger import parse_record
from dispatch.models import CampaignRequest
from dispatch.redis_server import RedisServer
from dispatch.settings import get_settings
from tests.helpers import http_provider, recipients, run_batches
from tests.http_sink import HttpSink, Reply
from tests.worker import WorkerProcess, batch_enqueuer, wait_for, wait_for_queues


@pytest.fixture
def own_stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RedisServer, redis.Redis]]:
    """A Redis of the test's own (a worker on it runs only this test's batches)."""
    server = RedisServer().start()
    monkeypatch.setenv("DISPATCH_REDIS_URL", server.url)
    get_settings.cache_clear()
    store.reset_clients()
    r = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        yield server, r
    finally:
        r.close()
        server.stop()
        monkeypatch.undo()
        get_settings.cache_clear()
        store.reset_clients()


def _states(r: redis.Redis, cid: str, total: int) -> Counter[str]:
    ledger = r.hgetall(store.ledger_key(cid))
    out: Counter[str] = Counter()
    for seq in range(total):
        rec = parse_record(ledger.get(str(seq)))
        out[rec["state"] if rec else "queued"] += 1
    return out


@pytest.mark.integration
def test_the_rest_of_a_partial_grant_does_not_wait_claimed_while_the_granted_part_sends(
    own_stack: tuple[RedisServer, redis.Redis],
) -> None:
    """The day's quota leaves 10 of a 50-message one-chunk batch: the 10 go out (the
    ESP answers slowly) and the worker is killed meanwhile. Only those 10 may be
    ``unknown``: the 40 that waited for tomorrow's quota were never handed over."""
    server, r = own_stack
    worker = WorkerProcess(server.url, concurrency=1).start()
    try:
        with HttpSink(Reply(200, delay=30)) as sink:
            wait_for_queues(r)
            http_provider(r, sink.url, daily_quota=10, timeout=60)
            body = {"provider": "esp", "subject": "s", "html": "h", "recipients": recipients(50)}
            cid, _ = campaigns.create_campaign(
                CampaignRequest.model_validate(body), client=r, enqueue=batch_enqueuer(server.url)
            )
            wait_for(lambda: len(sink.requests) == 1, timeout=30)
            assert len(sink.requests[0].json()["msgs"]) == 10
            assert worker.proc is not None
            worker.proc.send_signal(signal.SIGKILL)
            worker.proc.wait()
            # The dead worker's lease lapses (FAST_ENV's TTL); the batch runs again here.
            wait_for(lambda: not r.exists(store.batch_lease_key(cid, 0)), timeout=10)
            run_batches([(cid, 0)])
            states = _states(r, cid, 50)
            assert states["unknown"] == 10, states
            assert states["retry"] + states["queued"] == 40, states
            summary = campaigns.campaign_summary(cid, r)
            assert summary["status"] == "paused" and summary["queued"] == 40, summary
            assert len(sink.requests) == 1  # nothing more went out
    finally:
        worker.stop()
