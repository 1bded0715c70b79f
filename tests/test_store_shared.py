"""
Tests for the machinery every store shares: L{glance_tx.store.writer} and
L{glance_tx.store.reader}.

The store conformance mixin runs against L{MemoryStore}, a store made of
nothing but the shared pieces, to show they do not depend on files. The
rest drives L{StoreWriter} and L{BlockProducer} through scripted backends
whose every operation waits for the test, so the order of calls, the
abort-wins rule and the error mapping can be pinned exactly.
"""

from __future__ import annotations

import errno
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from glance_tx.backpressure import SharedBudget, Watermarks
from glance_tx.errors import NotFound, StorageFull, StoreError
from glance_tx.store.interface import IStore, IStoreWriter, StoredData
from glance_tx.store.reader import BlockProducer, IBlockSource
from glance_tx.store.writer import NETWORK_BUDGET_WEIGHT, IWriteBackend, StoreWriter
from glance_tx.threads import SynchronousRunner
from tests.fakes import ManualRunner
from tests.memory_store import MemoryStore
from tests.store_conformance import (
    FakeConsumer,
    FakeProducer,
    StoreConformanceMixin,
)


class MemoryStoreTests(StoreConformanceMixin, SynchronousTestCase):
    """The conformance suite against a store built from the shared pieces."""

    def make_store(self) -> IStore:
        return MemoryStore(
            SynchronousRunner(), block_size=4096, watermarks=Watermarks(64 * 1024, 16 * 1024)
        )

    def make_paced_store(
        self, *, block_size: int, high_watermark: int, low_watermark: int
    ) -> tuple[IStore, ManualRunner]:
        runner = ManualRunner()
        store = MemoryStore(
            runner, block_size=block_size, watermarks=Watermarks(high_watermark, low_watermark)
        )
        return store, runner

    def complete(self, d: Deferred[Any]) -> object:
        return self.successResultOf(d)


@implementer(IWriteBackend)
@define
class ScriptedBackend:
    """Records each call; its Deferred waits for the test to fire it."""

    location: str = "test:///image"
    calls: list[tuple[str, Any]] = field(factory=list)
    waiting: list[Deferred[None]] = field(factory=list)

    def _call(self, name: str, arg: Any = None) -> Deferred[None]:
        self.calls.append((name, arg))
        d: Deferred[None] = Deferred()
        self.waiting.append(d)
        return d

    def write(self, chunks: list[bytes]) -> Deferred[None]:
        return self._call("write", list(chunks))

    def commit(self) -> Deferred[None]:
        return self._call("commit")

    def discard(self) -> Deferred[None]:
        return self._call("discard")

    def succeed(self) -> None:
        self.waiting.pop(0).callback(None)

    def fail(self, error: BaseException) -> None:
        self.waiting.pop(0).errback(error)


class StoreWriterTests(SynchronousTestCase):
    def writer(self, high: int = 10, low: int = 4) -> tuple[StoreWriter, ScriptedBackend]:
        backend = ScriptedBackend()
        self.assertTrue(verifyObject(IWriteBackend, backend))
        writer = StoreWriter(backend, Watermarks(high, low))
        self.assertTrue(verifyObject(IStoreWriter, writer))
        return writer, backend

    def test_one_operation_at_a_time(self) -> None:
        """
        The backend gets one operation at a time, in order: bytes written
        while a batch is out go together in the next one, and the commit
        waits for the last batch. It fires with the backend's location and
        the number of bytes written.
        """
        writer, backend = self.writer(high=100)
        writer.write(b"a")
        writer.write(b"b")
        writer.write(b"c")
        commit = writer.commit()
        self.assertEqual(writer.state, "committing")
        self.assertEqual(backend.calls, [("write", [b"a"])])
        backend.succeed()
        self.assertEqual(backend.calls[1:], [("write", [b"b", b"c"])])
        backend.succeed()
        self.assertEqual(backend.calls[2:], [("commit", None)])
        self.assertNoResult(commit)
        backend.succeed()
        self.assertEqual(self.successResultOf(commit), StoredData("test:///image", 3))
        self.assertEqual(writer.state, "committed")
        self.assertEqual(backend.waiting, [])

    def test_budget_weight(self) -> None:
        """
        A writer with a budget weight charges the shared budget that many
        bytes per byte queued, and gives it all back once written: fails
        if network stores' uploads hold as much of the budget as the
        file store's (tests.test_store_s3 and tests.test_store_swift check
        that their writers weigh NETWORK_BUDGET_WEIGHT).
        """
        budget = SharedBudget(Watermarks(high=100, low=50))
        backend = ScriptedBackend()
        writer = StoreWriter(backend, Watermarks(high=1000, low=10), budget_weight=2)
        writer.share(budget)
        writer.write(b"x" * 30)
        writer.write(b"y" * 30)
        self.assertEqual(budget.queued, 120)
        self.assertTrue(budget.spent)
        backend.succeed()  # the first 30
        self.assertEqual(budget.queued, 60)
        backend.succeed()
        self.assertEqual((budget.queued, budget.spent), (0, False))
        self.assertEqual(NETWORK_BUDGET_WEIGHT, 2)

    def test_watermarks(self) -> None:
        """The producer is paused above the high mark and resumed at the low."""
        writer, backend = self.writer(high=10, low=4)
        producer = FakeProducer()
        writer.registerProducer(producer, True)
        writer.write(b"x" * 6)
        writer.write(b"y" * 6)
        self.assertEqual(producer.events, ["pause"])
        backend.succeed()  # 6 left
        self.assertEqual(producer.events, ["pause"])
        backend.succeed()
        self.assertEqual(producer.events, ["pause", "resume"])

    def test_abort_wins_over_commit_in_flight(self) -> None:
        """
        An abort while the backend's commit is in flight has the backend
        discard once the commit lands (the data it just committed too),
        and the commit fails.
        """
        writer, backend = self.writer()
        writer.write(b"data")
        backend.succeed()
        commit = writer.commit()
        abort = writer.abort()
        self.assertEqual(writer.state, "aborted")
        self.assertEqual([name for name, _ in backend.calls], ["write", "commit"])
        backend.succeed()
        self.assertEqual(backend.calls[-1], ("discard", None))
        self.assertNoResult(abort)
        backend.succeed()
        self.assertIsNone(self.successResultOf(abort))
        self.failureResultOf(commit, StoreError)
        self.assertIsNone(self.successResultOf(writer.abort()))
        self.assertEqual(len(backend.calls), 3)

    def test_backend_error_passes_through(self) -> None:
        """
        A write that fails with the backend's own L{StoreError} (a store
        naming itself, say) discards at once, drops later bytes, and the
        commit fails with that very error.
        """
        writer, backend = self.writer()
        writer.write(b"data")
        error = StoreError("The S3 store 'bulk' is unavailable")
        backend.fail(error)
        self.assertEqual(backend.calls[-1], ("discard", None))
        backend.succeed()
        writer.write(b"dropped")
        commit = writer.commit()
        self.assertIs(self.failureResultOf(commit, StoreError).value, error)
        self.assertEqual(writer.state, "failed")
        self.assertEqual([name for name, _ in backend.calls], ["write", "discard"])

    def test_other_errors_described(self) -> None:
        """
        Any other failure of the commit becomes a L{StoreError} saying what
        went wrong, without the file name an L{OSError} carries; the
        backend is asked to discard.
        """
        writer, backend = self.writer()
        commit = writer.commit()
        backend.fail(OSError(errno.EIO, "Input/output error", "/secret/path"))
        self.assertEqual(backend.calls[-1], ("discard", None))
        backend.succeed()
        message = self.failureResultOf(commit, StoreError).value.message
        self.assertEqual(message, "Could not store image data: Input/output error")

    def test_discard_error(self) -> None:
        """A discard that fails makes C{abort} fail with L{StoreError}."""
        writer, backend = self.writer()
        abort = writer.abort()
        backend.fail(OSError(errno.EACCES, "Permission denied", "/secret"))
        failure = self.failureResultOf(abort, StoreError)
        self.assertEqual(failure.value.message, "Could not remove image data: Permission denied")

    def test_synchronous_raise(self) -> None:
        """A backend operation that raises instead of failing its Deferred counts the same."""

        @implementer(IWriteBackend)
        class Raising:
            location = "test:///x"
            discarded = 0

            def write(self, chunks: list[bytes]) -> Deferred[None]:
                raise OSError(errno.ENOSPC, "No space left on device")

            def commit(self) -> Deferred[None]:
                return succeed(None)

            def discard(self) -> Deferred[None]:
                self.discarded += 1
                return succeed(None)

        backend = Raising()
        writer = StoreWriter(backend, Watermarks(10, 4))
        writer.write(b"x")
        self.assertEqual(backend.discarded, 1)
        failure = self.failureResultOf(writer.commit(), StorageFull)
        self.assertIn("Image storage media is full", failure.value.message)


@implementer(IBlockSource)
@define
class ScriptedSource:
    """Hands out C{blocks} one per C{read_block}, each when the test says."""

    blocks: list[bytes | BaseException]
    asked: list[int] = field(factory=list)
    waiting: list[Deferred[bytes]] = field(factory=list)
    closed: int = 0
    close_error: BaseException | None = None

    def read_block(self, size: int) -> Deferred[bytes]:
        self.asked.append(size)
        d: Deferred[bytes] = Deferred()
        self.waiting.append(d)
        return d

    def deliver(self) -> None:
        block = self.blocks.pop(0)
        d = self.waiting.pop(0)
        if isinstance(block, BaseException):
            d.errback(block)
        else:
            d.callback(block)

    def close(self) -> Deferred[None]:
        self.closed += 1
        if self.close_error is not None:
            raise self.close_error
        return succeed(None)


class BlockProducerTests(SynchronousTestCase):
    def produce(
        self, source: ScriptedSource, remaining: int, block_size: int = 4
    ) -> tuple[Deferred[None], FakeConsumer]:
        self.assertTrue(verifyObject(IBlockSource, source))
        consumer = FakeConsumer()
        return BlockProducer(source, consumer, remaining, block_size).start(), consumer

    def test_blocks_in_order(self) -> None:
        """
        One read is in flight at a time, each for at most the block size;
        a short block is followed by another read; the source is closed
        once, and the producer unregistered, at the end.
        """
        source = ScriptedSource([b"0123", b"45", b"6789"])
        done, consumer = self.produce(source, 10)
        for _ in range(3):
            self.assertEqual(len(source.waiting), 1)
            source.deliver()
        self.assertIsNone(self.successResultOf(done))
        self.assertEqual(source.asked, [4, 4, 4])
        self.assertEqual(consumer.chunks, [b"0123", b"45", b"6789"])
        self.assertEqual((source.closed, consumer.unregistered), (1, 1))

    def test_read_ahead_while_paused(self) -> None:
        """
        Paused, the producer reads one block ahead and holds it; it writes
        it, and reads on, only when resumed.
        """
        source = ScriptedSource([b"0123", b"4567", b"89"])
        done, consumer = self.produce(source, 10)
        assert consumer.producer is not None
        consumer.producer.pauseProducing()
        source.deliver()
        self.assertEqual(consumer.chunks, [])
        self.assertEqual(source.waiting, [])
        consumer.producer.resumeProducing()
        self.assertEqual(consumer.chunks, [b"0123"])
        source.deliver()
        source.deliver()
        self.successResultOf(done)

    def test_store_error_passes_through(self) -> None:
        """A source's own L{StoreError} fails the read as it is."""
        error = StoreError("The Swift store 'obj' answered 503")
        source = ScriptedSource([b"0123", error])
        done, consumer = self.produce(source, 10)
        source.deliver()
        source.deliver()
        self.assertIs(self.failureResultOf(done, StoreError).value, error)
        self.assertEqual((source.closed, consumer.unregistered), (1, 1))

    def test_not_found_passes_through(self) -> None:
        """Other typed errors (L{NotFound}) pass through too."""
        source = ScriptedSource([NotFound("gone")])
        done, _ = self.produce(source, 10)
        source.deliver()
        self.failureResultOf(done, NotFound)

    def test_other_errors_described(self) -> None:
        """Any other error becomes a L{StoreError} without file names."""
        source = ScriptedSource([OSError(errno.EIO, "Input/output error", "/secret")])
        done, _ = self.produce(source, 10)
        source.deliver()
        message = self.failureResultOf(done, StoreError).value.message
        self.assertEqual(message, "Could not read image data: Input/output error")

    def test_ended_early(self) -> None:
        """An empty block before the end fails the read with L{StoreError}."""
        source = ScriptedSource([b"0123", b""])
        done, consumer = self.produce(source, 10)
        source.deliver()
        source.deliver()
        self.assertIn("ended early", self.failureResultOf(done, StoreError).value.message)
        self.assertEqual(consumer.value(), b"0123")

    def test_stop_waits_for_read_in_flight(self) -> None:
        """
        Stopped with a read in flight, the producer closes the source only
        after that read has landed, drops its block and fires with C{None}
        without unregistering.
        """
        source = ScriptedSource([b"0123", b"4567"])
        done, consumer = self.produce(source, 10)
        source.deliver()
        assert consumer.producer is not None
        consumer.producer.stopProducing()
        self.assertEqual(source.closed, 0)
        source.deliver()
        self.assertEqual(source.closed, 1)
        self.assertIsNone(self.successResultOf(done))
        self.assertEqual(consumer.chunks, [b"0123"])
        self.assertEqual(consumer.unregistered, 0)

    def test_close_error_logged(self) -> None:
        """A source that fails to close is logged; the read still succeeds."""
        source = ScriptedSource([b"01"], close_error=OSError(errno.EIO, "EIO"))
        done, consumer = self.produce(source, 2)
        source.deliver()
        self.assertIsNone(self.successResultOf(done))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
