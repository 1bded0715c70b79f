"""
The real thing over a real socket: twistd's service on the reactor, a real
thread pool, SQLite on disk, the filesystem store, and treq as the client.
"""

from __future__ import annotations

import hashlib
import os

from treq import collect as treq_collect
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import cooperate, deferLater
from twisted.trial.unittest import TestCase
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from glance_tx.store.filesystem import filesystem_datadir
from tests.api_fixtures import V1_RAW_BARE
from tests.live_server import (
    listening_port,
    live_config,
    settled_client,
    start_glance_tx,
)

MiB = 1 << 20


def block(i: int) -> bytes:
    return i.to_bytes(4, "big") * (MiB // 4)


@implementer(IBodyProducer)
class GeneratedBody:
    """Streams C{count} distinct 1 MiB blocks with chunked encoding."""

    length = UNKNOWN_LENGTH

    def __init__(self, count: int) -> None:
        self.count = count

    def _blocks(self, consumer):
        for i in range(self.count):
            consumer.write(block(i))
            yield None

    def startProducing(self, consumer):
        self._task = cooperate(self._blocks(consumer))
        return self._task.whenDone().addCallback(lambda _: None)

    def pauseProducing(self):
        self._task.pause()

    def resumeProducing(self):
        self._task.resume()

    def stopProducing(self):
        self._task.stop()


class ServerTestCase(TestCase):
    timeout = 120
    config_text = ""

    async def _start(self) -> None:
        config = live_config(self, self.config_text)
        self.service = await start_glance_tx(config, self.addCleanup, "test")
        self.port = listening_port(self.service)
        self.base = f"http://127.0.0.1:{self.port}"
        self.images_dir = filesystem_datadir(config.store("file"), config.data_dir)

    def setUp(self) -> Deferred[None]:
        # In-flight connections (a refused upload's client may still be
        # finishing its body) close on both sides before the test ends.
        self.treq = settled_client(self, tries=250)
        return Deferred.fromCoroutine(self._start())

    def files(self) -> list[str]:
        return [
            os.path.join(d, f) for d, _, fs in os.walk(self.images_dir) for f in fs
        ]

    async def status(self, image_id: str) -> str:
        response = await self.treq.head(f"{self.base}/v1/images/{image_id}")
        return response.headers.getRawHeaders("x-image-meta-status")[0]


class StreamingTests(ServerTestCase):
    async def test_64mib_chunked_round_trip(self) -> None:
        """A 64 MiB chunked upload is stored with the right md5, and
        downloads streamed with the same bytes."""
        count = 64
        expected = hashlib.md5()
        for i in range(count):
            expected.update(block(i))
        response = await self.treq.post(
            f"{self.base}/v1/images",
            headers={"Content-Type": "application/octet-stream",
                     "x-image-meta-name": "big", "x-image-meta-disk-format": "raw",
                     "x-image-meta-container-format": "bare"},
            data=GeneratedBody(count),
        )
        self.assertEqual(response.code, 201)
        image = (await response.json())["image"]
        self.assertEqual(image["size"], count * MiB)
        self.assertEqual(image["checksum"], expected.hexdigest())

        download = await self.treq.get(f"{self.base}/v1/images/{image['id']}", unbuffered=True)
        self.assertEqual(download.code, 200)
        self.assertEqual(download.length, count * MiB)
        got = hashlib.md5()
        await treq_collect(download, got.update)
        self.assertEqual(got.hexdigest(), expected.hexdigest())

    async def test_checksum_mismatch(self) -> None:
        """A wrong declared checksum: 400, the image killed, no file left."""
        response = await self.treq.post(
            f"{self.base}/v1/images",
            headers={"Content-Type": "application/octet-stream",
                     "x-image-meta-id": "8c4b2a1e-3f00-4d0e-9b6a-1a2b3c4d5e6f",
                     "x-image-meta-checksum": "0" * 32, **V1_RAW_BARE},
            data=GeneratedBody(4),
        )
        self.assertEqual(response.code, 400)
        self.assertIn("checksum", (await response.json())["error"]["message"])
        self.assertEqual(await self.status("8c4b2a1e-3f00-4d0e-9b6a-1a2b3c4d5e6f"), "killed")
        self.assertEqual(self.files(), [])

    async def test_interrupted_upload(self) -> None:
        """A client that drops mid-upload leaves the image killed and the
        store empty."""
        response = await self.treq.post(f"{self.base}/v1/images", headers={"x-image-meta-name": "cut", **V1_RAW_BARE})
        image_id = (await response.json())["image"]["id"]
        protocol = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), Protocol()
        )
        protocol.transport.write(
            f"PUT /v1/images/{image_id} HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/octet-stream\r\n"
            f"Content-Length: {100 * MiB}\r\n\r\n".encode() + b"x" * (5 * MiB)
        )
        for _ in range(200):
            if await self.status(image_id) == "saving" and self.files():
                break
            await deferLater(reactor, 0.02)
        protocol.transport.abortConnection()
        for _ in range(200):
            if await self.status(image_id) == "killed" and not self.files():
                break
            await deferLater(reactor, 0.02)
        self.assertEqual(await self.status(image_id), "killed")
        self.assertEqual(self.files(), [])


class SizeCapTests(ServerTestCase):
    config_text = f"[DEFAULT]\nimage_size_cap = {8 * MiB}\n"

    async def test_413_mid_stream(self) -> None:
        """Passing image_size_cap mid-stream is answered 413 at once; the
        image is killed and nothing is stored."""
        image_id = "0f0e0d0c-0b0a-4908-8706-050403020100"
        response = await self.treq.post(
            f"{self.base}/v1/images",
            headers={"Content-Type": "application/octet-stream", "x-image-meta-id": image_id, **V1_RAW_BARE},
            data=GeneratedBody(64),
        )
        self.assertEqual(response.code, 413)
        self.assertIn("size limit", (await response.json())["error"]["message"])
        self.assertEqual(await self.status(image_id), "killed")
        self.assertEqual(self.files(), [])
