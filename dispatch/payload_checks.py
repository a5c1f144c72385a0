"""Provider-specific checks of a campaign's content, run when the campaign is created."""

from __future__ import annotations

from dispatch.models import CampaignContent, Recipient, recipient_vars
from providers.config import HttpConfig, ProviderBase
from providers.http_config import check_placeholders


def check_campaign_payload(
    content: CampaignContent, recipients: list[Recipient], provider: ProviderBase
) -> None:
    """Raise ``dispatch.campaigns.CampaignError`` when ``provider`` cannot send ``content``.

    SMTP kinds place rendered content in MIME and need nothing beyond the template checks
    every campaign gets. The ``http`` kind fills ``$$`` placeholders: each custom one must
    have a value (DESIGN §3: an unresolvable placeholder is refused with 422 naming it).
    """
    if not isinstance(provider, HttpConfig):
        return
    from dispatch.campaigns import CampaignError

    problems = check_placeholders(provider, content.vars, (recipient_vars(r) for r in recipients))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CampaignError(
            problems[0].message + more,
            field=f"vars.{problems[0].name}",  # where its value belongs (as on append)
            problems=[(f"vars.{p.name}", p.message) for p in problems],
        )
