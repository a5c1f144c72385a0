"""Review U10: the recipient pages as the public web meets them."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis

from dispatch.unsubscribe import make_token
from tests.api_server import ApiServer
from tests.helpers import smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.test_pages import _campaign
from tests.test_review_y3_pages import Page, _token_for, chromium

# The two buttons' boxes, and the gap between them (the larger of the horizontal and
# vertical distance between their edges: side by side or one above the other).
_BUTTONS_GAP = """(() => {
  const a = document.querySelector('#save').getBoundingClientRect();
  const b = document.querySelector('#unsubscribe-all').getBoundingClientRect();
  return Math.max(b.left - a.right, b.top - a.bottom);
})()"""


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


@pytest.mark.parametrize("width", [320, 800])
def test_unsubscribe_from_all_is_not_a_near_miss_of_save(
    api_server: ApiServer, redis_client: redis.Redis, width: int
) -> None:
    """On a phone the two buttons wrapped one right above the other, their edges
    touching (0 px apart): a tap a little low on "Save choices" unsubscribed the person
    from everything, with no confirmation and no way back from the page. On a wide
    screen they were one space apart. Now at least 8 px separate them either way."""
    token = _token_for(redis_client, "user0@example.com", "news")

    async def gap(page: Page) -> Any:
        await page.open(f"{api_server.url}/preferences/{token}")
        return await page.value(_BUTTONS_GAP)

    with chromium(width, 640) as run:
        measured = run(gap)
    assert measured >= 8, measured
