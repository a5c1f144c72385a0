"""The errors of campaign operations, each with the field at fault and its HTTP answer."""

from __future__ import annotations

from collections.abc import Sequence


class CampaignError(ValueError):
    """The campaign is invalid; ``field`` names what is at fault (HTTP 422)."""

    def __init__(
        self, message: str, field: str = "", problems: Sequence[tuple[str, str]] = ()
    ) -> None:
        super().__init__(message)
        self.field = field
        self.problems = tuple(problems)  # (field, message) each, when there are several


class CampaignConflictError(CampaignError):
    """The id is taken by a campaign with other content (HTTP 409)."""


class CampaignNotFoundError(KeyError):
    """No campaign has that id."""


class CampaignStateError(CampaignError):
    """The operation does not fit the campaign's status (HTTP 409)."""


class SuppressedCopyError(CampaignStateError):
    """A Cc or Bcc address is on the suppression list (HTTP 409, field ``cc`` or ``bcc``)."""
