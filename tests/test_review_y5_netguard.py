"""Review Y5, the private-address guard (providers/netguard.py) tried for real on 127.0.0.1.

* a DNS64 answer (64:ff9b::/96, RFC 6052) for a public IPv4 host is that host: it was
  refused as "reserved", so on an IPv6-only network with DNS64 every IPv4-only endpoint
  was refused; one embedding a private address is still refused;
* other spellings of the loopback address (decimal, hex, short, IPv4-mapped, full-width
  dots, ``0``) are refused when the provider is saved and when it sends, and the local
  server hears nothing;
* a name answering public when saved and loopback when sending (DNS rebinding) is refused
  at the connect; proxy variables of the environment are not used (a proxy would make
  the checked address meaningless).
"""

from __future__ import annotations

import httpcore
import pytest

from providers.http import HttpTransport
from providers.netguard import GuardedBackend, PrivateEndpointError, check_endpoint
from tests.http_sink import HttpSink
from tests.test_http_provider import http_config, message, send

DNS64_PUBLIC = "64:ff9b::5db8:d822"  # 93.184.216.34 through the well-known NAT64 prefix


class Unreachable(httpcore.AsyncNetworkBackend):
    """An inner backend that records where it was asked to connect and connects nowhere."""

    def __init__(self) -> None:
        self.connects: list[str] = []

    async def connect_tcp(
        self, host: str, port: int, *args: object, **kwargs: object
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append(host)
        raise httpcore.ConnectError("unreachable in this test")


@pytest.mark.asyncio
async def test_a_dns64_answer_for_a_public_host_is_reached() -> None:
    async def dns64(name: str, port: int) -> list[str]:
        return [DNS64_PUBLIC]

    endpoint = "https://esp.invalid/send"
    assert await check_endpoint(endpoint, allow_private=False, resolve=dns64) == [DNS64_PUBLIC]
    inner = Unreachable()
    backend = GuardedBackend(allow_private=False, resolve=dns64, inner=inner)
    with pytest.raises(httpcore.ConnectError, match="unreachable"):
        await backend.connect_tcp("esp.invalid", 443)
    assert inner.connects == [DNS64_PUBLIC]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("address", "reason"),
    [("64:ff9b::a9fe:a9fe", "link-local"), ("64:ff9b::7f00:1", "loopback"),
     ("64:ff9b::a00:1", "private"), ("64:ff9b:1::808:808", "reserved")],
)  # fmt: skip
async def test_a_nat64_address_of_a_private_host_is_refused(address: str, reason: str) -> None:
    async def dns64(name: str, port: int) -> list[str]:
        return [address]

    with pytest.raises(PrivateEndpointError, match=reason):
        await check_endpoint("https://esp.invalid/send", allow_private=False, resolve=dns64)


@pytest.mark.asyncio
async def test_other_spellings_of_loopback_are_refused_on_save_and_send() -> None:
    with HttpSink() as sink:
        port = sink.port
        hosts = ["2130706433", "0x7f.1", "0x7f000001", "127.1", "LOCALHOST", "0",
                 "127\u30020\u30020\u30021", "[::ffff:7f00:1]",
                 "[0:0:0:0:0:ffff:127.0.0.1]"]  # fmt: skip
        for host in hosts:
            endpoint = f"http://{host}:{port}/send"
            with pytest.raises(PrivateEndpointError):
                await check_endpoint(endpoint, allow_private=False)
            with pytest.raises(PrivateEndpointError, match="DISPATCH_ALLOW_PRIVATE_ENDPOINTS"):
                await send(HttpTransport(http_config(endpoint)), [message(1)])
        assert sink.requests == []


@pytest.mark.asyncio
async def test_a_name_rebound_to_loopback_after_saving_is_refused_at_the_connect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = iter([["8.8.8.8"], ["127.0.0.1"]])

    async def rebinding(name: str, port: int) -> list[str]:
        return next(answers)

    with HttpSink() as sink:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(name, sink.url)  # would carry the request if it were used
        endpoint = f"http://esp.invalid:{sink.port}/send"
        assert await check_endpoint(endpoint, allow_private=False, resolve=rebinding)
        transport = HttpTransport(http_config(endpoint), resolve=rebinding)
        with pytest.raises(PrivateEndpointError, match=r"127\.0\.0\.1 \(loopback\)"):
            await send(transport, [message(1)])
        assert sink.requests == []
