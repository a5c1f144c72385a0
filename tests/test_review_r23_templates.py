"""Review r23: limits of the template sandbox that a template could pass."""

# ruff: noqa: E501  (templates read best on one line each)
from __future__ import annotations

from dispatch.rendering import CompiledContent, RenderError, build_context
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


# Two lists doubled 25 times in a loop (``[l, l]``): 25 lists each, 2**25 items deep. Python
# compares them, or hashes such a tuple, item by item in one call that no step or time
# limit can stop: 25 doublings took 2-3 s, each more doubles it (40: about a day).
_DOUBLED = (
    "{% set ns = namespace(a=[0], b=[0], t=(0,)) %}{% for i in range(25) %}"
    "{% set ns.a = [ns.a, ns.a] %}{% set ns.b = [ns.b, ns.b] %}{% set ns.t = (ns.t, ns.t) %}"
    "{% endfor %}"
)
COMPARED = {
    "==": "{{ ns.a == ns.b }}",
    "in": "{{ ns.a in [ns.b] }}",
    "a test": "{{ ns.a is eq(ns.b) }}",
    "a key looked up": "{{ {'k': 1}[ns.t] is defined }}",
    "a dict's key": "{{ {ns.t: 1}|length }}",
    # (a list held 100,000 times, each compared item by item: 1,000,000 times took hours)
    "a list's count": "{% set a = ('a' * 1000)|list %}{% set b = ('a' * 999 ~ 'b')|list %}{{ ([b] * 100000).count(a) }}",
}


def test_comparing_or_hashing_a_huge_value_is_refused_before_python_walks_it() -> None:
    wrong = {}
    for name, template in COMPARED.items():
        try:
            wrong[name] = f"rendered {_render(_DOUBLED + template)!r}"
        except RenderError as exc:
            if "would exceed the template limits" not in str(exc):
                wrong[name] = str(exc)
    assert not wrong, wrong


def test_ordinary_comparisons_and_lookups_render_as_before() -> None:
    template = (
        "{% set tags = ['a', 'b'] %}{% set d = {'a': 1, tags[1]: 2} %}"
        "{{ 'a' in tags }} {{ tags == ['a', 'b'] }} {{ 1 < 2 < 3 }} {{ d[tags[1]] }} "
        "{{ tags is eq(['a', 'b']) }} {{ [1, 2, 3]|select('gt', 1)|list }} {{ tags.index('b') }}"
    )
    assert _render(template) == "True True True 2 True [2, 3] 1"


def test_wrapping_a_long_word_to_a_narrow_width_is_refused_before_textwrap_runs() -> None:
    # (textwrap's time is in the square of the word over the width: this one took 2-6 s,
    # a 1,000,000-character word 20-40 s, in one call the render's time limit cannot cut)
    try:
        rendered = _render("{{ ('a' * 200000)|wordwrap(1)|length }}")
    except RenderError as exc:
        assert "a wordwrap of words this long would exceed the template limits" in str(exc)
    else:
        raise AssertionError(f"rendered {rendered!r}")
    assert _render("{{ 'hello world foo'|wordwrap(5) }}") == "hello\nworld\nfoo"
    assert _render("{{ ('a' * 999999)|wordwrap(9, break_long_words=False)|length }}") == "999999"
