"""Settings refused at start: a number must be finite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dispatch.cli import main
from dispatch.settings import get_settings


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
