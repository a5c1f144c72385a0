"""Changing DISPATCH_SECRET_KEY: with the old key in DISPATCH_PREVIOUS_SECRET_KEYS, the
unsubscribe links of mail already delivered keep working (RFC 8058: an opt-out must work
for months) and stored provider secrets stay readable; nothing new is written with an old
key. Real Redis, a real SMTP server with AUTH, the real API over HTTP."""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

import pytest
import redis

from dispatch import campaign_reads, crypto, suppressions
from dispatch.provider_store import load_provider, provider_view, save_provider
from dispatch.settings import Settings
from dispatch.unsubscribe import InvalidTokenError, make_token, read_token
from providers.config import SmtpFamilyBase
from tests.api_server import ApiServer
from tests.api_support import api_client
from tests.helpers import auth_smtp_provider, legacy_token, recipients, run_inline, use_keys
from tests.smtp_server import SmtpTestServer

FAST = Settings(retry_base_seconds=0.05)
OLD_KEY = "z5-old-key-" + "o" * 32
NEW_KEY = "z5-new-key-" + "n" * 32
CREDENTIALS = ("mailer", "s3cret-password")


def _provider(port: int) -> dict[str, object]:
    return {**auth_smtp_provider(port, CREDENTIALS), "preference_center": "system"}


def _send(r: redis.Redis, smtp: SmtpTestServer, n: int = 2) -> tuple[str, str]:
    """A campaign through provider "local" (AUTH with the stored password): its id and
    user0's List-Unsubscribe token, as delivered."""
    body = {"provider": "local", "subject": "s", "category": "news", "html": "<p>hi</p>"}
    cid = run_inline(r, {**body, "recipients": recipients(n)}, FAST)[0]
    assert campaign_reads.get_counters(cid, r)["sent"] == n  # AUTH took the stored password
    message = next(
        m.message
        for m in reversed(smtp.messages)
        if m.rcpt_tos == ["user0@example.com"] and m.message["List-Unsubscribe"]
    )
    match = re.fullmatch(r"<(.+)>", message["List-Unsubscribe"])
    assert match
    return cid, urlsplit(match.group(1)).path.rsplit("/", 1)[1]


def test_links_and_secrets_of_the_old_key_survive_a_key_change(
    api_server: ApiServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SmtpTestServer(credentials=CREDENTIALS) as smtp:
        use_keys(monkeypatch, OLD_KEY, None)
        with api_client(api_server) as http:
            assert http.put("/v1/providers/local", json=_provider(smtp.port)).status_code == 201
        cid, old_token = _send(redis_client, smtp)
        old_legacy = legacy_token(cid, 1, "user1@example.com", "news")

        # The key is changed, the old one kept for reading.
        use_keys(monkeypatch, NEW_KEY, f"{OLD_KEY}")
        assert make_token(cid, 0, "user0@example.com", "news") != old_token  # new key
        with api_client(api_server) as http:
            resolved = http.get(f"/v1/unsubscribe-tokens/{old_token}")
            view = http.get("/v1/providers/local").json()
        assert resolved.status_code == 200, resolved.text
        assert resolved.json()["email"] == "user0@example.com"
        assert view["warnings"] == []  # its password is readable
        with api_client(api_server, token=None) as http:
            page = http.get(f"/u/{old_token}")
            done = http.post(f"/u/{old_token}", content=b"List-Unsubscribe=One-Click")
            legacy = http.post(f"/u/{old_legacy}", content=b"List-Unsubscribe=One-Click")
        assert page.status_code == 200 and "Unsubscribe?" in page.text
        assert done.status_code == 200 and "You are unsubscribed" in done.text
        assert legacy.status_code == 200 and "You are unsubscribed" in legacy.text
        for email in ("user0@example.com", "user1@example.com"):
            entry = suppressions.get(email, client=redis_client)
            assert entry is not None and entry["reason"] == "unsubscribed"
        assert campaign_reads.get_counters(cid, redis_client)["unsubscribed"] == 2

        # The provider still sends with the password stored under the old key; saved
        # back as read, its secrets are written with the new key alone.
        suppressions.remove("user0@example.com", client=redis_client)
        suppressions.remove("user1@example.com", client=redis_client)
        _send(redis_client, smtp)
        with api_client(api_server) as http:
            assert http.put("/v1/providers/local", json=view).status_code == 200
        use_keys(monkeypatch, NEW_KEY, None)
        provider = load_provider("local", redis_client)
        assert isinstance(provider, SmtpFamilyBase)
        assert provider.password.get_secret_value() == CREDENTIALS[1]
        _send(redis_client, smtp)
        # Without the old key its links are refused again, as any foreign token.
        with pytest.raises(InvalidTokenError):
            read_token(old_token)


def test_an_old_key_reads_but_never_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokens, signatures and secrets made after the change use the current key alone:
    they read back once the previous keys are dropped."""
    use_keys(monkeypatch, NEW_KEY, f" {OLD_KEY} , another-old-key-{'a' * 30} ")
    token = make_token("c1", 3, "a@example.com", "news")
    sealed = crypto.encrypt("pw")
    signed = legacy_token("c1", 3, "a@example.com", "news")
    use_keys(monkeypatch, NEW_KEY, None)
    assert read_token(token).seq == 3 and read_token(signed).seq == 3
    assert crypto.decrypt(sealed) == "pw"


def test_every_previous_key_is_tried_and_only_those(monkeypatch: pytest.MonkeyPatch) -> None:
    made = {}
    for key in (OLD_KEY, "older-key-" + "x" * 32, "stranger-key-" + "s" * 32):
        use_keys(monkeypatch, key, None)
        made[key] = (make_token("c1", 0, "a@example.com", "news"), crypto.encrypt("pw"))
    use_keys(monkeypatch, NEW_KEY, f"{OLD_KEY},older-key-{'x' * 32}")
    for key, (token, secret) in made.items():
        if key.startswith("stranger"):
            with pytest.raises(InvalidTokenError):
                read_token(token)
            with pytest.raises(crypto.SecretKeyError):
                crypto.decrypt(secret)
        else:
            assert read_token(token).email == "a@example.com"
            assert crypto.decrypt(secret) == "pw"


def test_a_short_secret_key_is_warned_about_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A key anyone could guess lets whoever holds one delivered link check guesses
    offline (its plaintext is known to them), then forge links and read stored secrets."""
    use_keys(monkeypatch, "hunter2", None)
    with caplog.at_level(logging.WARNING, logger="dispatch.crypto"):
        make_token("c1", 0, "a@example.com", "news")
    warned = [r.getMessage() for r in caplog.records if "DISPATCH_SECRET_KEY" in r.getMessage()]
    assert warned and "hunter2" not in " ".join(warned)
    caplog.clear()
    use_keys(monkeypatch, NEW_KEY, None)
    with caplog.at_level(logging.WARNING, logger="dispatch.crypto"):
        make_token("c1", 0, "a@example.com", "news")
    assert not [r for r in caplog.records if "DISPATCH_SECRET_KEY" in r.getMessage()]


def test_a_secret_no_key_reads_names_the_setting_that_would(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_keys(monkeypatch, OLD_KEY, None)
    save_provider({"nickname": "local", **_provider(2525)}, redis_client)
    use_keys(monkeypatch, NEW_KEY, None)
    (warning,) = provider_view("local", redis_client)["warnings"]
    assert "DISPATCH_PREVIOUS_SECRET_KEYS" in warning
    with pytest.raises(crypto.SecretKeyError, match="DISPATCH_PREVIOUS_SECRET_KEYS"):
        load_provider("local", redis_client)
