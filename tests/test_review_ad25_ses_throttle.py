"""Review AD25: SES's "454 Throttling failure: Maximum sending rate exceeded", staged with
aiosmtpd standing in for email-smtp.<region>.amazonaws.com (STARTTLS with the tests'
certificate, AUTH, SES's replies).

SES answers it to the end of a message (its content's final dot), having dropped the
message. A 454 there was taken as the message's own refusal: the session went on with
the next messages of its chunk at once, each sent into the throttle and dropped too (a
throttled try each), and the provider was held only after the chunk.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import redis
from aiosmtpd.smtp import SMTP, Envelope, Session

from dispatch import campaign_reads, campaigns
from dispatch.provider_store import save_provider
from dispatch.settings import Settings
from providers.base import OutcomeStatus, OutgoingMessage
from providers.config import SesConfig
from providers.smtp import SmtpTransport
from tests.helpers import create_held, recipients, run_batches
from tests.smtp_server import Handler, SmtpTestServer

CREDENTIALS = ("AKIAIOSFODNN7EXAMPLE", "BPeSsmtpPasswordExample0123456789abcdefghij")
RATE = "454 Throttling failure: Maximum sending rate exceeded."


class SesHandler(Handler):
    """Answers as SES does: ``250 Ok <id>``, or SES's reply to the content of the
    messages whose DATA count (from 1) is in ``throttled``."""

    def __init__(self, throttled: set[int]) -> None:
        super().__init__()
        self.throttled = throttled
        self.data_count = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.data_count += 1
        if self.data_count in self.throttled:
            return RATE
        await super().handle_DATA(server, session, envelope)
        return f"250 Ok 0100019276a1b2c3-{self.data_count:06d}-000000"


def _ses(trusted_cert: tuple[Path, Path], throttled: set[int]) -> SmtpTestServer:
    server = SmtpTestServer(security="starttls", credentials=CREDENTIALS, cert=trusted_cert)
    server.handler = SesHandler(throttled)
    return server


def _fields(server: SmtpTestServer, cert: Path) -> dict[str, Any]:
    return {
        "nickname": "ses",
        "kind": "ses",
        "host": "127.0.0.1",
        "port": server.port,
        "security": "starttls",
        "username": CREDENTIALS[0],
        "password": CREDENTIALS[1],
        "tls_ca": cert.read_text(),
        "from_address": "deals@acme.example",
        "max_connections": 1,
    }


def _message(seq: int) -> OutgoingMessage:
    return OutgoingMessage(
        seq=seq,
        to=f"user{seq}@example.com",
        from_address="deals@acme.example",
        subject="s",
        html="<p>h</p>",
        text="h",
        meta=f"c1|{seq}",
        campaign_id="c1",
    )


def test_a_sending_rate_throttle_stops_the_chunk_where_it_is(
    trusted_cert: tuple[Path, Path],
) -> None:
    """The second of four messages is throttled: the two after it are not sent into the
    throttle (they wait, not handed over); the first stays sent with SES's id."""

    async def send(server: SmtpTestServer) -> list[Any]:
        transport = SmtpTransport(SesConfig.model_validate(_fields(server, trusted_cert[0])))
        async with transport.session() as session:
            return await session.send([_message(seq) for seq in range(4)])

    with _ses(trusted_cert, throttled={2}) as server:
        outcomes = asyncio.run(send(server))
        handler = server.handler
        assert isinstance(handler, SesHandler)
        assert handler.data_count == 2  # not 4: nothing more went into the throttle
        assert [m.rcpt_tos for m in server.messages] == [["user0@example.com"]]
    assert [o.status for o in outcomes] == [OutcomeStatus.SENT] + [OutcomeStatus.RETRY] * 3
    assert outcomes[0].provider_message_id == "0100019276a1b2c3-000001-000000"
    assert outcomes[1].throttled and RATE in outcomes[1].detail
    assert all("not handed over" in o.detail for o in outcomes[2:])


def test_a_campaign_throttled_by_ses_sends_each_message_once(
    redis_client: redis.Redis, trusted_cert: tuple[Path, Path]
) -> None:
    """A campaign meeting SES's rate throttle twice completes: nothing failed, every
    recipient received the message once, the throttled ones later."""
    settings = Settings(
        retry_base_seconds=0.05, retry_max_seconds=0.2, inline_retry_seconds=0.5, max_attempts=3
    )
    with _ses(trusted_cert, throttled={3, 7}) as server:
        save_provider(_fields(server, trusted_cert[0]), redis_client)
        body = {"provider": "ses", "subject": "s", "html": "h", "recipients": recipients(10)}
        cid, batches = create_held(redis_client, body)
        run_batches(batches, settings, rounds=3)
        received = sorted(m.rcpt_tos[0] for m in server.messages)
    campaigns.finish_if_done(cid, redis_client)
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["status"], summary["sent"], summary["failed"]) == ("completed", 10, 0)
    assert received == sorted(f"user{i}@example.com" for i in range(10))
