"""Review K8: the day's five features tried for real (preferences by address, body
secrets, SMTP SIZE)."""

from __future__ import annotations

import pytest
import redis

from dispatch import preferences, store
from dispatch.api import preference_choices
from dispatch.api.schemas import PreferencesRequest
from providers.smtp import _size_limit
from tests.api_server import ApiServer
from tests.api_support import api_client
from tests.test_api_providers import HTTP_BODY


@pytest.mark.parametrize("section", ["headers", "query"])
def test_a_header_or_parameter_named_enc_is_kept_as_given(
    api_server: ApiServer, redis_client: redis.Redis, section: str
) -> None:
    """A header (or query parameter) named ``enc``, alone in its section, was read back as
    an encrypted value: the provider saved, then every read of it failed (422 'headers:
    Input should be a valid dictionary') and no campaign could use it."""
    body = {
        "kind": "http",
        "endpoint": "http://127.0.0.1:9/send",
        "body": HTTP_BODY,
        section: {"enc": "gzip"},
    }
    with api_client(api_server) as api:
        assert api.put("/v1/providers/hook", json=body).status_code in (200, 201)
        view = api.get("/v1/providers/hook")
        assert view.status_code == 200, view.text
        assert view.json()[section] == {"enc": "gzip"}
        again = api.put("/v1/providers/hook", json=view.json())  # the view saved back
        assert again.status_code == 200, again.text
        assert api.get("/v1/providers/hook").json()[section] == {"enc": "gzip"}


def test_a_put_leaves_a_category_first_sent_in_meanwhile_on(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PUT checked the names against the categories, then saved against the
    categories read again: one first sent in between (a campaign started meanwhile) was
    switched off for the address, though the caller never saw it."""
    redis_client.sadd(store.CATEGORIES_SET, "news", "offers")
    read = preferences.categories
    calls = []

    def categories(client: redis.Redis | None = None) -> list[str]:
        calls.append(1)
        if len(calls) == 2:  # after the PUT's own check: a campaign in a new category
            redis_client.sadd(store.CATEGORIES_SET, "late")
        return read(client)

    monkeypatch.setattr(preferences, "categories", categories)
    view = preference_choices.put_preferences(
        "ann@example.com", PreferencesRequest(opted_out=["offers"])
    )
    assert view.opted_out == ["offers"]
    assert read(redis_client) == ["late", "news", "offers"]
    assert preferences.opted_out("ann@example.com", redis_client) == {"offers"}


@pytest.mark.parametrize("param", ["²", "１０", "١٢", "-5", "abc", ""])
def test_a_size_that_is_no_ascii_number_is_no_limit(param: str) -> None:
    """EHLO's ``SIZE ²`` (isdigit, but no int) raised ValueError while connecting: every
    message of the chunk failed on it, not one was sent."""
    assert _size_limit(param) == 0


def test_a_size_is_read_as_given() -> None:
    assert (_size_limit(" 35882577 "), _size_limit("0")) == (35882577, 0)
