"""The ``$$`` engine: grammar, typing of values, resolution order, safety of inserted data."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from providers.base import OutgoingMessage
from providers.errors import ErrorClass
from providers.placeholders import (
    SLOT,
    MessageRenderer,
    Resolver,
    Scope,
    UnresolvedPlaceholderError,
    compile_template,
    compile_text,
    find_names,
    text_of,
)


def message(**overrides: Any) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "seq": 7,
        "meta": "ann@example.com|1|c1|20250101|0|default|7|",
        "campaign_id": "c1",
        "to": "ann@example.com",
        "subject": "Hi Ann",
        "html": "<p>Hi</p>",
        "text": "Hi",
        "from_address": "deals@acme.example",
        "from_name": "Acme Deals",
        "amp": "<amp/>",
        "reply_to": "help@acme.example",
        "cc": ("c1@example.com", "c2@example.com"),
        "bcc": ("b@example.com",),
    }
    fields.update(overrides)
    return OutgoingMessage(**fields)


def render(template: Any, msg: OutgoingMessage) -> Any:
    compiled = compile_template(template)
    return compiled.render(Resolver(compiled.names).values(msg))


def test_grammar_longest_name_wins_and_is_case_sensitive() -> None:
    assert find_names("$$ToName $$To $$to $$_x9 $$9x $$ $$$To a$$b-c") == [
        "ToName",
        "To",
        "to",
        "_x9",
        "To",
        "b",
    ]
    msg = message(user_vars={"ToName": "NAME", "to": "lower", "b": "B"})
    assert render("$$ToName|$$To|$$to|$$$To|$$9x|$$|a$$b-c", msg) == (
        "NAME|ann@example.com|lower|$ann@example.com|$$9x|$$|aB-c"
    )


def test_every_system_placeholder_comes_from_the_message() -> None:
    template = {
        name: f"$${name}"
        for name in [
            "To",
            "Subject",
            "FromName",
            "FromAddress",
            "HTML",
            "MessageID",
            "cc",
            "bcc",
            "ReplyToAddress",
            "Plaintext",
            "AMPHTML",
            "CampaignID",
        ]
    }
    assert render(template, message()) == {
        "To": "ann@example.com",
        "Subject": "Hi Ann",
        "FromName": "Acme Deals",
        "FromAddress": "deals@acme.example",
        "HTML": "<p>Hi</p>",
        "MessageID": "ann@example.com|1|c1|20250101|0|default|7|",
        "cc": "c1@example.com,c2@example.com",
        "bcc": "b@example.com",
        "ReplyToAddress": "help@acme.example",
        "Plaintext": "Hi",
        "AMPHTML": "<amp/>",
        "CampaignID": "c1",
    }


def test_a_lone_placeholder_keeps_the_json_type_and_text_interpolates() -> None:
    msg = message(
        user_vars={"n": 20, "ok": True, "none": None, "tags": ["a", "b"], "obj": {"k": 1}}
    )
    template = {
        "n": "$$n",
        "ok": "$$ok",
        "none": "$$none",
        "tags": "$$tags",
        "obj": "$$obj",
        "text": "$$n% off, ok=$$ok, none=[$$none], tags=$$tags",
        "static": [1, 2.5, False, None, {"deep": "x"}],
    }
    assert render(template, msg) == {
        "n": 20,
        "ok": True,
        "none": None,
        "tags": ["a", "b"],
        "obj": {"k": 1},
        "text": '20% off, ok=true, none=[], tags=["a","b"]',
        "static": [1, 2.5, False, None, {"deep": "x"}],
    }
    assert text_of(1.5) == "1.5"


def test_keys_are_literal_and_order_is_kept() -> None:
    out = render({"$$To": "$$To", "b": 1, "a": "$$Subject", "z": 0}, message())
    assert list(out) == ["$$To", "b", "a", "z"]
    assert out["$$To"] == "ann@example.com"


def test_user_vars_win_over_campaign_vars() -> None:
    msg = message(user_vars={"name": "Ann"}, campaign_vars={"name": "friend", "promo": "X1"})
    assert render("$$name/$$promo", msg) == "Ann/X1"


def test_campaign_scope_reads_campaign_vars_only() -> None:
    msg = message(user_vars={"promo": "mine"}, campaign_vars={"cid": "432"})
    assert Resolver({"cid", "CampaignID"}, Scope.CAMPAIGN).values(msg) == {
        "cid": "432",
        "CampaignID": "c1",
    }
    with pytest.raises(UnresolvedPlaceholderError, match=r"\$\$promo") as info:
        Resolver({"promo"}, Scope.CAMPAIGN).values(msg)
    assert info.value.names == ("promo",)
    with pytest.raises(ValueError, match=r"\$\$To"):
        Resolver({"To", "FromName"}, Scope.CAMPAIGN)


def test_unresolvable_names_are_all_reported_as_an_invalid_message() -> None:
    with pytest.raises(UnresolvedPlaceholderError) as info:
        render({"a": "$$missing", "b": "x $$other", "c": "$$To"}, message())
    assert info.value.names == ("missing", "other")
    assert info.value.error_class is ErrorClass.INVALID_MESSAGE
    assert "$$missing" in info.value.detail and "$$other" in info.value.detail


HOSTILE = [
    'say "hi"',
    '"}, {"x": 1',
    "line1\nline2\r\n\ttab",
    "back\\slash \\u0000 \\n",
    "emoji 😀 and 中文 and \u2028",
    "$$HTML inside",
    "$$To",
    "<html>" + "x" * 100_000 + "</html>",
]


@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_values_are_data_and_never_scanned_again(value: str) -> None:
    msg = message(user_vars={"v": value}, html=value)
    out = render({"exact": "$$v", "inside": "<$$v>", "html": "$$HTML", "to": "$$To"}, msg)
    parsed = json.loads(orjson.dumps(out))  # valid JSON, read by another parser
    assert parsed == {"exact": value, "inside": f"<{value}>", "html": value, "to": msg.to}


def test_compiled_template_owns_its_copy_and_renders_are_independent() -> None:
    source: dict[str, Any] = {"static": {"k": [1]}, "to": "$$To", "list": ["$$To", "x"]}
    compiled = compile_template(source)
    source["static"]["k"].append(2)
    source["to"] = "changed"
    first = compiled.render({"To": "a@x"})
    second = compiled.render({"To": "b@x"})
    assert first == {"static": {"k": [1]}, "to": "a@x", "list": ["a@x", "x"]}
    assert second["list"] == ["b@x", "x"]
    assert compiled.names == {"To"}


def test_a_slot_is_filled_from_the_slot_value_and_left_out_of_names() -> None:
    body = {"cid": "$$CampaignID", "wrap": {"msgs": [{"to": "$$To"}]}}
    compiled = compile_template(body, slot=("wrap", "msgs"))
    assert compiled.names == {"CampaignID"}
    out = compiled.render({"CampaignID": "c1", SLOT: [{"to": "a"}, {"to": "b"}]})
    assert out == {"cid": "c1", "wrap": {"msgs": [{"to": "a"}, {"to": "b"}]}}


def test_text_templates_always_render_text() -> None:
    assert compile_text("$$n").render({"n": 5}) == "5"
    assert compile_text("Bearer $$token!").render({"token": "k"}) == "Bearer k!"
    assert compile_text("static").render({}) == "static"
    assert compile_text("$$a$$b").names == {"a", "b"}


def test_non_json_input_is_refused() -> None:
    with pytest.raises(TypeError):
        compile_template({"x": {1, 2}})


@pytest.mark.parametrize(
    "template",
    [
        {"to": "$$To", "mid": "$$MessageID", "age": "$$age", "kind": "email", "n": {"x": 1}},
        {"to": "$$To"},
        {"name": "$$name"},
        {"hi": "Hi $$name", "to": "$$To"},  # text around a placeholder: the general way
        {"'}), __import__('os').system('x'), ({'": "$$To", '\\\n"': "$$name"},  # keys: data
        {"$$To": "$$To", "n": None, "t": True, "f": 1.5, "l": [1, "$$age"]},
        {"both": "$$cc", "deep": {"x": "$$To"}},  # joined lists and nesting too
        ["$$To"],
        {},
    ],
)
def test_the_direct_message_renderer_gives_what_the_general_one_gives(template: Any) -> None:
    msg = message(user_vars={"name": 'Zoë "Z"', "age": 41}, campaign_vars={"name": "x"})
    assert MessageRenderer(template).render(msg) == render(template, msg)
    if isinstance(template, dict) and template:
        assert list(MessageRenderer(template).render(msg)) == list(template)  # key order


def test_the_direct_message_renderer_names_every_missing_placeholder() -> None:
    renderer = MessageRenderer({"to": "$$To", "a": "$$alpha", "b": "$$beta", "c": "$$name"})
    with pytest.raises(UnresolvedPlaceholderError) as info:
        renderer.render(message(user_vars={"name": "Ann"}))
    assert info.value.names == ("alpha", "beta")
