"""CPU a recipient of enqueuing a campaign: ``campaign_request`` + ``create_campaign``.

What the process posting a campaign spends validating and storing its list (the
``enqueue`` figure of ``bench.http_e2e``), and what Redis spends storing it, with no
worker consuming (the batches' tasks wait in Redis). The baseline, in the same run, is
encoding the same recipients with orjson a thousand at a time: the least a process that
stores them as JSON must do.

    .venv/bin/python -m bench.enqueue_cpu [--recipients 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import orjson

from bench.common import bench_redis, cpu_seconds, warm_process
from bench.http_e2e import BODY, HTML, SUBJECT, recipients


def save_sink() -> None:
    """A Generic HTTP provider in batches of 1000 (nothing is sent: no worker runs)."""
    from dispatch.provider_store import save_provider

    save_provider(
        {"nickname": "sink", "kind": "http", "method": "POST",
         "endpoint": "http://127.0.0.1:9/send", "batch": True, "batch_size": 1000,
         "body": BODY, "from_name": "Acme", "from_address": "a@acme.example"}
    )  # fmt: skip


def baseline(people: list[dict[str, object]]) -> float:
    """Process CPU seconds to orjson-encode ``people`` a thousand at a time."""
    started = time.process_time()
    for start in range(0, len(people), 1000):
        orjson.dumps(people[start : start + 1000])
    return time.process_time() - started


def enqueue(people: list[dict[str, object]], redis_pid: int) -> tuple[float, float]:
    """Process and Redis CPU seconds of enqueuing a campaign to ``people``."""
    from dispatch import campaigns
    from dispatch.models import campaign_request

    data = {"provider": "sink", "subject": SUBJECT, "html": HTML, "recipients": people}
    redis_before = cpu_seconds(redis_pid)
    started = time.process_time()
    campaigns.create_campaign(campaign_request(data))
    own = time.process_time() - started
    time.sleep(0.2)  # (Redis's CPU counter is read from /proc: let it settle)
    return own, cpu_seconds(redis_pid) - redis_before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    server = bench_redis()
    try:
        from dispatch import store

        save_sink()
        warm_process()
        n = args.recipients
        assert server.pid is not None
        print(f"enqueue CPU, {n:,} recipients, {args.rounds} round(s)")
        seen: list[float] = []
        for round_ in range(args.rounds):
            people = recipients(n)
            gc.collect()
            base = baseline(people)
            own, redis_s = enqueue(people, server.pid)
            us = 1e6 / n
            print(
                f"  round {round_ + 1}: enqueue {own * us:.2f} us/recipient, "
                f"Redis {redis_s * us:.2f}, orjson baseline {base * us:.2f}: "
                f"ratio enqueue / baseline {own / base:.1f}"
            )
            seen.append(own * us)
            store.sync_client().flushdb()
            save_sink()
        # The least is what the code needs; other rounds lost some to a busy machine.
        print(f"  enqueue least {min(seen):.2f}, median {statistics.median(seen):.2f} us/recipient")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
