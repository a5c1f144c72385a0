"""The TLS contexts a worker's main process makes before forking are the ones its
processes send with (providers.tls): otherwise every process loads the CA bundle again
(tens of milliseconds of CPU and its own copy of the certificates)."""

from __future__ import annotations

import httpx

from providers import tls
from providers.netguard import GuardedTransport


def test_the_adapters_use_the_contexts_preload_made() -> None:
    tls._http_context.cache_clear()
    tls._smtp_context.cache_clear()
    tls.preload()
    made = (tls._http_context.cache_info().misses, tls._smtp_context.cache_info().misses)
    assert made == (1, 1)
    transport = GuardedTransport(
        allow_private=True, limits=httpx.Limits(max_connections=1), verify=True, ca=""
    )
    assert transport._pool._ssl_context is tls.http_context(True)
    # The spellings the adapters use (providers.netguard, providers.smtp) hit the cache.
    assert tls.smtp_context(True, "") is tls.smtp_context(verify=True)
    assert tls.http_context(True, "") is tls.http_context(verify=True, ca="")
    after = (tls._http_context.cache_info().misses, tls._smtp_context.cache_info().misses)
    assert after == made
