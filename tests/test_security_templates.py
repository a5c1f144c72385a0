"""Campaign templates cannot take a worker's memory: text printed, joined or formatted
from a container of long strings, and what a block or macro keeps before it ends, are
bounded like every single operation. Rendered in a child process whose address space
is capped, so a template the limits miss fails there with MemoryError (in a worker
without a cap: the kernel's OOM killer) instead of taking the test run with it."""

# ruff: noqa: E501  (templates read best on one line each)
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dispatch.rendering import CompiledContent, build_context

_LONG = "{% set s = 'x' * 999999 %}"
HUGE = {
    "a list of one long string, printed": "{{ [s] * 2000 }}",
    "joined": "{{ ([s] * 2000)|join }}",
    "joined by str.join": "{{ ''.join([s] * 2000) }}",
    "formatted": "{{ '%s'|format([s] * 2000) }}",
    "formatted by %": "{{ '%s' % ([s] * 2000,) }}",
    "as JSON": "{{ ([s] * 2000)|tojson }}",
    "a dict of it": "{{ dict.fromkeys(range(2000), s) }}",
    "in a namespace": "{% set ns = namespace(a=[s] * 2000) %}{{ ns }}",
    "in a ~": "{{ 'a' ~ ([s] * 2000) }}",
    "long strings made one by one, joined": "{{ range(3000)|map('string')|map('center', 999999)|join|length }}",
    "made one by one into a list": "{{ range(3000)|map('string')|map('center', 999999)|list|length }}",
    "printed into a filter block": "{% filter upper %}{% for i in range(3000) %}{{ s }}{% endfor %}{% endfilter %}",
    "printed into a macro": "{% macro m() %}{% for i in range(3000) %}{{ s }}{% endfor %}{% endmacro %}{{ m()|length }}",
    "printed into a set block": "{% set b %}{% for i in range(3000) %}{{ s ~ i }}{% endfor %}{% endset %}{{ b|length }}",
}  # fmt: skip

_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, 1_500_000_000))
from dispatch.rendering import CompiledContent, RenderError, build_context
context = build_context(campaign_vars={}, user_vars={}, email="a@b.example", user_id="u",
                        campaign_id="c")
results = {}
for name, template in json.loads(sys.argv[1]).items():
    try:
        results[name] = "rendered %d" % len(CompiledContent(subject="s", html=template).render(context).html)
    except RenderError as exc:
        results[name] = str(exc)
print(json.dumps(results))
"""


def not_refused_in_capped_child(templates: dict[str, str]) -> dict[str, str]:
    """The templates (by name, each after ``_LONG``) that a child process with a capped
    address space does not refuse by the limits, with what it made of them."""
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps({n: _LONG + t for n, t in templates.items()})],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "DISPATCH_SECRET_KEY": "k"},
        check=True,
    )
    results: dict[str, str] = json.loads(child.stdout)
    return {n: r for n, r in results.items() if "would exceed the template limits" not in r}


def test_huge_text_from_containers_and_blocks_is_refused_by_the_limits() -> None:
    wrong = not_refused_in_capped_child(HUGE)
    assert not wrong, wrong


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ [a, a]|join(', ') }} {{ items|length }}", "<b>, <b> 3"),
        ("{% for p in items %}{{ p.name }}{% if not loop.last %}, {% endif %}{% endfor %}", "x, y, z"),
        ("{% macro b(t) %}[{{ t }}]{% endmacro %}{% for p in items %}{{ b(p.name) }}{% endfor %}", "[x][y][z]"),
        ("{{ items|map(attribute='name')|join('-') }} {{ '%s=%d'|format(a, 2) }}", "x-y-z <b>=2"),
        ("{{ items[0] }} {{ items[0].items()|list }}", "{'name': 'x'} [('name', 'x')]"),
        ("{% set ns = namespace(n=0) %}{% for p in items %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}", "3"),
    ],
)  # fmt: skip
def test_ordinary_templates_render_as_before(template: str, expected: str) -> None:
    items = [{"name": n} for n in "xyz"]
    context = build_context(
        campaign_vars={"items": items, "a": "<b>"},
        user_vars={},
        email="a@b.example",
        user_id="u",
        campaign_id="c",
    )
    assert CompiledContent(subject="s", html="x", text=template).render(context).text == expected


def test_a_long_part_printed_from_one_string_still_renders() -> None:
    """Within the part's limit, printing a long string many times is allowed."""
    template = _LONG + "{% for i in range(15) %}{{ s }}{% endfor %}"
    context = build_context(
        campaign_vars={}, user_vars={}, email="a@b.example", user_id="u", campaign_id="c"
    )
    assert len(CompiledContent(subject="s", html=template).render(context).html) == 15 * 999999
