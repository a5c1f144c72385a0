"""The API and ``DispatchClient`` as another service's developer meets them: a wrong base
URL, Redis down, an answer lost on the way back, pages walked while campaigns are created,
an address with a ``/``."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dispatch import campaign_reads, store
from dispatch.api import errors
from dispatch.client import (
    DispatchAPIError,
    DispatchClient,
    InvalidRequest,
    NotFound,
    Unavailable,
)
from tests.api_server import ApiServer
from tests.api_support import dispatch_client, smtp_body
from tests.conftest import API_TOKEN
from tests.smtp_server import SmtpTestServer, free_port
from tests.worker import WorkerProcess


def _draft(api: DispatchClient, campaign_id: str | None = None) -> str:
    body = {"provider": "local", "subject": "s", "html": "h", "draft": True}
    if campaign_id:
        body["id"] = campaign_id
    return api.create_campaign(body).id


class LosesAnswers(httpx.HTTPTransport):
    """A real exchange with the server whose answer is then lost (a read timeout), for
    the first ``count`` requests to ``path``: the request was applied, the caller never
    heard."""

    def __init__(self, path: str, count: int = 1) -> None:
        super().__init__()
        self.path, self.count, self.sent = path, count, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path == self.path:
            self.sent += 1
            if self.count:
                self.count -= 1
                response.read()
                raise httpx.ReadTimeout("answer lost", request=request)
        return response


def test_a_create_whose_answer_was_lost_is_one_campaign(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A read timeout after the server created the campaign: the client sends it again
    and gets the campaign; there is one, not two (it raised ReadTimeout before, and a
    caller's own retry of a body without an id created a second campaign)."""
    lossy = LosesAnswers("/v1/campaigns")
    with DispatchClient(api_server.url, API_TOKEN, http=httpx.Client(transport=lossy)) as api:
        api.put_provider("local", smtp_body(2525))
        created = api.create_campaign(  # no id: the client makes one up
            {"provider": "local", "subject": "s", "html": "h", "draft": True}
        )
        assert lossy.sent == 2 and created.status.value == "draft"
        assert [c.id for c in api.iter_campaigns()] == [created.id]
    assert redis_client.zcard(store.CAMPAIGNS_ZSET) == 1


def test_a_start_whose_answer_was_lost_is_not_sent_again(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Start is not idempotent (a second one is 409): its lost answer is an Unavailable
    that says the request may have arrived, and the campaign was started once."""
    lossy = LosesAnswers("/v1/campaigns/s-1/start")
    with DispatchClient(api_server.url, API_TOKEN, http=httpx.Client(transport=lossy)) as api:
        api.put_provider("local", smtp_body(2525))
        _draft(api, "s-1")
        with pytest.raises(Unavailable) as lost:
            api.start_campaign("s-1")
        assert lost.value.status_code == 0 and "may have arrived" in lost.value.detail
        assert isinstance(lost.value.__cause__, httpx.ReadTimeout)
        assert lossy.sent == 1
        # (no recipients: it completes at once)
        assert api.get_campaign("s-1").status.value in {"running", "completed"}


def test_a_client_on_a_wrong_base_url_says_so(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A base URL with a path too many (``.../v1``) answers 404 for every route: that is
    not "no such campaign", and an address is not "not suppressed" because of it (it
    was NotFound, get_suppression answered None and unsuppress False)."""
    with DispatchClient(api_server.url + "/v1", API_TOKEN) as wrong:
        with pytest.raises(DispatchAPIError) as error:
            wrong.get_campaign("c-1")
        assert not isinstance(error.value, NotFound)
        assert error.value.status_code == 404 and "base_url" in error.value.detail
        with pytest.raises(DispatchAPIError):
            wrong.get_suppression("ann@example.com")
        with pytest.raises(DispatchAPIError):
            wrong.unsuppress("ann@example.com")
    with dispatch_client(api_server) as right, pytest.raises(NotFound) as missing:
        right.get_campaign("c-1")
    assert missing.value.field == "campaign_id"
    with pytest.raises(ValueError, match="http"):
        DispatchClient("127.0.0.1:8000")


def test_nothing_listening_is_unavailable_after_the_retries() -> None:
    port = free_port()
    attempts: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [attempts.append]})
    api = DispatchClient(f"http://127.0.0.1:{port}", "t", retries=2, http=http)
    with api, pytest.raises(Unavailable) as error:
        api.create_campaign({"provider": "p", "subject": "s", "html": "h"})
    assert isinstance(error.value, ConnectionError) and error.value.status_code == 0
    assert "could not connect" in error.value.detail
    assert len(attempts) == 3  # nothing reached a server: safe to send again


def test_with_redis_unreachable_the_api_answers_503_and_the_client_retries(
    api_server: ApiServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis down: every /v1 route answered a bare text "Internal Server Error" (500);
    now 503 with the API's error body and Retry-After, which the client waits for."""
    dead = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0), decode_responses=True)
    monkeypatch.setattr(store, "_sync_client", dead)
    monkeypatch.setattr(errors, "RETRY_AFTER_SECONDS", 0, raising=False)
    with httpx.Client(
        base_url=api_server.url, headers={"Authorization": f"Bearer {API_TOKEN}"}
    ) as raw:
        for answer in (
            raw.get("/v1/campaigns/c-1"),
            raw.get("/v1/campaigns"),
            raw.post("/v1/campaigns", json={"provider": "p", "subject": "s", "html": "h"}),
            raw.get("/v1/suppressions/ann@example.com"),
            raw.get("/v1/providers"),
        ):
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == "0"
            body = answer.json()
            assert set(body) == {"detail", "field", "errors"} and "Redis" in body["detail"]
    attempts: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [attempts.append]})
    api = DispatchClient(api_server.url, API_TOKEN, retries=2, http=http)
    with api, pytest.raises(Unavailable) as error:
        api.get_campaign("c-1")
    assert error.value.status_code == 503 and "Redis" in error.value.detail
    assert len(attempts) == 3


def test_campaign_pages_neither_repeat_nor_skip_while_campaigns_are_created(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Walking GET /v1/campaigns while other services create campaigns: each campaign
    that was there shows exactly once (a position counted from the newest moved with
    every creation: 8 of 25 showed twice)."""
    with dispatch_client(api_server) as api:
        api.put_provider("local", smtp_body(2525))
        before = [_draft(api, f"old-{i:02d}") for i in range(25)]
        seen: list[str] = []
        cursor: str | None = None
        created = 0
        while True:
            page = api.list_campaigns(cursor=cursor, limit=10)
            seen += [c.id for c in page.items]
            for _ in range(3):
                _draft(api, f"new-{created}")
                created += 1
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == before[::-1]  # newest first, each once
        walked = [c.id for c in api.iter_campaigns(page_size=7)]
        assert len(walked) == len(set(walked)) == 25 + created
        drafts = api.list_campaigns(status="draft", limit=1000)
        assert len(drafts.items) == 25 + created and drafts.next_cursor is None


def test_an_address_with_a_slash_can_be_suppressed_read_and_removed(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """``a/b@example.com`` is an address campaigns send to; its %2F reached the router as
    a "/" and every /v1/suppressions/{email} route answered 404."""
    with dispatch_client(api_server) as api:
        entry = api.suppress("Dept/Sales@example.com", reason="complaint")
        assert entry.email == "dept/sales@example.com"
        found = api.get_suppression("dept/sales@example.com")
        assert found is not None and found.reason == "complaint"
        assert [e.email for e in api.iter_suppressions()] == ["dept/sales@example.com"]
        assert api.unsuppress("dept/sales@example.com") is True
        assert api.get_suppression("dept/sales@example.com") is None


DESIGN_EVENT_KEYS = {"event", "ts", "email", "campaign_id", "meta", "provider", "properties"}


def _read_group(r: redis.Redis, group: str) -> list[dict[str, Any]]:
    """What a consumer of the README reads: XREADGROUP, one ``json`` field, XACK."""
    events = []
    while answer := r.xreadgroup(group, "c-1", {store.EVENTS_STREAM: ">"}, count=100):
        for entry_id, fields in answer[0][1]:
            assert set(fields) == {"json"}
            events.append(json.loads(fields["json"]))
            r.xack(store.EVENTS_STREAM, group, entry_id)
    return events


def test_a_stream_consumer_reads_design_events_for_sends_and_every_callback(
    api_server: ApiServer, redis_client: redis.Redis, celery_worker: WorkerProcess
) -> None:
    """DESIGN §6 through the whole path: sends, a failure and each callback type land on
    ``dispatch:events`` as entries with exactly its seven keys and its properties."""
    redis_client.xgroup_create(store.EVENTS_STREAM, "crm", id="$", mkstream=True)
    kinds = ["delivered", "hard_bounce", "soft_bounce", "spam", "unsubscribed", "clicked"]
    people = ["refused@example.com"] + [f"{kind}@example.com" for kind in kinds]
    with SmtpTestServer() as smtp, dispatch_client(api_server) as api:
        smtp.handler.rcpt_reply = lambda a: "550 5.1.1 no such user" if "refused" in a else None
        view = api.put_provider("local", smtp_body(smtp.port))
        api.create_campaign({"id": "ev-1", "provider": "local", "subject": "s", "html": "h",
                             "recipients": [{"email": e} for e in people]})  # fmt: skip
        done = api.wait("ev-1", timeout=60, interval=0.1)
        assert (done.sent, done.failed) == (6, 1)
        meta = {m.email: m.meta for m in api.iter_messages("ev-1")}
        sent = _read_group(redis_client, "crm")
        callback_path = httpx.URL(view.callback_url).path  # DISPATCH_PUBLIC_URL is elsewhere
        with httpx.Client(base_url=api_server.url) as provider:
            for kind in kinds:
                email = f"{kind}@example.com"
                event = {"version": "v2", "event": kind, "type": kind, "email": email,
                         "meta": meta[email], "description": f"why {kind}"}  # fmt: skip
                assert provider.post(callback_path, json=event).status_code == 200
        callbacks: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while len(callbacks) < 7 and time.monotonic() < deadline:
            callbacks += _read_group(redis_client, "crm")
            time.sleep(0.1)

    for entry in sent + callbacks:
        assert set(entry) == DESIGN_EVENT_KEYS, entry
        assert entry["campaign_id"] == "ev-1" and entry["provider"] == "local"
        assert entry["meta"] == meta[entry["email"]] and isinstance(entry["ts"], float)
    assert sorted((e["event"], e["email"]) for e in sent) == sorted(
        [("Notification Failed", "refused@example.com")]
        + [("Notification Sent", f"{kind}@example.com") for kind in kinds]
    )
    failed = next(e for e in sent if e["event"] == "Notification Failed")
    assert failed["properties"]["Error"] == "SMTP invalid email ID"
    # The same source as the Delivered callbacks below report (DESIGN §6).
    assert {e["properties"]["CT Source"] for e in sent if e["event"] == "Notification Sent"} == {
        "Generic email"
    }
    got = sorted((e["properties"]["Callback Type"], e["event"], e["properties"]) for e in callbacks)
    assert got == sorted([
        ("delivered", "Notification Delivered",
         {"CT Source": "Generic email", "Callback Type": "delivered"}),
        ("hard_bounce", "Notification Failed",
         {"Error": "why hard_bounce", "Callback Type": "hard_bounce"}),
        ("hard_bounce", "Channel Unsubscribed",
         {"Type": "why hard_bounce", "Callback Type": "hard_bounce"}),
        ("soft_bounce", "Notification Failed",
         {"Error": "why soft_bounce", "Callback Type": "soft_bounce"}),
        ("spam", "Channel Unsubscribed", {"Type": "why spam", "Callback Type": "spam"}),
        ("unsubscribed", "Channel Unsubscribed",
         {"Type": "why unsubscribed", "Callback Type": "unsubscribed"}),
        ("clicked", "Notification Clicked", {"Callback Type": "clicked"}),
    ])  # fmt: skip


def test_cursors_out_of_range_neither_fail_nor_page_for_ever(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A cursor no page gave: the suppression list's past 64 bits was a 500 (Redis
    refuses it), the campaign list's past the end handed out empty pages whose cursors
    would take a walk a trillion pages to finish."""
    with dispatch_client(api_server) as api:
        api.put_provider("local", smtp_body(2525))
        for i in range(3):
            _draft(api, f"c-{i}")
        pages = 0
        cursor: str | None = "999999999999"
        ids: list[str] = []
        while cursor is not None and pages < 5:
            page = api.list_campaigns(cursor=cursor, limit=2)
            ids += [c.id for c in page.items]
            cursor, pages = page.next_cursor, pages + 1
        assert cursor is None and ids == ["c-2", "c-1", "c-0"]
        with pytest.raises(InvalidRequest) as invalid:
            api.list_suppressions(cursor="99999999999999999999")
        assert invalid.value.field == "cursor"


@pytest.mark.parametrize("campaign_id", [".", ".."])
def test_an_id_a_url_cannot_name_is_refused(
    api_server: ApiServer, redis_client: redis.Redis, campaign_id: str
) -> None:
    """ "." and ".." were accepted, then /v1/campaigns/.. resolved to /v1 (httpx, curl,
    browsers and proxies remove dot segments): a campaign no one could read or stop."""
    with dispatch_client(api_server) as api:
        api.put_provider("local", smtp_body(2525))
        with pytest.raises(InvalidRequest) as invalid:
            _draft(api, campaign_id)
        assert invalid.value.field == "id"
        assert _draft(api, ".a.") == ".a."
        assert api.get_campaign(".a.").id == ".a."


def test_with_redis_out_of_memory_the_api_answers_503(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """maxmemory reached under noeviction (the policy the README asks for): Redis refuses
    writes, and the API said 500 "Internal Server Error"; now 503, try again."""
    with dispatch_client(api_server) as api:
        api.put_provider("local", smtp_body(2525))
        redis_client.config_set("maxmemory", "1")
        try:
            raw = httpx.Client(
                base_url=api_server.url, headers={"Authorization": f"Bearer {API_TOKEN}"}
            )
            with raw:
                refused = raw.put("/v1/suppressions/ann@example.com")
                body = {"id": "full", "provider": "local", "subject": "s", "html": "h"}
                also = raw.post("/v1/campaigns", json=body)
            readable = api.get_provider("local")  # reads still work
        finally:
            redis_client.config_set("maxmemory", "0")
    for answer in (refused, also):
        assert answer.status_code == 503, answer.text
        assert "OutOfMemoryError" in answer.json()["detail"] and "retry-after" in answer.headers
    assert readable.nickname == "local"


def test_a_create_with_inline_recipients_whose_answer_was_lost_is_repeated_whole(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A repeat of a create with its list answers once the whole list is stored (it
    stores the rest itself when the first request failed part-way), so the client
    repeats it like any create: one campaign, with every recipient."""
    lossy = LosesAnswers("/v1/campaigns")
    with DispatchClient(api_server.url, API_TOKEN, http=httpx.Client(transport=lossy)) as api:
        api.put_provider("local", smtp_body(2525))
        people = [{"email": f"p{i}@example.com"} for i in range(2500)]
        body = {"id": "inline", "provider": "local", "subject": "s", "html": "h", "draft": True,
                "recipients": people}  # fmt: skip
        summary = api.create_campaign(body)
    assert lossy.sent == 2 and summary.id == "inline" and summary.total == 2500
    assert [c["id"] for c in campaign_reads.list_campaigns(client=redis_client)[0]] == ["inline"]
