"""A campaign's messages read while the retention purge removes them answer 410, as
after it (review K23): the purge that came between a page's check and its reads
answered 500 (the recipients' pages were gone, the counters' total was not), and one
between two of its reads would have shown every message ``queued``. And a value of
``email`` that is no address is answered for the campaign first: 404 for an unknown
one, 410 for a purged one (whether it was given that text can no longer be told), not
422 "not an address"."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from dispatch import retention
from dispatch.cli import main
from tests.api_server import ApiServer
from tests.api_support import api_client, covers
from tests.helpers import campaign_body, smtp_provider


def _cancelled(api_server: ApiServer, r: redis.Redis, campaign_id: str, n: int) -> None:
    """A finished campaign of ``n`` recipients (a draft cancelled: each ``cancelled``)."""
    smtp_provider(r, 2525)
    with api_client(api_server) as api:
        created = api.post("/v1/campaigns", json=campaign_body(campaign_id, n, draft=True))
        assert created.status_code == 201, created.text
        cancelled = api.post(f"/v1/campaigns/{campaign_id}/cancel")
        assert cancelled.json()["cancelled"] == n, cancelled.text


def _purge_after_the_check(
    monkeypatch: pytest.MonkeyPatch, r: redis.Redis, campaign_id: str
) -> list[bool]:
    """The purge runs right after the first check that the campaign was not purged
    (as beat's hourly purge may, while a page is read); whether it purged."""
    check: Callable[[redis.Redis, str], None] = retention.ensure_not_purged
    done: list[bool] = []

    def check_then_purge(client: redis.Redis, cid: str) -> None:
        check(client, cid)
        if not done:
            done.append(retention.purge(r, campaign_id))

    monkeypatch.setattr(retention, "ensure_not_purged", check_then_purge)
    return done


@covers("GET /v1/campaigns/{campaign_id}/messages")
@pytest.mark.parametrize("params", [{}, {"status": "failed", "limit": "1000"}])
def test_a_purge_while_a_page_is_read_answers_gone(
    api_server: ApiServer,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    params: dict[str, str],
) -> None:
    _cancelled(api_server, redis_client, "k23-race", 1500)
    purged = _purge_after_the_check(monkeypatch, redis_client, "k23-race")
    with api_client(api_server) as api:
        answer = api.get("/v1/campaigns/k23-race/messages", params=params)
    assert purged == [True]
    assert answer.status_code == 410, answer.text
    assert answer.json()["field"] == "campaign_id"
    assert "DISPATCH_RETENTION_DAYS" in answer.json()["detail"]


@covers("GET /v1/campaigns/{campaign_id}/messages")
def test_an_email_filter_read_while_the_purge_runs_answers_gone(
    api_server: ApiServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not 200 with no message: "never sent to this address"."""
    _cancelled(api_server, redis_client, "k23-race-email", 20)
    purged = _purge_after_the_check(monkeypatch, redis_client, "k23-race-email")
    with api_client(api_server) as api:
        answer = api.get(
            "/v1/campaigns/k23-race-email/messages", params={"email": "user3@example.com"}
        )
    assert purged == [True]
    assert answer.status_code == 410, answer.text


@covers("GET /v1/campaigns/{campaign_id}/messages")
def test_a_value_that_is_no_address_is_answered_for_the_campaign_first(
    api_server: ApiServer, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    _cancelled(api_server, redis_client, "k23-gone", 3)
    assert retention.purge(redis_client, "k23-gone")
    with api_client(api_server) as api:
        purged = api.get("/v1/campaigns/k23-gone/messages", params={"email": "notanaddr"})
        unknown = api.get("/v1/campaigns/k23-nope/messages", params={"email": "notanaddr"})
    assert purged.status_code == 410, purged.text
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["field"] == "campaign_id"

    assert main(["messages", "k23-gone", "--email", "notanaddr"]) == 1
    assert "its per-message records were removed" in capsys.readouterr().err
    assert main(["messages", "k23-nope", "--email", "notanaddr"]) == 1
    assert "no campaign 'k23-nope'" in capsys.readouterr().err
