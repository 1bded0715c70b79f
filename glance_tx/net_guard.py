"""
The guard on outbound HTTP against server-side request forgery.

A URL that a user hands us (an image location) must not make this service
reach what only it can reach: its own loopback, the link-local metadata
service of a cloud, a private network behind it. So only C{http} and
C{https} are followed, the host is resolved through the reactor's
L{IHostnameResolver} (never a blocking C{getaddrinfo} on the reactor
thread), and every address it resolves to is judged by an
L{AddressPolicy}; one refused address refuses the host. The connection then
goes to an address that was judged, never to the name again, so a DNS
answer that changes between the check and the connect (rebinding) cannot
slip past: L{GuardedEndpointFactory} is the L{IAgentEndpointFactory} that
does both, for a C{twisted.web.client.Agent}.

Refused unless inside one of the configured allowed networks: unspecified,
loopback, link-local, multicast, private (RFC 1918, unique local
C{fc00::/7}), site-local, reserved and otherwise not globally reachable
addresses (shared C{100.64.0.0/10}, benchmarking, documentation, ...). An
IPv6 address that carries an IPv4 one is judged by what it carries: an
IPv4-mapped address (C{::ffff:a.b.c.d}) as that IPv4 address, a NAT64
(C{64:ff9b::/96}) or 6to4 (C{2002::/16}) address as itself and as the IPv4
address it leads to.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from attrs import field, frozen
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IProtocol,
    IProtocolFactory,
    IResolutionReceiver,
    IStreamClientEndpoint,
)
from twisted.web.client import URI, BrowserLikePolicyForHTTPS
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from glance_tx.errors import Forbidden

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The schemes outbound requests may use.
SCHEMES = frozenset({"http", "https"})

_RFC1918 = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
_ULA = ipaddress.IPv6Network("fc00::/7")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class AddressRefused(Forbidden):
    """
    A destination the guard does not allow: a 403, as the request was
    understood and asking again will not help.
    """


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """
    Networks from a comma-separated list of CIDRs (C{127.0.0.0/8, ::1});
    a bare address is a network of one.

    @raise ValueError: naming the entry that is not a network.
    """
    networks = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=True))
        except ValueError as e:
            raise ValueError(f"{entry!r} is not a network: {e}") from None
    return tuple(networks)


def _why_not_global(address: IPAddress) -> str | None:
    """Why C{address} is not a public unicast address, or C{None} if it is."""
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address):
        if any(address in n for n in _RFC1918):
            return "private"
    else:
        if address in _ULA:
            return "private (unique local)"
        if address.is_site_local:
            return "site-local"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "not globally reachable"
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a NAT64 or 6to4 address leads to."""
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


@frozen
class AddressPolicy:
    """
    Which addresses outbound requests may reach: every public unicast
    address, and whatever lies in C{allowed_networks}.
    """

    allowed_networks: tuple[IPNetwork, ...] = ()

    def _allowed(self, address: IPAddress) -> bool:
        return any(
            address.version == network.version and address in network
            for network in self.allowed_networks
        )

    def refusal(self, address: IPAddress) -> str | None:
        """Why C{address} may not be reached, or C{None} if it may."""
        if isinstance(address, ipaddress.IPv6Address):
            if address.scope_id is not None:
                address = ipaddress.IPv6Address(str(address).partition("%")[0])
            mapped = address.ipv4_mapped
            if mapped is not None:
                why = self.refusal(mapped)
                return None if why is None else f"IPv4-mapped {why}"
            embedded = _embedded_ipv4(address)
            if embedded is not None:
                why = self.refusal(embedded)
                if why is not None:
                    return f"leads to {embedded}, {why}"
        if self._allowed(address):
            return None
        return _why_not_global(address)

    def check(self, shown_host: str, addresses: Iterable[str]) -> list[str]:
        """
        Every address C{shown_host} resolved to, if each may be reached.

        @raise AddressRefused: naming the first refused address and why.
        """
        checked = []
        for text in addresses:
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                raise AddressRefused(
                    f"{shown_host} resolved to {text!r}, which is not an IP address"
                ) from None
            why = self.refusal(address)
            if why is not None:
                shown = shown_host if str(address) == shown_host else f"{shown_host} ({address})"
                raise AddressRefused(
                    f"Refusing to connect to {shown}: the address is {why} "
                    "and not in the allowed networks"
                )
            checked.append(text)
        return checked


def ip_literal(host: str) -> IPAddress | None:
    """The address C{host} spells in the strict dotted or IPv6 form, if any."""
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


@implementer(IResolutionReceiver)
@frozen
class _Collect:
    """Gathers the addresses of one resolution."""

    done: Deferred[list[str]] = field(factory=Deferred)
    found: list[str] = field(factory=list)

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        if isinstance(address, (IPv4Address, IPv6Address)):
            self.found.append(address.host)

    def resolutionComplete(self) -> None:
        self.done.callback(self.found)


async def resolve(resolver: IHostnameResolver, host: str, port: int) -> list[str]:
    """
    The addresses of C{host} (an IP literal stands for itself), in the
    resolver's order, without duplicates.

    @raise DNSLookupError: when there is none.
    """
    literal = ip_literal(host)
    if literal is not None:
        return [str(literal)]
    receiver = _Collect()
    resolver.resolveHostName(receiver, host, port)
    addresses = list(dict.fromkeys(await receiver.done))
    if not addresses:
        raise DNSLookupError(f"{host} has no address")
    return addresses


@implementer(IStreamClientEndpoint)
@frozen
class _GuardedEndpoint:
    """TCP to the first checked address of a host that accepts a connection."""

    reactor: Any
    resolver: IHostnameResolver
    policy: AddressPolicy
    host: str
    port: int
    timeout: float

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, protocolFactory: IProtocolFactory) -> IProtocol:
        addresses = self.policy.check(
            self.host, await resolve(self.resolver, self.host, self.port)
        )
        error: Exception = ConnectError(f"no address of {self.host} to connect to")
        for address in addresses:
            endpoint: IStreamClientEndpoint
            if ":" in address:
                endpoint = TCP6ClientEndpoint(
                    self.reactor, address, self.port, timeout=self.timeout
                )
            else:
                endpoint = TCP4ClientEndpoint(
                    self.reactor, address, self.port, timeout=self.timeout
                )
            try:
                protocol: IProtocol = await endpoint.connect(protocolFactory)
            except ConnectError as e:
                error = e
                continue
            return protocol
        raise error


@implementer(IAgentEndpointFactory)
@frozen
class GuardedEndpointFactory:
    """
    Endpoints for a C{twisted.web.client.Agent} that reach only what
    C{policy} allows, resolved by C{resolver} (the reactor's C{nameResolver}
    in production), each TCP connection attempt given up after
    C{connect_timeout} seconds. HTTPS is verified against the host name
    (SNI too) as C{tls_policy} says.
    """

    reactor: Any
    resolver: IHostnameResolver
    policy: AddressPolicy
    connect_timeout: float = 30.0
    tls_policy: IPolicyForHTTPS = field(factory=BrowserLikePolicyForHTTPS)

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        scheme = uri.scheme.decode("ascii", "replace")
        if scheme not in SCHEMES:
            raise SchemeNotSupported(f"Unsupported scheme: {scheme!r}")
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"The host {uri.host!r} is not ASCII") from None
        host = host.removeprefix("[").removesuffix("]")
        endpoint: IStreamClientEndpoint = _GuardedEndpoint(
            self.reactor, self.resolver, self.policy, host, uri.port, self.connect_timeout
        )
        if scheme == "https":
            creator = self.tls_policy.creatorForNetloc(host.encode("ascii"), uri.port)
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint

