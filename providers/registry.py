"""Build the transport for a provider configuration, by kind."""

from __future__ import annotations

from providers.base import Transport
from providers.config import HttpConfig, ProviderBase, SmtpFamilyBase


def build_transport(config: ProviderBase, *, allow_private_endpoints: bool = False) -> Transport:
    """Return the transport that sends through ``config``'s kind.

    ``allow_private_endpoints`` is ``DISPATCH_ALLOW_PRIVATE_ENDPOINTS`` (the ``http`` kind's
    address guard). Raises ``TypeError`` for a kind without a transport.
    """
    from providers.smtp import SmtpTransport

    if isinstance(config, SmtpFamilyBase):
        return SmtpTransport(config)
    if isinstance(config, HttpConfig):
        from providers.http import HttpTransport

        return HttpTransport(config, allow_private=allow_private_endpoints)
    raise TypeError(f"no transport for provider kind {getattr(config, 'kind', '?')!r}")
