"""``dispatch.client.DispatchClient`` against the real server, Redis and worker."""

from __future__ import annotations

import pytest
import redis

from dispatch.client import (
    Conflict,
    DispatchClient,
    InvalidRequest,
    NotFound,
    Unauthorized,
)
from dispatch.models import CampaignRequest, Recipient
from dispatch.unsubscribe import make_token
from tests.api_server import ApiServer
from tests.api_support import covers, dispatch_client, smtp_body
from tests.helpers import recipients
from tests.smtp_server import SmtpTestServer
from tests.worker import WorkerProcess


@covers(
    "PUT /v1/providers/{nickname}",
    "GET /v1/providers",
    "POST /v1/providers/{nickname}/test",
    "POST /v1/campaigns",
    "POST /v1/campaigns/{campaign_id}/recipients",
    "POST /v1/campaigns/{campaign_id}/start",
    "GET /v1/campaigns/{campaign_id}",
    "GET /v1/campaigns/{campaign_id}/messages",
    "GET /v1/campaigns",
)
def test_a_campaign_through_the_client(
    api_server: ApiServer, redis_client: redis.Redis, celery_worker: WorkerProcess
) -> None:
    with SmtpTestServer() as smtp, dispatch_client(api_server) as api:
        view = api.put_provider("local", smtp_body(smtp.port))
        assert view.kind == "smtp" and view.callback_url
        assert [p.nickname for p in api.list_providers()] == ["local"]
        assert api.test_provider("local", "ops@example.com").ok

        request = CampaignRequest(
            id="client-1", provider="local", subject="Hi {{ name }}", html="<p>x</p>", draft=True
        )
        created = api.create_campaign(request)
        assert created.status.value == "draft"
        people = (Recipient(email=r["email"], vars=r["vars"]) for r in recipients(1200))
        appended = api.append_recipients("client-1", people)  # a generator: streamed
        assert (appended.appended, appended.total, appended.rejected) == (1200, 1200, 0)
        mixed = api.append_recipients("client-1", [{"email": "bad"}, {"email": "z@example.com"}])
        assert (mixed.appended, mixed.rejected) == (0, 2)  # z@ lacks the 'name' variable
        assert {e.field for e in mixed.errors} == {"email", "vars.name"}

        assert api.start_campaign("client-1").status.value == "running"
        done = api.wait("client-1", timeout=120, interval=0.2)
        assert (done.status.value, done.sent, done.total) == ("completed", 1200, 1200)
        messages = list(api.iter_messages("client-1", page_size=500))
        assert [m.seq for m in messages] == list(range(1200))
        assert all(m.status == "sent" and m.meta.endswith(f"|{m.seq}|") for m in messages)
        (one,) = api.messages("client-1", email="USER1100@example.com").items
        assert (one.seq, one.email, one.status) == (1100, "user1100@example.com", "sent")
        assert [c.id for c in api.list_campaigns(status="completed").items] == ["client-1"]
    assert len(smtp.messages) == 1201  # the test message and the campaign


@covers(
    "GET /v1/campaigns/{campaign_id}",
    "POST /v1/campaigns",
    "GET /v1/providers/{nickname}",
    "DELETE /v1/providers/{nickname}",
    "POST /v1/campaigns/{campaign_id}/pause",
    "POST /v1/campaigns/{campaign_id}/resume",
    "POST /v1/campaigns/{campaign_id}/cancel",
    "POST /v1/campaigns/{campaign_id}/retry-failed",
)
def test_client_errors_are_typed(api_server: ApiServer, redis_client: redis.Redis) -> None:
    with dispatch_client(api_server) as api:
        with pytest.raises(NotFound) as missing:
            api.get_campaign("nope")
        assert missing.value.status_code == 404 and missing.value.field == "campaign_id"
        with pytest.raises(NotFound):
            api.get_provider("nobody")
        with pytest.raises(NotFound):
            api.delete_provider("nobody")
        with pytest.raises(InvalidRequest) as invalid:
            api.create_campaign({"provider": "local", "subject": "s"})
        assert invalid.value.field == "html"
        api.put_provider("local", smtp_body(2525))
        api.create_campaign({"id": "t-1", "provider": "local", "subject": "s", "html": "h",
                             "draft": True})  # fmt: skip
        with pytest.raises(Conflict) as conflict:
            api.create_campaign({"id": "t-1", "provider": "local", "subject": "other", "html": "h"})
        assert conflict.value.field == "id"
        for operation in (api.pause_campaign, api.resume_campaign, api.retry_failed):
            with pytest.raises(Conflict):
                operation("t-1")
        assert api.cancel_campaign("t-1").status.value == "cancelled"
    with DispatchClient(api_server.url, "wrong") as stranger, pytest.raises(Unauthorized):
        stranger.list_providers()


@covers(
    "PUT /v1/suppressions/{email}",
    "GET /v1/suppressions/{email}",
    "GET /v1/suppressions",
    "DELETE /v1/suppressions/{email}",
)
def test_suppressions_through_the_client(api_server: ApiServer, redis_client: redis.Redis) -> None:
    with dispatch_client(api_server) as api:
        entry = api.suppress("Ann+x@Example.com", reason="complaint", source="crm")
        assert (entry.email, entry.reason, entry.source) == (
            "ann+x@example.com",
            "complaint",
            "crm",
        )
        got = api.get_suppression("ann+x@example.com")
        assert got is not None and got.reason == "complaint"
        for i in range(30):
            api.suppress(f"s{i}@example.com")
        assert len({e.email for e in api.iter_suppressions(page_size=7)}) == 31
        assert api.unsuppress("ann+x@example.com") is True
        assert api.unsuppress("ann+x@example.com") is False
        assert api.get_suppression("ann+x@example.com") is None


@covers("GET /v1/unsubscribe-tokens/{token}")
def test_a_custom_center_resolves_a_token_through_the_client(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    token = make_token("c1", 4, "ann@example.com", "news")
    with dispatch_client(api_server) as api:
        api.suppress("ann@example.com", reason="asked by phone")
        view = api.resolve_unsubscribe_token(token)
        assert (view.email, view.campaign_id, view.seq, view.category) == (
            "ann@example.com",
            "c1",
            4,
            "news",
        )
        assert view.suppression is not None and view.suppression.reason == "asked by phone"
        with pytest.raises(NotFound) as refused:
            api.resolve_unsubscribe_token(token[:-2])
        assert refused.value.field == "token"
