"""Every benchmark in bench/ still runs end to end, on tiny sizes.

Benchmarks are code (STYLE 9): one that no longer starts, or whose messages no longer
all arrive, would only be found the next time someone measures. Each runs here as the
README runs it, in its own process, and must finish, print its figures and pass its own
checks (the end-to-end ones stop with FAILED when a message is missing). Its figures are
not judged: timing never decides a test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CASES = {
    "smtp_e2e": (["-m", "bench.smtp_e2e", "--recipients", "500", "--naive", "10"],
                 ["ratio dispatch / smtp-source:", "ratio dispatch / naive:", "worker peak RSS"]),
    "http_e2e": (["-m", "bench.http_e2e", "--recipients", "2000"],
                 ["ratio dispatch / pre-built:", "CPU: workers", "worker peak RSS"]),
    "tls_reuse": (["-m", "bench.tls_reuse", "--batches", "2"], ["ratio kept / new:"]),
    "smtp_tls": (["-m", "bench.smtp_tls", "--sessions", "2"],
                 ["starttls  ratio dispatch / default:", "tls       ratio dispatch / default:"]),
    "callback_ingest": (["bench/callback_ingest.py", "--requests", "2"],
                        ["ratio ingest/baseline:"]),
    "callback_apply": (["-m", "bench.callback_apply", "--batches", "2"],
                       ["ratio apply/baseline (events/s):", "checked: 2,000 applied"]),
    "api_append_memory": (["bench/api_append_memory.py", "--recipients", "2000"],
                          ["recipients appended: 2,000 (rejected 0", "API peak RSS:"]),
    "redis_memory": (["-m", "bench.redis_memory", "--recipients", "2000"],
                     ["used_memory growth:", "after the retention purge:", "ratio kept / taken:"]),
    "recipient_split": (["-m", "bench.recipient_split", "--recipients", "2000"],
                        ["NDJSON (baseline)", "JSON array, indented", "ratio to NDJSON"]),
    "mime_write": (["-m", "bench.mime_write", "--messages", "20"],
                   ["HTML on one line", "HTML in short lines", "EmailMessage"]),
    "redis_lua": (["-m", "bench.redis_lua"], ["cut it out and XADD it", "ratio"]),
    "enqueue_cpu": (["-m", "bench.enqueue_cpu", "--recipients", "2000", "--rounds", "1"],
                    ["us/recipient, Redis", "ratio enqueue / baseline"]),
    "batch_cpu": (["-m", "bench.batch_cpu", "--recipients", "3000", "--rounds", "1"],
                  ["least of 1:", "ratio run_batch / orjson payloads:"]),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_benchmark_runs(name: str) -> None:
    argv, expected = CASES[name]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    done = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        env=env,  # each benchmark starts its own Redis, workers and sinks
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    for line in expected:
        assert line in done.stdout, f"{line!r} missing from:\n{done.stdout}"
    assert "FAILED" not in output
