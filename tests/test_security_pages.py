"""The recipient pages' response headers, over HTTP on the real app: a page that names a
person and carries their token is not cached, framed, or sent on as a Referer."""

from __future__ import annotations

import httpx
import pytest
import redis

from dispatch.unsubscribe import make_token
from tests.api_server import ApiServer
from tests.helpers import smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.test_pages import _campaign, _links


def _assert_private(answer: httpx.Response) -> None:
    headers = answer.headers
    assert headers.get("cache-control") == "no-store", (answer.request.url, headers)
    assert headers.get("x-frame-options") == "DENY"
    assert headers.get("x-content-type-options") == "nosniff"
    assert headers.get("referrer-policy") == "no-referrer"
    policy = headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
    assert "script-src" not in policy  # no script allowed at all (default-src 'none')


@pytest.mark.parametrize("valid", [True, False])
def test_every_recipient_page_is_private_and_not_framed(
    api_server: ApiServer, redis_client: redis.Redis, valid: bool
) -> None:
    token = make_token("c1", 0, "a@example.com", "news") if valid else "not-a-token"
    with httpx.Client(base_url=api_server.url, timeout=30) as http:
        answers = [
            http.get(f"/u/{token}"),
            http.head(f"/u/{token}"),
            http.get(f"/preferences/{token}"),
            http.post(f"/preferences/{token}", data={"category": "news", "action": "save"}),
            http.post(f"/u/{token}"),  # last: it unsubscribes
        ]
    for answer in answers:
        assert answer.status_code == (200 if valid else 404), answer.text
        _assert_private(answer)


def test_the_redirect_to_a_custom_center_is_private_too(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    with SmtpTestServer() as smtp:
        smtp_provider(
            redis_client,
            smtp.port,
            preference_center="custom",
            preference_center_url="https://prefs.acme.example/center",
        )
        _campaign(redis_client, smtp, 1, "news")
        links = _links(smtp, "user0@example.com")
    path = httpx.URL(links["unsubscribe"]).path
    with httpx.Client(base_url=api_server.url, timeout=30) as http:
        answer = http.get(path)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("https://prefs.acme.example/center?token=")
    _assert_private(answer)
