"""Input that would make every message of a campaign fail (or the API answer 500) is
refused when it is given, with 422 naming the field, over HTTP on the real app."""

from __future__ import annotations

from typing import Any

import redis

from tests.api_server import ApiServer
from tests.api_support import api_client, covers, save_smtp_provider
from tests.smtp_server import SmtpTestServer


def draft(campaign_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": campaign_id,
        "provider": "local",
        "subject": "Hello",
        "html": "<p>Hi</p>",
        "draft": True,
        **fields,
    }


def assert_refused(answer: Any, field: str) -> dict[str, Any]:
    """A 422 in the README's shape, naming ``field``; returns the body."""
    assert answer.status_code == 422, answer.text
    error: dict[str, Any] = answer.json()
    assert set(error) == {"detail", "field", "errors"}, error
    assert error["field"] == field, error
    assert error["detail"].startswith(f"{field}: "), error
    return error


@covers("POST /v1/campaigns")
def test_meta_fields_must_be_printable_ascii(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """Category and variant go into the X-CleverTap_META header of every message."""
    with api_client(api_server) as api:
        save_smtp_provider(api, smtp.port)
        for field, value in (
            ("category", "café"),
            ("variant", "ü"),
            ("category", "tab\there"),
            ("variant", "a|b"),
        ):
            answer = api.post("/v1/campaigns", json=draft("meta-1", **{field: value}))
            assert "ASCII" in assert_refused(answer, field)["detail"]
        ok = api.post("/v1/campaigns", json=draft("meta-2", category="Spring sale", variant="B~2"))
        assert ok.status_code == 201, ok.text
        assert [c["id"] for c in api.get("/v1/campaigns").json()["items"]] == ["meta-2"]
