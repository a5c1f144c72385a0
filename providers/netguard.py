"""Refuse connections to private, loopback, link-local and other non-public addresses.

A Generic HTTP endpoint is user input: without a guard it reaches the metadata service
(169.254.169.254), the Redis next door or anything on the internal network (SSRF). The
guard runs at connect time, inside the HTTP client's network backend: the host is
resolved once, every address is checked, and the connection is made to a checked address
(resolve, check, pin). The name is never resolved a second time, so DNS rebinding (a
public answer at check time, a private one at connect time) cannot slip past, and every
new connection of a pooled client is checked again. TLS still verifies the certificate and
sends SNI for the original host name (httpcore uses the URL's host for both).

If *any* address of a name is refused, the name is refused: an attacker who controls DNS
could otherwise mix a private address into the answer and wait for a fallback to it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Final

import httpcore
import httpx

from providers.errors import ConfigurationError, ErrorClass
from providers.tls import http_context

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolve = Callable[[str, int], Awaitable[list[str]]]
SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)

# RFC 6052 well-known NAT64 prefix: a gateway would forward to the embedded IPv4 address.
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")


class PrivateEndpointError(ConfigurationError):
    """The endpoint resolves to an address the service may not connect to."""

    error_class = ErrorClass.DISPATCH_FAILED_HTTP


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address leads to through a gateway (NAT64, 6to4, Teredo)."""
    found: list[ipaddress.IPv4Address] = []
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def refusal_reason(address: str | IPAddress) -> str | None:
    """Why ``address`` is not a public unicast address, or ``None`` when it is.

    Raises ``ValueError`` when ``address`` is not an IP address.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is the IPv4 host itself
            return refusal_reason(ip.ipv4_mapped)
        for inner in _embedded_ipv4(ip):
            reason = refusal_reason(inner)
            if reason is not None:
                return f"{reason} (embedded in {ip})"
        if ip in _NAT64:
            # What DNS64 answers for an IPv4-only name on an IPv6-only network: the host
            # reached is the embedded address, public here (ipaddress calls the prefix
            # "reserved", which refused every such endpoint).
            return None
        if ip.is_site_local:
            return "site-local"
    for reason, flag in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    ):
        if flag:
            return reason
    if not ip.is_global:  # shared address space 100.64.0.0/10 and other special ranges
        return "not globally routable"
    return None


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, through the system resolver.

    Raises ``socket.gaierror`` when the name does not resolve.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def resolve_allowed(
    host: str, port: int, *, allow_private: bool, resolve: Resolve = system_resolve
) -> list[str]:
    """Resolve ``host`` and return its addresses, all of them allowed.

    Raises :class:`PrivateEndpointError` when any address is refused (unless
    ``allow_private``) and ``socket.gaierror`` when the name does not resolve.
    """
    try:
        addresses = [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        addresses = await resolve(host, port)
    if not allow_private:
        for address in addresses:
            reason = refusal_reason(address)
            if reason is not None:
                raise PrivateEndpointError(
                    f"endpoint host {host} resolves to {address} ({reason}); private "
                    "endpoints are refused unless DISPATCH_ALLOW_PRIVATE_ENDPOINTS is on"
                )
    return addresses


async def check_endpoint(
    endpoint: str, *, allow_private: bool, resolve: Resolve = system_resolve
) -> list[str]:
    """Check an endpoint URL now (on save, for early feedback); returns its addresses.

    The transport checks again at every connect. Raises :class:`PrivateEndpointError`
    for a refused address and ``socket.gaierror`` for a name that does not resolve.
    """
    url = httpx.URL(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    # The name the connection resolves (httpcore's, IDNA 2008: "faß.example" is
    # "xn--fa-hia.example"), not url.host's Unicode, which the system resolver encodes
    # by IDNA 2003 into another name ("fass.example"): the check looked at another host.
    host = url.raw_host.decode("ascii")
    return await resolve_allowed(host, port, allow_private=allow_private, resolve=resolve)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves, checks and pins every TCP connect."""

    def __init__(
        self,
        *,
        allow_private: bool,
        resolve: Resolve = system_resolve,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._allow_private = allow_private
        self._resolve = resolve
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Connect to a checked address of ``host``.

        Raises :class:`PrivateEndpointError` before any connection when an address is
        refused, ``httpcore.ConnectError`` when the name does not resolve or no address
        answers.
        """
        try:
            addresses = await resolve_allowed(
                host, port, allow_private=self._allow_private, resolve=self._resolve
            )
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        last: Exception | None = None
        options = list(socket_options) if socket_options is not None else None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        if last is not None:
            raise last
        raise httpcore.ConnectError(f"{host} resolves to no address")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Refused: endpoints are http(s) URLs, never local sockets."""
        raise PrivateEndpointError("unix sockets are not endpoints")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _InStepConnection(httpcore.AsyncHTTPConnection):
    """A pooled connection that is not reused once the server sent more than its answer.

    A server whose ``Content-Length`` falls short of its body (counted in characters
    for a body with "é" in it; a stray CRLF after the body) leaves those bytes in h11's
    buffer, where httpcore's check of an idle connection (is its socket readable?) does
    not see them: the next request was written, its answer read from the leftover
    ("illegal status line"), and its messages, which the provider took, left ``unknown``,
    every second request of a campaign. Such a connection is out of step: it expires.
    (h11's state is private to httpcore 1.0; ``tests/test_review_k22_http_hostile.py``
    fails should a new version move it.)
    """

    def has_expired(self) -> bool:
        inner = self._connection
        if isinstance(inner, httpcore.AsyncHTTP11Connection) and inner.is_idle():
            leftover, closed = inner._h11_state.trailing_data
            if leftover or closed:
                return True
        return super().has_expired()


class _InStepPool(httpcore.AsyncConnectionPool):
    """An HTTP/1.1 connection pool (no proxy) of :class:`_InStepConnection`."""

    def create_connection(self, origin: httpcore.Origin) -> httpcore.AsyncConnectionInterface:
        return _InStepConnection(
            origin=origin,
            ssl_context=self._ssl_context,
            keepalive_expiry=self._keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=self._network_backend,
        )


class GuardedTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` whose connections go through :class:`GuardedBackend`.

    httpx does not take a network backend, so the connection pool it built is replaced
    by one with the same settings and the guarded backend (``_pool`` is the attribute
    httpx's own ``handle_async_request`` uses; ``tests/test_http_provider.py`` proves the
    guard is on the path, so an httpx change that bypassed it would fail there), whose
    connections are not reused out of step (:class:`_InStepConnection`). Proxies are
    never used: a proxy would make the connect address meaningless.
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        limits: httpx.Limits,
        verify: bool = True,
        ca: str = "",
        resolve: Resolve = system_resolve,
    ) -> None:
        """``verify``, ``ca``: see :func:`providers.tls.http_context`."""
        context = http_context(verify, ca)
        super().__init__(verify=context, limits=limits, trust_env=False)
        self._pool = _InStepPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=GuardedBackend(allow_private=allow_private, resolve=resolve),
        )
