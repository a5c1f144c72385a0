"""Review X10: provider configurations as users write them (DESIGN §2), over the real API."""

from __future__ import annotations

import redis

from tests.api_server import ApiServer
from tests.api_support import api_client, smtp_body
from tests.smtp_server import SmtpTestServer


def test_a_pace_slower_than_one_message_a_day_is_refused_naming_rate_per_second(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A rate of 1e-300 was saved, then the test email answered 500 (the pace script's
    expiry overflowed) and every batch of its campaigns failed the same way."""
    with SmtpTestServer() as smtp, api_client(api_server) as api:
        for rate in (1e-300, 1e-6):
            answer = api.put("/v1/providers/slow", json=smtp_body(smtp.port, rate_per_second=rate))
            assert answer.status_code == 422, answer.text
            error = answer.json()
            assert error["field"] == "rate_per_second"
            assert "one a day" in error["detail"] and "daily_quota" in error["detail"]
        assert api.get("/v1/providers/slow").status_code == 404

        for rate in (0, 1 / 86400, 0.5):  # none, the slowest pace, a slow one
            saved = api.put("/v1/providers/slow", json=smtp_body(smtp.port, rate_per_second=rate))
            assert saved.status_code in (200, 201), saved.text
        test = api.post("/v1/providers/slow/test", json={"to": "someone@example.com"})
        assert test.status_code == 200 and test.json()["ok"] is True
        assert len(smtp.messages) == 1


def test_a_gmail_username_that_is_no_address_is_warned_about(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Gmail's login is the full address (DESIGN §2, seed 001): "team" alone is refused."""
    body = {"kind": "gmail", "password": "abcdefghijklmnop", "from_address": "team@acme.example"}
    with api_client(api_server) as api:
        view = api.put("/v1/providers/gmail", json={**body, "username": "team"}).json()
        assert any("username 'team' is not an email address" in w for w in view["warnings"])
        view = api.put("/v1/providers/gmail", json={**body, "username": "team@acme.example"}).json()
        assert not any("username" in w for w in view["warnings"]), view["warnings"]
        # pointed at another server (a test's), the rule is not Gmail's
        local = {**body, "username": "team", "host": "127.0.0.1", "port": 2465}
        view = api.put("/v1/providers/gmail", json=local).json()
        assert not any("username" in w for w in view["warnings"]), view["warnings"]


def test_an_ses_host_of_another_region_than_region_is_warned_about(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """The host wins over region, silently: credentials made in region's console would
    be refused by the other region's endpoint (reference §4: they are region-specific)."""
    body = {
        "kind": "ses",
        "region": "eu-west-1",
        "username": "AKIAEXAMPLE",
        "password": "p",
        "from_address": "deals@acme.example",
        "sns_topic_arns": ["arn:aws:sns:eu-west-1:123456789012:events"],
    }
    with api_client(api_server) as api:
        view = api.put(
            "/v1/providers/ses", json={**body, "host": "email-smtp.us-east-1.amazonaws.com"}
        ).json()
        assert view["connects_to"]["host"] == "email-smtp.us-east-1.amazonaws.com"
        [warning] = [w for w in view["warnings"] if "region" in w]
        assert "us-east-1" in warning and "eu-west-1" in warning
        for host in ("email-smtp.eu-west-1.amazonaws.com", "", "127.0.0.1"):
            view = api.put("/v1/providers/ses", json={**body, "host": host}).json()
            assert view["warnings"] == [], (host, view["warnings"])


def test_sendgrid_tls_on_its_port_2525_is_refused_naming_security(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """smtp.sendgrid.net speaks plain SMTP and STARTTLS on 2525 (reference §2.6): TLS from
    connect there fails at every connect, as on 587. A local server on 2525 may speak it."""
    body = {"kind": "sendgrid", "password": "SG.k", "from_address": "deals@acme.example"}
    with api_client(api_server) as api:
        refused = api.put("/v1/providers/sg", json={**body, "port": 2525, "security": "tls"})
        assert refused.status_code == 422, refused.text
        assert refused.json()["field"] == "security" and "2525" in refused.json()["detail"]
        saved = api.put("/v1/providers/sg", json={**body, "port": 2525}).json()
        assert saved["connects_to"] == {
            "host": "smtp.sendgrid.net",
            "port": 2525,
            "security": "starttls",
        }
        local = {**body, "host": "127.0.0.1", "port": 2525, "security": "tls"}
        assert api.put("/v1/providers/sg-local", json=local).status_code == 201


def test_ses_recipients_a_message_past_its_50_are_refused_naming_the_field(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """SES takes 50 recipients a message, not adjustable: 0 (no limit) or more let a
    campaign whose cc and bcc pass 50 be created, and every message of it fail at SES.
    A local stand-in for SES (a test server) may take more."""
    body = {"kind": "ses", "region": "eu-west-1", "from_address": "deals@acme.example"}
    with api_client(api_server) as api:
        for limit in (0, 51, 100):
            answer = api.put(
                "/v1/providers/ses", json={**body, "max_recipients_per_message": limit}
            )
            assert answer.status_code == 422, answer.text
            error = answer.json()
            assert error["field"] == "max_recipients_per_message"
            assert "SES takes 1 to 50 recipients a message" in error["detail"]
        saved = api.put("/v1/providers/ses", json={**body, "max_recipients_per_message": 50})
        assert saved.status_code in (200, 201), saved.text
        local = {**body, "host": "127.0.0.1", "port": 2525, "max_recipients_per_message": 100}
        assert api.put("/v1/providers/ses-local", json=local).status_code in (200, 201)
