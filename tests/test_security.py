"""Security checks over HTTP on the real app and a real Redis: bearer tokens, signed
recipient tokens, what the recipient pages show and how much of a body they read."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from dispatch import store, suppressions
from dispatch.redis_server import RedisServer
from dispatch.unsubscribe import make_token
from tests.api_server import ApiServer
from tests.api_support import API_TOKEN, api_client, covers
from tests.helpers import legacy_token
from tests.smtp_server import free_port


def _raw_client(server: ApiServer) -> httpx.Client:
    """A client without the recording hook or a default token (one connection per test)."""
    return httpx.Client(base_url=server.url, timeout=30)


@covers("GET /v1/campaigns")
def test_a_non_ascii_bearer_token_is_refused_not_a_server_error(api_server: ApiServer) -> None:
    # Starlette decodes headers as Latin-1; hmac.compare_digest refuses such str.
    with api_client(api_server, token=None) as http:
        answer = http.get("/v1/campaigns", headers={"Authorization": b"Bearer t\xe9st-token"})
        empty = http.get("/v1/campaigns", headers={"Authorization": "Bearer"})
        spaced = http.get("/v1/campaigns", headers={"Authorization": "Bearer  test-token"})
        lower = http.get("/v1/campaigns", headers={"Authorization": "bearer test-token"})
    assert answer.status_code == 401, answer.text
    assert answer.json()["field"] == "authorization"
    assert empty.status_code == 401 and spaced.status_code == 401
    assert lower.status_code == 200  # the scheme is case-insensitive (RFC 9110 §11.1)


def test_every_v1_route_but_callbacks_needs_the_bearer_token(api_server: ApiServer) -> None:
    with _raw_client(api_server) as http:
        spec = http.get("/openapi.json").json()
        refused, open_routes = [], []
        for path, operations in spec["paths"].items():
            if not path.startswith("/v1/") or path.startswith("/v1/callbacks/"):
                continue
            for method in operations:
                url = path.replace("{", "x").replace("}", "")
                status = http.request(method.upper(), url, json={}).status_code
                (refused if status == 401 else open_routes).append(f"{method} {path}")
    assert refused and not open_routes


def test_an_unsubscribe_link_with_a_non_ascii_signature_is_not_valid(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    body = legacy_token("c1", 0, "a@example.com", "news").partition(".")[0]
    sealed = make_token("c1", 0, "a@example.com", "news")
    with _raw_client(api_server) as http:
        for token in (f"{body}.%C3%A9", f"{sealed}%C3%A9", f"{sealed[:-1]}%C3%A9"):
            page = http.get(f"/u/{token}")
            post = http.post(f"/u/{token}")
            prefs = http.get(f"/preferences/{token}")
            assert (page.status_code, post.status_code, prefs.status_code) == (404, 404, 404)
    assert suppressions.get("a@example.com", client=redis_client) is None


def _altered_spellings(text: str) -> list[str]:
    """Other texts for the base64url ``text`` that a lax decoder reads as the same bytes:
    characters outside the alphabet (which the decoder skips), padding, and a different
    last character whose low bits the decoder drops."""
    spellings = [f"{text[:4]}%22%3E%3C{text[4:]}", f"{text[:4]}!{text[4:]}", f"{text}="]
    if len(text) % 4:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        for other in alphabet:
            candidate = text[:-1] + other
            if candidate != text and _decodes_to(candidate, text):
                spellings.append(candidate)
                break
    return spellings


def test_a_token_with_characters_inserted_is_not_valid(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    sealed = make_token("c1", 0, "a@example.com", "news")
    legacy = legacy_token("c1", 0, "a@example.com", "news")
    body, _, signature = legacy.partition(".")
    tampered = _altered_spellings(sealed)
    tampered += [f"{b}.{signature}" for b in _altered_spellings(body)]
    tampered += [f"{body}.{signature}="]
    with _raw_client(api_server) as http:
        assert http.get(f"/u/{sealed}").status_code == 200
        assert http.get(f"/u/{legacy}").status_code == 200
        answers = {t: http.post(f"/u/{t}").status_code for t in tampered}
    assert set(answers.values()) == {404}, answers
    assert suppressions.get("a@example.com", client=redis_client) is None


def _decodes_to(candidate: str, body: str) -> bool:
    def decode(text: str) -> bytes:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

    return decode(candidate) == decode(body)


def test_a_token_for_one_address_cannot_be_turned_into_another(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    mine = legacy_token("c1", 0, "me@example.com", "news")
    theirs = legacy_token("c2", 5, "victim@example.com", "news")
    spliced = [f"{theirs.partition('.')[0]}.{mine.partition('.')[2]}"]
    # Sealed: the SIV (the tag, 16 bytes: about 22 characters) comes first, then the
    # ciphertext.
    mine = make_token("c1", 0, "me@example.com", "news")
    theirs = make_token("c2", 5, "victim@example.com", "news")
    spliced += [mine[:22] + theirs[22:], theirs[:22] + mine[22:]]
    with _raw_client(api_server) as http:
        for token in spliced:
            assert http.post(f"/u/{token}").status_code == 404
            assert http.post(f"/preferences/{token}", content=b"").status_code == 404
    assert suppressions.get("victim@example.com", client=redis_client) is None


@pytest.mark.parametrize(
    "email",
    ['"<script>alert(1)</script>"@example.com', 'a@example.com"><img src=x onerror=alert(1)>'],
)
def test_pages_escape_the_address(
    api_server: ApiServer, redis_client: redis.Redis, email: str
) -> None:
    token = make_token("c1", 0, email, "news")
    with _raw_client(api_server) as http:
        pages = [http.get(f"/u/{token}"), http.get(f"/preferences/{token}")]
    for page in pages:
        assert page.status_code == 200
        assert "<script>" not in page.text and "<img" not in page.text
        assert "&lt;" in page.text


def test_the_preference_center_escapes_category_names(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    redis_client.sadd(store.CATEGORIES_SET, '"><script>alert(1)</script>', "news")
    token = make_token("c1", 0, "a@example.com", "news")
    with _raw_client(api_server) as http:
        page = http.get(f"/preferences/{token}")
    assert page.status_code == 200
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text


def _raw_post(server: ApiServer, path: str, headers: str, body: bytes = b"") -> bytes:
    """The status line of a POST sent over a plain socket (to declare a length not sent)."""
    return _raw_answer(server, path, headers, body).partition(b"\r\n")[0]


def _raw_answer(server: ApiServer, path: str, headers: str, body: bytes = b"") -> bytes:
    """The whole answer to a POST sent over a plain socket (the server closes after it)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode() + body)
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
                head, _, rest = answer.partition(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: (\d+)", head)
                if length and len(rest) >= int(length[1]):
                    break
        except TimeoutError:
            return answer or b"(no answer: the server is still reading the body)"
        return answer


def test_the_preference_form_is_refused_by_its_declared_size(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    # Declared 1 GB, nothing sent: the page must answer without reading (or holding) it.
    token = make_token("c1", 0, "a@example.com", "news")
    declared = _raw_post(
        api_server,
        f"/preferences/{token}",
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000000000\r\n",
    )
    assert declared == b"HTTP/1.1 413 Request Entity Too Large", declared


def test_a_chunked_preference_form_is_refused_past_the_limit(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    token = make_token("c1", 0, "a@example.com", "news")
    chunks = (b"category=news&" * 1000 for _ in range(10))  # about 140 kB, no length
    with _raw_client(api_server) as http:
        answer = http.post(f"/preferences/{token}", content=chunks)
        small = http.post(f"/preferences/{token}", data={"category": "news"})
    assert answer.status_code == 413 and small.status_code == 200


@pytest.mark.parametrize("tokens", ["test-token", " , "])
def test_the_api_access_log_does_not_show_callback_or_recipient_tokens(
    redis_server: RedisServer, tmp_path: Path, tokens: str
) -> None:
    """``dispatch api`` as deployed (uvicorn at INFO logs every request line); without a
    token configured it says at start that /v1 is open."""
    port = free_port()
    env = {
        **os.environ,
        "DISPATCH_REDIS_URL": redis_server.url,
        "DISPATCH_API_TOKENS": tokens,
        "DISPATCH_LOG_LEVEL": "INFO",
        "HOME": str(tmp_path),  # no `dispatch up` state file to join
    }
    log = tmp_path / "api.log"
    recipient = make_token("c1", 0, "secret-recipient@example.com", "news")
    legacy = legacy_token("c1", 0, "secret-recipient@example.com", "news")
    with log.open("wb") as out:
        api = subprocess.Popen(
            [sys.executable, "-m", "dispatch.cli", "api", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        http.get("/healthz")
                        break
                    except httpx.TransportError:
                        assert time.monotonic() < deadline, log.read_text()
                        time.sleep(0.1)
                http.post("/v1/callbacks/someesp/Sup3rSecretCallbackToken", content=b"[]")
                http.get(f"/u/{recipient}")
                http.get(f"/preferences/{recipient}?lang=en")
                http.get(f"/u/{legacy}")
                http.get(f"/v1/unsubscribe-tokens/{recipient}")
        finally:
            api.terminate()
            api.wait(timeout=30)
    text = log.read_text()
    assert "/v1/callbacks/someesp/***" in text and "/u/***" in text, text  # logged, masked
    assert "Sup3rSecretCallbackToken" not in text
    assert recipient not in text and "/v1/unsubscribe-tokens/***" in text
    assert legacy.partition(".")[0] not in text and legacy.partition(".")[2] not in text
    assert ("DISPATCH_API_TOKENS is empty" in text) is (tokens != "test-token"), text


@pytest.mark.parametrize("path", ["/v1/campaigns", "/v1/campaigns/c1/start"])
def test_a_v1_body_over_the_limit_is_refused_by_its_declared_size(
    api_server: ApiServer, redis_client: redis.Redis, path: str
) -> None:
    """Bodies read whole are bounded (64 MiB): a declared 1 GB is refused at once, not
    read into memory; the streamed recipient append and callbacks have their own rules."""
    headers = (
        f"Authorization: Bearer {API_TOKEN}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000000000\r\n"
    )
    answer = _raw_answer(api_server, path, headers)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head  # as every API error
    assert json.loads(body) == {
        "detail": "body: over 64 MiB",
        "field": "body",
        "errors": [{"field": "body", "message": "over 64 MiB"}],
    }
