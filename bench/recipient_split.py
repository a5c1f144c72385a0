"""Splitting a streamed recipient list: a JSON array against NDJSON, in the same run.

``POST /v1/campaigns/{id}/recipients`` cuts its body into one document per recipient as
the body streams in (``dispatch/recipient_stream.py``). NDJSON is cut at newlines, which
is about as cheap as cutting can be; a JSON array needs its structure followed. This
prints the CPU time of each for the same recipients (bench-sized, fed in 64 KiB chunks
as the API reads them, compact and indented arrays) and the ratio to NDJSON.

    .venv/bin/python -m bench.recipient_split [--recipients 400000]
"""

from __future__ import annotations

import argparse
import json
import time

import orjson

from dispatch.recipient_stream import RecipientSplitter

CHUNK = 1 << 16


def split_seconds(body: bytes) -> tuple[int, float]:
    """Documents cut out of ``body`` and the CPU seconds it took (best of three)."""
    best = float("inf")
    count = 0
    for _ in range(3):
        splitter = RecipientSplitter()
        started = time.process_time()
        count = 0
        for pos in range(0, len(body), CHUNK):
            count += len(splitter.feed(body[pos : pos + CHUNK]))
        count += len(splitter.finish())
        best = min(best, time.process_time() - started)
    return count, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=400_000)
    n = parser.parse_args().recipients
    people = [
        {"email": f"user{i}@bench.example", "vars": {"name": f"Name{i}", "city": "Lisbon"}}
        for i in range(n)
    ]
    bodies = {
        "NDJSON (baseline)": b"\n".join(map(orjson.dumps, people)),
        "JSON array": orjson.dumps(people),
        "JSON array, indented": json.dumps(people, indent=2).encode(),
    }
    baseline = 0.0
    for label, body in bodies.items():
        count, seconds = split_seconds(body)
        if count != n:
            raise SystemExit(f"FAILED: {label} gave {count} documents of {n}")
        baseline = baseline or seconds
        print(
            f"  {label:22s} {n:,} recipients  {seconds:6.2f} s CPU  "
            f"{seconds / n * 1e6:5.2f} us each  ratio to NDJSON {seconds / baseline:5.2f}"
        )


if __name__ == "__main__":
    main()
