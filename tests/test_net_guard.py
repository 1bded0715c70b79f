"""Tests for L{glance_tx.net_guard}: the outbound address guard."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from attrs import define, field
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.interfaces import (
    IHostnameResolver,
    IHostResolution,
    IResolutionReceiver,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI
from twisted.web.error import SchemeNotSupported
from zope.interface import implementer
from zope.interface.verify import verifyObject

from glance_tx.net_guard import (
    AddressPolicy,
    AddressRefused,
    GuardedEndpointFactory,
    parse_networks,
    resolve,
)


@implementer(IHostResolution)
@define
class _Resolution:
    name: str

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
@define
class FakeResolver:
    """
    Answers names from C{answers}; a name with a list of answers gives the
    next one at each resolution (as a rebinding DNS server would).
    """

    answers: dict[str, Any]
    asked: list[str] = field(factory=list)

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type] | None = None,
        transportSemantics: str = "TCP",
    ) -> IResolutionReceiver:
        self.asked.append(hostName)
        resolutionReceiver.resolutionBegan(_Resolution(hostName))
        answer = self.answers.get(hostName, ())
        if answer and isinstance(answer[0], tuple):  # one answer per call
            answer = answer[len(self.asked_for(hostName)) - 1]
        for address in answer:
            kind = IPv6Address if ":" in address else IPv4Address
            resolutionReceiver.addressResolved(kind("TCP", address, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolutionReceiver

    def asked_for(self, name: str) -> list[str]:
        return [n for n in self.asked if n == name]


def refusal(address: str, *allowed: str) -> str | None:
    policy = AddressPolicy(parse_networks(", ".join(allowed)))
    return policy.refusal(ipaddress.ip_address(address))


class AddressClassTests(SynchronousTestCase):
    """Which addresses are refused, and what the refusal says."""

    def assertRefused(self, address: str, why: str) -> None:
        self.assertEqual(refusal(address), why, address)

    def test_public_allowed(self) -> None:
        """Public unicast addresses, IPv4 and IPv6, may be reached."""
        for address in ["8.8.8.8", "93.184.216.34", "2606:4700::1111", "2a00:1450::1"]:
            self.assertIsNone(refusal(address), address)

    def test_loopback(self) -> None:
        """All of 127.0.0.0/8 and ::1 are loopback."""
        for address in ["127.0.0.1", "127.1.2.3", "127.255.255.254", "::1"]:
            self.assertRefused(address, "loopback")

    def test_unspecified(self) -> None:
        """0.0.0.0 and :: (which reach this host on Linux) are refused."""
        self.assertRefused("0.0.0.0", "unspecified")
        self.assertRefused("::", "unspecified")
        self.assertRefused("0.1.2.3", "not globally reachable")

    def test_link_local(self) -> None:
        """169.254.0.0/16 (cloud metadata services) and fe80::/10."""
        self.assertRefused("169.254.169.254", "link-local")
        self.assertRefused("fe80::1", "link-local")
        self.assertRefused("fe80::1%eth0", "link-local")

    def test_private(self) -> None:
        """RFC 1918 and unique local (fc00::/7) addresses are private."""
        for address in ["10.0.0.1", "172.16.0.1", "172.31.255.255", "192.168.1.1"]:
            self.assertRefused(address, "private")
        for address in ["fc00::1", "fd12:3456::1"]:
            self.assertRefused(address, "private (unique local)")
        self.assertIsNone(refusal("172.32.0.1"))

    def test_multicast(self) -> None:
        """224.0.0.0/4 and ff00::/8 are multicast."""
        for address in ["224.0.0.1", "239.255.255.250", "ff02::1", "ff0e::1"]:
            self.assertRefused(address, "multicast")

    def test_reserved(self) -> None:
        """240.0.0.0/4, the broadcast address and reserved IPv6 space."""
        for address in ["240.0.0.1", "255.255.255.255", "::127.0.0.1"]:
            self.assertRefused(address, "reserved")
        self.assertRefused("fec0::1", "site-local")

    def test_not_globally_reachable(self) -> None:
        """Shared, benchmarking and documentation ranges are refused too."""
        for address in ["100.64.0.1", "198.18.0.1", "192.0.2.1", "2001:db8::1", "192.0.0.1"]:
            self.assertRefused(address, "not globally reachable")

    def test_ipv4_mapped(self) -> None:
        """
        An IPv4-mapped IPv6 address is judged as the IPv4 address it is:
        refused for loopback, private and link-local ones, allowed for a
        public one.
        """
        self.assertRefused("::ffff:127.0.0.1", "IPv4-mapped loopback")
        self.assertRefused("::ffff:10.1.2.3", "IPv4-mapped private")
        self.assertRefused("::ffff:169.254.169.254", "IPv4-mapped link-local")
        self.assertRefused("::ffff:7f00:1", "IPv4-mapped loopback")
        self.assertIsNone(refusal("::ffff:8.8.8.8"))

    def test_embedded_ipv4(self) -> None:
        """
        NAT64 and 6to4 addresses that lead to a refused IPv4 address are
        refused, naming it.
        """
        self.assertRefused("64:ff9b::7f00:1", "leads to 127.0.0.1, loopback")
        self.assertRefused("64:ff9b::a9fe:a9fe", "leads to 169.254.169.254, link-local")
        self.assertRefused("2002:7f00:1::1", "leads to 127.0.0.1, loopback")
        self.assertRefused("2002:c0a8:101::1", "leads to 192.168.1.1, private")
        self.assertIsNone(refusal("2002:808:808::1"))


class AllowedNetworkTests(SynchronousTestCase):
    """C{allowed_networks} opens exactly what it names."""

    def test_allowed(self) -> None:
        """An address inside an allowed network may be reached."""
        self.assertIsNone(refusal("127.0.0.1", "127.0.0.0/8"))
        self.assertIsNone(refusal("10.1.2.3", "10.0.0.0/8"))
        self.assertIsNone(refusal("::1", "::1"))
        self.assertIsNone(refusal("fd00::5", "fd00::/8"))

    def test_only_what_is_named(self) -> None:
        """An address outside the allowed networks is still refused."""
        self.assertEqual(refusal("127.0.0.2", "127.0.0.1/32"), "loopback")
        self.assertEqual(refusal("::1", "127.0.0.0/8"), "loopback")
        self.assertEqual(refusal("10.0.0.1", "192.168.0.0/16"), "private")

    def test_mapped_follows_ipv4_networks(self) -> None:
        """An IPv4-mapped address is allowed by its IPv4 network, not more."""
        self.assertIsNone(refusal("::ffff:127.0.0.1", "127.0.0.0/8"))
        self.assertEqual(
            refusal("::ffff:127.0.0.2", "127.0.0.1/32"), "IPv4-mapped loopback"
        )

    def test_nat64_prefix_does_not_open_ipv4(self) -> None:
        """
        Allowing the NAT64 prefix lets it lead to public IPv4 addresses, not
        to loopback or private ones.
        """
        self.assertIsNone(refusal("64:ff9b::808:808", "64:ff9b::/96"))
        self.assertEqual(
            refusal("64:ff9b::7f00:1", "64:ff9b::/96"), "leads to 127.0.0.1, loopback"
        )

    def test_parse_networks(self) -> None:
        """Comma-separated CIDRs; a bare address is a network of one."""
        self.assertEqual(
            parse_networks(" 127.0.0.0/8, ::1 ,,10.0.0.0/8"),
            (
                ipaddress.ip_network("127.0.0.0/8"),
                ipaddress.ip_network("::1/128"),
                ipaddress.ip_network("10.0.0.0/8"),
            ),
        )
        self.assertEqual(parse_networks(""), ())

    def test_parse_networks_refuses_bad(self) -> None:
        """A malformed entry, or one with host bits set, is named in the error."""
        for text in ["127.0.0.1/8", "localhost", "10.0.0.0/33"]:
            e = self.assertRaises(ValueError, parse_networks, f"::1, {text}")
            self.assertIn(repr(text), str(e))


class CheckTests(SynchronousTestCase):
    """L{AddressPolicy.check} on all the addresses of a host."""

    def test_all_checked(self) -> None:
        """One refused address among several refuses the host, naming both."""
        policy = AddressPolicy()
        self.assertEqual(policy.check("h", ["8.8.8.8", "2606:4700::1"]), ["8.8.8.8", "2606:4700::1"])
        e = self.assertRaises(
            AddressRefused, policy.check, "images.example", ["8.8.8.8", "10.0.0.7"]
        )
        self.assertEqual(e.status, 403)
        self.assertIn("images.example (10.0.0.7)", e.message)
        self.assertIn("private", e.message)

    def test_literal_named_once(self) -> None:
        """An IP literal host is named once in the refusal."""
        e = self.assertRaises(AddressRefused, AddressPolicy().check, "127.0.0.1", ["127.0.0.1"])
        self.assertIn("to 127.0.0.1: the address is loopback", e.message)


class ResolveTests(SynchronousTestCase):
    """L{resolve}: the host's addresses through an L{IHostnameResolver}."""

    def test_literal_not_resolved(self) -> None:
        """An IP literal (IPv6 in brackets too) is not sent to the resolver."""
        resolver = FakeResolver({})
        self.assertEqual(self.successResultOf(_resolve(resolver, "10.0.0.1")), ["10.0.0.1"])
        self.assertEqual(self.successResultOf(_resolve(resolver, "[::1]")), ["::1"])
        self.assertEqual(resolver.asked, [])

    def test_name(self) -> None:
        """A name gives every address it resolves to, without duplicates."""
        resolver = FakeResolver({"h.example": ["8.8.8.8", "8.8.8.8", "2606:4700::1"]})
        self.assertEqual(
            self.successResultOf(_resolve(resolver, "h.example")),
            ["8.8.8.8", "2606:4700::1"],
        )

    def test_non_strict_forms_resolve(self) -> None:
        """
        Forms such as C{2130706433} or C{127.1} are names to the guard, and
        judged by what they resolve to.
        """
        resolver = FakeResolver({"2130706433": ["127.0.0.1"]})
        self.assertEqual(
            self.successResultOf(_resolve(resolver, "2130706433")), ["127.0.0.1"]
        )

    def test_no_address(self) -> None:
        """A name with no address fails with L{DNSLookupError}."""
        self.failureResultOf(_resolve(FakeResolver({}), "nowhere.example"), DNSLookupError)


def _resolve(resolver: FakeResolver, host: str) -> Any:
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(resolve(resolver, host, 80))


@define
class _TLSPolicy:
    asked: list[tuple[bytes, int]] = field(factory=list)

    def creatorForNetloc(self, hostname: bytes, port: int) -> object:
        from twisted.internet.ssl import optionsForClientTLS

        self.asked.append((hostname, port))
        return optionsForClientTLS(hostname.decode("ascii"))


class EndpointFactoryTests(SynchronousTestCase):
    """L{GuardedEndpointFactory}: connections go where the guard said."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def factory(self, answers: dict[str, Any], *allowed: str) -> GuardedEndpointFactory:
        self.resolver = FakeResolver(answers)
        return GuardedEndpointFactory(
            self.reactor,
            self.resolver,
            AddressPolicy(parse_networks(", ".join(allowed))),
            connect_timeout=7,
        )

    def connect(self, factory: GuardedEndpointFactory, url: bytes) -> Any:
        endpoint = factory.endpointForURI(URI.fromBytes(url))
        return endpoint.connect(Factory.forProtocol(Protocol))

    def test_provides_interface(self) -> None:
        """The factory is an L{IAgentEndpointFactory}."""
        from twisted.web.iweb import IAgentEndpointFactory

        self.assertTrue(verifyObject(IAgentEndpointFactory, self.factory({})))

    def test_connects_to_checked_address(self) -> None:
        """
        A name is resolved once and the TCP connection goes to the address
        that was checked, with the connect timeout.
        """
        factory = self.factory({"images.example": ["93.184.216.34"]})
        self.connect(factory, b"http://images.example:8080/a")
        [(host, port, _, timeout, _)] = self.reactor.tcpClients
        self.assertEqual((host, port, timeout), ("93.184.216.34", 8080, 7))
        self.assertEqual(self.resolver.asked, ["images.example"])

    def test_rebinding(self) -> None:
        """
        A DNS answer that changes after the check (public, then loopback)
        cannot redirect the connection: it goes to the address checked, and
        the next connection is judged afresh and refused.
        """
        factory = self.factory({"rebind.example": (("93.184.216.34",), ("127.0.0.1",))})
        self.connect(factory, b"http://rebind.example/")
        self.assertEqual([c[0] for c in self.reactor.tcpClients], ["93.184.216.34"])
        failure = self.failureResultOf(self.connect(factory, b"http://rebind.example/"))
        failure.trap(AddressRefused)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_forbidden_name(self) -> None:
        """A name resolving to loopback is refused before any connection."""
        factory = self.factory({"evil.example": ["8.8.8.8", "127.0.0.1"]})
        failure = self.failureResultOf(self.connect(factory, b"http://evil.example/"))
        failure.trap(AddressRefused)
        self.assertIn("evil.example (127.0.0.1)", failure.value.message)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_forbidden_literals(self) -> None:
        """IPv4 and IPv6 literals are judged without resolution."""
        factory = self.factory({})
        for url in [b"http://127.0.0.1/", b"http://[::1]:81/", b"http://[::ffff:127.0.0.1]/",
                    b"https://169.254.169.254/"]:
            self.failureResultOf(self.connect(factory, url)).trap(AddressRefused)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.resolver.asked, [])

    def test_allowed_literal(self) -> None:
        """An allowed IPv6 loopback literal connects over IPv6."""
        factory = self.factory({}, "::1")
        self.connect(factory, b"http://[::1]:81/")
        [(host, port, _, _, _)] = self.reactor.tcpClients
        self.assertEqual((host, port), ("::1", 81))

    def test_next_address_on_failure(self) -> None:
        """When the first address refuses the connection, the next is tried."""
        factory = self.factory({"two.example": ["93.184.216.34", "2606:2800:220:1::1"]})
        d = self.connect(factory, b"http://two.example/")
        first = self.reactor.tcpClients[0]
        first[2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertEqual(
            [c[0] for c in self.reactor.tcpClients], ["93.184.216.34", "2606:2800:220:1::1"]
        )
        self.assertNoResult(d)

    def test_schemes(self) -> None:
        """Only http and https are followed."""
        factory = self.factory({})
        for url in [b"ftp://8.8.8.8/", b"file:///etc/passwd", b"gopher://8.8.8.8/"]:
            self.assertRaises(SchemeNotSupported, factory.endpointForURI, URI.fromBytes(url))

    def test_https_verifies_the_name(self) -> None:
        """HTTPS is set up for the host name, while TCP goes to its checked address."""
        tls = _TLSPolicy()
        factory = GuardedEndpointFactory(
            self.reactor,
            FakeResolver({"secure.example": ["93.184.216.34"]}),
            AddressPolicy(),
            tls_policy=tls,  # type: ignore[arg-type]
        )
        self.connect(factory, b"https://secure.example/x")
        self.assertEqual(tls.asked, [(b"secure.example", 443)])
        self.assertEqual(self.reactor.tcpClients[0][:2], ("93.184.216.34", 443))
