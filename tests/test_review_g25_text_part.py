"""The text part derived from HTML that leaves out optional end tags (review G25).

HTML may leave out the end tags of p, li, td and tr (the HTML standard's optional tags;
minifiers drop them), and a block may start right after text. The derived text ran such
blocks together: "<p>One<p>Two" read "OneTwo", "<li>a<li>b" "- a- b".
"""

from __future__ import annotations

import pytest
import redis

from dispatch.rendering import CompiledContent, build_context
from dispatch.text_part import derive_text_template, html_to_text
from tests.helpers import recipients, run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<p>One<p>Two", "One\nTwo"),
        ("<ul><li>one<li>two</ul>", "- one\n- two"),
        ("<table><tr><td>a<td>b<tr><td>c<td>d</table>", "a b\nc d"),
        ("Hello<div>World</div>!", "Hello\nWorld\n!"),
        ("<p>Intro:<ul>\n<li>a</li></ul>", "Intro:\n- a"),
        # What closed tags gave before is kept: no blank line where none was.
        ("<p>a</p><p>b</p>", "a\nb"),
        ("<ul><li>one</li><li>two</li></ul>", "- one\n- two"),
        ("<p>a</p> <div> <p>b</p></div>", "a\nb"),
        ("<p>a</p>\n<p>b</p>", "a\n\nb"),
    ],
)
def test_a_block_starts_a_line(html: str, text: str) -> None:
    assert html_to_text(html) == text


@pytest.mark.parametrize(
    "html",
    [
        "<p>Hi {{ name }}<p>{% if vip %}<p>VIP{% endif %}<p>end",
        "<p>x</p>{% if vip %}<p>VIP {{ name }}</p>{% endif %}<p>end",
        "<ul>{% for i in items %}<li>{{ i }}{% endfor %}</ul>after",
        "<p>a</p>{{ empty }}<p>b{{ empty }}<div>c",
        "<table>{% for i in items %}<tr><td>{{ i }}<td>{{ name }}{% endfor %}</table>",
    ],
)
@pytest.mark.parametrize("vip", [True, False])
def test_the_text_derived_once_is_the_text_derived_per_message(html: str, vip: bool) -> None:
    """The soft line break of a block's start depends on what is rendered around it: the
    text template derived once must still give what each rendered HTML gives."""
    assert derive_text_template(html) is not None
    compiled = CompiledContent(subject="s", html=html)
    ctx = build_context(
        campaign_vars={"vip": vip, "items": ["a", "b & c"], "empty": ""},
        user_vars={"name": "Zoë"},
        email="a@b.example",
        user_id="",
        campaign_id="c",
    )
    out = compiled.render(ctx)
    assert out.text == html_to_text(out.html)
    assert "\x01" not in out.text
    assert "VIPend" not in out.text and "Zoëend" not in out.text


def test_a_campaign_of_minified_html_sends_its_paragraphs_apart(
    redis_client: redis.Redis,
) -> None:
    """Through a real SMTP server: the text/plain part of a campaign whose HTML leaves out
    its end tags has each paragraph and item on a line of its own."""
    html = "<p>Hello {{ name }}<p>Our picks:<ul><li>Tea<li>Coffee</ul><p>Bye"
    with SmtpTestServer() as server:
        smtp_provider(redis_client, server.port)
        body = {"provider": "local", "subject": "s", "html": html, "recipients": recipients(2)}
        run_inline(redis_client, body)
    assert len(server.messages) == 2
    for received in server.messages:
        part = received.message.get_body(("plain",))
        assert part is not None
        lines = part.get_content().splitlines()
        assert lines[1:] == ["Our picks:", "- Tea", "- Coffee", "Bye"]
        assert lines[0].startswith("Hello User ")


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_a_template_written_in_lines_is_derived_once(newline: str) -> None:
    """Jinja2 reads each line break as "\\n" and drops the last one: a template ending
    with a line break (a file's) or written with CRLF was compared with that as written,
    never derived once, and each message paid html_to_text instead."""
    html = newline.join(["<h1>Hello {{ name }}</h1>", "<p>Our picks:<ul>", "<li>Tea", ""])
    derived = derive_text_template(html)
    assert derived is not None
    compiled = CompiledContent(subject="s", html=html)
    ctx = build_context(
        campaign_vars={}, user_vars={"name": "Ann"}, email="a@b.example", user_id="",
        campaign_id="c",
    )  # fmt: skip
    out = compiled.render(ctx)
    assert out.text == html_to_text(out.html) == "Hello Ann\n\nOur picks:\n- Tea"
