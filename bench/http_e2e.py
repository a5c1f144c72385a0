"""Generic HTTP end to end: a campaign in batches of 1000 into a local HTTP server.

Prints messages per second of dispatch (enqueue → Redis → Celery workers → rendering →
``$$`` payloads → HTTP) and of posting the same number of pre-built payloads of the same
size with the same concurrency, in the same run, with the ratio; also the enqueue time
alone and the peak RSS of the workers.

    .venv/bin/python -m bench.http_e2e [--recipients 1000000] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

import httpx
import orjson
import redis

from bench.common import (
    CpuMeter,
    RssWatcher,
    bench_redis,
    campaign_seconds,
    free_port,
    print_rate,
    redis_command_stats,
    start_worker,
    stop,
    timed,
    wait_port,
    warm_process,
)
from bench.smtp_e2e import wait_ready
from dispatch.celery_app import default_worker_processes

SUBJECT = "{{ name }}, this week's picks"
HTML = "<p>Hello {{ name }}, fresh picks for {{ city }} are in: bread, cheese, olives.</p>"
BODY = {
    "cid": "$$CampaignID",
    "msgs": [
        {
            "to": "$$To",
            "mid": "$$MessageID",
            "name": "$$name",
            "content": "$$HTML",
            "heading": "$$Subject",
            "from": "$$FromName",
            "senderaddr": "$$FromAddress",
        }
    ],
}
CONCURRENCY = 4  # HTTP connections, for dispatch (max_connections) and the baseline alike


class HttpSink:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.http_sink", "--port", str(self.port)]
        )
        wait_port(self.port)

    def totals(self) -> dict[str, int]:
        result: dict[str, int] = httpx.get(f"http://127.0.0.1:{self.port}/count").json()
        return result

    def stop(self) -> None:
        stop(self.proc)  # type: ignore[arg-type]


def recipients(n: int) -> list[dict[str, object]]:
    return [
        {"email": f"user{i}@bench.example", "vars": {"name": f"Name{i}", "city": "Lisbon"}}
        for i in range(n)
    ]


def prebuilt_payloads(n: int, batch: int) -> list[bytes]:
    """Bodies like the ones dispatch posts, built ahead (the baseline's work is I/O only)."""
    bodies = []
    for start in range(0, n, batch):
        msgs = [
            {
                "to": f"user{i}@bench.example",
                "mid": f"user{i}@bench.example|1|c|20260101|0|d|{i}|",
                "name": f"Name{i}",
                "content": HTML.replace("{{ name }}", f"Name{i}"),
                "heading": f"Name{i}, this week's picks",
                "from": "Acme",
                "senderaddr": "a@acme.example",
            }
            for i in range(start, min(n, start + batch))
        ]
        bodies.append(orjson.dumps({"cid": "c", "msgs": msgs}))
    return bodies


def run_prebuilt(sink: HttpSink, bodies: list[bytes]) -> int:
    before = sink.totals()["messages"]

    async def go() -> None:
        queue = list(reversed(bodies))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{sink.port}") as client:

            async def poster() -> None:
                while queue:
                    body = queue.pop()
                    response = await client.post(
                        "/send", content=body, headers={"Content-Type": "application/json"}
                    )
                    response.raise_for_status()

            await asyncio.gather(*(poster() for _ in range(CONCURRENCY)))

    asyncio.run(go())
    return sink.totals()["messages"] - before


def run_dispatch(
    sink: HttpSink, people: list[dict[str, object]], batch: int
) -> tuple[int, float, float]:
    """``people``: the caller's list, built before the clock starts (as the pre-built
    payloads are): what is timed is dispatch's work alone. Returns the messages sent,
    the seconds until create_campaign returned and until the campaign completed."""
    from dispatch import campaign_reads, campaigns, store
    from dispatch.models import campaign_request
    from dispatch.provider_store import save_provider

    save_provider(
        {
            "nickname": "sink",
            "kind": "http",
            "method": "POST",
            "endpoint": f"http://127.0.0.1:{sink.port}/send",
            "batch": True,
            "batch_size": batch,
            "body": BODY,
            "from_name": "Acme",
            "from_address": "a@acme.example",
            "max_connections": CONCURRENCY,
        }
    )
    warm_process()
    n = len(people)
    before = sink.totals()["messages"]
    data = {"provider": "sink", "subject": SUBJECT, "html": HTML, "recipients": people}
    started = time.time()
    request = campaign_request(data)
    cid, _ = campaigns.create_campaign(request)
    enqueue_seconds = time.time() - started
    r = store.sync_client()
    sent_by_then = campaign_reads.campaign_summary(cid, r)["sent"]
    seconds = campaign_seconds(cid, started)
    print(f"  sent when create_campaign returned: {sent_by_then:,}")
    summary = campaign_reads.campaign_summary(cid, r)
    received = sink.totals()["messages"] - before
    if summary["sent"] != n or received != n:  # the figures would mean nothing
        raise SystemExit(f"FAILED: sent {summary['sent']}, the sink got {received} of {n}")
    return int(summary["sent"]), enqueue_seconds, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument(
        "--workers",
        type=int,
        default=default_worker_processes(),
        help="worker processes (default: dispatch's own, two per core)",
    )
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()

    redis_server = bench_redis()
    sink = HttpSink()
    worker = None
    try:
        n = args.recipients
        print(f"Generic HTTP end to end, {os.cpu_count()} cores, {args.workers} worker process(es)")
        bodies = prebuilt_payloads(n, args.batch_size)
        size = sum(map(len, bodies)) / len(bodies)
        label = f"pre-built payloads ({size / 1024:.0f} KiB each)"
        base_n, base_s = timed(label, lambda: run_prebuilt(sink, bodies))
        bodies.clear()
        worker = start_worker(
            redis_server.url,
            args.workers,
            {"DISPATCH_SECRET_KEY": "bench", "DISPATCH_ALLOW_PRIVATE_ENDPOINTS": "true"},
        )
        wait_ready("dispatch")
        watcher = RssWatcher(worker.pid)
        assert redis_server.pid is not None
        cpu = CpuMeter(
            {"workers": worker.pid},
            {"enqueue": os.getpid(), "redis": redis_server.pid, "sink": sink.proc.pid},
        )
        people = recipients(n)
        redis.Redis.from_url(redis_server.url).config_resetstat()
        cpu.start()
        d_n, enqueue_s, d_s = run_dispatch(sink, people, args.batch_size)
        print_rate("dispatch (campaign, real path)", d_n, d_s)
        watcher.stop()
        print(f"  {cpu.report(d_n)}")
        print(f"  {redis_command_stats(redis_server.url)}")
        rate = d_n / d_s
        print(
            f"  create_campaign returned after {enqueue_s:.2f} s (validating and storing "
            f"{n:,} recipients; each batch starts sending as soon as it is stored)"
        )
        print(f"  ratio dispatch / pre-built: {rate / (base_n / base_s):.3f}  (target >= 0.1)")
        print(f"  dispatch: {rate:,.0f} msg/s  (target >= 50,000)")
        print(f"  {watcher.report()}")
    finally:
        if worker is not None:
            stop(worker)
        sink.stop()
        redis_server.stop()


if __name__ == "__main__":
    main()
