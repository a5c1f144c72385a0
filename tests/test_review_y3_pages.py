"""Review Y3: the recipient pages as a recipient meets them: link scanners posting every
URL, a phone's width, a keyboard and a screen reader (a real headless Chromium driven
over the DevTools protocol: keys typed, the page's layout and title read)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import redis
import websockets

from dispatch import preferences, store, suppressions
from tests import browser
from tests.api_server import ApiServer
from tests.helpers import run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.test_pages import FAST

LONG_ADDRESS = "firstname.lastname.department-of-examples@subdomain.example-company.com"
LONG_CATEGORY = "a-category-name-of-sixty-four-characters-and-not-one-space-in-it"
ODD_CATEGORY = '<b>"Deals" & more</b>'


def _token_for(r: redis.Redis, email: str, *categories: str) -> str:
    """One campaign per category sent to ``email`` with the system center; the token of
    the last message."""
    with SmtpTestServer() as smtp:
        smtp_provider(r, smtp.port, preference_center="system")
        for category in categories:
            body = {
                "provider": "local",
                "subject": "s",
                "category": category,
                "recipients": [{"email": email}],
                "html": "{{ unsubscribe_url }}",
            }
            run_inline(r, body, FAST)
        header = smtp.messages[-1].message["List-Unsubscribe"]
    return urlsplit(header.strip("<>")).path.rsplit("/", 1)[1]


def _unsubscribed_events(r: redis.Redis) -> list[dict[str, Any]]:
    events = (orjson.loads(e[1]["json"]) for e in r.xrange(store.EVENTS_STREAM))
    return [e for e in events if e["event"] == "Channel Unsubscribed"]


def test_a_post_that_is_not_the_preference_form_changes_nothing(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A link scanner that posts every URL it finds (no body, or one of its own) opted
    the person out of every category and answered "Your choices are saved": the missing
    switches read as "all off". Only the form's own buttons act."""
    email = "user0@example.com"
    token = _token_for(redis_client, email, "news", "offers")
    path = f"/preferences/{token}"
    with httpx.Client(base_url=api_server.url, timeout=30) as http:
        answers = [
            http.post(path),
            http.post(path, content=b"url=https%3A%2F%2Fexample.com"),
            http.post(path, files={"category": (None, "news"), "action": (None, "save")}),
            http.post(path, data={"action": "subscribe"}),
        ]
        for answer in answers:
            assert answer.status_code == 200, answer.text
            assert "Your choices are saved" not in answer.text
            assert len(re.findall(r"type=\"checkbox\"[^>]*\n\s*checked>", answer.text)) == 2
        assert preferences.opted_out(email, redis_client) == set()
        assert suppressions.get(email, client=redis_client) is None
        # The form itself still works: news off, then everything off.
        saved = http.post(path, data={"category": "offers", "action": "save"})
        assert saved.status_code == 200 and "Your choices are saved" in saved.text
        assert preferences.opted_out(email, redis_client) == {"news"}
        none = http.post(path, data={"action": "save"})  # every switch off
        assert "Your choices are saved" in none.text
    assert preferences.opted_out(email, redis_client) == {"news", "offers"}
    assert _unsubscribed_events(redis_client) == []


# --- A real Chromium driven over the DevTools protocol --------------------------------


class Page:
    """One tab of a headless Chromium over its DevTools socket: navigate, type keys,
    evaluate expressions (the page's own policy allows no script; this is the browser's)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self.ids)
        await self.ws.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(await self.ws.recv())
            if message.get("id") == number:
                assert "error" not in message, (method, message)
                result: dict[str, Any] = message.get("result", {})
                return result

    async def value(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def open(self, url: str) -> None:
        await self.leaving()
        await self.send("Page.navigate", url=url)
        await self.loaded()

    async def leaving(self) -> None:
        """Mark the current document, so that :meth:`loaded` waits for the next one (the
        old one says "complete" until the navigation commits)."""
        await self.value("window.__left = true")

    async def loaded(self) -> None:
        for _ in range(200):  # the new document, fully loaded
            await asyncio.sleep(0.05)
            if await self.value("!window.__left && document.readyState === 'complete'"):
                return
        raise TimeoutError("the page did not load")

    async def press(self, key: str, code: int, text: str = "") -> None:
        down: dict[str, Any] = {"key": key, "code": key, "windowsVirtualKeyCode": code}
        await self.send("Input.dispatchKeyEvent", type="keyDown", text=text, **down)
        await self.send("Input.dispatchKeyEvent", type="keyUp", **down)

    async def tab_to(self, selector: str) -> None:
        """Press Tab until ``selector`` has the focus (as a keyboard user reaches it)."""
        for _ in range(20):
            await self.press("Tab", 9)
            if await self.value(f"document.activeElement.matches({json.dumps(selector)})"):
                return
        raise AssertionError(f"Tab never reached {selector}")

    async def press_button(self, selector: str) -> str:
        """Tab to the button, press Enter; the title of the page the form leads to."""
        await self.tab_to(selector)
        await self.leaving()
        await self.press("Enter", 13, "\r")
        await self.loaded()
        return str(await self.value("document.title"))


@contextmanager
def chromium(width: int, height: int) -> Iterator[Callable[[Callable[[Page], Any]], Any]]:
    """A headless Chromium showing a ``width`` x ``height`` phone-like screen; yields a
    function that runs an ``async def scenario(page)`` in it."""
    # Chromium's own child processes may still write to the profile as it goes: the
    # whole process group is killed, and what is left of the folder is no failure.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        process = subprocess.Popen(
            [browser.chromium(), *browser.FLAGS, f"--user-data-dir={profile}",
             "--remote-debugging-port=0", "about:blank"],
            stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        try:
            assert process.stderr is not None
            for line in process.stderr:  # "DevTools listening on ws://127.0.0.1:PORT/..."
                found = re.search(r"DevTools listening on ws://([^/]+)/", line)
                if found:
                    break
            else:
                raise RuntimeError("Chromium did not start its DevTools server")
            targets = httpx.get(f"http://{found.group(1)}/json", timeout=30).json()
            tab = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")

            async def drive(scenario: Callable[[Page], Awaitable[Any]]) -> Any:
                async with websockets.connect(tab, max_size=None) as ws:
                    page = Page(ws)
                    await page.send(
                        "Emulation.setDeviceMetricsOverride",
                        width=width, height=height, deviceScaleFactor=2, mobile=True,
                    )  # fmt: skip
                    return await scenario(page)

            yield lambda scenario: asyncio.run(drive(scenario))
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_the_pages_fit_a_phone_with_a_long_address_and_category(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """On a 320 px wide phone, an address or a category name longer than the line made
    the page wider than the screen (335 px here): zoomed out, or scrolled sideways."""
    token = _token_for(redis_client, LONG_ADDRESS, LONG_CATEGORY, "news")
    pages = [f"{api_server.url}/preferences/{token}", f"{api_server.url}/u/{token}"]

    async def widths(page: Page) -> list[tuple[int, int]]:
        found = []
        for url in pages:
            await page.open(url)
            assert LONG_ADDRESS in await page.value("document.body.innerText")
            found.append(
                (
                    await page.value("document.documentElement.scrollWidth"),
                    await page.value("document.documentElement.clientWidth"),
                )
            )
        return found

    with chromium(320, 640) as run:
        measured = run(widths)
    assert measured == [(320, 320), (320, 320)], measured


def test_a_keyboard_user_is_told_what_happened_in_the_title(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Keyboard only, no script on the page: Tab to a switch, Space turns it off, Tab to
    "Save choices", Enter; then the unsubscribe button. The title, what a screen reader
    reads first on the new page, said "Email preferences" / "Unsubscribe" whatever had
    happened; it now says the outcome. Each switch is named by its (escaped) category."""
    email = "user0@example.com"
    token = _token_for(redis_client, email, ODD_CATEGORY, "news")

    async def scenario(page: Page) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        await page.open(f"{api_server.url}/preferences/{token}")
        seen["before"] = await page.value("document.title")
        await page.tab_to('input[type="checkbox"]')
        seen["first switch"] = await page.value("document.activeElement.labels[0].innerText")
        await page.press(" ", 32, " ")
        seen["saved"] = await page.press_button("#save")
        await page.open(f"{api_server.url}/u/{token}")
        seen["confirm"] = await page.value("document.title")
        seen["unsubscribed"] = await page.press_button("#unsubscribe")
        await page.open(f"{api_server.url}/preferences/{token}")
        seen["center after"] = await page.value("document.title")
        return seen

    with chromium(800, 600) as run:
        seen = run(scenario)
    assert seen == {
        "before": "Email preferences",
        "first switch": ODD_CATEGORY,  # the text as written, not markup
        "saved": "Your choices are saved: Email preferences",
        "confirm": "Unsubscribe?",
        "unsubscribed": "You are unsubscribed",
        "center after": "You are unsubscribed from all emails: Email preferences",
    }
    assert preferences.opted_out(email, redis_client) == {ODD_CATEGORY}
    assert suppressions.get(email, client=redis_client) is not None
    assert len(_unsubscribed_events(redis_client)) == 1


def test_a_category_new_since_the_page_was_loaded_is_left_alone(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """The page shows "news"; while it is open a campaign goes out in "offers"; the
    person turns "news" off and saves. "offers" was opted out too: the form's missing
    switch read as "off", for a category the person never saw."""
    email = "user0@example.com"
    token = _token_for(redis_client, email, "news")

    async def scenario(page: Page) -> str:
        await page.open(f"{api_server.url}/preferences/{token}")
        # Sent while the page is open (in a thread: the sending runs its own loop).
        await asyncio.to_thread(_token_for, redis_client, email, "offers")
        await page.tab_to('input[type="checkbox"]')
        await page.press(" ", 32, " ")
        return await page.press_button("#save")

    with chromium(800, 600) as run:
        assert run(scenario) == "Your choices are saved: Email preferences"
    assert preferences.opted_out(email, redis_client) == {"news"}
