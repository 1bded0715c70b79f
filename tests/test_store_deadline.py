"""Tests for L{glance_tx.store.deadline}: block reads that give up."""

from __future__ import annotations

from attrs import define, field
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from glance_tx.errors import StoreError
from glance_tx.store.deadline import Deadline
from glance_tx.store.reader import IBlockSource


@implementer(IBlockSource)
@define
class ManualSource:
    """Each read waits until the test answers it."""

    reads: list[Deferred[bytes]] = field(factory=list)
    closed: int = 0

    def read_block(self, size: int) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.reads.append(d)
        return d

    def close(self) -> Deferred[None]:
        self.closed += 1
        return succeed(None)


class DeadlineTests(SynchronousTestCase):
    """L{Deadline} over a source the test answers by hand."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.source = ManualSource()
        self.deadline = Deadline(self.source, self.clock, 10, "http://h.example/x")

    def test_provides(self) -> None:
        """A deadline is an L{IBlockSource} itself."""
        self.assertTrue(verifyObject(IBlockSource, self.deadline))

    def test_answered_in_time(self) -> None:
        """A block that comes in time is passed on and its timer cancelled."""
        d = self.deadline.read_block(4)
        self.clock.advance(9)
        self.source.reads[0].callback(b"data")
        self.assertEqual(self.successResultOf(d), b"data")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_each_read_has_its_own_time(self) -> None:
        """The clock starts again with every read: only waiting counts."""
        for _ in range(3):
            d = self.deadline.read_block(4)
            self.clock.advance(9)
            self.source.reads[-1].callback(b"x")
            self.successResultOf(d)
            self.clock.advance(100)  # between reads: not the backend's fault

    def test_expires(self) -> None:
        """
        A read that waits C{timeout} fails with a L{StoreError} naming the
        origin; its late answer, even a failure, is dropped without a trace.
        """
        d = self.deadline.read_block(4)
        self.clock.advance(10)
        e = self.failureResultOf(d, StoreError).value
        self.assertEqual(e.message, "http://h.example/x sent nothing for 10 seconds")
        self.source.reads[0].errback(ValueError("cut"))  # not logged as unhandled

    def test_failure_passes(self) -> None:
        """A failing read fails with its own error."""
        d = self.deadline.read_block(4)
        self.source.reads[0].errback(StoreError("cut short"))
        self.assertEqual(self.failureResultOf(d, StoreError).value.message, "cut short")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_close(self) -> None:
        """C{close} closes the source."""
        self.successResultOf(self.deadline.close())
        self.assertEqual(self.source.closed, 1)
