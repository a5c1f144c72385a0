"""Review B23: the recipient pages as links cut short and a first preference center meet
them (the real app over HTTP, a real headless Chromium driven over the DevTools protocol)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from dispatch import preferences
from dispatch.provider_store import load_provider
from dispatch.settings import get_settings
from dispatch.test_email import build_test_message
from tests import browser
from tests.api_server import ApiServer
from tests.helpers import smtp_provider
from tests.test_review_y3_pages import Page, _token_for, chromium
from tests.test_security_pages import _assert_private

CUT_SHORT = ["/u/", "/u", "/preferences/", "/preferences"]


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_a_link_cut_before_its_token_gets_the_not_valid_page(
    api_server: ApiServer, method: str
) -> None:
    """A long link wrapped onto two lines breaks after a slash: the first line opened
    alone, ``https://host/u/``, answered the API's JSON ``{"detail": "Not Found"}``,
    without the pages' headers, where a token cut anywhere else gets a page saying the
    link is not valid."""
    with api_server.client() as client:
        for path in CUT_SHORT:
            answer = client.request(method, path)
            assert answer.status_code == 404, (path, answer.status_code)
            assert answer.headers["content-type"].startswith("text/html"), path
            _assert_private(answer)
            if method != "HEAD":
                assert "This link is not valid" in answer.text, path
    page = browser.dom(f"{api_server.url}/u/")
    assert "<h1>This link is not valid</h1>" in page


def test_a_center_without_categories_saves_no_switch_it_never_showed(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Before any campaign, a provider test message's preference link shows no switch
    ("No email categories yet") but offered "Save choices". While the page is open the
    first campaign goes out in "news"; the person presses Save: the form had no ``shown``
    fields, read as "every category", and opted the address out of "news", never shown."""
    smtp_provider(redis_client, 9, preference_center="system")
    settings = get_settings()
    message = build_test_message(load_provider("local", redis_client), "p@example.com", settings)
    token = urlsplit(message.preferences_url).path.rsplit("/", 1)[1]
    assert preferences.categories(redis_client) == []

    async def scenario(page: Page) -> dict[str, Any]:
        await page.open(f"{api_server.url}/preferences/{token}")
        seen: dict[str, Any] = {"text": await page.value("document.body.innerText")}
        # The first campaign, sent while the page is open (a thread: it runs its own loop).
        await asyncio.to_thread(_token_for, redis_client, "other@example.com", "news")
        seen["buttons"] = await page.value("[...document.forms[0].elements].map(e => e.id)")
        if "save" in seen["buttons"]:  # the person presses what the page offers
            seen["title"] = await page.press_button("#save")
        return seen

    with chromium(800, 600) as run:
        seen = run(scenario)
    assert "No email categories yet" in seen["text"]
    assert preferences.opted_out("p@example.com", redis_client) == set()
    assert seen["buttons"] == ["unsubscribe-all"]
