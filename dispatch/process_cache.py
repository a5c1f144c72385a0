"""What a worker process keeps between batches: providers, compiled templates, contents."""

from __future__ import annotations

from dispatch.batch_items import BatchStart
from dispatch.campaign_reads import decode_content
from dispatch.limits import chunk_limit
from dispatch.models import CampaignContent
from dispatch.provider_store import decode_provider
from dispatch.rendering import CompiledContent
from dispatch.settings import Settings
from providers.base import Transport
from providers.config import ProviderBase

_providers: dict[str, tuple[str, ProviderBase, Transport]] = {}
# Providers whose transports a process keeps (the most recently built): nicknames come and
# go over weeks (providers deleted, one per customer), and each transport keeps its
# campaigns' MIME writers; one rebuilt after falling out costs a decode.
_PROVIDERS_KEPT = 64
_compiled: dict[str, CompiledContent] = {}
_contents: dict[str, tuple[str, CampaignContent]] = {}  # campaign id: (fingerprint, content)


def provider_for(nickname: str, raw: str, settings: Settings) -> tuple[ProviderBase, Transport]:
    """The provider stored as ``raw`` and its transport, decoded and built once per
    configuration per process (the transport's connections are its own)."""
    from providers.registry import build_transport

    cached = _providers.get(nickname)
    if cached is None or cached[0] != raw:
        provider, _ = decode_provider(raw)
        transport = build_transport(
            provider, allow_private_endpoints=settings.allow_private_endpoints
        )
        _providers.pop(nickname, None)
        while len(_providers) >= _PROVIDERS_KEPT:
            del _providers[next(iter(_providers))]  # the one built longest ago
        cached = _providers[nickname] = (raw, provider, transport)
    return cached[1], cached[2]


def chunk_size(nickname: str, raw: str, settings: Settings) -> int:
    """How many messages a sender of this provider hands over at once (see chunk_limit)."""
    provider, transport = provider_for(nickname, raw, settings)
    return chunk_limit(provider, transport.chunk_size)


def compiled_for(content: CampaignContent) -> CompiledContent:
    """The campaign's templates, compiled once per process."""
    compiled = _compiled.get(content.id)
    if compiled is None:
        compiled = CompiledContent(
            subject=content.subject, html=content.html, text=content.text, amp=content.amp
        )
        if len(_compiled) > 256:
            _compiled.clear()
        _compiled[content.id] = compiled
    return compiled


def content_of(campaign_id: str, begun: BatchStart) -> CampaignContent | None:
    """The campaign's content: decoded from ``begun`` when it came (and kept, with its
    fingerprint), else this process's copy; None when the campaign is not stored."""
    if begun.content is not None:
        content = decode_content(begun.content)
        if len(_contents) > 256:
            _contents.clear()
        _contents[campaign_id] = (begun.fingerprint, content)
        return content
    cached = _contents.get(campaign_id)
    if cached is None or not begun.fingerprint or cached[0] != begun.fingerprint:
        return None
    return cached[1]


def known_fingerprint(campaign_id: str) -> str:
    """The fingerprint of the campaign's content this process holds ("" for none)."""
    known = _contents.get(campaign_id)
    return known[0] if known else ""
