"""
Tests for L{glance_tx.store.http}, the read-only HTTP store.

The read conformance mixin runs four times: in memory against a verified
fake L{IAgent} (L{FakeWeb}) that honours C{Range} and against one that
ignores it (both also paced by hand for the flow-control tests), and over
real sockets against a twisted.web server on 127.0.0.1 serving files with
C{Range} (C{static.File}) and without. The rest pins what is particular to
HTTP: redirects and the address guard on every hop, credentials, content
encoding, timeouts against stalled servers, and backpressure on a real
connection.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
from collections import deque
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import server, static
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse
from twisted.web.resource import EncodingResourceWrapper, Resource
from twisted.web.server import GzipEncoderFactory
from zope.interface import implementer
from zope.interface.verify import verifyObject

from glance_tx.errors import BadRequest, NotFound, StoreError
from glance_tx.net_guard import AddressPolicy, AddressRefused, parse_networks
from glance_tx.store.http import (
    HTTPStore,
    StoreReadOnly,
    guarded_agent,
    http_store_from_options,
    shown_url,
)
from glance_tx.store.interface import IStore
from tests.store_conformance import (
    FakeConsumer,
    ReadConformanceMixin,
    UnpacedReadConformanceMixin,
    make_data,
)

_names = itertools.count()


# An in-memory web: a verified fake IAgent whose I/O can be paced by hand.


@implementer(IResponse)
@define
class FakeResponse:
    """A response whose body L{FakeWeb} delivers a block per step."""

    web: FakeWeb
    code: int
    headers: Headers
    body: bytes = b""
    phrase: bytes = b"OK"
    version: tuple[bytes, int, int] = (b"HTTP", 1, 1)
    length: Any = None
    request: Any = None
    previousResponse: Any = None

    def __attrs_post_init__(self) -> None:
        if self.length is None:
            self.length = len(self.body)

    def deliverBody(self, protocol: Any) -> None:
        transport = FakeBodyTransport(self.web, protocol, self.body)
        protocol.makeConnection(transport)
        transport.schedule()

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response


@define
class FakeBodyTransport:
    """Feeds a body to its protocol one block per step, unless paused."""

    web: FakeWeb
    protocol: Any
    body: bytes
    position: int = 0
    paused: bool = False
    stopped: bool = False
    scheduled: bool = False
    ended: bool = False

    def schedule(self) -> None:
        if not (self.scheduled or self.paused or self.ended):
            self.scheduled = True
            self.web.step(self.deliver)

    def deliver(self) -> None:
        self.scheduled = False
        if self.ended:
            return
        if self.position >= len(self.body):
            self.ended = True
            self.protocol.connectionLost(Failure(ResponseDone()))
            return
        block = self.body[self.position : self.position + self.web.block_size]
        self.position += len(block)
        self.web.blocks += 1
        self.protocol.dataReceived(block)
        self.schedule()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.schedule()

    def stopProducing(self) -> None:
        self.web.stops += 1
        if not self.ended:
            self.ended = True
            self.web.step(
                lambda: self.protocol.connectionLost(Failure(ResponseFailed([Failure(Exception("closed"))])))
            )


@implementer(IAgent)
@define
class FakeWeb:
    """
    Serves C{files} by URL, with C{Range} (C{ranges}) or ignoring it. Each
    response and each body block is one step: run at once, or, when
    C{paced}, when the test says (it is then a L{tests.fakes.Pacer}).
    """

    files: dict[str, bytes] = field(factory=dict)
    redirects: dict[str, str] = field(factory=dict)
    block_size: int = 4096
    ranges: bool = True
    paced: bool = False
    requests: list[tuple[bytes, str, Headers]] = field(factory=list)
    stops: int = 0
    blocks: int = 0
    #: Answers every request instead of the files, when set.
    responder: Callable[[bytes, str, Headers], FakeResponse] | None = None
    _steps: deque[Callable[[], None]] = field(factory=deque)
    _running: bool = False

    def request(
        self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: Any = None
    ) -> Deferred[IResponse]:
        url, headers = uri.decode("ascii"), headers or Headers()
        self.requests.append((method, url, headers))
        d: Deferred[IResponse] = Deferred()
        self.step(lambda: d.callback(self.respond(method, url, headers)))
        return d

    def respond(self, method: bytes, url: str, headers: Headers) -> FakeResponse:
        if self.responder is not None:
            return self.responder(method, url, headers)
        if url in self.redirects:
            return FakeResponse(self, 302, Headers({b"location": [self.redirects[url].encode()]}))
        if url not in self.files:
            return FakeResponse(self, 404, Headers(), phrase=b"Not Found")
        data = self.files[url]
        if method == b"HEAD":
            return FakeResponse(self, 200, Headers({b"content-length": [str(len(data)).encode()]}))
        wanted = headers.getRawHeaders(b"range")
        if wanted and self.ranges:
            first, _, last = wanted[0].removeprefix(b"bytes=").partition(b"-")
            start = int(first)
            if start >= len(data):
                return FakeResponse(self, 416, Headers(), phrase=b"Range Not Satisfiable")
            end = min(int(last), len(data) - 1) if last else len(data) - 1
            content_range = f"bytes {start}-{end}/{len(data)}".encode()
            body = data[start : end + 1]
            return FakeResponse(self, 206, Headers({b"content-range": [content_range]}), body)
        return FakeResponse(self, 200, Headers(), data)

    def step(self, f: Callable[[], None]) -> None:
        self._steps.append(f)
        if not self.paced and not self._running:
            self._running = True
            try:
                while self._steps:
                    self._steps.popleft()()
            finally:
                self._running = False

    def pending(self) -> int:
        return len(self._steps)

    def run_one(self) -> None:
        self._steps.popleft()()

    def add(self, data: bytes) -> str:
        url = f"http://images.example/{next(_names)}"
        self.files[url] = data
        return url


class _FakeWebHarness:
    """The conformance hooks over L{FakeWeb}."""

    ranges = True

    def setUp(self) -> None:
        self.web = FakeWeb(ranges=self.ranges)

    def make_store(self) -> IStore:
        return HTTPStore(agent=self.web, clock=Clock())

    def make_paced_store(
        self, *, block_size: int, high_watermark: int, low_watermark: int
    ) -> tuple[IStore, FakeWeb]:
        self.web.paced, self.web.block_size = True, block_size
        return HTTPStore(agent=self.web, clock=Clock(), block_size=block_size), self.web

    def complete(self, d: Deferred[Any]) -> object:
        return self.successResultOf(d)  # type: ignore[attr-defined]

    async def seed(self, store: IStore, data: bytes) -> str:
        return self.web.add(data)

    async def missing_location(self, store: IStore) -> str:
        return "http://images.example/missing"


class FakeWebRangeTests(_FakeWebHarness, ReadConformanceMixin, SynchronousTestCase):
    """The read conformance suite against a server that honours C{Range}."""

    def test_fake_agent_verified(self) -> None:
        """The fake is an L{IAgent} and its responses L{IResponse}s."""
        self.assertTrue(verifyObject(IAgent, self.web))
        url = self.web.add(b"x")
        self.assertTrue(verifyObject(IResponse, self.successResultOf(self.web.request(b"GET", url.encode()))))


class FakeWebNoRangeTests(_FakeWebHarness, ReadConformanceMixin, SynchronousTestCase):
    """
    The read conformance suite against a server that ignores C{Range} and
    answers 200 with everything: the store skips and limits itself.
    """

    ranges = False


class HTTPStoreTests(SynchronousTestCase):
    """What is particular to the HTTP store, in memory."""

    def setUp(self) -> None:
        self.web = FakeWeb()
        self.clock = Clock()
        self.store = HTTPStore(agent=self.web, clock=self.clock, read_timeout=30)

    def test_read_only(self) -> None:
        """
        C{open_writer} and C{delete} fail with L{StoreReadOnly}, a 403;
        the store lists nothing, has nothing to discard and answers C{ping}.
        """
        for d in [self.store.open_writer("a" * 36), self.store.delete(self.web.add(b"x"))]:
            e = self.failureResultOf(d, StoreReadOnly).value
            self.assertEqual(e.status, 403)
            self.assertIn("read-only", e.message)
        self.assertEqual(self.successResultOf(self.store.locations()), frozenset())
        self.assertEqual(self.successResultOf(self.store.discard_incomplete()), 0)
        self.assertIsNone(self.successResultOf(self.store.ping()))
        self.assertEqual(self.web.requests, [])

    def test_range_header_and_identity(self) -> None:
        """
        A read sends C{Range} only when part of the data is asked for, and
        always C{Accept-Encoding: identity}, so sizes and ranges count the
        image's own bytes.
        """
        url = self.web.add(b"0123456789")
        for kwargs, expected in [({}, None), ({"offset": 3}, [b"bytes=3-"]),
                                 ({"offset": 2, "length": 4}, [b"bytes=2-5"])]:
            self.successResultOf(self.store.read(url, FakeConsumer(), **kwargs))
            headers = self.web.requests[-1][2]
            self.assertEqual(headers.getRawHeaders(b"range"), expected)
            self.assertEqual(headers.getRawHeaders(b"accept-encoding"), [b"identity"])

    def test_limit_closes_connection(self) -> None:
        """
        Against a server that ignores C{Range}, the connection is closed as
        soon as the bytes asked for have arrived, not read to the end.
        """
        self.web.ranges, self.web.block_size = False, 10
        store = HTTPStore(agent=self.web, clock=self.clock, block_size=10)
        url = self.web.add(make_data(10_000))
        consumer = FakeConsumer()
        self.successResultOf(store.read(url, consumer, offset=5, length=12))
        self.assertEqual(consumer.value(), self.web.files[url][5:17])
        self.assertEqual(self.web.stops, 1)

    def test_wrong_content_range(self) -> None:
        """A 206 for a range that starts after the one asked is a L{StoreError}."""
        url = self.web.add(b"data")

        def respond(method: bytes, u: str, headers: Headers) -> FakeResponse:
            return FakeResponse(self.web, 206, Headers({b"content-range": [b"bytes 9-9/10"]}), b"x")

        self.web.responder = respond
        consumer = FakeConsumer()
        self.failureResultOf(self.store.read(url, consumer, offset=2), StoreError)
        self.assertEqual(consumer.registered, [])

    def test_server_errors(self) -> None:
        """
        A 404 or 410 is L{NotFound}; other failures are L{StoreError}s
        naming the URL and status, before anything is registered.
        """
        url = self.web.add(b"data")
        for code, error in [(404, NotFound), (410, NotFound), (500, StoreError), (403, StoreError)]:
            self.web.responder = lambda m, u, h, code=code: FakeResponse(
                self.web, code, Headers(), phrase=b"Nope"
            )
            consumer = FakeConsumer()
            e = self.failureResultOf(self.store.read(url, consumer), error).value
            self.assertIn(url, e.message)
            self.assertEqual(consumer.registered, [])
            self.failureResultOf(self.store.size(url), error)

    def test_size_needs_content_length(self) -> None:
        """A HEAD without C{Content-Length} leaves the size unknown: L{StoreError}."""
        self.web.responder = lambda m, u, h: FakeResponse(self.web, 200, Headers())
        e = self.failureResultOf(self.store.size("http://images.example/x"), StoreError).value
        self.assertIn("Content-Length", e.message)

    def test_locations_refused(self) -> None:
        """Anything but an absolute http(s) URL with a host is a L{BadRequest}."""
        for location in ["file:///etc/passwd", "ftp://h/x", "http:///x", "http://", "//h/x",
                         "http://h:99999/", "http://h/\u00e9", "http://h/a b"]:
            self.failureResultOf(self.store.size(location), BadRequest)
            self.failureResultOf(self.store.read(location, FakeConsumer()), BadRequest)
        self.assertEqual(self.web.requests, [])

    def test_credentials(self) -> None:
        """
        Userinfo becomes Basic authorisation, is not in the URL sent, and
        appears in no error message.
        """
        location = "http://al%40ice:s3cr%3At@images.example/private?sig=abc"
        e = self.failureResultOf(self.store.size(location), NotFound).value
        method, url, headers = self.web.requests[0]
        self.assertEqual(url, "http://images.example/private?sig=abc")
        self.assertEqual(
            headers.getRawHeaders(b"authorization"),
            [b"Basic " + base64.b64encode(b"al@ice:s3cr:t")],
        )
        for text in ["s3cr", "al%40ice", "al@ice", "sig=abc"]:
            self.assertNotIn(text, e.message)
        self.assertIn("http://images.example/private", e.message)

    def test_shown_url(self) -> None:
        """Messages show a URL without userinfo, query or fragment."""
        self.assertEqual(shown_url("https://u:p@h.example:8443/a/b?t=1#f"), "https://h.example:8443/a/b?...#f")
        self.assertEqual(shown_url("http://h.example/a#new"), "http://h.example/a#new")
        self.assertEqual(shown_url("http://u@[::1]/x"), "http://[::1]/x")
        self.assertEqual(shown_url("http://h:bad/x"), "<an unusable URL>")

    def test_redirect_credentials_stay_with_origin(self) -> None:
        """
        Credentials follow a redirect on the same origin, not one to
        another; Range is sent on every hop.
        """
        self.web.redirects = {
            "http://a.example/1": "/2",
            "http://a.example/2": "http://b.example/3",
        }
        self.web.files["http://b.example/3"] = b"abcdef"
        consumer = FakeConsumer()
        self.successResultOf(self.store.read("http://u:p@a.example/1", consumer, offset=1))
        self.assertEqual(consumer.value(), b"bcdef")
        sent = [(u, h.getRawHeaders(b"authorization"), h.getRawHeaders(b"range")) for _, u, h in self.web.requests]
        auth = [b"Basic " + base64.b64encode(b"u:p")]
        self.assertEqual(sent, [
            ("http://a.example/1", auth, [b"bytes=1-"]),
            ("http://a.example/2", auth, [b"bytes=1-"]),
            ("http://b.example/3", None, [b"bytes=1-"]),
        ])

    def test_redirect_limit(self) -> None:
        """More than C{max_redirects} hops is a L{StoreError}; that many is fine."""
        self.web.redirects = {f"http://r.example/{i}": f"/{i + 1}" for i in range(6)}
        self.web.files["http://r.example/6"] = b"end"
        store = HTTPStore(agent=self.web, clock=self.clock, max_redirects=5)
        e = self.failureResultOf(store.size("http://r.example/0"), StoreError).value
        self.assertIn("more than 5", e.message)
        self.assertEqual(self.successResultOf(store.size("http://r.example/1")), 3)

    def test_redirect_to_other_scheme(self) -> None:
        """A redirect to a non-http(s) URL is refused."""
        self.web.redirects = {"http://a.example/1": "file:///etc/passwd"}
        self.failureResultOf(self.store.size("http://a.example/1"), AddressRefused)
        self.assertEqual(len(self.web.requests), 1)

    def test_response_timeout(self) -> None:
        """No response within C{read_timeout} cancels the request: L{StoreError}."""
        self.web.paced = True
        d = self.store.size(self.web.add(b"x"))
        self.clock.advance(29)
        self.assertNoResult(d)
        self.clock.advance(1)
        e = self.failureResultOf(d, StoreError).value
        self.assertIn("did not answer within 30 seconds", e.message)

    def test_stalled_body(self) -> None:
        """
        A body that stops arriving for C{read_timeout} while the consumer
        wants more fails the read and closes the connection; time the
        consumer spends paused does not count.
        """
        store = HTTPStore(agent=self.web, clock=self.clock, read_timeout=30, block_size=4)
        self.web.paced, self.web.block_size = True, 4
        url = self.web.add(b"0123456789ab")
        consumer = FakeConsumer()
        d = store.read(url, consumer)
        self.web.run_one()  # the response
        self.web.run_one()  # the first block, written
        assert consumer.producer is not None
        consumer.producer.pauseProducing()
        self.web.run_one()  # the second, held
        self.clock.advance(100)
        self.assertNoResult(d)
        consumer.producer.resumeProducing()  # wants the third, which does not come
        self.assertEqual(consumer.value(), b"01234567")
        self.clock.advance(29)
        self.assertNoResult(d)
        self.clock.advance(1)
        while self.web.pending():
            self.web.run_one()
        e = self.failureResultOf(d, StoreError).value
        self.assertIn("sent nothing for 30 seconds", e.message)
        self.assertEqual(self.web.stops, 1)
        self.assertEqual(consumer.unregistered, 1)

    def test_paused_on_register(self) -> None:
        """
        A consumer that pauses the producer as it registers it (as
        twisted.web does while its socket is full) gets nothing until it
        resumes, and the connection is paused once a couple of blocks are
        held: the rest of the body is not read meanwhile.
        """

        @define
        class PausingConsumer(FakeConsumer):
            def registerProducer(self, producer: Any, streaming: bool) -> None:
                super().registerProducer(producer, streaming)
                producer.pauseProducing()

        store = HTTPStore(agent=self.web, clock=self.clock, block_size=4)
        self.web.paced, self.web.block_size = True, 4
        data = make_data(400)
        url = self.web.add(data)
        consumer = PausingConsumer()
        d = store.read(url, consumer)
        while self.web.pending():
            self.web.run_one()
        self.assertEqual(consumer.chunks, [])
        self.assertLess(self.web.blocks, 6)
        assert consumer.producer is not None
        consumer.producer.resumeProducing()
        while self.web.pending():
            self.web.run_one()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(consumer.value(), data)

    def test_consumer_fails(self) -> None:
        """
        A consumer that raises in C{registerProducer} or C{write} fails the
        read with its error, and the connection is closed.
        """

        @define
        class Refusing(FakeConsumer):
            def registerProducer(self, producer: Any, streaming: bool) -> None:
                raise ValueError("no producers here")

        @define
        class Broken(FakeConsumer):
            def write(self, data: bytes) -> None:
                raise ValueError("disk full")

        store = HTTPStore(agent=self.web, clock=self.clock, block_size=4)
        self.web.block_size = 4
        url = self.web.add(make_data(400))
        self.failureResultOf(store.read(url, Refusing()), ValueError)
        self.assertEqual(self.web.stops, 1)
        consumer = Broken()
        self.failureResultOf(store.read(url, consumer), ValueError)
        self.assertEqual(self.web.stops, 2)
        self.assertEqual(consumer.unregistered, 1)


class OptionsTests(SynchronousTestCase):
    """L{http_store_from_options}: the store's config section."""

    def test_defaults(self) -> None:
        """With no options: 5 redirects, 60 s read timeout, guard with nothing allowed."""
        from twisted.internet.testing import MemoryReactorClock

        store = http_store_from_options({}, MemoryReactorClock())
        self.assertEqual((store.max_redirects, store.read_timeout), (5, 60.0))
        self.assertTrue(verifyObject(IStore, store))

    def test_options(self) -> None:
        """Every option is read."""
        from twisted.internet.testing import MemoryReactorClock

        store = http_store_from_options(
            {
                "http_store_allowed_networks": "127.0.0.0/8",
                "http_store_max_redirects": "2",
                "http_store_read_timeout": "1.5",
                "http_store_connect_timeout": "3",
            },
            MemoryReactorClock(),
        )
        self.assertEqual((store.max_redirects, store.read_timeout), (2, 1.5))

    def test_bad_options(self) -> None:
        """A bad value is a ValueError naming the option."""
        from twisted.internet.testing import MemoryReactorClock

        for name, value in [
            ("http_store_allowed_networks", "localhost"),
            ("http_store_max_redirects", "-1"),
            ("http_store_max_redirects", "many"),
            ("http_store_read_timeout", "0"),
            ("http_store_connect_timeout", "soon"),
        ]:
            e = self.assertRaises(ValueError, http_store_from_options, {name: value}, MemoryReactorClock())
            self.assertTrue(name in str(e) or repr(value) in str(e), str(e))

    def _build(self, text: str) -> Deferred[Any]:
        from twisted.internet.testing import MemoryReactorClock

        from glance_tx.config import load_config
        from glance_tx.store.backends import build_store_map
        from glance_tx.threads import SynchronousRunner

        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        config = load_config(path, data_dir=self.mktemp())
        return Deferred.fromCoroutine(build_store_map(config, SynchronousRunner(), MemoryReactorClock()))

    def test_store_map(self) -> None:
        """
        C{enabled_backends} with an C{http} store builds one, which owns
        both http and https locations.
        """
        stores = self.successResultOf(self._build(
            "[DEFAULT]\nenabled_backends = file:file, web:http\n"
            "[web]\nhttp_store_max_redirects = 1\n"
        ))
        web = stores.stores["web"]
        self.assertIsInstance(web, HTTPStore)
        self.assertEqual(web.max_redirects, 1)  # type: ignore[attr-defined]
        self.assertIs(stores.for_location("http://h.example/x"), web)
        self.assertIs(stores.for_location("https://h.example/x"), web)

    def test_store_map_bad_option(self) -> None:
        """A bad option is a L{ConfigError} naming the store and the option."""
        from glance_tx.config import ConfigError

        e = self.failureResultOf(self._build(
            "[DEFAULT]\nenabled_backends = file:file, web:http\n"
            "[web]\nhttp_store_allowed_networks = intranet\n"
        ), ConfigError).value
        self.assertIn("'web'", str(e))
        self.assertIn("'intranet'", str(e))

    def test_read_only_default_refused(self) -> None:
        """An C{http} store cannot be C{default_backend}: uploads would fail."""
        from glance_tx.config import ConfigError

        e = self.failureResultOf(self._build(
            "[DEFAULT]\nenabled_backends = file:file, web:http\ndefault_backend = web\n"
        ), ConfigError).value
        self.assertIn("read-only", str(e))


# Real sockets: a twisted.web server on loopback.


class _NoRanges(Resource):
    """Serves a directory's files ignoring C{Range}: always 200, everything."""

    isLeaf = True

    def __init__(self, root: FilePath[str]) -> None:
        super().__init__()
        self.root = root

    def render_GET(self, request: server.Request) -> bytes:
        child = self.root.child(request.postpath[0].decode())
        if not child.isfile():
            request.setResponseCode(404)
            return b""
        content = child.getContent()
        request.setHeader(b"content-length", str(len(content)).encode())
        return content

    render_HEAD = render_GET


class _Redirect(Resource):
    """C{/redirect/N/NAME}: N redirects, the last to C{/files/NAME} (at C{to})."""

    isLeaf = True

    def __init__(self, to: Callable[[], str] | None = None) -> None:
        super().__init__()
        self.to = to

    def render(self, request: server.Request) -> bytes:
        hops, name = int(request.postpath[0]), request.postpath[1].decode()
        if hops > 1:
            target = f"/redirect/{hops - 1}/{name}"
        else:
            target = (self.to() if self.to else "") + f"/files/{name}"
        request.setResponseCode(302)
        request.setHeader(b"location", target.encode())
        return b""


class _Stall(Resource):
    """C{/stall/headers}: never answers; C{/stall/body}: half a body, then nothing."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[server.Request] = []

    def render(self, request: server.Request) -> Any:
        self.requests.append(request)
        if request.postpath[0] == b"body":
            request.setHeader(b"content-length", b"1000")
            request.write(b"x" * 500)
        return server.NOT_DONE_YET


class _Auth(Resource):
    """C{/auth/...}: 401 unless Basic C{alice:secret}; records what it got."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bytes | None] = []

    def render(self, request: server.Request) -> bytes:
        got = request.getHeader(b"authorization")
        self.seen.append(got)
        if got != b"Basic " + base64.b64encode(b"alice:secret"):
            request.setResponseCode(401)
            return b""
        return b"private data"


@functools.lru_cache(maxsize=1)
def _generated(size: int) -> bytes:
    return make_data(size, seed=64)


@implementer(IPushProducer)
class _Generated(Resource):
    """
    C{/generated/N}: N MiB of L{_generated} bytes, written only while the
    connection asks for more (a push producer on the request); C{sent}
    counts what was written.
    """

    isLeaf = True
    chunk = 64 << 10

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0
        self.paused = False

    def render_GET(self, request: server.Request) -> Any:
        self.data = _generated(int(request.postpath[0]) << 20)
        self.request, self.sent, self.paused, self.finished = request, 0, False, False
        request.setHeader(b"content-length", str(len(self.data)).encode())
        request.registerProducer(self, True)
        self.resumeProducing()
        return server.NOT_DONE_YET

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.sent < len(self.data):
            block = self.data[self.sent : self.sent + self.chunk]
            self.sent += len(block)
            self.request.write(block)
        if self.sent == len(self.data) and not self.paused and not self.finished:
            self.finished = True
            self.request.unregisterProducer()
            self.request.finish()

    def stopProducing(self) -> None:
        self.paused = True


def _site(root: FilePath[str], redirect_to: Callable[[], str] | None = None) -> tuple[server.Site, Resource]:
    top = Resource()
    top.putChild(b"files", static.File(root.path))
    top.putChild(b"plain", _NoRanges(root))
    top.putChild(b"gzip", EncodingResourceWrapper(static.File(root.path), [GzipEncoderFactory()]))
    top.putChild(b"redirect", _Redirect(redirect_to))
    top.putChild(b"stall", _Stall())
    top.putChild(b"auth", _Auth())
    top.putChild(b"generated", _Generated())
    site = server.Site(top)
    site.displayTracebacks = False
    return site, top


class _LiveHarness(TestCase):
    """A twisted.web server on 127.0.0.1 and a store allowed to reach it."""

    path = "files"
    allowed = "127.0.0.1/32"

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.root = FilePath(self.mktemp())
        self.root.makedirs()
        site, self.resources = _site(self.root, lambda: self.other_base)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        self.other_base = self.base

    def make_store(self, allowed: str | None = None, **kwargs: Any) -> HTTPStore:
        networks = parse_networks(self.allowed if allowed is None else allowed)
        agent = guarded_agent(self.reactor, AddressPolicy(networks), connect_timeout=5)
        return HTTPStore(agent=agent, clock=self.reactor, **kwargs)

    def complete(self, d: Deferred[Any]) -> object:
        return d

    def put(self, data: bytes) -> str:
        name = f"image-{next(_names)}"
        self.root.child(name).setContent(data)
        return name

    async def seed(self, store: IStore, data: bytes) -> str:
        return f"{self.base}/{self.path}/{self.put(data)}"

    async def missing_location(self, store: IStore) -> str:
        return f"{self.base}/{self.path}/missing"


class LiveRangeTests(_LiveHarness, UnpacedReadConformanceMixin):
    """The read conformance suite over real sockets, against static.File."""


class LiveNoRangeTests(_LiveHarness, UnpacedReadConformanceMixin):
    """The read conformance suite over real sockets, a server ignoring Range."""

    path = "plain"


class LiveRedirectTests(_LiveHarness, UnpacedReadConformanceMixin):
    """The read conformance suite through three redirects per request."""

    async def seed(self, store: IStore, data: bytes) -> str:
        return f"{self.base}/redirect/3/{self.put(data)}"

    async def missing_location(self, store: IStore) -> str:
        return f"{self.base}/redirect/3/missing"


async def _read(store: IStore, location: str, consumer: IConsumer | None = None, **kwargs: Any) -> bytes:
    consumer = consumer or FakeConsumer()
    await store.read(location, consumer, **kwargs)
    return consumer.value()  # type: ignore[attr-defined, no-any-return]


class LiveTests(_LiveHarness):
    """The HTTP store against a real server: guard, redirects, faults."""

    def second_server(self, interface: str) -> str:
        """Serve the same files on another loopback address; its base URL."""
        site, _ = _site(self.root)
        port = self.reactor.listenTCP(0, site, interface=interface)
        self.addCleanup(port.stopListening)
        return f"http://{interface}:{port.getHost().port}"

    async def test_loopback_refused_by_default(self) -> None:
        """With no allowed networks, the loopback server is refused (403)."""
        store = self.make_store(allowed="")
        location = f"{self.base}/files/{self.put(b'data')}"
        with self.assertRaises(AddressRefused) as e:
            await store.size(location)
        self.assertIn("loopback", e.exception.message)
        with self.assertRaises(AddressRefused):
            await store.read(location, FakeConsumer())

    async def test_redirect_to_forbidden_address(self) -> None:
        """
        A redirect from the allowed 127.0.0.1 to 127.0.0.2, which is not
        allowed, is refused at that hop, though 127.0.0.2 serves the data:
        with 127.0.0.0/8 allowed the same chain reads it.
        """
        self.other_base = self.second_server("127.0.0.2")
        location = f"{self.base}/redirect/1/{self.put(b'over there')}"
        with self.assertRaises(AddressRefused) as e:
            await _read(self.make_store(allowed="127.0.0.1/32"), location)
        self.assertIn("127.0.0.2", e.exception.message)
        self.assertEqual(await _read(self.make_store(allowed="127.0.0.0/8"), location), b"over there")

    async def test_too_many_redirects(self) -> None:
        """Six hops with a limit of five is a L{StoreError}."""
        location = f"{self.base}/redirect/6/{self.put(b'far')}"
        with self.assertRaises(StoreError) as e:
            await self.make_store(max_redirects=5).size(location)
        self.assertIn("more than 5", e.exception.message)
        self.assertEqual(await self.make_store(max_redirects=6).size(location), 3)

    async def test_identity_from_gzip_server(self) -> None:
        """
        A server that gzips when asked gives the stored bytes and their
        size, not compressed ones.
        """
        data = b"compressible " * 10_000
        location = f"{self.base}/gzip/{self.put(data)}"
        store = self.make_store()
        self.assertEqual(await store.size(location), len(data))
        self.assertEqual(await _read(store, location), data)
        self.assertEqual(await _read(store, location, offset=13, length=26), data[13:39])

    async def test_credentials(self) -> None:
        """
        Userinfo is sent as Basic authorisation; when refused, the error
        names the URL without it.
        """
        store = self.make_store()
        self.assertEqual(await _read(store, f"http://alice:secret@{self.base[7:]}/auth/x"), b"private data")
        with self.assertRaises(StoreError) as e:
            await store.size(f"http://alice:wrong@{self.base[7:]}/auth/x")
        self.assertIn(f"{self.base}/auth/x answered 401", e.exception.message)
        self.assertNotIn("wrong", e.exception.message)
        self.assertNotIn("alice", e.exception.message)

    async def test_server_gone(self) -> None:
        """A server that is not there is a L{StoreError} without credentials."""
        port = self.reactor.listenTCP(0, server.Site(Resource()), interface="127.0.0.1")
        number = port.getHost().port
        await port.stopListening()
        with self.assertRaises(StoreError) as e:
            await self.make_store().size(f"http://bob:hunter2@127.0.0.1:{number}/x")
        self.assertIn(f"http://127.0.0.1:{number}/x", e.exception.message)
        self.assertNotIn("hunter2", e.exception.message)

    async def test_no_answer(self) -> None:
        """A server that never answers fails the request after C{read_timeout}."""
        with self.assertRaises(StoreError) as e:
            await self.make_store(read_timeout=0.3).size(f"{self.base}/stall/headers")
        self.assertIn("did not answer within 0.3 seconds", e.exception.message)

    async def test_stalled_body(self) -> None:
        """
        A server that stops sending mid-body fails the read after
        C{read_timeout}, and the connection is closed.
        """
        consumer = FakeConsumer()
        with self.assertRaises(StoreError) as e:
            await self.make_store(read_timeout=0.3).read(f"{self.base}/stall/body", consumer)
        self.assertIn("sent nothing for 0.3 seconds", e.exception.message)
        self.assertEqual(len(consumer.value()), 500)
        self.assertEqual(consumer.unregistered, 1)
        stalled = self.resources.children[b"stall"]
        await deferLater(self.reactor, 0.05, lambda: None)
        self.assertTrue(stalled.requests[-1]._disconnected)  # type: ignore[attr-defined]

    async def test_slow_consumer_pauses_server(self) -> None:
        """
        While the consumer is paused the server is held up too: of a 64 MiB
        image it gets to send only what the socket buffers and the store's
        couple of blocks hold, not the image; once resumed, the rest
        arrives intact.
        """
        generated = self.resources.children[b"generated"]
        # Paused from inside the first write, as a full transport pauses:
        # polling for that write let an unknown amount more through first.
        consumer = FakeConsumer(pause_on_write=True)
        d = self.make_store().read(f"{self.base}/generated/64", consumer)
        while not consumer.chunks:
            await deferLater(self.reactor, 0.01, lambda: None)
        assert consumer.producer is not None
        consumer.pause_on_write = False
        await deferLater(self.reactor, 0.5, lambda: None)
        sent = generated.sent
        await deferLater(self.reactor, 0.2, lambda: None)
        self.assertEqual(generated.sent, sent)
        self.assertLess(sent, 16 << 20)
        consumer.producer.resumeProducing()
        await d
        self.assertEqual(consumer.value(), _generated(64 << 20))


class ApiTests(TestCase):
    """
    glance-tx itself, with an C{http} store next to the filesystem one, on
    a real socket: a v1 image registered by location is served from the web
    server, and a location the guard refuses is a 400.
    """

    timeout = 60

    async def _start(self) -> None:
        from tests.live_server import listening_port, live_config, start_glance_tx

        self.root = FilePath(self.mktemp())
        self.root.makedirs()
        site, _ = _site(self.root)
        port = self.reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.web = f"http://127.0.0.1:{port.getHost().port}"
        config = live_config(
            self,
            "[DEFAULT]\nenabled_backends = file:file, web:http\n"
            "show_multiple_locations = true\n"
            "[web]\nhttp_store_allowed_networks = 127.0.0.1/32\n",
        )
        service = await start_glance_tx(config, self.addCleanup, "http-store-api")
        self.base = f"http://127.0.0.1:{listening_port(service)}"

    def setUp(self) -> Deferred[None]:
        from twisted.internet import reactor

        from tests.live_server import settled_client

        self.reactor: Any = reactor
        self.treq = settled_client(self)
        return Deferred.fromCoroutine(self._start())

    async def create(self, location: str) -> Any:
        return await self.treq.post(
            f"{self.base}/v1/images",
            headers={
                "x-image-meta-name": "from the web",
                "x-image-meta-disk-format": "raw",
                "x-image-meta-container-format": "bare",
                "x-image-meta-location": location,
            },
        )

    async def test_register_and_download(self) -> None:
        """
        The size comes from the web server's HEAD; a GET (whole, or a
        range) streams the bytes from it.
        """
        data = make_data(300_000, seed=20)
        self.root.child("image").setContent(data)
        response = await self.create(f"{self.web}/files/image")
        self.assertEqual(response.code, 201, await response.text())
        image = (await response.json())["image"]
        self.assertEqual((image["status"], image["size"]), ("active", len(data)))
        got = await self.treq.get(f"{self.base}/v1/images/{image['id']}")
        self.assertEqual(await got.content(), data)
        ranged = await self.treq.get(
            f"{self.base}/v1/images/{image['id']}", headers={"range": "bytes=1000-1999"}
        )
        self.assertEqual(ranged.code, 206)
        self.assertEqual(await ranged.content(), data[1000:2000])

    async def test_location_is_for_admins(self) -> None:
        """
        A project without the admin role may not point an image at a URL
        (403, and no image is made); deleting an admin's web-backed image
        leaves the web server's file alone.
        """
        self.root.child("image").setContent(b"web bytes")
        response = await self.treq.post(
            f"{self.base}/v1/images",
            headers={
                "x-image-meta-name": "mine",
                "x-image-meta-location": f"{self.web}/files/image",
                "X-Project-Id": "someone",
                "X-Roles": "member",
            },
        )
        self.assertEqual(response.code, 403, await response.text())
        self.assertIn("admin", (await response.json())["error"]["message"])
        listed = await (await self.treq.get(f"{self.base}/v1/images")).json()
        self.assertEqual(listed["images"], [])
        response = await self.create(f"{self.web}/files/image")
        image = (await response.json())["image"]
        deleted = await self.treq.delete(f"{self.base}/v1/images/{image['id']}")
        self.assertEqual(deleted.code, 200, await deleted.text())
        await deleted.content()
        self.assertEqual(self.root.child("image").getContent(), b"web bytes")

    async def add_v2(self, location: str) -> tuple[str, Any]:
        """A queued v2 image, then a PATCH that adds C{location}: its id and the answer."""
        created = await self.treq.post(
            f"{self.base}/v2/images",
            json={"name": "v2 from the web", "disk_format": "raw", "container_format": "bare"},
        )
        image_id = (await created.json())["id"]
        patched = await self.treq.patch(
            f"{self.base}/v2/images/{image_id}",
            data=json.dumps(
                [{"op": "add", "path": "/locations/-", "value": {"url": location, "metadata": {}}}]
            ).encode(),
            headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
        )
        return image_id, patched

    async def test_v2_add_location(self) -> None:
        """
        v2's PATCH add /locations/- (show_multiple_locations on) takes the
        size from the web server's HEAD and makes the image active; its
        data streams from the web server; a second copy of another size is
        a 400.
        """
        data = make_data(200_000, seed=21)
        self.root.child("image").setContent(data)
        self.root.child("other").setContent(data[:-1])
        image_id, patched = await self.add_v2(f"{self.web}/files/image")
        self.assertEqual(patched.code, 200, await patched.text())
        image = await patched.json()
        self.assertEqual((image["status"], image["size"]), ("active", len(data)))
        self.assertEqual(
            image["locations"], [{"url": f"{self.web}/files/image", "metadata": {"store": "web"}}]
        )
        got = await self.treq.get(f"{self.base}/v2/images/{image_id}/file")
        self.assertEqual(await got.content(), data)
        second = await self.treq.patch(
            f"{self.base}/v2/images/{image_id}",
            data=json.dumps([{"op": "add", "path": "/locations/-",
                              "value": {"url": f"{self.web}/files/other", "metadata": {}}}]).encode(),
            headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
        )
        self.assertEqual(second.code, 400)
        self.assertIn("bytes", await second.text())

    async def test_v2_forbidden_location(self) -> None:
        """
        v2 is guarded as v1: an address outside the allowed networks is a
        400 naming why, a server that is gone a 400 too; the image stays
        queued.
        """
        port = self.web.rsplit(":", 1)[1]
        gone = self.reactor.listenTCP(0, server.Site(Resource()), interface="127.0.0.1")
        gone_port = gone.getHost().port
        await gone.stopListening()
        for url, reason in [
            (f"http://127.0.0.2:{port}/files/x", "loopback"),
            (f"http://127.0.0.1:{gone_port}/x", "Location cannot be used"),
        ]:
            image_id, patched = await self.add_v2(url)
            self.assertEqual(patched.code, 400)
            self.assertIn(reason, await patched.text())
            shown = await (await self.treq.get(f"{self.base}/v2/images/{image_id}")).json()
            self.assertEqual(shown["status"], "queued")

    async def test_forbidden_location(self) -> None:
        """
        A location at an address the guard refuses (127.0.0.2, outside the
        allowed 127.0.0.1/32) is a 400 that says why; no image is active.
        """
        response = await self.create(f"http://127.0.0.2:{self.web.rsplit(':', 1)[1]}/files/x")
        self.assertEqual(response.code, 400)
        self.assertIn("loopback", await response.text())
