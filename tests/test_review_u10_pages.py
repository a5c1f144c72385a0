"""Review U10: the recipient pages as the public web meets them."""

from __future__ import annotations

import httpx
import redis

from dispatch.unsubscribe import make_token
from tests.api_server import ApiServer
from tests.helpers import smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.test_pages import _campaign


def test_no_recipient_page_is_indexed_by_a_search_engine(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A newsletter forwarded to a mailing list lands in its public archive with its
    links; a crawler follows them (GET, never POST: nobody is unsubscribed) and indexed
    "Unsubscribe? <the person's address> will no longer receive emails": nothing told it
    not to. Every page, the redirect to a custom center and the invalid-link page too."""
    token = make_token("c1", 0, "someone@example.com", "news")
    center = {"preference_center": "custom", "preference_center_url": "https://c.example/"}
    with SmtpTestServer() as smtp:  # a campaign sent with a custom center
        smtp_provider(redis_client, smtp.port, **center)
        _campaign(redis_client, smtp, 1, "news")
        custom = httpx.URL(smtp.messages[0].message["List-Unsubscribe"].strip("<>")).path
    with httpx.Client(base_url=api_server.url, timeout=30) as http:
        answers = {
            "confirmation": http.get(f"/u/{token}"),
            "confirmation HEAD": http.head(f"/u/{token}"),
            "preferences": http.get(f"/preferences/{token}"),
            "invalid link": http.get("/u/not-a-token"),
            "redirect": http.get(custom),
        }
    assert answers["redirect"].status_code == 303
    assert answers["invalid link"].status_code == 404
    for name, answer in answers.items():
        robots = answer.headers.get("x-robots-tag", "")
        assert "noindex" in robots and "nofollow" in robots, (name, answer.headers)
