"""CPU a message of the batch path alone: ``run_batch`` in this process, Generic HTTP.

The workers' share of ``bench.http_e2e`` without Celery, other processes or the
enqueue beside it: a campaign is stored with its batch tasks held back, then its batches
run one after another here into the same local HTTP server, and the CPU of this process
and of Redis is read around them. Less noisy than the end-to-end run (one process, no
scheduling between five), so two versions of the code can be compared on a busy
machine: run it in both checkouts, alternated. The baseline, in the same run, is
building the same payloads with orjson (what a sender that had them ready would do).

    .venv/bin/python -m bench.batch_cpu [--recipients 30000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time

from bench.common import bench_redis
from bench.http_e2e import BODY, CONCURRENCY, HTML, SUBJECT, HttpSink, prebuilt_payloads, recipients

WARM_BATCHES = 2  # each round's first batches (imports, connections) are not counted


def save_sink(port: int) -> None:
    from dispatch.provider_store import save_provider

    save_provider(
        {"nickname": "sink", "kind": "http", "method": "POST",
         "endpoint": f"http://127.0.0.1:{port}/send", "batch": True, "batch_size": 1000,
         "body": BODY, "from_name": "Acme", "from_address": "a@acme.example",
         "max_connections": CONCURRENCY}
    )  # fmt: skip


def one_round(campaign_id: str, n: int) -> tuple[float, float, int]:
    """Store a campaign of ``n`` and run its batches here: (process CPU seconds, Redis
    CPU seconds, messages) of the batches after the first :data:`WARM_BATCHES`."""
    from dispatch import campaign_reads, campaigns, store
    from dispatch.models import campaign_request
    from dispatch.sending import run_batch

    batches: list[tuple[str, int]] = []
    data = {"id": campaign_id, "provider": "sink", "subject": SUBJECT, "html": HTML,
            "recipients": recipients(n)}  # fmt: skip
    campaigns.create_campaign(campaign_request(data), enqueue=lambda c, b: batches.append((c, b)))
    del data  # (a worker holds no list: the garbage collector walks only what batches make)
    sync = store.sync_client()

    def redis_cpu() -> float:
        info = sync.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    async def go() -> tuple[float, float]:
        client = store.async_client()
        try:
            for cid, batch in batches[:WARM_BATCHES]:
                await run_batch(cid, batch, r=client)
            gc.collect()
            gc.freeze()  # as each worker process does once it is ready (celery_app)
            redis_before, started = redis_cpu(), time.process_time()
            for cid, batch in batches[WARM_BATCHES:]:
                await run_batch(cid, batch, r=client)
            return time.process_time() - started, redis_cpu() - redis_before
        finally:
            await client.aclose()

    cpu, redis_seconds = asyncio.run(go())
    sent = campaign_reads.campaign_summary(campaign_id, sync)["sent"]
    if sent != n:  # the figures would mean nothing
        raise SystemExit(f"FAILED: {campaign_id} sent {sent} of {n}")
    return cpu, redis_seconds, (len(batches) - WARM_BATCHES) * 1000


def baseline_cpu(n: int) -> float:
    """Process CPU seconds a message to build ``n`` payloads like dispatch's with orjson."""
    started = time.process_time()
    prebuilt_payloads(n, 1000)
    return (time.process_time() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.recipients < (WARM_BATCHES + 1) * 1000:
        parser.error(f"--recipients: at least {(WARM_BATCHES + 1) * 1000}")

    server = bench_redis()
    sink = HttpSink()
    try:
        save_sink(sink.port)
        ours, theirs, base = [], [], []
        for i in range(args.rounds):
            cpu, redis_seconds, n = one_round(f"bench-{i}", args.recipients)
            ours.append(cpu / n * 1e6)
            theirs.append(redis_seconds / n * 1e6)
            base.append(baseline_cpu(args.recipients) * 1e6)
            print(
                f"  round {i + 1}: run_batch {ours[-1]:.2f} us a message, Redis "
                f"{theirs[-1]:.2f}, orjson payloads {base[-1]:.2f}",
                flush=True,
            )
        least = min(ours)
        print(f"  least of {args.rounds}: {least:.2f} us a message (median "
              f"{statistics.median(ours):.2f}), Redis {min(theirs):.2f}")  # fmt: skip
        print(f"  ratio run_batch / orjson payloads: {least / min(base):.1f}")
    finally:
        sink.stop()
        server.stop()


if __name__ == "__main__":
    main()
