"""Review E6: a recipient's category opt-outs as later sends honour them (DESIGN §5, §6).

A category switched off in the preference center is checked by each batch like the
suppression list; the message is counted ``suppressed`` and its record says why.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from aiosmtpd.smtp import Envelope

from dispatch import campaign_reads, campaigns, preferences, store, suppressions
from dispatch.ledger import parse_record
from dispatch.settings import Settings
from tests import helpers
from tests.api_server import ApiServer
from tests.api_support import api_client, covers
from tests.helpers import create_held, recipients, run_batches, run_inline, smtp_provider
from tests.http_sink import HttpSink
from tests.smtp_server import SmtpTestServer

FAST = Settings(retry_base_seconds=0.05)
OPTED_OUT_OF_A = 'opted out of category "A" in the preference center'


def _records(r: redis.Redis, campaign_id: str) -> dict[int, dict[str, Any]]:
    raw = r.hgetall(store.ledger_key(campaign_id))
    return {int(seq): rec for seq, rec in ((s, parse_record(v)) for s, v in raw.items()) if rec}


def _preferences_path(smtp: SmtpTestServer, to: str) -> str:
    message = next(m.message for m in smtp.messages if m.rcpt_tos == [to])
    match = re.fullmatch(r"<(.+)>", message["List-Unsubscribe"])
    assert match is not None
    return urlsplit(match.group(1)).path.replace("/u/", "/preferences/")


@covers("POST /preferences/{token}", "GET /v1/campaigns/{campaign_id}/messages")
def test_a_category_opt_out_skips_that_category_only_and_says_why(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Ann and Kai switch category A off on the page; a later campaign in A skips them
    (whatever the spelling of their address: case, the domain in Unicode or IDNA form),
    counted ``suppressed`` with a detail naming the opt-out (it said "on the
    suppression list", which sent an operator looking for an entry there is none of);
    Bo, on the list, is named so; a campaign in B reaches Ann and Kai."""
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port, preference_center="system")
        first = [{"email": "Ann@Example.com"}, {"email": "kai@Bücher.example"}]
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": first}
        run_inline(redis_client, {**body, "category": "A"}, FAST)
        run_inline(redis_client, {**body, "category": "B"}, FAST)
        with api_client(api_server, token=None) as http:
            for to in ("Ann@example.com", "kai@xn--bcher-kva.example"):
                form = {"action": "save", "shown": ["A", "B"], "category": ["B"]}
                saved = http.post(_preferences_path(smtp, to), data=form)
                assert saved.status_code == 200 and 'id="saved"' in saved.text
        suppressions.add("bo@example.com", reason="unsubscribed", source="test")
        smtp.messages.clear()
        later = [
            {"email": "ANN@example.COM"},
            {"email": "Kai@xn--BCHER-kva.example"},
            {"email": "bo@example.com"},
            {"email": "cy@example.com"},
        ]
        in_a, _ = run_inline(redis_client, {**body, "recipients": later, "category": "A"}, FAST)
        assert sorted(m.rcpt_tos[0] for m in smtp.messages) == ["cy@example.com"]
        smtp.messages.clear()
        in_b, _ = run_inline(redis_client, {**body, "recipients": later, "category": "B"}, FAST)
        assert len(smtp.messages) == 3  # all but Bo
    summary = campaign_reads.campaign_summary(in_a, redis_client)
    assert (summary["sent"], summary["suppressed"], summary["queued"]) == (1, 3, 0)
    with api_client(api_server) as http:
        page = http.get(f"/v1/campaigns/{in_a}/messages", params={"status": "suppressed"})
    assert page.status_code == 200
    details = {m["email"]: m["detail"] for m in page.json()["items"]}
    assert details == {
        "ANN@example.COM": OPTED_OUT_OF_A,
        "Kai@xn--BCHER-kva.example": OPTED_OUT_OF_A,
        "bo@example.com": "on the suppression list",
    }
    summary = campaign_reads.campaign_summary(in_b, redis_client)
    assert (summary["sent"], summary["suppressed"]) == (3, 1)


def test_an_opt_out_during_a_campaign_applies_from_its_next_batch(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three switch A off while the first batch (of 3) is on the wire: the one in a
    later batch is skipped, the two of the batch already claimed are sent (each batch
    checks as it starts); a redelivery of the first batch changes nothing; every
    message is counted once (sent + suppressed = total)."""
    monkeypatch.setenv("DISPATCH_BATCH_SIZE", "3")
    redis_client.sadd(store.CATEGORIES_SET, "A", "B")
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port, preference_center="system")

        def opt_out_at_first_message(envelope: Envelope) -> None:
            if not smtp.messages:
                for email in ("user0@example.com", "USER1@example.com", "user4@example.com"):
                    preferences.set_choices(email, {"B"}, client=redis_client)

        smtp.handler.data_reply = opt_out_at_first_message
        body = {"provider": "local", "subject": "s", "html": "h", "category": "A"}
        cid, batches = create_held(redis_client, {**body, "recipients": recipients(9)})
        run_batches(batches, FAST)
        run_batches(batches[:1], FAST)  # the first batch handed out again
        received = sorted(m.rcpt_tos[0] for m in smtp.messages)
    assert received == [f"user{i}@example.com" for i in range(9) if i != 4]
    states = {seq: rec["state"] for seq, rec in _records(redis_client, cid).items()}
    assert states == {seq: "sent" if seq != 4 else "suppressed" for seq in range(9)}
    assert _records(redis_client, cid)[4]["detail"] == OPTED_OUT_OF_A
    campaigns.finish_if_done(cid, redis_client)
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["sent"], summary["suppressed"], summary["queued"]) == (8, 1, 0)
    assert summary["status"] == "completed"


def test_a_batch_claimed_by_its_load_leaves_the_opted_out_unclaimed(
    redis_client: redis.Redis,
) -> None:
    """A Generic HTTP batch goes out as one chunk, claimed by the load itself: the
    addresses opted out of A (a non-ASCII local part switched off in its decomposed
    spelling, the campaign holding the composed one) are neither claimed nor sent, and
    are counted ``suppressed`` once."""
    redis_client.sadd(store.CATEGORIES_SET, "A")
    preferences.set_choices("jo\u0308hn@example.com", set(), client=redis_client)
    preferences.set_choices("USER1@example.com", set(), client=redis_client)
    people = [*recipients(3), {"email": "j\u00f6hn@example.com"}]
    with HttpSink() as sink:
        helpers.http_provider(redis_client, sink.url)
        body = {"provider": "esp", "subject": "s", "html": "h", "category": "A"}
        cid, _ = run_inline(redis_client, {**body, "recipients": people}, FAST)
        sent = sorted(m["to"] for request in sink.requests for m in request.json()["msgs"])
    assert sent == ["user0@example.com", "user2@example.com"]
    records = _records(redis_client, cid)
    assert {seq for seq, rec in records.items() if rec["state"] == "suppressed"} == {1, 3}
    assert {records[1]["detail"], records[3]["detail"]} == {OPTED_OUT_OF_A}
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["sent"], summary["suppressed"], summary["queued"]) == (2, 2, 0)


@covers("GET /preferences/{token}", "DELETE /v1/suppressions/{email}")
def test_after_unsubscribe_from_all_is_removed_the_category_choices_stand(
    api_server: ApiServer, redis_client: redis.Redis
) -> None:
    """Ann switches A off, then unsubscribes from all: the page shows that, and nothing
    reaches her. Her entry removed (DELETE), the page shows her switches again as she
    left them (A off, B on) and sends follow them: a campaign in A skips her, one in B
    reaches her."""
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port, preference_center="system")
        body = {"provider": "local", "subject": "s", "html": "h"}
        ann = [{"email": "ann@example.com"}]
        run_inline(redis_client, {**body, "recipients": ann, "category": "A"}, FAST)
        run_inline(redis_client, {**body, "recipients": ann, "category": "B"}, FAST)
        path = _preferences_path(smtp, "ann@example.com")
        with api_client(api_server, token=None) as http:
            form = {"action": "save", "shown": ["A", "B"], "category": ["B"]}
            assert http.post(path, data=form).status_code == 200
            gone = http.post(path, data={"action": "unsubscribe-all"})
            assert 'id="unsubscribed-all"' in gone.text and 'name="category"' not in gone.text
        smtp.messages.clear()
        in_b, _ = run_inline(redis_client, {**body, "recipients": ann, "category": "B"}, FAST)
        assert smtp.messages == []
        assert campaign_reads.get_counters(in_b, redis_client)["suppressed"] == 1
        with api_client(api_server) as api:
            assert api.delete("/v1/suppressions/Ann@Example.com").status_code == 204
        with api_client(api_server, token=None) as http:
            page = http.get(path).text
        assert 'id="unsubscribed-all"' not in page
        assert re.search(r'name="category" value="A"\s*>', page)  # A unchecked
        assert re.search(r'name="category" value="B"\s*checked>', page)
        in_a, _ = run_inline(redis_client, {**body, "recipients": ann, "category": "A"}, FAST)
        assert smtp.messages == []
        in_b, _ = run_inline(redis_client, {**body, "recipients": ann, "category": "B"}, FAST)
        assert [m.rcpt_tos for m in smtp.messages] == [["ann@example.com"]]
    assert _records(redis_client, in_a)[0]["detail"] == OPTED_OUT_OF_A
