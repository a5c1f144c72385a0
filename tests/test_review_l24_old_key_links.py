"""Review L24: after DISPATCH_SECRET_KEY is changed (README: it leaked), links that only a
key in DISPATCH_PREVIOUS_SECRET_KEYS reads keep opting people out, as the law wants for
months, but whoever holds the leaked key can make such a link for any address: it used to
subscribe people again and switch their categories back on, where the README said forged
links "unsubscribe only". The real app over HTTP, a real Redis, real SMTP."""

from __future__ import annotations

import re

import httpx
import pytest
import redis

from dispatch import preferences, suppressions
from dispatch.unsubscribe import make_token, read_token
from tests.api_server import ApiServer
from tests.helpers import legacy_token, use_keys
from tests.test_review_y3_pages import _token_for

OLD_KEY = "l24-old-key-" + "o" * 32
NEW_KEY = "l24-new-key-" + "n" * 32
EMAIL = "user0@example.com"


def _checkboxes(page: str) -> dict[str, str]:
    """Each switch's category and its state: "checked", "disabled" or ""."""
    found = re.findall(r'name="category" value="([^"]+)"\s*(checked|disabled)?>', page)
    return dict(found)


def test_a_link_only_an_old_key_reads_opts_out_but_never_in(
    api_server: ApiServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_keys(monkeypatch, OLD_KEY, None)
    old = _token_for(redis_client, EMAIL, "news", "offers")  # mail delivered before
    parsed = read_token(old)
    old_legacy = legacy_token(parsed.campaign_id, parsed.seq, EMAIL, parsed.category)
    use_keys(monkeypatch, NEW_KEY, OLD_KEY)  # the key changed, the old one listed
    new = make_token(parsed.campaign_id, parsed.seq, EMAIL, parsed.category)

    with httpx.Client(base_url=api_server.url, timeout=30) as http:
        # Opting out works as before: one-click, then the center.
        done = http.post(f"/u/{old}", content=b"List-Unsubscribe=One-Click")
        assert done.status_code == 200 and "You are unsubscribed" in done.text
        assert "Subscribe again" not in done.text
        page = http.get(f"/preferences/{old}").text
        assert 'id="resubscribe"' not in page and "older email" in page
        for token in (old, old_legacy):  # never subscribes again
            answer = http.post(f"/preferences/{token}", data={"action": "resubscribe"})
            assert answer.status_code == 200 and "You are subscribed again" not in answer.text
            assert suppressions.get(EMAIL, client=redis_client) is not None

        # The person subscribed again with a link of the current key (a newer email).
        again = http.post(f"/preferences/{new}", data={"action": "resubscribe"})
        assert "You are subscribed again" in again.text
        assert suppressions.get(EMAIL, client=redis_client) is None

        # The old link switches a category off, never back on.
        form = {"action": "save", "shown": ["news", "offers"]}
        off = http.post(f"/preferences/{old}", data={**form, "category": "offers"})
        assert "Your choices are saved" in off.text
        assert preferences.opted_out(EMAIL, redis_client) == {"news"}
        assert _checkboxes(off.text) == {"news": "disabled", "offers": "checked"}
        http.post(f"/preferences/{old}", data={**form, "category": ["news", "offers"]})
        assert preferences.opted_out(EMAIL, redis_client) == {"news"}
        http.post(f"/preferences/{new}", data={**form, "category": ["news", "offers"]})
        assert preferences.opted_out(EMAIL, redis_client) == set()
        assert _checkboxes(http.get(f"/preferences/{old}").text) == {
            "news": "checked",
            "offers": "checked",
        }
    assert not read_token(old).current_key and not read_token(old_legacy).current_key
    assert read_token(new).current_key
