"""Per-recipient content rendering: sandboxed Jinja2, compiled once per campaign.

Templates come from the campaign (trusted to be templates); recipient and campaign
``vars`` are only ever *data* in the context, never compiled (DESIGN §3, PITFALLS).
HTML and AMP autoescape; subject and text do not (they are not HTML), and the subject
is refused if it renders with a line break.
"""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateError, meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

_HTML_ENV = ImmutableSandboxedEnvironment(autoescape=True, undefined=StrictUndefined)
_TEXT_ENV = ImmutableSandboxedEnvironment(autoescape=False, undefined=StrictUndefined)

# Names the service puts in every template's context itself.
SERVICE_NAMES = frozenset({"unsubscribe_url", "preferences_url", "email", "user_id", "campaign"})


class RenderError(ValueError):
    """A template cannot be compiled or rendered; the message names the part."""


@dataclass(frozen=True, slots=True)
class RenderedContent:
    subject: str
    html: str
    text: str
    amp: str


_BLOCK_TAGS = re.compile(r"<\s*(br|/p|/div|/h[1-6]|/li|/tr|hr)\b[^>]*>", re.IGNORECASE)
_DROP = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAGS = re.compile(r"<[^>]+>")
_SPACES = re.compile(r"[ \t\r\f\v]+")
_BLANKS = re.compile(r"\n\s*\n+")


def html_to_text(html: str) -> str:
    """A plain-text alternative derived from HTML: block tags become line breaks."""
    text = _DROP.sub("", html)
    text = _BLOCK_TAGS.sub("\n", text)
    text = html_lib.unescape(_TAGS.sub("", text))
    text = _SPACES.sub(" ", text)
    return _BLANKS.sub("\n\n", "\n".join(line.strip() for line in text.split("\n"))).strip()


class CompiledContent:
    """The four templates of one campaign, compiled once; ``render`` per recipient."""

    def __init__(self, *, subject: str, html: str, text: str = "", amp: str = "") -> None:
        self._parts: dict[str, Any] = {}
        self.variables: set[str] = set()
        for name, source, env in (
            ("subject", subject, _TEXT_ENV),
            ("html", html, _HTML_ENV),
            ("text", text, _TEXT_ENV),
            ("amp", amp, _HTML_ENV),
        ):
            if not source:
                self._parts[name] = None
                continue
            try:
                ast = env.parse(source)
                self.variables |= meta.find_undeclared_variables(ast)
                self._parts[name] = env.from_string(source)
            except TemplateError as exc:
                raise RenderError(f"{name}: template does not compile: {exc}") from exc
        self._derive_text = not text

    def render(self, context: Mapping[str, Any]) -> RenderedContent:
        """Render every part for one recipient; raises :class:`RenderError` naming the part."""
        out: dict[str, str] = {}
        for name, template in self._parts.items():
            if template is None:
                out[name] = ""
                continue
            try:
                out[name] = template.render(context)
            except Exception as exc:  # sandbox violations, undefined names, filter errors
                raise RenderError(f"{name}: {type(exc).__name__}: {exc}") from exc
        subject = out["subject"].strip()
        if "\r" in subject or "\n" in subject:
            raise RenderError("subject: contains a line break after rendering")
        text = html_to_text(out["html"]) if self._derive_text else out["text"]
        return RenderedContent(subject=subject, html=out["html"], text=text, amp=out["amp"])


def build_context(
    *,
    campaign_vars: Mapping[str, Any],
    user_vars: Mapping[str, Any],
    email: str,
    user_id: str,
    campaign_id: str,
    unsubscribe_url: str = "",
    preferences_url: str = "",
) -> dict[str, Any]:
    """The template context: campaign vars, overridden by the recipient's, then ours."""
    context: dict[str, Any] = {**campaign_vars, **user_vars}
    context.update(
        email=email,
        user_id=user_id,
        campaign=campaign_id,
        unsubscribe_url=unsubscribe_url,
        preferences_url=preferences_url,
    )
    return context
