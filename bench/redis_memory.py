"""Redis memory a campaign costs, and what the retention purge gives back.

Runs a Generic HTTP campaign through the real path (Redis, Celery workers, a local HTTP
server; the recipients of ``bench.http_e2e``: three short vars each), then prints
Redis's ``used_memory`` growth per recipient, the ``MEMORY USAGE`` of each large key per
recipient, and the same after :func:`dispatch.retention.purge` of the finished campaign,
with the ratio of what stays to what the campaign took (the baseline: Redis before the
campaign, in the same run).

    .venv/bin/python -m bench.redis_memory [--recipients 100000]
"""

from __future__ import annotations

import argparse
import time

import redis

from bench.common import BENCH_ENV, bench_redis, start_worker, stop
from bench.http_e2e import HttpSink, recipients, run_dispatch
from bench.smtp_e2e import wait_ready

BIG_KEY_BYTES = 50_000


def big_keys(r: redis.Redis, n: int) -> list[str]:
    rows = []
    for key in sorted(r.scan_iter(match="dispatch:*", count=1000)):
        used = r.memory_usage(key) or 0
        if used > BIG_KEY_BYTES:
            rows.append(f"    {key.decode():<58} {used / n:7.1f} B/recipient")
    return rows


def used_memory(r: redis.Redis) -> int:
    time.sleep(0.5)  # UNLINK frees large values in Redis's background thread
    return int(r.info("memory")["used_memory"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=100_000)
    args = parser.parse_args()
    n = args.recipients

    from dispatch import retention, store

    redis_server = bench_redis()
    env = BENCH_ENV
    sink = HttpSink()
    worker = None
    try:
        r = redis.Redis.from_url(redis_server.url)
        worker = start_worker(redis_server.url, 2, env)
        wait_ready("dispatch")
        base = used_memory(r)
        run_dispatch(sink, recipients(n), 1000)
        grown = used_memory(r) - base
        print(f"Redis memory of a {n:,}-recipient Generic HTTP campaign (sent, completed)")
        print(f"  used_memory growth: {grown / n:.0f} B/recipient; the largest keys:")
        print("\n".join(big_keys(r, n)))
        (campaign_id,) = [c.decode() for c in r.zrange(store.CAMPAIGNS_ZSET, 0, -1)]
        if not retention.purge(store.sync_client(), campaign_id):
            raise SystemExit("FAILED: the completed campaign was not purged")
        kept = used_memory(r) - base
        print(f"  after the retention purge: {kept / n:.0f} B/recipient; the largest keys:")
        print("\n".join(big_keys(r, n)))
        print(f"  ratio kept / taken: {kept / grown:.3f}")
    finally:
        if worker is not None:
            stop(worker)
        sink.stop()
        redis_server.stop()


if __name__ == "__main__":
    main()
