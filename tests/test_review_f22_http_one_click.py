"""Review F22: a Generic HTTP provider with a preference center whose payload places no
``$$UnsubscribeURL`` sends every message without ``List-Unsubscribe`` (dispatch adds
nothing to what an HTTP provider sends), and nothing said so.

DESIGN §6 promises the header on every message of a provider with ``preference_center``
``system`` or ``custom``; Gmail and Yahoo ask one-click unsubscribe of bulk senders. The
operator who set the center got no warning on saving and every message went out without
it. The provider now carries a warning naming what to add.
"""

from __future__ import annotations

from typing import Any

import redis

from tests.api_server import ApiServer
from tests.api_support import api_client
from tests.helpers import run_inline
from tests.http_sink import HttpSink
from tests.test_pages import FAST

MESSAGE = {"to": "$$To", "mid": "$$MessageID", "subject": "$$Subject", "html": "$$HTML",
           "from": "$$FromName <$$FromAddress>"}  # fmt: skip
LINK_HEADERS = {"List-Unsubscribe": "<$$UnsubscribeURL>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}  # fmt: skip


def _provider(endpoint: str, center: str, message: dict[str, Any]) -> dict[str, Any]:
    url = "https://c.acme.example/" if center == "custom" else ""
    return {"kind": "http", "method": "POST", "endpoint": endpoint, "body": message,
            "from_name": "Acme", "from_address": "d@acme.example", "preference_center": center,
            "preference_center_url": url}  # fmt: skip


def _one_click_warnings(answer: Any) -> list[str]:
    assert answer.is_success, answer.text
    return [w for w in answer.json()["warnings"] if "List-Unsubscribe" in w]


def test_a_center_whose_payload_has_no_link_is_warned_about(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    with HttpSink() as sink, api_client(api_server) as api:
        saved = api.put("/v1/providers/esp", json=_provider(f"{sink.url}/send", "system", MESSAGE))
        (warning,) = _one_click_warnings(saved)
        assert warning.startswith("preference_center:") and "$$UnsubscribeURL" in warning
        assert _one_click_warnings(api.get("/v1/providers/esp")) == [warning]
        # What it warns of: the message went out with no link of the person's at all.
        body = {"provider": "esp", "subject": "s", "html": "<p>hi</p>",
                "recipients": [{"email": "user0@example.com"}]}  # fmt: skip
        run_inline(redis_client, body, FAST)
        (request,) = sink.requests
        assert request.json()["to"] == "user0@example.com"
        assert "/u/" not in request.body.decode() and request.header("List-Unsubscribe") is None
        custom = api.put("/v1/providers/esp", json=_provider(sink.url, "custom", MESSAGE))
        assert len(_one_click_warnings(custom)) == 1
        # A payload carrying the link (in the message or the request's headers), or no
        # center at all: nothing to say.
        with_link = _provider(sink.url, "system", {**MESSAGE, "headers": LINK_HEADERS})
        assert _one_click_warnings(api.put("/v1/providers/esp", json=with_link)) == []
        in_headers = {**_provider(sink.url, "custom", MESSAGE), "headers": LINK_HEADERS}
        assert _one_click_warnings(api.put("/v1/providers/esp", json=in_headers)) == []
        none = api.put("/v1/providers/esp", json=_provider(sink.url, "none", MESSAGE))
        assert _one_click_warnings(none) == []
