"""Recipient pages over HTTP: one-click unsubscribe (RFC 8058) and the preference center."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
import redis

from dispatch import campaign_reads, store, suppressions
from dispatch.settings import Settings, get_settings
from tests import browser
from tests.api_server import ApiServer
from tests.api_support import api_client, covers
from tests.helpers import recipients, run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer, free_port

FAST = Settings(retry_base_seconds=0.05)


def _campaign(r: redis.Redis, smtp: SmtpTestServer, n: int, category: str) -> str:
    body = {
        "provider": "local",
        "subject": "s",
        "category": category,
        "recipients": recipients(n),
        "html": '<a href="{{ unsubscribe_url }}">unsubscribe</a> {{ preferences_url }}',
    }
    return run_inline(r, body, FAST)[0]


def _links(smtp: SmtpTestServer, email: str) -> dict[str, Any]:
    message = next(m.message for m in smtp.messages if m.rcpt_tos == [email])
    match = re.fullmatch(r"<(.+)>", message["List-Unsubscribe"])
    assert match and message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    return {"unsubscribe": match.group(1), "html": html, "meta": message["X-CleverTap_META"]}


def _custom_center_links(r: redis.Redis, center: str) -> dict[str, Any]:
    """The links of user0's message of a campaign sent with the custom center ``center``."""
    with SmtpTestServer() as smtp:
        smtp_provider(r, smtp.port, preference_center="custom", preference_center_url=center)
        _campaign(r, smtp, 1, "news")
        return _links(smtp, "user0@example.com")


@covers("GET /u/{token}", "POST /u/{token}")
def test_one_click_unsubscribe(api_server: ApiServer, redis_client: redis.Redis) -> None:
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port, preference_center="system")
        cid = _campaign(redis_client, smtp, 3, "news")
        links = _links(smtp, "user1@example.com")
    url = links["unsubscribe"]  # under DISPATCH_PUBLIC_URL; the test server is elsewhere
    assert url.startswith(get_settings().public_url + "/u/") and url in links["html"]
    path = urlsplit(url).path
    with api_client(api_server, token=None) as http:
        page = http.get(path)  # a link scanner's GET must not unsubscribe
        assert page.status_code == 200 and "Unsubscribe?" in page.text
        probe = http.head(path)  # nor its HEAD (it was 405)
        assert probe.status_code == 200 and probe.content == b""
        assert http.head(path.replace("/u/", "/preferences/")).status_code == 200
        assert suppressions.get("user1@example.com", client=redis_client) is None
        answer = http.post(
            path,
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        again = http.post(path, content=b"List-Unsubscribe=One-Click")
        forged = http.post(path[:-3] + "AAA")
    assert answer.status_code == 200 and "You are unsubscribed" in answer.text
    assert again.status_code == 200 and forged.status_code == 404
    with api_client(api_server, token=None) as http:  # the link again: nothing to confirm
        revisit = http.get(path)
    assert revisit.status_code == 200 and "You are unsubscribed" in revisit.text
    assert "Unsubscribe?" not in revisit.text
    entry = suppressions.get("user1@example.com", client=redis_client)
    assert entry is not None and entry["reason"] == "unsubscribed"
    assert campaign_reads.get_counters(cid, redis_client)["unsubscribed"] == 1  # once, not twice
    events = [orjson.loads(e[1]["json"]) for e in redis_client.xrange(store.EVENTS_STREAM)]
    unsubscribed = [e for e in events if e["event"] == "Channel Unsubscribed"]
    assert [e["properties"].get("Type") for e in unsubscribed] == ["One-click unsubscribe"]
    # The message's meta, as a provider's unsubscribe callback names it (it was empty).
    assert unsubscribed[0]["meta"] == links["meta"] and links["meta"].startswith("user1@")


@covers("GET /preferences/{token}", "POST /preferences/{token}")
def test_preference_center_opt_out_of_a_category(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port, preference_center="system")
        _campaign(redis_client, smtp, 2, "news")
        _campaign(redis_client, smtp, 2, "offers")
        html = _links(smtp, "user0@example.com")["html"]
        path = re.search(r"(/preferences/[^\s<\"]+)", html).group(1)  # type: ignore[union-attr]
        with api_client(api_server, token=None) as http:
            page = http.get(path)
            assert page.status_code == 200
            assert 'value="news"' in page.text and 'value="offers"' in page.text
            saved = http.post(path, content=b"category=offers&action=save")
        assert saved.status_code == 200 and "Your choices are saved" in saved.text
        assert re.search(r'value="news"\s*>', saved.text)  # unchecked now
        smtp.messages.clear()
        news = _campaign(redis_client, smtp, 2, "news")
        offers = _campaign(redis_client, smtp, 2, "offers")
        received = [(m.rcpt_tos[0]) for m in smtp.messages]
    assert campaign_reads.get_counters(news, redis_client)["suppressed"] == 1
    assert campaign_reads.get_counters(offers, redis_client)["sent"] == 2
    assert received.count("user0@example.com") == 1  # the offers one only


def test_no_preference_center_adds_nothing(redis_client: redis.Redis) -> None:
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port)  # preference_center "none"
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(1)}
        run_inline(redis_client, body, FAST)
        message = smtp.messages[0].message
    assert message["List-Unsubscribe"] is None and message["List-Unsubscribe-Post"] is None


def test_pages_render_in_a_real_browser(
    api_server: ApiServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Chromium loads both pages: the form, its switches and buttons are in the DOM."""
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port, preference_center="system")
        _campaign(redis_client, smtp, 1, "news")
        _campaign(redis_client, smtp, 1, "offers")
        url = _links(smtp, "user0@example.com")["unsubscribe"]
    path = urlsplit(url).path
    unsubscribe = browser.dom(api_server.url + path)
    assert 'id="unsubscribe"' in unsubscribe and 'method="post"' in unsubscribe
    preferences = browser.dom(api_server.url + path.replace("/u/", "/preferences/", 1))
    checkboxes = re.findall(r'<input type="checkbox" name="category" value="(\w+)"', preferences)
    assert sorted(checkboxes) == ["news", "offers"]
    assert 'id="unsubscribe-all"' in preferences
    shot = browser.screenshot(
        api_server.url + path.replace("/u/", "/preferences/", 1), tmp_path / "preferences.png"
    )
    assert shot.stat().st_size > 1000  # a real rendered image


def test_a_custom_center_gets_the_token_in_its_own_query(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """The custom center's URL may have a query already: the token is added to it."""
    center = "https://prefs.acme.example/center?lang=en#top"
    links = _custom_center_links(redis_client, center)
    token = urlsplit(links["unsubscribe"]).path.rsplit("/", 1)[1]
    expected = f"https://prefs.acme.example/center?lang=en&token={token}#top"
    assert html.escape(expected) in links["html"]  # {{ preferences_url }}, autoescaped
    with api_client(api_server, token=None) as http:
        page = http.get(f"/u/{token}")
    assert page.status_code == 303 and page.headers["location"] == expected


def test_a_link_that_is_not_valid_gets_a_real_page(api_server: ApiServer) -> None:
    """A garbled, cut or forged token: a page a person can read (title, language, the
    phone's width), 404, whichever page and method it was for."""
    forged = "WyJjIiwwLCJhQGV4YW1wbGUuY29tIiwibmV3cyJd.AAAA"
    with api_client(api_server, token=None) as http:
        answers = [
            http.get("/u/garbage"),
            http.post("/u/garbage", content=b"List-Unsubscribe=One-Click"),
            http.get(f"/preferences/{forged}"),
            http.post(f"/preferences/{forged}", content=b"action=unsubscribe-all"),
        ]
    for answer in answers:
        assert answer.status_code == 404
        assert answer.headers["content-type"].startswith("text/html")
        page = answer.text
        assert '<html lang="en">' in page and "<title>This link is not valid</title>" in page
        assert 'name="viewport"' in page and "<h1>This link is not valid</h1>" in page
    dom = browser.dom(api_server.url + "/u/garbage")
    assert "<title>This link is not valid</title>" in dom


def test_an_address_unsubscribed_from_all_is_told_so_and_saves_nothing(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """After "Unsubscribe from all" the switches are gone: they would show every
    category off and, switched on and saved, still send nothing ("Your choices are
    saved" was a false promise)."""
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port, preference_center="system")
        _campaign(redis_client, smtp, 1, "news")
        url = _links(smtp, "user0@example.com")["unsubscribe"]
    path = urlsplit(url).path.replace("/u/", "/preferences/", 1)
    with api_client(api_server, token=None) as http:
        gone = http.post(path, content=b"category=news&action=unsubscribe-all")
        again = http.post(path, content=b"category=news&action=save")
        page = http.get(path)
    for answer in (gone, again, page):
        assert answer.status_code == 200
        assert "You are unsubscribed from all emails" in answer.text
        assert 'type="checkbox"' not in answer.text and "Your choices are saved" not in answer.text
    assert suppressions.get("user0@example.com", client=redis_client) is not None
    assert redis_client.smembers(store.optout_key("news")) == set()  # nothing stored


def test_the_switches_are_labelled_and_grouped(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Each switch is inside its label (a screen reader names it, a tap on the text
    toggles it), in a group with a legend; the page has a language and a title."""
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port, preference_center="system")
        _campaign(redis_client, smtp, 1, "news")
        _campaign(redis_client, smtp, 1, "offers")
        url = _links(smtp, "user0@example.com")["unsubscribe"]
    dom = browser.dom(api_server.url + urlsplit(url).path.replace("/u/", "/preferences/", 1))
    labels = re.findall(r"<label><input [^>]*> (\w+)</label>", dom)
    assert sorted(labels) == ["news", "offers"]
    assert "<legend>Emails you receive</legend>" in dom
    assert '<html lang="en">' in dom and "<title>Email preferences</title>" in dom


def test_with_redis_unreachable_the_pages_ask_to_come_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A recipient's click (or a mail client's one-click POST) while Redis is down: a
    page saying to try again and 503 with Retry-After (the client posts again), not a
    bare "Internal Server Error"."""
    import asyncio

    import httpx
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from dispatch.api.app import app
    from dispatch.unsubscribe import make_token

    # Nothing listens there; no retries, so that each request fails at once.
    dead = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0), decode_responses=True)
    monkeypatch.setattr(store, "_sync_client", dead)
    token = make_token("c-1", 0, "user0@example.com", "news")

    async def visit() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://dispatch") as http:
            return [
                await http.get(f"/u/{token}"),
                await http.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click"),
                await http.get(f"/preferences/{token}"),
                await http.post(f"/preferences/{token}", content=b"action=unsubscribe-all"),
            ]

    for answer in asyncio.run(visit()):
        assert answer.status_code == 503 and answer.headers["retry-after"] == "60"
        assert "<title>Please try again in a few minutes</title>" in answer.text


def test_the_forms_post_where_the_page_is_served(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """The page's form and its link lead back to the server that showed it, as a
    browser resolves them, even when DISPATCH_PUBLIC_URL names another origin (a proxy
    in front, https outside and http inside): they used to go to DISPATCH_PUBLIC_URL."""
    from urllib.parse import urljoin

    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port, preference_center="system")
        _campaign(redis_client, smtp, 1, "news")
        url = _links(smtp, "user0@example.com")["unsubscribe"]
    page_url = api_server.url + urlsplit(url).path
    assert not page_url.startswith(get_settings().public_url)  # another origin here
    dom = browser.dom(page_url)
    form = re.search(r"<form [^>]*>", dom).group(0)  # type: ignore[union-attr]
    action = re.search(r'action="([^"]*)"', form)
    target = urljoin(page_url, html.unescape(action.group(1)) if action else "")
    link = re.search(r'<a href="([^"]*)">Choose what you receive', dom).group(1)  # type: ignore[union-attr]
    prefs_url = urljoin(page_url, html.unescape(link))
    assert prefs_url == page_url.replace("/u/", "/preferences/", 1)
    with httpx.Client() as http:
        assert http.get(prefs_url).status_code == 200
        done = http.post(target, content=b"")  # the button: an empty form
    assert done.status_code == 200 and "You are unsubscribed" in done.text
    assert suppressions.get("user0@example.com", client=redis_client) is not None
