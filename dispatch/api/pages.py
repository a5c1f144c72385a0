"""Pages for recipients: one-click unsubscribe (RFC 8058) and the preference center.

No authentication: the signed token in the URL is the only authority (RFC 8058 §3.2).
``POST /u/<token>`` unsubscribes at once and answers 200 (never a redirect);
``GET /u/<token>`` only shows a confirmation page, because link scanners fetch URLs.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from dispatch import campaigns, preferences, suppressions
from dispatch.api.body_limits import BodyTooLargeError, read_bounded
from dispatch.provider_store import ProviderNotFoundError, load_provider
from dispatch.unsubscribe import (
    InvalidTokenError,
    UnsubscribeToken,
    custom_center_url,
    read_token,
    unsubscribe_urls,
)

TEMPLATES = Path(__file__).resolve().parent.parent / "page_templates"  # package data
_pages = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape())
router = APIRouter(tags=["recipients"], include_in_schema=True)
MAX_FORM_BYTES = 64 * 1024


def _page(name: str, status: int = 200, **context: object) -> HTMLResponse:
    return HTMLResponse(_pages.get_template(name).render(**context), status_code=status)


def _token(token: str) -> UnsubscribeToken | HTMLResponse:
    try:
        return read_token(token)
    except (InvalidTokenError, ValueError):
        return _page(
            "notice.html",
            404,
            heading="This link is not valid",
            text="It may have been cut short when it was copied. Open it again from the "
            "email, or use the unsubscribe link of a more recent email from us.",
        )


def _custom_center(token: UnsubscribeToken) -> str:
    """The custom preference center URL of the campaign's provider, or ""."""
    try:
        provider = load_provider(campaigns.load_content(token.campaign_id).provider)
    except (campaigns.CampaignNotFoundError, ProviderNotFoundError):
        return ""
    return provider.preference_center_url if provider.preference_center == "custom" else ""


@router.get("/u/{token}", response_class=HTMLResponse)
def unsubscribe_page(token: str) -> Response:
    """A confirmation page (system center) or a redirect to the custom center."""
    parsed = _token(token)
    if isinstance(parsed, HTMLResponse):
        return parsed
    custom = _custom_center(parsed)
    if custom:
        return RedirectResponse(custom_center_url(custom, token), status_code=303)
    unsub, prefs = unsubscribe_urls(token)
    return _page("unsubscribe.html", email=parsed.email, action=unsub, preferences_url=prefs)


@router.post("/u/{token}", response_class=HTMLResponse)
async def one_click_unsubscribe(token: str) -> Response:
    """RFC 8058 one-click: unsubscribes at once, whatever the body; 200, no redirect."""
    parsed = _token(token)
    if isinstance(parsed, HTMLResponse):
        return parsed
    await run_in_threadpool(preferences.unsubscribe, parsed, "One-click unsubscribe")
    return _page("unsubscribe.html", email=parsed.email, done=True)


def _preferences_page(parsed: UnsubscribeToken, token: str, saved: bool = False) -> Response:
    return _page(
        "preferences.html",
        email=parsed.email,
        action=unsubscribe_urls(token)[1],
        categories=preferences.categories(),
        opted_out=preferences.opted_out(parsed.email),
        suppressed=suppressions.get(parsed.email) is not None,
        saved=saved,
    )


@router.get("/preferences/{token}", response_class=HTMLResponse)
def preference_center(token: str) -> Response:
    """The system preference center: one switch per category, and unsubscribe from all."""
    parsed = _token(token)
    if isinstance(parsed, HTMLResponse):
        return parsed
    return _preferences_page(parsed, token)


@router.post("/preferences/{token}", response_class=HTMLResponse)
async def save_preferences(token: str, request: Request) -> Response:
    """Save the switches (form fields ``category``) or unsubscribe from all."""
    parsed = _token(token)
    if isinstance(parsed, HTMLResponse):
        return parsed
    try:
        body = await read_bounded(request, MAX_FORM_BYTES)
    except BodyTooLargeError:
        return _page("notice.html", 413, heading="Form too large", text="Nothing was saved.")
    form = parse_qs(body.decode("utf-8", "replace"))
    await run_in_threadpool(_apply_form, parsed, form)
    return await run_in_threadpool(_preferences_page, parsed, token, True)


def _apply_form(parsed: UnsubscribeToken, form: dict[str, list[str]]) -> None:
    if form.get("action") == ["unsubscribe-all"]:
        preferences.unsubscribe(parsed, "Preference center")
    elif suppressions.get(parsed.email) is None:
        # An address unsubscribed from all gets nothing whatever its switches say: the
        # page shows that instead of switches, and a stale form saves nothing.
        preferences.set_choices(parsed.email, set(form.get("category", [])))
