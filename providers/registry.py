"""Build the transport for a provider configuration, by kind."""

from __future__ import annotations

from providers.base import Transport
from providers.config import ProviderBase, SmtpFamilyBase


def build_transport(config: ProviderBase) -> Transport:
    """Return the transport that sends through ``config``'s kind."""
    from providers.smtp import SmtpTransport

    if isinstance(config, SmtpFamilyBase):
        return SmtpTransport(config)
    raise TypeError(f"no transport for provider kind {getattr(config, 'kind', '?')!r}")
