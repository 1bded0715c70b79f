"""
Tests for L{glance_tx.api.deadlines} through L{GlanceChannel}: idle and
slow clients are cut off after the configured timeouts, the server's own
pauses never count against them, and a timed-out upload leaves no data.
In memory with the site's clock; one test over real sockets shows hundreds
of idle clients do not keep another from being answered at once.
"""

from __future__ import annotations

import json
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from glance_tx.api.channel import GlanceChannel
from glance_tx.api.deadlines import Phase
from glance_tx.api.site import GlanceSite
from glance_tx.config import ClientLimits, ConfigError, load_config
from tests.api_fixtures import SiteTestCase
from tests.live_server import (
    listening_port,
    live_config,
    settled_client,
    start_glance_tx,
)

LIMITS = ClientLimits(
    client_header_timeout=10.0, client_socket_timeout=20.0, http_keepalive_timeout=30.0
)


class _Connection:
    """One client connection to a site, driven by hand."""

    def __init__(self, site: Any) -> None:
        self.channel: GlanceChannel = site.buildProtocol(None)
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def answer(self) -> bytes:
        return self.transport.value()

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting or self.transport.disconnected)


class _Stalled(Resource):
    """Writes a first chunk of a response and then waits (a download)."""

    isLeaf = True
    request: Any = None

    def render_GET(self, request: Any) -> object:
        self.request = request
        request.setHeader(b"Content-Length", b"2000")
        request.write(b"x" * 1000)
        return NOT_DONE_YET


class ClockTests(SiteTestCase):
    """Each phase's timeout, on the site's clock."""

    site_options = {"client_limits": LIMITS}

    def setUp(self) -> None:
        super().setUp()
        self.clock: MemoryReactorClock = self.site.reactor

    def connect(self) -> _Connection:
        return _Connection(self.site)

    def assert408(self, connection: _Connection, says: str) -> None:
        raw = connection.answer()
        raw = raw[raw.rfind(b"HTTP/1.1 ") :]  # the last answer
        self.assertTrue(raw.startswith(b"HTTP/1.1 408 "), raw[:200])
        body = json.loads(raw.partition(b"\r\n\r\n")[2])
        self.assertEqual(body["error"]["code"], 408)
        self.assertIn(says, body["error"]["message"])
        self.assertTrue(connection.closed)

    def test_silent_connection_closed(self) -> None:
        """A connection that sends nothing is closed, with no answer, after the head's timeout."""
        connection = self.connect()
        self.clock.advance(9.9)
        self.assertFalse(connection.closed)
        self.clock.advance(0.1)
        self.assertTrue(connection.closed)
        self.assertEqual(connection.answer(), b"")

    def test_slow_head(self) -> None:
        """
        A head that trickles in is a 408 at the deadline: its bytes do not
        extend it (a slowloris sending a byte a second is cut off).
        """
        connection = self.connect()
        connection.send(b"GET /versions HTTP/1.1\r\n")
        for _ in range(9):
            self.clock.advance(1)
            connection.send(b"X")
        self.assertFalse(connection.closed)
        self.clock.advance(1)
        self.assert408(connection, "header fields did not arrive within 10.0 seconds")

    def test_head_in_time(self) -> None:
        """A head complete before the deadline is answered and the connection kept."""
        connection = self.connect()
        self.clock.advance(9)
        connection.send(b"GET /versions HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertTrue(connection.answer().startswith(b"HTTP/1.1 300 "))
        self.clock.advance(5)
        self.assertFalse(connection.closed)

    def test_idle_keepalive(self) -> None:
        """
        A kept connection waits http_keepalive_timeout for its next request;
        a request within it is served, and the wait starts again after it.
        """
        connection = self.connect()
        connection.send(b"GET /versions HTTP/1.1\r\nHost: h\r\n\r\n")
        self.clock.advance(29)
        self.assertFalse(connection.closed)
        connection.send(b"GET /versions HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual(connection.answer().count(b"HTTP/1.1 300 "), 2)
        self.clock.advance(29)
        self.assertFalse(connection.closed)
        self.clock.advance(1)
        self.assertTrue(connection.closed)

    def test_one_timer_per_connection(self) -> None:
        """
        Requests on a kept connection move through every phase without
        making or cancelling a timer: the connection's one call stays (and
        still cuts an idle connection off, test_idle_keepalive); it goes
        when the connection does.
        """
        connection = self.connect()
        deadline = connection.channel._deadline

        def calls() -> list[Any]:
            return [
                c for c in self.clock.getDelayedCalls()
                if getattr(c.func, "__self__", None) is deadline
            ]

        [call] = calls()
        for _ in range(3):
            connection.send(b"GET /versions HTTP/1.1\r\nHost: h\r\n\r\n")
            self.clock.advance(1)
            self.assertEqual(calls(), [call])
        self.assertEqual(connection.answer().count(b"HTTP/1.1 300 "), 3)
        self.assertTrue(call.active())
        connection.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(calls(), [])
        self.assertFalse(call.active())

    def test_next_head_gets_head_deadline(self) -> None:
        """Once a kept connection's next request begins, its head has the head's timeout."""
        connection = self.connect()
        connection.send(b"GET /versions HTTP/1.1\r\nHost: h\r\n\r\n")
        self.clock.advance(25)
        connection.send(b"GET /ver")
        self.clock.advance(10)
        self.assert408(connection, "did not arrive within 10.0 seconds")

    def test_slow_body(self) -> None:
        """
        A JSON body that stops is a 408 after client_socket_timeout of
        silence; each byte that comes restarts the wait.
        """
        connection = self.connect()
        connection.send(
            b"POST /v2/images HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        self.clock.advance(19)
        connection.send(b'"')
        self.clock.advance(19)
        self.assertFalse(connection.closed)
        self.clock.advance(1)
        self.assert408(connection, "request body sent nothing for 20.0 seconds")
        self.assertEqual(self.request("GET", "/v2/images").json()["images"], [])

    def start_upload(self, length: int = 1000) -> tuple[str, _Connection]:
        image = self.request(
            "POST",
            "/v2/images",
            {"Content-Type": "application/json"},
            json.dumps({"name": "slow", "disk_format": "raw", "container_format": "bare"}).encode(),
        ).json()
        connection = self.connect()
        connection.send(
            b"PUT /v2/images/%s/file HTTP/1.1\r\nHost: h\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n"
            % (image["id"].encode(), length)
        )
        connection.send(b"d" * 100)
        self.assertEqual(self.request("GET", f"/v2/images/{image['id']}").json()["status"], "saving")
        return image["id"], connection

    def test_slow_upload(self) -> None:
        """
        An upload that stops sending is a 408 once its partial data is gone
        and the image is back to queued (v2's truthful state).
        """
        image_id, connection = self.start_upload()
        self.assertNotEqual(self.stored_files(), [])
        self.clock.advance(20)
        self.assert408(connection, "sent nothing for 20.0 seconds")
        self.assertEqual(self.stored_files(), [])
        self.assertEqual(self.request("GET", f"/v2/images/{image_id}").json()["status"], "queued")

    def test_held_upload_not_timed_out(self) -> None:
        """
        While the server holds an upload's body (backpressure), the
        client's silence does not count; once released, it does.
        """
        image_id, connection = self.start_upload()
        connection.channel.hold_client()
        self.clock.advance(1000)
        self.assertFalse(connection.closed, connection.answer())
        connection.channel.release_client()
        self.clock.advance(19)
        connection.send(b"d" * 900)
        self.assertTrue(connection.answer().startswith(b"HTTP/1.1 204 "))
        self.assertEqual(self.request("GET", f"/v2/images/{image_id}").json()["status"], "active")

    def test_http_keepalive_off(self) -> None:
        """With http_keepalive off, every answer says Connection: close and closes."""
        site = GlanceSite(
            Resource(), reactor=self.clock, client_limits=ClientLimits(http_keepalive=False)
        )
        connection = _Connection(site)
        connection.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertIn(b"Connection: close", connection.answer())
        self.assertTrue(connection.closed)


class StalledReaderTests(SynchronousTestCase):
    """A reader that stops reading a response waiting for it is cut off."""

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.resource = _Stalled()
        site = GlanceSite(self.resource, reactor=self.clock, client_limits=LIMITS)
        self.connection = _Connection(site)
        self.connection.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")

    def test_server_working_is_not_timed_out(self) -> None:
        """While the response waits on the server, nothing times out."""
        self.clock.advance(10000)
        self.assertFalse(self.connection.closed)

    def test_full_buffer_times_out(self) -> None:
        """
        The transport's buffer full (it pauses the channel) for
        client_socket_timeout: the connection is aborted, there being no way
        to answer.
        """
        self.connection.channel.pauseProducing()
        self.clock.advance(19)
        self.assertFalse(self.connection.closed)
        self.clock.advance(1)
        self.assertTrue(self.connection.transport.disconnected)

    def test_unread_end_of_response(self) -> None:
        """
        A response finished while its client reads nothing stays in the
        client's phase (not the keep-alive wait, whose close would wait on
        the unread bytes): cut off after client_socket_timeout.
        """
        self.connection.channel.pauseProducing()
        self.resource.request.write(b"y" * 1000)
        self.resource.request.finish()
        self.clock.advance(20)
        self.assertTrue(self.connection.transport.disconnected)

    def test_read_to_the_end_then_kept(self) -> None:
        """Once it reads the end, the connection waits for its next request."""
        self.connection.channel.pauseProducing()
        self.resource.request.write(b"y" * 1000)
        self.resource.request.finish()
        self.clock.advance(19)
        self.connection.channel.resumeProducing()
        self.clock.advance(29)
        self.assertFalse(self.connection.closed)
        self.clock.advance(1)
        self.assertTrue(self.connection.closed)

    def test_reading_again_clears(self) -> None:
        """A client that reads again (the transport resumes) is not cut off."""
        self.connection.channel.pauseProducing()
        self.clock.advance(19)
        self.connection.channel.resumeProducing()
        self.clock.advance(10000)
        self.assertFalse(self.connection.closed)


class ConfigTests(SynchronousTestCase):
    """The options of [DEFAULT]."""

    def load(self, text: str) -> ClientLimits:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[DEFAULT]\n" + text)
        return load_config(path).clients

    def test_defaults(self) -> None:
        """Glance's client_socket_timeout (900), nginx's header timeout (60)."""
        self.assertEqual(
            self.load(""),
            ClientLimits(
                client_header_timeout=60.0,
                client_socket_timeout=900.0,
                http_keepalive=True,
                http_keepalive_timeout=60.0,
            ),
        )

    def test_values(self) -> None:
        """Each option is read; 0 is no timeout, as Glance's client_socket_timeout."""
        limits = self.load(
            "client_header_timeout = 5\nclient_socket_timeout = 0\n"
            "http_keepalive = false\nhttp_keepalive_timeout = 2.5\n"
        )
        self.assertEqual(
            limits, ClientLimits(5.0, None, False, 2.5)
        )
        self.assertIsNone(Phase.BODY.seconds(limits))

    def test_graceful_shutdown_timeout(self) -> None:
        """oslo.service's default, 60; set; 0 waits for ever."""
        self.assertEqual(self.load("").graceful_shutdown_timeout, 60.0)
        self.assertEqual(
            self.load("graceful_shutdown_timeout = 5\n").graceful_shutdown_timeout, 5.0
        )
        self.assertIsNone(self.load("graceful_shutdown_timeout = 0\n").graceful_shutdown_timeout)

    def test_invalid(self) -> None:
        """A timeout that is not a number of seconds is refused, naming the option."""
        for text in ("client_socket_timeout = soon\n", "client_header_timeout = -1\n"):
            with self.assertRaises(ConfigError) as caught:
                self.load(text)
            self.assertIn(text.split()[0], str(caught.exception))


class _Idle(Protocol):
    """A client that sends C{opening} (perhaps nothing) and then waits."""

    def __init__(self, opening: bytes) -> None:
        self.opening = opening
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self.opening:
            self.transport.write(self.opening)

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)


class ManyIdleClientsTests(TestCase):
    """Hundreds of idle clients over real sockets do not hold others up."""

    timeout = 120

    async def test_others_answered_at_once(self) -> None:
        """
        200 connections that send nothing, half a head, or half a body hang
        on; another client is answered in well under a second, and every
        idle one is cut off once its timeout passes.
        """
        config = live_config(
            self,
            "[DEFAULT]\nclient_header_timeout = 3\nclient_socket_timeout = 3\n"
            "http_keepalive_timeout = 3\n",
        )
        service = await start_glance_tx(config, self.addCleanup, "deadline-tests")
        client = settled_client(self)
        port = listening_port(service)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        openings = [
            b"",
            b"GET /v2/images HTTP/1.1\r\nHost: h\r\n",
            b"POST /v2/images HTTP/1.1\r\nHost: h\r\nContent-Length: 50\r\n\r\n{",
        ]
        idle = [_Idle(openings[i % 3]) for i in range(200)]
        for protocol in idle:
            await connectProtocol(endpoint, protocol)
        started = time.monotonic()
        response = await client.get(f"http://127.0.0.1:{port}/v2/images")
        self.assertEqual(response.code, 200)
        await response.content()
        elapsed = time.monotonic() - started
        self.assertLess(elapsed, 1.0)
        self.assertFalse(any(p.lost.called for p in idle))
        started = time.monotonic()
        for protocol in idle:
            await protocol.lost
        # Cut off by the 3 s timeouts, not by the test's end.
        self.assertLess(time.monotonic() - started, 10.0)
