"""An API without DISPATCH_API_TOKENS (``dispatch up``: local use) answers local clients
only: not a web page of another site that posts to it, nor one that rebinds its own
name to 127.0.0.1 (DNS rebinding) to read and change everything as its same origin."""

from __future__ import annotations

import redis

from dispatch.redis_server import RedisServer
from tests.callback_support import api_process

SMTP_PROVIDER = {
    "kind": "smtp",
    "host": "127.0.0.1",
    "port": 2525,
    "security": "none",
    "from_address": "deals@acme.example",
}
CAMPAIGN = {
    "id": "c1",
    "provider": "local",
    "subject": "s",
    "html": "<p>h</p>",
    "draft": True,
    "recipients": [{"email": "jane@example.com"}],
}


def test_an_open_api_refuses_other_sites_pages_and_rebound_names(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    with api_process(redis_server.url) as http:
        port = http.base_url.port
        assert http.put("/v1/providers/local", json=SMTP_PROVIDER).status_code == 201
        assert http.post("/v1/campaigns", json=CAMPAIGN).status_code == 201

        # DNS rebinding: the page's own name now resolves to 127.0.0.1; its requests
        # carry that name in Host (and, for a PUT, as their Origin).
        rebound = {"Host": f"attacker.example:{port}"}
        read = http.get("/v1/campaigns/c1/messages", headers=rebound)
        put = http.put(
            "/v1/providers/local",
            json={**SMTP_PROVIDER, "host": "relay.attacker.example"},
            headers={**rebound, "Origin": f"http://attacker.example:{port}"},
        )
        # A page of another site: a post with no body needs no preflight.
        posted = http.post(
            "/v1/campaigns/c1/cancel",
            headers={"Origin": "https://attacker.example", "Content-Type": "text/plain"},
        )
        sandboxed = http.post("/v1/campaigns/c1/start", headers={"Origin": "null"})

        assert read.status_code == 403, read.text
        assert "jane@example.com" not in read.text
        assert read.json()["field"] == "host"
        assert put.status_code == 403 and put.json()["field"] == "host"
        assert posted.status_code == 403, posted.text
        assert posted.json()["field"] == "origin"
        assert sandboxed.status_code == 403 and sandboxed.json()["field"] == "origin"
        assert redis_client.hget("dispatch:campaign:c1", "status") == "draft"
        assert http.get("/v1/providers/local").json()["host"] == "127.0.0.1"

        # Local clients, and the API's own pages (/docs), are served as before.
        assert http.get("/v1/campaigns/c1").json()["status"] == "draft"
        named = http.get("/v1/campaigns/c1", headers={"Host": f"localhost:{port}"})
        assert named.status_code == 200
        own = http.post("/v1/campaigns/c1/cancel", headers={"Origin": f"http://127.0.0.1:{port}"})
        assert own.status_code == 200 and own.json()["status"] == "cancelled"
