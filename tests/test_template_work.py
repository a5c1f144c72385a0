"""Templates whose work grows with the square of their steps, within every size limit:
a list grown by concatenation in a loop (copied whole at every step), and ``sum`` with a
list start (Python's sum copies the result for every item). 99,999 steps took 20 s and
11 s of a worker's time for one recipient (found by review R5)."""

# ruff: noqa: E501  (templates read best on one line each)
from __future__ import annotations

import pytest

from dispatch.rendering import CompiledContent, RenderError, build_context


def _render(template: str) -> str:
    context = build_context(
        campaign_vars={"groups": [{"items": [1, 2]}, {"items": [3]}]},
        user_vars={},
        email="a@b.example",
        user_id="u",
        campaign_id="c",
    )
    return CompiledContent(subject="s", html="x", text=template).render(context).text


def test_a_list_copied_at_every_step_of_a_loop_is_refused() -> None:
    template = "{% set ns = namespace(l=[]) %}{% for i in range(99999) %}{% set ns.l = ns.l + [i] %}{% endfor %}{{ ns.l|length }}"
    with pytest.raises(RenderError, match="would exceed the template limits"):
        _render(template)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ (range(99999)|batch(1))|sum(start=[])|length }}", "99999"),
        ("{{ [[1, 2], [3]]|sum(start=[]) }}|{{ [(1,), (2, 3)]|sum(start=()) }}", "[1, 2, 3]|(1, 2, 3)"),
        ("{{ [[1], [2]]|sum(start=[0]) }}|{{ groups|sum(attribute='items', start=[]) }}", "[0, 1, 2]|[1, 2, 3]"),
        ("{{ [1, 2, 3]|sum }}|{{ [1.5, 2]|sum(start=1) }}|{{ groups|map(attribute='items')|map('length')|sum }}", "6|4.5|3"),
        ("{% set ns = namespace(l=[]) %}{% for i in range(500) %}{% set ns.l = ns.l + [i] %}{% endfor %}{{ ns.l|length }}", "500"),
    ],
)  # fmt: skip
def test_sums_and_small_loops_render_as_before(template: str, expected: str) -> None:
    assert _render(template) == expected


def test_a_sum_of_mixed_sequences_is_refused_as_python_refuses_it() -> None:
    with pytest.raises(RenderError, match='can only concatenate list \\(not "tuple"\\) to list'):
        _render("{{ [[1], (2,)]|sum(start=[]) }}")


def test_a_sum_past_the_value_limit_is_refused() -> None:
    with pytest.raises(RenderError, match="would exceed the template limits"):
        _render("{% set big = range(60000)|list %}{{ ([big] * 20)|sum(start=[])|length }}")
