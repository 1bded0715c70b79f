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
        self.assertEqual(consumer.data, [b"a", b"b", b"c"])
        self.assertNoResult(second)
        body.resumeProducing()
        self.assertNoResult(second)
        clock.advance(0)
        self.successResultOf(second)
        self.assertNoResult(done)
        body.finish()
        self.successResultOf(done)

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
