"""A campaign author's templates and mistakes (review R7): what is refused when the
campaign is created (naming the part, the line and what is at fault), what fails one
recipient at send time (with the line, in the ledger and in the test message's answer),
and the text part derived from the HTML (links, lists, table cells)."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from dispatch.campaign_checks import validate_content
from dispatch.campaigns import CampaignError
from dispatch.models import CampaignRequest
from dispatch.rendering import CompiledContent, RenderError, build_context
from dispatch.text_part import derive_text_template, html_to_text
from tests.api_server import ApiServer
from tests.api_support import api_client, covers, wait_for_campaign
from tests.helpers import smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.worker import WorkerProcess

HTML = "html: template does not compile: "
SUBJECT = "subject: template does not compile: "
AMP = "amp: template does not compile: "


def _refusal(**content: str) -> str:
    with pytest.raises(RenderError) as refused:
        CompiledContent(**{"subject": "s", "html": "<p>x</p>", **content})
    return str(refused.value)


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        (
            "<p>a</p>\n{% include 'footer.html' %}",
            HTML + "line 2: {% include %}",
        ),
        ("{% extends 'base.html' %}", "line 1: {% extends %} is not supported"),
        ("{% import 'macros.html' as m %}{{ m.b() }}", "line 1: {% import %} is not supported"),
        ("\n\n{% from 'm.html' import b %}", "line 3: {% from ... import %} is not supported"),
    ],
)
def test_a_tag_that_loads_another_template_is_refused_at_creation(html: str, expected: str) -> None:
    """There is no template store: every message failed at send time ("TypeError: no
    loader for this environment specified") after the campaign was accepted."""
    assert expected in _refusal(html=html)


@pytest.mark.parametrize(
    ("part", "source", "expected"),
    [
        (
            "html",
            "<p>\n{% if name is strng %}x{% endif %}</p>",
            f"{HTML}line 2: no test named 'strng' (did you mean 'string'?)",
        ),
        (
            "html",
            "{{ name | uper if vip }}",
            f"{HTML}line 1: no filter named 'uper' (did you mean 'upper'?)",
        ),
        (
            "subject",
            "{% if name|lenght > 3 %}Hi{% endif %}",
            f"{SUBJECT}line 1: no filter named 'lenght' (did you mean 'length'?)",
        ),
        (
            "amp",
            "a\nb\n{% set x = name|titel if y else '' %}",
            f"{AMP}line 3: no filter named 'titel' (did you mean 'title'?)",
        ),
    ],
)
def test_an_unknown_filter_or_test_in_a_condition_is_refused_at_creation(
    part: str, source: str, expected: str
) -> None:
    """Jinja2 defers an unknown filter or test within a condition to render time: the
    campaign was accepted and each of its messages failed."""
    assert _refusal(**{part: source}) == expected


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        (
            "<ul>\n{% for i in items %}\n<li>{{ i }}</li>\n</ul>",
            "line 3: Unexpected end of template",
        ),
        ("<p>a</p>\n<p>{{ name </p>", "line 2: unexpected '/'"),
        ("<p>a</p>\n\n<p>{{ total | money }}</p>", "line 3: no filter named 'money'"),
    ],
)
def test_a_syntax_error_names_its_line(html: str, expected: str) -> None:
    """The line was missing (or named Jinja2's internal "<introspection>" file)."""
    refusal = _refusal(html=html)
    assert refusal.startswith(HTML) and expected in refusal
    assert "introspection" not in refusal


def test_a_variable_some_recipients_lack_is_named_with_where_and_who() -> None:
    request = CampaignRequest.model_validate(
        {
            "provider": "p",
            "subject": "Hi",
            "html": "<p>Hello</p>\n<p>{{ city }}</p>",
            "recipients": [
                {"email": "a@example.com", "vars": {"city": "Oslo"}},
                {"email": "b@example.com", "vars": {}},
                {"email": "c@example.com", "vars": {}},
            ],
        }
    )
    with pytest.raises(CampaignError) as refused:
        validate_content(request)
    assert refused.value.field == "vars"
    assert str(refused.value) == (
        "unknown template variable(s): city (html line 2): missing from the campaign vars "
        "and from the vars of 2 of 3 recipient(s), first #1; give it there, or write "
        "{{ city | default('') }}"
    )


def _context(**values: Any) -> dict[str, Any]:
    return build_context(
        campaign_vars={},
        user_vars=values,
        email="a@example.com",
        user_id="",
        campaign_id="c",
        unsubscribe_url="https://d.example/u/T",
        preferences_url="https://d.example/preferences/T",
    )


def test_a_render_error_names_its_line() -> None:
    compiled = CompiledContent(
        subject="Hi",
        html=(
            "<p>Total:\n{{ '%.2f' | format(total) }}</p>\n"
            "{% macro row(o) %}\n<td>{{ o.totl }}</td>\n{% endmacro %}\n"
            "{% for o in orders %}{{ row(o) }}{% endfor %}"
        ),
    )
    with pytest.raises(RenderError) as failed:
        compiled.render(_context(total="12.00", orders=[]))
    assert str(failed.value) == "html: line 2: TypeError: must be real number, not str"
    with pytest.raises(RenderError) as failed:
        compiled.render(_context(total=12, orders=[{"total": 1}]))
    assert str(failed.value) == (
        "html: line 4: UndefinedError: 'dict object' has no attribute 'totl'"
    )


LETTER = """<html><head><title>Deals</title></head><body>
<h1>Hello {{ name }}</h1>
<ul>{% for item in items %}<li>{{ item.name }}</li>{% endfor %}</ul>
<table><tr><th>Item</th><th>Price</th></tr><tr><td>Hat</td><td>9.00</td></tr></table>
<p>See <a href="https://acme.example/o/{{ order }}?a=1&amp;b=2">your order</a>,
<a href="{{ site }}">{{ site }}</a>, <a href="mailto:help@acme.example">help@acme.example</a>,
<a href="#top">top</a>.</p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> |
<a href='{{ preferences_url }}'>Preferences</a></p>
</body></html>"""
LETTER_TEXT = """Hello Zoë

- Hat & <scarf>
- Mug

Item Price
Hat 9.00

See your order (https://acme.example/o/A&1?a=1&b=2),
https://acme.example/, help@acme.example,
top.

Unsubscribe (https://d.example/u/T) |
Preferences (https://d.example/preferences/T)"""


def test_the_derived_text_shows_links_list_items_and_cells() -> None:
    """A link's address was dropped with its tag (the text part had no unsubscribe
    link), list items had no marker and a row's cells ran together ("ItemPrice")."""
    values = {
        "name": "Zoë",
        "items": [{"name": "Hat & <scarf>"}, {"name": "Mug"}],
        "order": "A&1",
        "site": "https://acme.example/",
    }
    out = CompiledContent(subject="s", html=LETTER).render(_context(**values))
    assert out.text == LETTER_TEXT
    # The text template derived once gives what converting each message's HTML gives.
    assert derive_text_template(LETTER) is not None
    assert out.text == html_to_text(out.html)


@covers("POST /v1/campaigns", "GET /v1/campaigns/{campaign_id}/messages")
@covers("POST /v1/campaigns/{campaign_id}/test")
def test_a_template_failing_for_one_recipient_fails_that_one_with_its_line(
    api_server: ApiServer, celery_worker: WorkerProcess, redis_client: redis.Redis
) -> None:
    """For real: the API, a worker, an SMTP server. A price given as text fails its
    recipient alone, with the line in the ledger; the test message of that recipient
    answers the same; the others are sent, their text part carrying the links."""
    html = "<p>Hi {{ name }},</p>\n<p>{{ '%.2f' | format(price) }} EUR</p>\n" + (
        "<p><a href='{{ unsubscribe_url }}'>Unsubscribe</a></p>"
    )
    with SmtpTestServer() as smtp, api_client(api_server) as http:
        smtp_provider(redis_client, smtp.port, preference_center="system")
        body = {
            "id": "r7-one-fails",
            "provider": "local",
            "subject": "Offer for {{ name }}",
            "html": html,
            "recipients": [
                {"email": "ann@example.com", "vars": {"name": "Ann", "price": 9.5}},
                {"email": "bob@example.com", "vars": {"name": "Bob", "price": "9.50"}},
                {"email": "cy@example.com", "vars": {"name": "Cy", "price": 3}},
            ],
        }
        created = http.post("/v1/campaigns", json=body)
        assert created.status_code == 201, created.text
        summary = wait_for_campaign(http, "r7-one-fails", lambda s: s["status"] == "completed")
        assert (summary["sent"], summary["failed"]) == (2, 1)
        failed = http.get("/v1/campaigns/r7-one-fails/messages", params={"status": "failed"})
        [item] = failed.json()["items"]
        detail = "html: line 2: TypeError: must be real number, not str"
        assert (item["email"], item["error_class"], item["detail"]) == (
            "bob@example.com",
            "Invalid message",
            detail,
        )
        tested = http.post(
            "/v1/campaigns/r7-one-fails/test", json={"to": "me@acme.example", "seq": 1}
        )
        assert tested.json() == {"ok": False, "error": "Invalid message", "detail": detail}

        texts = {}
        for received in smtp.messages:
            part = received.message.get_body(("plain",))
            assert part is not None
            texts[received.message["To"]] = part.get_content()
        assert sorted(texts) == ["ann@example.com", "cy@example.com"]
        ann = texts["ann@example.com"].replace("\r\n", "\n")
        assert ann.startswith("Hi Ann,\n\n9.50 EUR\n\nUnsubscribe (http") and "/u/" in ann
