"""
Tests for L{glance_tx.api.channel}: an oversize request head is answered
414 or 431 with the JSON error body, over a real socket (where the answer
must survive the client still sending) and in memory (where the limits are
pinned to the byte against Twisted's own counting).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource

from glance_tx.api.channel import MAX_HEAD_BYTES, MAX_HEADERS, GlanceChannel
from glance_tx.api.site import GlanceSite
from tests.api_fixtures import SiteTestCase
from tests.live_server import (
    listening_port,
    live_config,
    settled_client,
    start_glance_tx,
)


class _RawClient(Protocol):
    """Sends C{request} at once and collects everything until the close."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback(self.received)


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    """Status, headers (lower-cased names) and JSON body of one response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, json.loads(body) if body else None


class RealSocketTests(TestCase):
    """A whole glance-tx on a loopback port, asked with raw bytes."""

    timeout = 60

    async def ask(self, request: bytes, config_text: str = "") -> tuple[int, dict[str, str], Any]:
        config = live_config(self, config_text)
        service = await start_glance_tx(config, self.addCleanup, "channel-tests")
        settled_client(self)  # for its cleanup: waits for the server's ends to close
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", listening_port(service))
        client = _RawClient(request)
        await connectProtocol(endpoint, client)
        return parse_answer(await client.done)

    def assertRefused(self, answer: tuple[int, dict[str, str], Any], status: int, says: str) -> None:
        code, headers, body = answer
        self.assertEqual(code, status)
        self.assertEqual(headers["content-type"], "application/json")
        self.assertTrue(headers["x-openstack-request-id"].startswith("req-"))
        self.assertEqual(headers["connection"], "close")
        self.assertEqual(body["error"]["code"], status)
        self.assertIn(says, body["error"]["message"])

    async def test_uri_too_long(self) -> None:
        """A request line past max_header_line is a 414."""
        answer = await self.ask(b"GET /v2/images?name=" + b"a" * 20000 + b" HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertRefused(answer, 414, "request line is longer than 16384 bytes")

    async def test_max_header_line_configured(self) -> None:
        """max_header_line in the configuration file sets the limit."""
        answer = await self.ask(
            b"GET /v2/images?name=" + b"a" * 5000 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
            "[DEFAULT]\nmax_header_line = 4096\n",
        )
        self.assertRefused(answer, 414, "longer than 4096 bytes")

    async def test_header_line_too_long(self) -> None:
        """
        One header line of 256 KiB (the issue's case, once dropped with no
        answer) is a 431 the client reads although it was still sending.
        """
        answer = await self.ask(
            b"GET /v2/images HTTP/1.1\r\nHost: h\r\nX-Big: " + b"b" * (256 * 1024) + b"\r\n\r\n"
        )
        self.assertRefused(answer, 431, "header field of the request is longer than 16384")

    async def test_too_many_headers(self) -> None:
        """More than 500 headers is a 431 that says so."""
        headers = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
        answer = await self.ask(b"GET /v2/images HTTP/1.1\r\nHost: h\r\n" + headers + b"\r\n")
        self.assertRefused(answer, 431, "more than 500 header fields")

    async def test_head_too_large(self) -> None:
        """Headers of 1 KiB each, past 64 KiB in all: a 431."""
        headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(70))
        answer = await self.ask(b"GET /v2/images HTTP/1.1\r\nHost: h\r\n" + headers + b"\r\n")
        self.assertRefused(answer, 431, "larger than 65536 bytes")

    async def test_large_head_within_limits(self) -> None:
        """A head of 200 headers and 40 KiB is served as usual."""
        headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 200) for i in range(200))
        code, _, body = await self.ask(
            b"GET /v2/images HTTP/1.1\r\nHost: h\r\nConnection: close\r\n" + headers + b"\r\n"
        )
        self.assertEqual((code, body), (200, {"images": [], "first": "/v2/images", "schema": "/v2/schemas/images"}))


class LimitPinTests(SiteTestCase):
    """
    GlanceChannel counts the head as HTTPChannel does, with the same limits,
    and answers first; if Twisted's counting changed, its bare 400 would
    come first. These pin the counting to the byte.
    """

    def answer(self, head: bytes) -> bytes:
        protocol = self.site.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(head)
        self.assertIsInstance(protocol, GlanceChannel)
        return transport.value()

    def head_of(self, size: int) -> bytes:
        """A GET whose request line and header lines add up to C{size} bytes."""
        start = b"GET /versions HTTP/1.1"
        filler = size - len(start) - len(b"X-Fill: ") - len(b"Connection: close")
        lines = [start, b"Connection: close"]
        while filler > 0:
            chunk = min(filler, 8000)
            lines.append(b"X-Fill: " + b"f" * chunk)
            filler -= chunk + len(b"X-Fill: ")
        lines[-1] += b"f" * (size - sum(map(len, lines)))
        head = b"\r\n".join(lines) + b"\r\n\r\n"
        self.assertEqual(sum(map(len, lines)), size)
        return head

    def test_largest_head_served(self) -> None:
        """A head of exactly MAX_HEAD_BYTES reaches the app (300 versions)."""
        self.assertTrue(self.answer(self.head_of(MAX_HEAD_BYTES)).startswith(b"HTTP/1.1 300 "))

    def test_one_byte_more_is_431(self) -> None:
        """One byte more is our 431, not Twisted's 400."""
        self.assertTrue(self.answer(self.head_of(MAX_HEAD_BYTES + 1)).startswith(b"HTTP/1.1 431 "))

    def test_twisted_still_answers_400(self) -> None:
        """
        A plain HTTPChannel with the same limit still answers that head with
        its bare 400 (when it answers 431 itself, GlanceChannel can go).
        """
        channel = HTTPChannel()
        channel.totalHeadersSize = MAX_HEAD_BYTES
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(self.head_of(MAX_HEAD_BYTES + 1))
        self.assertEqual(transport.value(), b"HTTP/1.1 400 Bad Request\r\n\r\n")


class ConfigTests(SynchronousTestCase):
    """max_header_line reaches the channel."""

    def test_max_header_line(self) -> None:
        """A request line longer than the site's max_header_line is a 414."""
        site = GlanceSite(Resource(), max_header_line=2048, reactor=MemoryReactorClock())
        channel = site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 414 "))
        self.assertIn(b"longer than 2048 bytes", transport.value())


class _AskedTransport(StringTransport):
    """A transport that counts how often it is asked its addresses."""

    asked = 0

    def getHost(self) -> Any:
        self.asked += 1
        return super().getHost()

    def getPeer(self) -> Any:
        self.asked += 1
        return super().getPeer()


class AddressTests(SynchronousTestCase):
    """The connection's addresses are asked of the transport once."""

    def test_asked_once_per_connection(self) -> None:
        """
        Requests on one connection (each asks both addresses, and its log
        line the client's) ask the transport once for each; the requests
        see the transport's addresses.
        """
        site = GlanceSite(_Seen(), reactor=MemoryReactorClock())
        channel = site.buildProtocol(None)
        transport = _AskedTransport()
        channel.makeConnection(transport)
        transport.asked = 0
        for _ in range(3):
            channel.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 "), 3)
        self.assertLessEqual(transport.asked, 2)
        self.assertEqual(site.resource.hosts, [transport.getHost()] * 3)
        self.assertEqual(site.resource.peers, [transport.getPeer()] * 3)


class _Seen(Resource):
    """Answers, noting the addresses each request saw."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.hosts: list[Any] = []
        self.peers: list[Any] = []

    def render_GET(self, request: Any) -> bytes:
        self.hosts.append(request.getHost())
        self.peers.append(request.client)
        return b"ok"
