"""Benchmark: the API's peak memory while 1,000,000 recipients are appended as NDJSON.

Starts its own Redis and ``dispatch api`` as a subprocess, creates a provider and a draft
campaign, measures the API's resident memory once it has served those requests (the
baseline), then streams the recipients to ``POST /v1/campaigns/{id}/recipients`` in one
request, generated on the fly (the client holds a few hundred lines at a time, too).

Prints the API's peak resident memory (``VmHWM`` of /proc/PID/status, which the kernel
keeps for the whole life of the process, so no sample can miss the peak), its ratio to
the baseline, the body size and the append rate, and checks that the campaign holds every
recipient. The target is a peak under 300 MB.

    .venv/bin/python bench/api_append_memory.py [--recipients 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from dispatch.redis_server import RedisServer

TARGET_MB = 300.0
TOKEN = "bench-token"
LINES_PER_CHUNK = 500


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def memory_mb(pid: int, field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak so far) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def recipients(n: int, sent: list[int]) -> Iterator[bytes]:
    """``n`` NDJSON recipients with a few template variables each, a chunk at a time."""
    lines: list[bytes] = []
    for i in range(n):
        doc = {
            "email": f"subscriber{i}@bench.example",
            "user_id": f"u{i}",
            "vars": {"name": f"Subscriber {i}", "city": "Lisbon", "tier": i % 4},
        }
        lines.append(json.dumps(doc).encode())
        if len(lines) >= LINES_PER_CHUNK:
            chunk = b"\n".join(lines) + b"\n"
            sent[0] += len(chunk)
            yield chunk
            lines = []
    if lines:
        chunk = b"\n".join(lines) + b"\n"
        sent[0] += len(chunk)
        yield chunk


def start_api(redis_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DISPATCH_REDIS_URL": redis_url,
        "DISPATCH_API_TOKENS": TOKEN,
        "DISPATCH_SECRET_KEY": "bench-secret",
        "DISPATCH_LOG_LEVEL": "WARNING",
    }
    cmd = [sys.executable, "-m", "dispatch.cli", "api", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("the API exited at start")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the API did not start within 30 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    args = parser.parse_args()

    redis_server = RedisServer().start()
    port = free_port()
    api_proc: subprocess.Popen[bytes] | None = None
    try:
        api_proc = start_api(redis_server.url, port)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers) as api:
            provider = {"kind": "smtp", "host": "127.0.0.1", "port": 2525, "security": "none",
                        "from_address": "deals@acme.example"}  # fmt: skip
            api.put("/v1/providers/bench", json=provider).raise_for_status()
            draft = {
                "id": "bench-append",
                "provider": "bench",
                "draft": True,
                "subject": "Hello {{ name }}",
                "html": "<p>{{ name }} in {{ city }}</p>",
            }
            api.post("/v1/campaigns", json=draft).raise_for_status()
            # Warm the append path (imports, compiled templates) before the baseline.
            warm = b'{"email": "warm@bench.example", "vars": {"name": "W", "city": "X"}}\n'
            api.post("/v1/campaigns/bench-append/recipients", content=warm).raise_for_status()
            baseline = memory_mb(api_proc.pid, "VmRSS")

            sent = [0]
            started = time.perf_counter()
            answer = api.post(
                "/v1/campaigns/bench-append/recipients",
                content=recipients(args.recipients, sent),
                headers={"Content-Type": "application/x-ndjson"},
                timeout=httpx.Timeout(600.0),
            )
            elapsed = time.perf_counter() - started
            answer.raise_for_status()
            result = answer.json()
            peak = memory_mb(api_proc.pid, "VmHWM")
            after = memory_mb(api_proc.pid, "VmRSS")
            total = api.get("/v1/campaigns/bench-append").json()["total"]

        print(f"recipients appended: {result['appended']:,} (rejected {result['rejected']}, "
              f"campaign total {total:,})")  # fmt: skip
        print(f"body streamed:       {sent[0] / 1e6:,.1f} MB in {elapsed:.1f} s "
              f"({result['appended'] / elapsed:,.0f} recipients/s)")  # fmt: skip
        print(f"API RSS baseline:    {baseline:.1f} MB (idle, after warm-up)")
        print(f"API RSS after:       {after:.1f} MB")
        print(f"API peak RSS:        {peak:.1f} MB (VmHWM)   target < {TARGET_MB:.0f} MB")
        print(f"ratio peak/baseline: {peak / baseline:.2f}")
        ok = peak < TARGET_MB and result["appended"] == args.recipients
        print("verdict:             " + ("PASS" if ok else "FAIL"))
        return 0 if ok else 1
    finally:
        if api_proc is not None:
            api_proc.terminate()
            try:
                api_proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                api_proc.kill()
        redis_server.stop()


if __name__ == "__main__":
    sys.exit(main())
