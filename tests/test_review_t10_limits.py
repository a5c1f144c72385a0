"""Review T10: what a campaign's templates may cost a worker and the API, bounded.

A render's time is bounded as a whole (each step of a loop may do work in proportion to
a long list), and a template too large to compile in bounded time and memory is refused
when the campaign is created, naming the part.
"""

from __future__ import annotations

import itertools

import pytest

from dispatch import template_sandbox
from dispatch.campaign_checks import validate_content
from dispatch.campaigns import CampaignError
from dispatch.models import CampaignRequest
from dispatch.rendering import CompiledContent, RenderError, build_context


def _render(html: str, **user_vars: object) -> str:
    compiled = CompiledContent(subject="s", html=html)
    context = build_context(
        campaign_vars={}, user_vars=user_vars, email="a@b.example", user_id="u", campaign_id="c"
    )
    return compiled.render(context).html


@pytest.fixture
def slow_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reading of the render clock a second after the one before: a render that
    checks the clock more than MAX_RENDER_SECONDS times runs out of time."""
    seconds = itertools.count(start=1000.0)
    monkeypatch.setattr(template_sandbox, "_clock", lambda: next(seconds))


@pytest.mark.parametrize(
    "html",
    [
        # Each step sorts a list: within the step limit, hours of work in all.
        "{% set l = range(1000)|list %}{% for i in range(50) %}{{ l|sort|first }}{% endfor %}",
        # No loop: one filter call after another over the recipient's list.
        "{{ items|sort|first }}{{ items|sort|first }}{{ items|sort|first }}{{ items|sort|first }}",
    ],
)
def test_a_render_that_runs_out_of_time_fails_its_message(slow_clock: None, html: str) -> None:
    with pytest.raises(RenderError) as info:
        _render(html, items=[3, 1, 2])
    message = str(info.value)
    assert message.startswith("html: line 1: SecurityError: rendering took over ")
    assert f"{template_sandbox.MAX_RENDER_SECONDS:g} s" in message


def test_the_render_clock_counts_per_message(slow_clock: None) -> None:
    # Within the time (one reading after the start), twice: the second message's clock
    # starts afresh, and the deadline does not outlive its render.
    compiled = CompiledContent(subject="s", html="{{ name|upper }}")
    context = build_context(
        campaign_vars={}, user_vars={"name": "ann"}, email="a@b.example", user_id="u",
        campaign_id="c",
    )  # fmt: skip
    assert compiled.render(context).html == "ANN"
    assert compiled.render(context).html == "ANN"
    assert template_sandbox.DEADLINE.get() == float("inf")


def _creation_error(**parts: str) -> CampaignError:
    request = CampaignRequest(provider="p", **{"subject": "s", "html": "<p>hi</p>", **parts})
    with pytest.raises(CampaignError) as info:
        validate_content(request)
    return info.value


@pytest.mark.parametrize("part", ["subject", "html", "text", "amp"])
def test_a_template_with_too_many_tokens_is_refused_at_creation(part: str) -> None:
    # 5 tokens each ({{, x, |, first, }}): 40,000 compiled in 16 s and 600 MB, and a
    # request may be 64 MB (1.4 GB for 1.3 MB of these).
    source = "{{ x|first }}" * (template_sandbox.MAX_TEMPLATE_TOKENS // 5 + 1)
    error = _creation_error(**{part: source})
    assert error.field == part
    assert f"more than {template_sandbox.MAX_TEMPLATE_TOKENS:,} Jinja2 tokens" in str(error)


def test_a_template_longer_than_a_part_may_render_is_refused_at_creation() -> None:
    error = _creation_error(html="<p>" + "x" * template_sandbox.MAX_PART_CHARS + "</p>")
    assert error.field == "html"
    assert f"more than a part may render ({template_sandbox.MAX_PART_CHARS:,})" in str(error)


def test_a_large_template_within_the_limits_compiles() -> None:
    row = "<tr><td>{{ item.name|e }}</td><td>{{ item.price }}</td></tr>\n"
    html = "{% for item in items %}" + row * 200 + "{% endfor %}" + "<p>text</p>" * 50_000
    request = CampaignRequest(provider="p", subject="s", html=html, vars={"items": []})
    validate_content(request)


def test_a_template_that_does_not_lex_is_named_by_the_compiler() -> None:
    error = _creation_error(html="{{ 'unclosed }}")
    assert error.field == "html"
    assert "template does not compile" in str(error)
