"""Review D25: the ``gmail`` kind end to end (DESIGN §2), over the real API."""

from __future__ import annotations

import time

import httpx
import redis

from dispatch import store
from dispatch.effects import apply_batch
from tests.api_server import ApiServer
from tests.api_support import api_client
from tests.callback_support import callback_entries, post


def test_a_gmail_from_address_other_than_the_login_is_warned_about(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Gmail sends as the account it logs in to: a From that is not one of the account's
    verified "Send mail as" addresses is rewritten to the account's own address. Saved
    without a word, every campaign went out under another sender than the one given."""
    body = {"kind": "gmail", "username": "team@acme.example", "password": "abcdefghijklmnop"}
    with api_client(api_server) as api:
        view = api.put("/v1/providers/gm", json={**body, "from_address": "deals@acme.example"})
        assert view.status_code in (200, 201), view.text
        warned = [w for w in view.json()["warnings"] if "from_address" in w]
        assert len(warned) == 1 and "Send mail as" in warned[0], view.json()["warnings"]
        assert "'deals@acme.example'" in warned[0] and "'team@acme.example'" in warned[0]
        # The login's own address, in any case: nothing to say.
        view = api.put("/v1/providers/gm", json={**body, "from_address": "Team@ACME.example"})
        assert not any("from_address" in w for w in view.json()["warnings"]), view.json()
        # Pointed at another server (a test's), the rule is not Gmail's.
        local = {**body, "from_address": "deals@acme.example", "host": "127.0.0.1", "port": 2465}
        view = api.put("/v1/providers/gm", json=local)
        assert not any("from_address" in w for w in view.json()["warnings"]), view.json()


def test_a_bounce_time_far_ahead_of_now_is_replaced_by_the_time_received(
    api: httpx.Client, paths: dict[str, str], redis_client: redis.Redis
) -> None:
    """The Gmail seed's legacy form, ``ts`` as the sender's script wrote it: 99999999999
    (seconds of the year 5138, just under the milliseconds cut) was published as the
    bounce's time, after every later event of the address for a consumer ordering by
    ``ts``, while a negative one was already ignored. A time ahead of now is no time a
    bounce happened: the time received stands in for it, as for any unusable ``ts``."""
    payload = {
        "event": "softbounce",
        "data": [
            {"e": "far@example.com", "ts": 99999999999},
            {"e": "soon@example.com", "ts": str(int(time.time()) + 10 * 86400)},
            {"e": "past@example.com", "ts": 1735689600000},  # milliseconds
        ],
    }
    before = time.time()
    answer = post(api, paths["mail"], payload)
    assert (answer.status_code, answer.json()["status"]) == (200, "success"), answer.text
    for batch in redis_client.hkeys(store.CALLBACK_INBOX_HASH):  # as the events task does
        apply_batch(batch, redis_client)
    times = {e["email"]: e["ts"] for e in callback_entries(redis_client)}
    assert times["past@example.com"] == 1735689600.0
    for email in ("far@example.com", "soon@example.com"):
        assert before - 1 <= times[email] <= time.time() + 1, (email, times)
