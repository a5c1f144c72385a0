"""Unsubscribe tokens are opaque (sealed) and authenticated; tokens of mail sent before
they were sealed still work; a custom preference center resolves them through /v1."""

from __future__ import annotations

import base64
import re
from urllib.parse import parse_qs, urlsplit

import pytest
import redis

from dispatch import campaign_reads, suppressions
from dispatch.settings import Settings, get_settings
from dispatch.unsubscribe import InvalidTokenError, make_token, read_token
from tests.api_server import ApiServer
from tests.api_support import api_client, covers
from tests.helpers import legacy_token, recipients, run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer

FAST = Settings(retry_base_seconds=0.05)
# Written by make_token before tokens were sealed, under the tests' DISPATCH_SECRET_KEY
# ("test-secret-key"): what a message sent then carries, byte for byte.
OLD_TOKEN = (
    "WyJsZWdhY3ktMSIsMCwidXNlcjBAZXhhbXBsZS5jb20iLCJuZXdzIl0."
    "eyxIxqWWodcaDZsjzoapsXBTxbjO1QmUZGQb8XO0b1k"
)
RESOLVE = "/v1/unsubscribe-tokens/{}"


def _send(r: redis.Redis, center: str = "system", **provider: str) -> tuple[str, str, str]:
    """One campaign ("news") to user0 and user1 through a real SMTP server: its id, user0's
    List-Unsubscribe URL and the message's HTML."""
    with SmtpTestServer() as smtp:
        smtp_provider(r, smtp.port, preference_center=center, **provider)
        body = {
            "provider": "local",
            "subject": "s",
            "category": "news",
            "recipients": recipients(2),
            "html": '<a href="{{ unsubscribe_url }}">u</a> <a href="{{ preferences_url }}">p</a>',
        }
        cid = run_inline(r, body, FAST)[0]
        message = next(m.message for m in smtp.messages if m.rcpt_tos == ["user0@example.com"])
    match = re.fullmatch(r"<(.+)>", message["List-Unsubscribe"])
    assert match
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    return cid, match.group(1), html


def _token_of(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[1]


def test_a_sent_token_names_no_one_to_whoever_holds_the_link(redis_client: redis.Redis) -> None:
    """Neither the address nor the campaign or category can be read out of the links of a
    sent message: not in the token, not in its base64 decoding (they were, as JSON)."""
    cid, url, html = _send(redis_client)
    token = _token_of(url)
    decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    for secret in ("user0@example.com", "user0", "example.com", cid, "news"):
        assert secret not in token and secret.encode() not in decoded
        assert secret.lower() not in token.lower()
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)  # URL-safe, no padding, no dot
    assert f"/preferences/{token}" in html and f"/u/{token}" in html
    # Authenticated and deterministic: it reads back, and the same message makes the same.
    assert read_token(token).email == "user0@example.com"
    assert make_token(cid, 0, "user0@example.com", "news") == token
    assert make_token(cid, 1, "user0@example.com", "news") != token


def test_the_helper_makes_tokens_as_the_old_code_did(monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setenv("DISPATCH_SECRET_KEY", "test-secret-key")
        get_settings.cache_clear()
        assert legacy_token("legacy-1", 0, "user0@example.com", "news") == OLD_TOKEN
        assert read_token(OLD_TOKEN).campaign_id == "legacy-1"
    get_settings.cache_clear()


@covers("POST /u/{token}")
def test_a_token_of_mail_sent_before_still_unsubscribes(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """The old signed format (what make_token wrote until tokens were sealed) is read:
    one-click unsubscribe, the campaign's counter and the message's meta, as before."""
    cid, url, _ = _send(redis_client)
    old = legacy_token(cid, 0, "user0@example.com", "news")
    assert "." in old and old != _token_of(url)
    with api_client(api_server, token=None) as http:
        page = http.get(f"/u/{old}")
        done = http.post(f"/u/{old}", content=b"List-Unsubscribe=One-Click")
        prefs = http.get(f"/preferences/{old}")
        again = http.post(f"/u/{_token_of(url)}")  # the new token of the same message
    assert page.status_code == 200 and "Unsubscribe?" in page.text
    assert done.status_code == 200 and "You are unsubscribed" in done.text
    assert prefs.status_code == 200 and again.status_code == 200
    entry = suppressions.get("user0@example.com", client=redis_client)
    assert entry is not None and entry["reason"] == "unsubscribed"
    assert campaign_reads.get_counters(cid, redis_client)["unsubscribed"] == 1  # one message, once


def test_a_token_sealed_with_another_key_is_not_valid(
    api_server: ApiServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as m:
        m.setenv("DISPATCH_SECRET_KEY", "another-key")
        get_settings.cache_clear()
        foreign = make_token("c1", 0, "a@example.com", "news")
    get_settings.cache_clear()
    assert foreign != make_token("c1", 0, "a@example.com", "news")
    with pytest.raises(InvalidTokenError):
        read_token(foreign)
    with api_client(api_server, token=None) as http:
        answers = [
            http.get(f"/u/{foreign}"),
            http.post(f"/u/{foreign}"),
            http.post(f"/preferences/{foreign}", content=b"action=unsubscribe-all"),
        ]
    for answer in answers:
        assert answer.status_code == 404 and "This link is not valid" in answer.text
    assert suppressions.get("a@example.com", client=redis_client) is None


def test_a_flipped_bit_anywhere_is_refused() -> None:
    token = make_token("c1", 7, "a@example.com", "news")
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for i in range(len(raw)):
        altered = bytearray(raw)
        altered[i] ^= 1
        text = base64.urlsafe_b64encode(bytes(altered)).rstrip(b"=").decode()
        with pytest.raises(InvalidTokenError):
            read_token(text)
    for cut in (token[:-1], token[:10], "", token + "A"):
        with pytest.raises(InvalidTokenError):
            read_token(cut)


@covers("GET /v1/unsubscribe-tokens/{token}")
def test_the_resolve_api_names_the_recipient_and_their_choices(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    cid, url, _ = _send(redis_client)
    token = _token_of(url)
    with api_client(api_server) as http:
        before = http.get(RESOLVE.format(token))
        assert before.status_code == 200, before.text
        http.post(f"/preferences/{token}", content=b"action=save")  # every switch off
        opted = http.get(RESOLVE.format(token)).json()
        http.post(f"/u/{token}")
        after = http.get(RESOLVE.format(token)).json()
        old = http.get(RESOLVE.format(legacy_token(cid, 1, "user1@example.com", "news")))
    assert before.json() == {
        "email": "user0@example.com",
        "campaign_id": cid,
        "seq": 0,
        "category": "news",
        "suppression": None,
        "categories": ["news"],
        "opted_out": [],
    }
    assert opted["opted_out"] == ["news"] and opted["suppression"] is None
    assert after["suppression"]["reason"] == "unsubscribed"
    assert old.status_code == 200 and old.json()["email"] == "user1@example.com"
    assert old.json()["seq"] == 1 and old.json()["suppression"] is None


def test_the_resolve_api_refuses_without_a_bearer_token_and_bad_tokens(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    token = make_token("c1", 0, "a@example.com", "news")
    with api_client(api_server, token=None) as http:
        anonymous = http.get(RESOLVE.format(token))
        wrong = http.get(RESOLVE.format(token), headers={"Authorization": "Bearer nope"})
    with api_client(api_server) as http:
        bad = [
            http.get(RESOLVE.format(t))
            for t in ("garbage", token[:-2], token[:4] + "!" + token[4:], token + ".AAAA")
        ]
        too_long = http.get(RESOLVE.format("A" * 5000))
    for refused in (anonymous, wrong):
        assert refused.status_code == 401 and refused.json()["field"] == "authorization"
        assert "a@example.com" not in refused.text
    for answer in bad:
        assert answer.status_code == 404, answer.text
        body = answer.json()
        assert body["field"] == "token" and "not a token this service issued" in body["detail"]
    assert too_long.status_code == 422 and too_long.json()["field"] == "token"


def test_a_custom_center_resolves_the_token_it_is_sent_and_unsubscribes(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """The whole custom-center flow: the message's preferences link and the /u/ redirect
    carry the token, the center resolves it with its bearer token, then posts /u/."""
    center = "https://prefs.acme.example/center?lang=en"
    cid, url, html = _send(redis_client, "custom", preference_center_url=center)
    token = _token_of(url)
    with api_client(api_server, token=None) as http:
        redirect = http.get(f"/u/{token}")
    assert redirect.status_code == 303
    location = redirect.headers["location"]
    assert location.startswith(center + "&token=") and f"{center}&amp;token={token}" in html
    given = parse_qs(urlsplit(location).query)["token"][0]
    assert "user0" not in location and "example.com" not in given
    with api_client(api_server) as center_backend:
        resolved = center_backend.get(RESOLVE.format(given))
        assert resolved.status_code == 200, resolved.text
        assert (resolved.json()["email"], resolved.json()["campaign_id"]) == (
            "user0@example.com",
            cid,
        )
        done = center_backend.post(f"/u/{given}", content=b"List-Unsubscribe=One-Click")
        after = center_backend.get(RESOLVE.format(given)).json()
    assert done.status_code == 200 and after["suppression"]["reason"] == "unsubscribed"
    assert campaign_reads.get_counters(cid, redis_client)["unsubscribed"] == 1
