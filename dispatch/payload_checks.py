"""Provider-specific checks of a campaign's content, run when the campaign is created."""

from __future__ import annotations

from dispatch.models import CampaignContent, Recipient
from providers.config import ProviderBase


def check_campaign_payload(
    content: CampaignContent, recipients: list[Recipient], provider: ProviderBase
) -> None:
    """Raise ``dispatch.campaigns.CampaignError`` when ``provider`` cannot send ``content``.

    SMTP kinds place rendered content in MIME and need nothing more than the template
    checks every campaign gets.
    """
    return None
