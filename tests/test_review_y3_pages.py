"""Review Y3: the recipient pages as a recipient meets them: link scanners posting every
URL."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import redis

from dispatch import preferences, store, suppressions
from tests.api_server import ApiServer
from tests.helpers import run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.test_pages import FAST


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
