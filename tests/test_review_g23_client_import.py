"""The client's add_suppressions given one address, or one item, instead of an iterable
of them (a string and a mapping are iterables too), against the real API and Redis."""

from __future__ import annotations

import pytest
import redis

from dispatch import store
from dispatch.client import InvalidRequest
from tests.api_server import ApiServer
from tests.api_support import covers, dispatch_client


@covers("POST /v1/suppressions")
def test_one_address_or_one_item_is_refused_and_a_list_of_it_is_imported(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """It sent the address's 15 characters as 15 invalid items (or a mapping's keys),
    answered ``added 0`` and suppressed no one; now it says so before sending."""
    with dispatch_client(api_server) as client:
        with pytest.raises(TypeError, match="not one str"):
            client.add_suppressions("ann@example.com", reason="esp export")
        with pytest.raises(TypeError, match="not one dict"):
            client.add_suppressions({"email": "bob@example.com", "reason": "hard_bounce"})
        assert redis_client.hlen(store.SUPPRESSIONS_HASH) == 0
        result = client.add_suppressions(
            ["ann@example.com", {"email": "bob@example.com", "reason": "hard_bounce"}]
        )
    assert (result.added, result.invalid) == (2, 0)
    assert redis_client.hlen(store.SUPPRESSIONS_HASH) == 2


@covers("POST /v1/suppressions")
def test_an_empty_iterable_is_an_import_of_nothing(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """A daily sync with no new bounce sent an empty body, which the API refuses: the
    call raised InvalidRequest 'body: empty: send NDJSON or a JSON array' for a body its
    caller never wrote. The request's own checks still apply."""
    with dispatch_client(api_server) as client:
        nothing = client.add_suppressions([], reason="esp bounce", source="import:esp")
        none_yielded = client.add_suppressions(a for a in ["ann@example.com"] if not a)
        with pytest.raises(InvalidRequest) as blank:
            client.add_suppressions([], reason="  ")
    for result in (nothing, none_yielded):
        assert (result.added, result.already_suppressed, result.invalid) == (0, 0, 0)
        assert result.errors == []
    assert blank.value.field == "reason"
    assert redis_client.hlen(store.SUPPRESSIONS_HASH) == 0
