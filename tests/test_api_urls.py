"""The site's own URL, for links and Location headers (L{glance_tx.api.urls})."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from glance_tx.api.root import RootAPI
from glance_tx.api.urls import site_url
from glance_tx.store.backends import StoreMap


@implementer(ISSLTransport)
class TLSStringTransport(StringTransport):
    """A transport twisted.web takes for TLS (C{isSecure} is true)."""

    def setTcpNoDelay(self, enabled: bool) -> None:
        """HTTPChannel asks for it; a TLS transport over TCP has it."""


class Capture(Resource):
    """Calls C{look} with each request while it is live, keeping the result."""

    isLeaf = True

    def __init__(self, look: Callable[[Any], Any]) -> None:
        super().__init__()
        self.look = look
        self.seen: list[Any] = []

    def render_GET(self, request: Any) -> bytes:
        self.seen.append(self.look(request))
        return b"ok"


def looked(
    look: Callable[[Any], Any],
    head: bytes,
    address: IPv4Address | IPv6Address,
    tls: bool = False,
) -> Any:
    """
    What C{look} made of a real twisted.web Request parsed from C{head},
    on a server at C{address} (over TLS, as twisted.web sees it, if C{tls}).
    """
    capture = Capture(look)
    # Its own clock: the channel's idle timeout stays off the global reactor.
    protocol = Site(capture, reactor=MemoryReactorClock()).buildProtocol(address)
    assert protocol is not None
    transport = (TLSStringTransport if tls else StringTransport)(
        hostAddress=address, peerAddress=IPv4Address("TCP", "10.0.0.9", 40000)
    )
    protocol.makeConnection(transport)
    protocol.dataReceived(head + b"\r\n")
    [result] = capture.seen
    return result


def urlpath_root(request: Any) -> str:
    return str(request.URLPath().click(b"/")).rstrip("/")


CASES = [
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:9292\r\n", IPv4Address("TCP", "127.0.0.1", 9292), False),
    (b"GET /v2/x HTTP/1.1\r\nHost: Glance.Example.ORG\r\n", IPv4Address("TCP", "10.0.0.1", 80), False),
    (b"GET / HTTP/1.1\r\nHost: glance.example.org:9292\r\n", IPv4Address("TCP", "10.0.0.1", 8080), False),
    (b"GET / HTTP/1.1\r\nHost: [::1]:9292\r\n", IPv6Address("TCP", "::1", 9292), False),
    (b"GET / HTTP/1.0\r\n", IPv4Address("TCP", "10.0.0.1", 9292), False),
    (b"GET / HTTP/1.1\r\nHost: glance.example.org\r\n", IPv4Address("TCP", "10.0.0.1", 443), True),
    (b"GET / HTTP/1.1\r\nHost: glance.example.org:8443\r\n", IPv4Address("TCP", "10.0.0.1", 8443), True),
]


class SiteURLTests(SynchronousTestCase):
    def test_as_urlpath_gives_it(self) -> None:
        """
        site_url is the string C{request.URLPath().click(b"/")} gives,
        without its slash, for plain and TLS requests, default and other
        ports, names in any case, and no Host header at all.
        """
        for head, address, tls in CASES:
            if b"[::1]" in head:
                continue  # URLPath cannot parse it: see test_ipv6_host
            self.assertEqual(
                looked(site_url, head, address, tls),
                looked(urlpath_root, head, address, tls),
                head,
            )

    def test_ipv6_host(self) -> None:
        """
        An IPv6 address in the Host header comes back in brackets (URLPath
        fails on it: twisted.web's prePathURL leaves the brackets off).
        """
        head, address, tls = CASES[3]
        self.assertEqual(looked(site_url, head, address, tls), "http://[::1]:9292")

    def test_examples(self) -> None:
        """The port is the listening one, left out when it is the scheme's default."""
        self.assertEqual(
            [looked(site_url, h, a, t) for h, a, t in CASES],
            [
                "http://127.0.0.1:9292",
                "http://glance.example.org",
                "http://glance.example.org:8080",
                "http://[::1]:9292",
                "http://10.0.0.1:9292",
                "https://glance.example.org",
                "https://glance.example.org:8443",
            ],
        )

    def test_versions_parse_no_url(self) -> None:
        """
        The versions document is built without parsing a URL per request
        (hyperlink's parse of URLPath was over half of a /versions
        request's CPU): a request whose URLPath fails is still answered.
        """
        unused = cast(Any, None)
        stores = StoreMap({"file": unused}, "file")
        root = RootAPI(registry=unused, stores=stores, v1=unused, v2=unused, clock=unused)

        def versions(request: Any) -> Any:
            def no_urlpath() -> None:
                raise AssertionError("URLPath() was called")

            request.URLPath = no_urlpath
            return json.loads(root.versions(request))

        document = looked(versions, *CASES[0])
        self.assertTrue(
            document["versions"][0]["links"][0]["href"].startswith("http://127.0.0.1:9292/")
        )
