"""Review D22: templates a campaign's creation misjudged. An inline ``if ... is defined``
was taken as a required name (the campaign refused, though every message renders), and
a template nested past what CPython compiles answered 500 instead of a 422 naming it."""

from __future__ import annotations

import pytest
import redis

from dispatch import message_pages
from dispatch.campaigns import CampaignError
from tests.api_server import ApiServer
from tests.api_support import api_client
from tests.helpers import http_provider, run_inline
from tests.http_sink import HttpSink


def test_an_inline_if_defined_lets_a_recipient_go_without_the_name(
    redis_client: redis.Redis,
) -> None:
    """README: a variable read under an ``is defined`` test may be missing; the inline
    form guards it as ``{% if %}`` does, and each recipient gets the branch it should."""
    body = {
        "provider": "esp",
        "subject": "{{ 'Hello' if name is undefined else 'Hi ' ~ name }}",
        "html": "<p>Dear {{ name if name is defined else 'friend' }}</p>",
        "recipients": [
            {"email": "ann@example.com", "vars": {"name": "Ann & Bo"}},
            {"email": "nobody@example.com"},
        ],
    }
    with HttpSink() as sink:
        http_provider(redis_client, sink.url)
        cid, _ = run_inline(redis_client, body)
        sent = {m["to"]: m for r in sink.requests for m in r.json()["msgs"]}
    page, _ = message_pages.messages_page(cid, client=redis_client)
    assert [m["status"] for m in page] == ["sent", "sent"]
    assert sent["ann@example.com"]["subject"] == "Hi Ann & Bo"
    assert sent["ann@example.com"]["html"] == "<p>Dear Ann &amp; Bo</p>"
    assert sent["nobody@example.com"]["subject"] == "Hello"
    assert sent["nobody@example.com"]["html"] == "<p>Dear friend</p>"


def test_a_name_an_inline_if_does_not_guard_is_still_required(
    redis_client: redis.Redis,
) -> None:
    body = {
        "provider": "esp",
        "subject": "s",
        "html": "<p>{{ name if vip else 'friend' }}</p>",
        "vars": {"vip": True},
        "recipients": [{"email": "nobody@example.com"}],
    }
    http_provider(redis_client, "http://127.0.0.1:9")
    with pytest.raises(CampaignError, match=r"unknown template variable.*name"):
        run_inline(redis_client, body)


@pytest.mark.parametrize(
    ("part", "template"),
    [
        ("html", "<p>{{ " + " + ".join(["1"] * 200) + " }}</p>"),  # nested parentheses
        ("subject", "{% if x %}" * 100 + "s" + "{% endif %}" * 100),  # indentation levels
        ("text", "{% for a in x %}" * 30 + "t" + "{% endfor %}" * 30),  # nested blocks
    ],
)
def test_a_template_nested_past_what_python_compiles_is_a_422(
    api_server: ApiServer, redis_client: redis.Redis, part: str, template: str
) -> None:
    http_provider(redis_client, "http://127.0.0.1:9")
    body = {
        "provider": "esp",
        "subject": "s",
        "html": "<p>h</p>",
        "vars": {"x": [1]},
        "draft": True,
        "recipients": [{"email": "ann@example.com"}],
        part: template,
    }
    with api_client(api_server) as api:
        answer = api.post("/v1/campaigns", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == part
    detail = answer.json()["detail"]
    assert f"{part}: template does not compile: expressions or tags nested too deeply" in detail
