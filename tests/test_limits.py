"""
Tests for the per-node limits: C{max_connections} (L{GlanceChannel}) and
C{max_concurrent_uploads} (L{glance_tx.uploads.UploadSlots}). Past either,
a client is answered 503 with C{Retry-After} and the JSON error body, and
nothing changes; once a connection or upload ends, its place is free again.
"""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from glance_tx.config import ClientLimits, load_config
from tests.api_fixtures import SiteTestCase
from tests.live_server import (
    listening_port,
    live_config,
    settled_client,
    start_glance_tx,
)
from tests.test_deadlines import _Connection, _Idle


def parse(raw: bytes) -> tuple[int, bytes, dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), head, json.loads(body)


class ConnectionLimitTests(SiteTestCase):
    """max_connections, in memory."""

    site_options = {"client_limits": ClientLimits(max_connections=2)}

    def test_past_the_limit(self) -> None:
        """
        The third of two allowed connections is answered 503 with
        Retry-After at once and closed; when one of the two goes, the next
        is served.
        """
        first, second = _Connection(self.site), _Connection(self.site)
        third = _Connection(self.site)
        code, head, body = parse(third.answer())
        self.assertEqual(code, 503)
        self.assertIn(b"Retry-After: 2", head)
        self.assertIn("max_connections", body["error"]["message"])  # type: ignore[index]
        self.assertTrue(third.closed)
        third.channel.connectionLost()
        self.assertEqual(self.site.open_connections, 2)
        first.channel.connectionLost()
        fourth = _Connection(self.site)
        fourth.send(b"GET /versions HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertTrue(fourth.answer().startswith(b"HTTP/1.1 300 "))
        second.send(b"GET /versions HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertTrue(second.answer().startswith(b"HTTP/1.1 300 "))


class UploadLimitTests(SiteTestCase):
    """max_concurrent_uploads, in memory."""

    site_options = {"max_concurrent_uploads": 1}

    def create(self) -> str:
        image_id: str = self.request(
            "POST",
            "/v2/images",
            {"Content-Type": "application/json"},
            json.dumps({"disk_format": "raw", "container_format": "bare"}).encode(),
        ).json()["id"]
        return image_id

    def put(self, image_id: str, data: bytes, length: int = 10) -> _Connection:
        connection = _Connection(self.site)
        connection.send(
            b"PUT /v2/images/%s/file HTTP/1.1\r\nHost: h\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n"
            % (image_id.encode(), length)
            + data
        )
        return connection

    def status(self, image_id: str) -> str:
        status: str = self.request("GET", f"/v2/images/{image_id}").json()["status"]
        return status

    def test_past_the_limit(self) -> None:
        """
        While one upload runs, a second is a 503 with Retry-After that
        leaves its image queued; once the first ends, the second goes in.
        """
        first, second = self.create(), self.create()
        running = self.put(first, b"12345")
        refused = self.put(second, b"12345")
        code, head, body = parse(refused.answer())
        self.assertEqual(code, 503)
        self.assertIn(b"Retry-After: 2", head)
        self.assertIn("max_concurrent_uploads", body["error"]["message"])  # type: ignore[index]
        self.assertEqual(self.status(second), "queued")
        running.send(b"67890")
        self.assertTrue(running.answer().startswith(b"HTTP/1.1 204 "))
        self.assertEqual(self.status(first), "active")
        self.assertTrue(self.put(second, b"0123456789").answer().startswith(b"HTTP/1.1 204 "))
        self.assertEqual(self.status(second), "active")

    def test_aborted_upload_frees_its_slot(self) -> None:
        """An upload whose client hangs up gives its slot back."""
        first, second = self.create(), self.create()
        self.put(first, b"12345").channel.connectionLost()
        self.assertEqual(self.status(first), "queued")
        self.assertTrue(self.put(second, b"0123456789").answer().startswith(b"HTTP/1.1 204 "))

    def test_refused_upload_frees_its_slot(self) -> None:
        """An upload refused before it starts (not queued: 409) holds no slot."""
        first, second = self.create(), self.create()
        self.put(first, b"0123456789")
        self.assertTrue(self.put(first, b"0123456789").answer().startswith(b"HTTP/1.1 409 "))
        self.assertTrue(self.put(second, b"0123456789").answer().startswith(b"HTTP/1.1 204 "))


class ConfigTests(SynchronousTestCase):
    """The options of [DEFAULT]."""

    def load(self, text: str) -> tuple[int | None, int | None]:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[DEFAULT]\n" + text)
        config = load_config(path)
        return config.clients.max_connections, config.max_concurrent_uploads

    def test_options(self) -> None:
        """Defaults 1000 and 100; a value; 0 for no limit."""
        self.assertEqual(self.load(""), (1000, 100))
        self.assertEqual(self.load("max_connections = 5\nmax_concurrent_uploads = 3\n"), (5, 3))
        self.assertEqual(self.load("max_connections = 0\nmax_concurrent_uploads = 0\n"), (None, None))


class RealSocketTests(TestCase):
    """max_connections over real sockets: the client reads the 503."""

    timeout = 60

    async def test_connection_limit(self) -> None:
        """With 5 connections held open, a client is answered 503 with Retry-After."""
        config = live_config(self, "[DEFAULT]\nmax_connections = 5\n")
        service = await start_glance_tx(config, self.addCleanup, "limit-tests")
        client = settled_client(self)
        port = listening_port(service)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        held = [_Idle(b"") for _ in range(5)]
        for protocol in held:
            await connectProtocol(endpoint, protocol)
        response = await client.get(f"http://127.0.0.1:{port}/v2/images")
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["2"])
        body = await response.json()
        self.assertIn("max_connections", body["error"]["message"])
        for protocol in held:
            assert protocol.transport is not None
            protocol.transport.loseConnection()
            await protocol.lost
        site = service.getServiceNamed("listener").port.factory
        for _ in range(250):  # the server's ends see the close a little later
            if site.open_connections == 0:
                break
            await deferLater(reactor, 0.02)
        response = await client.get(f"http://127.0.0.1:{port}/v2/images")
        self.assertEqual(response.code, 200)
        await response.content()
