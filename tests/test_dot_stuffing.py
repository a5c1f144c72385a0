"""DATA's dot-stuffing (RFC 5321 §4.5.2), written with bytes.replace for speed, against its
definition: a dot that starts a line (after any LF, bare or not) is doubled."""

from __future__ import annotations

import random
import re

import pytest

from providers.smtp_wire import dot_stuff

_DEFINITION = re.compile(rb"(?m)^\.")


def _by_definition(message: bytes) -> bytes:
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return _DEFINITION.sub(b"..", message) + b".\r\n"


@pytest.mark.parametrize(
    ("message", "stuffed"),
    [
        (b".\r\n", b"..\r\n.\r\n"),
        (b"a\r\n.\r\nb", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"..x\r\n", b"...x\r\n.\r\n"),
        (b"a.b\r\n", b"a.b\r\n.\r\n"),
        (b"bare\n.lf\r\n", b"bare\n..lf\r\n.\r\n"),  # a server may end lines at a bare LF
        (b"", b"\r\n.\r\n"),
    ],
)
def test_a_leading_dot_is_doubled(message: bytes, stuffed: bytes) -> None:
    assert dot_stuff(message) == stuffed


def test_the_same_as_the_definition_on_random_messages() -> None:
    rng = random.Random(5321)
    for _ in range(2000):
        message = bytes(rng.choice(b".\r\nab") for _ in range(rng.randrange(0, 40)))
        assert dot_stuff(message) == _by_definition(message), message
