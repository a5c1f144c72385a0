"""A preference center whose links would not be https is said so when the provider is read.

RFC 8058 §3.1: the URI of a one-click List-Unsubscribe MUST be https; Gmail and Yahoo
ignore another. The links are under DISPATCH_PUBLIC_URL, which may be http:// (a trial on
this machine is, and is not warned about).
"""

from __future__ import annotations

import pytest
import redis

from dispatch.provider_store import provider_view, save_provider
from dispatch.settings import get_settings


def _view(monkeypatch: pytest.MonkeyPatch, r: redis.Redis, url: str, center: str) -> list[str]:
    monkeypatch.setenv("DISPATCH_PUBLIC_URL", url)
    get_settings.cache_clear()
    provider = {"nickname": "oc", "kind": "smtp", "host": "127.0.0.1", "port": 2525,
                "from_address": "news@acme.example", "preference_center": center}  # fmt: skip
    save_provider(provider, r)
    warnings: list[str] = provider_view("oc", r)["warnings"]
    return warnings


def test_an_http_public_url_with_a_preference_center_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis
) -> None:
    warnings = _view(monkeypatch, redis_client, "http://mail.acme.example", "system")
    assert len(warnings) == 1
    assert "http://mail.acme.example" in warnings[0] and "RFC 8058" in warnings[0]
    assert warnings[0].startswith("preference_center:")


@pytest.mark.parametrize(
    ("url", "center"),
    [
        ("https://mail.acme.example", "system"),
        ("http://127.0.0.1:8000", "system"),  # a trial on this machine
        ("http://localhost:8000", "system"),
        ("http://mail.acme.example", "none"),  # no links at all
    ],
)
def test_no_warning_where_the_links_are_https_local_or_absent(
    monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis, url: str, center: str
) -> None:
    assert _view(monkeypatch, redis_client, url, center) == []
