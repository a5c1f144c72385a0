"""A batch the provider refuses as too large (HTTP 413) goes again in halves."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from providers.base import OutcomeStatus
from tests.http_sink import HttpSink, RecordedRequest, Reply
from tests.test_http_provider import SEED_BATCH_BODY, http_config, local, message, send

TOO_LARGE = Reply(413, b'{"error": "payload too large"}')


def at_most(count: int = 10**6, size: int = 10**9) -> Callable[[RecordedRequest], Reply | None]:
    """A provider refusing requests of more than ``count`` messages or ``size`` bytes."""

    def answer(request: RecordedRequest) -> Reply | None:
        too_many = len(request.json()["msgs"]) > count
        return TOO_LARGE if too_many or len(request.body) > size else None

    return answer


def _sent(requests: list[RecordedRequest]) -> list[str]:
    """The addresses of the requests the provider took (not refused as too large)."""
    msgs = [r.json()["msgs"] for r in requests]
    return [m["to"] for batch in msgs if len(batch) <= 3 for m in batch]


@pytest.mark.asyncio
async def test_a_batch_over_the_providers_count_limit_is_sent_in_halves() -> None:
    messages = [message(i, user_vars={"name": f"N{i}", "userID": str(i)}) for i in range(10)]
    with HttpSink(answer=at_most(count=3)) as sink:
        outcomes = await send(
            local(http_config(sink.url, batch=True, batch_size=10, body=SEED_BATCH_BODY)),
            messages,
        )
        requests = sink.requests
    assert [len(r.json()["msgs"]) for r in requests] == [10, 5, 2, 3, 5, 2, 3]
    assert sorted(_sent(requests)) == sorted(m.to for m in messages)  # each once
    assert [o.seq for o in outcomes] == list(range(10))
    assert {o.status for o in outcomes} == {OutcomeStatus.SENT}


@pytest.mark.asyncio
async def test_a_message_too_large_alone_fails_alone() -> None:
    messages = [message(i, user_vars={"name": f"N{i}", "userID": str(i)}) for i in range(4)]
    messages[2] = message(2, html="<p>" + "x" * 5000 + "</p>",
                          user_vars={"name": "Big", "userID": "2"})  # fmt: skip
    with HttpSink(answer=at_most(size=4000)) as sink:
        outcomes = await send(
            local(http_config(sink.url, batch=True, body=SEED_BATCH_BODY)), messages
        )
        requests = sink.requests
    assert [o.status for o in outcomes] == [
        OutcomeStatus.SENT, OutcomeStatus.SENT, OutcomeStatus.FAILED, OutcomeStatus.SENT,
    ]  # fmt: skip
    assert outcomes[2].detail.startswith("HTTP 413") and outcomes[2].code == 413
    taken = [m["to"] for r in requests if len(r.body) <= 4000 for m in r.json()["msgs"]]
    assert sorted(taken) == sorted(m.to for i, m in enumerate(messages) if i != 2)


@pytest.mark.asyncio
async def test_a_413_to_a_request_of_one_message_fails_it_without_another_request() -> None:
    with HttpSink(default=TOO_LARGE) as sink:
        outcomes = await send(
            local(http_config(sink.url, batch=True, body=SEED_BATCH_BODY)),
            [message(1, user_vars={"name": "A", "userID": "1"})],
        )
        assert len(sink.requests) == 1
    assert [o.status for o in outcomes] == [OutcomeStatus.FAILED]
