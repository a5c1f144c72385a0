"""Review D13: an operator's entry that replaces a person's own unsubscribe (Z12) is no
new suppression. ``PUT /v1/suppressions/{email}`` answered 201 Created for it and ``dispatch
suppressions add --file`` counted it added, although the address was on the list already
(the list's size, ``dispatch_suppressions``, did not move); the API's own convention is
"201 new, 200 replaced" (providers), and HTTP's for a PUT on an existing resource."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from dispatch import store, suppressions
from dispatch.cli import main
from tests.api_server import ApiServer
from tests.api_support import api_client
from tests.test_review_y3_pages import _token_for

EMAIL = "person@example.com"


def _own_unsubscribe(api_server: ApiServer, r: redis.Redis) -> str:
    """``EMAIL`` unsubscribed by the one-click of its message; its token."""
    token = _token_for(r, EMAIL, "news")
    with api_client(api_server, token=None) as page:
        assert page.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click").status_code == 200
    own = suppressions.get(EMAIL, client=r)
    assert own is not None and own["source"] == "callback:local:list-unsubscribe"
    return token


def test_a_put_that_replaces_ones_own_unsubscribe_answers_200_with_the_new_entry(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    token = _own_unsubscribe(api_server, redis_client)
    size = redis_client.hlen(store.SUPPRESSIONS_HASH)
    with api_client(api_server) as http:
        put = http.put(f"/v1/suppressions/{EMAIL}", json={"reason": "manual", "source": "crm"})
        assert put.status_code == 200, put.text
        assert (put.json()["reason"], put.json()["source"]) == ("manual", "crm")
        assert http.get(f"/v1/suppressions/{EMAIL}").json() == put.json()
        # It stands: the next PUT keeps it (200, the same entry), a new address is 201.
        again = http.put(f"/v1/suppressions/{EMAIL}", json={"reason": "other"})
        assert (again.status_code, again.json()) == (200, put.json())
        assert http.put("/v1/suppressions/new@example.com").status_code == 201
    assert redis_client.hlen(store.SUPPRESSIONS_HASH) == size + 1  # only the new address
    with api_client(api_server, token=None) as page:
        refused = page.post(f"/preferences/{token}", data={"action": "resubscribe"})
    assert "cannot be subscribed again from this page" in refused.text


def test_an_import_counts_a_replaced_own_unsubscribe_already_suppressed(
    api_server: ApiServer,
    redis_client: redis.Redis,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _own_unsubscribe(api_server, redis_client)
    size = redis_client.hlen(store.SUPPRESSIONS_HASH)
    listing = tmp_path / "bounces.txt"
    listing.write_text(f"{EMAIL.upper()}\nfresh@example.com\n", encoding="utf-8")
    capsys.readouterr()

    assert main(["suppressions", "add", "--file", str(listing), "--reason", "bounced"]) == 0
    counts = json.loads(capsys.readouterr().out)

    assert counts == {"added": 1, "already_suppressed": 1, "invalid": 0}
    assert redis_client.hlen(store.SUPPRESSIONS_HASH) == size + counts["added"]
    entry = suppressions.get(EMAIL, client=redis_client)
    assert entry is not None and (entry["reason"], entry["source"]) == ("bounced", "cli")


def test_an_entry_removed_between_an_imports_two_passes_counts_added(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second pass (the replace) finds no entry: the import creates it, and says so."""
    suppressions.add(EMAIL, reason="manual", source="api", client=redis_client)
    real_set = suppressions._set

    def lifted_meanwhile(pipe: object, key: str, entry: bytes) -> None:
        redis_client.hdel(store.SUPPRESSIONS_HASH, key)
        real_set(pipe, key, entry)

    monkeypatch.setattr(suppressions, "_set", lifted_meanwhile)
    assert suppressions.add_many([EMAIL], reason="bounced", source="cli", client=redis_client) == (
        1,
        0,
    )
    assert suppressions.get(EMAIL, client=redis_client)["reason"] == "bounced"  # type: ignore[index]
