"""Review B7: the Python client as another service integrates it, on the real API."""

from __future__ import annotations

import pytest
import redis

from dispatch.client import InvalidRequest
from tests.api_server import ApiServer
from tests.api_support import covers, dispatch_client, smtp_body


@covers("PUT /v1/providers/{nickname}", "POST /v1/campaigns")
def test_an_invalid_request_keeps_every_problem_the_api_named(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A 422 names its first problem in ``detail`` ("(and 2 more)") and lists them all in
    ``errors``: the client's exception carries the list, so a caller can show every
    field to fix at once instead of one per attempt."""
    with dispatch_client(api_server) as api:
        api.put_provider("local", smtp_body(2525))
        body = {
            "provider": "local",
            "html": "<p>x</p>",
            "from_address": "not-an-address",
            "recipients": [{"email": "a@example.com", "vars": []}],
        }
        with pytest.raises(InvalidRequest) as refused:
            api.create_campaign(body)
    error = refused.value
    assert error.detail == "subject: Field required (and 2 more)"
    assert error.field == "subject"
    assert [(p.field, p.message) for p in error.errors] == [
        ("subject", "Field required"),
        ("from_address", "'not-an-address' is not an email address (no local@domain)"),
        ("recipients.0.vars", "Input should be a valid dictionary"),
    ]
