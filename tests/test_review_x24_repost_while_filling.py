"""A campaign posted with its list, and the same request posted again (a client's retry,
two identical posts at once) before its filling began (review X24).

The campaign used to be stored as a ``draft`` and set filling in a second step: a
repeat landing between the two answered ``draft`` with no recipients (and did nothing),
and a creator that died between them left a draft for ever, whose repeats (the
documented recovery) each answered the same and stored nothing.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import httpx
import pytest
import redis

from dispatch import campaign_reads, campaigns
from dispatch.models import CampaignRequest
from dispatch.recipient_append import RecipientAppender
from tests.api_server import ApiServer
from tests.conftest import API_TOKEN
from tests.helpers import campaign_body, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer

N = 25


def received(smtp: SmtpTestServer) -> Counter[str]:
    return Counter(address for m in smtp.messages for address in m.rcpt_tos)


def create(r: redis.Redis, body: dict[str, Any], batches: list[tuple[str, int]]) -> Any:
    return campaigns.create_campaign(
        CampaignRequest.model_validate(body),
        client=r,
        enqueue=lambda campaign_id, batch: batches.append((campaign_id, batch)),
    )


def test_a_repeat_posted_before_the_filling_began_answers_with_the_whole_list(
    redis_client: redis.Redis,
    api_server: ApiServer,
    smtp: SmtpTestServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    smtp_provider(redis_client, smtp.port)
    body = campaign_body("twice", N)
    answers: list[httpx.Response] = []
    waiting = threading.Event()  # the repeat has answered, or waits for the filling
    await_fill = campaigns._await_fill

    def repeat_waits(*args: Any) -> Any:
        waiting.set()
        return await_fill(*args)

    def post_again() -> None:
        with api_server.client(API_TOKEN) as client:
            answers.append(client.post("/v1/campaigns", json=body))
        waiting.set()

    init = RecipientAppender.__init__
    repeat = threading.Thread(target=post_again)

    def repeat_first(appender: RecipientAppender, *args: Any, **kw: Any) -> None:
        # The campaign is stored, its filling not begun: the repeat lands here.
        if not repeat.is_alive() and not answers:
            repeat.start()
            assert waiting.wait(10)
        init(appender, *args, **kw)

    monkeypatch.setattr(campaigns, "_await_fill", repeat_waits)
    monkeypatch.setattr(RecipientAppender, "__init__", repeat_first)
    batches: list[tuple[str, int]] = []
    assert create(redis_client, body, batches) == ("twice", True)
    repeat.join(10)
    assert len(answers) == 1 and answers[0].status_code == 200, answers
    assert (answers[0].json()["status"], answers[0].json()["total"]) == ("running", N)

    run_batches(batches)
    summary = campaign_reads.campaign_summary("twice", redis_client)
    assert (summary["status"], summary["total"], summary["sent"]) == ("completed", N, N)
    got = received(smtp)
    assert len(got) == N and max(got.values()) == 1


@pytest.mark.parametrize(
    "error",
    [KeyboardInterrupt(), redis.ConnectionError("gone")],
    ids=["process killed", "redis error"],
)
def test_a_creation_cut_before_the_filling_began_is_filled_by_the_repeat(
    redis_client: redis.Redis,
    smtp: SmtpTestServer,
    monkeypatch: pytest.MonkeyPatch,
    error: BaseException,
) -> None:
    """The creator stopped after storing the campaign, before its first recipient: the
    repeat stores the list and sends it (after a Redis error at once; after a killed
    process once its progress is stale)."""
    smtp_provider(redis_client, smtp.port)
    body = campaign_body("cut", N)

    def fail(*args: Any, **kw: Any) -> None:
        raise error  # (a KeyboardInterrupt: the process is killed, no handler of ours runs)

    monkeypatch.setattr(RecipientAppender, "__init__", fail)
    batches: list[tuple[str, int]] = []
    with pytest.raises(type(error)):
        create(redis_client, body, batches)
    monkeypatch.undo()
    if isinstance(error, KeyboardInterrupt):
        # Its progress is fresh: the creator may be alive, so nobody takes over yet.
        assert campaigns._take_over_fill("cut", redis_client) is None
        monkeypatch.setattr(campaigns, "FILL_STALE_SECONDS", 1.0)

    assert create(redis_client, body, batches) == ("cut", False)  # the client's retry
    summary = campaign_reads.campaign_summary("cut", redis_client)
    assert (summary["status"], summary["total"]) == ("running", N)
    run_batches(batches)
    summary = campaign_reads.campaign_summary("cut", redis_client)
    assert (summary["status"], summary["total"], summary["sent"]) == ("completed", N, N)
    got = received(smtp)
    assert len(got) == N and max(got.values()) == 1
