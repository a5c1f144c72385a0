"""Review M24: ``rate_per_second`` as the provider counts it, messages in a second.

A sender hands over a chunk of up to ``int(rate)`` messages at once (four for SMTP), and
the pace books the chunk's time after it. At 5 a second a chunk of 4 went every 0.8 s:
two chunks, 8 messages, in one second, every few seconds (a relay that allows 5 a
second refuses the rest, with 454). Now the chunk is as large as keeps every second to
the rate: at 5 a second, one message every 0.2 s."""

from __future__ import annotations

import threading

import redis

from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer


def test_no_second_holds_more_than_the_rate_at_the_server(
    redis_client: redis.Redis, smtp: SmtpTestServer
) -> None:
    """Two campaigns of one provider at 5 a second, run side by side as two worker
    processes would (a loop each): the server stamps each message with Redis's clock.
    Any second of it holds 5, 6 with a late send; on the old code 8 (two chunks of 4)."""
    received: list[float] = []

    def stamp(address: str) -> None:
        seconds, micros = redis_client.time()
        received.append(seconds + micros / 1e6)

    smtp.handler.rcpt_reply = lambda address: stamp(address)  # type: ignore[assignment,func-returns-value]
    smtp_provider(redis_client, smtp.port, max_connections=4, rate_per_second=5)
    held = [
        create_held(redis_client, {
            "provider": "local", "subject": "s", "html": "h",
            "recipients": recipients(12, f"c{i}.example"),
        })[1]
        for i in range(2)
    ]  # fmt: skip
    runs = [threading.Thread(target=run_batches, args=(batches,)) for batches in held]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert len(smtp.messages) == 24
    busiest = max(sum(1 for t in received if s <= t < s + 1) for s in received)
    assert busiest <= 6
