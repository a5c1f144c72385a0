"""What the senders of a batch share, and how one recipient's message is built from it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis

from dispatch import incidents
from dispatch.batch_items import Item
from dispatch.ledger import ct_source
from dispatch.limits import ConnectionSlots, ProviderLimiter, chunk_limit
from dispatch.models import CampaignContent, CampaignStatus
from dispatch.rendering import CompiledContent, campaign_context, recipient_context
from dispatch.settings import Settings
from dispatch.suppressions import describe as describe_suppression
from dispatch.unsubscribe import recipient_links
from providers.addresses import InvalidAddressError, normalize_address
from providers.base import OutgoingMessage, Transport
from providers.config import ProviderBase

log = logging.getLogger(__name__)


class BatchCampaign:
    """What the senders of a batch share: content, provider, templates, and control."""

    def __init__(
        self,
        content: CampaignContent,
        provider: ProviderBase,
        transport: Transport,
        compiled: CompiledContent,
        send_date: str,
        settings: Settings,
        limiter_client: aioredis.Redis,
        suppressed_copies: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """``suppressed_copies``: cc and bcc addresses put on the suppression list since
        the campaign was created (see load_batch), with their entries: this batch's
        messages go without a copy to them (each still to its To recipient), and the
        log says so."""
        self.content = content
        self.provider = provider
        self.transport = transport
        self.source = ct_source(transport.kind)  # "CT Source" of its system events
        self.compiled = compiled
        self.settings = settings
        for name, value in (("campaign id", content.id), ("account_id", settings.account_id)):
            if "|" in value:
                raise ValueError(f"{name} contains '|'")
        self.meta_tail = (
            f"|{settings.account_id}|{content.id}|{send_date}|{content.variant}|{content.category}|"
        )
        self.from_name = content.from_name if content.from_name is not None else provider.from_name
        self.from_address = content.from_address or provider.from_address
        self.reply_to = content.reply_to if content.reply_to is not None else provider.reply_to
        self.stop_reason = ""
        self.stop_kind = incidents.PauseKind.CONFIGURATION  # why, when it pauses
        self.resume_at: float | None = None  # when it resumes by itself (our own quota)
        self.status = CampaignStatus.RUNNING
        self.base_context = campaign_context(content.vars)
        self.cc, self.bcc = content.cc, content.bcc
        for address, entry in (suppressed_copies or {}).items():
            field_ = "cc" if address in content.cc else "bcc"
            self.cc = tuple(a for a in self.cc if a != address)
            self.bcc = tuple(a for a in self.bcc if a != address)
            log.warning(
                "campaign %s: %s %s is on the suppression list (%s): left out of this "
                "batch's messages (each still goes to its To recipient)",
                content.id, field_, address, describe_suppression(dict(entry)),
                extra={"campaign_id": content.id, "email": address, "field": field_,
                       "suppression": dict(entry)},
            )  # fmt: skip
        self.limiter = ProviderLimiter(
            limiter_client,
            provider,
            1 + len(self.cc) + len(self.bcc),
            settings.lease_ttl_ms / 1000,
        )
        self.chunk_size = chunk_limit(provider, transport.chunk_size)
        self.slots = ConnectionSlots(limiter_client, provider, settings.lease_ttl_ms / 1000)

    def build(self, item: Item) -> OutgoingMessage:
        """Render one recipient's message; raises RenderError / InvalidAddressError."""
        email = normalize_address(item.email)
        if "|" in email:
            raise InvalidAddressError(f"{email!r}: '|' cannot be carried in the meta string")
        headers: tuple[tuple[str, str], ...] = ()
        unsub = prefs = ""
        provider = self.provider
        if provider.preference_center != "none":
            headers, unsub, prefs = recipient_links(
                provider.preference_center, provider.preference_center_url,
                self.content.id, item.seq, email, self.content.category,
            )  # fmt: skip
        names = self.compiled.recipient_names
        if names is not None and names <= item.vars.keys():
            context = item.vars  # every name from the recipient (see CompiledContent)
        else:
            context = recipient_context(
                self.base_context,
                item.vars,
                email=email,
                user_id=item.user_id,
                campaign_id=self.content.id,
                unsubscribe_url=unsub,
                preferences_url=prefs,
            )
        r = self.compiled.render(context, self.transport.content_parts)
        content = self.content
        return OutgoingMessage(  # positional: this runs once per recipient
            item.seq, f"{email}{self.meta_tail}{item.seq}|", content.id, email,
            r.subject, r.html, r.text, self.from_address, self.from_name, r.amp,
            self.reply_to, self.cc, self.bcc, headers, item.vars, content.vars,
            unsub, prefs,
        )  # fmt: skip


def build_message(
    content: CampaignContent,
    provider: ProviderBase,
    transport: Transport,
    item: Item,
    settings: Settings,
    r: aioredis.Redis,
) -> OutgoingMessage:
    """One recipient's message of ``content``, built as its batch builds it (a campaign's
    test message); raises RenderError / InvalidAddressError / ValueError."""
    compiled = CompiledContent(
        subject=content.subject, html=content.html, text=content.text, amp=content.amp
    )
    send_date = datetime.now(UTC).strftime("%Y%m%d")
    return BatchCampaign(content, provider, transport, compiled, send_date, settings, r).build(item)
