"""Benchmark: applying stored callback batches (the worker's side of callbacks), in process.

Starts its own Redis (append-only, as a deployment runs it), saves an ``smtp`` provider
and a campaign of ``--batches`` × ``--events`` recipients (``campaigns.create_campaign``,
then every message recorded ``sent`` in its ledger and counters, as sends leave them),
and stores ``--batches`` generic requests of ``--events`` events through
``callbacks.ingest`` (no task is enqueued): one event a message, delivered, clicked,
soft and hard bounces and spam complaints, so that every part of the apply path works
(dedupe keys, counters and their bitmaps, ledger reads, the suppression list, system
events). Then, in the same run:

- baseline: as many events XADDed to a stream in pipelines of 1000 (a 290-byte system
  event each: the least Redis work an event needs);
- apply: ``effects.apply_batch`` on every stored batch, one after the other, as the
  ``dispatch.process_callback`` task calls it.

Prints applied events per second, this process's CPU and Redis's CPU an event (and
Redis's time by command) for both, the ratio of the apply rate to the baseline's, and
checks the campaign's counters against the events (FAILED when one differs).
``--profile N`` prints cProfile's top N functions of the apply loop.

    .venv/bin/python -m bench.callback_apply [--batches 100] [--events 1000] [--profile 0]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time
from collections import Counter
from datetime import UTC, datetime

import orjson

from bench.common import cpu_seconds, redis_command_stats
from dispatch.redis_server import RedisServer

TYPES = ("delivered",) * 5 + ("clicked", "clicked", "soft_bounce", "hard_bounce", "spam")
COUNTED = {"delivered": "delivered", "clicked": "clicked", "soft_bounce": "soft_bounced",
           "hard_bounce": "hard_bounced", "spam": "spam"}  # fmt: skip
CAMPAIGN = "benchapply"


def email_of(seq: int) -> str:
    return f"user{seq}@bench.example"


def payload(batch: int, events: int, account_id: str) -> bytes:
    """One generic v2 request of ``events`` events, one for each message of its seqs."""
    from providers.meta import build_meta

    today = datetime.now(UTC).date()
    success, failed = [], []
    for i in range(events):
        seq = batch * events + i
        email = email_of(seq)
        meta = build_meta(email=email, account_id=account_id, campaign_id=CAMPAIGN,
                          send_date=today, seq=seq)  # fmt: skip
        kind = TYPES[seq % len(TYPES)]
        item = {"type": kind, "email": email, "meta": meta, "description": kind}
        (success if kind in ("delivered", "clicked") else failed).append(item)
    return orjson.dumps({"version": "v2", "events": {"success": success, "failed": failed}})


def prepare(total: int) -> None:
    """The provider and a campaign of ``total`` messages, every one recorded sent."""
    from dispatch import campaigns, recipient_append, store
    from dispatch.ledger import record
    from dispatch.models import CampaignRequest, MessageState
    from dispatch.provider_store import save_provider

    r = store.sync_client()
    save_provider({"nickname": "bench", "kind": "smtp", "host": "127.0.0.1", "port": 2525,
                   "from_address": "bench@example.com"}, r)  # fmt: skip
    request = CampaignRequest.model_validate(
        {"id": CAMPAIGN, "provider": "bench", "subject": "s", "html": "h", "draft": True,
         "recipients": [{"email": email_of(0)}]}
    )  # fmt: skip
    campaigns.create_campaign(request, client=r)
    recipients = ({"email": email_of(seq)} for seq in range(1, total))
    recipient_append.append_recipients(CAMPAIGN, recipients, client=r)  # type: ignore[arg-type]
    sent = record(MessageState.SENT, attempts=1)
    for start in range(0, total, 10_000):
        seqs = range(start, min(total, start + 10_000))
        r.hset(store.ledger_key(CAMPAIGN), mapping=dict.fromkeys(seqs, sent))
    r.hset(store.counters_key(CAMPAIGN), "sent", total)


def baseline(total: int, entry: str) -> None:
    """``total`` events XADDed to a stream in pipelines of 1000."""
    from dispatch import store
    from dispatch.settings import get_settings

    r = store.sync_client()
    maxlen = get_settings().events_maxlen
    for start in range(0, total, 1000):
        pipe = r.pipeline(transaction=False)
        for _ in range(min(1000, total - start)):
            pipe.xadd("bench:baseline", {"json": entry}, maxlen=maxlen, approximate=True)
        pipe.execute()


class Meter:
    """Wall time, this process's CPU and Redis's CPU of one measured step."""

    def __init__(self, redis_pid: int) -> None:
        self.redis_pid = redis_pid

    def __enter__(self) -> Meter:
        from dispatch import store

        store.sync_client().config_resetstat()
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        self.redis = cpu_seconds(self.redis_pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu
        self.redis = cpu_seconds(self.redis_pid) - self.redis

    def line(self, label: str, events: int) -> str:
        cpu, server = self.cpu / events * 1e6, self.redis / events * 1e6
        return (f"{label}: {events / self.wall:>10,.0f} events/s; CPU an event: "
                f"this process {cpu:5.1f} us, Redis {server:5.1f} us")  # fmt: skip


def main() -> int:
    from dispatch import campaign_reads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print cProfile's top N functions of the apply loop")  # fmt: skip
    args = parser.parse_args()
    total = args.batches * args.events

    os.environ.setdefault("DISPATCH_SECRET_KEY", "bench-secret-key")
    server = RedisServer(appendonly=True).start()
    os.environ["DISPATCH_REDIS_URL"] = server.url
    try:
        from dispatch import callbacks, effects, store
        from dispatch.ledger import system_event
        from dispatch.provider_store import load_provider_with_token
        from dispatch.settings import get_settings

        assert server.pid is not None
        r = store.sync_client()
        prepare(total)
        token = load_provider_with_token("bench", r)[1]
        account_id = get_settings().account_id
        for batch in range(args.batches):
            body = payload(batch, args.events, account_id)
            reply = callbacks.ingest("bench", token, body, {}, client=r, enqueue=lambda _: None)
            if reply.status != 200:
                raise SystemExit(f"ingest answered {reply.status}: {reply.body}")
        ids = sorted(str(i) for i in r.hkeys(store.CALLBACK_INBOX_HASH))
        properties = {"CT Source": "Generic email", "Callback Type": "delivered"}
        entry = system_event("Notification Delivered", email=email_of(0), campaign_id=CAMPAIGN,
                             meta="m" * 60, provider="bench", properties=properties)  # fmt: skip
        print(f"{args.batches} stored batches of {args.events} generic events "
              f"({total:,} events, one a message of a {total:,}-message campaign)")  # fmt: skip

        with Meter(server.pid) as base:
            baseline(total, entry)
        print(base.line("baseline (XADD, pipelines of 1000)", total))
        print("  " + redis_command_stats(server.url, top=1, per=total))

        profiler = cProfile.Profile() if args.profile else None
        with Meter(server.pid) as apply:
            if profiler:
                profiler.enable()
            applied = sum(effects.apply_batch(batch_id) or 0 for batch_id in ids)
            if profiler:
                profiler.disable()
        print(apply.line("apply    (effects.apply_batch)      ", total))
        print("  " + redis_command_stats(server.url, top=9, per=total))
        print(f"ratio apply/baseline (events/s): {base.wall / apply.wall:.3f}")
        if profiler:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)

        counters = campaign_reads.get_counters(CAMPAIGN, r)
        expected = Counter(COUNTED[TYPES[seq % len(TYPES)]] for seq in range(total))
        wrong = {k: (counters.get(k), n) for k, n in expected.items() if counters.get(k) != n}
        suppressed = int(r.hlen(store.SUPPRESSIONS_HASH))
        left = int(r.hlen(store.CALLBACK_INBOX_HASH))
        if (
            applied != total
            or wrong
            or left
            or suppressed != expected["hard_bounced"] + expected["spam"]
        ):
            print(f"FAILED: applied {applied:,} of {total:,}, counters (found, expected) {wrong},"
                  f" {suppressed:,} suppressed, {left} batches left in the inbox")  # fmt: skip
            return 1
        print(
            f"checked: {applied:,} applied, counters as the events say, {suppressed:,} suppressed"
        )
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
