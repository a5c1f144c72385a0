"""A worker process runs for weeks: what it keeps between batches (campaign contents and
their compiled templates, what it saw of providers' holds) stays bounded however many
campaigns and providers come and go."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from dispatch import limits, process_cache, store
from dispatch.batch_items import BatchStart
from dispatch.models import CampaignContent
from providers.config import parse_provider_config
from tests.helpers import create_held, recipients, run_batches, smtp_provider
from tests.smtp_server import SmtpTestServer


@pytest.fixture(autouse=True)
def _empty_caches() -> None:
    process_cache._compiled.clear()
    process_cache._contents.clear()


def _start(content: CampaignContent) -> BatchStart:
    return BatchStart(True, fingerprint=f"f-{content.id}", content=content.model_dump_json())


def test_large_campaigns_are_kept_within_a_size_budget_through_the_batch_path(
    redis_client: redis.Redis, smtp: SmtpTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Newsletters of a few hundred KB each (inline images): a process kept the content
    and compiled templates of its last 256 campaigns whatever their size, about 2 MB of
    memory each for 500 KB of HTML (600 MB a process after 250 of them). Now the least
    recently used go once their templates pass the budget (made small here)."""
    monkeypatch.setattr(process_cache, "_TEMPLATE_CHARS_KEPT", 300_000, raising=False)
    smtp_provider(redis_client, smtp.port)
    html = "<p>Hi {{ name }}</p><img src='data:image/png;base64," + "A" * 100_000 + "'>"
    ids = []
    for i in range(8):
        body = {"id": f"news-{i}", "provider": "local", "subject": f"News {i}",
                "html": html, "recipients": recipients(2)}  # fmt: skip
        campaign_id, batches = create_held(redis_client, body)
        run_batches(batches)
        ids.append(campaign_id)
    subjects = sorted(str(m.message["Subject"]) for m in smtp.handler.messages)
    assert subjects == sorted(f"News {i}" for i in range(8) for _ in range(2))
    for kept in (process_cache._compiled, process_cache._contents):
        assert len(kept) <= 3
        assert ids[-1] in kept  # the one in use stays
        assert ids[0] not in kept


def test_the_default_budget_bounds_the_templates_a_process_keeps() -> None:
    """With the default budget, 40 campaigns of 1 MB of HTML each leave at most 16 MB of
    templates in the process (the old cache kept all 40)."""
    for i in range(40):
        content = CampaignContent(id=f"big-{i}", provider="p", subject="s", html="x" * 1_000_000)
        assert process_cache.content_of(content.id, _start(content)) == content
    kept = [f"big-{i}" for i in range(40) if f"big-{i}" in process_cache._contents]
    assert 1 <= len(kept) <= 16
    assert kept[-1] == "big-39"


def test_a_campaign_in_use_stays_compiled_while_hundreds_of_others_come_and_go() -> None:
    """The cache was emptied whole past 256 campaigns: a long campaign in the middle of
    many small ones lost its compiled templates (and its content) with every 257th, and
    its next batch compiled them again. The least recently used go first now."""
    hot = CampaignContent(id="hot", provider="p", subject="Hot {{ name }}", html="<p>hot</p>")
    process_cache.content_of(hot.id, _start(hot))
    compiled = process_cache.compiled_for(hot)
    for i in range(600):
        other = CampaignContent(id=f"c{i}", provider="p", subject="s", html=f"<p>{i}</p>")
        process_cache.content_of(other.id, _start(other))
        process_cache.compiled_for(other)
        if i % 50 == 0:  # a batch of the long campaign, now and then
            assert process_cache.known_fingerprint("hot") == "f-hot"
            assert process_cache.content_of("hot", BatchStart(True, fingerprint="f-hot")) == hot
            assert process_cache.compiled_for(hot) is compiled
    assert len(process_cache._compiled) <= 256
    assert len(process_cache._contents) <= 256


def test_holds_seen_of_providers_no_longer_used_do_not_pile_up(
    redis_client: redis.Redis,
) -> None:
    """What a process saw of each provider's hold (dispatch.limits) stayed for every
    nickname it ever sent through: providers come and go, one per customer. Those whose
    hold ended and that were not looked at since go once there are many."""

    async def look(names: list[str]) -> None:
        client = store.async_client()
        try:
            for name in names:
                provider = parse_provider_config(
                    {"nickname": name, "kind": "smtp", "host": "127.0.0.1", "port": 25}
                )
                assert await limits.ProviderLimiter(client, provider).held() == 0.0
        finally:
            await client.aclose()

    first = [f"gone-{i}" for i in range(300)]
    asyncio.run(look(first))
    time.sleep(limits.HOLD_PEEK_SECONDS + 0.1)  # none of them is looked at again
    asyncio.run(look([f"new-{i}" for i in range(300)]))
    assert len(limits._seen_holds) <= 300
    assert not set(first) & set(limits._seen_holds)
