"""``dispatch.client.DispatchClient`` as other services set it up (review J23)."""

from __future__ import annotations

import httpx
import redis

from dispatch.client import DispatchClient
from tests.api_server import ApiServer
from tests.api_support import smtp_body
from tests.conftest import API_TOKEN


def test_the_clients_timeout_holds_for_an_http_client_given_to_it(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """``http=httpx.Client(verify=...)`` is how an HTTPS API with a private CA is
    reached. Its requests went with httpx's default timeout, 5 s, not the client's
    ``timeout`` (60 s by default): a campaign of 300,000 inline recipients (7.6 s to
    store) was ``Unavailable`` after three attempts of 5 s, though the API stored it."""
    sent: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [sent.append]})
    with DispatchClient(api_server.url, API_TOKEN, http=http) as api:
        api.put_provider("local", smtp_body(2525))
        api.create_campaign({"id": "j23-t", "provider": "local", "subject": "s", "html": "h"})
        api.get_campaign("j23-t")
        assert api.test_provider("local", "ops@example.com").ok is False  # (nothing on 2525)
    timeouts = [request.extensions["timeout"] for request in sent]
    assert timeouts[:3] == [dict.fromkeys(("connect", "read", "write", "pool"), 60.0)] * 3
    # A test email's answer is read for its whole deadline, whatever the client's.
    assert timeouts[3] == {"connect": 60.0, "read": 75.0, "write": 60.0, "pool": 60.0}

    sent.clear()
    http = httpx.Client(event_hooks={"request": [sent.append]})
    with DispatchClient(api_server.url, API_TOKEN, timeout=90, http=http) as api:
        assert api.get_campaign("j23-t").id == "j23-t"
    assert sent[0].extensions["timeout"]["read"] == 90.0
