"""Review Y12: a person who unsubscribed from everything can subscribe again from the
preference center, and only from their own unsubscribe.

"Unsubscribe from all" (or a mail client's one-click) had no way back: the page said "You
are unsubscribed from all emails" and offered nothing; only an operator's DELETE of the
suppression entry undid it, and that published nothing, so a consumer of
``dispatch:events`` kept the address unsubscribed.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
import redis

from dispatch import campaign_reads, effects, preferences, store, suppressions
from dispatch.unsubscribe import read_token
from tests.api_server import ApiServer
from tests.api_support import api_client, covers
from tests.callback_support import callback_path
from tests.helpers import smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.test_pages import _campaign, _links
from tests.test_review_y3_pages import Page, _token_for, chromium

EMAIL = "user0@example.com"
CHANNEL = ("Channel Unsubscribed", "Channel Subscribed")


def _channel_events(r: redis.Redis) -> list[dict[str, Any]]:
    entries = (orjson.loads(e[1]["json"]) for e in r.xrange(store.EVENTS_STREAM))
    return [e for e in entries if e["event"] in CHANNEL]


def _sent_campaign(r: redis.Redis, category: str = "news") -> tuple[str, str, str]:
    """A campaign of two sent with the system center: its id, the token and meta of
    ``EMAIL``'s message."""
    with SmtpTestServer() as smtp:
        smtp_provider(r, smtp.port, preference_center="system")
        campaign_id = _campaign(r, smtp, 2, category)
        links = _links(smtp, EMAIL)
    return campaign_id, httpx.URL(links["unsubscribe"]).path.rsplit("/", 1)[1], links["meta"]


def _receives(r: redis.Redis, category: str) -> bool:
    """Whether a new campaign in ``category`` is sent to ``EMAIL``."""
    with SmtpTestServer() as smtp:
        smtp_provider(r, smtp.port, preference_center="system")
        _campaign(r, smtp, 2, category)
        return any(m.rcpt_tos == [EMAIL] for m in smtp.messages)


def test_a_person_subscribes_again_in_a_real_browser(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Keyboard only, in Chromium: the confirmation page's Unsubscribe, then its "Subscribe
    again" link, then the center's button. Each page's title says where the person is."""
    token = _token_for(redis_client, EMAIL, "offers", "news")

    async def scenario(page: Page) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        await page.open(f"{api_server.url}/u/{token}")
        seen["unsubscribed"] = await page.press_button("#unsubscribe")
        seen["says"] = await page.value("document.querySelector('main').innerText")
        seen["center"] = await page.press_button("#way-back")  # a link: Tab, Enter
        seen["subscribed"] = await page.press_button("#resubscribe")
        seen["switches"] = await page.value(
            "[...document.querySelectorAll('input[type=checkbox]')]"
            ".map(box => [box.labels[0].innerText.trim(), box.checked])"
        )
        return seen

    with chromium(800, 600) as run:
        seen = run(scenario)
    assert seen["unsubscribed"] == "You are unsubscribed"
    assert "will not receive emails from us any more" in seen["says"]
    assert seen["center"] == "You are unsubscribed from all emails: Email preferences"
    assert seen["subscribed"] == "You are subscribed again: Email preferences"
    assert seen["switches"] == [["news", True], ["offers", True]]
    assert suppressions.get(EMAIL, client=redis_client) is None
    assert [e["event"] for e in _channel_events(redis_client)] == list(CHANNEL)
    assert _receives(redis_client, "news")


@covers("POST /preferences/{token}", "GET /preferences/{token}")
@pytest.mark.parametrize("how", ["one-click", "unsubscribe-all"])
def test_resubscribe_lifts_the_persons_own_unsubscribe_and_publishes_it(
    api_server: ApiServer, redis_client: redis.Redis, how: str
) -> None:
    campaign_id, token, meta = _sent_campaign(redis_client)
    path = f"/preferences/{token}"
    with api_client(api_server, token=None) as http:
        http.post(path, data={"category": "offers", "action": "save"})  # news off
        if how == "one-click":
            gone = http.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click")
        else:
            gone = http.post(path, data={"action": "unsubscribe-all"})
        assert gone.status_code == 200
        # What a link scanner does changes nothing: a GET, a HEAD, a post of no form.
        page = http.get(path)
        http.head(path)
        http.post(path)
        assert suppressions.get(EMAIL, client=redis_client) is not None
        assert 'value="resubscribe"' in page.text and "Subscribe again" in page.text
        back = http.post(path, data={"action": "resubscribe"})
        again = http.post(path, data={"action": "resubscribe"})  # the form sent twice
    for answer in (back, again):
        assert answer.status_code == 200
        assert "<title>You are subscribed again: Email preferences</title>" in answer.text
        assert 'type="checkbox"' in answer.text
    assert suppressions.get(EMAIL, client=redis_client) is None
    # The categories switched off before stay off.
    assert preferences.opted_out(EMAIL, redis_client) == {"news"}
    events = _channel_events(redis_client)
    assert [e["event"] for e in events] == list(CHANNEL)  # once, not twice
    subscribed = events[1]
    assert (subscribed["email"], subscribed["campaign_id"], subscribed["meta"]) == (
        EMAIL,
        campaign_id,
        meta,
    )
    assert subscribed["provider"] == "local"
    assert subscribed["properties"] == {"Type": "Preference center"}
    # That unsubscribe happened: the campaign's counter keeps it.
    assert campaign_reads.get_counters(campaign_id, redis_client)["unsubscribed"] == 1
    assert _receives(redis_client, "offers") and not _receives(redis_client, "news")


def _apply_callbacks(r: redis.Redis) -> None:
    """Apply what the callback gateway accepted, as the ``events`` worker would."""
    for batch_id in r.hkeys(store.CALLBACK_INBOX_HASH):
        effects.apply_batch(str(batch_id), client=r)


@covers("POST /preferences/{token}", "GET /u/{token}")
@pytest.mark.parametrize(
    "entry", ["hard_bounce", "spam", "provider unsubscribe", "operator", "operator unsubscribed"]
)
def test_resubscribe_never_lifts_a_bounce_a_complaint_or_an_operators_entry(
    api_server: ApiServer, redis_client: redis.Redis, entry: str
) -> None:
    """Only the person's own unsubscribe, by one of our links, is theirs to undo: not a
    bounce or complaint (the evidence that sending harms), not the ESP's own unsubscribe
    report (SendGrid's ``dropped`` maps to one, and the ESP keeps its own list), not an
    operator's entry, even one whose reason says "unsubscribed" (asked by phone)."""
    _, token, meta = _sent_campaign(redis_client)
    with api_client(api_server) as http:
        if entry.startswith("operator"):
            reason = "unsubscribed" if entry.endswith("unsubscribed") else "manual"
            put = http.put(f"/v1/suppressions/{EMAIL}", json={"reason": reason})
            assert put.status_code == 201, put.text
        else:
            kind = "unsubscribed" if entry == "provider unsubscribe" else entry
            event = {"version": "v2", "type": kind, "email": EMAIL, "meta": meta,
                     "description": "reported"}  # fmt: skip
            answer = http.post(callback_path(redis_client, "local"), json=event)
            assert answer.status_code == 200, answer.text
            _apply_callbacks(redis_client)
    before = suppressions.get(EMAIL, client=redis_client)
    assert before is not None
    path = f"/preferences/{token}"
    with api_client(api_server, token=None) as http:
        page = http.get(path)
        refused = http.post(path, data={"action": "resubscribe"})
        confirmation = http.get(f"/u/{token}")
    for answer in (page, refused):
        assert answer.status_code == 200
        assert "<title>You are unsubscribed from all emails: Email preferences</title>" in (
            answer.text
        )
        assert 'value="resubscribe"' not in answer.text
        assert "cannot be subscribed again from this page" in answer.text
    assert "You are unsubscribed" in confirmation.text and "Subscribe again" not in (
        confirmation.text
    )
    assert suppressions.get(EMAIL, client=redis_client) == before
    assert "Channel Subscribed" not in [e["event"] for e in _channel_events(redis_client)]


@covers("POST /u/{token}", "POST /preferences/{token}")
def test_unsubscribing_again_after_subscribing_again_is_published_again(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """The same link's one-click after a re-subscribe: the address is suppressed again
    and ``Channel Unsubscribed`` published again. That message's unsubscribe was
    remembered (applied once), so its repeat suppressed silently: a consumer that had
    seen "Channel Subscribed" last kept the address subscribed."""
    campaign_id, token, meta = _sent_campaign(redis_client)
    with api_client(api_server, token=None) as http:
        http.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click")
        http.post(f"/preferences/{token}", data={"action": "resubscribe"})
        http.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click")
        http.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click")  # a mere repeat
    events = _channel_events(redis_client)
    assert [e["event"] for e in events] == [*CHANNEL, "Channel Unsubscribed"]
    entry = suppressions.get(EMAIL, client=redis_client)
    assert entry is not None and entry["source"] == "callback:local:list-unsubscribe"
    assert (entry["campaign_id"], entry["meta"]) == (campaign_id, meta)
    assert events[2]["meta"] == meta and events[2]["properties"]["Type"] == (
        "One-click unsubscribe"
    )
    assert campaign_reads.get_counters(campaign_id, redis_client)["unsubscribed"] == 1


def test_an_entry_changed_since_it_was_read_is_not_lifted(redis_client: redis.Redis) -> None:
    """The re-subscribe lifts the entry it checked, not one an operator put meanwhile."""
    _, token, _ = _sent_campaign(redis_client)
    parsed = read_token(token)
    preferences.unsubscribe(parsed, "One-click unsubscribe", redis_client)
    own = redis_client.hget(store.SUPPRESSIONS_HASH, EMAIL)
    assert own is not None and preferences.own_unsubscribe(orjson.loads(own))

    class Stale(redis.Redis):  # reads the entry as it was, after an operator replaced it
        def hget(self, name: Any, key: Any) -> Any:
            if name == store.SUPPRESSIONS_HASH:
                redis_client.hset(name, key, orjson.dumps({"reason": "manual"}))
                return own
            return super().hget(name, key)

    stale = Stale(connection_pool=redis_client.connection_pool)
    assert preferences.resubscribe(parsed, stale) is False
    assert suppressions.get(EMAIL, client=redis_client) == {"reason": "manual"}
    assert "Channel Subscribed" not in [e["event"] for e in _channel_events(redis_client)]
