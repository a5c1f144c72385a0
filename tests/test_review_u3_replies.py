"""Review U3: what the SMTP-family providers really answer, staged with aiosmtpd.

A reply that means "this account cannot send now" (sending paused, sender not verified,
credits used up, no login) paused no campaign: after the first messages went out, each
message after it failed on its own, as if its recipient were at fault (the failure breaker
only acts while nothing was sent), or was retried as a throttle until it failed. A
temporary refusal of the login (Gmail "454 4.7.0 Too many login attempts", SES "454
Temporary authentication failure") paused the campaign as if the credentials were wrong,
for a person to resume.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from aiosmtpd.smtp import AuthResult

from dispatch import campaign_reads, campaigns, lifecycle, store
from dispatch.settings import Settings
from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer

FAST = Settings(
    retry_base_seconds=0.05, retry_max_seconds=0.2, inline_retry_seconds=5.0, max_attempts=3
)
# Every retry waits for a later run of its batch: one run tries each message once.
PARKED = Settings(retry_base_seconds=0.05, retry_max_seconds=0.1, inline_retry_seconds=0.0)
SES_UNVERIFIED = (
    "554 Message rejected: Email address is not verified. The following identities failed "
    "the check in region US-EAST-1: {}"
)


def _run(r: redis.Redis, server: SmtpTestServer, n: int = 10, **fields: Any) -> dict[str, Any]:
    """A campaign of ``n`` through ``server``, run until nothing waits; its summary."""
    smtp_provider(r, server.port, max_connections=1, **fields)
    body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(n)}
    cid, batches = create_held(r, body)
    run_batches(batches, FAST, rounds=3)
    campaigns.finish_if_done(cid, r)
    summary = campaign_reads.campaign_summary(cid, r)
    summary["cid"], summary["batches"] = cid, batches
    return summary


@pytest.mark.parametrize(
    ("where", "reply", "kind"),
    [
        ("data", "554 Account is paused.", "configuration"),
        (
            "data",
            "554 Sending paused for this account. For more information, please check the "
            "inbox of the email address associated with your AWS account.",
            "configuration",
        ),
        ("data", SES_UNVERIFIED.format("deals@acme.example"), "configuration"),
        (
            "data",
            "554 Access denied: User arn:aws:iam::123456789012:user/ses-smtp-user is not "
            "authorized to perform ses:SendRawEmail on resource arn:aws:ses:us-east-1:"
            "123456789012:identity/acme.example",
            "configuration",
        ),
        ("mail", "550 Unauthenticated senders not allowed", "authentication"),
        ("mail", "403 You are not authorized to send from that email address", "configuration"),
        (
            "mail",
            "550 The from address does not match a verified Sender Identity. Mail cannot be "
            "sent until this error is resolved.",
            "configuration",
        ),
        ("mail", "451 Authentication failed: Maximum credits exceeded", "quota"),
    ],
)
def test_a_reply_that_the_account_cannot_send_pauses_the_campaign_naming_it(
    redis_client: redis.Redis, where: str, reply: str, kind: str
) -> None:
    """SES and SendGrid refuse the account after 3 messages went out: the
    campaign pauses with the reply as its reason (counted under its kind), nothing fails,
    the 7 others stay queued and a resume once it is fixed sends each of them once."""
    fixed = {"yes": False}
    taken = {"n": 0}

    def answer(_: object) -> str | None:
        if fixed["yes"] or taken["n"] < 3:
            taken["n"] += 1
            return None
        return reply

    with SmtpTestServer() as server:
        server.handler.pipelining = True
        setattr(server.handler, f"{where}_reply", answer)
        summary = _run(redis_client, server)
        assert summary["status"] == "paused", summary
        assert reply[4:40] in summary["reason"]
        assert (summary["sent"], summary["failed"], summary["queued"]) == (3, 0, 7)
        pauses = redis_client.hget(store.INCIDENTS_HASH, f"pause|{kind}")
        assert pauses == "1"

        fixed["yes"] = True
        lifecycle.resume(summary["cid"], client=redis_client, enqueue=lambda c, b: None)
        run_batches(summary["batches"], FAST, rounds=3)
        received = sorted(m.rcpt_tos[0] for m in server.messages)
    summary = campaign_reads.campaign_summary(summary["cid"], redis_client)
    assert (summary["status"], summary["sent"], summary["failed"]) == ("completed", 10, 0)
    assert received == sorted(f"user{i}@example.com" for i in range(10))


def test_an_unverified_recipient_of_the_ses_sandbox_fails_alone(redis_client: redis.Redis) -> None:
    """In SES's sandbox a recipient not verified is refused with the same words as an
    unverified sender, naming the recipient: that message fails, the others go out (a
    pause would stop the campaign on it at every resume)."""
    refused = "user4@example.com"
    with SmtpTestServer() as server:
        server.handler.pipelining = True
        server.handler.data_reply = lambda e: (
            SES_UNVERIFIED.format(refused) if e.rcpt_tos == [refused] else None
        )
        summary = _run(redis_client, server)
    assert (summary["status"], summary["sent"], summary["failed"]) == ("completed", 9, 1)
    assert refused not in [m.rcpt_tos[0] for m in server.messages]


def test_a_recipient_unknown_still_fails_that_message_alone(redis_client: redis.Redis) -> None:
    with SmtpTestServer() as server:
        server.handler.pipelining = True
        server.handler.rcpt_reply = lambda a: (
            "550 5.1.1 The email account that you tried to reach does not exist. - gsmtp"
            if a in ("user2@example.com", "user7@example.com")
            else None
        )
        summary = _run(redis_client, server)
    assert (summary["status"], summary["sent"], summary["failed"]) == ("completed", 8, 2)


def test_a_relay_refusing_to_relay_for_us_trips_the_failure_breaker(
    redis_client: redis.Redis,
) -> None:
    """A relay given no login refuses every recipient with "554 5.7.1 Relay access
    denied": not the addresses' fault, so the breaker counts them and pauses the campaign
    (they were "SMTP invalid email ID", which it never counts: all 10 failed)."""
    denied = "554 5.7.1 <{}>: Relay access denied"
    with SmtpTestServer() as server:
        server.handler.rcpt_reply = denied.format
        smtp_provider(redis_client, server.port, max_connections=1)
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(10)}
        cid, batches = create_held(redis_client, body)
        run_batches(batches, FAST.model_copy(update={"pause_after_failures": 4}), rounds=3)
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert summary["status"] == "paused"
    assert "Relay access denied" in summary["reason"]
    assert summary["sent"] == 0 and summary["queued"] > 0
    assert redis_client.hget(store.INCIDENTS_HASH, "pause|failures") == "1"


def test_a_relay_refusing_some_domains_fails_those_messages_alone(
    redis_client: redis.Redis,
) -> None:
    with SmtpTestServer() as server:
        server.handler.rcpt_reply = lambda a: (
            f"554 5.7.1 <{a}>: Relay access denied" if a.endswith("@other.example") else None
        )
        smtp_provider(redis_client, server.port, max_connections=1)
        listed = recipients(6) + recipients(4, domain="other.example")
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": listed}
        cid, batches = create_held(redis_client, body)
        run_batches(batches, FAST, rounds=3)
        campaigns.finish_if_done(cid, redis_client)
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["status"], summary["sent"], summary["failed"]) == ("completed", 6, 4)


class _LoginRefused(SmtpTestServer):
    """Answers every AUTH with ``reply`` until ``accept`` is set."""

    reply = ""
    accept = False

    def _authenticator(self, *args: Any) -> AuthResult:
        if self.accept:
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False, message=self.reply)


@pytest.mark.parametrize(
    "reply",
    [
        "454 4.7.0 Too many login attempts, please try again later. - gsmtp",
        "454 Temporary authentication failure",
    ],
)
def test_a_login_refused_for_now_is_retried_later_not_paused(
    redis_client: redis.Redis, reply: str
) -> None:
    """Gmail and SES refuse a login for a while: the messages wait and go out once the
    login is taken; no person has to resume the campaign."""
    server = _LoginRefused(credentials=("u", "p"))
    server.reply = reply

    with server:
        smtp_provider(redis_client, server.port, max_connections=1, username="u", password="p")
        body = {"provider": "local", "subject": "s", "html": "h", "recipients": recipients(5)}
        cid, batches = create_held(redis_client, body)
        run_batches(batches, PARKED, rounds=1)
        summary = campaign_reads.campaign_summary(cid, redis_client)
        assert summary["status"] == "running"  # waiting, not paused
        assert (summary["sent"], summary["failed"], summary["queued"]) == (0, 0, 5)
        server.accept = True
        run_batches(batches, PARKED, rounds=5)
        campaigns.finish_if_done(cid, redis_client)
        received = sorted(m.rcpt_tos[0] for m in server.messages)
    summary = campaign_reads.campaign_summary(cid, redis_client)
    assert (summary["status"], summary["sent"], summary["failed"]) == ("completed", 5, 0)
    assert received == sorted(f"user{i}@example.com" for i in range(5))


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("535 5.7.8 Username and Password not accepted. - gsmtp", "authentication"),
        ("535 Account not subscribed to SES", "authentication"),
        ("451 Authentication failed: Maximum credits exceeded", "quota"),
    ],
)
def test_a_login_refused_for_good_pauses_with_the_reply(
    redis_client: redis.Redis, reply: str, kind: str
) -> None:
    server = _LoginRefused(credentials=("u", "p"))
    server.reply = reply
    with server:
        summary = _run(redis_client, server, username="u", password="p")
    assert (summary["status"], summary["sent"], summary["queued"]) == ("paused", 0, 10)
    assert reply in summary["reason"]
    assert redis_client.hget(store.INCIDENTS_HASH, f"pause|{kind}") == "1"
