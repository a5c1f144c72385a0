"""Template operations that repeat one argument as often as another says (a separator
joining many items, an indent on every line, a wrapstring ending every line, a tab
expanded, a character translated to a string, bytes repeated) are refused before Python
makes their result: checked after, a 3 GB string was already made, and a worker without
a memory cap is ended by the OOM killer. Rendered in a child process whose address space
is capped (as tests/test_security_templates.py does), so a miss fails with MemoryError."""

# ruff: noqa: E501  (templates read best on one line each)
from __future__ import annotations

import pytest

from dispatch.rendering import CompiledContent, build_context
from tests.test_security_templates import not_refused_in_capped_child

GROWING = {
    "joined by a long separator": "{{ range(3000)|join(s) }}",
    "joined by a long separator, escaped": "{{ range(3000)|map('string')|map('e')|join(s) }}",
    "str.join of a generator by a long separator": "{{ s.join(range(3000)|map('string')) }}",
    "bytes.join": "{{ s.encode().join(['a'.encode()] * 3000)|length }}",
    "indented by a wide number": "{{ ('a\\n' * 3000)|indent(999999) }}",
    "indented by a long string": "{{ ('a\\n' * 3000)|indent(s, first=true) }}",
    "wrapped with a long wrapstring": "{{ ('a ' * 3000)|wordwrap(1, wrapstring=s) }}",
    "tabs expanded": "{{ ('\\t' * 3000).expandtabs(999999) }}",
    "translated to long strings": "{{ ('a' * 3000).translate({97: s}) }}",
    "replaced by the filter": "{{ ('a' * 3000)|replace('a', s) }}",
    "bytes repeated": "{{ ('a'.encode() * 3000000000)|length }}",
    "bytes replaced": "{{ ('a' * 3000).encode().replace('a'.encode(), s.encode())|length }}",
    "batches filled": "{{ [1]|batch(3000000000, 'x')|list|length }}",
}  # fmt: skip


def test_operations_repeating_an_argument_are_refused_before_they_run() -> None:
    wrong = not_refused_in_capped_child(GROWING)
    assert not wrong, wrong


def _render(template: str, **values: object) -> str:
    context = build_context(
        campaign_vars=values, user_vars={}, email="a@b.example", user_id="u", campaign_id="c"
    )
    return CompiledContent(subject="s", html="x", text=template).render(context).text


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ items|join(', ') }}|{{ ', '.join(items) }}|{{ ', '.join(items|map('upper')) }}", "a, b, c|a, b, c|A, B, C"),
        ("{{ 'a\\nb\\n\\nc'|indent(2) }}|{{ 'a\\nb'|indent('> ', first=true, blank=true) }}", "a\n  b\n\n  c|> a\n> b"),
        ("{{ 'aa bb cc dd'|wordwrap(5, wrapstring='<br>') }}", "aa bb<br>cc dd"),
        ("{{ long|wordwrap(10, wrapstring='<br>\\r\\n')|length }}", str(8 * 50000 + 6 * 49999)),
        ("{{ 'a\\tb'.expandtabs(4) }}|{{ 'ab'.translate({97: 'xy', 98: none}) }}", "a   b|xy"),
        ("{{ 'abc'|replace('b', '--') }}|{{ ('ab'.encode() * 2).replace('b'.encode(), 'c'.encode()).decode() }}", "a--c|acac"),
        ("{{ items|batch(2, '-')|map('join')|join('|') }}|{{ items|slice(2)|map('join')|join('|') }}", "ab|c-|ab|c"),
    ],
)  # fmt: skip
def test_the_same_operations_within_the_limits_render_as_before(
    template: str, expected: str
) -> None:
    # (the long text: 50,000 words of 8 characters, one a line of 10, the lines joined by
    # a 6-character wrapstring: 699,994 characters, where a bound of a break per
    # character would have refused it)
    assert _render(template, items=["a", "b", "c"], long="abcdefgh " * 50000) == expected
