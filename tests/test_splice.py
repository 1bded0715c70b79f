"""
Downloads from the HTTP store relayed with C{os.splice}
(L{glance_tx.api.splice}), over real sockets: a twisted.web server on
loopback as the store's web server, glance-tx in this process, and real
clients. Which downloads take that path (and which keep the store's
producer: chunked and TLS upstreams, a client on TLS, a range the server
ignores, several ranges), the bytes and the log line they give, a slow
client, a client that hangs up, and a server whose response ends short
or stalls.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
from itertools import count
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web import server
from twisted.web.client import ResponseFailed
from twisted.web.resource import Resource
from zope.interface import implementer

from glance_tx.api import splice as splice_module
from tests.test_sendfile import _open_fds, _read_all, _two_on_one_connection, pattern
from tests.tls import certificate_authority

MiB = 1 << 20
_names = count()


@implementer(IPushProducer)
class _Sending:
    """
    One GET's answer: C{data} written 64 KiB at a time while the
    connection asks for more. C{mode}: C{whole}; C{chunked} (no
    Content-Length); C{short} (the whole length declared, half sent, then
    the connection closed); C{stall} (half sent, then nothing).
    """

    chunk = 64 << 10

    def __init__(self, request: server.Request, data: bytes, mode: str) -> None:
        self.request, self.data, self.mode = request, data, mode
        self.limit = len(data) // 2 if mode in ("short", "stall") else len(data)
        self.sent = 0
        self.paused = self.done = False
        if mode != "chunked":
            request.setHeader(b"content-length", str(len(data)).encode())
        request.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.sent < self.limit:
            block = self.data[self.sent : min(self.sent + self.chunk, self.limit)]
            self.sent += len(block)
            self.request.write(block)
        if self.sent == self.limit and not self.paused and not self.done:
            self.done = True
            self.request.unregisterProducer()
            if self.mode == "short":
                self.request.transport.loseConnection()  # type: ignore[union-attr]
            elif self.mode != "stall":
                self.request.finish()

    def stopProducing(self) -> None:
        self.paused = True


class _Source(Resource):
    """C{/NAME}: the bytes and mode of C{images[NAME]}; HEAD gives their size."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.images: dict[str, tuple[bytes, str]] = {}
        self.answers: list[_Sending] = []

    def render_HEAD(self, request: server.Request) -> bytes:
        data, _ = self.images[request.postpath[0].decode()]
        request.setHeader(b"content-length", str(len(data)).encode())
        return b""

    def render_GET(self, request: server.Request) -> Any:
        data, mode = self.images[request.postpath[0].decode()]
        asked = request.getHeader(b"range")
        if asked is not None and mode != "norange":
            first, _, last = asked.removeprefix(b"bytes=").partition(b"-")
            end = min(int(last), len(data) - 1) if last else len(data) - 1
            request.setResponseCode(206)
            request.setHeader(
                b"content-range", f"bytes {int(first)}-{end}/{len(data)}".encode()
            )
            data = data[int(first) : end + 1]
        self.answers.append(_Sending(request, data, mode))
        return server.NOT_DONE_YET


class _Splices:
    """Wraps the module's splice, counting the bytes moved into the client's socket."""

    def __init__(self) -> None:
        self.calls = 0
        self.to_client = 0
        self.real = splice_module.splice

    def __call__(self, source: int, destination: int, count: int) -> int:
        self.calls += 1
        moved = self.real(source, destination, count)
        if stat.S_ISFIFO(os.fstat(source).st_mode):
            self.to_client += moved
        return moved


class _Harness(TestCase):
    """glance-tx with an http store that may reach a loopback web server."""

    timeout = 60
    read_timeout = 1

    def setUp(self) -> Deferred[None]:
        from tests.live_server import settled_client

        self.treq = settled_client(self)
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        from tests.live_server import listening_port, live_config, start_glance_tx

        self.source = _Source()
        top = Resource()
        top.putChild(b"d", self.source)
        site = server.Site(top)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.web = f"http://127.0.0.1:{port.getHost().port}/d"
        self.ca = certificate_authority()
        tls = reactor.listenSSL(0, site, self.ca.server_options(), interface="127.0.0.1")
        self.addCleanup(tls.stopListening)
        self.web_tls = f"https://127.0.0.1:{tls.getHost().port}/d"
        config = live_config(
            self,
            "[DEFAULT]\nenabled_backends = file:file, web:http\n"
            "[web]\nhttp_store_allowed_networks = 127.0.0.1/32\n"
            f"http_store_read_timeout = {self.read_timeout}\n"
            f"https_ca_certificates_file = {self.ca.write(self)}\n",
        )
        service = await start_glance_tx(config, self.addCleanup, "splice")
        self.port = listening_port(service)
        self.base = f"http://127.0.0.1:{self.port}"

    def spy(self) -> _Splices:
        splices = _Splices()
        self.patch(splice_module, "splice", splices)
        return splices

    def watch_log(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    async def image(self, data: bytes, mode: str = "whole", tls: bool = False) -> str:
        """A v1 image registered at a web URL serving C{data} as C{mode} says; its id."""
        name = f"image-{next(_names)}"
        self.source.images[name] = (data, mode)
        response = await self.treq.post(
            f"{self.base}/v1/images",
            headers={
                "x-image-meta-name": "spliced",
                "x-image-meta-disk-format": "raw",
                "x-image-meta-container-format": "bare",
                "x-image-meta-location": f"{self.web_tls if tls else self.web}/{name}",
            },
        )
        self.assertEqual(response.code, 201, await response.text())
        image_id: str = (await response.json())["image"]["id"]
        # Its record read once, so the registry's change watch, opened at
        # the first read (glance_tx.registry.sql.fresh), is not counted
        # among the fds a download leaves.
        head = await self.treq.head(f"{self.base}/v1/images/{image_id}")
        self.assertEqual(head.code, 200)
        return image_id

    def raw_get(self, uri: str, receive_buffer: int = 64 << 10) -> socket.socket:
        client = socket.create_connection(("127.0.0.1", self.port))
        self.addCleanup(client.close)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        client.sendall(f"GET {uri} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        return client

    async def settle(self, done: Any, tries: int = 100) -> None:
        for _ in range(tries):
            if done():
                return
            await deferLater(reactor, 0.05, lambda: None)


def _logged(events: list[dict[str, Any]], uri: str) -> list[tuple[int, int]]:
    return [
        (e["code"], e["length"])
        for e in events
        if "length" in e and e.get("uri") == uri and e.get("method") == "GET"
    ]


class ChoiceTests(_Harness):
    """Which downloads the kernel relays, and which the store's producer streams."""

    size = 3 * MiB + 13

    async def test_whole_download_is_spliced(self) -> None:
        """
        A whole download from a Content-Length server on plain TCP goes
        through splice, every byte right after its Content-Length, and the
        log line counts them all; no fd is left open afterwards.
        """
        data = pattern(self.size)
        image_id = await self.image(data)
        splices = self.spy()
        events = self.watch_log()
        await deferLater(reactor, 0.2, lambda: None)
        before = _open_fds()
        uri = f"/v1/images/{image_id}"
        client = self.raw_get(uri, receive_buffer=1 << 20)
        received = await deferToThread(_read_all, client)
        client.close()
        head, _, body = received.partition(b"\r\n\r\n")
        self.assertIn(f"content-length: {len(data)}".encode(), head.lower())
        self.assertEqual(hashlib.sha256(body).hexdigest(), hashlib.sha256(data).hexdigest())
        # All but what came with the response's head went through the pipe.
        self.assertGreater(splices.to_client, len(data) - (64 << 10))
        self.assertEqual(_logged(events, uri), [(200, len(data))])
        # The store's connection (both ends), the dups and the pipe are closed.
        await self.settle(lambda: _open_fds() <= before)
        self.assertEqual(_open_fds(), before)

    async def test_one_range_is_spliced(self) -> None:
        """A single range (a 206 the server answers) is relayed by splice too."""
        data = pattern(self.size)
        image_id = await self.image(data)
        splices = self.spy()
        response = await self.treq.get(
            f"{self.base}/v1/images/{image_id}", headers={"Range": "bytes=1001-2000000"}
        )
        self.assertEqual(response.code, 206)
        self.assertEqual(await response.content(), data[1001:2000001])
        self.assertGreater(splices.to_client, 0)

    async def test_range_from_the_start_of_a_whole_answer_is_spliced(self) -> None:
        """
        A range from byte 0 that the server answers with everything (200)
        needs no skipping: the relay sends the range's bytes and closes the
        server's connection on the rest.
        """
        data = pattern(self.size)
        image_id = await self.image(data, mode="norange")
        splices = self.spy()
        response = await self.treq.get(
            f"{self.base}/v1/images/{image_id}", headers={"Range": "bytes=0-2000000"}
        )
        self.assertEqual(response.code, 206)
        self.assertEqual(await response.content(), data[:2000001])
        self.assertGreater(splices.to_client, 0)
        await self.settle(lambda: self.source.answers[-1].request._disconnected)
        self.assertTrue(self.source.answers[-1].request._disconnected)

    async def test_range_the_server_ignores_streams(self) -> None:
        """
        A range from the middle that the server answers with everything
        (200) must skip bytes first: the store's producer streams it.
        """
        data = pattern(self.size)
        image_id = await self.image(data, mode="norange")
        splices = self.spy()
        response = await self.treq.get(
            f"{self.base}/v1/images/{image_id}", headers={"Range": "bytes=1001-2000000"}
        )
        self.assertEqual(response.code, 206)
        self.assertEqual(await response.content(), data[1001:2000001])
        self.assertEqual(splices.calls, 0)

    async def test_chunked_server_streams(self) -> None:
        """A server that answers chunked (no Content-Length): no splice."""
        data = pattern(self.size)
        image_id = await self.image(data, mode="chunked")
        splices = self.spy()
        response = await self.treq.get(f"{self.base}/v1/images/{image_id}")
        self.assertEqual(await response.content(), data)
        self.assertEqual(splices.calls, 0)

    async def test_tls_server_streams(self) -> None:
        """A server on https must be decrypted in user space: no splice."""
        data = pattern(self.size)
        image_id = await self.image(data, tls=True)
        splices = self.spy()
        response = await self.treq.get(f"{self.base}/v1/images/{image_id}")
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), data)
        self.assertEqual(splices.calls, 0)

    async def test_multipart_ranges_stream(self) -> None:
        """Several ranges interleave part heads with the bytes: no splice."""
        data = pattern(self.size)
        image_id = await self.image(data)
        splices = self.spy()
        response = await self.treq.get(
            f"{self.base}/v1/images/{image_id}", headers={"Range": "bytes=0-9,2000000-2000099"}
        )
        self.assertEqual(response.code, 206)
        body = await response.content()
        self.assertIn(data[:10], body)
        self.assertIn(data[2000000:2000100], body)
        self.assertEqual(splices.calls, 0)

    async def test_connection_kept_alive_after_splice(self) -> None:
        """
        After a spliced body the client's HTTP/1.1 connection serves the
        next request: the body ended exactly at its Content-Length.
        """
        data = pattern(2 * MiB)
        image_id = await self.image(data)
        splices = self.spy()
        request = f"GET /v1/images/{image_id} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        bodies = await deferToThread(_two_on_one_connection, self.port, request)
        self.assertEqual(bodies, [data, data])
        self.assertGreater(splices.to_client, 0)

    async def test_small_image_within_the_first_read(self) -> None:
        """An image that comes whole with the response's head is right too."""
        data = pattern(1000)
        image_id = await self.image(data)
        response = await self.treq.get(f"{self.base}/v1/images/{image_id}")
        self.assertEqual(await response.content(), data)


class FlowTests(_Harness):
    """Backpressure, hang-ups and short or stalled servers."""

    async def test_slow_client_holds_the_server(self) -> None:
        """
        A client that stops reading stops the relay reading the server: of
        a 64 MiB image the server gets to send only what the sockets and
        the pipe hold, splice is not retried in a loop, and the server's
        read timeout (1 s) does not fire while the client is the slow one;
        once the client reads, the rest comes, every byte right.
        """
        data = pattern(64 * MiB)
        image_id = await self.image(data)
        splices = self.spy()
        client = self.raw_get(f"/v1/images/{image_id}")
        previous = -1
        for _ in range(50):
            await deferLater(reactor, 0.2, lambda: None)
            if splices.calls and self.source.answers[-1].sent == previous:
                break
            previous = self.source.answers[-1].sent
        sent, calls = self.source.answers[-1].sent, splices.calls
        await deferLater(reactor, 1.5, lambda: None)  # past the read timeout
        self.assertEqual(self.source.answers[-1].sent, sent)
        self.assertLess(sent, 24 * MiB)
        self.assertLess(splices.calls - calls, 3)
        received = await deferToThread(_read_all, client)
        head, _, body = received.partition(b"\r\n\r\n")
        self.assertIn(b"200", head.split(b"\r\n")[0])
        self.assertEqual(len(body), len(data))
        self.assertEqual(body, data)

    async def test_client_hang_up_closes_everything(self) -> None:
        """
        A client that hangs up mid-download stops the relay: its
        descriptors and pipe are closed (no fd left open), the server's
        connection is closed, and the request is logged with the bytes
        sent so far.
        """
        data = pattern(64 * MiB)
        image_id = await self.image(data)
        splices = self.spy()
        events = self.watch_log()
        await deferLater(reactor, 0.2, lambda: None)
        before = _open_fds()
        uri = f"/v1/images/{image_id}"
        client = self.raw_get(uri)
        await self.settle(lambda: splices.to_client > 0)
        self.assertGreater(_open_fds(), before + 2)  # the connections, the dups, the pipe
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        client.close()  # a reset
        await self.settle(lambda: _open_fds() <= before and bool(_logged(events, uri)))
        self.assertEqual(_open_fds(), before)
        ((_, logged),) = _logged(events, uri)
        self.assertLess(logged, len(data))
        self.assertGreaterEqual(logged, splices.to_client)
        self.assertTrue(self.source.answers[-1].request._disconnected)
        failures = [e["log_failure"] for e in events if "log_failure" in e]
        self.assertEqual([f for f in failures if f.check(RuntimeError)], [])

    async def test_short_response_cuts_the_client(self) -> None:
        """
        A server that closes its connection after half the declared length:
        the client sees its response cut (fewer bytes than its
        Content-Length, the connection aborted), not a short image that
        looks whole; no fd is left open.
        """
        data = pattern(8 * MiB)
        image_id = await self.image(data, mode="short")
        splices = self.spy()
        await deferLater(reactor, 0.2, lambda: None)
        before = _open_fds()
        response = await self.treq.get(f"{self.base}/v1/images/{image_id}", unbuffered=True)
        self.assertEqual(response.code, 200)
        with self.assertRaises(ResponseFailed):
            await response.content()
        self.assertGreater(splices.to_client, 0)
        await self.settle(lambda: _open_fds() <= before)
        self.assertEqual(_open_fds(), before)
        self.flushLoggedErrors()

    async def test_short_response_raw_client(self) -> None:
        """The same seen on the wire: the bytes stop short of Content-Length."""
        data = pattern(8 * MiB)
        image_id = await self.image(data, mode="short")
        self.spy()
        client = self.raw_get(f"/v1/images/{image_id}")
        received = await deferToThread(_read_until_closed, client)
        head, _, body = received.partition(b"\r\n\r\n")
        self.assertIn(f"content-length: {len(data)}".encode(), head.lower())
        self.assertLess(len(body), len(data))
        self.assertEqual(body, data[: len(body)])
        self.flushLoggedErrors()

    async def test_stalled_server_cuts_the_client(self) -> None:
        """
        A server that sends half and then nothing: the relay waits in the
        reactor (splice is not retried in a loop meanwhile), and after the
        store's read timeout (1 s) the client's response is cut and the
        server's connection closed.
        """
        data = pattern(8 * MiB)
        image_id = await self.image(data, mode="stall")
        splices = self.spy()
        response = await self.treq.get(f"{self.base}/v1/images/{image_id}", unbuffered=True)
        with self.assertRaises(ResponseFailed):
            await response.content()
        self.assertGreater(splices.to_client, 0)
        # 4 MiB in reads of at least 64 KiB each way: a few hundred calls;
        # a loop over EAGAIN for the second would be tens of thousands.
        self.assertLess(splices.calls, 1000)
        await self.settle(lambda: self.source.answers[-1].request._disconnected)
        self.assertTrue(self.source.answers[-1].request._disconnected)
        self.flushLoggedErrors()


def _read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


class TLSClientTests(TestCase):
    """A client on TLS must get its bytes encrypted in user space: no splice."""

    timeout = 120

    async def test_tls_client_streams_from_the_store(self) -> None:
        import json

        from twisted.python.filepath import FilePath

        from glance_tx.config import load_config
        from tests.live_server import listening_port, start_glance_tx
        from tests.test_registry_http import write_tls_files
        from tests.test_sendfile import _tls_request

        source = _Source()
        data = pattern(2 * MiB)
        source.images["image"] = (data, "whole")
        top = Resource()
        top.putChild(b"d", source)
        web = reactor.listenTCP(0, server.Site(top), interface="127.0.0.1")
        self.addCleanup(web.stopListening)
        directory = FilePath(self.mktemp())
        directory.makedirs()
        ca, key, cert = write_tls_files(directory)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                "[DEFAULT]\nenabled_backends = file:file, web:http\n"
                "[web]\nhttp_store_allowed_networks = 127.0.0.1/32\n"
            )
        config = load_config(
            path,
            endpoint=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
            data_dir=os.path.abspath(self.mktemp()),
        )
        service = await start_glance_tx(config, self.addCleanup, "splice-tls")
        port = listening_port(service)
        location = f"http://127.0.0.1:{web.getHost().port}/d/image"
        created = await deferToThread(
            _tls_request,
            port,
            ca,
            (
                "POST /v1/images HTTP/1.0\r\nx-image-meta-name: tls\r\n"
                "x-image-meta-disk-format: raw\r\nx-image-meta-container-format: bare\r\n"
                f"x-image-meta-location: {location}\r\nContent-Length: 0\r\n\r\n"
            ).encode(),
        )
        image_id = json.loads(created.partition(b"\r\n\r\n")[2])["image"]["id"]
        splices = _Splices()
        self.patch(splice_module, "splice", splices)
        received = await deferToThread(
            _tls_request, port, ca, f"GET /v1/images/{image_id} HTTP/1.0\r\n\r\n".encode()
        )
        head, _, body = received.partition(b"\r\n\r\n")
        self.assertIn(b"200", head.split(b"\r\n")[0])
        self.assertEqual(body, data)
        self.assertEqual(splices.calls, 0)
