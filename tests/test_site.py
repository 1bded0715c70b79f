"""
The streaming request at the HTTP byte level: what the client sees before,
during and after an upload body, through a real HTTPChannel.
"""

from __future__ import annotations

import uuid

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web import http

from glance_tx import images
from glance_tx.api import site
from glance_tx.api.channel import FIRST_REQUEST_GRACE_SECONDS
from glance_tx.config import ClientLimits
from tests.api_fixtures import V1_RAW_BARE, SiteTestCase


class RawUploadTests(SiteTestCase):
    def connect(self) -> tuple[http.HTTPChannel, StringTransport]:
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        protocol.makeConnection(transport)
        return protocol, transport

    def queued_image(self) -> str:
        answer = self.request("POST", "/v1/images", {"x-image-meta-name": "q", **V1_RAW_BARE})
        return answer.json()["image"]["id"]

    def test_expect_continue_refused_without_body(self) -> None:
        """An Expect: 100-continue upload to an unknown image is answered
        404 at once, never told to continue, and the connection closes."""
        protocol, transport = self.connect()
        protocol.dataReceived(
            f"PUT /v1/images/{uuid.uuid4()} HTTP/1.1\r\nHost: h\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        sent = transport.value()
        self.assertNotIn(b"100 Continue", sent)
        self.assertTrue(sent.startswith(b"HTTP/1.1 404 "), sent)
        self.assertIn(b'"code": 404', sent)
        self.assertTrue(transport.disconnecting)

    def test_expect_continue_accepted(self) -> None:
        """A valid upload is told to continue, and then completes."""
        image_id = self.queued_image()
        protocol, transport = self.connect()
        protocol.dataReceived(
            f"PUT /v1/images/{image_id} HTTP/1.1\r\nHost: h\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 5\r\n"
            "Expect: 100-continue\r\n\r\n".encode()
        )
        self.assertEqual(transport.value(), b"HTTP/1.1 100 Continue\r\n\r\n")
        protocol.dataReceived(b"hello")
        self.assertIn(b"HTTP/1.1 200 OK", transport.value())
        self.assertEqual(self.successResultOf(self.registry.get(image_id)).status, "active")

    def test_larger_reads_while_the_body_streams(self) -> None:
        """While an upload's body streams in, the TCP transport reads
        UPLOAD_READ_SIZE at a time; after it, its own default again."""
        image_id = self.queued_image()
        protocol, transport = self.connect()
        # StringTransport has no read size; give this one TCP's default.
        transport.__class__ = type("TCPLike", (StringTransport,), {"bufferSize": 65536})
        protocol.dataReceived(
            f"PUT /v1/images/{image_id} HTTP/1.1\r\nHost: h\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 5\r\n\r\n".encode()
        )
        protocol.dataReceived(b"hel")
        self.assertEqual(transport.bufferSize, site.UPLOAD_READ_SIZE)
        protocol.dataReceived(b"lo")
        self.assertIn(b"HTTP/1.1 200 OK", transport.value())
        self.assertEqual(transport.bufferSize, 65536)
        self.assertNotIn("bufferSize", vars(transport))

    def test_over_cap_before_body(self) -> None:
        """A Content-Length over the cap is a 413 before any body byte."""
        self.site.upload_routes[0].api.uploader.size_cap = 10
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"POST /v1/images HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertEqual(
            self.successResultOf(self.registry.list(images.ImageQuery(exclude_statuses=frozenset()))), []
        )

    def test_client_paused_until_upload_starts(self) -> None:
        """The client's socket is paused from the headers until the upload
        is ready, and resumed once it is."""
        from tests.fakes import ManualRunner

        image_id = self.queued_image()
        manual = ManualRunner()
        self.registry.runner = manual
        protocol, transport = self.connect()
        protocol.dataReceived(
            f"PUT /v1/images/{image_id} HTTP/1.1\r\nHost: h\r\n"
            "Content-Length: 3\r\n\r\n".encode()
        )
        self.assertEqual(transport.producerState, "paused")
        self.registry.runner = self.runner
        manual.run_all()
        self.assertEqual(transport.producerState, "producing")
        protocol.dataReceived(b"abc")
        self.assertIn(b"200 OK", transport.value())

    def test_refused_after_whole_body(self) -> None:
        """A refusal decided only after the whole (small) body arrived is
        answered once, by the route, not twice."""
        from tests.fakes import ManualRunner

        manual = ManualRunner()
        self.registry.runner = manual
        protocol, transport = self.connect()
        protocol.dataReceived(
            f"PUT /v1/images/{uuid.uuid4()} HTTP/1.1\r\nHost: h\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 3\r\n\r\nabc".encode()
        )
        self.assertEqual(transport.value(), b"")
        self.registry.runner = self.runner
        manual.run_all()
        sent = transport.value()
        self.assertEqual(sent.count(b"HTTP/1.1 "), 1, sent)
        self.assertTrue(sent.startswith(b"HTTP/1.1 404 "), sent)

    def upload_begun(self) -> tuple[str, http.HTTPChannel, StringTransport]:
        """A v1 PUT of 10 MB to a queued image, 3 MB of it sent so far."""
        image_id = self.queued_image()
        protocol, transport = self.connect()
        protocol.dataReceived(
            f"PUT /v1/images/{image_id} HTTP/1.1\r\nHost: h\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 10000000\r\n\r\n".encode()
        )
        protocol.dataReceived(b"x" * 3_000_000)
        return image_id, protocol, transport

    def test_disconnect_mid_upload(self) -> None:
        """A client that goes away mid-body leaves the image killed and no
        data behind."""
        image_id, protocol, transport = self.upload_begun()
        self.assertEqual(self.successResultOf(self.registry.get(image_id)).status, "saving")
        self.assertNotEqual(self.stored_files(), [])
        logged: list[str] = []

        def observe(event: dict) -> None:
            if event.get("log_namespace") == "glance_tx.api.site":
                logged.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.successResultOf(self.registry.get(image_id)).status, "killed")
        self.assertEqual(self.stored_files(), [])
        # The request never finished, but it still has its one log line.
        [line] = logged
        self.assertIn(f'"PUT /v1/images/{image_id}"', line)
        self.assertTrue(line.endswith("(connection lost)"), line)

    def test_stop_cuts_a_stalled_upload_and_waits_for_its_abort(self) -> None:
        """
        At stop an upload in flight may go on for graceful_shutdown_timeout;
        then its connection is aborted, and the stop ends only once the
        upload's abort has marked the image killed and removed its data.
        """
        from tests.fakes import ManualRunner

        self.site.client_limits = ClientLimits(graceful_shutdown_timeout=5.0)
        image_id, protocol, transport = self.upload_begun()
        stopping = self.site.close_connections()
        self.site.reactor.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.site.reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)  # aborted
        manual = ManualRunner()
        self.registry.runner = manual
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertNoResult(stopping)
        self.registry.runner = self.runner
        manual.run_all()
        self.successResultOf(stopping)
        self.assertEqual(self.successResultOf(self.registry.get(image_id)).status, "killed")
        self.assertEqual(self.stored_files(), [])

    def test_stop_answers_the_head_being_read_with_connection_close(self) -> None:
        """
        A request whose head has begun to come when the stop begins is
        still answered, with Connection: close, and the connection closes.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /versions HTTP/1.1\r\nHo")
        stopping = self.site.close_connections()
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"st: h\r\n\r\n")
        head = transport.value().partition(b"\r\n\r\n")[0]
        self.assertTrue(head.startswith(b"HTTP/1.1 300 "), head)
        self.assertIn(b"connection: close", head.lower())
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.successResultOf(stopping)

    def test_stop_closes_a_kept_connection_idle_between_requests(self) -> None:
        """A kept connection with no request under way closes at once at stop."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET /versions HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 300 "))
        self.assertFalse(transport.disconnecting)
        stopping = self.site.close_connections()
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.successResultOf(stopping)

    def test_stop_answers_the_first_request_of_a_new_connection(self) -> None:
        """
        A connection accepted just before the stop, whose first request has
        not come yet, stays open for it (its client would not send it
        again elsewhere) and has it answered with Connection: close.
        """
        protocol, transport = self.connect()
        stopping = self.site.close_connections()
        self.site.reactor.advance(FIRST_REQUEST_GRACE_SECONDS / 2)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(b"GET /versions HTTP/1.1\r\nHost: h\r\n\r\n")
        head = transport.value().partition(b"\r\n\r\n")[0]
        self.assertTrue(head.startswith(b"HTTP/1.1 300 "), head)
        self.assertIn(b"connection: close", head.lower())
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.successResultOf(stopping)

    def test_stop_closes_a_new_connection_silent_for_the_grace(self) -> None:
        """A new connection that sends nothing closes once the grace is over."""
        protocol, transport = self.connect()
        stopping = self.site.close_connections()
        self.site.reactor.advance(FIRST_REQUEST_GRACE_SECONDS - 0.1)
        self.assertFalse(transport.disconnecting)
        self.site.reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionLost()))
        self.successResultOf(stopping)

    def test_length_required(self) -> None:
        """Image data announced by its content type but not framed is 411."""
        protocol, transport = self.connect()
        protocol.dataReceived(
            b"POST /v1/images HTTP/1.1\r\nHost: h\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 411 "), transport.value())


class RawDownloadTests(SiteTestCase):
    """Downloads through a real HTTPChannel with the store's reads held in
    a manual runner, so the test sees every read the store issues."""

    size = 5 * 1024 * 1024 + 123

    def setUp(self) -> None:
        super().setUp()
        from glance_tx.api.app import build_site
        from glance_tx.store.backends import StoreMap
        from glance_tx.store.filesystem import FilesystemStore
        from tests.fakes import ManualRunner

        self.data = bytes(range(256)) * (self.size // 256) + b"t" * (self.size % 256)
        answer = self.request(
            "POST", "/v1/images", {"Content-Type": "application/octet-stream", **V1_RAW_BARE},
            data=self.data,
        )
        self.image_id = answer.json()["image"]["id"]
        self.manual = ManualRunner()
        slow_store = FilesystemStore(self.store_root.path, self.manual)
        self.slow_site = build_site(
            registry=self.registry, stores=StoreMap({"file": slow_store}, "file"),
            runner=self.runner, image_size_cap=self.size_cap, default_project="admin",
            reactor=self.site.reactor,
        )
        self.protocol = self.slow_site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(
            f"GET /v1/images/{self.image_id} HTTP/1.1\r\nHost: h\r\n\r\n".encode()
        )

    def test_slow_client_pauses_store(self) -> None:
        """While the client's socket is full the store issues no reads, so
        memory does not grow; on resume the rest arrives intact."""
        for _ in range(3):
            self.manual.run_one()
        self.transport.producer.pauseProducing()  # what a full socket does
        while self.manual.pending():
            self.manual.run_one()
        sent_while_paused = len(self.transport.value())
        self.assertLess(sent_while_paused, self.size)
        self.assertEqual(self.manual.pending(), 0)
        self.transport.producer.resumeProducing()
        self.manual.run_all()
        while self.manual.pending():
            self.manual.run_all()
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        self.assertIn(b"200 OK", head)
        self.assertIn(f"Content-Length: {self.size}".encode(), head)
        self.assertEqual(body, self.data)

    def test_disconnect_mid_download(self) -> None:
        """A client that goes away mid-download stops the reads at once."""
        for _ in range(3):
            self.manual.run_one()
        self.protocol.connectionLost(Failure(ConnectionLost()))
        for _ in range(5):
            if not self.manual.pending():
                break
            self.manual.run_one()
        self.assertEqual(self.manual.pending(), 0)
        self.assertLess(len(self.transport.value()), self.size)
