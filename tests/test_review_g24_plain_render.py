"""The generated renderer of plain templates (rendering._generated) gives exactly what the
general path gives: the same parts, the same escaping, the same errors naming the part."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from dispatch.rendering import ALL_PARTS, CompiledContent, RenderError

TEMPLATES = {
    "subject": "{{ name }}, it's {{ n }} {x}",
    "html": '<p>{{ name }} & {{ city }} \\ "{{ n }}" {{ name }}</p>',
    "amp": "<b>{{ city }}</b>{",
}
VALUES: list[Any] = ["Zoë <3 & 'q'", "plain", 42, 1.5, None, True, ["a", "<b>"], {"k": "<v>"}, ""]
PART_SETS = [
    frozenset(c) for n in range(1, 5) for c in itertools.combinations(sorted(ALL_PARTS), n)
]


def outcome(compiled: CompiledContent, context: dict[str, Any], parts: frozenset[str]) -> Any:
    try:
        return compiled.render(context, parts)
    except RenderError as exc:
        return ("error", str(exc))


def general(parts: frozenset[str], **templates: str) -> CompiledContent:
    compiled = CompiledContent(**templates)
    compiled._fast[parts] = None  # the general path (each template's own render)
    return compiled


@pytest.mark.parametrize("parts", PART_SETS, ids=lambda p: "+".join(sorted(p)))
def test_generated_renders_as_the_general_path(parts: frozenset[str]) -> None:
    fast = CompiledContent(**TEMPLATES)
    slow = general(parts, **TEMPLATES)
    contexts: list[dict[str, Any]] = [
        {"name": a, "city": b, "n": c}
        for a, b, c in zip(VALUES, reversed(VALUES), VALUES[3:] + VALUES[:3], strict=True)
    ]
    contexts += [
        {"city": "x", "n": 1},  # name missing: the first part reading it is named
        {"name": "x", "n": 1},  # city missing: html's (or amp's) error
        {"name": "a\nb", "city": "x", "n": 1},  # a line break in the subject
        {"name": "a\nb", "n": 1},  # ... and a missing name in the HTML: which comes first
    ]
    for context in contexts:
        assert outcome(fast, context, parts) == outcome(slow, context, parts), context
    generated = fast._fast[parts]
    assert generated is not None and generated.__code__.co_filename == "<plain templates>"


def test_derived_text_and_templates_without_names() -> None:
    templates = {"subject": "Hi", "html": "<p>Hello {{ name }}</p>\n<ul><li>x</li></ul>"}
    for parts in (ALL_PARTS, frozenset({"text"}), frozenset({"subject"})):
        fast = CompiledContent(**templates)
        slow = general(parts, **templates)
        for context in ({"name": "<b>"}, {}):
            assert outcome(fast, context, parts) == outcome(slow, context, parts)
    only_text = CompiledContent(subject="{x}", html="{ no names } }}", text="", amp="")
    rendered = only_text.render({}, ALL_PARTS)
    assert (rendered.subject, rendered.html) == ("{x}", "{ no names } }}")
