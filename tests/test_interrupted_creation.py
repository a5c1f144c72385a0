"""A campaign posted with its list whose storing stops half-way (Redis fails, the API
process dies) is not completed as if its list were whole: what is stored sends, and a
repeat of the same request stores the rest, each address once (DESIGN §5)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import redis

from dispatch import campaign_reads, campaigns, store
from dispatch.campaigns import INTERRUPTED_REASON
from dispatch.models import CampaignRequest
from dispatch.recipient_append import RecipientAppender
from tests.helpers import recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer

N = 3500  # four batches of 1000


def request() -> CampaignRequest:
    people = recipients(N)
    people[3000] = {**people[3000], "email": "user5@example.com"}  # twice in the list
    body = {"id": "big1", "provider": "local", "subject": "s", "html": "h", "recipients": people}
    return CampaignRequest.model_validate(body)


def failing_after(chunks: int, error: BaseException) -> Any:
    """RecipientAppender.add that fails on its call ``chunks + 1``."""
    real = RecipientAppender.add
    calls = {"n": 0}

    def add(self: RecipientAppender, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > chunks:
            raise error
        return real(self, *args, **kwargs)

    return add


def create(r: redis.Redis, batches: list[tuple[str, int]]) -> tuple[str, bool]:
    def enqueue(campaign_id: str, batch: int) -> None:
        batches.append((campaign_id, batch))

    return campaigns.create_campaign(request(), client=r, enqueue=enqueue)


def received(smtp: SmtpTestServer) -> Counter[str]:
    return Counter(m.rcpt_tos[0] for m in smtp.messages)


def test_a_failure_half_way_sends_what_is_stored_and_a_repeat_stores_the_rest(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    smtp_provider(redis_client, smtp.port)
    batches: list[tuple[str, int]] = []
    monkeypatch.setattr(RecipientAppender, "add", failing_after(2, redis.ConnectionError("gone")))
    with pytest.raises(redis.ConnectionError):
        create(redis_client, batches)
    monkeypatch.undo()

    run_batches(batches)
    summary = campaign_reads.campaign_summary("big1", redis_client)
    # Not completed with two thirds of its list: it waits, and says why.
    assert (summary["status"], summary["total"], summary["sent"]) == ("running", 2000, 2000)
    assert summary["reason"] == INTERRUPTED_REASON
    assert not campaigns.finish_if_done("big1", redis_client)

    batches.clear()
    assert create(redis_client, batches) == ("big1", False)  # the client's retry
    run_batches(batches)
    summary = campaign_reads.campaign_summary("big1", redis_client)
    assert (summary["status"], summary["total"], summary["sent"]) == ("completed", N - 1, N - 1)
    assert summary["reason"] == ""
    got = received(smtp)
    assert len(got) == N - 1 and max(got.values()) == 1


def test_a_filler_that_died_is_taken_over_once_its_progress_is_stale(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    smtp_provider(redis_client, smtp.port)
    batches: list[tuple[str, int]] = []
    # The process dies: no handler of ours runs (a BaseException stands in for the kill).
    monkeypatch.setattr(RecipientAppender, "add", failing_after(1, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        create(redis_client, batches)
    monkeypatch.undo()

    # Its progress is fresh: it may be alive and storing, so nobody takes over yet.
    assert campaigns._take_over_fill("big1", redis_client) is None
    # The client's retry waits until that progress is stale, then stores the rest.
    monkeypatch.setattr(campaigns, "FILL_STALE_SECONDS", 1.0)
    assert create(redis_client, batches) == ("big1", False)
    assert campaign_reads.campaign_summary("big1", redis_client)["total"] == N - 1
    run_batches(batches)
    summary = campaign_reads.campaign_summary("big1", redis_client)
    assert (summary["status"], summary["total"], summary["sent"]) == ("completed", N - 1, N - 1)
    got = received(smtp)
    assert len(got) == N - 1 and max(got.values()) == 1


def test_a_filler_taken_over_stops_storing(redis_client: redis.Redis, smtp: SmtpTestServer) -> None:
    smtp_provider(redis_client, smtp.port)
    body = {"id": "f1", "provider": "local", "subject": "s", "html": "h", "recipients": []}
    campaigns.create_campaign(CampaignRequest.model_validate(body), client=redis_client)
    key = store.campaign_key("f1")
    redis_client.hset(key, mapping={"status": "running", "appending": "1", "filled": "2000"})
    appender = RecipientAppender("f1", redis_client, filling=True)
    people = [CampaignRequest.model_validate({**body, "recipients": recipients(2)}).recipients]
    with pytest.raises(campaigns.CampaignStateError, match="filled by another request"):
        appender.add(people[0], (1000, 1002))  # it thought it was at 1000
    assert campaign_reads.get_counters("f1", redis_client)["total"] == 0
    # The filler that took over (at 2000) stores them.
    assert RecipientAppender("f1", redis_client, filling=True).add(people[0], (2000, 2002))[0] == 2
    assert redis_client.hget(key, "filled") == "2002"
