"""A pause or cancel that lands while an SMTP chunk is on the wire (review I23): real Redis,
a real aiosmtpd server, the batch run as a worker runs it.

A sender claims up to four messages of an SMTP chunk at once and sends them one after the
other on its connection. A server may take minutes to answer a message's content (RFC
5321 §4.5.3.2.6: ten minutes), and the others of its chunk went out after that answer,
whatever happened meanwhile: a campaign cancelled while the first waited sent three more
messages once it was answered, long after the cancel said nothing more would go out.
The server here holds its answer to the first message until the batch has seen the
operation (its session told to stop), so the race is the same at every run.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from dispatch import campaign_reads, lifecycle, store
from dispatch.ledger import parse_record
from dispatch.models import MessageState
from providers.smtp import SmtpSession
from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer

N = 8
_STATES = ("queued", "sent", "failed", "suppressed", "cancelled", "expired", "unknown")


@pytest.fixture
def told_to_stop(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Set once the batch tells a session on the wire to stop (it saw the operation)."""
    event = threading.Event()
    original = getattr(SmtpSession, "stop", None)

    def stop(self: SmtpSession) -> None:
        event.set()
        if original is not None:
            original(self)

    monkeypatch.setattr(SmtpSession, "stop", stop, raising=False)
    yield event


def _held_first_message(smtp: SmtpTestServer, until: threading.Event) -> threading.Event:
    """The server holds its answer to user0's content until ``until`` (at most 4 s);
    returns the event set once it holds it."""
    holding = threading.Event()

    def data_reply(envelope: Any) -> None:
        if envelope.rcpt_tos[0] == "user0@example.com":
            holding.set()
            until.wait(4)

    smtp.handler.data_reply = data_reply  # type: ignore[assignment]
    return holding


def _start(r: redis.Redis, smtp: SmtpTestServer) -> tuple[str, threading.Thread]:
    """One connection (one chunk of four at a time), the batch running in a thread."""
    smtp_provider(r, smtp.port, max_connections=1)
    body = {"provider": "local", "subject": "Hi", "html": "<p>hi</p>", "recipients": recipients(N)}
    cid, batches = create_held(r, body)
    runner = threading.Thread(target=run_batches, args=(batches,))
    runner.start()
    return cid, runner


def _balanced(summary: dict[str, Any]) -> bool:
    return sum(summary[s] for s in _STATES) == summary["total"]


@pytest.mark.parametrize("pipelining", [False, True])
def test_a_cancel_while_a_chunk_is_on_the_wire_sends_none_of_its_other_messages(
    redis_client: redis.Redis, smtp: SmtpTestServer, told_to_stop: threading.Event, pipelining: bool
) -> None:
    # With PIPELINING the next message's commands went out with the first one's content.
    smtp.handler.pipelining = pipelining
    holding = _held_first_message(smtp, told_to_stop)
    cid, runner = _start(redis_client, smtp)
    assert holding.wait(10), "the first message never reached the server"
    answered = lifecycle.cancel(cid, client=redis_client)
    assert answered["status"] == "cancelled" and _balanced(answered)
    runner.join(20)
    assert not runner.is_alive()

    received = [m.rcpt_tos[0] for m in smtp.messages]
    # The message on the wire at the cancel ends as it really did; nothing else went out.
    assert received == ["user0@example.com"], received
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert _balanced(summary)
    assert (summary["sent"], summary["cancelled"], summary["queued"]) == (1, N - 1, 0)
    for seq in range(1, N):
        rec = parse_record(redis_client.hget(store.ledger_key(cid), str(seq)))
        assert rec is not None and rec["state"] == MessageState.CANCELLED.value, (seq, rec)


def test_a_pause_while_a_chunk_is_on_the_wire_keeps_the_rest_for_the_resume(
    redis_client: redis.Redis, smtp: SmtpTestServer, told_to_stop: threading.Event
) -> None:
    holding = _held_first_message(smtp, told_to_stop)
    cid, runner = _start(redis_client, smtp)
    assert holding.wait(10), "the first message never reached the server"
    assert lifecycle.pause(cid, client=redis_client)["status"] == "paused"
    runner.join(20)
    assert not runner.is_alive()
    assert [m.rcpt_tos[0] for m in smtp.messages] == ["user0@example.com"]
    paused = campaign_reads.campaign_summary(cid, redis_client)
    assert _balanced(paused) and (paused["sent"], paused["queued"]) == (1, N - 1)

    smtp.handler.data_reply = lambda envelope: None  # type: ignore[assignment]
    batches: list[tuple[str, int]] = []
    lifecycle.resume(cid, client=redis_client, enqueue=lambda c, b: batches.append((c, b)))
    run_batches(batches)
    done = campaign_reads.campaign_summary(cid, redis_client)
    assert (done["status"], done["sent"], done["queued"]) == ("completed", N, 0)
    counts = Counter(m.rcpt_tos[0] for m in smtp.messages)
    assert len(counts) == N and max(counts.values()) == 1
    # Held back, never handed over: not an attempt.
    for seq in range(N):
        rec = parse_record(redis_client.hget(store.ledger_key(cid), str(seq)))
        assert rec is not None and (rec["state"], rec["attempts"]) == ("sent", 1), (seq, rec)
