"""A bounce, a complaint, a provider's unsubscribe report or an operator's entry after a
person's own unsubscribe replaces it on the list: the preference center's "Subscribe
again" must not lift it (the first reason stood, so a re-subscribe sent to an address
that had bounced since, or that the provider's own list holds)."""

from __future__ import annotations

import pytest
import redis

from dispatch import store, suppressions
from tests.api_server import ApiServer
from tests.api_support import api_client
from tests.callback_support import callback_path
from tests.test_review_y12_resubscribe import EMAIL, _apply_callbacks, _sent_campaign


@pytest.mark.parametrize("kind", ["hard_bounce", "spam", "unsubscribed"])
def test_a_bounce_after_ones_own_unsubscribe_cannot_be_lifted(
    api_server: ApiServer, redis_client: redis.Redis, kind: str
) -> None:
    _, token, meta = _sent_campaign(redis_client)
    with api_client(api_server, token=None) as page:
        page.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click")
    own = suppressions.get(EMAIL, client=redis_client)
    assert own is not None and own["source"] == "callback:local:list-unsubscribe"
    event = {"version": "v2", "type": kind, "email": EMAIL, "meta": meta,
             "description": "550 5.1.1 no such user"}  # fmt: skip
    with api_client(api_server) as http:
        answer = http.post(callback_path(redis_client, "local"), json=event)
        assert answer.status_code == 200, answer.text
    _apply_callbacks(redis_client)
    entry = suppressions.get(EMAIL, client=redis_client)
    assert entry is not None and (entry["reason"], entry["source"]) == (
        kind,
        f"callback:local:{kind}",
    )
    with api_client(api_server, token=None) as page:
        refused = page.post(f"/preferences/{token}", data={"action": "resubscribe"})
    assert "cannot be subscribed again from this page" in refused.text
    assert suppressions.get(EMAIL, client=redis_client) == entry


def test_an_operators_entry_after_ones_own_unsubscribe_cannot_be_lifted(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """An operator who suppresses an address (the API, or an import of a former tool's
    bounces) after the person's own unsubscribe: the person's "Subscribe again" would
    lift the operator's block too, as the first entry stood."""
    _, token, _ = _sent_campaign(redis_client)
    with api_client(api_server, token=None) as page:
        page.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click")
    with api_client(api_server) as http:
        put = http.put(f"/v1/suppressions/{EMAIL}", json={"reason": "manual"})
    assert put.status_code == 200, put.text  # the address was on the list: replaced
    assert (put.json()["reason"], put.json()["source"]) == ("manual", "api")
    assert suppressions.get(EMAIL, client=redis_client) == put.json()
    with api_client(api_server, token=None) as page:
        refused = page.post(f"/preferences/{token}", data={"action": "resubscribe"})
    assert "cannot be subscribed again from this page" in refused.text
    assert suppressions.get(EMAIL, client=redis_client) == put.json()
    # An import does the same, and keeps any other first entry.
    other = "someone@example.com"
    suppressions.add(other, reason="hard_bounce", source="api", client=redis_client)
    redis_client.hdel(store.SUPPRESSIONS_HASH, EMAIL)
    with api_client(api_server, token=None) as page:
        page.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click")
    added = suppressions.add_many(
        [EMAIL, other], reason="bounced", source="import", client=redis_client
    )
    assert added == (0, 2)  # both were on the list (the first replaced)
    assert suppressions.get(EMAIL, client=redis_client)["source"] == "import"  # type: ignore[index]
    assert suppressions.get(other, client=redis_client)["reason"] == "hard_bounce"  # type: ignore[index]
