"""Upgrading from 988efa1 (review Y23): what that version stored is read as this one
means it. The data is written as that version stored it (as tests/test_upgrade.py does)."""

from __future__ import annotations

import orjson
import pytest
import redis

from dispatch import crypto, provider_store, store
from tests.api_server import ApiServer
from tests.api_support import api_client
from tests.smtp_server import SmtpTestServer

LOGIN = ("AKIAEXAMPLE", "ses-smtp-password")


@pytest.mark.parametrize("kind", ["ses", "sendgrid"])
def test_a_service_login_stored_with_a_pasted_space_logs_in_after_the_upgrade(
    api_server: ApiServer, redis_client: redis.Redis, kind: str
) -> None:
    with SmtpTestServer(credentials=LOGIN) as server, api_client(api_server) as api:
        data = {
            "nickname": "pasted", "kind": kind, "host": "127.0.0.1", "port": server.port,
            "security": "none", "username": LOGIN[0], "password": LOGIN[1],
            "from_name": "Acme", "from_address": "news@acme.example",
        }  # fmt: skip
        provider_store.save_provider(data, client=redis_client)
        # 988efa1 saved the password as pasted, a no-break space at its end: every login
        # was refused (535), and so it stayed after the upgrade, saved back as read too.
        stored = orjson.loads(redis_client.get(store.provider_key("pasted")) or b"")
        stored["password"] = {"enc": crypto.encrypt(LOGIN[1] + "\u00a0")}
        redis_client.set(store.provider_key("pasted"), orjson.dumps(stored))

        test = api.post("/v1/providers/pasted/test", json={"to": "ann@example.com"})
        assert test.json()["ok"], test.text
        view = api.get("/v1/providers/pasted").json()
        assert api.put("/v1/providers/pasted", json=view).status_code == 200
        test = api.post("/v1/providers/pasted/test", json={"to": "bob@example.com"})
        assert test.json()["ok"], test.text
        assert [m.rcpt_tos for m in server.handler.messages] == [
            ["ann@example.com"],
            ["bob@example.com"],
        ]
