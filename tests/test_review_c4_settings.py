"""Settings refused at start: a number must be finite, and a Redis URL whose password
breaks its parsing is refused without repeating any of it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dispatch.cli import main
from dispatch.settings import SettingsError, get_settings


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    get_settings.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()


# Housekeeping restarts a stalled campaign after twice DISPATCH_RETRY_MAX_SECONDS: with
# inf, never.
NOT_FINITE = {
    "DISPATCH_RETRY_MAX_SECONDS": "inf",
    "DISPATCH_RETENTION_DAYS": "Infinity",
    "DISPATCH_CALLBACK_RECOVERY_SECONDS": "1e400",
    "DISPATCH_INLINE_RETRY_SECONDS": "-inf",
}


def test_a_number_that_is_not_finite_is_refused_naming_the_variable(
    fresh_settings: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in NOT_FINITE.items():
        with monkeypatch.context() as env:
            env.setenv(name, value)
            get_settings.cache_clear()
            assert main(["status", "any"]) == 2, name
        out, err = capsys.readouterr()
        assert out == "" and err.startswith(f"error: {name}=") and "finite" in err, err


@pytest.mark.parametrize(
    "url",
    [
        "redis://:Hunter2xyz?k@redis:6379/0",  # generated passwords hold '/', '?', '#'
        "redis://:Hunter2xyz/kq+Z@redis:6379/0",
        "redis://dispatch:Hunter2xyz#1@redis:6379/0",
    ],
)
def test_a_redis_password_that_breaks_the_url_is_not_echoed(
    url: str,
    fresh_settings: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DISPATCH_REDIS_URL", url)
    with pytest.raises(SettingsError) as caught:
        get_settings()
    assert "DISPATCH_REDIS_URL" in str(caught.value)
    assert "Hunter2" not in str(caught.value) and "percent-encoded" in str(caught.value)
    assert main(["status", "any"]) == 2
    _, err = capsys.readouterr()
    assert "DISPATCH_REDIS_URL" in err and "Hunter2" not in err, err
