"""Test helpers: save a provider (smtp, http), run a campaign's batches in-process (no Celery),
make an unsubscribe token as messages sent before tokens were sealed carry it."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import orjson
import redis

from dispatch import campaign_reads, campaigns, crypto, store
from dispatch.models import CampaignRequest
from dispatch.provider_store import save_provider
from dispatch.sending import BatchResult, run_batch
from dispatch.settings import Settings


def smtp_provider(
    r: redis.Redis, port: int, nickname: str = "local", **fields: Any
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "nickname": nickname,
        "kind": "smtp",
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "from_name": "Acme Deals",
        "from_address": "deals@acme.example",
        **fields,
    }
    save_provider(data, r)
    return data


def http_provider(r: redis.Redis, url: str, **fields: Any) -> None:
    """A batching http provider ("esp") that posts to ``url``/send."""
    save_provider(
        {
            "nickname": "esp",
            "kind": "http",
            "method": "POST",
            "endpoint": f"{url}/send",
            "batch": True,
            "batch_size": 1000,
            "body": {
                "msgs": [
                    {
                        "to": "$$To",
                        "mid": "$$MessageID",
                        "subject": "$$Subject",
                        "html": "$$HTML",
                        "from": "$$FromName <$$FromAddress>",
                    }
                ]
            },
            "from_name": "Acme",
            "from_address": "deals@acme.example",
            **fields,
        },
        r,
    )


def recipients(n: int, domain: str = "example.com") -> list[dict[str, Any]]:
    return [
        {"email": f"user{i}@{domain}", "user_id": f"u{i}", "vars": {"name": f"User {i}"}}
        for i in range(n)
    ]


def create_held(r: redis.Redis, body: dict[str, Any]) -> tuple[str, list[tuple[str, int]]]:
    """Create a campaign whose batch tasks are held here instead of enqueued: its id and
    the (campaign, batch) pairs, for the test to run as it likes."""
    batches: list[tuple[str, int]] = []
    campaign_id, _ = campaigns.create_campaign(
        CampaignRequest.model_validate(body),
        client=r,
        enqueue=lambda cid, b: batches.append((cid, b)),
    )
    return campaign_id, batches


def run_inline(
    r: redis.Redis, body: dict[str, Any], settings: Settings | None = None, rounds: int = 5
) -> tuple[str, list[BatchResult]]:
    """Create a campaign and run its batches in this process until none waits for retry."""
    campaign_id, batches = create_held(r, body)
    results = run_batches(batches, settings, rounds)
    campaigns.finish_if_done(campaign_id, r)
    return campaign_id, results


def run_batches(
    batches: list[tuple[str, int]], settings: Settings | None = None, rounds: int = 5
) -> list[BatchResult]:
    async def go() -> list[BatchResult]:
        client = store.async_client()
        out: list[BatchResult] = []
        try:
            todo = list(batches)
            for _ in range(rounds):
                again = []
                for cid, b in todo:
                    result = await run_batch(cid, b, r=client, settings=settings)
                    out.append(result)
                    if result.retry_at is not None:
                        again.append((cid, b))
                if not again:
                    break
                await asyncio.sleep(0.2)
                todo = again
        finally:
            await client.aclose()
        return out

    return asyncio.run(go())


def assert_each_sent_once(r: redis.Redis, campaign_id: str, received: list[str]) -> int:
    """DESIGN §7 after a crash or a lost connection: no address received twice, every
    message the ledger says ``sent`` received, and the only other outcome ``unknown``
    (in flight at the break: it may or may not have arrived). Returns how many ended
    ``unknown``."""
    from collections import Counter

    from dispatch.ledger import parse_record

    counts = Counter(received)
    assert not counts or max(counts.values()) == 1, "an address received twice"
    total = campaign_reads.campaign_summary(campaign_id, r)["total"]
    unknown = 0
    for seq in range(total):
        rec = parse_record(r.hget(store.ledger_key(campaign_id), str(seq)))
        assert rec is not None and rec["state"] in ("sent", "unknown"), (seq, rec)
        if rec["state"] == "sent":
            assert f"user{seq}@example.com" in counts, seq
        else:
            unknown += 1
    return unknown


def legacy_token(campaign_id: str, seq: int, email: str, category: str) -> str:
    """An unsubscribe token as ``make_token`` wrote it until tokens were sealed (the same
    lines): readable JSON, a dot, its HMAC. Mail already sent carries these."""
    payload = orjson.dumps([campaign_id, seq, email, category])
    body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii")
    return f"{body}.{crypto.sign('unsubscribe', payload)}"


def campaign_body(campaign_id: str, n: int, **fields: Any) -> dict[str, Any]:
    """A campaign of ``n`` recipients through provider "local", greeting each by name."""
    return {
        "id": campaign_id,
        "provider": "local",
        "subject": "Hello {{ name }}",
        "html": "<p>Hi {{ name }}</p>",
        "recipients": recipients(n),
        **fields,
    }


def use_keys(monkeypatch: Any, current: str, previous: str | None) -> None:
    """Run with DISPATCH_SECRET_KEY ``current`` and DISPATCH_PREVIOUS_SECRET_KEYS
    ``previous`` (None: unset), as processes restarted with them do."""
    from dispatch.settings import get_settings

    monkeypatch.setenv("DISPATCH_SECRET_KEY", current)
    if previous is None:
        monkeypatch.delenv("DISPATCH_PREVIOUS_SECRET_KEYS", raising=False)
    else:
        monkeypatch.setenv("DISPATCH_PREVIOUS_SECRET_KEYS", previous)
    get_settings.cache_clear()


def auth_smtp_provider(port: int, credentials: tuple[str, str]) -> dict[str, Any]:
    """Provider "local": the SMTP server on ``port`` (no TLS), logging in with
    ``credentials``."""
    return {
        "nickname": "local",
        "kind": "smtp",
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "username": credentials[0],
        "password": credentials[1],
        "from_address": "deals@acme.example",
    }
