"""
The receive low-water mark of an upload's socket (glance_tx.api.low_water),
on real loopback TCP sockets; and how the site sets it while a body of
known length streams in.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from glance_tx.api import low_water, site
from glance_tx.config import ClientLimits
from glance_tx.errors import GlanceError
from tests.api_fixtures import V1_RAW_BARE, SiteTestCase


def tcp_pair(case: SynchronousTestCase) -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair (the server's end, the client's), closed at cleanup."""
    if not low_water.SUPPORTED:
        raise SkipTest("SO_RCVLOWAT is honoured by poll only on Linux")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    case.addCleanup(client.close)
    case.addCleanup(server.close)
    return server, client


def mark(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)


def wait_until_queued(sock: socket.socket, size: int) -> None:
    """Loopback delivers at once, but give the kernel a moment."""
    deadline = time.monotonic() + 5
    while len(sock.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT)) < size:
        if time.monotonic() > deadline:
            raise AssertionError(f"{size} bytes never arrived")
        time.sleep(0.01)


class TCPTransport(StringTransport):
    """A transport whose handle is a real TCP socket, as Twisted's TCP one's is."""

    bufferSize = 65536

    def __init__(self, sock: socket.socket, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sock = sock

    def getHandle(self) -> socket.socket:
        return self.sock


class MarkTests(SynchronousTestCase):
    def test_wait_for_sets_the_mark(self) -> None:
        """wait_for sets the socket's SO_RCVLOWAT, and 1 puts the default back."""
        server, _ = tcp_pair(self)
        transport = TCPTransport(server)
        self.assertTrue(low_water.wait_for(transport, 1 << 20))
        self.assertEqual(mark(server), 1 << 20)
        self.assertTrue(low_water.wait_for(transport, 1))
        self.assertEqual(mark(server), 1)

    def test_the_kernel_holds_bytes_below_the_mark(self) -> None:
        """What the mark is for: poll says readable only once the mark's bytes are in."""
        import select

        server, client = tcp_pair(self)
        low_water.wait_for(TCPTransport(server), 1000)
        client.sendall(b"x" * 999)
        wait_until_queued(server, 999)
        poller = select.poll()
        poller.register(server, select.POLLIN)
        self.assertEqual(poller.poll(50), [])
        client.sendall(b"x")
        self.assertEqual(len(poller.poll(1000)), 1)

    def test_nothing_without_a_tcp_socket(self) -> None:
        """A transport that is not plain TCP (a test transport, TLS, a UNIX socket) is left alone."""
        self.assertFalse(low_water.wait_for(StringTransport(), 1 << 20))
        self.assertFalse(low_water.wait_for(None, 1 << 20))
        self.assertFalse(low_water.release(StringTransport()))
        left, right = socket.socketpair()
        self.addCleanup(left.close)
        self.addCleanup(right.close)
        self.assertFalse(low_water.wait_for(TCPTransport(left), 1 << 20))

    def test_release_reads_bytes_held_below_the_mark(self) -> None:
        """
        release says whether bytes wait unread, and if so lowers the mark
        to 1 so they are read; with none waiting it changes nothing.
        """
        server, client = tcp_pair(self)
        transport = TCPTransport(server)
        low_water.wait_for(transport, 1 << 20)
        self.assertFalse(low_water.release(transport))
        self.assertEqual(mark(server), 1 << 20)
        client.sendall(b"x" * 10)
        wait_until_queued(server, 10)
        self.assertTrue(low_water.release(transport))
        self.assertEqual(mark(server), 1)


class UploadMarkTests(SiteTestCase):
    """While a body of known length streams in, a batch (or the rest) is read at once."""

    site_options = {"client_limits": ClientLimits(client_socket_timeout=20.0)}

    def setUp(self) -> None:
        super().setUp()
        self.server, self.peer = tcp_pair(self)

    def connect(self) -> tuple[Any, TCPTransport]:
        protocol = self.site.buildProtocol(None)
        transport = TCPTransport(self.server)
        protocol.makeConnection(transport)
        return protocol, transport

    def queued_image(self) -> str:
        answer = self.request("POST", "/v1/images", {"x-image-meta-name": "q", **V1_RAW_BARE})
        return answer.json()["image"]["id"]

    def head(self, image_id: str, framing: str) -> bytes:
        return (
            f"PUT /v1/images/{image_id} HTTP/1.1\r\nHost: h\r\n"
            f"Content-Type: application/octet-stream\r\n{framing}\r\n\r\n"
        ).encode()

    def test_content_length_body(self) -> None:
        """
        After a short read (the client is slower than the server) the mark
        is a whole read (UPLOAD_READ_SIZE), or what is left of the body if
        that is less; after a whole read, and once the body is in, 1.
        """
        size = 2 * site.UPLOAD_READ_SIZE + 12345
        image_id = self.queued_image()
        protocol, transport = self.connect()
        protocol.dataReceived(self.head(image_id, f"Content-Length: {size}"))
        left = size
        for piece, expected in [
            (1000, site.UPLOAD_READ_SIZE),
            (site.UPLOAD_READ_SIZE, 1),  # a whole read: the client is ahead
            (20000, size - 1000 - site.UPLOAD_READ_SIZE - 20000),
            (site.UPLOAD_READ_SIZE - 21000, 12345),
            (12345, 1),
        ]:
            protocol.dataReceived(b"x" * piece)
            left -= piece
            self.assertEqual(mark(self.server), expected, f"{left} bytes left")
        self.assertEqual(left, 0)
        self.assertIn(b"HTTP/1.1 200 OK", transport.value())
        self.assertEqual(self.successResultOf(self.registry.get(image_id)).size, size)

    def test_chunked_body(self) -> None:
        """A chunked body's length is not known: its reads are never held."""
        image_id = self.queued_image()
        protocol, transport = self.connect()
        protocol.dataReceived(self.head(image_id, "Transfer-Encoding: chunked"))
        protocol.dataReceived(b"100000\r\n" + b"x" * 0x100000 + b"\r\n")
        self.assertEqual(mark(self.server), 1)
        protocol.dataReceived(b"0\r\n\r\n")
        self.assertIn(b"HTTP/1.1 200 OK", transport.value())

    def test_refused_mid_body(self) -> None:
        """A body refused midway is read as it comes again (the rest is discarded)."""
        image_id = self.queued_image()
        protocol, transport = self.connect()
        protocol.dataReceived(self.head(image_id, "Content-Length: 3000000"))
        protocol.dataReceived(b"x" * 1000)
        self.assertEqual(mark(self.server), site.UPLOAD_READ_SIZE)
        protocol.requests[-1].refuse(GlanceError("No more"))
        self.assertEqual(mark(self.server), 1)
        self.assertIn(b"HTTP/1.1 500 ", transport.value())
        self.assertEqual(self.successResultOf(self.registry.get(image_id)).status, "killed")

    def test_bytes_below_the_mark_are_not_silence(self) -> None:
        """
        A client whose bytes wait below the mark when the body timeout
        comes is not cut off: the mark drops to 1 (the reactor reads them)
        and the timeout starts again; a client silent for a whole timeout
        after that is a 408, its partial data gone.
        """
        clock = self.site.reactor
        image_id = self.queued_image()
        protocol, transport = self.connect()
        protocol.dataReceived(self.head(image_id, "Content-Length: 3000000"))
        protocol.dataReceived(b"x" * 1000)
        self.peer.sendall(b"x" * 5000)
        wait_until_queued(self.server, 5000)
        clock.advance(20)
        self.assertEqual(mark(self.server), 1)
        self.assertNotIn(b"408", transport.value())
        self.assertEqual(self.successResultOf(self.registry.get(image_id)).status, "saving")
        protocol.dataReceived(self.server.recv(5000))  # what the reactor reads now
        self.assertEqual(mark(self.server), site.UPLOAD_READ_SIZE)
        clock.advance(19)
        self.assertNotIn(b"408", transport.value())
        clock.advance(1)
        self.assertIn(b"HTTP/1.1 408 ", transport.value())
        self.assertEqual(self.successResultOf(self.registry.get(image_id)).status, "killed")
        self.assertEqual(self.stored_files(), [])
