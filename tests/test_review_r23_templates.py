"""Review r23: limits of the template sandbox that a template could pass."""

from __future__ import annotations

from dispatch.rendering import CompiledContent, build_context
from tests.test_security_templates import not_refused_in_capped_child

# A few kilobytes of lists whose text is gigabytes: a list held a thousand times by a
# list held a thousand times. The text size was counted once per list, however often it
# was held, so printing it built 5 GB of text (MemoryError at the child's cap after 20 to
# 50 s; in a worker, the OOM killer).
_SHARED = "{% set l = ('a' * 1000)|list %}{% set m = [l] * 1000 %}"
SHARED_HUGE = {
    "printed": _SHARED + "{{ [m] * 1000 }}",
    "made a string": _SHARED + "{{ ([m] * 1000)|string|length }}",
    "as JSON": _SHARED + "{{ ([m] * 1000)|tojson|length }}",
    "joined": _SHARED + "{{ ([m] * 1000)|join|length }}",
    "formatted": _SHARED + "{{ '%s'|format([m] * 1000)|length }}",
    "in a ~": _SHARED + "{{ ('' ~ [m] * 1000)|length }}",
    "in a namespace": _SHARED + "{% set ns = namespace(a=[m] * 1000) %}{{ ns }}",
}  # fmt: skip


def test_text_of_a_container_held_many_times_is_refused_by_the_limits() -> None:
    wrong = not_refused_in_capped_child(SHARED_HUGE)
    assert not wrong, wrong


def _render(template: str) -> str:
    context = build_context(
        campaign_vars={}, user_vars={}, email="a@b.example", user_id="u", campaign_id="c"
    )
    return CompiledContent(subject="s", html="x", text=template).render(context).text


def test_shared_and_self_holding_containers_print_as_python_shows_them() -> None:
    assert _render("{% set l = [1, 2] %}{{ [l, l, [l]] }}") == "[[1, 2], [1, 2], [[1, 2]]]"
    assert (
        _render("{% set ns = namespace(a=1) %}{% set ns.me = [ns, ns] %}{{ ns }}")
        == "<Namespace {'a': 1, 'me': [<Namespace {...}>, <Namespace {...}>]}>"
    )
