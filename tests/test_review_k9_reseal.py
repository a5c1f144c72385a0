"""Review K9: ``dispatch providers reseal`` run without DISPATCH_SECRET_KEY (a shell that
lacks the service's environment). Real Redis."""

from __future__ import annotations

import pytest
import redis

from dispatch import store
from dispatch.cli import main
from dispatch.provider_store import save_provider
from tests.helpers import auth_smtp_provider, use_keys

KEY = "k9-reseal-key-" + "k" * 32


@pytest.mark.parametrize("check", [False, True])
def test_reseal_without_a_key_says_the_key_is_not_set_and_writes_nothing(
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    check: bool,
) -> None:
    """Every secret read as one no key decrypts, and the advice was to list the key that
    wrote it among the previous keys or to save the provider again with its secrets: the
    command's own environment lacked the key, nothing about the providers was wrong."""
    use_keys(monkeypatch, KEY, None)
    save_provider(auth_smtp_provider(2525, ("mailer", "s3cret")), redis_client)
    stored = redis_client.get(store.provider_key("local"))
    use_keys(monkeypatch, "", KEY)
    assert main(["providers", "reseal", *(["--check"] if check else [])]) == 2
    err = capsys.readouterr().err
    assert "DISPATCH_SECRET_KEY is not set in this command's environment" in err
    assert "no key decrypts it" not in err
    assert redis_client.get(store.provider_key("local")) == stored
