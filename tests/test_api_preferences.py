"""``/v1/preferences/{email}`` over HTTP on the real app: an address's category choices.

There was no way but the recipient's own link to see or change them: an operator could not
re-subscribe a person who switched a category off by mistake, and a custom preference
center could read the choices (``/v1/unsubscribe-tokens``) but not save them.
"""

from __future__ import annotations

import pytest
import redis

from dispatch import preferences, store
from dispatch.client import InvalidRequest
from tests.api_server import ApiServer
from tests.api_support import api_client, covers, dispatch_client


@pytest.fixture
def categories(redis_client: redis.Redis) -> list[str]:
    names = ["news", "offers", "product"]
    redis_client.sadd(store.CATEGORIES_SET, *names)  # as campaigns sent in them register
    return names


@covers("GET /v1/preferences/{email}", "PUT /v1/preferences/{email}")
def test_choices_are_read_and_set_as_the_page_sets_them(
    api_server: ApiServer, redis_client: redis.Redis, categories: list[str]
) -> None:
    with dispatch_client(api_server) as api:
        fresh = api.get_preferences("Ann@Example.com")
        assert (fresh.email, fresh.opted_out, fresh.suppression) == ("ann@example.com", [], None)
        assert set(categories) <= set(fresh.categories)

        switched = api.set_preferences("ann@EXAMPLE.com", ["offers", "news"])
        assert switched.opted_out == ["news", "offers"]
        # What batches check: the address key in each category's set.
        assert preferences.opted_out("ann@example.com", redis_client) == {"news", "offers"}

        assert api.set_preferences("ann@example.com", ["offers"]).opted_out == ["offers"]
        assert api.set_preferences("ann@example.com").opted_out == []  # every one on again
        assert preferences.opted_out("ann@example.com", redis_client) == set()


@covers("PUT /v1/preferences/{email}", "GET /v1/preferences/{email}")
def test_unknown_categories_and_bad_addresses_are_named(
    api_server: ApiServer, redis_client: redis.Redis, categories: list[str]
) -> None:
    with dispatch_client(api_server) as api, pytest.raises(InvalidRequest) as refused:
        api.set_preferences("bo@example.com", ["offers", "nope"])
    assert refused.value.field == "opted_out" and "'nope'" in refused.value.detail
    assert preferences.opted_out("bo@example.com", redis_client) == set()  # nothing changed
    with api_client(api_server) as http:
        for method, kwargs in (("GET", {}), ("PUT", {"json": {"opted_out": []}})):
            answer = http.request(method, "/v1/preferences/no-address", **kwargs)
            assert answer.status_code == 422 and answer.json()["field"] == "email", answer.text
        extra = http.put("/v1/preferences/bo@example.com", json={"opted_out": [], "x": 1})
        assert extra.status_code == 422
        assert (
            http.get("/v1/preferences/bo@example.com", headers={"Authorization": ""}).status_code
            == 401
        )


@covers("GET /v1/preferences/{email}")
def test_a_suppressed_address_shows_its_entry(api_server: ApiServer, categories: list[str]) -> None:
    with dispatch_client(api_server) as api:
        api.suppress("cy@example.com", reason="asked by phone")
        view = api.get_preferences("cy@example.com")
    assert view.suppression is not None and view.suppression.reason == "asked by phone"
