"""A campaign's test message: one recipient's message, as the campaign sends it, to another
address; nothing of the campaign changes (README: HTTP API)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from dispatch import store
from dispatch.cli import main
from tests.api_server import ApiServer
from tests.api_support import api_client, covers, dispatch_client
from tests.helpers import smtp_provider
from tests.http_sink import HttpSink
from tests.smtp_server import SmtpTestServer


def _campaign(campaign_id: str, provider: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": campaign_id,
        "provider": provider,
        "subject": "Hi {{ name }}",
        "html": "<p>{{ name }}, picks for {{ city }}. <a href='{{ unsubscribe_url }}'>x</a></p>",
        "draft": True,
        "recipients": [
            {"email": f"user{i}@example.com", "vars": {"name": f"N{i}", "city": "Porto"}}
            for i in range(3)
        ],
        **fields,
    }


@covers("POST /v1/campaigns/{campaign_id}/test", "GET /v1/unsubscribe-tokens/{token}")
def test_the_test_message_is_a_recipients_message_sent_to_another_address_alone(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    with SmtpTestServer() as smtp, api_client(api_server) as http:
        smtp_provider(redis_client, smtp.port, preference_center="system")
        body = _campaign("ctest-1", "local", cc=["boss@acme.example"])
        assert http.post("/v1/campaigns", json=body).status_code == 201

        answer = http.post("/v1/campaigns/ctest-1/test", json={"to": "Me@Acme.EXAMPLE", "seq": 1})
        assert answer.status_code == 200, answer.text
        assert answer.json()["ok"] is True and answer.json()["error"] is None

        # One message, to the test address alone (not the campaign's cc), rendered with
        # recipient 1's vars.
        assert [m.rcpt_tos for m in smtp.messages] == [["Me@acme.example"]]
        message = smtp.messages[0].message
        assert message["Subject"] == "Hi N1" and message["To"] == "Me@acme.example"
        assert message["Cc"] is None
        html = message.get_body(("html",))
        assert html is not None and "N1, picks for Porto." in html.get_content()
        # Its meta and unsubscribe link name a test id and the test address: a click or
        # a callback on it touches no recipient of the campaign.
        meta = message["X-CleverTap_META"].split("|")
        assert meta[0] == "Me@acme.example" and meta[2].startswith("test-")
        token = message["List-Unsubscribe"].strip("<>").rsplit("/", 1)[1]
        named = http.get(f"/v1/unsubscribe-tokens/{token}").json()
        assert (named["email"], named["campaign_id"]) == ("Me@acme.example", meta[2])

        # The campaign is as it was: a draft, nothing sent, nothing in its ledger.
        summary = http.get("/v1/campaigns/ctest-1").json()
        assert (summary["status"], summary["total"], summary["queued"], summary["sent"]) == (
            "draft",
            3,
            3,
            0,
        )
        assert redis_client.hlen(store.ledger_key("ctest-1")) == 0

        # Given vars instead of a stored recipient; the first recipient by default.
        given = {"to": "me@acme.example", "vars": {"name": "V", "city": "Faro"}}
        for payload in (given, {"to": "me@acme.example"}):
            answer = http.post("/v1/campaigns/ctest-1/test", json=payload)
            assert answer.json()["ok"] is True, answer.text
        subjects = [m.message["Subject"] for m in smtp.messages[1:]]
        assert subjects == ["Hi V", "Hi N0"]


@covers("POST /v1/campaigns/{campaign_id}/test")
def test_a_test_message_that_cannot_be_built_or_sent_says_why(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    with SmtpTestServer() as smtp, api_client(api_server) as http:
        smtp_provider(redis_client, smtp.port)
        # Vars the template cannot render with (no "city"): the answer says so.
        assert http.post("/v1/campaigns", json=_campaign("ctest-2", "local")).status_code == 201
        partial = {"to": "me@acme.example", "vars": {"name": "V"}}
        answer = http.post("/v1/campaigns/ctest-2/test", json=partial).json()
        assert (answer["ok"], answer["error"]) == (False, "Invalid message")
        assert "city" in answer["detail"], answer
        assert smtp.messages == []

        def refused(path: str, payload: dict[str, Any]) -> tuple[int, Any]:
            response = http.post(path, json=payload)
            return response.status_code, response.json().get("field")

        assert refused("/v1/campaigns/ctest-2/test", {"to": "nobody"}) == (422, "to")
        assert refused("/v1/campaigns/ctest-2/test", {"to": "a@b.example", "seq": 3}) == (
            422,
            "seq",
        )
        assert refused("/v1/campaigns/nope/test", {"to": "a@b.example"})[0] == 404

        # The provider refuses the recipient: its answer, as the provider test email's.
        smtp.handler.rcpt_reply = lambda address: "550 5.1.1 no such user"
        answer = http.post("/v1/campaigns/ctest-2/test", json={"to": "a@b.example"}).json()
        assert (answer["ok"], answer["error"]) == (False, "SMTP invalid email ID")

        # The campaign's provider was deleted: 409 naming it.
        assert http.delete("/v1/providers/local").status_code == 204
        assert refused("/v1/campaigns/ctest-2/test", {"to": "a@b.example"}) == (409, "provider")


@covers("POST /v1/campaigns/{campaign_id}/test")
def test_a_generic_http_campaigns_test_posts_its_payload_to_the_test_address(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    with HttpSink() as sink, api_client(api_server) as http:
        provider = {
            "kind": "http",
            "endpoint": f"{sink.url}/send",
            "body": {
                "to": "$$To",
                "subject": "$$Subject",
                "html": "$$HTML",
                "city": "$$city",
                "mid": "$$MessageID",
                "from": "$$FromName",
                "addr": "$$FromAddress",
            },
            "from_name": "Acme",
            "from_address": "deals@acme.example",
        }
        assert http.put("/v1/providers/hook", json=provider).status_code in (200, 201)
        assert http.post("/v1/campaigns", json=_campaign("ctest-4", "hook")).status_code == 201
        answer = http.post("/v1/campaigns/ctest-4/test", json={"to": "me@acme.example", "seq": 2})
        assert answer.json()["ok"] is True, answer.text
        [request] = sink.requests
        payload = request.json()
        assert (payload["to"], payload["subject"], payload["city"]) == (
            "me@acme.example",
            "Hi N2",
            "Porto",
        )
        assert payload["mid"].startswith("me@acme.example|") and "|ctest-4|" not in payload["mid"]


def test_send_test_sends_a_files_campaign_to_one_address_without_creating_it(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port)
        file = tmp_path / "campaign.yaml"
        file.write_text(yaml.safe_dump(_campaign("ctest-5", "local", draft=False)))

        assert main(["send", str(file), "--test", "me@acme.example", "--seq", "2"]) == 0
        assert json.loads(capsys.readouterr().out)["ok"] is True
        assert [m.rcpt_tos for m in smtp.messages] == [["me@acme.example"]]
        assert smtp.messages[0].message["Subject"] == "Hi N2"
        assert not redis_client.exists(store.campaign_key("ctest-5"))  # not created

        assert main(["send", str(file), "--test", "me@acme.example", "--seq", "3"]) == 2
        assert "--seq 3: the file has 3 recipient(s): give 0 to 2" in capsys.readouterr().err
        # Not counted from the end (it sent the last one's message under seq -1).
        with pytest.raises(SystemExit) as refused:  # argparse: "-1 is below 0"
            main(["send", str(file), "--test", "me@acme.example", "--seq", "-1"])
        assert refused.value.code == 2
        assert "-1 is below 0" in capsys.readouterr().err
        assert main(["send", str(file), "--test", "nobody"]) == 2
        assert len(smtp.messages) == 1


def test_the_client_sends_a_campaign_test(api_server: ApiServer, redis_client: redis.Redis) -> None:
    with SmtpTestServer() as smtp, api_client(api_server) as http:
        smtp_provider(redis_client, smtp.port)
        assert http.post("/v1/campaigns", json=_campaign("ctest-6", "local")).status_code == 201
        client = dispatch_client(api_server)
        result = client.test_campaign("ctest-6", "me@acme.example", vars={"name": "C", "city": "X"})
        assert (result.ok, result.error) == (True, None)
        assert smtp.messages[0].message["Subject"] == "Hi C"


@covers("POST /v1/campaigns/{campaign_id}/test", "GET /u/{token}", "POST /u/{token}")
def test_the_test_messages_unsubscribe_link_works_as_the_campaigns_would(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    center = "https://prefs.acme.example/center?lang=en"
    with SmtpTestServer() as smtp, api_client(api_server) as http:
        smtp_provider(
            redis_client, smtp.port, preference_center="custom", preference_center_url=center
        )
        assert http.post("/v1/campaigns", json=_campaign("ctest-7", "local")).status_code == 201
        answer = http.post("/v1/campaigns/ctest-7/test", json={"to": "me@acme.example"})
        assert answer.json()["ok"] is True, answer.text
        link = smtp.messages[0].message["List-Unsubscribe"].strip("<>")
        path = "/" + link.split("/", 3)[3]

        # Opened, it leads to the provider's custom center, as a recipient's link does
        # (it showed the system page: the test id is no campaign).
        opened = http.get(path, follow_redirects=False)
        assert opened.status_code == 303, opened.text
        token = path.rsplit("/", 1)[1]
        assert opened.headers["location"] == f"{center}&token={token}"

        # One-click: it is a real link, so the test address is unsubscribed; the
        # campaign's recipients and counters are not touched.
        assert http.post(path).status_code == 200
        assert http.get("/v1/suppressions/me@acme.example").status_code == 200
        summary = http.get("/v1/campaigns/ctest-7").json()
        assert (summary["unsubscribed"], summary["suppressed"]) == (0, 0)
        for i in range(3):
            assert http.get(f"/v1/suppressions/user{i}@example.com").status_code == 404


@covers("POST /v1/campaigns/{campaign_id}/test")
def test_a_purged_campaigns_test_says_its_recipients_are_gone(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    from dispatch import retention

    with SmtpTestServer() as smtp, api_client(api_server) as http:
        smtp_provider(redis_client, smtp.port)
        assert http.post("/v1/campaigns", json=_campaign("ctest-8", "local")).status_code == 201
        assert http.post("/v1/campaigns/ctest-8/cancel").status_code == 200
        assert retention.purge(redis_client, "ctest-8")

        # A stored recipient's message cannot be built: 410, as its other per-message
        # reads (it answered 422 "the campaign has 3 recipients stored" for seq 2, and
        # rendered with no vars at all without a seq).
        for payload in ({"to": "me@acme.example", "seq": 2}, {"to": "me@acme.example"}):
            gone = http.post("/v1/campaigns/ctest-8/test", json=payload)
            assert gone.status_code == 410, gone.text
            assert "removed" in gone.json()["detail"]
        assert smtp.messages == []
        # Given vars, the message is still built from the content the campaign keeps.
        given = {"to": "me@acme.example", "vars": {"name": "V", "city": "Faro"}}
        assert http.post("/v1/campaigns/ctest-8/test", json=given).json()["ok"] is True
        assert smtp.messages[0].message["Subject"] == "Hi V"
