"""Review U12: a test message whose wait for the provider's pace leaves its exchange too
little of the test's deadline is refused at once, saying when, as one whose wait passes
the deadline is.

The old test slept the wait through and gave the exchange what was left of the deadline,
at least 1 s: an SMTP server slower than that (a login, a greylisting delay) cut short,
and the answer was "outcome unknown: check the inbox" for a message never sent. A real
aiosmtpd server answers MAIL 1.5 s late (within the provider's 3 s timeout); the
provider sends one message every 4 s and just sent one; the test's deadline is 5 s.
"""

from __future__ import annotations

import asyncio
import threading
import time

import redis

from dispatch import store
from dispatch.limits import ProviderLimiter
from dispatch.provider_store import load_provider
from dispatch.test_email import TestEmailResult, exchange_seconds
from providers.config import ProviderBase, SmtpConfig
from tests.api_server import ApiServer
from tests.api_support import api_client, save_smtp_provider
from tests.smtp_server import SmtpTestServer
from tests.test_review_c11_data_timeout import _server


def _config(port: int, rate: float) -> SmtpConfig:
    return SmtpConfig(
        nickname="paced", host="127.0.0.1", port=port, security="none",
        from_address="deals@acme.example", timeout=3.0, data_timeout=5.0,
        rate_per_second=rate,
    )  # fmt: skip


async def _just_sent(config: ProviderBase) -> None:
    """The provider just sent a message: its pace lets the next go only later."""
    client = store.async_client()
    try:
        await ProviderLimiter(client, config).take(1)
    finally:
        await client.aclose()


def _after_a_send(config: SmtpConfig, deadline: float) -> TestEmailResult:
    """A test message just after the provider sent one."""
    from dispatch import test_email

    async def go() -> TestEmailResult:
        await _just_sent(config)
        return await test_email.within_shared_limits(
            lambda limits: test_email.send_test_email(
                config, "ops@example.com", deadline=deadline, limits=limits
            )
        )

    return asyncio.run(go())


def test_a_pace_wait_leaving_the_exchange_less_than_its_timeout_is_refused_at_once(
    redis_client: redis.Redis,
) -> None:
    with _server(mail_delays=[1.5]) as server:
        config = _config(server.port, 0.25)
        result = _after_a_send(config, deadline=5.0)
        connections = server.handler.connections
        assert server.messages == []
    assert not result.ok
    assert result.error == "SMTP connection error", result
    assert not result.detail.startswith("outcome unknown"), result.detail
    assert "sends its next message in 4 s" in result.detail, result.detail
    assert "2.5 s its exchange needs" in result.detail and "try again then" in result.detail
    assert connections == 0  # nothing was tried


def test_a_pace_wait_leaving_the_exchange_its_timeout_sends(redis_client: redis.Redis) -> None:
    """The same slow server, a pace that leaves the exchange enough: the test waits its
    turn and the message goes."""
    with _server(mail_delays=[1.5]) as server:
        config = _config(server.port, 1.0)  # the next send in 1 s, of a 10 s deadline
        result = _after_a_send(config, deadline=10.0)
        assert [m.rcpt_tos for m in server.messages] == [["ops@example.com"]]
    assert result.ok, result.detail


def test_the_exchange_keeps_the_timeout_at_most_half_the_deadline() -> None:
    """A provider whose timeout is longer than the deadline still lets a test wait for
    its pace (else every test of a provider a campaign paces would be refused)."""
    assert exchange_seconds(_config(25, 0), 60.0) == 3.0
    long = SmtpConfig(nickname="slow", host="127.0.0.1", port=25, security="none",
                      from_address="deals@acme.example", timeout=120.0)  # fmt: skip
    assert exchange_seconds(long, 60.0) == 30.0


def test_the_api_refuses_at_once_a_pace_wait_that_leaves_less_than_the_timeout(
    api_server: ApiServer, redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """Over the real API: a provider at one message every 45 s (timeout 30 s) that just
    sent. The old test slept 45 s of its 60, then sent with 15 s left; now it answers at
    once that the next message goes in 45 s, and sends nothing."""
    with api_client(api_server) as api:
        save_smtp_provider(api, smtp.port, "paced", rate_per_second=1 / 45)
        asyncio.run(_just_sent(load_provider("paced")))
        answer = api.post("/v1/providers/paced/test", json={"to": "ops@example.com"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["ok"], body["error"]) == (False, "SMTP connection error"), body
    assert "sends its next message in 45 s" in body["detail"], body
    assert "30 s its exchange needs" in body["detail"], body
    assert smtp.messages == [] and smtp.handler.connections == 0


def test_the_wait_for_a_connection_is_part_of_the_deadline(redis_client: redis.Redis) -> None:
    """A campaign holds the provider's one connection for 6 s; the test's deadline is
    4 s (its exchange needs 1 s). The old test waited up to 10 s for the connection and
    then gave the exchange a whole deadline more (at the API: up to 70 s, past the
    client's 60 s read timeout, which then says "may have arrived" and the person sends
    again). Now it stops waiting while the exchange still fits, and says why."""
    from dispatch import test_email

    with _server() as server:
        config = SmtpConfig(
            nickname="busy", host="127.0.0.1", port=server.port, security="none",
            from_address="deals@acme.example", timeout=1.0, max_connections=1,
        )  # fmt: skip
        slots = f"{store.PREFIX}:connections:busy"
        redis_client.zadd(slots, {"a-campaign": time.time() + 60})
        freed = threading.Timer(6.0, redis_client.zrem, (slots, "a-campaign"))
        freed.start()
        try:
            result = asyncio.run(
                test_email.within_shared_limits(
                    lambda limits: test_email.send_test_email(
                        config, "ops@example.com", deadline=4.0, limits=limits
                    )
                )
            )
        finally:
            freed.join()
        assert server.messages == [] and server.handler.connections == 0
    assert not result.ok
    assert "all 1 connections of provider 'busy' are in use" in result.detail, result.detail
