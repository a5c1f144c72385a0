"""The SendGrid seed page (seed 004) point by point, through the real API."""

from __future__ import annotations

import redis

from tests.api_server import ApiServer
from tests.api_support import api_client, covers


@covers("PUT /v1/providers/{nickname}")
def test_a_sendgrid_account_user_name_is_saved_with_a_warning(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Seed 004 says "Fill in the Username value as your SendGrid username"; the relay
    takes only ``apikey`` (reference §2.6), so a user following the page got a provider
    whose every campaign paused on a refused login, with no word on save."""
    config = {"kind": "sendgrid", "password": "SG.key", "from_address": "deals@acme.example"}
    with api_client(api_server) as api:
        seeded = api.put("/v1/providers/sg-user", json={**config, "username": "acme-marketing"})
        assert seeded.status_code in (200, 201), seeded.text
        assert any("apikey" in w for w in seeded.json()["warnings"]), seeded.json()
        default = api.put("/v1/providers/sg-key", json=config)
        assert default.json()["warnings"] == [] and default.json()["username"] == "apikey"
        # A relay of one's own (a test server, a proxy) may take other names: no warning.
        other = api.put("/v1/providers/sg-local", json={**config, "host": "127.0.0.1",
                                                        "username": "acme-marketing"})  # fmt: skip
        assert other.json()["warnings"] == []
