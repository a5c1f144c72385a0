"""The ``date`` filter: vars are JSON, which has no dates, and the sandbox offers no other
way to read one, so an order date could not be written as "04 Nov 2026" at all."""

from __future__ import annotations

import pytest

from dispatch.campaign_checks import validate_content
from dispatch.models import CampaignRequest
from dispatch.rendering import CompiledContent, RenderError


def _html(template: str, **values: object) -> str:
    compiled = CompiledContent(subject="x", html=template, text=None, amp=None)
    return compiled.render(dict(values), ("subject", "html")).html


@pytest.mark.parametrize(
    ("value", "fmt", "shown"),
    [
        ("2026-11-04", "%d %b %Y", "04 Nov 2026"),
        ("2026-11-04T10:03:39Z", "%H:%M %Z", "10:03 UTC"),
        ("2026-11-04T10:03:39+02:00", "%d.%m. %H:%M", "04.11. 10:03"),  # in its own offset
        (" 2026-11-04 ", "%A", "Wednesday"),
        (1795481574, "%Y-%m-%d %H:%M", "2026-11-24 00:52"),
        (1795481574.9, "%Y", "2026"),
    ],
)
def test_a_date_is_written_as_its_format_says(value: object, fmt: str, shown: str) -> None:
    assert _html("{{ when | date(fmt) }}", when=value, fmt=fmt) == shown


def test_the_default_format_is_iso() -> None:
    assert _html("{{ when | date }}", when="2026-11-04T23:59:00Z") == "2026-11-04"


@pytest.mark.parametrize(
    ("value", "fmt", "said"),
    [
        ("next week", "%Y", "date: 'next week' is no ISO 8601 date or time"),
        (True, "%Y", "expected ISO 8601 text or Unix seconds, got bool"),
        ([2026], "%Y", "got list"),
        (10**20, "%Y", "is no Unix time"),
        ("2026-11-04", "%Y" * 101, "at most 200 characters"),
    ],
)
def test_what_is_no_date_fails_its_message_saying_why(value: object, fmt: str, said: str) -> None:
    with pytest.raises(RenderError) as failed:
        _html("<p>\n{{ when | date(fmt) }}</p>", when=value, fmt=fmt)
    assert str(failed.value).startswith("html: line 2: ") and said in str(failed.value)


def test_a_campaign_using_it_is_accepted() -> None:
    """Filters unknown to the sandbox are refused at creation (review R7); this one is known."""
    request = CampaignRequest.model_validate(
        {
            "provider": "p",
            "subject": "Your order of {{ placed | date('%d %b') }}",
            "html": "<p>{% if placed is defined %}{{ placed | date('%d %b %Y') }}{% endif %}</p>",
            "recipients": [{"email": "a@example.com", "vars": {"placed": "2026-11-04"}}],
        }
    )
    validate_content(request)
