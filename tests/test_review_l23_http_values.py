"""Review L23, Generic HTTP provider: values its payload cannot carry, through the real API
and a real recording HTTP server.

* A batch provider's message template with a placeholder inside longer text (``"v=$$v"``)
  fed a value with no JSON text (an integer beyond 64 bits, a list holding a lone
  surrogate: what a test email's ``vars`` may hold) raised orjson's ``TypeError`` out of
  the whole chunk: the test email answered 500. The same value as the whole leaf, or
  without batching, failed the message as ``Invalid message``; now this does too.
* A campaign var with a line break (a YAML block scalar ends with one) that its provider
  puts in a header was accepted, and then every message it filled failed ``Invalid
  message`` at send time (with batching, every message of the campaign), which
  retry-failed does not send again. It is now refused when the campaign is created,
  naming ``vars.<name>``; a recipient's own such value still fails that message alone.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from dispatch import campaign_reads
from tests.api_server import ApiServer
from tests.api_support import api_client
from tests.http_sink import HttpSink
from tests.test_review_f7_http import refused_test_email

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
        verdict = refused_test_email(api, sink, raw)
    assert "cannot be written as JSON" in verdict["detail"]


@pytest.mark.parametrize("batch", [True, False])
def test_a_campaign_var_no_header_can_carry_is_refused_when_the_campaign_is_created(
    api_server: ApiServer, redis_client: redis.Redis, batch: bool
) -> None:
    body: Any = {"msgs": [ITEM]} if batch else ITEM
    with HttpSink() as sink, api_client(api_server) as api:
        provider = _provider(sink.url, batch=batch, body=body, headers={"X-Tag": "sale/$$tag"})
        assert api.put("/v1/providers/esp", json=provider).status_code == 201
        campaign = {
            "provider": "esp",
            "subject": "Hi",
            "html": "<p>Hi</p>",
            "recipients": [{"email": "a@example.com"}, {"email": "b@example.com"}],
        }
        refused = api.post("/v1/campaigns", json={**campaign, "vars": {"tag": "spring\n"}})
        assert refused.status_code == 422, refused.text
        error = refused.json()
        assert error["field"] == "vars.tag"
        assert "$$tag" in error["detail"] and "header" in error["detail"]

        created = api.post("/v1/campaigns", json={**campaign, "vars": {"tag": "spring"}})
        assert created.status_code in (200, 201, 202), created.text
        assert sink.requests == []  # (sent by a worker: none runs here)
    summary = campaign_reads.campaign_summary(created.json()["id"], redis_client)
    assert summary["total"] == 2


def test_a_recipients_own_value_with_a_line_break_is_not_the_campaigns_fault(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Non-batch: a recipient's value overrides the campaign's; such a value fails that
    message alone at send time (tests/test_http_provider.py), the campaign is taken."""
    with HttpSink() as sink, api_client(api_server) as api:
        provider = _provider(sink.url, body=ITEM, headers={"X-Tag": "$$tag"})
        assert api.put("/v1/providers/esp", json=provider).status_code == 201
        created = api.post(
            "/v1/campaigns",
            json={
                "provider": "esp",
                "subject": "Hi",
                "html": "<p>Hi</p>",
                "vars": {"tag": "spring"},
                "draft": True,
                "recipients": [{"email": "a@example.com", "vars": {"tag": "a\r\nX-Evil: 1"}}],
            },
        )
    assert created.status_code in (200, 201, 202), created.text
