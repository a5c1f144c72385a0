"""A test message's daily-quota grant is tracked, as a campaign's are (dispatch.limits).

A campaign pauses "used up" only when the quota is taken and no grant is still out (a
grant may come back: its message refused). A test message took an untracked grant: a
campaign finding the quota's last send in a test message's hands paused at once, and
when the provider refused the test message the day's quota ended one short. And a test
message finding the quota's last sends out with campaigns answered "used up" at once,
though one of them might come back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis
import redis.asyncio as aioredis

from dispatch import store, test_email
from dispatch.limits import Grant, ProviderLimiter, quota_keys
from dispatch.redis_server import RedisServer
from dispatch.test_email import TestEmailResult
from providers.config import HttpConfig, parse_provider_config
from tests.http_sink import HttpSink, Reply

NAME = {"name": "Ada"}


def _config(url: str) -> HttpConfig:
    config = parse_provider_config(
        {
            "nickname": "hook",
            "kind": "http",
            "endpoint": f"{url}/send",
            "body": {"to": "$$To", "subject": "$$Subject", "from": "$$FromName",
                     "addr": "$$FromAddress", "html": "$$HTML", "name": "$$name"},
            "from_name": "Acme",
            "from_address": "deals@acme.example",
            "daily_quota": 1,
        }
    )  # fmt: skip
    assert isinstance(config, HttpConfig)
    return config


async def _test_message(config: HttpConfig, deadline: float = 30.0) -> TestEmailResult:
    """A test message as the API sends it: on the workers' Redis, within the limits."""

    async def send(limits: aioredis.Redis) -> TestEmailResult:
        return await test_email.send_test_email(
            config, "ops@example.com", vars=NAME, limits=limits, deadline=deadline
        )

    return await test_email.within_shared_limits(send)


async def _until(check: Callable[[], object], seconds: float = 20.0) -> None:
    give_up = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < give_up, "not within 20 s"
        await asyncio.sleep(0.02)


def test_a_campaign_waits_for_a_test_messages_grant_and_gets_its_send_back(
    redis_client: redis.Redis,
) -> None:
    """The quota's last send is a test message's, on the wire (the provider takes a while
    and refuses it): the campaign's sender gets a grant of none (wait, ask again), not
    "used up"; once the test message is refused, the send is the campaign's."""
    with HttpSink() as sink:
        config = _config(sink.url)
        sink.script(Reply(400, b"no", delay=1.0))

        async def go() -> tuple[TestEmailResult, Grant, Grant]:
            client = store.async_client()
            try:
                campaign = ProviderLimiter(client, config)
                test = asyncio.create_task(_test_message(config))
                await _until(lambda: sink.requests)  # the test message is on the wire
                # The old code raised QuotaExhaustedError here: the campaign paused.
                meanwhile = await campaign.take_some(1, tracked=True)
                result = await test
                after = await campaign.take_some(1, tracked=True)
                await campaign.settle(after, 0)
                return result, meanwhile, after
            finally:
                await client.aclose()

        result, meanwhile, after = asyncio.run(go())
    assert (result.ok, result.error) == (False, "Dispatch failed"), result.detail
    assert meanwhile.count == 0 and meanwhile.wait > 0
    assert after.count == 1  # the day's quota is whole: the refused test gave it back
    assert redis_client.zcard(quota_keys("hook")[2]) == 0


def test_a_test_message_waits_for_a_campaigns_grant_within_its_deadline(
    redis_client: redis.Redis,
) -> None:
    """The quota's last send is a campaign's, still out: the test message waits for it.
    Still out past the test's deadline, the test says so and sends nothing; given back
    (the provider refused the campaign's), the test message takes it and goes; then the
    quota is used up."""
    with HttpSink() as sink:
        config = _config(sink.url)

        async def go() -> list[TestEmailResult]:
            client = store.async_client()
            try:
                campaign = ProviderLimiter(client, config)
                grant = await campaign.take_some(1, tracked=True)
                assert grant.count == 1
                still_out = await _test_message(config, deadline=1.0)
                test = asyncio.create_task(_test_message(config))
                await asyncio.sleep(0.3)  # the test message asks meanwhile (old: used up)
                assert not test.done() and not sink.requests
                await campaign.settle(grant, 1)  # the provider refused the campaign's
                came_back = await test
                used_up = await _test_message(config)
                return [still_out, came_back, used_up]
            finally:
                await client.aclose()

        still_out, came_back, used_up = asyncio.run(go())
        assert len(sink.requests) == 1  # came_back's
    assert not still_out.ok and still_out.error == used_up.error
    assert "taken by sends still out" in still_out.detail and "within 1 s" in still_out.detail
    assert came_back.ok, came_back.detail
    assert not used_up.ok and "daily quota of 1 messages" in used_up.detail
    # No test grant is left out: each was settled.
    assert redis_client.zcard(quota_keys("hook")[2]) == 0


def test_a_test_message_the_pace_would_send_past_its_deadline_says_when_at_once(
    redis_server: RedisServer,
) -> None:
    """A provider at one message every 20 s that just sent: a test message with a 2 s
    deadline slept the 20 s through the pace (an API request's client gave up meanwhile,
    and might send it again), then tried; it answers at once when the provider sends
    next, and nothing is sent."""
    with HttpSink() as sink:
        config = parse_provider_config(
            {**_config(sink.url).model_dump(mode="json"), "daily_quota": None,
             "rate_per_second": 0.05}
        )  # fmt: skip
        assert isinstance(config, HttpConfig)

        async def go() -> TestEmailResult:
            client = aioredis.from_url(redis_server.url, decode_responses=True)
            try:
                await ProviderLimiter(client, config).take(1)  # the provider just sent
                return await _test_message(config, deadline=2.0)
            finally:
                await client.aclose()

        result = asyncio.run(go())
        assert sink.requests == []
    assert not result.ok
    assert "sends its next message in 20 s" in result.detail, result.detail
    assert "try again then" in result.detail
