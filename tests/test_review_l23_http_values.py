"""Review L23, Generic HTTP provider: values its payload cannot carry, through the real API
and a real recording HTTP server.

* A batch provider's message template with a placeholder inside longer text (``"v=$$v"``)
  fed a value with no JSON text (an integer beyond 64 bits, a list holding a lone
  surrogate: what a test email's ``vars`` may hold) raised orjson's ``TypeError`` out of
  the whole chunk: the test email answered 500. The same value as the whole leaf, or
  without batching, failed the message as ``Invalid message``; now this does too.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from tests.api_server import ApiServer
from tests.api_support import api_client
from tests.http_sink import HttpSink

ITEM = {"to": "$$To", "s": "$$Subject", "fn": "$$FromName", "fa": "$$FromAddress", "h": "$$HTML"}


def _provider(url: str, **fields: Any) -> dict[str, Any]:
    return {
        "kind": "http",
        "endpoint": f"{url}/send",
        "from_name": "Acme",
        "from_address": "deals@acme.example",
        **fields,
    }


@pytest.mark.parametrize("raw", ["1180591620717411303424", '["a\\ud800b"]'])
def test_a_test_email_whose_var_cannot_be_written_inside_text_of_a_batch_item_is_answered(
    api_server: ApiServer, redis_client: redis.Redis, raw: str
) -> None:
    with HttpSink() as sink, api_client(api_server) as api:
        body = {"msgs": [{**ITEM, "note": "v=$$v"}]}
        saved = api.put("/v1/providers/esp", json=_provider(sink.url, batch=True, body=body))
        assert saved.status_code == 201, saved.text
        answer = api.post(
            "/v1/providers/esp/test",
            content=f'{{"to": "t@example.com", "vars": {{"v": {raw}}}}}',
            headers={"Content-Type": "application/json"},
        )
        assert sink.requests == []
    assert answer.status_code == 200, answer.text
    verdict = answer.json()
    assert (verdict["ok"], verdict["error"]) == (False, "Invalid message")
    assert "cannot be written as JSON" in verdict["detail"]
