"""Review L14: sends cut short at a deadline on the paths reviews F14 and J14 left
untried; what the session says (``Session.cut_short``) must never give back a message
the provider may have taken, nor call ``sent`` one it did not answer.

* SMTP: the chunk goes on over a second connection (the per-connection cap reached, or
  the server closing with ``421`` after the first message) and the deadline comes while
  that connection's first message's end is unanswered.
* Generic HTTP: a batch the provider refused as too large (``413``) goes in halves; the
  deadline comes while the first half awaits its answer, or the second.
* A campaign whose every batch run is cut short, through a server that misbehaves.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from dispatch import campaigns, sending
from dispatch.settings import Settings
from providers.base import CutShort, OutcomeStatus
from providers.config import parse_provider_config
from providers.http import HttpTransport
from providers.smtp import SmtpTransport
from tests.chaos_smtp import ChaosSmtpServer
from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.http_sink import HttpSink, Reply
from tests.smtp_server import SmtpTestServer
from tests.test_chaos import check_invariants
from tests.test_http_provider import http_config, message
from tests.test_review_f14_cut_outcomes import StallingHandler
from tests.test_review_j14_adapter_cut import STALL, _cut
from tests.test_smtp_sending import _config, _message


@pytest.mark.parametrize(
    ("pipelining", "cap", "closes"), [(True, 2, False), (False, 0, True), (True, 0, True)]
)
def test_a_cut_on_the_chunk_s_second_connection(pipelining: bool, cap: int, closes: bool) -> None:
    """Four messages; a new connection after the second (``cap``: the configured cap of
    two a connection, else the server answers the second's MAIL ``421`` and closes:
    it is sent again on the new one). That connection's first message, the third, has
    its end answered after the deadline: unknown. The first two were sent, the fourth
    (its content never written) was not."""
    server = SmtpTestServer()
    server.handler = StallingHandler(pipelining=pipelining, data_stalls={"u2@example.com"})
    mails: list[str] = []

    def mail_reply(address: str) -> str | None:
        mails.append(address)
        return "421 4.3.2 closing" if closes and len(mails) == 2 else None

    server.handler.mail_reply = mail_reply
    with server:
        config = _config(server.port, "none", timeout=STALL * 2, data_timeout=STALL * 2)
        if cap:
            config["max_messages_per_connection"] = cap
        transport = SmtpTransport(parse_provider_config(config))  # type: ignore[arg-type]
        known = asyncio.run(_cut(transport, [_message(i, f"u{i}@example.com") for i in range(4)]))
        received = [m.rcpt_tos for m in server.messages]
        connections = server.handler.connections
    assert [(o.seq, o.status) for o in known.outcomes] == [
        (0, OutcomeStatus.SENT),
        (1, OutcomeStatus.SENT),
    ], known
    assert known.not_handed_over == [3], known
    assert received == [["u0@example.com"], ["u1@example.com"]], received
    assert connections == 2, connections


def _batch_cut(*replies: Reply) -> tuple[CutShort, list[Any]]:
    with HttpSink() as sink:
        sink.script(*replies)
        body = {
            "msgs": [
                {
                    "to": "$$To",
                    "subject": "$$Subject",
                    "html": "$$HTML",
                    "from": "$$FromName <$$FromAddress>",
                }
            ]
        }
        config = http_config(f"{sink.url}/send", timeout=10, batch=True, body=body)
        transport = HttpTransport(config, allow_private=True)
        known = asyncio.run(_cut(transport, [message(i) for i in range(4)]))
        sent = [[m["to"] for m in r.json()["msgs"]] for r in sink.requests]
    return known, sent


def test_a_batch_cut_while_its_first_half_awaits_its_answer() -> None:
    """413 to the four, then the first half's answer after the deadline: those two may
    have been taken (unknown); the second half was never written: not sent."""
    known, sent = _batch_cut(Reply(413), Reply(200, delay=STALL))
    assert len(sent) == 2, sent
    assert known == CutShort([], [2, 3]), known


def test_a_batch_cut_while_its_second_half_awaits_its_answer() -> None:
    known, sent = _batch_cut(Reply(413), Reply(200), Reply(200, delay=STALL))
    assert len(sent) == 3, sent
    assert [(o.seq, o.status) for o in known.outcomes] == [
        (0, OutcomeStatus.SENT),
        (1, OutcomeStatus.SENT),
    ], known
    assert known.not_handed_over == [], known


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_campaign_cut_again_and_again_takes_no_address_twice(
    pipelining: bool, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch run is cut 0.3 s in, through a server that refuses, drops and stalls
    (0.6 s, past the cut) now and then: many chunks are cut, their messages answered,
    unknown or given back to the next run. At the end no address was taken twice, what
    the ledger calls ``sent`` was taken, ``failed`` never, and the counters add up."""
    monkeypatch.setattr(sending, "cut_after", lambda visibility_timeout: 0.3)
    smtp = ChaosSmtpServer(seed=5, rate=0.2, stall=0.6).start()
    smtp.handler.pipelining = pipelining
    try:
        smtp_provider(
            redis_client, smtp.port, max_connections=2, timeout=3, data_timeout=3,
            max_messages_per_connection=3,
        )  # fmt: skip
        body = {"id": "cuts", "provider": "local", "subject": "s", "html": "h",
                "recipients": recipients(60)}  # fmt: skip
        campaign_id, batches = create_held(redis_client, body)
        settings = Settings(retry_max_seconds=0.2, inline_retry_seconds=0.05)
        results = run_batches(batches, settings, rounds=200)
        campaigns.finish_if_done(campaign_id, redis_client)
        check_invariants(redis_client, campaign_id, smtp)
    finally:
        smtp.stop()
    assert sum(result.counts.get("handed_on", 0) for result in results) > 0, results
