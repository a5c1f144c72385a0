"""A template's ``unsubscribe_url`` through a provider without a preference center
(``preference_center: none``, the default): dispatch makes no link, so the name is the
sender's own, from vars, as ``$$UnsubscribeURL`` is; a campaign whose messages would carry
an empty unsubscribe link is refused when created, never sent with a dead link."""

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


@covers("POST /v1/campaigns", "POST /v1/campaigns/{campaign_id}/recipients")
def test_a_campaign_that_would_send_an_empty_unsubscribe_link_is_refused(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    with SmtpTestServer() as smtp, api_client(api_server) as http:
        smtp_provider(redis_client, smtp.port)  # preference_center: none
        recipients = [{"email": "ann@example.com", "vars": {"name": "Ann"}}]
        refused = http.post("/v1/campaigns", json=_campaign("p24-dead-link", recipients))
        assert refused.status_code == 422, refused.text
        detail = refused.json()["detail"]
        assert "unsubscribe_url (html line 1)" in detail
        assert "provider 'local' has preference_center none" in detail
        assert "set it to system or custom, or give your own link in vars" in detail

        # A draft takes its recipients later: each must then bring the link.
        draft = _campaign("p24-dead-link-draft", [], draft=True)
        assert http.post("/v1/campaigns", json=draft).status_code == 201
        appended = http.post("/v1/campaigns/p24-dead-link-draft/recipients", json=recipients)
        assert appended.status_code == 200, appended.text
        assert (appended.json()["appended"], appended.json()["rejected"]) == (0, 1)
        [error] = appended.json()["errors"]
        assert error["field"] == "vars.unsubscribe_url"
        assert "provider 'local' has preference_center none" in error["message"]

        # With the provider's center, or with the link given, it is taken.
        smtp_provider(redis_client, smtp.port, preference_center="system")
        assert http.post(
            "/v1/campaigns", json=_campaign("p24-center", recipients, draft=True)
        ).is_success
        smtp_provider(redis_client, smtp.port)
        own = _campaign(
            "p24-own", recipients, draft=True, vars={"unsubscribe_url": "https://acme.example/u"}
        )
        assert http.post("/v1/campaigns", json=own).is_success
