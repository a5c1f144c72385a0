"""SMTP end to end: a personalized campaign through the real path into Postfix's smtp-sink.

Prints messages per second of dispatch (enqueue → Redis → Celery workers → SMTP adapter),
of the C reference client ``smtp-source -d -s 8`` on the same sink, and of a naive Celery
baseline (one task per message, EmailMessage + smtplib, a new connection each), all in
the same run, with the ratios, and the peak RSS of the worker processes.

    .venv/bin/python -m bench.smtp_e2e [--recipients 100000] [--workers N] [--naive 5000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from bench.common import (
    RssWatcher,
    SmtpSink,
    campaign_seconds,
    find_tool,
    print_rate,
    start_worker,
    stop,
    timed,
    warm_process,
)
from dispatch.celery_app import default_worker_processes

HTML = (
    "<html><body><h1>Hello {{ first_name }}!</h1><p>Fresh picks for {{ city }} this week.</p>"
    + "<p>Bread, cheese, olives, tomatoes and more from the market, at member prices.</p>" * 24
    + "<p>Member {{ member_no }}</p></body></html>"
)  # about 2 KB rendered, three variables


def recipients(n: int) -> list[dict[str, object]]:
    return [
        {
            "email": f"user{i}@bench.example",
            "vars": {"first_name": f"Name{i}", "city": "Lisbon", "member_no": 100000 + i},
        }
        for i in range(n)
    ]


def wait_ready(app_name: str) -> None:
    """Wait until a worker answers a ping (so start-up is not timed)."""
    if app_name == "dispatch":
        from dispatch.celery_app import app
    else:
        from bench.naive_tasks import app
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if app.control.ping(timeout=0.5):
            return
    sys.exit(f"{app_name} worker did not start")


def run_source(sink: SmtpSink, n: int) -> int:
    before = sink.count
    subprocess.run(
        [find_tool("smtp-source"), "-d", "-s", "8", "-m", str(n), "-l", str(len(HTML)),
         "-f", "bench@bench.example", "-t", "sink@bench.example", f"127.0.0.1:{sink.port}"],
        check=True,
    )  # fmt: skip
    sink.wait_count(before + n)
    return sink.count - before


def run_dispatch(sink: SmtpSink, people: list[dict[str, object]]) -> tuple[int, float]:
    """``people``: the caller's list, built before the clock starts. Returns the
    messages sent and the seconds until the campaign completed."""
    from dispatch import campaign_reads, campaigns, store
    from dispatch.models import campaign_request
    from dispatch.provider_store import save_provider

    save_provider(
        {"nickname": "sink", "kind": "smtp", "host": "127.0.0.1", "port": sink.port,
         "security": "none", "from_name": "Acme Deals", "from_address": "deals@acme.example",
         "max_connections": 16}
    )  # fmt: skip
    warm_process()
    before = sink.count
    started = time.time()
    request = campaign_request(
        {"provider": "sink", "subject": "{{ first_name }}, your {{ city }} picks",
         "html": HTML, "recipients": people}
    )  # fmt: skip
    n = len(people)
    cid, _ = campaigns.create_campaign(request)
    seconds = campaign_seconds(cid, started)
    summary = campaign_reads.campaign_summary(cid, store.sync_client())
    sink.wait_count(before + n, timeout=5)
    received = sink.count - before
    if summary["sent"] != n or received != n:  # the figures would mean nothing
        raise SystemExit(f"FAILED: sent {summary['sent']}, the sink got {received} of {n}")
    return int(summary["sent"]), seconds


def run_naive(sink: SmtpSink, n: int) -> int:
    from bench.naive_tasks import send_one

    before = sink.count
    for i in range(n):
        variables = {"first_name": f"Name{i}", "city": "Lisbon", "member_no": i}
        send_one.delay(sink.port, f"user{i}@bench.example", "{{ first_name }}", HTML, variables)
    sink.wait_count(before + n)
    return sink.count - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument(
        "--workers",
        type=int,
        default=default_worker_processes(),
        help="worker processes (default: dispatch's own, two per core)",
    )
    parser.add_argument("--naive", type=int, default=5_000, help="messages for the naive run")
    args = parser.parse_args()

    from dispatch.redis_server import RedisServer

    redis_server = RedisServer().start()
    os.environ["DISPATCH_REDIS_URL"] = redis_server.url
    os.environ.setdefault("DISPATCH_SECRET_KEY", "bench")
    sink = SmtpSink()
    procs = []
    try:
        print(f"SMTP end to end, {os.cpu_count()} cores, {args.workers} worker process(es)")
        src_n, src_s = timed("smtp-source -d -s 8 (C reference)", lambda: run_source(sink, 20_000))
        worker = start_worker(redis_server.url, args.workers, {"DISPATCH_SECRET_KEY": "bench"})
        procs.append(worker)
        wait_ready("dispatch")
        watcher = RssWatcher(worker.pid)
        people = recipients(args.recipients)
        d_n, d_s = run_dispatch(sink, people)
        print_rate("dispatch (campaign, real path)", d_n, d_s)
        watcher.stop()
        stop(worker)
        naive = start_worker(redis_server.url, args.workers, app="bench.naive_tasks")
        procs.append(naive)
        wait_ready("naive")
        n_n, n_s = timed("naive (task per message, smtplib)", lambda: run_naive(sink, args.naive))
        stop(naive)
        rate, src_rate, naive_rate = d_n / d_s, src_n / src_s, n_n / n_s
        print(f"  ratio dispatch / smtp-source: {rate / src_rate:.3f}  (target >= 0.15)")
        print(f"  ratio dispatch / naive:       {rate / naive_rate:.1f}  (target >= 8)")
        print(f"  {watcher.report()}")
    finally:
        for proc in procs:
            stop(proc)
        sink.stop()
        redis_server.stop()


if __name__ == "__main__":
    main()
