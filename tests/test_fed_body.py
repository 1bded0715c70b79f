"""
L{FedBody}, the request body the S3 and Swift stores feed as an upload's
bytes arrive: it sends no faster than its connection takes bytes, ends
when its length is reached (or at C{finish}), and a failure fails the
request so the server stores nothing.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface.verify import verifyObject

from glance_tx.errors import StoreError
from glance_tx.store.fed_body import FedBody


@define
class ListConsumer:
    data: list[bytes] = field(factory=list)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.data.append(data)


@define
class PausingConsumer(ListConsumer):
    """Pauses its producer at every write, as a TCP transport past its buffer size."""

    producer: Any = None

    def write(self, data: bytes) -> None:
        super().write(data)
        self.producer.pauseProducing()


class ChunkedTests(SynchronousTestCase):
    """A body of unknown length (Swift's chunked PUTs)."""

    def test_provides(self) -> None:
        body = FedBody(Clock())
        self.assertTrue(verifyObject(IBodyProducer, body))
        self.assertIs(body.length, UNKNOWN_LENGTH)

    def test_send_waits_for_start_and_resume(self) -> None:
        """
        A send before the connection starts the body waits; one while the
        connection is paused fires only on resume: fails if the body
        buffers without bound instead. The owner is woken on the clock,
        never inside startProducing or resumeProducing.
        """
        clock = Clock()
        body = FedBody(clock)
        consumer = ListConsumer()
        first = ensureDeferred(body.send([b"a", b"b"]))
        self.assertNoResult(first)
        done = body.startProducing(consumer)
        self.assertNoResult(first)
        clock.advance(0)
        self.successResultOf(first)
        body.pauseProducing()
        second = ensureDeferred(body.send([b"c"]))
        self.assertEqual(consumer.data, [b"a", b"b"])
        self.assertNoResult(second)
        body.resumeProducing()
        self.assertNoResult(second)
        clock.advance(0)
        self.successResultOf(second)
        self.assertEqual(consumer.data, [b"a", b"b", b"c"])
        self.assertNoResult(done)
        body.finish()
        self.successResultOf(done)

    def test_one_chunk_per_resume(self) -> None:
        """
        Of several chunks, each is written only once the connection has
        taken the last (is not paused): fails if a send hands the
        connection all of them at once, which a TCP transport then copies
        into one buffer.
        """
        clock = Clock()
        body = FedBody(clock)
        consumer = PausingConsumer(producer=body)
        body.startProducing(consumer)
        sent = ensureDeferred(body.send([b"a", b"b", b"c"]))
        clock.advance(0)
        self.assertEqual(consumer.data, [b"a"])
        for expected in ([b"a", b"b"], [b"a", b"b", b"c"]):
            body.resumeProducing()
            clock.advance(0)
            self.assertEqual(consumer.data, expected)
        self.assertNoResult(sent)
        body.resumeProducing()
        clock.advance(0)
        self.successResultOf(sent)

    def test_sent_chunks_are_let_go(self) -> None:
        """
        A chunk leaves the caller's list as it is written, the rest stay
        until their turn: fails if the list keeps every chunk of a batch
        until the last is sent (memory of 20 uploads to a slow store).
        """
        clock = Clock()
        body = FedBody(clock)
        consumer = PausingConsumer(producer=body)
        body.startProducing(consumer)
        chunks = [b"a" * 10, b"b" * 10, b"c" * 10]
        sent = ensureDeferred(body.send(chunks))
        clock.advance(0)
        self.assertEqual(chunks, [b"", b"b" * 10, b"c" * 10])
        body.resumeProducing()
        clock.advance(0)
        self.assertEqual(chunks, [b"", b"", b"c" * 10])
        for _ in range(2):
            body.resumeProducing()
            clock.advance(0)
        self.successResultOf(sent)
        self.assertEqual((chunks, body.sent), ([b"", b"", b""], 30))

    def test_fail_fails_the_body(self) -> None:
        """C{fail} fails the body (the agent then drops the request) and a waiting send."""
        body = FedBody(Clock(), peer="Swift")
        done = body.startProducing(ListConsumer())
        body.pauseProducing()
        waiting = ensureDeferred(body.send([b"x"]))
        body.fail(StoreError("the client went away"))
        self.failureResultOf(done, StoreError)
        failure = self.failureResultOf(waiting, StoreError)
        self.assertEqual(failure.value.message, "the client went away")

    def test_stopped_by_the_connection(self) -> None:
        """A connection that stops taking the body makes the next send fail, naming the peer."""
        clock = Clock()
        body = FedBody(clock, peer="Swift")
        body.startProducing(ListConsumer())
        body.pauseProducing()
        waiting = ensureDeferred(body.send([b"x"]))
        body.stopProducing()
        clock.advance(0)
        failure = self.failureResultOf(waiting, StoreError)
        self.assertIn("Swift", failure.value.message)
        self.failureResultOf(ensureDeferred(body.send([b"y"])), StoreError)


class KnownLengthTests(SynchronousTestCase):
    """A body of announced length (S3's PUTs and parts)."""

    def test_done_at_length(self) -> None:
        """The body is complete once C{length} bytes are sent, with no C{finish}."""
        body = FedBody(Clock(), 5, peer="S3")
        consumer = ListConsumer()
        done = body.startProducing(consumer)
        self.successResultOf(ensureDeferred(body.write(b"abc")))
        self.assertNoResult(done)
        self.successResultOf(ensureDeferred(body.write(b"de")))
        self.successResultOf(done)
        self.assertEqual((consumer.data, body.sent), ([b"abc", b"de"], 5))

    def test_empty(self) -> None:
        """An empty body is complete as soon as it starts."""
        self.successResultOf(FedBody(Clock(), 0).startProducing(ListConsumer()))

    def test_too_much(self) -> None:
        """Bytes past C{length} are refused and not written."""
        body = FedBody(Clock(), 4, peer="S3")
        consumer = ListConsumer()
        body.startProducing(consumer)
        failure = self.failureResultOf(ensureDeferred(body.write(b"12345")), StoreError)
        self.assertIn("4 bytes", failure.value.message)
        self.assertEqual(consumer.data, [])

    def test_failed_before_start(self) -> None:
        """A body given up before its connection was made fails the request at once."""
        body = FedBody(Clock(), 10, peer="S3")
        body.fail(StoreError("aborted"))
        self.failureResultOf(body.startProducing(ListConsumer()), StoreError)
        self.failureResultOf(ensureDeferred(body.write(b"x")), StoreError)


class SendLimitTests(SynchronousTestCase):
    def test_raised_by_default(self) -> None:
        """
        A body lets its connection send up to 1 MiB per send(), S3's and
        Swift's alike (fails if the default goes back to Twisted's 128 KiB,
        eight reactor turns per batch); C{None} leaves the transport alone.
        """
        transport = type("FDLike", (StringTransport,), {"SEND_LIMIT": 131072})
        for peer in ("S3", "Swift"):
            tcp = transport()
            FedBody(Clock(), 10, peer=peer).startProducing(_Enforcing(consumer=tcp))
            self.assertEqual(tcp.SEND_LIMIT, 1 << 20)
        tcp = transport()
        FedBody(Clock(), 10, send_limit=None).startProducing(_Enforcing(consumer=tcp))
        self.assertEqual(tcp.SEND_LIMIT, 131072)


@define
class _Enforcing(ListConsumer):
    """What the agent hands a body of known length: its connection is C{_consumer}."""

    _consumer: Any = None
