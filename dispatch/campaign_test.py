"""A campaign's test message: one recipient's message, rendered as the campaign sends it,
to another address (``POST /v1/campaigns/{id}/test``, ``dispatch send FILE --test ADDR``).

Before a campaign goes to a million people, its sender wants to see one message as a
recipient will: the subject and body rendered with that recipient's vars, the provider's
payload, the sender, the unsubscribe links. The test message is built by the same code
as the campaign's (dispatch.batch_campaign.build_message) and goes through the campaign's
provider within its limits, as the provider test email does.

What differs, so that the test touches nobody and nothing of the campaign: it goes to
the given address only (not to the campaign's cc and bcc), and it is built under a
campaign id of its own (``test-<hex>``), so its meta, unsubscribe token and preference
links name that id and the test address: a click or a callback on it moves no counter
of the campaign and suppresses no recipient of it. Nothing is written to the ledger.
Its links are real: the test id's provider is kept for a while (``test_email.provider_of_test``),
so that its unsubscribe link leads to the provider's custom preference center as a
recipient's does, and a one-click unsubscribe unsubscribes the test address.

A suppressed test address (a hard bounce, a complaint, an unsubscribe: someone who must
not get mail from us, or a tester who unsubscribed through a test's own link) is refused
with :class:`SuppressedTestAddressError`, naming the entry, unless the caller says
``allow_suppressed``: a test message is a real message in a real inbox, and a complaint
about it hurts the sender's reputation as one about a campaign does.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import redis
import redis.asyncio as aioredis

from dispatch import retention, store
from dispatch.batch_campaign import build_message
from dispatch.batch_items import Item
from dispatch.models import CampaignContent
from dispatch.recipient_pages import documents_of, page_span
from dispatch.settings import get_settings
from dispatch.test_email import (
    TEST_CAMPAIGN_PREFIX,
    TEST_LINK_SECONDS,
    TestEmailResult,
    refuse_suppressed,
    send_one,
    tested_provider_key,
    within_shared_limits,
)
from providers.addresses import InvalidAddressError
from providers.config import ProviderBase
from providers.errors import ErrorClass
from providers.registry import build_transport


def stored_recipient_at(r: redis.Redis, campaign_id: str, seq: int) -> dict[str, Any] | None:
    """The recipient stored at ``seq`` of the campaign (None past its end); raises
    :class:`retention.CampaignPurgedError` when the recipients were purged."""
    retention.ensure_not_purged(r, campaign_id)
    first, last, offset = page_span(seq, 1)
    pages = r.lrange(store.recipients_key(campaign_id), first, last)
    found = documents_of([p if isinstance(p, str) else p.decode() for p in pages], offset, 1)
    return found[0] if found else None


async def send_campaign_test(
    content: CampaignContent,
    config: ProviderBase,
    to: str,
    recipient: Mapping[str, Any],
    seq: int = 0,
    *,
    allow_suppressed: bool = False,
) -> TestEmailResult:
    """Send ``recipient``'s message of ``content`` (its vars and user id; its position
    ``seq``) to ``to`` alone; ``to`` is a normalised address. Never raises for the
    message or the provider: a template that cannot render, or the provider's refusal,
    is the answer (error class ``Invalid message``, or those of the test email).
    Raises :class:`SuppressedTestAddressError` when ``to`` is suppressed, unless
    ``allow_suppressed``."""
    settings = get_settings()
    test_id = f"{TEST_CAMPAIGN_PREFIX}{secrets.token_hex(4)}"
    test_content = content.model_copy(update={"id": test_id, "cc": (), "bcc": ()})
    item = Item(seq, to, str(recipient.get("user_id", "")), recipient.get("vars") or {})
    transport = build_transport(config, allow_private_endpoints=settings.allow_private_endpoints)

    async def send(limits: aioredis.Redis) -> TestEmailResult:
        if not allow_suppressed:
            await refuse_suppressed(to, limits)
        try:
            message = build_message(test_content, config, transport, item, settings, limits)
        except (InvalidAddressError, ValueError) as exc:  # RenderError is a ValueError
            return TestEmailResult(False, ErrorClass.INVALID_MESSAGE.value, str(exc))
        await limits.set(tested_provider_key(test_id), config.nickname, ex=TEST_LINK_SECONDS)
        return await send_one(
            config, message, settings=settings, limits=limits, transport=transport
        )

    return await within_shared_limits(send)
