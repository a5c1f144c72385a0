"""Review AH24: DISPATCH_SECRET_KEY when unset, and a key change end to end on real Redis."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from dispatch.provider_store import load_provider, provider_view, reseal_provider, save_provider
from dispatch.redis_server import RedisServer
from dispatch.settings import get_settings
from dispatch.unsubscribe import InvalidTokenError, make_token, read_token
from tests.smtp_server import free_port
from tests.test_cli_errors import run_alone


def test_up_on_a_redis_of_its_users_refuses_to_start_without_the_key(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """``dispatch up`` with DISPATCH_REDIS_URL and no key generated one for the run and
    showed it nowhere: the Redis kept the providers and campaigns, and after a restart
    every saved password read as "does not decrypt" and every unsubscribe link of mail
    sent answered 404. Now it refuses, as ``api``, ``worker`` and ``beat`` do."""
    env = {k: v for k, v in os.environ.items() if k != "DISPATCH_SECRET_KEY"}
    env |= {"DISPATCH_REDIS_URL": redis_server.url, "XDG_RUNTIME_DIR": str(tmp_path)}
    code, err = run_alone(["up", "--port", str(free_port())], env, timeout=30)
    assert code == 2, err[-2000:]
    assert err.startswith("error: DISPATCH_SECRET_KEY is not set"), err
    assert "DISPATCH_REDIS_URL" in err, err


SMTP = {
    "nickname": "rotating",
    "kind": "smtp",
    "host": "127.0.0.1",
    "port": 2525,
    "username": "u",
    "password": "the-password",
    "from_address": "a@acme.example",
}
HTTP = {
    "nickname": "rotating-http",
    "kind": "http",
    "method": "POST",
    "endpoint": "http://127.0.0.1:9/send",
    "headers": {"X-Api-Key": "header-key"},
    "body": {
        "key": "body-key",
        "m": {"to": "$$To", "s": "$$Subject", "n": "$$FromName", "f": "$$FromAddress"},
        "h": "$$HTML",
        "tags": [{"token": "list-token"}],
    },
    "from_address": "a@acme.example",
}


def test_a_key_change_end_to_end(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README "Changing the key": new key with the old one listed, links of mail sent
    still read, reseal, then the old key removed: every secret still decrypts."""
    old, new = "o" * 40, "n" * 40
    monkeypatch.setenv("DISPATCH_ALLOW_PRIVATE_ENDPOINTS", "true")
    monkeypatch.setenv("DISPATCH_SECRET_KEY", old)
    get_settings.cache_clear()
    save_provider(SMTP, redis_client)
    save_provider(HTTP, redis_client)
    link = make_token("c-1", 7, "bob@example.com", "news")

    monkeypatch.setenv("DISPATCH_SECRET_KEY", new)
    monkeypatch.setenv("DISPATCH_PREVIOUS_SECRET_KEYS", old)
    get_settings.cache_clear()
    token = read_token(link)
    assert (token.email, token.campaign_id, token.current_key) == ("bob@example.com", "c-1", False)
    assert reseal_provider("rotating", redis_client).resealed == ["password"]
    assert sorted(reseal_provider("rotating-http", redis_client).resealed) == [
        "body.key",
        "body.tags.0.token",
        "headers.X-Api-Key",
    ]

    monkeypatch.delenv("DISPATCH_PREVIOUS_SECRET_KEYS")
    get_settings.cache_clear()
    assert load_provider("rotating", redis_client).password.get_secret_value() == "the-password"
    http = load_provider("rotating-http", redis_client)
    assert http.headers["X-Api-Key"] == "header-key"
    assert http.body == HTTP["body"]
    assert not any("decrypt" in w for w in provider_view("rotating-http", redis_client)["warnings"])
    with pytest.raises(InvalidTokenError):  # the old key unlisted: its links are not read
        read_token(link)


def test_a_key_that_ended_in_a_newline_can_be_listed_as_a_previous_one(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DISPATCH_SECRET_KEY is used as it is: one read from a file with its newline (a
    Kubernetes secret made with --from-file) wrote the secrets and links with it. Listed
    in DISPATCH_PREVIOUS_SECRET_KEYS from the same file, it was stripped: no provider
    secret decrypted, no link of mail sent was read."""
    old = "o" * 40 + "\n"
    monkeypatch.setenv("DISPATCH_SECRET_KEY", old)
    get_settings.cache_clear()
    save_provider(SMTP, redis_client)
    link = make_token("c-1", 7, "bob@example.com", "news")

    monkeypatch.setenv("DISPATCH_SECRET_KEY", "n" * 40)
    monkeypatch.setenv("DISPATCH_PREVIOUS_SECRET_KEYS", f"{'x' * 40}, {old}")
    get_settings.cache_clear()
    assert read_token(link).email == "bob@example.com"
    assert load_provider("rotating", redis_client).password.get_secret_value() == "the-password"
    assert reseal_provider("rotating", redis_client).resealed == ["password"]
