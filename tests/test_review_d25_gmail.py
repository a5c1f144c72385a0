"""Review D25: the ``gmail`` kind end to end (DESIGN §2), over the real API."""

from __future__ import annotations

import redis

from tests.api_server import ApiServer
from tests.api_support import api_client


def test_a_gmail_from_address_other_than_the_login_is_warned_about(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Gmail sends as the account it logs in to: a From that is not one of the account's
    verified "Send mail as" addresses is rewritten to the account's own address. Saved
    without a word, every campaign went out under another sender than the one given."""
    body = {"kind": "gmail", "username": "team@acme.example", "password": "abcdefghijklmnop"}
    with api_client(api_server) as api:
        view = api.put("/v1/providers/gm", json={**body, "from_address": "deals@acme.example"})
        assert view.status_code in (200, 201), view.text
        warned = [w for w in view.json()["warnings"] if "from_address" in w]
        assert len(warned) == 1 and "Send mail as" in warned[0], view.json()["warnings"]
        assert "'deals@acme.example'" in warned[0] and "'team@acme.example'" in warned[0]
        # The login's own address, in any case: nothing to say.
        view = api.put("/v1/providers/gm", json={**body, "from_address": "Team@ACME.example"})
        assert not any("from_address" in w for w in view.json()["warnings"]), view.json()
        # Pointed at another server (a test's), the rule is not Gmail's.
        local = {**body, "from_address": "deals@acme.example", "host": "127.0.0.1", "port": 2465}
        view = api.put("/v1/providers/gm", json=local)
        assert not any("from_address" in w for w in view.json()["warnings"]), view.json()
