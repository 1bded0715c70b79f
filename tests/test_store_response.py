"""
Tests for L{glance_tx.store.response}: a network store's response body
read through the shared block producer, with the connection paused while
the client is slow.

The unit tests deliver the body by hand through a fake response; one test
fetches a body from a twisted.web server over a real loopback socket with
treq and relays it to a slow consumer.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from treq.client import HTTPClient
from twisted.internet import reactor as global_reactor
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone, ResponseFailed
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from glance_tx.backpressure import Watermarks
from glance_tx.errors import StoreError
from glance_tx.store.reader import BlockProducer, IBlockSource, NoBytes
from glance_tx.store.response import ResponseBlocks, response_blocks
from tests.store_conformance import FakeConsumer, FakeProducer, make_data


@define
class FakeResponse:
    """Hands its body protocol a recording transport, as twisted.web's does."""

    transport: FakeProducer = field(factory=FakeProducer)
    protocol: Protocol | None = None

    def deliverBody(self, protocol: Protocol) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)


class ResponseBlocksTests(SynchronousTestCase):
    def blocks(self, block_size: int = 4) -> tuple[ResponseBlocks, FakeResponse]:
        response = FakeResponse()
        blocks = response_blocks(response, block_size, "the test store 'x'")  # type: ignore[arg-type]
        self.assertTrue(verifyObject(IBlockSource, blocks))
        return blocks, response

    def test_blocks_and_end(self) -> None:
        """
        Bytes that arrived are handed out in blocks of at most the size
        asked for, in order; a read waiting when bytes arrive gets them;
        after the end, C{b""}.
        """
        blocks, _ = self.blocks()
        blocks.dataReceived(b"0123456")
        self.assertEqual(self.successResultOf(blocks.read_block(4)), b"0123")
        self.assertEqual(self.successResultOf(blocks.read_block(4)), b"456")
        waiting = blocks.read_block(4)
        self.assertNoResult(waiting)
        blocks.dataReceived(b"78")
        blocks.dataReceived(b"9")
        self.assertEqual(self.successResultOf(waiting), b"78")
        blocks.connectionLost(Failure(ResponseDone()))
        self.assertEqual(self.successResultOf(blocks.read_block(4)), b"9")
        self.assertEqual(self.successResultOf(blocks.read_block(4)), b"")
        self.assertIsNone(self.successResultOf(blocks.close()))

    def test_pauses_connection(self) -> None:
        """
        The connection is paused once more than two blocks are held, and
        resumed once no more than one is.
        """
        blocks, response = self.blocks(block_size=4)
        blocks.dataReceived(b"x" * 8)
        self.assertEqual(response.transport.events, [])
        blocks.dataReceived(b"x")
        self.assertEqual(response.transport.events, ["pause"])
        self.successResultOf(blocks.read_block(4))  # 5 held
        self.assertEqual(response.transport.events, ["pause"])
        self.successResultOf(blocks.read_block(1))  # 4 held
        self.assertEqual(response.transport.events, ["pause", "resume"])

    def test_cut_short(self) -> None:
        """
        A connection that fails mid-body fails the next read with a
        L{StoreError} naming the origin; what arrived before is still
        handed out first.
        """
        blocks, _ = self.blocks()
        blocks.dataReceived(b"01")
        blocks.connectionLost(Failure(ResponseFailed([Failure(ConnectionResetError())])))
        self.assertEqual(self.successResultOf(blocks.read_block(4)), b"01")
        failure = self.failureResultOf(blocks.read_block(4), StoreError)
        self.assertIn("The response from the test store 'x' was cut short", failure.value.message)

    def test_close_stops_connection(self) -> None:
        """
        Closed before the body is over, the source stops the connection,
        drops what it holds and what still arrives, and fires once the
        response has ended.
        """
        blocks, response = self.blocks()
        blocks.dataReceived(b"0123")
        closed = blocks.close()
        self.assertEqual(response.transport.events, ["stop"])
        blocks.dataReceived(b"late")
        self.assertNoResult(closed)
        blocks.connectionLost(Failure(ResponseFailed([Failure(ConnectionResetError())])))
        self.assertIsNone(self.successResultOf(closed))

    def test_through_block_producer(self) -> None:
        """
        Relayed by L{BlockProducer}, a body that ends before the length the
        response announced fails the read as ending early.
        """
        blocks, _ = self.blocks()
        consumer = FakeConsumer()
        done = BlockProducer(blocks, consumer, remaining=10, block_size=4).start()
        blocks.dataReceived(b"012345")
        blocks.connectionLost(Failure(ResponseDone()))
        self.assertIn("ended early", self.failureResultOf(done, StoreError).value.message)
        self.assertEqual(consumer.value(), b"012345")

    def test_no_bytes(self) -> None:
        """L{NoBytes} lets a read of nothing register, unregister and fire."""
        self.assertTrue(verifyObject(IBlockSource, NoBytes()))
        consumer = FakeConsumer()
        done = BlockProducer(NoBytes(), consumer, remaining=0, block_size=4).start()
        self.assertIsNone(self.successResultOf(done))
        self.assertEqual((len(consumer.registered), consumer.unregistered), (1, 1))


class _Data(Resource):
    isLeaf = True

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data

    def render_GET(self, request: Any) -> bytes:
        return self.data


class _Watching(ResponseBlocks):
    """Notes the most bytes it held at once."""

    most = 0

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.most = max(self.most, self._held_bytes)


class _Largest(ResponseBlocks):
    """Notes the largest piece of the body that arrived at once."""

    largest = 0

    def dataReceived(self, data: bytes) -> None:
        self.largest = max(self.largest, len(data))
        super().dataReceived(data)


@define
class SlowConsumer(FakeConsumer):
    """Pauses its producer at every write and resumes it a little later."""

    def write(self, data: bytes) -> None:
        super().write(data)
        producer = self.producer
        if producer is not None:
            producer.pauseProducing()
            global_reactor.callLater(0.001, producer.resumeProducing)  # type: ignore[attr-defined]


class RealSocketTests(TestCase):
    async def test_slow_client(self) -> None:
        """
        A 4 MiB body fetched with treq from a real server and relayed to a
        slow consumer arrives whole, while the source never holds much more
        than two blocks: the connection was paused, not buffered.
        """
        data = make_data(4 << 20, seed=12)
        port = global_reactor.listenTCP(0, Site(_Data(data)), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        pool = HTTPConnectionPool(global_reactor, persistent=False)
        client = HTTPClient(Agent(global_reactor, pool=pool))
        url = f"http://127.0.0.1:{port.getHost().port}/"
        response = await client.get(url)
        block = 64 * 1024
        blocks = _Watching(Watermarks(high=2 * block, low=block), "the test server")
        response.deliverBody(blocks)
        consumer = SlowConsumer()
        await BlockProducer(blocks, consumer, remaining=len(data), block_size=block).start()
        self.assertEqual(consumer.value(), data)
        self.assertLess(blocks.most, 2 * block + 256 * 1024)
        # Let the server side see the connection end.
        await deferLater(global_reactor, 0.01, lambda: None)  # type: ignore[arg-type]

    async def test_reads_a_block_at_a_time(self) -> None:
        """
        The connection under a body read in 1 MiB blocks reads more than
        twisted's default 64 KiB per recv() (L{widen_body_reads} says what
        that saves); it would not if Twisted's transports changed shape
        under L{widen_body_reads}.
        """
        data = make_data(8 << 20, seed=14)
        port = global_reactor.listenTCP(0, Site(_Data(data)), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        client = HTTPClient(Agent(global_reactor, pool=HTTPConnectionPool(global_reactor, persistent=False)))
        response = await client.get(f"http://127.0.0.1:{port.getHost().port}/")
        blocks = _Largest(Watermarks(high=2 << 20, low=1 << 20), "the test server", read_size=1 << 20)
        response.deliverBody(blocks)
        consumer = FakeConsumer()
        await BlockProducer(blocks, consumer, remaining=len(data), block_size=1 << 20).start()
        self.assertEqual(consumer.value(), data)
        self.assertGreater(blocks.largest, 64 * 1024)
        self.assertLessEqual(blocks.largest, 1 << 20)
        await deferLater(global_reactor, 0.01, lambda: None)  # type: ignore[arg-type]

    async def test_client_goes_away(self) -> None:
        """
        A consumer that stops the read after the first block ends it: the
        read fires with C{None} once the connection to the server is shut,
        and the rest of the body is never read.
        """
        data = make_data(8 << 20, seed=13)
        port = global_reactor.listenTCP(0, Site(_Data(data)), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        client = HTTPClient(Agent(global_reactor, pool=HTTPConnectionPool(global_reactor, persistent=False)))
        response = await client.get(f"http://127.0.0.1:{port.getHost().port}/")
        blocks = response_blocks(response, 64 * 1024, "the test server")
        consumer = StoppingConsumer()
        result = await BlockProducer(blocks, consumer, remaining=len(data), block_size=64 * 1024).start()
        self.assertIsNone(result)
        [first] = consumer.chunks  # what had arrived, up to a block
        self.assertTrue(0 < len(first) <= 64 * 1024)
        self.assertEqual(first, data[: len(first)])
        await deferLater(global_reactor, 0.01, lambda: None)  # type: ignore[arg-type]


@define
class StoppingConsumer(FakeConsumer):
    """Stops its producer after the first write, as a client that hangs up."""

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None:
            self.producer.stopProducing()
