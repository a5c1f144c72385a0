"""Review F14: what a chunk cut at the batch run's deadline records, message by message.

V12 cut a chunk's hand-over (``session.send``) just before Celery's time limit, and
every message of the chunk ended ``unknown`` (the operator cannot tell whether the
person got it; never resent). But the SMTP adapter knows, message by message, more than
that: a message answered ``250`` before the cut was taken, and one whose content's end
(the final dot of DATA) was never written was certainly not delivered. Only a message
whose content went out and whose answer did not come back is unknown. Now the answered
ones are recorded as answered, those never handed over are given back (their claims
returned, not counted as attempts) and sent by the next run, and a message sent to its
To but cut while being sent to put-off Cc or Bcc recipients is ``sent``.

The run's deadline is made short here (``cut_after``), and a real aiosmtpd server
stalls, for one message, its reply to a RCPT or to the end of the data.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from aiosmtpd.smtp import SMTP, Envelope, Session

from dispatch import campaigns, sending, store
from dispatch.ledger import parse_record
from dispatch.settings import Settings
from providers.base import OutcomeStatus
from providers.config import parse_provider_config
from providers.smtp import SmtpTransport
from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.smtp_server import Handler, SmtpTestServer
from tests.test_review_n3_copies import _message as with_copies
from tests.test_smtp_sending import _config, _message

CUT = 1.5  # the run's deadline, seconds into it
STALL = 4.0  # a stalled reply comes this late: after the cut


@dataclass
class StallingHandler(Handler):
    """:class:`Handler` that answers, once each, the RCPT of an address in
    ``rcpt_stalls`` and the end of the data of a message to one in ``data_stalls``
    ``STALL`` seconds late."""

    rcpt_stalls: set[str] = field(default_factory=set)
    data_stalls: set[str] = field(default_factory=set)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address in self.rcpt_stalls:
            self.rcpt_stalls.discard(address)
            await asyncio.sleep(STALL)
        return await super().handle_RCPT(server, session, envelope, address, options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        stalled = self.data_stalls & set(envelope.rcpt_tos)
        if stalled:
            self.data_stalls -= stalled
            await asyncio.sleep(STALL)
        return await super().handle_DATA(server, session, envelope)


def _server(pipelining: bool, **stalls: set[str]) -> SmtpTestServer:
    server = SmtpTestServer()
    server.handler = StallingHandler(pipelining=pipelining, **stalls)
    return server


def _records(r: redis.Redis, campaign_id: str, n: int) -> list[dict[str, Any]]:
    ledger = store.ledger_key(campaign_id)
    records = [parse_record(r.hget(ledger, str(seq))) for seq in range(n)]
    assert all(rec is not None for rec in records), records
    return records  # type: ignore[return-value]


def _run_cut(
    r: redis.Redis, monkeypatch: pytest.MonkeyPatch, server: SmtpTestServer, **body: Any
) -> tuple[str, list[sending.BatchResult]]:
    """One campaign of one batch, in one chunk on one connection, its run's deadline
    ``CUT`` seconds in (then its next runs', which nothing stalls)."""
    monkeypatch.setattr(sending, "cut_after", lambda visibility_timeout: CUT)
    smtp_provider(r, server.port, timeout=STALL * 2, data_timeout=STALL * 2, max_connections=1)
    fields = {"id": "cut", "provider": "local", "subject": "s", "html": "<p>h</p>", **body}
    campaign_id, batches = create_held(r, fields)
    results = run_batches(batches, Settings(), rounds=3)
    campaigns.finish_if_done(campaign_id, r)
    return campaign_id, results


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_cut_while_a_message_s_end_is_unanswered_gives_the_rest_back(
    pipelining: bool, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four messages in one chunk; the server answers the end of the second's data after
    the cut. The first was answered 250: sent (it was recorded unknown). The second is
    unknown. The third and fourth never had their content written (with PIPELINING the
    third's MAIL, RCPT and DATA went out with the second's content, not its own): they
    were recorded unknown and never sent; now they are given back, not counted as
    attempts, and the next run sends them."""
    with _server(pipelining, data_stalls={"user1@example.com"}) as server:
        campaign_id, results = _run_cut(redis_client, monkeypatch, server, recipients=recipients(4))
        received = Counter(m.rcpt_tos[0] for m in server.messages)
    assert results[0].counts.get("handed_on") == 2, results[0]
    records = _records(redis_client, campaign_id, 4)
    assert [rec["state"] for rec in records] == ["sent", "unknown", "sent", "sent"], records
    assert [rec.get("attempts") for rec in records] == [1, 1, 1, 1], records
    assert "time limit" in records[1]["detail"], records[1]
    # (the server, whose connection was dropped, did not record the second)
    assert received == {f"user{i}@example.com": 1 for i in (0, 2, 3)}, received


def test_a_cut_while_a_rcpt_is_unanswered_gives_that_message_back(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without PIPELINING, one command at a time: the server answers the second
    message's RCPT after the cut. Its content was never sent: it and those after it are
    given back (they were recorded unknown), and the next run sends them."""
    with _server(False, rcpt_stalls={"user1@example.com"}) as server:
        campaign_id, results = _run_cut(redis_client, monkeypatch, server, recipients=recipients(4))
        received = Counter(m.rcpt_tos[0] for m in server.messages)
    assert results[0].counts.get("handed_on") == 3, results[0]
    records = _records(redis_client, campaign_id, 4)
    assert [rec["state"] for rec in records] == ["sent"] * 4, records
    assert received == {f"user{i}@example.com": 1 for i in range(4)}, received


def test_a_cut_while_sending_to_put_off_cc_leaves_the_message_sent(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server puts the Cc off (452: too many recipients) and takes the message for
    the To; the Cc's own transaction, later, is answered after the cut. The message was
    sent (recorded unknown): now ``sent``, its detail saying the Cc's copy may not have
    gone out. It is not sent again."""
    cc = "boss@example.com"
    put_off = [True]

    def rcpt_reply(address: str) -> str | None:
        if address == cc and put_off:
            put_off.clear()
            return "452 4.5.3 Too many recipients"
        return None

    with _server(True, data_stalls={cc}) as server:
        server.handler.rcpt_reply = rcpt_reply
        campaign_id, results = _run_cut(
            redis_client, monkeypatch, server, recipients=recipients(1), cc=[cc]
        )
        received = [m.rcpt_tos for m in server.messages]
    [record] = _records(redis_client, campaign_id, 1)
    assert record["state"] == "sent", record
    assert cc in record["detail"], record
    assert received == [["user0@example.com"]], received
    assert "handed_on" not in results[0].counts, results[0]


@pytest.mark.parametrize("pipelining", [True, False])
def test_the_adapter_reports_what_it_knows_when_its_send_is_cancelled(
    pipelining: bool,
) -> None:
    """The SMTP session, its send cancelled while the server has not answered the end
    of the second message's data, says: the first sent, the second unknown (not
    reported), the third and fourth never handed over."""

    async def go(port: int) -> Any:
        config = _config(port, "none", timeout=STALL * 2, data_timeout=STALL * 2)
        messages = [_message(i, f"user{i}@example.com") for i in range(4)]
        transport = SmtpTransport(parse_provider_config(config))  # type: ignore[arg-type]
        async with transport.session() as session:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(CUT):
                    await session.send(messages)
            return session.cut_short()

    with _server(pipelining, data_stalls={"user1@example.com"}) as server:
        report = asyncio.run(go(server.port))
    assert [(o.seq, o.status) for o in report.outcomes] == [(0, OutcomeStatus.SENT)], report
    assert report.not_handed_over == [2, 3], report


def test_a_message_whose_copies_never_went_is_reported_sent_naming_them() -> None:
    """Two messages whose Cc and Bcc get a copy of their own (the To's one-click
    unsubscribe link is left out of it), sent once the To has the message: cancelled
    while the second's end is unanswered, the first was sent, its detail naming the Cc
    and the Bcc, whose copy may not have gone; the second is unknown (not reported)."""

    async def go(port: int) -> Any:
        config = _config(port, "none", timeout=STALL * 2, data_timeout=STALL * 2)
        transport = SmtpTransport(parse_provider_config(config))  # type: ignore[arg-type]
        async with transport.session() as session:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(CUT):
                    await session.send([with_copies(0), with_copies(1, "bob@example.com")])
            return session.cut_short()

    with _server(True, data_stalls={"bob@example.com"}) as server:
        report = asyncio.run(go(server.port))
    [sent] = report.outcomes
    assert (sent.seq, sent.status) == (0, OutcomeStatus.SENT), report
    assert "boss@example.com" in sent.detail and "archive@example.com" in sent.detail, sent
    assert report.not_handed_over == [], report
