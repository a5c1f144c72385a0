"""A campaign posted with its list and the same request posted again (a client's retry
after a timeout, two API replicas each given one) while the first still stores the list
(review Y25). Each order is forced by a hook: no timing."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis

from dispatch import campaign_reads, campaigns, recipient_append
from dispatch.models import CampaignRequest
from dispatch.recipient_append import RecipientAppender
from dispatch.settings import get_settings
from tests.api_server import ApiServer
from tests.conftest import API_TOKEN
from tests.helpers import recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer

N = 35


def _body(campaign_id: str, send_at: datetime) -> dict[str, Any]:
    return {
        "id": campaign_id,
        "provider": "local",
        "subject": "s",
        "html": "h",
        "send_at": send_at.isoformat(),
        "recipients": recipients(N),
    }


def _fails_on_call(n: int, error: BaseException) -> Any:
    """RecipientAppender.add that raises ``error`` on its call ``n`` (and only then)."""
    real = RecipientAppender.add
    calls: list[int] = []

    def add(self: RecipientAppender, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == n:
            raise error
        return real(self, *args, **kwargs)

    return add


@pytest.mark.parametrize(
    "error",
    [redis.ConnectionError("gone"), KeyboardInterrupt()],
    ids=["redis error", "process killed"],
)
def test_a_repeat_stores_the_rest_of_a_campaign_whose_send_at_had_passed(
    redis_client: redis.Redis,
    smtp: SmtpTestServer,
    monkeypatch: pytest.MonkeyPatch,
    error: BaseException,
) -> None:
    """A ``send_at`` already past starts the campaign at once, so it is stored filling
    like one without ``send_at``. Its creation stopped half-way: the repeat was taken
    for a draft's (by the request's ``send_at``), found the campaign not a draft and did
    nothing, so the campaign stayed ``running`` with part of its list for ever, its
    reason asking for the repeat that had just been made."""
    monkeypatch.setenv("DISPATCH_BATCH_SIZE", "10")
    get_settings.cache_clear()
    smtp_provider(redis_client, smtp.port)
    request = CampaignRequest.model_validate(
        _body("past1", datetime.now(UTC) - timedelta(minutes=5))
    )
    batches: list[tuple[str, int]] = []

    def enqueue(campaign_id: str, batch: int) -> None:
        batches.append((campaign_id, batch))

    with monkeypatch.context() as m:
        m.setattr(RecipientAppender, "add", _fails_on_call(3, error))
        with pytest.raises(type(error)):
            campaigns.create_campaign(request, client=redis_client, enqueue=enqueue)
    assert campaign_reads.campaign_summary("past1", redis_client)["total"] == 20
    if isinstance(error, KeyboardInterrupt):  # taken over once its progress is stale
        monkeypatch.setattr(campaigns, "FILL_STALE_SECONDS", 1.0)

    assert campaigns.create_campaign(request, client=redis_client, enqueue=enqueue) == (
        "past1",
        False,
    )
    run_batches(batches)
    summary = campaign_reads.campaign_summary("past1", redis_client)
    assert (summary["status"], summary["total"], summary["sent"]) == ("completed", N, N)
    assert summary["reason"] == ""
    got = Counter(m.rcpt_tos[0] for m in smtp.messages)
    assert len(got) == N and max(got.values()) == 1


def test_a_post_whose_repeat_stored_its_list_and_scheduled_it_first_answers_201(
    redis_client: redis.Redis, api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two identical posts of a campaign for later: the first is held while it stores
    its list, the repeat stores it all and schedules the campaign. The first then went
    on, found the campaign ``scheduled`` and answered 409 "recipients can only be
    appended to a draft", for a campaign created whole as it asked."""
    monkeypatch.setattr(recipient_append, "APPEND_CHUNK", 10)
    smtp_provider(redis_client, 2525)
    body = _body("later1", datetime.now(UTC) + timedelta(hours=1))
    real = RecipientAppender.add
    held, go = threading.Event(), threading.Event()
    calls: list[int] = []

    def add(self: RecipientAppender, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:  # the first post, one chunk stored
            held.set()
            assert go.wait(20)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(RecipientAppender, "add", add)
    answers: dict[str, httpx.Response] = {}

    def post(name: str) -> None:
        with api_server.client(API_TOKEN) as client:
            answers[name] = client.post("/v1/campaigns", json=body)

    first = threading.Thread(target=post, args=("first",))
    first.start()
    try:
        assert held.wait(20)
        post("repeat")
    finally:
        go.set()
        first.join(30)
    assert answers["repeat"].status_code == 200, answers["repeat"].text
    assert answers["first"].status_code == 201, answers["first"].text
    for answer in answers.values():
        assert (answer.json()["status"], answer.json()["total"]) == ("scheduled", N)
    counters = campaign_reads.get_counters("later1", redis_client)
    assert (counters["total"], counters["queued"]) == (N, N)
