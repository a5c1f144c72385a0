"""``dispatch demo``: the whole system on one machine, a real campaign end to end.

Embedded Redis (unless DISPATCH_REDIS_URL is set), Celery worker processes, a local SMTP
sink; a personalized campaign goes through the real path and the report checks that the
sink received exactly one message per recipient, each with its own meta.
"""

from __future__ import annotations

import email
import email.policy
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dispatch.demo_callbacks import replay_callbacks
from dispatch.progress import ProgressBar
from dispatch.provider_store import provider_view
from dispatch.settings import get_settings
from dispatch.sinks import HttpSink, SmtpSink, free_port

META_RE = re.compile(r"^[^|]+@[^|]+\|[^|]+\|[^|]+\|\d{8}\|[^|]+\|[^|]+\|\d+\|$")
FIRST_NAMES = ("Sara", "Omar", "Lena", "Kenji", "Ana", "Tomás", "Zoë", "Priya", "Yusuf", "Mia")
CITIES = ("Lisbon", "Osaka", "Nairobi", "Berlin", "Lima", "Pune", "Oslo", "Austin")
TIMEOUT_SECONDS = 300.0
# What the replayed callbacks move (DESIGN §5 counters).
CALLBACK_COUNTERS = ("delivered", "hard_bounced", "soft_bounced", "spam", "unsubscribed", "clicked")

HTML = """<html><body>
<h1>Hello {{ first_name }}!</h1>
<p>This week's picks for {{ city }}: {{ offer }}.</p>
<p>Your member number is {{ member_no }}.</p>
<p><a href="https://acme.example/deals?u={{ user_id }}">See all deals</a></p>
</body></html>"""


@dataclass
class CampaignRun:
    id: str
    provider: str
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    callbacks: dict[str, Any] = field(default_factory=dict)


def _ascii(name: str) -> str:
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()


def demo_recipients(n: int) -> list[dict[str, Any]]:
    return [
        {
            "email": f"{_ascii(FIRST_NAMES[i % len(FIRST_NAMES)])}.{i}@demo.example",
            "user_id": f"user-{i}",
            "vars": {
                "first_name": FIRST_NAMES[i % len(FIRST_NAMES)],
                "city": CITIES[i % len(CITIES)],
                "member_no": 100000 + i,
            },
        }
        for i in range(n)
    ]


WORKER_LOG = Path(tempfile.gettempdir()) / "dispatch-demo-worker.log"


def _start_worker(concurrency: int) -> subprocess.Popen[bytes]:
    """Celery worker processes; their warnings go to WORKER_LOG, not over the report."""
    cmd = [sys.executable, "-m", "dispatch.cli", "worker", "--loglevel", "WARNING"]
    cmd += ["--concurrency", str(concurrency)]
    log = WORKER_LOG.open("wb")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=os.environ.copy())


class DemoError(Exception):
    """The demo cannot go on; the message says why (``dispatch demo`` exits 1)."""


def _wait(run: CampaignRun, quiet: bool, worker: subprocess.Popen[bytes]) -> None:
    """Until ``run`` is done (or TIMEOUT_SECONDS). Raises :class:`DemoError` when the
    ``worker`` exits meanwhile: the demo waited five minutes a campaign for workers
    that were gone, its progress standing still, and said so only in its report."""
    from dispatch import campaign_reads

    bar = ProgressBar(label=f"{run.provider:>10}")
    started = time.monotonic()
    deadline = started + TIMEOUT_SECONDS
    while True:
        summary = campaign_reads.campaign_summary(run.id)
        if not quiet:
            bar.update(summary["total"] - summary["queued"], summary["total"])
        if summary["status"] not in ("running", "scheduled") or time.monotonic() > deadline:
            break
        code = worker.poll()
        if code is not None:
            if not quiet:
                bar.close()
            raise DemoError(
                f"the demo's worker exited (code {code}) before campaign {run.id} was "
                f"done; its log: {WORKER_LOG}"
            )
        time.sleep(0.2)
    if not quiet:
        bar.close()
    from dispatch import store

    # From the campaign's own start to its completion (both campaigns run side by side).
    started_at, completed_at = store.sync_client().hmget(
        store.campaign_key(run.id), ["started_at", "completed_at"]
    )
    if started_at and completed_at:
        run.seconds = float(completed_at) - float(started_at)
    else:
        run.seconds = time.monotonic() - started
    run.summary = summary


def run_demo(recipients: int = 2000, as_json: bool = False, workers: int = 2) -> int:
    """Run the demo; 0 only if every recipient settled and the sink saw each message once."""
    from dispatch import campaign_reads, campaigns
    from dispatch.crypto import ensure_secret_key
    from dispatch.models import campaign_request
    from dispatch.provider_store import save_provider
    from dispatch.redis_server import ensure_redis_url

    os.environ.setdefault("DISPATCH_ALLOW_PRIVATE_ENDPOINTS", "true")
    for name in ("mail.log", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    ensure_redis_url()
    ensure_secret_key()
    quiet = as_json

    def say(*parts: object) -> None:
        if not quiet:
            print(*parts, file=sys.stderr)

    api_port = free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    os.environ["DISPATCH_PUBLIC_URL"] = api_url  # callback URLs point at the demo's API
    get_settings.cache_clear()
    with SmtpSink() as smtp_sink, HttpSink() as http_sink:
        worker = _start_worker(workers)
        api = _start_api(api_port)
        try:
            for provider in _demo_providers(smtp_sink.port, http_sink.url):
                save_provider(provider)
            say(
                f"SMTP sink on 127.0.0.1:{smtp_sink.port}, HTTP sink on {http_sink.url}, "
                f"API on {api_url}; {workers} worker process(es)"
            )
            runs = []
            for nickname in ("demo-smtp", "demo-http"):
                request = campaign_request(
                    {
                        "provider": nickname,
                        "subject": "{{ first_name }}, your {{ city }} picks are here",
                        "html": HTML,
                        "vars": {"offer": "2 for 1 on everything in the bakery"},
                        "category": "weekly-deals",
                        "recipients": demo_recipients(recipients),
                    }
                )
                runs.append(CampaignRun(campaigns.create_campaign(request)[0], nickname))
            for run in runs:
                _wait(run, quiet, worker)
            checks = [_check_smtp(smtp_sink, runs[0]), _check_http(http_sink, runs[1])]
            say("replaying provider callbacks through the API ...")
            _wait_api(api_url)
            for run, check in zip(runs, checks, strict=True):
                run.callbacks = replay_callbacks(
                    api_url,
                    run.id,
                    run.provider,
                    provider_view(run.provider)["callback_url"],
                    check.sent,
                )
                run.summary = campaign_reads.campaign_summary(run.id)
        finally:
            for proc in (api, worker):
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        sample = smtp_sink.messages[0][2].decode("utf-8", "replace") if smtp_sink.messages else ""
    return _report(runs, checks, sample, as_json)


def _start_api(port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "dispatch.cli", "api", "--port", str(port)]
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy()
    )


def _wait_api(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the demo's API did not start at {url}")


def _demo_providers(smtp_port: int, http_url: str) -> list[dict[str, Any]]:
    sender = {"from_name": "Acme Deals", "from_address": "deals@acme.example"}
    return [
        {
            "nickname": "demo-smtp",
            "kind": "smtp",
            "host": "127.0.0.1",
            "port": smtp_port,
            "security": "none",
            "max_connections": 4,
            **sender,
        },
        {
            # The seed's Generic HTTP example, in batch mode (DESIGN §4).
            "nickname": "demo-http",
            "kind": "http",
            "method": "POST",
            "endpoint": f"{http_url}/send",
            "auth": "none",
            "headers": {"Authorization": "Bearer demo-key", "X-Campaign": "$$CampaignID"},
            "batch": True,
            "batch_size": 500,
            "max_connections": 2,
            "body": {
                "cid": "$$CampaignID",
                "msgs": [
                    {
                        "to": "$$To",
                        "mid": "$$MessageID",
                        "name": "$$first_name",
                        "content": "$$HTML",
                        "heading": "$$Subject",
                        "from": "$$FromName",
                        "senderaddr": "$$FromAddress",
                    }
                ],
            },
            **sender,
        },
    ]


@dataclass
class Check:
    name: str
    ok: bool
    text: str
    sent: list[tuple[str, str]] = field(default_factory=list)  # (meta, email) received


def _check_smtp(sink: SmtpSink, run: CampaignRun) -> Check:
    metas: list[str] = []
    for _, _, data in sink.messages:
        msg = email.message_from_bytes(data, policy=email.policy.default)
        metas.append(str(msg.get("X-CleverTap_META", "")))
    return _check_metas("SMTP sink", metas, run)


def _check_http(sink: HttpSink, run: CampaignRun) -> Check:
    metas: list[str] = []
    requests = sink.requests
    for _, _, _, body in requests:
        metas.extend(str(m.get("mid", "")) for m in json.loads(body).get("msgs", []))
    check = _check_metas("HTTP sink", metas, run)
    check.text += f" in {len(requests)} request{'' if len(requests) == 1 else 's'}"
    return check


def _check_metas(name: str, metas: list[str], run: CampaignRun) -> Check:
    well_formed = all(META_RE.match(m) for m in metas)
    distinct = len(set(metas))
    ok = well_formed and distinct == len(metas) == run.summary.get("sent")
    text = (
        f"{name} received {len(metas)} messages, {distinct} distinct metas, "
        f"{'all' if well_formed else 'NOT all'} in the DESIGN §3 format"
    )
    return Check(name, ok, text, [(m, m.split("|", 1)[0]) for m in metas])


def _report(runs: list[CampaignRun], checks: list[Check], sample: str, as_json: bool) -> int:
    rows = []
    ok = all(c.ok for c in checks)
    for run in runs:
        s = run.summary
        rows.append(
            {
                k: s.get(k)
                for k in ("id", "provider", "total", "sent", "failed", "suppressed", "unknown")
            }
        )
        ok &= s.get("queued", 1) == 0 and s.get("status") == "completed"
        ok &= s.get("sent") == s.get("total")
    if not ok:
        _explain_failures(runs)
        print(f"worker log: {WORKER_LOG}", file=sys.stderr)
    for run, row in zip(runs, rows, strict=True):
        callbacks_ok = bool(run.callbacks.get("accepted") and run.callbacks.get("counters_match"))
        ok &= callbacks_ok
        row["callbacks"] = {
            "ok": callbacks_ok,
            "posted": run.callbacks.get("posted", {}),
            "counters": _callback_counters(run),
        }
    if as_json:
        report = {
            "ok": ok,
            "campaigns": rows,
            "checks": [{"name": c.name, "ok": c.ok, "text": c.text} for c in checks],
        }
        print(json.dumps(report))
        return 0 if ok else 1
    print("\nCampaigns")
    print(
        f"  {'id':<18}{'provider':<12}{'total':>7}{'sent':>7}{'failed':>7}"
        f"{'suppr.':>7}{'unknown':>8}{'msg/s':>9}"
    )
    for run, row in zip(runs, rows, strict=True):
        rate = (row["sent"] or 0) / run.seconds if run.seconds else 0.0
        print(
            f"  {row['id']:<18}{row['provider']:<12}{row['total']:>7}{row['sent']:>7}"
            f"{row['failed']:>7}{row['suppressed']:>7}{row['unknown']:>8}{rate:>9,.0f}"
        )
    print("  (msg/s: from each campaign's start to its end, both sharing two worker processes")
    print("   and sinks written in Python in this process; bench/ measures throughput)")
    print()
    for check in checks:
        print(f"  [{'ok' if check.ok else 'FAILED'}] {check.text}")
    print("\nCallbacks replayed through the API (generic v2 format), as the counters show them")
    for run in runs:
        cb = run.callbacks
        posted = ", ".join(f"{k} {v}" for k, v in sorted(cb.get("posted", {}).items()))
        shown = ", ".join(f"{k} {v}" for k, v in _callback_counters(run).items())
        mark = "ok" if cb.get("accepted") and cb.get("counters_match") else "FAILED"
        print(f"  [{mark}] {run.provider}: posted {posted}\n         counters: {shown}")
    print("\nOne rendered message, as the SMTP server received it:\n")
    print(sample[:2500])
    print("RESULT:", "every recipient reached a terminal state" if ok else "FAILED")
    return 0 if ok else 1


def _callback_counters(run: CampaignRun) -> dict[str, Any]:
    """The campaign's counters that the replayed callbacks move."""
    return {k: run.summary.get(k, 0) for k in CALLBACK_COUNTERS}


def _explain_failures(runs: list[CampaignRun]) -> None:
    from dispatch import store
    from dispatch.ledger import parse_record

    for run in runs:
        for raw in store.sync_client().hvals(store.ledger_key(run.id)):
            rec = parse_record(raw)
            if rec and rec["state"] != "sent":
                print(f"{run.provider}: first message not sent: {rec}", file=sys.stderr)
                break
