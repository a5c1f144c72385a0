"""A template's ``unsubscribe_url`` through a provider without a preference center
(``preference_center: none``, the default): dispatch makes no link, so the name is the
sender's own, from vars, as ``$$UnsubscribeURL`` is (it was overwritten with an empty
one)."""

from __future__ import annotations

from typing import Any

import redis

from tests.api_server import ApiServer
from tests.api_support import api_client, covers
from tests.helpers import run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer

HTML = '<p>Hi {{ name }}</p><p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'


def _campaign(campaign_id: str, recipients: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {
        "id": campaign_id,
        "provider": "local",
        "subject": "Hi {{ name }}",
        "html": HTML,
        "recipients": recipients,
        **fields,
    }


def test_the_senders_own_link_in_vars_reaches_each_recipient(redis_client: redis.Redis) -> None:
    """A recipient's own link, else the campaign's: in the HTML and the text part."""
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port)  # preference_center: none
        body = _campaign(
            "p24-own-links",
            [
                {"email": "ann@example.com", "vars": {"name": "Ann", "unsubscribe_url": "https://acme.example/u?who=ann"}},
                {"email": "bob@example.com", "vars": {"name": "Bob"}},
            ],
            vars={"unsubscribe_url": "https://acme.example/u"},
        )  # fmt: skip
        _, results = run_inline(redis_client, body)
        assert [r.counts for r in results] == [{"sent": 2}]
        got = {}
        for received in smtp.messages:
            message = received.message
            html, text = message.get_body(("html",)), message.get_body(("plain",))
            assert html is not None and text is not None
            got[message["To"]] = (html.get_content(), text.get_content())
    ann_html, ann_text = got["ann@example.com"]
    assert '<a href="https://acme.example/u?who=ann">Unsubscribe</a>' in ann_html
    assert "Unsubscribe (https://acme.example/u?who=ann)" in ann_text
    bob_html, bob_text = got["bob@example.com"]
    assert '<a href="https://acme.example/u">Unsubscribe</a>' in bob_html
    assert "Unsubscribe (https://acme.example/u)" in bob_text


def test_a_preference_center_still_gives_each_recipient_dispatchs_link(
    redis_client: redis.Redis,
) -> None:
    """With a center the link is dispatch's signed one, whatever a var of that name says
    (a recipient cannot point their List-Unsubscribe and their link apart)."""
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port, preference_center="system")
        body = _campaign(
            "p24-center-links",
            [{"email": "ann@example.com", "vars": {"name": "Ann", "unsubscribe_url": "https://evil.example/"}}],
        )  # fmt: skip
        run_inline(redis_client, body)
        [received] = smtp.messages
    message = received.message
    header = str(message["List-Unsubscribe"])
    html = message.get_body(("html",))
    assert html is not None
    assert header.startswith("<") and header.endswith(">") and "/u/" in header
    assert f'<a href="{header[1:-1]}">Unsubscribe</a>' in html.get_content()
    assert "evil.example" not in received.data.decode()


@covers("POST /v1/campaigns")
def test_without_center_or_var_the_link_is_in_context_and_empty(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """DESIGN §3 puts ``unsubscribe_url`` in every template's context: with no center and
    no var of that name the campaign is taken (the link renders empty, as the README
    warns), not refused."""
    with SmtpTestServer() as smtp, api_client(api_server) as http:
        smtp_provider(redis_client, smtp.port)  # preference_center: none
        recipients = [{"email": "ann@example.com", "vars": {"name": "Ann"}}]
        taken = http.post("/v1/campaigns", json=_campaign("p24-no-link", recipients, draft=True))
        assert taken.status_code == 201, taken.text
