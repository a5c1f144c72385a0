"""Replay realistic provider callbacks for a sent campaign (used by ``dispatch demo``).

The events follow the generic format of the seeds (v2 nested, at most 1000 events a
request) and a fixed, seeded mix: most messages are delivered, some of those clicked, a
few marked as spam or unsubscribed, and a few bounce hard or soft instead of being
delivered.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

import httpx

from providers.callbacks import MAX_EVENTS

# Share of messages, by outcome, drawn per message with a fixed seed (repeatable runs).
HARD_BOUNCE_SHARE = 0.02
SOFT_BOUNCE_SHARE = 0.03
SPAM_SHARE = 0.01
UNSUBSCRIBE_SHARE = 0.02
CLICK_SHARE = 0.15
SEED = 8058
DESCRIPTIONS = {
    "delivered": "250 2.0.0 OK",
    "hard_bounce": "550 5.1.1 user unknown",
    "soft_bounce": "452 4.2.2 mailbox full",
    "spam": "Marked as spam",
    "unsubscribed": "User unsubscribed",
    "clicked": "Link clicked",
}
# The counter each type moves (DESIGN §5), to wait for the campaign to show them.
COUNTERS = {
    "delivered": "delivered",
    "hard_bounce": "hard_bounced",
    "soft_bounce": "soft_bounced",
    "spam": "spam",
    "unsubscribed": "unsubscribed",
    "clicked": "clicked",
}
DEFAULT_WAIT_SECONDS = 30.0


def plan_events(metas_and_emails: list[tuple[str, str]], seed: int = SEED) -> list[dict[str, Any]]:
    """The generic v2 events to replay for these (meta, email) pairs, in order."""
    rng = random.Random(seed)
    now = int(time.time())
    events: list[dict[str, Any]] = []

    def add(kind: str, meta: str, email: str, offset: int) -> None:
        events.append(
            {
                "type": kind,
                "email": email,
                "meta": meta,
                "description": DESCRIPTIONS[kind],
                "timestamp": now + offset,
            }
        )

    for meta, email in metas_and_emails:
        draw = rng.random()
        if draw < HARD_BOUNCE_SHARE:
            add("hard_bounce", meta, email, 1)
            continue
        if draw < HARD_BOUNCE_SHARE + SOFT_BOUNCE_SHARE:
            add("soft_bounce", meta, email, 1)
            continue
        add("delivered", meta, email, 1)
        engagement = rng.random()
        if engagement < SPAM_SHARE:
            add("spam", meta, email, 60)
        elif engagement < SPAM_SHARE + UNSUBSCRIBE_SHARE:
            add("unsubscribed", meta, email, 60)
        elif engagement < SPAM_SHARE + UNSUBSCRIBE_SHARE + CLICK_SHARE:
            add("clicked", meta, email, 30)
    return events


def _payload(events: list[dict[str, Any]]) -> dict[str, Any]:
    success = [e for e in events if e["type"] in ("delivered", "clicked")]
    failed = [e for e in events if e["type"] not in ("delivered", "clicked")]
    return {"version": "v2", "events": {"success": success, "failed": failed}}


def replay_callbacks(
    api_url: str,
    campaign_id: str,
    provider_nickname: str,
    callback_url: str,
    metas_and_emails: list[tuple[str, str]],
    *,
    api_token: str | None = None,
    wait_seconds: float = DEFAULT_WAIT_SECONDS,
) -> dict[str, Any]:
    """Post generic callbacks for sent messages to ``callback_url`` and report.

    ``metas_and_emails``: the (meta, email) of each sent message of ``campaign_id``.
    Requests carry at most 1000 events (DESIGN §6). After posting, the campaign's
    counters are read from ``GET {api_url}/v1/campaigns/{campaign_id}`` (with
    ``api_token`` when given) until they show every replayed event or ``wait_seconds``
    pass. Returns ``{"provider", "campaign_id", "posted": {type: count}, "requests":
    [{"events", "status", "answer"}], "accepted": bool, "counters": dict | None,
    "counters_match": bool}``. Raises ``httpx.HTTPError`` when the callback URL cannot
    be reached.
    """
    events = plan_events(metas_and_emails)
    requests: list[dict[str, Any]] = []
    with httpx.Client(timeout=30) as client:
        for start in range(0, len(events), MAX_EVENTS):
            chunk = events[start : start + MAX_EVENTS]
            response = client.post(callback_url, json=_payload(chunk))
            try:
                answer: Any = response.json()
            except ValueError:
                answer = response.text[:500]
            requests.append({"events": len(chunk), "status": response.status_code,
                             "answer": answer})  # fmt: skip
    posted = Counter(e["type"] for e in events)
    expected = {COUNTERS[kind]: count for kind, count in posted.items()}
    counters = _wait_for_counters(api_url, campaign_id, expected, api_token, wait_seconds)
    return {
        "provider": provider_nickname,
        "campaign_id": campaign_id,
        "posted": dict(posted),
        "requests": requests,
        "accepted": all(r["status"] == 200 for r in requests),
        "counters": counters,
        "counters_match": counters is not None
        and all(counters.get(name) == count for name, count in expected.items()),
    }


def _wait_for_counters(
    api_url: str,
    campaign_id: str,
    expected: dict[str, int],
    api_token: str | None,
    wait_seconds: float,
) -> dict[str, Any] | None:
    """The campaign as the API shows it once ``expected`` holds (or at the deadline).

    None when the API cannot show the campaign (no such route, refused, unreachable).
    """
    headers = {"Authorization": f"Bearer {api_token}"} if api_token else {}
    deadline = time.monotonic() + wait_seconds
    url = f"{api_url.rstrip('/')}/v1/campaigns/{campaign_id}"
    with httpx.Client(timeout=10, headers=headers) as client:
        while True:
            try:
                response = client.get(url)
            except httpx.HTTPError:
                return None
            if response.status_code != 200:
                return None
            summary: dict[str, Any] = response.json()
            done = all(summary.get(name, 0) >= count for name, count in expected.items())
            if done or time.monotonic() > deadline:
                return summary
            time.sleep(0.2)
