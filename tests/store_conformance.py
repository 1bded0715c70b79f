"""
The behaviour every L{IStore} provider shares, as test mixins.

A writable store's test module mixes L{StoreConformanceMixin} into a trial
test case (a read-only store: L{ReadConformanceMixin}) and provides these
hooks:

    - C{make_store()}: a fresh, empty, working store whose I/O completes
      without the test stepping it (synchronously, or on a running reactor).
    - C{complete(d)}: how the harness waits for a test's Deferred:
      C{return self.successResultOf(d)} under L{SynchronousTestCase}, or
      C{return d} under an asynchronous L{TestCase}.
    - C{make_paced_store(block_size=, high_watermark=, low_watermark=)}: a
      fresh store with those settings whose I/O waits until the test runs
      it, one step at a time, through the returned L{Pacer} (for a store on
      a L{glance_tx.threads.BlockingRunner}, a L{ManualRunner}). The
      flow-control tests use it: backpressure, pause/resume/stop, at most
      one read in flight, abort with writes queued.
    - C{seed(store, data)} (optional): put C{data} in the store and fire
      with its location. The default writes through C{open_writer}; a
      read-only store overrides it.
    - C{missing_location(store)} (optional): a location of this store that
      holds no data. The default seeds one and deletes it.

Most tests are coroutines run through L{store_test}, so the same test runs
on a synchronous runner and on a real thread pool or server. The
flow-control tests step a paced store by hand, synchronously; a second
harness for a store already covered (the same store on a real thread pool)
can use L{UnpacedStoreConformanceMixin}, which leaves them out.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer
from zope.interface import implementer
from zope.interface.verify import verifyObject

from glance_tx.errors import BadRequest, NotFound, StoreError
from glance_tx.images import new_image_id
from glance_tx.store.interface import IStore, IStoreWriter, StoredData
from tests.fakes import Pacer, drain

T = TypeVar("T")




@implementer(IPushProducer)
@define
class FakeProducer:
    """An upstream producer that records what it is told."""

    events: list[str] = field(factory=list)

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


@implementer(IConsumer)
@define
class FakeConsumer:
    """
    A downstream consumer that records what it is given.

    With C{pause_on_write} it pauses its producer from inside every C{write},
    as a transport whose buffer is full does; with C{stop_on_register} it
    stops a producer as soon as it is registered, as a transport whose
    connection is already gone does.
    """

    pause_on_write: bool = False
    stop_on_register: bool = False
    chunks: list[bytes] = field(factory=list)
    producer: IPushProducer | None = None
    registered: list[tuple[IPushProducer, bool]] = field(factory=list)
    unregistered: int = 0
    writes_without_producer: int = 0

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError("A producer is already registered")
        assert IPushProducer.providedBy(producer), producer
        self.producer = producer
        self.registered.append((producer, streaming))
        if self.stop_on_register:
            producer.stopProducing()

    def unregisterProducer(self) -> None:
        self.producer = None
        self.unregistered += 1

    def write(self, data: bytes) -> None:
        if self.producer is None:
            self.writes_without_producer += 1
        self.chunks.append(data)
        if self.pause_on_write and self.producer is not None:
            self.producer.pauseProducing()

    def value(self) -> bytes:
        return b"".join(self.chunks)


def make_data(size: int, seed: int = 0) -> bytes:
    """Bytes that differ from position to position, so misordering shows."""
    return random.Random(seed).randbytes(size)


def store_test(
    test: Callable[[Any], Coroutine[Any, Any, None]],
) -> Callable[[Any], object]:
    """Run a coroutine test method, waiting for it as the harness says."""

    @functools.wraps(test)
    def run(self: Any) -> object:
        return self.complete(Deferred.fromCoroutine(test(self)))

    return run


class _Harness:
    """The hooks a harness provides (see the module docstring) and helpers."""

    # Provided by the trial test case and the harness.
    assertEqual: Any
    assertTrue: Any
    assertFalse: Any
    assertIsNone: Any
    assertIsInstance: Any
    assertLess: Any
    assertLessEqual: Any
    assertRaises: Any
    assertNoResult: Any
    successResultOf: Any
    failureResultOf: Any

    def make_store(self) -> IStore:
        raise NotImplementedError

    def complete(self, d: Deferred[Any]) -> object:
        raise NotImplementedError

    def make_paced_store(
        self, *, block_size: int, high_watermark: int, low_watermark: int
    ) -> tuple[IStore, Pacer]:
        raise NotImplementedError

    async def seed(self, store: IStore, data: bytes) -> str:
        writer = await store.open_writer(new_image_id())
        writer.write(data)
        stored = await writer.commit()
        return stored.location

    async def missing_location(self, store: IStore) -> str:
        location = await self.seed(store, b"gone")
        await store.delete(location)
        return location

    async def read_all(self, store: IStore, location: str, **kwargs: Any) -> bytes:
        consumer = FakeConsumer()
        result = await store.read(location, consumer, **kwargs)
        self.assertIsNone(result)
        self.assertEqual(consumer.unregistered, 1)
        self.assertEqual(consumer.writes_without_producer, 0)
        return consumer.value()

    def paced_result(self, pacer: Pacer, d: Deferred[T]) -> T:
        drain(pacer)
        return self.successResultOf(d)

    async def open_writer(self, store: IStore) -> IStoreWriter:
        return await store.open_writer(new_image_id())

    #: The block size asked of a paced store.
    READ_BLOCK = 8

    def paced_location(self, data: bytes) -> tuple[IStore, Pacer, str]:
        store, pacer = self.make_paced_store(
            block_size=self.READ_BLOCK, high_watermark=64, low_watermark=16
        )
        location = self.paced_result(
            pacer, Deferred.fromCoroutine(self.seed(store, data))
        )
        return store, pacer, location

    def run_until_data(self, pacer: Pacer, consumer: FakeConsumer) -> None:
        for _ in range(1000):
            if consumer.chunks:
                return
            self.assertTrue(pacer.pending(), "The read stalled before any data")
            pacer.run_one()
        raise AssertionError("No data after 1000 steps")

    def paced_writer(
        self, high_watermark: int = 10, low_watermark: int = 4
    ) -> tuple[IStore, Pacer, IStoreWriter]:
        store, pacer = self.make_paced_store(
            block_size=self.READ_BLOCK,
            high_watermark=high_watermark,
            low_watermark=low_watermark,
        )
        writer = self.paced_result(pacer, store.open_writer(new_image_id()))
        return store, pacer, writer


class _ReadTests(_Harness):
    """Reading committed data."""

    def test_provides_istore(self) -> None:
        """The store provides L{IStore} and names a URI scheme."""
        store = self.make_store()
        self.assertTrue(verifyObject(IStore, store))
        self.assertIsInstance(store.scheme, str)
        self.assertTrue(store.scheme)

    @store_test
    async def test_read_round_trip(self) -> None:
        """
        C{read} writes all the data to the consumer through a registered
        streaming L{IPushProducer}, unregisters it and fires with C{None}.
        """
        store = self.make_store()
        data = make_data(100_003)
        location = await self.seed(store, data)
        self.assertTrue(location.startswith(store.scheme + ":"))
        consumer = FakeConsumer()
        result = await store.read(location, consumer)
        self.assertIsNone(result)
        self.assertEqual(consumer.value(), data)
        self.assertEqual(len(consumer.registered), 1)
        producer, streaming = consumer.registered[0]
        self.assertTrue(streaming)
        self.assertTrue(verifyObject(IPushProducer, producer))
        self.assertIsNone(consumer.producer)
        self.assertEqual(consumer.unregistered, 1)
        self.assertEqual(consumer.writes_without_producer, 0)

    @store_test
    async def test_read_empty(self) -> None:
        """Empty data reads as nothing, with a clean register/unregister."""
        store = self.make_store()
        location = await self.seed(store, b"")
        self.assertEqual(await self.read_all(store, location), b"")

    @store_test
    async def test_read_ranges(self) -> None:
        """
        C{offset} and C{length} select C{data[offset:offset + length]}: a
        range running past the end stops at the end, and an offset at or past
        the end reads nothing.
        """
        store = self.make_store()
        data = make_data(10_000, seed=1)
        location = await self.seed(store, data)
        cases = [
            (0, None),
            (0, 0),
            (0, 1),
            (1, None),
            (123, 4567),
            (5000, 0),
            (9999, None),
            (9999, 10),
            (0, 10_000),
            (0, 20_000),
            (10_000, None),
            (10_000, 5),
            (20_000, None),
        ]
        for offset, length in cases:
            end = None if length is None else offset + length
            got = await self.read_all(store, location, offset=offset, length=length)
            self.assertEqual(got, data[offset:end], (offset, length))

    @store_test
    async def test_read_negative_range(self) -> None:
        """A negative offset or length is a L{BadRequest}; nothing is written."""
        store = self.make_store()
        location = await self.seed(store, b"some data")
        for kwargs in [{"offset": -1}, {"length": -1}, {"offset": -5, "length": 2}]:
            consumer = FakeConsumer()
            with self.assertRaises(BadRequest):
                await store.read(location, consumer, **kwargs)
            self.assertEqual(consumer.registered, [])
            self.assertEqual(consumer.chunks, [])

    @store_test
    async def test_read_missing(self) -> None:
        """
        Reading a location with no data fails with L{NotFound} before any
        producer is registered or byte written.
        """
        store = self.make_store()
        location = await self.missing_location(store)
        consumer = FakeConsumer()
        with self.assertRaises(NotFound):
            await store.read(location, consumer)
        self.assertEqual(consumer.registered, [])
        self.assertEqual(consumer.chunks, [])

    @store_test
    async def test_size(self) -> None:
        """C{size} is the number of bytes stored, 0 for empty data."""
        store = self.make_store()
        self.assertEqual(await store.size(await self.seed(store, b"x" * 1234)), 1234)
        self.assertEqual(await store.size(await self.seed(store, b"")), 0)

    @store_test
    async def test_size_missing(self) -> None:
        """C{size} of a location with no data fails with L{NotFound}."""
        store = self.make_store()
        location = await self.missing_location(store)
        with self.assertRaises(NotFound):
            await store.size(location)

    @store_test
    async def test_foreign_location_refused(self) -> None:
        """
        A location of another scheme is refused (L{BadRequest} or
        L{NotFound}) by C{read} and C{size}, and nothing is written.
        """
        store = self.make_store()
        for location in ["nosuchscheme://host/data", "", "not a uri"]:
            consumer = FakeConsumer()
            with self.assertRaises((BadRequest, NotFound)):
                await store.read(location, consumer)
            self.assertEqual(consumer.chunks, [])
            with self.assertRaises((BadRequest, NotFound)):
                await store.size(location)

    @store_test
    async def test_concurrent_reads(self) -> None:
        """Two reads of the same data at once each get all of it."""
        store = self.make_store()
        data = make_data(50_000, seed=2)
        location = await self.seed(store, data)
        first, second = FakeConsumer(), FakeConsumer()
        d1 = store.read(location, first)
        d2 = store.read(location, second, offset=7)
        await d1
        await d2
        self.assertEqual(first.value(), data)
        self.assertEqual(second.value(), data[7:])


class _PacedReadTests(_Harness):
    """A read's flow control, stepped by hand on a paced store."""

    def test_read_one_step_at_a_time(self) -> None:
        """
        A read never has more than one I/O step in flight, and delivers all
        the data in order.
        """
        data = make_data(self.READ_BLOCK * 6 + 3, seed=3)
        store, pacer, location = self.paced_location(data)
        consumer = FakeConsumer()
        d = store.read(location, consumer)
        while pacer.pending():
            self.assertLessEqual(pacer.pending(), 1)
            pacer.run_one()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(consumer.value(), data)
        self.assertEqual(consumer.unregistered, 1)

    def test_read_pause_resume(self) -> None:
        """
        While paused the producer writes nothing and starts no new I/O (a
        step already in flight may finish); once resumed it carries on to
        the end.
        """
        data = make_data(self.READ_BLOCK * 6 + 3, seed=4)
        store, pacer, location = self.paced_location(data)
        consumer = FakeConsumer()
        d = store.read(location, consumer)
        self.run_until_data(pacer, consumer)
        assert consumer.producer is not None
        consumer.producer.pauseProducing()
        seen = consumer.value()
        drain(pacer)
        self.assertEqual(consumer.value(), seen)
        self.assertEqual(pacer.pending(), 0)
        self.assertNoResult(d)
        consumer.producer.resumeProducing()
        self.assertIsNone(self.paced_result(pacer, d))
        self.assertEqual(consumer.value(), data)
        self.assertEqual(consumer.unregistered, 1)

    def test_read_paused_from_write(self) -> None:
        """
        A consumer that pauses the producer from inside C{write} gets no
        more data until it resumes it.
        """
        data = make_data(self.READ_BLOCK * 4, seed=5)
        store, pacer, location = self.paced_location(data)
        consumer = FakeConsumer(pause_on_write=True)
        d = store.read(location, consumer)
        resumed = 0
        while True:
            drain(pacer)
            if consumer.producer is None:  # done and unregistered
                break
            self.assertEqual(len(consumer.chunks), resumed + 1)
            resumed += 1
            consumer.producer.resumeProducing()
        self.assertTrue(resumed > 1)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(consumer.value(), data)

    def test_read_stop(self) -> None:
        """
        C{stopProducing} mid-way stops the read: nothing more is written,
        the I/O winds down, and the Deferred fires with C{None}.
        """
        data = make_data(self.READ_BLOCK * 6 + 3, seed=6)
        store, pacer, location = self.paced_location(data)
        consumer = FakeConsumer()
        d = store.read(location, consumer)
        self.run_until_data(pacer, consumer)
        assert consumer.producer is not None
        seen = consumer.value()
        consumer.producer.stopProducing()
        self.assertIsNone(self.paced_result(pacer, d))
        self.assertEqual(consumer.value(), seen)
        self.assertLess(len(seen), len(data))
        self.assertEqual(pacer.pending(), 0)

    def test_read_stop_while_paused(self) -> None:
        """A paused read can be stopped; it fires with C{None}."""
        data = make_data(self.READ_BLOCK * 6, seed=7)
        store, pacer, location = self.paced_location(data)
        consumer = FakeConsumer()
        d = store.read(location, consumer)
        self.run_until_data(pacer, consumer)
        assert consumer.producer is not None
        consumer.producer.pauseProducing()
        drain(pacer)
        seen = consumer.value()
        consumer.producer.stopProducing()
        self.assertIsNone(self.paced_result(pacer, d))
        self.assertEqual(consumer.value(), seen)

    def test_read_stop_on_register(self) -> None:
        """
        A consumer that stops the producer as it registers it gets nothing,
        and the read fires with C{None}.
        """
        store, pacer, location = self.paced_location(b"data" * 10)
        consumer = FakeConsumer(stop_on_register=True)
        d = store.read(location, consumer)
        self.assertIsNone(self.paced_result(pacer, d))
        self.assertEqual(consumer.chunks, [])


class _WriteTests(_Harness):
    """Writing, committing, aborting, deleting and listing data."""

    @store_test
    async def test_writer_provides_istorewriter(self) -> None:
        """C{open_writer} fires with an L{IStoreWriter} provider."""
        store = self.make_store()
        writer = await self.open_writer(store)
        self.assertTrue(verifyObject(IStoreWriter, writer))
        await writer.abort()

    @store_test
    async def test_round_trip_chunk_sizes(self) -> None:
        """
        Whatever the sizes of the chunks written, C{commit} fires with a
        L{StoredData} of the store's scheme and the right size, and reading
        it back gives the same bytes.
        """
        store = self.make_store()
        data = make_data(20_011, seed=8)
        for chunk_size in [1, 7, 1000, 4096, len(data)]:
            writer = await self.open_writer(store)
            for start in range(0, len(data), chunk_size):
                writer.write(data[start : start + chunk_size])
            stored = await writer.commit()
            self.assertIsInstance(stored, StoredData)
            self.assertEqual(stored.size, len(data))
            self.assertTrue(stored.location.startswith(store.scheme + ":"))
            self.assertEqual(await self.read_all(store, stored.location), data)
            self.assertEqual(await store.size(stored.location), len(data))

    @store_test
    async def test_commit_empty(self) -> None:
        """Committing without writing stores empty data of size 0."""
        store = self.make_store()
        writer = await self.open_writer(store)
        stored = await writer.commit()
        self.assertEqual(stored.size, 0)
        self.assertEqual(await self.read_all(store, stored.location), b"")

    @store_test
    async def test_zero_length_writes(self) -> None:
        """Writing C{b""} stores nothing and upsets nothing."""
        store = self.make_store()
        writer = await self.open_writer(store)
        for chunk in [b"", b"abc", b"", b"", b"def", b""]:
            writer.write(chunk)
        stored = await writer.commit()
        self.assertEqual(stored.size, 6)
        self.assertEqual(await self.read_all(store, stored.location), b"abcdef")

    @store_test
    async def test_distinct_locations(self) -> None:
        """Different images get different locations."""
        store = self.make_store()
        first = await self.seed(store, b"first")
        second = await self.seed(store, b"second")
        self.assertFalse(first == second)
        self.assertEqual(await self.read_all(store, first), b"first")
        self.assertEqual(await self.read_all(store, second), b"second")

    @store_test
    async def test_delete(self) -> None:
        """After C{delete} the data is gone for C{read}, C{size} and listing."""
        store = self.make_store()
        location = await self.seed(store, b"doomed")
        kept = await self.seed(store, b"kept")
        await store.delete(location)
        with self.assertRaises(NotFound):
            await store.size(location)
        with self.assertRaises(NotFound):
            await store.read(location, FakeConsumer())
        self.assertEqual(await store.locations(), frozenset({kept}))
        self.assertEqual(await self.read_all(store, kept), b"kept")

    @store_test
    async def test_delete_missing(self) -> None:
        """Deleting data that is already gone succeeds."""
        store = self.make_store()
        location = await self.seed(store, b"doomed")
        self.assertIsNone(await store.delete(location))
        self.assertIsNone(await store.delete(location))

    @store_test
    async def test_locations(self) -> None:
        """
        C{locations} lists committed data only: not a writer still open, nor
        an aborted one, nor deleted data.
        """
        store = self.make_store()
        self.assertEqual(await store.locations(), frozenset())
        first = await self.seed(store, b"one")
        second = await self.seed(store, b"two")
        deleted = await self.seed(store, b"three")
        await store.delete(deleted)
        open_writer = await self.open_writer(store)
        open_writer.write(b"in progress")
        aborted = await self.open_writer(store)
        aborted.write(b"given up")
        await aborted.abort()
        self.assertEqual(await store.locations(), frozenset({first, second}))
        await open_writer.abort()

    @store_test
    async def test_abort(self) -> None:
        """
        C{abort} fires with C{None} and leaves nothing behind: nothing is
        listed and nothing incomplete is left to discard.
        """
        store = self.make_store()
        writer = await self.open_writer(store)
        writer.write(make_data(10_000, seed=9))
        self.assertIsNone(await writer.abort())
        self.assertEqual(await store.locations(), frozenset())
        self.assertEqual(await store.discard_incomplete(), 0)

    @store_test
    async def test_abort_before_write(self) -> None:
        """A writer can be aborted before anything was written."""
        store = self.make_store()
        writer = await self.open_writer(store)
        self.assertIsNone(await writer.abort())
        self.assertEqual(await store.discard_incomplete(), 0)

    @store_test
    async def test_abort_twice(self) -> None:
        """C{abort} may be called again; every call fires with C{None}."""
        store = self.make_store()
        writer = await self.open_writer(store)
        writer.write(b"data")
        first, second = writer.abort(), writer.abort()
        self.assertIsNone(await first)
        self.assertIsNone(await second)
        self.assertIsNone(await writer.abort())
        self.assertEqual(await store.discard_incomplete(), 0)

    @store_test
    async def test_abort_after_commit(self) -> None:
        """After C{commit} has fired, C{abort} does nothing: the data stays."""
        store = self.make_store()
        writer = await self.open_writer(store)
        writer.write(b"keep me")
        stored = await writer.commit()
        self.assertIsNone(await writer.abort())
        self.assertEqual(await self.read_all(store, stored.location), b"keep me")
        self.assertEqual(await store.locations(), frozenset({stored.location}))

    @store_test
    async def test_write_after_abort(self) -> None:
        """Data written after C{abort} is dropped without an error."""
        store = self.make_store()
        writer = await self.open_writer(store)
        await writer.abort()
        writer.write(b"too late")
        self.assertEqual(await store.locations(), frozenset())
        self.assertEqual(await store.discard_incomplete(), 0)

    @store_test
    async def test_commit_after_abort(self) -> None:
        """C{commit} after C{abort} fails with L{StoreError}, storing nothing."""
        store = self.make_store()
        writer = await self.open_writer(store)
        writer.write(b"data")
        await writer.abort()
        with self.assertRaises(StoreError):
            await writer.commit()
        self.assertEqual(await store.locations(), frozenset())

    @store_test
    async def test_concurrent_writers(self) -> None:
        """Two writers for different images, interleaved, keep their data apart."""
        store = self.make_store()
        one, two = await self.open_writer(store), await self.open_writer(store)
        data_one, data_two = make_data(30_000, seed=10), make_data(20_000, seed=11)
        for start in range(0, 30_000, 1000):
            one.write(data_one[start : start + 1000])
            two.write(data_two[start : start + 1000])
        stored_two = await two.commit()
        stored_one = await one.commit()
        self.assertEqual(await self.read_all(store, stored_one.location), data_one)
        self.assertEqual(await self.read_all(store, stored_two.location), data_two)
        self.assertEqual(
            await store.locations(),
            frozenset({stored_one.location, stored_two.location}),
        )

    @store_test
    async def test_discard_incomplete(self) -> None:
        """
        C{discard_incomplete} removes what an unfinished writer left behind,
        counts it, and leaves committed data alone.
        """
        store = self.make_store()
        self.assertEqual(await store.discard_incomplete(), 0)
        kept = await self.seed(store, b"committed")
        abandoned = await self.open_writer(store)
        abandoned.write(b"never committed")  # and left, as a crash leaves it
        self.assertEqual(await store.discard_incomplete(), 1)
        self.assertEqual(await store.discard_incomplete(), 0)
        self.assertEqual(await store.locations(), frozenset({kept}))
        self.assertEqual(await self.read_all(store, kept), b"committed")
        await abandoned.abort()

    @store_test
    async def test_discard_incomplete_of_one_image(self) -> None:
        """
        C{discard_incomplete(image_id)} removes only that image's unfinished
        writes: another image's upload still in progress commits whole
        afterwards (a node reclaiming a dead node's upload must not break a
        live one's).
        """
        store = self.make_store()
        dead_image = new_image_id()
        dead = await store.open_writer(dead_image)
        dead.write(b"left by a dead node")
        live = await store.open_writer(new_image_id())
        live.write(b"still arriving")
        self.assertEqual(await store.discard_incomplete(dead_image), 1)
        self.assertEqual(await store.discard_incomplete(dead_image), 0)
        live.write(b", and done")
        stored = await live.commit()
        self.assertEqual(await self.read_all(store, stored.location), b"still arriving, and done")
        self.assertEqual(await store.locations(), frozenset({stored.location}))
        await dead.abort()

    @store_test
    async def test_ping(self) -> None:
        """A working store answers C{ping}."""
        store = self.make_store()
        self.assertIsNone(await store.ping())


class _PacedWriteTests(_Harness):
    """A writer's flow control, stepped by hand on a paced store."""

    def test_backpressure(self) -> None:
        """
        A registered streaming producer is paused once more than the high
        watermark is queued (not at it), and resumed once the queue drains.
        """
        store, pacer, writer = self.paced_writer(high_watermark=10, low_watermark=4)
        producer = FakeProducer()
        writer.registerProducer(producer, True)
        writer.write(b"a" * 10)
        self.assertEqual(producer.events, [])
        writer.write(b"b")
        self.assertEqual(producer.events, ["pause"])
        writer.write(b"c" * 20)
        self.assertEqual(producer.events, ["pause"])
        drain(pacer)
        self.assertEqual(producer.events, ["pause", "resume"])
        writer.unregisterProducer()
        stored = self.paced_result(pacer, writer.commit())
        self.assertEqual(stored.size, 31)
        consumer = FakeConsumer()
        self.paced_result(pacer, store.read(stored.location, consumer))
        self.assertEqual(consumer.value(), b"a" * 10 + b"b" + b"c" * 20)

    def test_backpressure_on_register(self) -> None:
        """A producer registered while the queue is over the mark is paused."""
        store, pacer, writer = self.paced_writer(high_watermark=10, low_watermark=4)
        writer.write(b"x" * 11)
        producer = FakeProducer()
        writer.registerProducer(producer, True)
        self.assertEqual(producer.events, ["pause"])
        drain(pacer)
        self.assertEqual(producer.events, ["pause", "resume"])
        self.paced_result(pacer, writer.abort())

    def test_unregistered_producer(self) -> None:
        """Once unregistered, a producer is neither paused nor resumed."""
        store, pacer, writer = self.paced_writer(high_watermark=10, low_watermark=4)
        producer = FakeProducer()
        writer.registerProducer(producer, True)
        writer.write(b"x" * 11)
        writer.unregisterProducer()
        drain(pacer)
        writer.write(b"y" * 11)
        drain(pacer)
        self.assertEqual(producer.events, ["pause"])
        self.assertEqual(self.paced_result(pacer, writer.commit()).size, 22)

    def test_writes_in_order(self) -> None:
        """
        Chunks written while earlier ones are still being written are stored
        after them, in order.
        """
        store, pacer, writer = self.paced_writer(high_watermark=1000, low_watermark=10)
        chunks = [bytes([i]) * (i + 1) for i in range(20)]
        for i, chunk in enumerate(chunks):
            writer.write(chunk)
            if i % 3 == 0 and pacer.pending():
                pacer.run_one()
        stored = self.paced_result(pacer, writer.commit())
        consumer = FakeConsumer()
        self.paced_result(pacer, store.read(stored.location, consumer))
        self.assertEqual(consumer.value(), b"".join(chunks))

    def test_commit_waits_for_queued_writes(self) -> None:
        """C{commit} fires only after every queued write is stored."""
        store, pacer, writer = self.paced_writer(high_watermark=1000, low_watermark=10)
        writer.write(b"first")
        writer.write(b"second")
        d = writer.commit()
        self.assertNoResult(d)
        stored = self.paced_result(pacer, d)
        self.assertEqual(stored.size, 11)
        consumer = FakeConsumer()
        self.paced_result(pacer, store.read(stored.location, consumer))
        self.assertEqual(consumer.value(), b"firstsecond")

    def test_abort_while_writes_queued(self) -> None:
        """
        C{abort} while writes are queued and in flight waits for them, then
        removes everything: nothing is listed or left to discard.
        """
        store, pacer, writer = self.paced_writer(high_watermark=1000, low_watermark=10)
        writer.write(b"one")
        writer.write(b"two")
        pacer.run_one()
        writer.write(b"three")
        d = writer.abort()
        self.assertIsNone(self.paced_result(pacer, d))
        self.assertEqual(self.paced_result(pacer, store.locations()), frozenset())
        self.assertEqual(self.paced_result(pacer, store.discard_incomplete()), 0)

    def test_abort_during_commit(self) -> None:
        """
        C{abort} after C{commit} was called but before it fired wins: the
        commit fails with L{StoreError} and nothing is stored.
        """
        store, pacer, writer = self.paced_writer(high_watermark=1000, low_watermark=10)
        writer.write(b"data")
        commit = writer.commit()
        abort = writer.abort()
        drain(pacer)
        self.failureResultOf(commit, StoreError)
        self.assertIsNone(self.successResultOf(abort))
        self.assertEqual(self.paced_result(pacer, store.locations()), frozenset())
        self.assertEqual(self.paced_result(pacer, store.discard_incomplete()), 0)

    def test_abort_while_commit_in_flight(self) -> None:
        """
        C{abort} while the commit's own I/O is in flight still removes the
        data once it lands, and the commit fails with L{StoreError}.
        """
        store, pacer, writer = self.paced_writer(high_watermark=1000, low_watermark=10)
        writer.write(b"data")
        drain(pacer)
        commit = writer.commit()
        self.assertTrue(pacer.pending())
        abort = writer.abort()
        drain(pacer)
        self.failureResultOf(commit, StoreError)
        self.assertIsNone(self.successResultOf(abort))
        self.assertEqual(self.paced_result(pacer, store.locations()), frozenset())
        self.assertEqual(self.paced_result(pacer, store.discard_incomplete()), 0)


class ReadConformanceMixin(_ReadTests, _PacedReadTests):
    """What every store, read-only ones included, does with committed data."""


class StoreConformanceMixin(_WriteTests, _PacedWriteTests, ReadConformanceMixin):
    """What every writable store does: all of the above, plus writers."""


class UnpacedReadConformanceMixin(_ReadTests):
    """
    L{ReadConformanceMixin} without the flow-control tests, for a second
    harness of a store that needs no C{make_paced_store} (a live server).
    """


class UnpacedStoreConformanceMixin(_WriteTests, _ReadTests):
    """
    L{StoreConformanceMixin} without the flow-control tests, for a second
    harness of a store already run through the full mixin (for example the
    same store on a real thread pool).
    """
