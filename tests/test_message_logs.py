"""Messages that did not go out are logged one by one, with their meta as a field (DESIGN
§8: structured logs with campaign, batch and meta fields), up to a cap per batch run.

Staged with aiosmtpd refusing some recipients and a template that fails for one."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import redis

from dispatch import campaign_reads, campaigns, store
from dispatch.ledger import claim_record
from dispatch.logs import JsonFormatter
from dispatch.message_logs import LINES_PER_RUN
from dispatch.settings import Settings
from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer

FAST = Settings(retry_base_seconds=0.05, retry_max_seconds=0.1, inline_retry_seconds=5.0)


def _message_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The dispatch.messages records as the JSON log prints them."""
    formatter = JsonFormatter()
    return [
        json.loads(formatter.format(r)) for r in caplog.records if r.name == "dispatch.messages"
    ]


def _campaign(r: redis.Redis, server: SmtpTestServer, people: list[dict[str, Any]]) -> str:
    smtp_provider(r, server.port, max_connections=1)
    body = {
        "provider": "local",
        "subject": "Hi {{ name }}",
        "html": "<p>{{ 100 // share }}</p>",
        "recipients": people,
    }
    cid, batches = create_held(r, body)
    run_batches(batches, FAST, rounds=3)
    campaigns.finish_if_done(cid, r)
    return cid


def _people(n: int) -> list[dict[str, Any]]:
    people = recipients(n)
    for person in people:
        person["vars"]["share"] = 4
    return people


def test_each_failed_message_is_logged_with_its_meta_and_context(
    redis_client: redis.Redis, smtp: SmtpTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    people = _people(6)
    people[4]["vars"]["share"] = 0  # 100 // 0: this recipient's message cannot be built
    smtp.handler.rcpt_reply = lambda a: "550 5.1.1 no such user" if a.startswith("user2@") else None
    caplog.set_level(logging.INFO, logger="dispatch.messages")
    cid = _campaign(redis_client, smtp, people)

    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["sent"], summary["failed"]) == (4, 2)
    lines = {line["seq"]: line for line in _message_lines(caplog)}
    assert sorted(lines) == [2, 4]  # the sent messages are not logged
    send_date = summary["send_date"]
    send_date = send_date.decode() if isinstance(send_date, bytes) else send_date
    for seq, line in lines.items():
        email = f"user{seq}@example.com"
        assert line["meta"] == f"{email}|{FAST.account_id}|{cid}|{send_date}|0|default|{seq}|"
        assert (line["campaign_id"], line["batch"], line["provider"]) == (cid, 0, "local")
        assert (line["level"], line["state"]) == ("WARNING", "failed")
        assert cid in line["message"]
    assert lines[2]["error_class"] == "SMTP invalid email ID"
    assert "550 5.1.1 no such user" in lines[2]["message"]
    assert lines[4]["error_class"] == "Invalid message"
    assert "division" in lines[4]["message"]


def test_a_retried_message_is_logged_at_info_with_its_wait(
    redis_client: redis.Redis, smtp: SmtpTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    tried: list[str] = []

    def once_busy(address: str) -> str | None:
        if address.startswith("user1@") and address not in tried:
            tried.append(address)
            return "451 4.3.0 try again later"
        return None

    smtp.handler.rcpt_reply = once_busy
    caplog.set_level(logging.INFO, logger="dispatch.messages")
    cid = _campaign(redis_client, smtp, _people(3))

    assert campaign_reads.campaign_summary(cid, redis_client)["sent"] == 3
    [line] = _message_lines(caplog)
    assert (line["level"], line["state"], line["seq"]) == ("INFO", "retry", 1)
    assert line["meta"].startswith(f"user1@example.com|{FAST.account_id}|{cid}|")
    assert "451 4.3.0 try again later" in line["message"] and "retried in" in line["message"]


def test_past_the_cap_one_closing_line_counts_the_rest(
    redis_client: redis.Redis, smtp: SmtpTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    n = LINES_PER_RUN + 7
    smtp.handler.rcpt_reply = lambda address: "550 5.1.1 no such user"
    caplog.set_level(logging.INFO, logger="dispatch.messages")
    cid = _campaign(redis_client, smtp, _people(n))

    assert campaign_reads.campaign_summary(cid, redis_client)["failed"] == n
    lines = _message_lines(caplog)
    per_message = [line for line in lines if "seq" in line]
    assert len(per_message) == LINES_PER_RUN
    assert len({line["seq"] for line in per_message}) == LINES_PER_RUN
    [closing] = [line for line in lines if "seq" not in line]
    assert closing["unlogged"] == {"failed": 7}
    assert (closing["campaign_id"], closing["batch"]) == (cid, 0)
    assert f"/v1/campaigns/{cid}/messages?status=" in closing["message"]


def test_claims_a_lost_run_left_are_logged_as_unknown_with_their_seqs(
    redis_client: redis.Redis, smtp: SmtpTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker killed during a send leaves its messages claimed: the next run records
    them unknown (never resent), and says which."""
    smtp_provider(redis_client, smtp.port, max_connections=1)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": _people(4)}
    cid, batches = create_held(redis_client, body)
    for seq in (1, 3):  # as a dead worker's claims
        redis_client.hset(store.ledger_key(cid), str(seq), claim_record(1))
    caplog.set_level(logging.INFO, logger="dispatch.messages")
    run_batches(batches, FAST, rounds=3)

    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["sent"], summary["unknown"]) == (2, 2)
    [line] = _message_lines(caplog)
    assert (line["state"], line["seqs"], line["campaign_id"], line["batch"]) == (
        "unknown",
        [1, 3],
        cid,
        0,
    )
    assert "seqs 1, 3" in line["message"]


def test_a_long_detail_is_logged_cut_as_the_ledger_keeps_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server's reply may quote the whole message (aiosmtplib takes up to 32 KB): the
    line carries what the ledger keeps, and says how long the reply was."""
    from dispatch.message_logs import DETAIL_LOGGED, OutcomeLog

    lines = OutcomeLog("c-long", 1, "local")
    with caplog.at_level(logging.INFO, logger="dispatch.messages"):
        lines.note(1, "meta", "failed", "SMTP dispatching failed", "550 " + "x" * 32_000)
    [line] = _message_lines(caplog)
    assert len(line["message"]) < DETAIL_LOGGED + 200
    assert line["message"].endswith("... (32004 characters)")
