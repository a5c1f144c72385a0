"""Pages for recipients: one-click unsubscribe (RFC 8058) and the preference center.

No authentication: the token in the URL (sealed, authenticated) is the only authority
(RFC 8058 §3.2). ``POST /u/<token>`` unsubscribes at once and answers 200 (never a redirect);
``GET /u/<token>`` only shows a confirmation page, because link scanners fetch URLs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import redis
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from dispatch import campaign_reads, campaigns, preferences, store, suppressions
from dispatch.api.body_limits import STREAMED, BodyTooLargeError, read_bounded
from dispatch.api.errors import FORM_TOO_LARGE, PAGE_RESPONSES, REDIRECT
from dispatch.provider_store import decode_provider
from dispatch.test_email import provider_of_test
from dispatch.unsubscribe import (
    InvalidTokenError,
    UnsubscribeToken,
    custom_center_url,
    read_token,
)

TEMPLATES = Path(__file__).resolve().parent.parent / "page_templates"  # package data
_pages = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape())
# A body is read only by the preference form, bounded there (MAX_FORM_BYTES: a 413 page);
# the other pages leave one unread. Never the app's limit, whose 413 is plain text.
router = APIRouter(tags=["recipients"], include_in_schema=True, max_body_size=STREAMED)
MAX_FORM_BYTES = 64 * 1024
RETRY_AFTER_SECONDS = 60  # with Redis unreachable: when a mail client should post again
# Every page (and the redirect to a custom center) names a person and carries their token
# in its URL: never stored by a shared cache or the browser's (a proxy would serve one
# person's page, or a stale choice, again), never framed by another site, never sends the
# URL on as a Referer, never indexed by a search engine (a crawler of a public archive of
# a forwarded newsletter follows its links: the page would put the address in results).
# The pages are plain forms posting to themselves: no script at all.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
}


def _page(name: str, status: int = 200, **context: object) -> HTMLResponse:
    body = _pages.get_template(name).render(**context)
    return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)


def _not_valid() -> HTMLResponse:
    return _page(
        "notice.html",
        404,
        heading="This link is not valid",
        text="It may have been cut short when it was copied. Open it again from the "
        "email, or use the unsubscribe link of a more recent email from us.",
    )


def _token(token: str) -> UnsubscribeToken | HTMLResponse:
    try:
        return read_token(token)
    except (InvalidTokenError, ValueError):
        return _not_valid()


def _custom_center(token: UnsubscribeToken) -> str:
    """The custom preference center URL of the campaign's provider (or of a campaign's
    test message), or ""."""
    try:
        nickname: str | None = campaign_reads.load_content(token.campaign_id).provider
    except campaigns.CampaignNotFoundError:
        nickname = provider_of_test(store.sync_client(), token.campaign_id)
    # Its secrets are not needed here, nor decrypted: with a DISPATCH_SECRET_KEY that no
    # longer reads them, the link still opens (it answered the API's JSON 409 instead).
    raw = store.sync_client().get(store.provider_key(nickname)) if nickname else None
    if raw is None:
        return ""
    provider = decode_provider(raw, secrets=False)[0]
    return provider.preference_center_url if provider.preference_center == "custom" else ""


async def _with_redis(func: Callable[..., Response], *args: Any) -> Response:
    """``func(*args)`` in a thread; with Redis unreachable, a page that asks the person
    (or the mail client posting a one-click unsubscribe) to come back, and nothing done."""
    try:
        return await run_in_threadpool(func, *args)
    except redis.RedisError:
        response = _page(
            "notice.html",
            503,
            heading="Please try again in a few minutes",
            text="This page is not available right now. Nothing was changed.",
        )
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response


@router.get("/u/{token}", response_class=HTMLResponse, responses={**PAGE_RESPONSES, **REDIRECT})
async def unsubscribe_page(token: str) -> Response:
    """A confirmation page (system center) or a redirect to the custom center."""
    parsed = _token(token)
    if isinstance(parsed, HTMLResponse):
        return parsed
    return await _with_redis(_confirmation_page, parsed, token)


def _confirmation_page(parsed: UnsubscribeToken, token: str) -> Response:
    custom = _custom_center(parsed)
    if custom:
        url = custom_center_url(custom, token)
        return RedirectResponse(url, status_code=303, headers=PAGE_HEADERS)
    entry = suppressions.get(parsed.email)
    if entry is not None:  # nothing left to confirm
        return _done_page(parsed, token, entry)
    return _page("unsubscribe.html", email=parsed.email, token=token)


def _done_page(parsed: UnsubscribeToken, token: str, entry: dict[str, Any] | None) -> Response:
    """ "You are unsubscribed", with the way back when the entry is the person's own."""
    return _page(
        "unsubscribe.html",
        email=parsed.email,
        token=token,
        done=True,
        can_resubscribe=preferences.own_unsubscribe(entry) and parsed.current_key,
    )


@router.post("/u/{token}", response_class=HTMLResponse, responses=PAGE_RESPONSES)
async def one_click_unsubscribe(token: str) -> Response:
    """RFC 8058 one-click: unsubscribes at once, whatever the body; 200, no redirect."""
    parsed = _token(token)
    if isinstance(parsed, HTMLResponse):
        return parsed
    return await _with_redis(_unsubscribed_page, parsed, token)


def _unsubscribed_page(parsed: UnsubscribeToken, token: str) -> Response:
    preferences.unsubscribe(parsed, "One-click unsubscribe")
    return _done_page(parsed, token, suppressions.get(parsed.email))


def _preferences_page(
    parsed: UnsubscribeToken, saved: bool = False, resubscribed: bool = False
) -> Response:
    """The center; ``resubscribed``: a re-subscribe was asked for (the page says it is
    done when the address is not suppressed, and why not when it is)."""
    entry = suppressions.get(parsed.email)
    return _page(
        "preferences.html",
        email=parsed.email,
        categories=preferences.categories(),
        opted_out=preferences.opted_out(parsed.email),
        suppressed=entry is not None,
        can_resubscribe=preferences.own_unsubscribe(entry) and parsed.current_key,
        opt_out_only=not parsed.current_key,
        saved=saved,
        resubscribed=resubscribed,
    )


@router.get("/preferences/{token}", response_class=HTMLResponse, responses=PAGE_RESPONSES)
async def preference_center(token: str) -> Response:
    """The system preference center: one switch per category, and unsubscribe from all."""
    parsed = _token(token)
    if isinstance(parsed, HTMLResponse):
        return parsed
    return await _with_redis(_preferences_page, parsed)


@router.post(
    "/preferences/{token}",
    response_class=HTMLResponse,
    responses={**PAGE_RESPONSES, **FORM_TOO_LARGE},
)
async def save_preferences(token: str, request: Request) -> Response:
    """Save the switches (form fields ``category``, with ``action=save``), unsubscribe
    from all (``action=unsubscribe-all``) or subscribe again after one's own unsubscribe
    (``action=resubscribe``; never lifts a bounce, a complaint or an operator's entry);
    without an action, nothing changes."""
    parsed = _token(token)
    if isinstance(parsed, HTMLResponse):
        return parsed
    try:
        body = await read_bounded(request, MAX_FORM_BYTES)
    except BodyTooLargeError:
        return _page("notice.html", 413, heading="Form too large", text="Nothing was saved.")
    form = parse_qs(body.decode("utf-8", "replace"))
    return await _with_redis(_saved_page, parsed, form)


def _saved_page(parsed: UnsubscribeToken, form: dict[str, list[str]]) -> Response:
    action = form.get("action")
    if action == ["unsubscribe-all"]:
        preferences.unsubscribe(parsed, "Preference center")
    elif action == ["resubscribe"]:
        preferences.resubscribe(parsed)  # done, or refused: the page says which
        return _preferences_page(parsed, resubscribed=True)
    elif action != ["save"]:
        # Not the page's form (each of its buttons names its action): a link scanner
        # posting every URL with an empty body, say. Its missing switches would read as
        # "all off" and opt the person out of every category: the page, unchanged.
        return _preferences_page(parsed)
    elif suppressions.get(parsed.email) is None:
        # An address unsubscribed from all gets nothing whatever its switches say: the
        # page shows that instead of switches, and a stale form saves nothing.
        # The switches the page had ("shown"; a form from before it was written has
        # none: every category).
        shown = set(form["shown"]) if "shown" in form else None
        wanted = set(form.get("category", []))
        if not parsed.current_key:  # switches off only (the page shows them so)
            wanted -= preferences.opted_out(parsed.email)
        preferences.set_choices(parsed.email, wanted, shown=shown)
    return _preferences_page(parsed, saved=True)


async def link_without_token(_: Request) -> Response:
    """A link cut short before its token (a wrapped line breaks a long URL after a slash):
    the page of a link that is not valid, as for a token cut short (it was the API's JSON
    ``{"detail": "Not Found"}``, without the pages' headers)."""
    return _not_valid()


# Plain routes, not API operations: pages for links that name nothing.
for _path in ("/u", "/u/", "/preferences", "/preferences/"):
    router.add_route(_path, link_without_token, ["GET", "HEAD", "POST"], include_in_schema=False)


# HEAD answers like GET (link checkers and mail scanners ask with it; nothing changes),
# kept out of the schema, where it would repeat GET's operation.
router.head("/u/{token}", include_in_schema=False)(unsubscribe_page)
router.head("/preferences/{token}", include_in_schema=False)(preference_center)
