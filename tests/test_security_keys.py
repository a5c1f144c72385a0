"""A changed DISPATCH_SECRET_KEY, over HTTP on the real app: the provider's secrets can
be given again (the README's remedy), and a masked one that cannot be read is named."""

from __future__ import annotations

import pytest
import redis

from dispatch import provider_store
from dispatch.settings import get_settings
from tests.api_server import ApiServer
from tests.api_support import api_client, smtp_body


def test_after_a_key_change_the_password_can_be_given_again(
    api_server: ApiServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = {**smtp_body(2525, username="mailer", password="old-secret"), "nickname": "rekeyed"}
    with api_client(api_server) as api:
        assert api.put("/v1/providers/rekeyed", json=body).status_code == 201
        url = api.get("/v1/providers/rekeyed").json()["callback_url"]
        try:
            monkeypatch.setenv("DISPATCH_SECRET_KEY", "a-new-key")
            get_settings.cache_clear()
            masked = api.put("/v1/providers/rekeyed", json={**body, "password": "********"})
            again = api.put("/v1/providers/rekeyed", json={**body, "password": "new-secret"})
            view = api.get("/v1/providers/rekeyed").json()
            stored = provider_store.load_provider("rekeyed", redis_client)
        finally:
            monkeypatch.undo()
            get_settings.cache_clear()
    assert masked.status_code == 422, masked.text
    assert masked.json()["field"] == "password" and "DISPATCH_SECRET_KEY" in masked.text
    assert again.status_code == 200, again.text
    assert view["warnings"] == [] and view["callback_url"] == url  # same token kept
    assert stored.password.get_secret_value() == "new-secret"  # type: ignore[attr-defined]


def test_a_provider_the_key_cannot_read_is_a_clear_409_not_a_500(
    api_server: ApiServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = {**smtp_body(2525, username="mailer", password="old-secret"), "nickname": "stale"}
    campaign = {"provider": "stale", "subject": "s", "html": "h", "draft": True}
    with api_client(api_server) as api:
        assert api.put("/v1/providers/stale", json=body).status_code == 201
        try:
            monkeypatch.setenv("DISPATCH_SECRET_KEY", "a-new-key")
            get_settings.cache_clear()
            answers = [
                api.post("/v1/providers/stale/test", json={"to": "a@example.com"}),
                api.post("/v1/campaigns", json=campaign),
            ]
        finally:
            monkeypatch.undo()
            get_settings.cache_clear()
    for answer in answers:
        assert answer.status_code == 409, answer.text
        assert answer.json()["field"] == "provider"
        assert "provider 'stale'" in answer.text and "DISPATCH_SECRET_KEY" in answer.text
