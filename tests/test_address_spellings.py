"""One recipient, many spellings: case, IDN forms, a root dot, a display name."""

from __future__ import annotations

import pytest

from providers.callbacks.events import InvalidEvent, normalize_email


@pytest.mark.parametrize(
    ("reported", "address"),
    [
        ('"Ann" <Ann@Example.COM>', "Ann@example.com"),
        ("Ann Smith <ann@example.com>", "ann@example.com"),
        ("<ann@example.com>", "ann@example.com"),
        (" ann@example.com ", "ann@example.com"),
    ],
)
def test_a_callback_email_in_display_form_is_its_address(reported: str, address: str) -> None:
    assert normalize_email(reported) == address


def test_a_display_form_without_an_address_is_still_refused() -> None:
    with pytest.raises(InvalidEvent):
        normalize_email("Ann <>")
