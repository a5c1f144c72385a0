"""Review B7: the Python client as another service integrates it, on the real API."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import redis

from dispatch.client import DispatchClient, InvalidRequest
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


def _draft(api: DispatchClient, campaign_id: str) -> None:
    api.put_provider("local", smtp_body(2525))
    api.create_campaign(
        {
            "id": campaign_id,
            "provider": "local",
            "subject": "s",
            "html": "{{ amount }}",
            "draft": True,
        }
    )


@covers("POST /v1/campaigns/{campaign_id}/recipients")
def test_an_append_sends_the_neighbours_of_a_recipient_json_cannot_write(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Rows read from a database bring ``Decimal`` values: such a recipient is listed at
    its own line with the field at fault, and the others, before and after it and past the
    client's first chunk, are appended (it raised a bare TypeError part-way through the
    stream, the rest of the list unsent and the recipient unnamed)."""
    rows: list[dict[str, Any]] = [
        {"email": f"d{i}@example.com", "vars": {"amount": 1.5}} for i in range(1200)
    ]
    rows[700] = {"email": "d700@example.com", "vars": {"amount": Decimal("1.50")}}
    rows[900] = {"email": "bad", "vars": {"amount": 1}}  # refused by the API, line 901
    with dispatch_client(api_server) as api:
        _draft(api, "dec-1")
        result = api.append_recipients("dec-1", iter(rows))
        assert (result.appended, result.rejected, result.total) == (1198, 2, 1198)
        assert [(p.line, p.field) for p in result.errors] == [(701, "vars.amount"), (901, "email")]
        assert "decimal.Decimal" in result.errors[0].message
        assert api.messages("dec-1", email="d1199@example.com").items
        assert not api.messages("dec-1", email="d700@example.com").items


@covers("POST /v1/campaigns/{campaign_id}/recipients")
def test_an_append_of_only_unwritable_recipients_names_them(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    with dispatch_client(api_server) as api:
        _draft(api, "dec-2")
        rows = [{"email": f"d{i}@example.com", "vars": {"amount": Decimal(i)}} for i in range(2)]
        with pytest.raises(InvalidRequest) as refused:
            api.append_recipients("dec-2", rows)
        assert refused.value.field == "vars.amount"
        assert refused.value.detail.startswith("line 1: vars.amount: not sent: ")
        assert refused.value.detail.endswith("(and 1 more)")
        assert [p.message.split(":")[0] for p in refused.value.errors] == ["line 1", "line 2"]
        assert api.get_campaign("dec-2").total == 0
