"""``dispatch providers reseal``: after a key change, every provider secret an old key wrote
is written again with DISPATCH_SECRET_KEY, and nothing else changes, so that no provider
needs the old key any more (README: Backups, changing the key). Real Redis, a real SMTP
server with AUTH for the proof that the resealed password still works."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis

from dispatch import campaign_reads, crypto, store
from dispatch.cli import main
from dispatch.provider_store import load_provider, reseal_provider, save_provider
from dispatch.settings import Settings
from providers.config import HttpConfig, SmtpFamilyBase
from tests.helpers import auth_smtp_provider, recipients, run_inline, use_keys
from tests.smtp_server import SmtpTestServer

FAST = Settings(retry_base_seconds=0.05)
OLD_KEY = "reseal-old-key-" + "o" * 32
NEW_KEY = "reseal-new-key-" + "n" * 32
LOST_KEY = "reseal-lost-key-" + "l" * 32
CREDENTIALS = ("mailer", "s3cret-password")


HTTP = {
    "nickname": "mandrill",
    "kind": "http",
    "endpoint": "http://127.0.0.1:9/send",
    "headers": {"Authorization": "Bearer hd-secret-1234"},
    "body": {
        "key": "md-live-123456",
        "message": {"html": "$$HTML", "subject": "$$Subject", "to": [{"email": "$$To"}],
                    "from_email": "$$FromAddress", "from_name": "$$FromName"},
        "extra": {"enc": "not ours"},
    },
    "from_address": "deals@acme.example",
}  # fmt: skip


def _stored(r: redis.Redis, nickname: str) -> dict[str, Any]:
    raw = r.get(store.provider_key(nickname))
    assert raw is not None
    data: dict[str, Any] = orjson.loads(raw)
    return data


def _ciphertexts(value: Any) -> list[str]:
    """Every ``{"enc": ...}`` value in a stored configuration, in order."""
    if isinstance(value, dict):
        if set(value) == {"enc"}:
            return [value["enc"]]
        return [c for v in value.values() for c in _ciphertexts(v)]
    if isinstance(value, list):
        return [c for v in value for c in _ciphertexts(v)]
    return []


def _without_ciphertexts(value: Any, ours: set[str]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"enc"} and value["enc"] in ours:
            return "<sealed>"
        return {k: _without_ciphertexts(v, ours) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_ciphertexts(v, ours) for v in value]
    return value


def test_reseal_writes_old_key_secrets_with_the_new_key_and_changes_nothing_else(
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with SmtpTestServer(credentials=CREDENTIALS) as smtp:
        monkeypatch.setenv("DISPATCH_ALLOW_PRIVATE_ENDPOINTS", "true")
        use_keys(monkeypatch, OLD_KEY, None)
        save_provider(auth_smtp_provider(smtp.port, CREDENTIALS), redis_client)
        save_provider(HTTP, redis_client)
        before = {n: _stored(redis_client, n) for n in ("local", "mandrill")}

        use_keys(monkeypatch, NEW_KEY, OLD_KEY)
        assert main(["providers", "reseal", "--check"]) == 1
        out = capsys.readouterr().out
        assert "local: password: written with an old key" in out
        assert "mandrill: " in out and "headers.Authorization" in out and "body.key" in out
        assert {n: _stored(redis_client, n) for n in before} == before  # --check writes nothing

        assert main(["providers", "reseal"]) == 0
        out = capsys.readouterr().out
        assert "local: password: written again with the current key" in out
        assert "every provider's secrets are written with DISPATCH_SECRET_KEY now" in out
        for nickname, old in before.items():
            new = _stored(redis_client, nickname)
            old_sealed, new_sealed = _ciphertexts(old), _ciphertexts(new)
            assert len(new_sealed) == len(old_sealed)
            ours = {c for c in old_sealed if c != "not ours"}
            fresh = {c for c in new_sealed if c != "not ours"}
            assert ours and fresh.isdisjoint(ours)  # each written again
            # Everything else as it was: fields, the callback token, the user's own object.
            assert _without_ciphertexts(new, fresh) == _without_ciphertexts(old, ours)

        # The old key can go: the secrets read, and the password still logs in.
        use_keys(monkeypatch, NEW_KEY, None)
        assert main(["providers", "reseal", "--check"]) == 0
        local = load_provider("local", redis_client)
        assert isinstance(local, SmtpFamilyBase)
        assert local.password.get_secret_value() == CREDENTIALS[1]
        mandrill = load_provider("mandrill", redis_client)
        assert isinstance(mandrill, HttpConfig)
        assert mandrill.body["key"] == "md-live-123456"
        assert mandrill.body["extra"] == {"enc": "not ours"}
        body = {"provider": "local", "subject": "s", "html": "<p>hi</p>"}
        cid = run_inline(redis_client, {**body, "recipients": recipients(2)}, FAST)[0]
        assert campaign_reads.get_counters(cid, redis_client)["sent"] == 2  # AUTH took it


def test_a_secret_no_key_reads_is_named_and_left_while_the_others_are_resealed(
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DISPATCH_ALLOW_PRIVATE_ENDPOINTS", "true")
    use_keys(monkeypatch, LOST_KEY, None)
    save_provider(auth_smtp_provider(2525, CREDENTIALS), redis_client)
    use_keys(monkeypatch, OLD_KEY, None)
    save_provider(HTTP, redis_client)
    lost = _stored(redis_client, "local")

    use_keys(monkeypatch, NEW_KEY, OLD_KEY)
    assert main(["providers", "reseal"]) == 1
    captured = capsys.readouterr()
    assert "error: local: password: no key decrypts it" in captured.err
    assert "DISPATCH_PREVIOUS_SECRET_KEYS" in captured.err
    assert "mandrill: " in captured.out
    assert _stored(redis_client, "local") == lost
    use_keys(monkeypatch, NEW_KEY, None)
    mandrill = load_provider("mandrill", redis_client)
    assert isinstance(mandrill, HttpConfig) and mandrill.body["key"] == "md-live-123456"


def test_a_provider_saved_while_it_is_resealed_is_not_overwritten(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator saving a new password between the reseal's read and its write: the
    new password stays (the reseal reads again), written with the current key."""
    use_keys(monkeypatch, OLD_KEY, None)
    save_provider(auth_smtp_provider(2525, CREDENTIALS), redis_client)
    use_keys(monkeypatch, NEW_KEY, OLD_KEY)
    real = crypto.reencrypt
    saves = []

    def save_meanwhile(token: str) -> str | None:
        if not saves:
            saves.append(
                save_provider(
                    {**auth_smtp_provider(2525, CREDENTIALS), "password": "rotated"}, redis_client
                )
            )
        return real(token)

    monkeypatch.setattr(crypto, "reencrypt", save_meanwhile)
    found = reseal_provider("local", redis_client)
    assert saves and found.current == ["password"] and found.resealed == []
    use_keys(monkeypatch, NEW_KEY, None)
    local = load_provider("local", redis_client)
    assert isinstance(local, SmtpFamilyBase)
    assert local.password.get_secret_value() == "rotated"


def test_an_altered_non_ascii_secret_is_named_not_a_traceback(
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A stored ciphertext is base64: one holding a non-ASCII character was altered (by
    hand, a bad restore), and is named like any secret no key reads."""
    monkeypatch.setenv("DISPATCH_ALLOW_PRIVATE_ENDPOINTS", "true")
    use_keys(monkeypatch, OLD_KEY, None)
    save_provider(auth_smtp_provider(2525, CREDENTIALS), redis_client)
    save_provider(HTTP, redis_client)
    stored = _stored(redis_client, "local")
    stored["password"]["enc"] = "é" + stored["password"]["enc"][1:]
    redis_client.set(store.provider_key("local"), orjson.dumps(stored))

    use_keys(monkeypatch, NEW_KEY, OLD_KEY)
    assert main(["providers", "reseal"]) == 1
    captured = capsys.readouterr()
    assert "error: local: password: no key decrypts it" in captured.err
    assert "mandrill: " in captured.out  # its neighbour is resealed
    with pytest.raises(crypto.SecretKeyError, match="altered"):
        crypto.decrypt(stored["password"]["enc"])
