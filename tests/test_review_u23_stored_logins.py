"""Review U23: a service login (SES, SendGrid, Gmail) saved before its pasted spaces were
taken out, through the real API and a real aiosmtpd over SMTPS (test CA).

Providers saved before the rule keep the spaces in Redis (a login pasted with a space
at an end; a Gmail app password as Google's dialog shows it, in groups of four). The
rule ran only on save, and a save that gives the mask back (a GET's answer PUT back, as
the README has users change other fields) keeps the stored password as it is stored:
such a provider stayed refused (535, every campaign paused) unless the password was
typed again, which its mask never says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from dispatch import store
from dispatch.provider_store import _encode
from providers.config import parse_provider_config
from tests.api_server import ApiServer
from tests.api_support import api_client, covers
from tests.smtp_server import SmtpTestServer

SENDGRID_KEY = "SG.abcdefghijklmnopqrstuv.0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"
# kind: (login the server takes, login as stored before the rule)
LOGINS = {
    "sendgrid": (("apikey", SENDGRID_KEY), (" apikey", f"\u00a0{SENDGRID_KEY} ")),
    "gmail": (
        ("deals@acme.example", "abcdefghijklmnop"),
        ("deals@acme.example ", "abcd efgh\u00a0ijkl mnop"),
    ),
}


def _save_as_before(client: redis.Redis, body: dict[str, Any]) -> None:
    """Store ``body`` as the code before the rule did: its login as given."""
    config = parse_provider_config(body, stored=True)
    client.set(store.provider_key(config.nickname), _encode(config, "token-before"))
    client.sadd(store.PROVIDERS_SET, config.nickname)


@pytest.mark.parametrize("kind", sorted(LOGINS))
@covers(
    "GET /v1/providers/{nickname}",
    "PUT /v1/providers/{nickname}",
    "POST /v1/providers/{nickname}/test",
)
def test_a_service_login_stored_with_spaces_before_the_rule_logs_in(
    kind: str, api_server: ApiServer, redis_client: redis.Redis, trusted_cert: tuple[Path, Path]
) -> None:
    login, stored = LOGINS[kind]
    with SmtpTestServer(security="tls", credentials=login, cert=trusted_cert) as server:
        body = {
            "nickname": kind,
            "kind": kind,
            "host": "127.0.0.1",
            "port": server.port,
            "security": "tls",
            "tls_ca": trusted_cert[0].read_text(),
            "timeout": 5.0,
            "from_address": "deals@acme.example",
            "username": stored[0],
            "password": stored[1],
        }
        _save_as_before(redis_client, body)
        with api_client(api_server) as api:
            answer = api.post(f"/v1/providers/{kind}/test", json={"to": "ann@example.com"})
            assert answer.json() == {"ok": True, "error": None, "detail": "accepted"}
            # Saved again as read (the password masked): still the login the server takes.
            view = api.get(f"/v1/providers/{kind}").json()
            assert view["username"] == login[0] and view["password"] == "********"
            view["timeout"] = 6.0
            assert api.put(f"/v1/providers/{kind}", json=view).status_code == 200
            again = api.post(f"/v1/providers/{kind}/test", json={"to": "bob@example.com"})
            assert again.json() == {"ok": True, "error": None, "detail": "accepted"}
    assert [m.rcpt_tos for m in server.messages] == [["ann@example.com"], ["bob@example.com"]]
