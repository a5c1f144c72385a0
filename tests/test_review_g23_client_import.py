"""The client's add_suppressions given one address, or one item, instead of an iterable
of them (a string and a mapping are iterables too), against the real API and Redis."""

from __future__ import annotations

import pytest
import redis

from dispatch import store
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
