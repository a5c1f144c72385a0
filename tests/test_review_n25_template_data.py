"""Campaign content as marketers write it, with vars as JSON gives them (review N25).

Two defects of reading JSON data in the sandbox:

- ``order.items`` (a key of a JSON object) was the dict's ``items`` method, Jinja2 preferring
  the attribute: ``{% for item in order.items %}`` failed every message (not iterable) and
  ``{{ stats.values }}`` sent every recipient ``<built-in method values of dict object at
  0x...>``; so with ``keys``, ``get``, ``pop``, ``update``, ``copy``... A dict's key now wins.
- A var given as ``null`` (what exports write for a field left empty) printed Python's
  ``None`` ("Hi None,"), and ``default`` did not stand in for it; ``$$`` placeholders
  already filled it with nothing. It now prints nothing, and ``default`` replaces it.

And the names dispatch adds to every context, ``email``, ``user_id`` and ``campaign``
(the id), replaced vars of those names: a campaign var ``campaign`` ("Black Friday") was
the campaign's id in every subject. They now fill only what no var gives.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from dispatch.rendering import CompiledContent, RenderError, build_context
from tests.api_server import ApiServer
from tests.api_support import api_client, covers, save_smtp_provider, wait_for_campaign
from tests.smtp_server import SmtpTestServer
from tests.worker import WorkerProcess


def _render(
    html: str, subject: str = "s", campaign_vars: dict[str, Any] | None = None, **user_vars: Any
) -> tuple[str, str, str]:
    context = build_context(
        campaign_vars=campaign_vars or {},
        user_vars=user_vars,
        email="a@b.example",
        user_id="u",
        campaign_id="c",
    )
    out = CompiledContent(subject=subject, html=html).render(context)
    return out.subject, out.html, out.text


@pytest.mark.parametrize(
    "key", ["items", "values", "keys", "get", "pop", "update", "copy", "clear", "setdefault"]
)
def test_a_json_objects_key_named_as_a_dict_method_is_the_key(key: str) -> None:
    _, html, text = _render(f"<p>{{{{ order.{key} }}}}</p>", order={key: "A&B"})
    assert (html, text) == ("<p>A&amp;B</p>", "A&B")


def test_order_items_in_a_loop_and_dict_methods_still_callable() -> None:
    order = {"items": [{"name": "Mug", "price": 9.5}, {"name": "Tea", "price": 4}]}
    template = (
        "{% for item in order.items %}{{ loop.index }}. {{ item.name }} "
        "{{ '%.2f'|format(item.price) }};{% endfor %}"
        "{% for k, v in prefs.items()|sort %} {{ k }}={{ v }}{% endfor %}"
    )
    _, html, _ = _render(template, order=order, prefs={"b": 2, "a": 1})
    assert html == "1. Mug 9.50;2. Tea 4.00; a=1 b=2"


@pytest.mark.parametrize(
    "html",
    [
        "<p>Hi {{ first_name }},</p>",  # (plain: rendered without Jinja2)
        "<p>Hi {% if true %}{{ first_name }}{% endif %},</p>",  # (through Jinja2)
    ],
)
def test_a_null_var_prints_as_nothing(html: str) -> None:
    subject, out, text = _render(html, subject="For {{ first_name }}", first_name=None)
    assert (subject, out, text) == ("For", "<p>Hi ,</p>", "Hi ,")


def test_default_stands_in_for_a_null_var() -> None:
    subject, html, _ = _render(
        "<p>Hi {{ first_name|d('there') }} {{ city|default('', true) }}{{ n|default(0) }}</p>",
        subject="Hi {{ first_name | default('there') }}",
        first_name=None,
        city=None,
        n=0,
    )
    assert (subject, html) == ("Hi there", "<p>Hi there 0</p>")


def test_a_missing_key_of_a_json_object_still_fails_that_message_naming_it() -> None:
    with pytest.raises(RenderError, match=r"html: line 2: UndefinedError: .* attribute 'plan'"):
        _render("x\n{% if user.plan == 'pro' %}PRO{% endif %}", user={})


def test_vars_named_campaign_email_or_user_id_are_the_vars() -> None:
    subject, html, _ = _render(
        "<p>{{ email }} {{ user_id }} {{ campaign }}</p>",
        subject="{{ campaign.name }} is on",
        campaign_vars={"campaign": {"name": "Black Friday"}},
        user_id="crm-9",
    )
    assert (subject, html) == (
        "Black Friday is on",
        "<p>a@b.example crm-9 {&#39;name&#39;: &#39;Black Friday&#39;}</p>",
    )
    assert _render("{{ email }} {{ user_id }} {{ campaign }}")[1] == "a@b.example u c"


@covers("POST /v1/campaigns", "GET /v1/campaigns/{campaign_id}/messages")
def test_campaign_with_order_items_and_null_names_sends_each_message(
    api_server: ApiServer,
    redis_client: redis.Redis,
    celery_worker: WorkerProcess,
    smtp: SmtpTestServer,
) -> None:
    """Over the real API and worker: each recipient's items listed, a null first name
    defaulted, and one recipient whose ``user`` lacks ``plan`` fails alone, its detail
    naming the part, the line and the key."""
    html = (
        "<p>Hi {{ first_name | default('there') }},</p>\n"
        "{% if user.plan == 'pro' %}<p>PRO</p>{% endif %}\n"
        "<ul>{% for item in order.items %}<li>{{ item.name }}</li>{% endfor %}</ul>"
    )
    people = [
        {"email": "ann@example.com", "vars": {"first_name": "Ann", "user": {"plan": "pro"}}},
        {"email": "bob@example.com", "vars": {"first_name": None, "user": {"plan": "free"}}},
        {"email": "cy@example.com", "vars": {"first_name": "Cy", "user": {}}},
    ]
    for n, person in enumerate(people):
        person["vars"]["order"] = {"items": [{"name": f"Mug {n} & co"}]}
    body = {
        "id": "n25-items",
        "provider": "local",
        "subject": "Hi {{ first_name | default('there') }}",
        "html": html,
        "recipients": people,
    }
    with api_client(api_server) as api:
        save_smtp_provider(api, smtp.port)
        created = api.post("/v1/campaigns", json=body)
        assert created.status_code == 201, created.text
        done = wait_for_campaign(api, "n25-items", lambda s: s["status"] != "running", 60)
        [failed] = api.get("/v1/campaigns/n25-items/messages?status=failed").json()["items"]
    assert (done["sent"], done["failed"]) == (2, 1), done
    assert failed["email"] == "cy@example.com"
    assert "html: line 2: UndefinedError" in failed["detail"] and "'plan'" in failed["detail"]
    got = {m.message["To"]: m.message for m in smtp.messages}
    assert got["bob@example.com"]["Subject"] == "Hi there"
    html_of = {to: m.get_body(("html",)).get_content() for to, m in got.items()}  # type: ignore[union-attr]
    assert "<p>Hi there,</p>" in html_of["bob@example.com"]
    assert "<li>Mug 1 &amp; co</li>" in html_of["bob@example.com"]
    assert "<p>PRO</p>" in html_of["ann@example.com"]
    assert "<li>Mug 0 &amp; co</li>" in html_of["ann@example.com"]
