"""Review K9: an AMP part never ends a message (amp.dev: some clients show only the last
part, and would show the AMP source). Campaigns with AMP and no HTML are refused now, but
a message still had no HTML part when its HTML rendered empty for its recipient, or when
its campaign was stored before the refusal. Real Redis, a real SMTP server."""

from __future__ import annotations

import orjson
import redis

from dispatch import campaigns, store
from tests.helpers import create_held, run_batches, run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer

AMP = "<!doctype html><html ⚡4email><body>Hi {{ name }}</body></html>"


def _parts(smtp: SmtpTestServer) -> dict[str, list[str]]:
    """The content types of each message received, by recipient."""
    return {
        m.rcpt_tos[0]: [p.get_content_type() for p in m.message.iter_parts()] for m in smtp.messages
    }


def _body(html: str, people: list[dict[str, str]], **fields: object) -> dict[str, object]:
    recipients = [{"email": p.pop("email"), "vars": p} for p in people]
    return {"provider": "local", "subject": "s", "html": html, "amp": AMP, "text": "t",
            "recipients": recipients, **fields}  # fmt: skip


def test_a_message_whose_html_renders_empty_goes_without_its_amp_part(
    redis_client: redis.Redis,
) -> None:
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port)
        people = [
            {"email": "a@example.com", "h": "", "name": "A"},
            {"email": "b@example.com", "h": "<p>b</p>", "name": "B"},
        ]
        body = _body("{{ h }}", people)
        run_inline(redis_client, body)
        assert _parts(smtp) == {
            "a@example.com": ["text/plain"],
            "b@example.com": ["text/plain", "text/x-amp-html", "text/html"],
        }


def test_a_campaign_with_amp_and_no_html_stored_before_the_refusal_sends_no_amp_last(
    redis_client: redis.Redis,
) -> None:
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port)
        body = _body("<p>x</p>", [{"email": "a@example.com", "name": "A"}], draft=True)
        cid, _ = create_held(redis_client, body)
        key = store.campaign_key(cid)
        content = orjson.loads(redis_client.hget(key, "content") or "")
        content["html"] = ""  # as a version that took AMP alone stored it
        redis_client.hset(key, "content", orjson.dumps(content))
        batches: list[tuple[str, int]] = []
        campaigns.start_campaign(
            cid, client=redis_client, enqueue=lambda c, b: batches.append((c, b))
        )
        run_batches(batches)
        assert _parts(smtp) == {"a@example.com": ["text/plain"]}
