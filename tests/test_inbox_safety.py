"""Safety with people's inboxes: a campaign's or a provider's test message is not sent to
a suppressed address (someone who complained, hard-bounced or unsubscribed) unless the
caller says so (README: HTTP API, ``POST /v1/campaigns/{id}/test``,
``POST /v1/providers/{nickname}/test``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from dispatch import store, suppressions
from dispatch.cli import main
from dispatch.client import Conflict
from dispatch.settings import Settings
from tests.api_server import ApiServer
from tests.api_support import api_client, covers, dispatch_client
from tests.helpers import run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer

FAST = Settings(retry_base_seconds=0.05)


def _campaign(campaign_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": campaign_id,
        "provider": "local",
        "subject": "Hi {{ name }}",
        "html": "<p>Hi {{ name }}</p>",
        "draft": True,
        "recipients": [
            {"email": f"user{i}@example.com", "vars": {"name": f"N{i}"}} for i in range(2)
        ],
        **fields,
    }


@covers("POST /v1/campaigns/{campaign_id}/test")
def test_a_campaign_test_to_a_suppressed_address_is_refused_naming_the_entry(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    with SmtpTestServer() as smtp, api_client(api_server) as http:
        smtp_provider(redis_client, smtp.port)
        assert http.post("/v1/campaigns", json=_campaign("safe-1")).status_code == 201
        suppressions.add("ann@bücher.example", reason="spam", source="callback:esp:spamreport")

        # Any spelling of the address is the one entry: refused, 409 on "to", nothing sent.
        for to in ("ann@bücher.example", "ANN@Bücher.Example", "Ann@xn--bcher-kva.example."):
            refused = http.post("/v1/campaigns/safe-1/test", json={"to": to})
            assert refused.status_code == 409, refused.text
            body = refused.json()
            assert body["field"] == "to"
            assert "ann@xn--bcher-kva.example is on the suppression list" in body["detail"]
            assert "spam, callback:esp:spamreport, since " in body["detail"]
            assert "allow_suppressed" in body["detail"]
        assert smtp.messages == []

        # Said on purpose, it goes.
        allowed = {"to": "ann@bücher.example", "allow_suppressed": True}
        answer = http.post("/v1/campaigns/safe-1/test", json=allowed)
        assert answer.status_code == 200 and answer.json()["ok"] is True, answer.text
        assert [m.rcpt_tos for m in smtp.messages] == [["ann@xn--bcher-kva.example"]]

        # Removed from the list, the address gets tests again.
        assert http.delete("/v1/suppressions/ann@bücher.example").status_code == 204
        answer = http.post("/v1/campaigns/safe-1/test", json={"to": "ann@bücher.example"})
        assert answer.json()["ok"] is True, answer.text
        assert len(smtp.messages) == 2


@covers("POST /v1/campaigns/{campaign_id}/test", "POST /u/{token}")
def test_a_tester_who_unsubscribed_through_a_test_is_told_why_the_next_test_is_refused(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    with SmtpTestServer() as smtp, api_client(api_server) as http:
        smtp_provider(redis_client, smtp.port, preference_center="system")
        assert http.post("/v1/campaigns", json=_campaign("safe-2")).status_code == 201
        assert http.post("/v1/campaigns/safe-2/test", json={"to": "me@acme.example"}).json()["ok"]
        link = smtp.messages[0].message["List-Unsubscribe"].strip("<>")
        one_click = {"Content-Type": "application/x-www-form-urlencoded"}
        path = "/" + link.split("/", 3)[3]
        assert http.post(path, content="List-Unsubscribe=One-Click", headers=one_click).is_success

        refused = http.post("/v1/campaigns/safe-2/test", json={"to": "me@acme.example"})
        assert refused.status_code == 409, refused.text
        assert "unsubscribed, " in refused.json()["detail"]
        assert len(smtp.messages) == 1


def test_the_client_raises_conflict_for_a_suppressed_test_address(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    with SmtpTestServer() as smtp, api_client(api_server) as http:
        smtp_provider(redis_client, smtp.port)
        assert http.post("/v1/campaigns", json=_campaign("safe-3")).status_code == 201
        suppressions.add("hb@example.com", reason="hard_bounce", source="callback:esp:bounce")
        client = dispatch_client(api_server)
        with pytest.raises(Conflict) as refused:
            client.test_campaign("safe-3", "HB@example.com")
        assert refused.value.field == "to" and "hard_bounce" in refused.value.detail
        assert smtp.messages == []
        result = client.test_campaign("safe-3", "hb@example.com", allow_suppressed=True)
        assert result.ok is True
        assert [m.rcpt_tos for m in smtp.messages] == [["hb@example.com"]]


def test_send_test_to_a_suppressed_address_is_refused_unless_allowed(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port)
        file = tmp_path / "campaign.yaml"
        file.write_text(yaml.safe_dump(_campaign("safe-4", draft=False)))
        suppressions.add("me@acme.example", reason="spam", source="api")

        assert main(["send", str(file), "--test", "Me@Acme.example"]) == 2
        err = capsys.readouterr().err
        assert "me@acme.example is on the suppression list (spam, api, since " in err
        assert "--allow-suppressed" in err
        assert smtp.messages == []

        assert main(["send", str(file), "--test", "me@acme.example", "--allow-suppressed"]) == 0
        assert json.loads(capsys.readouterr().out)["ok"] is True
        assert [m.rcpt_tos for m in smtp.messages] == [["me@acme.example"]]

        # Without --test it would start the whole campaign: refused, nothing created.
        assert main(["send", str(file), "--allow-suppressed"]) == 2
        assert "--allow-suppressed goes with --test" in capsys.readouterr().err
        assert not redis_client.exists(store.campaign_key("safe-4"))


@covers("POST /v1/providers/{nickname}/test")
def test_a_provider_test_to_a_suppressed_address_is_refused_unless_allowed(
    api_server: ApiServer, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """The provider test message too: over the API, the client and the CLI."""
    with SmtpTestServer() as smtp, api_client(api_server) as http:
        smtp_provider(redis_client, smtp.port)
        suppressions.add("hb@bücher.example", reason="hard_bounce", source="api")
        refused = http.post("/v1/providers/local/test", json={"to": "HB@Bücher.example"})
        assert refused.status_code == 409, refused.text
        assert refused.json()["field"] == "to" and "hard_bounce" in refused.json()["detail"]
        client = dispatch_client(api_server)
        with pytest.raises(Conflict):
            client.test_provider("local", "hb@xn--bcher-kva.example")
        assert main(["providers", "test", "local", "--to", "hb@bücher.example"]) == 2
        assert "is on the suppression list (hard_bounce, api, since " in capsys.readouterr().err
        assert smtp.messages == []

        assert client.test_provider("local", "hb@bücher.example", allow_suppressed=True).ok
        body = {"to": "hb@bücher.example", "allow_suppressed": True}
        assert http.post("/v1/providers/local/test", json=body).json()["ok"] is True
        args = ["providers", "test", "local", "--to", "hb@bücher.example", "--allow-suppressed"]
        assert main(args) == 0
        assert len(smtp.messages) == 3
        assert client.test_provider("local", "someone@example.com").ok  # not suppressed


def _sent_campaign(r: redis.Redis, smtp: SmtpTestServer, campaign_id: str) -> dict[str, str]:
    """A sent campaign of two recipients; each one's unsubscribe path (``/u/<token>``)."""
    smtp_provider(r, smtp.port, preference_center="system")
    run_inline(r, {**_campaign(campaign_id), "draft": False}, FAST)
    return {
        m.rcpt_tos[0]: "/" + m.message["List-Unsubscribe"].strip("<>").split("/", 3)[3]
        for m in smtp.messages
    }


@covers("POST /u/{token}", "DELETE /v1/suppressions/{email}", "POST /preferences/{token}")
def test_an_unsubscribe_after_the_entry_was_removed_suppresses_again(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    with SmtpTestServer() as smtp, api_client(api_server) as http:
        paths = _sent_campaign(redis_client, smtp, "safe-5")
        one_click = {"Content-Type": "application/x-www-form-urlencoded"}
        path = paths["user0@example.com"]
        assert http.post(path, content="List-Unsubscribe=One-Click", headers=one_click)
        assert http.get("/v1/suppressions/user0@example.com").status_code == 200

        # Someone removes the entry (by mistake, or a bulk clean-up); the person, still
        # getting mail, clicks the same message's link again: suppressed again (it said
        # "You are unsubscribed" and changed nothing: the click counted as a repeat).
        assert http.delete("/v1/suppressions/user0@example.com").status_code == 204
        again = http.post(path, content="List-Unsubscribe=One-Click", headers=one_click)
        assert again.status_code == 200 and "You are unsubscribed" in again.text
        entry = http.get("/v1/suppressions/user0@example.com")
        assert entry.status_code == 200, entry.text
        assert entry.json()["reason"] == "unsubscribed"

        # The same through the preference center's "unsubscribe from all".
        assert http.delete("/v1/suppressions/user0@example.com").status_code == 204
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        center = path.replace("/u/", "/preferences/")
        assert http.post(center, content="action=unsubscribe-all", headers=form).is_success
        assert http.get("/v1/suppressions/user0@example.com").status_code == 200

        # The campaign counted the person once.
        assert http.get("/v1/campaigns/safe-5").json()["unsubscribed"] == 1


def test_removing_a_suppression_logs_the_entry_it_removed(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    suppressions.add("Eve@Example.com", reason="spam", source="callback:esp:spamreport")
    with caplog.at_level(logging.INFO, logger="dispatch.suppressions"):
        assert main(["suppressions", "remove", "EVE@example.com"]) == 0
        assert main(["suppressions", "remove", "eve@example.com"]) == 1  # nothing left
    assert capsys.readouterr().out.split() == ["removed", "not", "suppressed"]
    [record] = [r for r in caplog.records if r.name == "dispatch.suppressions"]
    assert record.getMessage().startswith("suppression removed: eve@example.com (spam, ")
    assert record.__dict__["suppression"]["source"] == "callback:esp:spamreport"
    assert suppressions.get("eve@example.com") is None


@covers("POST /v1/campaigns")
def test_a_campaign_copying_a_suppressed_address_is_refused_naming_it(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Cc and Bcc get a copy of every message: one on the suppression list would get one
    per recipient. The campaign is refused (409 on the field, nothing stored) until it is
    taken out or its entry removed; a repeat of a campaign accepted before is answered as
    a repeat."""
    with SmtpTestServer() as smtp, api_client(api_server) as http:
        smtp_provider(redis_client, smtp.port)
        accepted = _campaign("copy-0", cc=["boss@example.com"])
        assert http.post("/v1/campaigns", json=accepted).status_code == 201
        suppressions.add("Boss@Example.com", reason="spam", source="callback:esp:spamreport")
        suppressions.add("archive@example.com", reason="hard_bounce", source="callback:esp:bounce")

        for field, body in (
            ("cc", _campaign("copy-1", cc=["ok@example.com", "BOSS@example.com"])),
            ("bcc", _campaign("copy-1", bcc=["archive@example.com"])),
        ):
            refused = http.post("/v1/campaigns", json=body)
            assert refused.status_code == 409, refused.text
            assert refused.json()["field"] == field
            detail = refused.json()["detail"]
            assert "is on the suppression list" in detail and "DELETE /v1/suppressions/" in detail
        named = http.post("/v1/campaigns", json=_campaign("copy-1", cc=["boss@example.com"]))
        assert named.json()["detail"].startswith("cc: boss@example.com is on the suppression list")
        assert http.get("/v1/campaigns/copy-1").status_code == 404  # nothing stored

        assert http.post("/v1/campaigns", json=accepted).status_code == 200  # a repeat
        assert http.delete("/v1/suppressions/boss@example.com").status_code in (200, 204)
        copied = _campaign("copy-1", cc=["boss@example.com"])
        assert http.post("/v1/campaigns", json=copied).status_code == 201


@covers("POST /v1/campaigns")
def test_an_amp_part_without_an_html_part_is_refused_naming_amp(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """The AMP part goes before the HTML part (clients that show only the last part show
    the HTML one); with no HTML part it was the last, and those clients showed the AMP
    source to every recipient. A campaign with AMP needs HTML; nothing is stored."""
    with SmtpTestServer() as smtp, api_client(api_server) as http:
        smtp_provider(redis_client, smtp.port)
        amp = "<!doctype html><html ⚡4email><body>Hi {{ name }}</body></html>"
        for html in ("", "  \n"):
            body = _campaign("amp-0", html=html, text="Hi {{ name }}", amp=amp)
            refused = http.post("/v1/campaigns", json=body)
            assert refused.status_code == 422, refused.text
            assert refused.json()["field"] == "amp"
            assert "needs an html part" in refused.json()["detail"]
        assert http.get("/v1/campaigns/amp-0").status_code == 404
        accepted = http.post("/v1/campaigns", json=_campaign("amp-0", amp=amp))
        assert accepted.status_code == 201, accepted.text
        assert http.post("/v1/campaigns", json=_campaign("amp-0", amp=amp)).status_code == 200


def test_a_file_test_is_refused_for_what_the_campaign_would_be(
    redis_client: redis.Redis, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """``dispatch send FILE --test ADDR`` ran none of the campaign's checks: a file whose
    campaign would be refused (AMP without HTML, a variable one recipient lacks, an
    ``expires_at`` passed) still sent its test, which passed for the campaign."""
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port)
        file = tmp_path / "campaign.yaml"
        for fields, named in (
            ({"html": "", "text": "Hi {{ name }}", "amp": "<b>{{ name }}</b>"}, "amp: "),
            ({"recipients": [{"email": "a@example.com", "vars": {"name": "A"}},
                             {"email": "b@example.com"}]}, "vars: unknown template variable"),
            ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at: must be in the future"),
        ):  # fmt: skip
            file.write_text(yaml.safe_dump(_campaign("file-test", draft=False, **fields)))
            assert main(["send", str(file), "--test", "me@acme.example"]) == 2
            assert capsys.readouterr().err.startswith(f"error: {named}")
        assert smtp.messages == []
        file.write_text(yaml.safe_dump(_campaign("file-test", draft=False)))
        assert main(["send", str(file), "--test", "me@acme.example"]) == 0
        assert [m.rcpt_tos for m in smtp.messages] == [["me@acme.example"]]
        assert not redis_client.exists(store.campaign_key("file-test"))
