"""Benchmark: callback ingest of 1000-event generic payloads through the real API over HTTP.

Starts its own Redis and ``dispatch api`` as a subprocess, saves an ``smtp`` provider and
posts the same number of requests twice over one keep-alive connection:

- baseline: the same bodies posted to ``/healthz`` (405: the body crosses the socket and
  the router, nothing else happens);
- ingest: the bodies posted to the provider's callback URL (authenticate, parse 1000
  events, store them durably in Redis, enqueue the task; no worker runs, so this is the
  gateway alone).

Prints accepted events per second and the ratio of ingest requests per second to the
baseline's, both measured in this run (two cores: absolute figures vary, the ratio less).

    .venv/bin/python bench/callback_ingest.py [--requests 100] [--events 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime

import httpx
import redis

from dispatch.redis_server import RedisServer
from providers.meta import build_meta

TYPES = ("delivered", "delivered", "delivered", "clicked", "soft_bounce", "hard_bounce")


def payload(batch: int, events: int) -> bytes:
    """One generic v2 request of ``events`` distinct events (no two requests alike)."""
    today = datetime.now(UTC).date()
    items = []
    for i in range(events):
        email = f"user{batch}-{i}@example.com"
        meta = build_meta(email=email, account_id="1", campaign_id="bench", send_date=today,
                          seq=batch * events + i)  # fmt: skip
        kind = TYPES[i % len(TYPES)]
        items.append({"type": kind, "email": email, "meta": meta, "description": kind})
    success = [e for e in items if e["type"] in ("delivered", "clicked")]
    failed = [e for e in items if e["type"] not in ("delivered", "clicked")]
    return json.dumps({"version": "v2", "events": {"success": success, "failed": failed}}).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def timed(client: httpx.Client, path: str, bodies: list[bytes], expect: int) -> float:
    """Seconds to post every body to ``path``; each answer must have status ``expect``."""
    start = time.perf_counter()
    for body in bodies:
        response = client.post(path, content=body, headers={"Content-Type": "application/json"})
        if response.status_code != expect:
            raise SystemExit(f"{path}: HTTP {response.status_code} {response.text[:200]}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--events", type=int, default=1000)
    args = parser.parse_args()

    os.environ.setdefault("DISPATCH_SECRET_KEY", "bench-secret-key")
    server = RedisServer(appendonly=True).start()
    os.environ["DISPATCH_REDIS_URL"] = server.url
    port = free_port()
    env = {**os.environ, "DISPATCH_API_TOKENS": "", "DISPATCH_LOG_LEVEL": "WARNING"}
    api = subprocess.Popen(
        [sys.executable, "-m", "dispatch.cli", "api", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        from dispatch.provider_store import load_provider_with_token, save_provider

        r = redis.Redis.from_url(server.url)
        save_provider({"nickname": "bench", "kind": "smtp", "host": "127.0.0.1", "port": 2525,
                       "from_address": "bench@example.com"}, r)  # fmt: skip
        path = f"/v1/callbacks/bench/{load_provider_with_token('bench', r)[1]}"
        bodies = [payload(b, args.events) for b in range(args.requests + 5)]
        warmup, bodies = bodies[:5], bodies[5:]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the API did not start")
                time.sleep(0.1)
            timed(client, "/healthz", warmup, 405)
            timed(client, path, warmup, 200)
            baseline = timed(client, "/healthz", bodies, 405)
            ingest = timed(client, path, bodies, 200)
        stored = int(r.hlen("dispatch:callbacks:inbox"))
        if stored != args.requests + 5:
            raise SystemExit(f"expected {args.requests + 5} stored batches, found {stored}")
        events = args.requests * args.events
        size = sum(len(b) for b in bodies) / len(bodies) / 1024
        print(f"{args.requests} requests of {args.events} events ({size:.0f} KiB each)")
        print(f"baseline (same bodies to /healthz, 405): {args.requests / baseline:8.1f} req/s")
        print(f"ingest   (callback URL, stored durably): {args.requests / ingest:8.1f} req/s"
              f" = {events / ingest:,.0f} accepted events/s")  # fmt: skip
        print(f"ratio ingest/baseline: {baseline / ingest:.3f}")
    finally:
        api.terminate()
        api.wait(timeout=10)
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
