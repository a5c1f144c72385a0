"""Review H23: a shorter dedupe TTL shortens the SendGrid signature tolerance left unset.

Since review C23 the tolerance may not exceed DISPATCH_CALLBACK_DEDUPE_TTL_SECONDS. Its
default (72 h) was held to that too: a deployment that had lowered the dedupe TTL to a day
(Operations: Redis memory, a dedupe key per event for the TTL), with no SendGrid provider
at all, no longer started after the upgrade (API, workers and beat: "exit status 2"),
told that DISPATCH_SENDGRID_SIGNATURE_TOLERANCE_SECONDS=259200, a variable nobody had set,
was too long. Left unset, the tolerance is now the shorter of 72 h and the TTL (a replay
is still refused or recognised); one given longer than the TTL is still refused.
"""

from __future__ import annotations

import pytest

from dispatch.settings import (
    DEFAULT_SENDGRID_SIGNATURE_TOLERANCE_SECONDS,
    SettingsError,
    get_settings,
)

DAY = 24 * 3600


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> int:
    for name, value in env.items():
        monkeypatch.setenv(f"DISPATCH_{name.upper()}", value)
    get_settings.cache_clear()
    return get_settings().sendgrid_signature_tolerance_seconds


def test_a_shorter_dedupe_ttl_shortens_the_default_tolerance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DISPATCH_SENDGRID_SIGNATURE_TOLERANCE_SECONDS", raising=False)
    assert _settings(monkeypatch, callback_dedupe_ttl_seconds=str(DAY)) == DAY
    longer = str(10 * DAY)  # a longer TTL keeps the 72 h default
    assert _settings(monkeypatch, callback_dedupe_ttl_seconds=longer) == (
        DEFAULT_SENDGRID_SIGNATURE_TOLERANCE_SECONDS
    )


def test_a_tolerance_given_longer_than_the_ttl_is_still_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(SettingsError) as caught:
        _settings(
            monkeypatch,
            callback_dedupe_ttl_seconds=str(DAY),
            sendgrid_signature_tolerance_seconds=str(2 * DAY),
        )
    assert str(caught.value) == (
        "DISPATCH_SENDGRID_SIGNATURE_TOLERANCE_SECONDS='172800': must not be more than "
        "DISPATCH_CALLBACK_DEDUPE_TTL_SECONDS (86400): a signed SendGrid post replayed "
        "after that would be applied again"
    )
    # 0 (no bound) and the TTL itself are taken, as before.
    for given in ("0", str(DAY)):
        assert _settings(monkeypatch, sendgrid_signature_tolerance_seconds=given) == int(given)
