"""The upload pipeline: limits, hashes, backpressure."""

from __future__ import annotations

import errno
import hashlib
import os

from attrs import define, field
from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from glance_tx.backpressure import SharedBudget, Watermarks
from glance_tx.errors import (
    BadRequest,
    RequestEntityTooLarge,
    StorageFull,
    UnsupportedMediaType,
)
from glance_tx.stages import ChecksumStage, HashStage, IUploadStage
from glance_tx.store.interface import IStoreWriter, StoredData
from glance_tx.store.writer import IWriteBackend, StoreWriter
from glance_tx.streaming import UploadPipeline as _Pipeline
from glance_tx.threads import SynchronousRunner
from tests.fakes import ManualRunner
from tests.store_conformance import FakeProducer

MiB = 1024 * 1024


@implementer(IStoreWriter)
@define
class RecordingWriter:
    """An IStoreWriter that keeps what it is given, for inspection."""

    data: list[bytes] = field(factory=list)
    producer: object = None
    committed: bool = False
    aborted: bool = False
    error: object = None

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.data.append(data)

    def commit(self):
        self.committed = True
        return succeed(StoredData("fake://x", sum(map(len, self.data))))

    def abort(self):
        self.aborted = True
        return succeed(None)

    def share(self, budget):
        pass


def UploadPipeline(writer, runner, *, expected_checksum=None, stages=None, **kwargs):
    """The pipeline with the stages every upload has (md5, sha512)."""
    if stages is None:
        stages = (ChecksumStage(expected_checksum), HashStage("sha512"))
    return _Pipeline(writer, runner, stages=stages, **kwargs)


@implementer(IUploadStage)
@define
class RefusingStage:
    """A stage that refuses once it has seen C{after} bytes, or at the end."""

    after: int | None = None
    seen: int = 0

    def feed(self, data):
        self.seen += len(data)
        if self.after is not None and self.seen >= self.after:
            raise UnsupportedMediaType(f"refused after {self.seen} bytes")

    def result(self):
        raise UnsupportedMediaType(f"refused at the end, after {self.seen} bytes")


@define
class FakeTransport:
    paused: int = 0
    resumed: int = 0

    def pauseProducing(self):
        self.paused += 1

    def resumeProducing(self):
        self.resumed += 1

    def stopProducing(self):
        pass


class PipelineTests(SynchronousTestCase):
    def finish(self, pipeline):
        return Deferred.fromCoroutine(pipeline.finish())

    def test_hashes_and_commit(self) -> None:
        """Every byte reaches the writer in order; md5 and sha512 are right."""
        writer = RecordingWriter()
        pipeline = UploadPipeline(writer, SynchronousRunner(), size_cap=10**9, batch_size=10)
        chunks = [bytes([i]) * (i + 1) for i in range(50)]
        for chunk in chunks:
            pipeline.write(chunk)
        result = self.successResultOf(self.finish(pipeline))
        data = b"".join(chunks)
        self.assertEqual(b"".join(writer.data), data)
        self.assertTrue(all(len(d) >= 10 for d in writer.data[:-1]))
        self.assertEqual(
            dict(result.fields),
            {
                "checksum": hashlib.md5(data).hexdigest(),
                "os_hash_algo": "sha512",
                "os_hash_value": hashlib.sha512(data).hexdigest(),
            },
        )
        self.assertEqual(result.size, len(data))
        self.assertTrue(writer.committed)

    def test_cap(self) -> None:
        """Passing the size cap raises at once; finishing then aborts."""
        writer = RecordingWriter()
        pipeline = UploadPipeline(writer, SynchronousRunner(), size_cap=100)
        pipeline.write(b"x" * 100)
        self.assertRaises(RequestEntityTooLarge, pipeline.write, b"x")
        self.assertRaises(RequestEntityTooLarge, pipeline.write, b"x")
        self.failureResultOf(self.finish(pipeline), RequestEntityTooLarge)
        self.assertTrue(writer.aborted)
        self.assertFalse(writer.committed)

    def test_declared_size(self) -> None:
        """More than the declared size fails at once; fewer fails at the end."""
        pipeline = UploadPipeline(RecordingWriter(), SynchronousRunner(), size_cap=1000, expected_size=5)
        self.assertRaises(BadRequest, pipeline.write, b"123456")
        writer = RecordingWriter()
        short = UploadPipeline(writer, SynchronousRunner(), size_cap=1000, expected_size=5)
        short.write(b"1234")
        self.failureResultOf(self.finish(short), BadRequest)
        self.assertTrue(writer.aborted)

    def test_checksum(self) -> None:
        """A declared checksum must match (case-insensitively)."""
        good = UploadPipeline(RecordingWriter(), SynchronousRunner(), size_cap=100,
                              expected_checksum=hashlib.md5(b"abc").hexdigest().upper())
        good.write(b"abc")
        self.successResultOf(self.finish(good))
        writer = RecordingWriter()
        bad = UploadPipeline(writer, SynchronousRunner(), size_cap=100, expected_checksum="0" * 32)
        bad.write(b"abc")
        self.failureResultOf(self.finish(bad), BadRequest)
        self.assertTrue(writer.aborted)

    def test_hash_backpressure(self) -> None:
        """Hashing that falls behind pauses the client; catching up resumes."""
        runner = ManualRunner()
        transport = FakeTransport()
        pipeline = UploadPipeline(RecordingWriter(), runner, size_cap=10**9, batch_size=10,
                                  high_watermark=30, low_watermark=15)
        pipeline.registerProducer(transport, True)
        for _ in range(3):
            pipeline.write(b"x" * 10)
        self.assertEqual(transport.paused, 0)
        pipeline.write(b"x" * 10)
        self.assertEqual(transport.paused, 1)
        self.assertTrue(pipeline.paused)
        runner.run_all()
        self.assertEqual(transport.resumed, 1)
        self.assertFalse(pipeline.paused)

    def test_store_backpressure(self) -> None:
        """The writer pausing the pipeline pauses the client; both reasons
        must clear before it resumes."""
        writer = RecordingWriter()
        transport = FakeTransport()
        runner = ManualRunner()
        pipeline = UploadPipeline(writer, runner, size_cap=10**9, batch_size=10,
                                  high_watermark=15, low_watermark=5)
        pipeline.registerProducer(transport, True)
        self.assertIs(writer.producer, pipeline)
        pipeline.pauseProducing()
        self.assertEqual(transport.paused, 1)
        pipeline.write(b"x" * 20)  # hash backlog passes the watermark too
        pipeline.resumeProducing()
        self.assertEqual(transport.resumed, 0)
        runner.run_all()
        self.assertEqual(transport.resumed, 1)
        self.assertEqual(transport.paused, 1)

    def test_stages_are_upload_stages(self) -> None:
        """Every stage provides IUploadStage."""
        for stage in (ChecksumStage(), HashStage("sha256"), RefusingStage()):
            self.assertTrue(verifyObject(IUploadStage, stage))

    def test_hash_stage_algorithm(self) -> None:
        """The hash stage's algorithm is a parameter (Glance's hashing_algorithm)."""
        pipeline = UploadPipeline(
            RecordingWriter(), SynchronousRunner(), size_cap=100, stages=(HashStage("sha256"),)
        )
        pipeline.write(b"abc")
        result = self.successResultOf(self.finish(pipeline))
        self.assertEqual(
            dict(result.fields),
            {"os_hash_algo": "sha256", "os_hash_value": hashlib.sha256(b"abc").hexdigest()},
        )

    def test_stage_refuses_mid_stream(self) -> None:
        """A stage that refuses while the body streams fails the next write
        with its error, and finishing then aborts instead of committing."""
        writer = RecordingWriter()
        pipeline = UploadPipeline(
            writer, SynchronousRunner(), size_cap=10**9, batch_size=10,
            stages=(ChecksumStage(), RefusingStage(after=20)),
        )
        pipeline.write(b"x" * 10)
        pipeline.write(b"x" * 10)
        error = self.assertRaises(UnsupportedMediaType, pipeline.write, b"x")
        self.assertEqual(error.message, "refused after 20 bytes")
        self.failureResultOf(self.finish(pipeline), UnsupportedMediaType)
        self.assertTrue(writer.aborted)
        self.assertFalse(writer.committed)

    def test_stage_refuses_at_the_end(self) -> None:
        """A stage's result may refuse: the data is aborted, not committed."""
        writer = RecordingWriter()
        pipeline = UploadPipeline(
            writer, SynchronousRunner(), size_cap=100, stages=(ChecksumStage(), RefusingStage())
        )
        pipeline.write(b"abc")
        failure = self.failureResultOf(self.finish(pipeline), UnsupportedMediaType)
        self.assertEqual(failure.value.message, "refused at the end, after 3 bytes")
        self.assertTrue(writer.aborted)
        self.assertFalse(writer.committed)

    def test_stage_crash_is_a_500(self) -> None:
        """A stage failing with an unexpected error refuses with a 500 that
        says nothing of the error, and the data is aborted."""

        @implementer(IUploadStage)
        class Crashing:
            def feed(self, data):
                raise ZeroDivisionError("internal detail")

            def result(self):
                return {}

        writer = RecordingWriter()
        pipeline = UploadPipeline(writer, SynchronousRunner(), size_cap=100, stages=(Crashing(),))
        pipeline.write(b"abc")
        failure = self.failureResultOf(self.finish(pipeline))
        self.assertEqual(failure.value.status, 500)
        self.assertNotIn("internal detail", failure.value.message)
        self.assertTrue(writer.aborted)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_each_stage_sees_every_byte_once(self) -> None:
        """Every stage is fed the very batches the store writer gets, each
        once, in order: inspection costs no second read of the data."""

        @implementer(IUploadStage)
        @define
        class Recording:
            batches: list[bytes] = field(factory=list)

            def feed(self, data):
                self.batches.append(data)

            def result(self):
                return {"seen": sum(map(len, self.batches))}

        writer = RecordingWriter()
        first, second = Recording(), Recording()
        pipeline = UploadPipeline(
            writer, SynchronousRunner(), size_cap=10**9, batch_size=100, stages=(first, second)
        )
        for i in range(1000):
            pipeline.write(bytes([i % 256]) * 7)
        result = self.successResultOf(self.finish(pipeline))
        self.assertEqual(first.batches, writer.data)
        self.assertEqual(second.batches, writer.data)
        self.assertTrue(all(a is b for a, b in zip(first.batches, writer.data, strict=True)))
        self.assertEqual(dict(result.fields), {"seen": 7000})

    def test_stages_share_two_lanes(self) -> None:
        """
        An upload's stages run on two serial runners (STAGE_LANES), round
        robin: the two hashes on a core each, a third stage (the format
        inspector) behind the first on its runner rather than on a third,
        and each still sees every batch, in order.
        """

        @implementer(IUploadStage)
        @define
        class Recording:
            batches: list[bytes] = field(factory=list)

            def feed(self, data):
                self.batches.append(data)

            def result(self):
                return {}

        @define
        class Lanes:
            """A runner whose serial() runners are told apart by who runs on them."""

            lanes: list[ManualRunner] = field(factory=list)

            def run(self, f, *args, **kwargs):
                raise AssertionError("stages run only on serial runners")

            def serial(self):
                self.lanes.append(ManualRunner())
                return self.lanes[-1]

        stages = (Recording(), Recording(), Recording())
        runner = Lanes()
        pipeline = UploadPipeline(
            RecordingWriter(), runner, size_cap=10**9, batch_size=10, stages=stages
        )
        self.assertEqual(len(runner.lanes), 2)
        pipeline.write(b"x" * 10)
        pipeline.write(b"y" * 10)
        first, second = runner.lanes
        self.assertEqual((first.pending(), second.pending()), (4, 2))
        while first.pending():
            first.run_one()
        self.assertEqual(stages[0].batches, [b"x" * 10, b"y" * 10])
        self.assertEqual(stages[2].batches, [b"x" * 10, b"y" * 10])
        self.assertEqual(stages[1].batches, [])

    def test_whole_reads_pass_uncopied(self) -> None:
        """
        A Content-Length body arrives in reads of a whole batch (the site
        reads UPLOAD_READ_SIZE, the batch size): each read goes to the
        store and the stages as the very bytes object the socket gave, not
        a copy on the reactor; short reads are joined into one batch.
        """
        from glance_tx.api.site import UPLOAD_READ_SIZE

        writer = RecordingWriter()
        pipeline = UploadPipeline(writer, SynchronousRunner(), size_cap=10**9)
        self.assertEqual(pipeline.batch_size, UPLOAD_READ_SIZE)
        whole = [bytes([i]) * UPLOAD_READ_SIZE for i in range(2)]
        short = [b"a" * 1000, b"b" * (UPLOAD_READ_SIZE - 1000)]
        for read in (whole[0], *short, whole[1]):
            pipeline.write(read)
        self.successResultOf(self.finish(pipeline))
        self.assertIs(writer.data[0], whole[0])
        self.assertEqual(writer.data[1], b"".join(short))
        self.assertIs(writer.data[2], whole[1])
        self.assertEqual(len(writer.data), 3)

    def test_views_become_bytes(self) -> None:
        """
        A chunked body's pieces are memoryviews (glance_tx.api.chunked):
        the stages and the store get bytes, a lone piece at the end too.
        """
        writer = RecordingWriter()
        pipeline = UploadPipeline(writer, SynchronousRunner(), size_cap=10**9, batch_size=8)
        read = b"0123456789abc"
        for piece in (memoryview(read)[:10], memoryview(read)[10:]):
            pipeline.write(piece)
        result = self.successResultOf(self.finish(pipeline))
        self.assertEqual(writer.data, [b"0123456789", b"abc"])
        self.assertEqual([type(d) for d in writer.data], [bytes, bytes])
        self.assertEqual(result.fields["checksum"], hashlib.md5(read).hexdigest())


@implementer(IWriteBackend)
@define
class FullDisk:
    """A store backend whose disk is full: every write fails with ENOSPC."""

    location: str = "fake://full"
    writes: int = 0

    def write(self, chunks: list[bytes]) -> Deferred[None]:
        self.writes += 1
        return fail(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

    def commit(self) -> Deferred[None]:
        return succeed(None)

    def discard(self) -> Deferred[None]:
        return succeed(None)


class StoreFailureTests(SynchronousTestCase):
    def test_full_disk_stops_the_body(self) -> None:
        """
        Once the store's write has failed (the disk is full), the next
        chunk of the body is refused with StorageFull, so the upload is
        answered 413 at once instead of after the rest of the body.
        """
        backend = FullDisk()
        writer = StoreWriter(backend, Watermarks(4 * MiB, MiB))
        pipeline = UploadPipeline(writer=writer, runner=SynchronousRunner(), size_cap=1 << 40)
        pipeline.write(b"x" * MiB)  # one batch: written, and failed
        self.assertEqual(backend.writes, 1)
        self.assertIsInstance(writer.error, StorageFull)
        self.assertRaises(StorageFull, pipeline.write, b"more")
        self.assertEqual(backend.writes, 1)
        self.failureResultOf(Deferred.fromCoroutine(pipeline.finish()), StorageFull)


@implementer(IWriteBackend)
@define
class HangingBackend:
    """A store backend none of whose writes completes until the test says."""

    location: str = "fake://hanging"
    waiting: list[Deferred[None]] = field(factory=list)

    def write(self, chunks: list[bytes]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.waiting.append(d)
        return d

    def complete(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)

    def commit(self) -> Deferred[None]:
        return succeed(None)

    def discard(self) -> Deferred[None]:
        return succeed(None)


@define
class Client:
    """An upload's client transport: it sends while it is not paused."""

    pipeline: object
    producer: FakeProducer = field(factory=FakeProducer)

    @property
    def paused(self) -> bool:
        return bool(self.producer.events) and self.producer.events[-1] == "pause"


class UploadBudgetTests(SynchronousTestCase):
    """C{upload_buffer_budget}: one limit on what all uploads in flight queue."""

    def uploads(self, budget: SharedBudget | None, count: int = 10):
        backends, clients = [], []
        for _ in range(count):
            backend = HangingBackend()
            self.assertTrue(verifyObject(IWriteBackend, backend))
            writer = StoreWriter(backend, Watermarks(4 * MiB, MiB))
            pipeline = _Pipeline(writer, SynchronousRunner(), size_cap=1 << 40, budget=budget,
                                 stages=(HashStage("sha512"),))
            client = Client(pipeline)
            pipeline.registerProducer(client.producer, True)
            backends.append(backend)
            clients.append(client)
        return backends, clients

    def send_until_paused(self, clients: list[Client], limit: int = 100) -> int:
        """Every client sends 256 KiB reads in turn while it is not paused; bytes sent."""
        sent = 0
        for _ in range(limit):
            for client in clients:
                if not client.paused:
                    client.pipeline.write(b"x" * (256 * 1024))
                    sent += 256 * 1024
        return sent

    def test_queued_bytes_stay_within_the_budget(self) -> None:
        """
        Ten uploads to a store that never completes a write: together they
        queue no more than the budget and one batch, and every client's
        transport is paused (without a budget each would queue up to its
        writer's watermark, over 40 MiB in all). Once the writes complete,
        every client is resumed.
        """
        budget = SharedBudget(Watermarks(high=8 * MiB, low=6 * MiB))
        backends, clients = self.uploads(budget)
        sent = self.send_until_paused(clients)
        self.assertTrue(all(client.paused for client in clients))
        self.assertLessEqual(budget.queued, 8 * MiB + MiB)
        self.assertGreater(budget.queued, 8 * MiB)
        self.assertLessEqual(sent, 8 * MiB + 10 * MiB)  # each may still gather one batch
        for backend in backends:
            backend.complete()
        self.assertEqual(budget.queued, 0)
        self.assertFalse(any(client.paused for client in clients))

        _, unbudgeted = self.uploads(None)
        self.assertGreater(self.send_until_paused(unbudgeted), 40 * MiB)

    def test_finished_and_aborted_uploads_give_back_their_share(self) -> None:
        """
        What an upload queued counts until its store has taken it, even
        after its body ended; an aborted upload's queue is dropped and
        given back at once, and neither keeps its client paused.
        """
        budget = SharedBudget(Watermarks(high=4 * MiB, low=2 * MiB))
        backends, clients = self.uploads(budget, count=2)
        self.send_until_paused(clients)
        self.assertTrue(budget.spent)
        queued = budget.queued
        aborted = Deferred.fromCoroutine(clients[0].pipeline.abort())
        self.assertLess(budget.queued, queued)  # what was not being written yet
        finished = Deferred.fromCoroutine(clients[1].pipeline.finish())
        self.assertNoResult(finished)
        for _ in range(3):
            for backend in backends:
                backend.complete()
        self.successResultOf(aborted)
        self.successResultOf(finished)
        self.assertEqual(budget.queued, 0)
        self.assertFalse(budget.spent)
