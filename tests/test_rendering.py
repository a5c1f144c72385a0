"""Rendering is safe by construction: sandboxed, autoescaped, recipient data never code."""

from __future__ import annotations

import pytest

from dispatch.campaigns import CampaignError, validate_content
from dispatch.models import CampaignRequest
from dispatch.rendering import CompiledContent, RenderError, build_context, html_to_text


def _render(template: str, **vars: object) -> str:
    compiled = CompiledContent(subject="s", html=template)
    ctx = build_context(
        campaign_vars={}, user_vars=vars, email="a@b.example", user_id="u", campaign_id="c"
    )
    return compiled.render(ctx).html


@pytest.mark.parametrize(
    "attack",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ self.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ [].append.__self__ }}",
        "{% set x = [] %}{{ x.append(1) }}",  # immutable sandbox: no mutation of lists
        "{{ ''.format.__globals__ }}",
    ],
)
def test_sandbox_escapes_are_refused(attack: str) -> None:
    with pytest.raises(RenderError) as info:
        _render(attack)
    assert "html" in str(info.value)


def test_recipient_vars_with_template_syntax_stay_text() -> None:
    out = _render("<p>Hi {{ name }}</p>", name="{{ 7*7 }} {% if 1 %}x{% endif %}")
    assert out == "<p>Hi {{ 7*7 }} {% if 1 %}x{% endif %}</p>"


def test_html_is_autoescaped_but_subject_and_text_are_not() -> None:
    compiled = CompiledContent(subject="{{ deal }}", html="<b>{{ deal }}</b>", text="{{ deal }}")
    ctx = build_context(
        campaign_vars={"deal": "Fish & <Chips>"},
        user_vars={},
        email="a@b.example",
        user_id="",
        campaign_id="c",
    )
    out = compiled.render(ctx)
    assert out.html == "<b>Fish &amp; &lt;Chips&gt;</b>"
    assert out.subject == "Fish & <Chips>"
    assert out.text == "Fish & <Chips>"


def test_recipient_vars_override_campaign_vars() -> None:
    compiled = CompiledContent(subject="{{ a }}-{{ b }}", html="x")
    ctx = build_context(
        campaign_vars={"a": 1, "b": 2},
        user_vars={"b": 3},
        email="a@b.example",
        user_id="",
        campaign_id="c",
    )
    assert compiled.render(ctx).subject == "1-3"


def test_undefined_variable_is_an_error_not_blank() -> None:
    with pytest.raises(RenderError, match="missing"):
        _render("{{ missing }}")


def test_subject_with_line_break_is_refused() -> None:
    compiled = CompiledContent(subject="Hi {{ name }}", html="x")
    ctx = build_context(
        campaign_vars={},
        user_vars={"name": "Eve\r\nBcc: x@y.example"},
        email="a@b.example",
        user_id="",
        campaign_id="c",
    )
    with pytest.raises(RenderError, match="line break"):
        compiled.render(ctx)


def test_broken_template_is_refused_when_campaign_is_created() -> None:
    request = CampaignRequest(provider="p", subject="ok", html="{% if %}")
    with pytest.raises(CampaignError) as info:
        validate_content(request)
    assert info.value.field == "html"


def test_unknown_variable_is_named_when_campaign_is_created() -> None:
    request = CampaignRequest.model_validate(
        {
            "provider": "p",
            "subject": "{{ first }}",
            "html": "{{ known }} {{ partly }}",
            "vars": {"known": 1},
            "recipients": [
                {"email": "a@b.example", "vars": {"first": "A", "partly": 1}},
                {"email": "c@b.example", "vars": {"first": "C"}},
            ],
        }
    )
    with pytest.raises(CampaignError, match="partly"):
        validate_content(request)


def test_text_is_derived_from_html() -> None:
    html = (
        "<html><head><style>p{}</style></head>"
        "<body><h1>Hi &amp; welcome</h1><p>One<br>Two</p></body></html>"
    )
    assert html_to_text(html) == "Hi & welcome\nOne\nTwo"
