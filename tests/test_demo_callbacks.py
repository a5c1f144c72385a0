"""``replay_callbacks``: the demo's callback replay against the real app and worker."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
import redis

from dispatch import campaign_reads, campaigns, suppressions
from dispatch.demo_callbacks import plan_events, replay_callbacks
from dispatch.models import CampaignRequest
from tests.api_server import ApiServer
from tests.callback_support import callback_entries, callback_path, inbox_empty
from tests.conftest import API_TOKEN
from tests.helpers import recipients, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.worker import WorkerProcess, wait_for


def test_plan_is_repeatable_and_realistic() -> None:
    pairs = [(f"m{i}|", f"u{i}@example.com") for i in range(2000)]
    plan = plan_events(pairs)
    kinds = Counter(e["type"] for e in plan)

    assert [e["type"] for e in plan_events(pairs)] == [e["type"] for e in plan]
    assert kinds["delivered"] > 0.9 * 2000 * 0.95
    assert all(kinds[k] > 0 for k in ("hard_bounce", "soft_bounce", "spam", "unsubscribed",
                                      "clicked"))  # fmt: skip
    bounced = {e["email"] for e in plan if e["type"].endswith("bounce")}
    delivered = {e["email"] for e in plan if e["type"] == "delivered"}
    assert not bounced & delivered


def test_replay_for_a_sent_campaign(
    api_server: ApiServer, celery_worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port, nickname="demo-smtp")
        request = CampaignRequest.model_validate(
            {"id": "c-demo", "provider": "demo-smtp", "subject": "s", "html": "h",
             "recipients": recipients(1200)}
        )  # fmt: skip
        campaigns.create_campaign(request, client=redis_client)
        wait_for(lambda: campaign_reads.get_status("c-demo", redis_client).value == "completed")
        sent = [(m.message["X-CleverTap_META"], m.rcpt_tos[0]) for m in smtp.messages]
    callback_url = api_server.url + callback_path(redis_client, "demo-smtp")

    result = replay_callbacks(api_server.url, "c-demo", "demo-smtp", callback_url, sent,
                              api_token=API_TOKEN, wait_seconds=5)  # fmt: skip

    assert result["accepted"] and len(result["requests"]) == 2  # at most 1000 events each
    assert sum(r["events"] for r in result["requests"]) == sum(result["posted"].values())
    assert all(r["answer"]["status"] == "success" for r in result["requests"])
    wait_for(lambda: inbox_empty(redis_client), timeout=60)
    counters = campaign_reads.get_counters("c-demo", redis_client)
    posted = result["posted"]
    assert counters["delivered"] == posted["delivered"]
    assert counters["hard_bounced"] == posted["hard_bounce"]
    assert counters["clicked"] == posted["clicked"]
    assert len(callback_entries(redis_client)) == sum(posted.values()) + posted["hard_bounce"]
    hard = [e for e in callback_entries(redis_client) if e["properties"]["Callback Type"] ==
            "hard_bounce"]  # fmt: skip
    assert all(suppressions.get(e["email"], client=redis_client) for e in hard)
    # The campaigns route may not be mounted: then the replay reports no counters.
    assert result["counters"] is None or result["counters_match"]


def test_replay_reports_refusals(api_server: ApiServer, redis_client: redis.Redis) -> None:
    smtp_provider(redis_client, 2525, nickname="demo-smtp")
    bad_url = api_server.url + callback_path(redis_client, "demo-smtp") + "x"

    result = replay_callbacks(api_server.url, "c-none", "demo-smtp", bad_url,
                              [("m|", "a@example.com")], wait_seconds=0)  # fmt: skip

    assert not result["accepted"] and result["requests"][0]["status"] == 400


def test_unreachable_api_gives_no_counters() -> None:
    result = replay_callbacks("http://127.0.0.1:9", "c", "p", "http://127.0.0.1:9/x", [])
    assert result["counters"] is None and result["requests"] == []

    with pytest.raises(httpx.HTTPError):
        replay_callbacks("http://127.0.0.1:9", "c", "p", "http://127.0.0.1:9/x", [("m|", "a@b.c")])
