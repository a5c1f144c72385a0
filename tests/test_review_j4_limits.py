"""Review J4: crafted input a token holder controls (templates, vars) is refused or
handled within bounded resources: format widths (memory), HTML-to-text and format checks
(linear CPU), vars nested too deep (a 422 naming where, not a 500), over the real API."""

# ruff: noqa: E501  (templates read best on one line each)
from __future__ import annotations

import json
import os
import subprocess
import sys

import redis

from tests.api_server import ApiServer
from tests.api_support import api_client, covers, smtp_body

# Each asks Python for gigabytes unless refused before the text is made.
HUGE_FORMATS = {
    "a % key with a wide field": "{{ '%(a)3000000000s'|format(a=1) }}",
    "many wide % fields": "{{ ('%999999s' * 3000) % ((1,) * 3000) }}",
    "many wide % fields, filtered": "{{ ('%999999s' * 3000)|format(*((1,) * 3000)) }}",
    "a {} width made of nested fields": "{{ '{:{}{}}'.format(1, 30000, 100000) }}",
    "many wide {} fields": "{{ ('{:999999}' * 3000).format(*((1,) * 3000)) }}",
    "many wide {} fields, format_map": "{{ ('{a:999999}' * 3000).format_map({'a': 1}) }}",
}
# Linear work now; the regular expressions of before took hours on each (quadratic).
CRAFTED_TEXT = {
    "a format string of colons": "{% set f = '{' ~ ':' * 999990 %}{{ f|format }}",
    "a format string of colon-digit pairs": "{% set f = '{' ~ ':1' * 499990 %}{{ (f % ())|length }}",
}

_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, 1_500_000_000))
# A budget of CPU, not a time to meet: the work below takes well under a second, the
# quadratic searches of before hours (SIGXCPU ends the child, and the test says so).
resource.setrlimit(resource.RLIMIT_CPU, (120, 120))
from dispatch.rendering import CompiledContent, RenderError, build_context
from dispatch.text_part import html_to_text
context = build_context(campaign_vars={}, user_vars={}, email="a@b.example", user_id="u",
                        campaign_id="c")
results = {}
templates, html = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name, template in templates.items():
    try:
        results[name] = "rendered %d" % len(CompiledContent(subject="s", html="x", text=template).render(context).text)
    except RenderError as exc:
        results[name] = str(exc)
for name, text in html.items():
    results[name] = "text of %d characters" % len(html_to_text(text * 1_000_000))
    derived = CompiledContent(subject="s", html=text * 1_000_000).render(context)
    results[name + ", derived"] = "text of %d characters" % len(derived.text)
print(json.dumps(results))
"""


def _run_child(templates: dict[str, str], html: dict[str, str]) -> dict[str, str]:
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(templates), json.dumps(html)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "DISPATCH_SECRET_KEY": "k"},
    )
    assert child.returncode == 0, f"child ended with {child.returncode}: {child.stderr[-2000:]}"
    results: dict[str, str] = json.loads(child.stdout)
    return results


def test_wide_format_fields_are_refused_before_the_text_is_made() -> None:
    results = _run_child(HUGE_FORMATS, {})
    wrong = {n: r for n, r in results.items() if "would exceed the template limits" not in r}
    assert not wrong, wrong


def test_crafted_format_strings_and_html_take_linear_work() -> None:
    """``<`` a million times (no ``>``), unclosed ``<script`` and ``<br`` tags: a
    campaign's HTML once froze the API for hours while it derived the text part."""
    html = {"unclosed <": "<", "unclosed <script": "<script", "unclosed <br": "<br "}
    results = _run_child(CRAFTED_TEXT, html)
    assert results["a format string of colons"] == "rendered 999991"
    assert results["a format string of colon-digit pairs"] == "rendered 6"  # (999981)
    assert results["unclosed <"] == "text of 1000000 characters"
    assert results["unclosed <script, derived"] == "text of 7000000 characters"
    assert results["unclosed <br"] == "text of 3999999 characters"  # (stripped)


def test_ordinary_formats_render_as_before() -> None:
    from dispatch.rendering import CompiledContent, build_context
    from dispatch.text_part import html_to_text

    context = build_context(
        campaign_vars={"n": "<i>"}, user_vars={}, email="a@b.example", user_id="u", campaign_id="c"
    )
    template = "{{ '%s, %5.2f'|format('a', 2) }}|{{ '%-4s|' % 'ab' }}{{ '%(a)s %%' % {'a': 1} }}|{{ '{:>5}|{:.2f}|{n}|{:{}}'.format('a', 2.5, 'b', 3, n='n') }}|{{ '{n}'.format_map({'n': 3}) }}|{{ '%*s'|format(3, 'x') }}"
    text = CompiledContent(subject="s", html="x", text=template).render(context).text
    assert text == "a,  2.00|ab  |1 %|    a|2.50|n|b  |3|  x"
    html = CompiledContent(subject="s", html="{{ '<b>{}</b>'.format(n) }}").render(context).html
    assert html == "&lt;b&gt;&lt;i&gt;&lt;/b&gt;"
    assert html_to_text("<p>a</p><script>x</script><STYLE >y</style >b<br>c<<d>") == "a\nb\nc"


@covers("POST /v1/campaigns", "POST /v1/campaigns/{campaign_id}/recipients")
def test_vars_nested_too_deep_are_refused_naming_where(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Nested past what orjson writes (254 levels), vars made a 500 (the append of NDJSON
    a connection reset); now a 422, and a streamed one is refused alone."""
    deep = json.loads("[" * 300 + "1" + "]" * 300)
    fine = json.loads("[" * 128 + "1" + "]" * 128)
    draft = {"provider": "deep", "subject": "s", "html": "h", "draft": True}
    lines = [
        {"email": "a@example.com", "vars": {"x": fine}},
        {"email": "b@example.com", "vars": {"x": deep}},
        {"email": "c@example.com"},
    ]
    with api_client(api_server) as api:
        assert api.put("/v1/providers/deep", json=smtp_body(2525)).status_code == 201
        by_campaign = api.post("/v1/campaigns", json={**draft, "vars": {"x": deep}})
        by_recipient = api.post(
            "/v1/campaigns",
            json={**draft, "recipients": [{"email": "a@example.com", "vars": {"x": deep}}]},
        )
        created = api.post("/v1/campaigns", json={**draft, "id": "deep-1", "vars": {"x": fine}})
        appended = api.post(
            "/v1/campaigns/deep-1/recipients",
            content="\n".join(json.dumps(line) for line in lines).encode(),
            headers={"Content-Type": "application/x-ndjson"},
        )
    assert by_campaign.status_code == 422, by_campaign.text
    assert by_campaign.json()["field"] == "vars.x" + ".0" * 128
    assert "nested more than 128 arrays or objects deep" in by_campaign.json()["detail"]
    assert by_recipient.status_code == 422, by_recipient.text
    assert by_recipient.json()["field"] == "recipients.0.vars.x" + ".0" * 128
    assert created.status_code == 201, created.text
    assert appended.status_code == 200, appended.text
    result = appended.json()
    assert (result["appended"], result["rejected"]) == (2, 1)
    assert result["errors"][0]["line"] == 2
    assert result["errors"][0]["field"] == "vars.x" + ".0" * 128
