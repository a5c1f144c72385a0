"""What a worker process keeps between batches: providers, compiled templates, contents."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

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
# Campaigns whose content and compiled templates a process keeps, the most recently used:
# at most this many, and no more template characters than this (the last one used is
# kept whatever its size). A campaign is kept after it finished, and each holds about
# three times its templates (the content, the compiled code's copy of its text): kept by
# count alone, 250 newsletters of 500 KB (inline images) took a process to 600 MB.
_CAMPAIGNS_KEPT = 256
_TEMPLATE_CHARS_KEPT = 16 * 1024 * 1024

V = TypeVar("V")


class _Recent(Generic[V]):
    """Values by campaign id, the least recently used dropped past a count or a size."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, tuple[V, int]] = OrderedDict()
        self.chars = 0  # the sizes of what is kept

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def get(self, key: str) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: str, value: V, size: int) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.chars -= old[1]
        self._items[key] = (value, size)
        self.chars += size
        while len(self._items) > 1 and (
            len(self._items) > _CAMPAIGNS_KEPT or self.chars > _TEMPLATE_CHARS_KEPT
        ):
            self.chars -= self._items.popitem(last=False)[1][1]

    def clear(self) -> None:
        self._items.clear()
        self.chars = 0


def _template_chars(content: CampaignContent) -> int:
    return len(content.subject) + len(content.html) + len(content.text) + len(content.amp)


_compiled: _Recent[CompiledContent] = _Recent()
_contents: _Recent[tuple[str, CampaignContent]] = _Recent()  # (fingerprint, content)


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
    """The campaign's templates, compiled once per process (while it is among the
    recently used)."""
    compiled = _compiled.get(content.id)
    if compiled is None:
        compiled = CompiledContent(
            subject=content.subject, html=content.html, text=content.text, amp=content.amp
        )
        _compiled.put(content.id, compiled, _template_chars(content))
    return compiled


def content_of(campaign_id: str, begun: BatchStart) -> CampaignContent | None:
    """The campaign's content: decoded from ``begun`` when it came (and kept, with its
    fingerprint), else this process's copy; None when the campaign is not stored."""
    if begun.content is not None:
        content = decode_content(begun.content)
        _contents.put(campaign_id, (begun.fingerprint, content), _template_chars(content))
        return content
    cached = _contents.get(campaign_id)
    if cached is None or not begun.fingerprint or cached[0] != begun.fingerprint:
        return None
    return cached[1]


def known_fingerprint(campaign_id: str) -> str:
    """The fingerprint of the campaign's content this process holds ("" for none)."""
    known = _contents.get(campaign_id)
    return known[0] if known else ""
