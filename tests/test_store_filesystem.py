"""
Tests for L{glance_tx.store.filesystem}.

The conformance mixin runs twice: on a L{SynchronousRunner} (with a
L{ManualRunner} as the paced store), and on a real thread pool under trial's
reactor. The rest pins what is particular to files: the layout on disk,
refusing locations outside the root, crash leftovers and I/O errors.
"""

from __future__ import annotations

import errno
import os
import re
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar, cast
from unittest import SkipTest

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.filepath import FilePath
from twisted.python.threadable import isInIOThread
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from glance_tx.errors import BadRequest, NotFound, StorageFull, StoreError
from glance_tx.images import new_image_id
from glance_tx.store import filesystem
from glance_tx.store.filesystem import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_HIGH_WATERMARK,
    DEFAULT_LOW_WATERMARK,
    FilesystemStore,
)
from glance_tx.store.interface import IFileRanges, IStore, IStoreWriter
from glance_tx.threads import BlockingRunner, SynchronousRunner, ThreadPoolRunner
from tests.fakes import ManualRunner, drain
from tests.store_conformance import (
    FakeConsumer,
    FakeProducer,
    StoreConformanceMixin,
    UnpacedStoreConformanceMixin,
    make_data,
)

T = TypeVar("T")

PARTIAL_NAME = re.compile(r"^(?P<id>[0-9a-f-]{36})\.[0-9a-f]{16}\.partial$")


class SynchronousFilesystemStoreTests(StoreConformanceMixin, SynchronousTestCase):
    """The conformance suite on a synchronous runner; paced by a ManualRunner."""

    def setUp(self) -> None:
        self.root = FilePath(self.mktemp())
        self.root.makedirs()

    def make_store(self) -> IStore:
        return FilesystemStore(
            self.root,
            SynchronousRunner(),
            block_size=4096,
            high_watermark=64 * 1024,
            low_watermark=16 * 1024,
        )

    def make_paced_store(
        self, *, block_size: int, high_watermark: int, low_watermark: int
    ) -> tuple[IStore, ManualRunner]:
        runner = ManualRunner()
        store = FilesystemStore(
            self.root,
            runner,
            block_size=block_size,
            high_watermark=high_watermark,
            low_watermark=low_watermark,
        )
        return store, runner

    def complete(self, d: Deferred[Any]) -> object:
        return self.successResultOf(d)


class ThreadPoolFilesystemStoreTests(UnpacedStoreConformanceMixin, TestCase):
    """
    The conformance suite again (less the flow-control tests, which step a
    paced store and ran above), with the blocking calls on a real thread
    pool and the results delivered through trial's reactor.
    """

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor = cast(IReactorFromThreads, reactor)
        self.pool = ThreadPool(minthreads=1, maxthreads=4, name=self.id())
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.root = FilePath(self.mktemp())
        self.root.makedirs()

    def make_store(self, runner: BlockingRunner | None = None) -> IStore:
        return FilesystemStore(
            self.root,
            runner or ThreadPoolRunner(self.reactor, self.pool),
            block_size=4096,
            high_watermark=64 * 1024,
            low_watermark=16 * 1024,
        )

    def complete(self, d: Deferred[Any]) -> object:
        return d

    async def test_blocking_calls_off_reactor_thread(self) -> None:
        """
        Writing, committing, reading, listing, deleting, discarding and
        pinging make their blocking calls on pool threads, never on the
        reactor thread.
        """
        self.assertTrue(isInIOThread())
        runner = RecordingRunner(ThreadPoolRunner(self.reactor, self.pool))
        store = self.make_store(runner)
        writer = await store.open_writer(new_image_id())
        writer.write(make_data(50_000))
        stored = await writer.commit()
        await store.read(stored.location, FakeConsumer())
        await store.size(stored.location)
        await store.locations()
        await store.delete(stored.location)
        await store.discard_incomplete()
        await store.ping()
        self.assertTrue(runner.in_io_thread)
        self.assertEqual(set(runner.in_io_thread), {False})


@define
class RecordingRunner:
    """Runs calls on C{runner}, noting whether each ran on the reactor thread."""

    runner: BlockingRunner
    in_io_thread: list[bool] = field(factory=list)

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        def recorded() -> T:
            self.in_io_thread.append(isInIOThread())
            return f(*args, **kwargs)

        return self.runner.run(recorded)

    def serial(self) -> RecordingRunner:
        return RecordingRunner(self.runner.serial(), self.in_io_thread)


@define
class FaultyRunner:
    """
    Runs calls synchronously, except that a call chosen by the test raises
    the given error (on the runner, as a failing system call would) instead
    of running.
    """

    _faults: deque[tuple[int, BaseException]] = field(factory=deque, init=False)
    calls: int = 0

    def fail_after(self, count: int, error: BaseException) -> None:
        """Let C{count} more calls run, then fail the one after."""
        self._faults.append((self.calls + count, error))

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        call, self.calls = self.calls, self.calls + 1
        if self._faults and self._faults[0][0] == call:
            error = self._faults.popleft()[1]

            def broken() -> T:
                raise error

            return SynchronousRunner().run(broken)
        return SynchronousRunner().run(f, *args, **kwargs)

    def serial(self) -> FaultyRunner:
        return self  # synchronous: in order already


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class FilesystemStoreTests(SynchronousTestCase):
    """What is particular to keeping images as files."""

    def setUp(self) -> None:
        self.root = FilePath(self.mktemp())
        self.root.makedirs()

    def store(
        self, runner: BlockingRunner | None = None, **kwargs: Any
    ) -> FilesystemStore:
        return FilesystemStore(self.root, runner or SynchronousRunner(), **kwargs)

    def writer(
        self, store: FilesystemStore, image_id: str | None = None
    ) -> IStoreWriter:
        return self.successResultOf(store.open_writer(image_id or new_image_id()))

    def commit(
        self, store: FilesystemStore, data: bytes, image_id: str | None = None
    ) -> str:
        writer = self.writer(store, image_id)
        writer.write(data)
        return self.successResultOf(writer.commit()).location

    def read(
        self, store: FilesystemStore, location: str, **kwargs: Any
    ) -> FakeConsumer:
        consumer = FakeConsumer()
        self.assertIsNone(
            self.successResultOf(store.read(location, consumer, **kwargs))
        )
        return consumer

    def incoming(self) -> list[str]:
        incoming = self.root.child("incoming")
        return sorted(incoming.listdir()) if incoming.exists() else []

    # Ranges of open files, for sendfile

    def test_open_range(self) -> None:
        """
        open_range gives the open file and the range clipped to the data
        (to the end without a length, nothing past the end), closing the
        file when asked; it refuses what read refuses, before any I/O.
        """
        store = self.store()
        verifyObject(IFileRanges, store)
        location = self.commit(store, b"0123456789")
        whole = self.successResultOf(store.open_range(location))
        self.assertEqual((whole.offset, whole.length), (0, 10))
        self.assertEqual(os.pread(whole.file.fileno(), 10, 0), b"0123456789")
        self.successResultOf(whole.close())
        self.assertTrue(whole.file.closed)
        part = self.successResultOf(store.open_range(location, 4, 100))
        self.assertEqual((part.offset, part.length), (4, 6))
        self.successResultOf(part.close())
        past = self.successResultOf(store.open_range(location, 20))
        self.assertEqual(past.length, 0)
        self.successResultOf(past.close())
        self.failureResultOf(store.open_range(location, -1), BadRequest)
        self.failureResultOf(store.open_range(store.location_for(new_image_id())), NotFound)

    # Construction

    def test_defaults(self) -> None:
        """
        A store takes its root as a str or FilePath; it reads 1 MiB blocks
        and its writers pause above 8 MiB queued and resume at 2 MiB.
        """
        store = FilesystemStore(self.root.path, SynchronousRunner())
        self.assertTrue(verifyObject(IStore, store))
        self.assertEqual(store.scheme, "file")
        self.assertEqual(store.root, self.root)
        self.assertIsInstance(store.root, FilePath)
        self.assertEqual(store.block_size, DEFAULT_BLOCK_SIZE)
        self.assertEqual(store.block_size, 1024 * 1024)
        self.assertEqual(store.high_watermark, DEFAULT_HIGH_WATERMARK)
        self.assertEqual(store.high_watermark, 4 * 1024 * 1024)
        self.assertEqual(store.low_watermark, DEFAULT_LOW_WATERMARK)
        self.assertEqual(store.low_watermark, 1024 * 1024)

    def test_bad_settings(self) -> None:
        """Block size and watermarks are checked at construction."""
        runner = SynchronousRunner()
        for kwargs in [
            {"block_size": 0},
            {"high_watermark": 0},
            {"low_watermark": -1},
            {"high_watermark": 10, "low_watermark": 11},
        ]:
            self.assertRaises(ValueError, FilesystemStore, self.root, runner, **kwargs)

    # Layout on disk

    def test_location(self) -> None:
        """Committed data is at <root>/<id>, named file:///<root>/<id>."""
        store = self.store()
        image_id = new_image_id()
        location = self.commit(store, b"data", image_id)
        self.assertEqual(location, "file://" + self.root.path + "/" + image_id)
        self.assertEqual(store.location_for(image_id), location)
        self.assertEqual(self.root.child(image_id).getContent(), b"data")

    def test_location_percent_encoded(self) -> None:
        """A root with spaces or percent signs gives a location that works."""
        self.root = self.root.child("odd dir %41")
        store = self.store()
        location = self.commit(store, b"data")
        self.assertIn("/odd%20dir%20%2541/", location)
        self.assertEqual(self.read(store, location).value(), b"data")

    def test_canonical_id(self) -> None:
        """An upper-case image id is stored under its canonical form."""
        store = self.store()
        image_id = new_image_id()
        location = self.commit(store, b"data", image_id.upper())
        self.assertEqual(location, store.location_for(image_id))

    def test_creates_directories(self) -> None:
        """The first writer creates the root and its incoming directory."""
        self.root = self.root.child("not").child("yet")
        store = self.store()
        writer = self.writer(store)
        self.assertTrue(self.root.child("incoming").isdir())
        self.successResultOf(writer.abort())

    def test_invalid_image_id(self) -> None:
        """C{open_writer} refuses anything but a UUID; no file is created."""
        store = self.store()
        for image_id in ["../../etc/passwd", "incoming", "", "x" * 36, None, "a/b"]:
            self.failureResultOf(store.open_writer(image_id), BadRequest)  # type: ignore[arg-type]
        self.assertEqual(self.root.listdir(), [])

    def test_incoming_then_rename(self) -> None:
        """
        Written data sits in <root>/incoming/<id>.<random>.partial and
        appears at <root>/<id> only at commit, when the partial file goes.
        """
        store = self.store()
        image_id = new_image_id()
        writer = self.writer(store, image_id)
        writer.write(b"some ")
        writer.write(b"data")
        [partial] = self.incoming()
        match = PARTIAL_NAME.match(partial)
        assert match is not None, partial
        self.assertEqual(match.group("id"), image_id)
        self.assertEqual(
            self.root.child("incoming").child(partial).getContent(), b"some data"
        )
        self.assertFalse(self.root.child(image_id).exists())
        self.successResultOf(writer.commit())
        self.assertEqual(self.incoming(), [])
        self.assertEqual(self.root.child(image_id).getContent(), b"some data")

    def test_writeback_started_each_step(self) -> None:
        """
        Every WRITEBACK_STEP bytes written, the kernel is asked to start
        writing that range to the disk (the fsync at commit is still what
        makes the data durable); what is left under a step waits for it.
        """
        started: list[tuple[int, int]] = []
        self.patch(
            filesystem, "_start_writeback", lambda fd, offset, length: started.append((offset, length))
        )
        step = filesystem.WRITEBACK_STEP
        store = self.store()
        writer = self.writer(store)
        block = os.urandom(step // 4 + 1)
        for _ in range(9):
            writer.write(block)
        location = self.successResultOf(writer.commit()).location
        self.assertEqual(started, [(0, len(block) * 4), (len(block) * 4, len(block) * 4)])
        self.assertEqual(b"".join(self.read(store, location).chunks), block * 9)

    def test_start_writeback_real(self) -> None:
        """On this system's C library, starting writeback is harmless."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"x" * 100)
            filesystem._start_writeback(f.fileno(), 0, 100)
            filesystem._start_writeback(-1, 0, 100)  # a failure is ignored too
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"x" * 100)

    def test_partial_names_unique(self) -> None:
        """Two writers for the same id write to different partial files."""
        store = self.store()
        image_id = new_image_id()
        first, second = self.writer(store, image_id), self.writer(store, image_id)
        self.assertEqual(len(self.incoming()), 2)
        self.successResultOf(first.abort())
        self.successResultOf(second.abort())
        self.assertEqual(self.incoming(), [])

    def test_abort_removes_files(self) -> None:
        """After C{abort} neither the partial nor a final file exists."""
        store = self.store()
        image_id = new_image_id()
        writer = self.writer(store, image_id)
        writer.write(b"data")
        self.successResultOf(writer.abort())
        self.assertEqual(self.incoming(), [])
        self.assertFalse(self.root.child(image_id).exists())

    def test_abort_during_commit_removes_final(self) -> None:
        """
        An abort that arrives while the rename is in flight removes the
        file from its final name once the rename is done.
        """
        runner = ManualRunner()
        store = self.store(runner)
        image_id = new_image_id()
        d = store.open_writer(image_id)
        runner.run_one()
        writer = self.successResultOf(d)
        commit = writer.commit()
        abort = writer.abort()
        runner.run_one()  # the fsync and rename
        self.assertTrue(self.root.child(image_id).exists())
        drain(runner)
        self.failureResultOf(commit, StoreError)
        self.successResultOf(abort)
        self.assertFalse(self.root.child(image_id).exists())
        self.assertEqual(self.incoming(), [])

    # Writers and the runner

    def test_write_does_no_io(self) -> None:
        """C{write} only queues: the file grows when the runner runs the call."""
        runner = ManualRunner()
        store = self.store(runner)
        d = store.open_writer(new_image_id())
        runner.run_one()
        writer = self.successResultOf(d)
        writer.write(b"abc")
        [partial] = self.incoming()
        path = self.root.child("incoming").child(partial)
        self.assertEqual(path.getsize(), 0)
        self.assertEqual(runner.pending(), 1)
        runner.run_one()
        self.assertEqual(path.getContent(), b"abc")

    def test_one_write_at_a_time(self) -> None:
        """
        Chunks queued while a write is in flight wait for it and then go in
        one call; the runner never has two calls of one writer at once.
        """
        runner = ManualRunner()
        store = self.store(runner)
        d = store.open_writer(new_image_id())
        runner.run_one()
        writer = self.successResultOf(d)
        writer.write(b"one")
        for chunk in [b"two", b"three", b"four"]:
            writer.write(chunk)
            self.assertEqual(runner.pending(), 1)
        runner.run_one()
        self.assertEqual(runner.pending(), 1)
        runner.run_one()
        self.assertEqual(runner.pending(), 0)
        [partial] = self.incoming()
        content = self.root.child("incoming").child(partial).getContent()
        self.assertEqual(content, b"onetwothreefour")
        commit = writer.commit()
        drain(runner)
        self.assertEqual(self.successResultOf(commit).size, 15)

    def test_watermark_hysteresis(self) -> None:
        """
        A paused producer stays paused while more than the low watermark is
        queued, and is resumed when no more than it is left.
        """
        runner = ManualRunner()
        store = self.store(runner, high_watermark=10, low_watermark=4)
        d = store.open_writer(new_image_id())
        runner.run_one()
        writer = self.successResultOf(d)
        producer = FakeProducer()
        writer.registerProducer(producer, True)
        writer.write(b"a" * 6)  # in flight
        writer.write(b"b" * 6)  # queued: 12 > 10
        self.assertEqual(producer.events, ["pause"])
        runner.run_one()  # 6 left > 4
        self.assertEqual(producer.events, ["pause"])
        runner.run_one()  # 0 left
        self.assertEqual(producer.events, ["pause", "resume"])
        abort = writer.abort()
        drain(runner)
        self.successResultOf(abort)

    def test_abort_resumes_producer(self) -> None:
        """
        C{abort} drops the queue and resumes a producer it had paused (what
        it sends next is dropped), rather than leave it paused for ever.
        """
        runner = ManualRunner()
        store = self.store(runner, high_watermark=10, low_watermark=4)
        d = store.open_writer(new_image_id())
        runner.run_one()
        writer = self.successResultOf(d)
        producer = FakeProducer()
        writer.registerProducer(producer, True)
        writer.write(b"a" * 3)
        writer.write(b"b" * 9)
        self.assertEqual(producer.events, ["pause"])
        abort = writer.abort()
        self.assertEqual(producer.events, ["pause", "resume"])
        drain(runner)
        self.successResultOf(abort)

    def test_producer_rules(self) -> None:
        """
        A writer takes one producer at a time, a streaming one only; after
        C{commit} it refuses more data.
        """
        store = self.store()
        writer = self.writer(store)
        self.assertRaises(ValueError, writer.registerProducer, FakeProducer(), False)
        writer.registerProducer(FakeProducer(), True)
        self.assertRaises(RuntimeError, writer.registerProducer, FakeProducer(), True)
        writer.unregisterProducer()
        writer.registerProducer(FakeProducer(), True)
        self.successResultOf(writer.commit())
        self.assertRaises(RuntimeError, writer.write, b"more")
        self.failureResultOf(writer.commit(), StoreError)

    def test_write_error(self) -> None:
        """
        A failed write (the disk is full) removes the partial file at once,
        drops what follows, and makes C{commit} fail with L{StorageFull}
        (413, Glance's message); no final file appears.
        """
        runner = FaultyRunner()
        store = self.store(runner)
        image_id = new_image_id()
        writer = self.writer(store, image_id)
        runner.fail_after(0, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        writer.write(b"x" * 100)
        self.assertEqual(self.incoming(), [])
        writer.write(b"more")
        failure = self.failureResultOf(writer.commit(), StorageFull)
        self.assertIn("Image storage media is full", failure.value.message)
        self.assertFalse(self.root.child(image_id).exists())
        self.assertEqual(self.incoming(), [])
        self.successResultOf(writer.abort())

    def test_commit_error(self) -> None:
        """
        If the fsync or rename at commit fails, C{commit} fails with
        L{StoreError}, the partial file is removed and no final file appears.
        """
        runner = FaultyRunner()
        store = self.store(runner)
        image_id = new_image_id()
        writer = self.writer(store, image_id)
        writer.write(b"data")
        runner.fail_after(0, OSError(errno.EIO, os.strerror(errno.EIO)))
        failure = self.failureResultOf(writer.commit(), StoreError)
        self.assertIn("Input/output error", failure.value.message)
        self.assertFalse(self.root.child(image_id).exists())
        self.assertEqual(self.incoming(), [])

    def test_open_error(self) -> None:
        """When the incoming directory cannot be made, C{open_writer} fails."""
        self.root.child("incoming").setContent(b"in the way")
        self.failureResultOf(self.store().open_writer(new_image_id()), StoreError)

    # Locations that must not be followed

    def outside(self) -> tuple[FilePath[str], str]:
        """A directory beside the root, holding a file named like an image."""
        outside = FilePath(self.mktemp())
        outside.makedirs()
        image_id = new_image_id()
        outside.child(image_id).setContent(b"secret")
        return outside, image_id

    def assertRefused(self, store: FilesystemStore, location: str) -> None:
        consumer = FakeConsumer()
        self.failureResultOf(store.read(location, consumer), BadRequest, NotFound)
        self.assertEqual(consumer.chunks, [])
        self.assertEqual(consumer.registered, [])
        self.failureResultOf(store.size(location), BadRequest, NotFound)
        self.failureResultOf(store.delete(location), BadRequest, NotFound)

    def test_traversal_refused(self) -> None:
        """
        Locations that name, or could be made to resolve to, anything but a
        file directly in the root are refused by C{read}, C{size} and
        C{delete}, and the file outside is left alone.
        """
        store = self.store()
        outside, image_id = self.outside()
        root = self.root.path
        rel = os.path.relpath(outside.path, root)
        os.symlink(outside.path, self.root.child("sub").path)
        image = new_image_id()
        self.commit(store, b"mine", image)
        bad = [
            "file://" + outside.child(image_id).path,
            f"file://{root}/../{rel}/{image_id}",
            f"file://{root}/{rel}/{image_id}",
            f"file://{root}/%2e%2e/{rel.replace('../', '%2e%2e/')}/{image_id}",
            f"file://{root}/%2E%2E/{os.path.basename(outside.path)}/{image_id}",
            f"file://{root}/%2e%2e%2f{os.path.basename(outside.path)}%2f{image_id}",
            f"file://{root}/sub/{image_id}",
            f"file://{root}/./{image}",
            f"file://{root}//{image}",
            f"file:///{root}/{image}",
            f"file://evil.example.com{root}/{image}",
            f"file://localhost{root}/{image}",
            f"file://{root}/{image}?x=1",
            f"file://{root}/{image}#frag",
            f"file://{root}/{image}/",
            f"file://{root}/{image}%00",
            f"file://{root}/%ff",
            f"file://{root}/{image.upper()}",
            f"file://{root}/incoming/{image}",
            f"file://{root}",
            f"file:relative/{image}",
            f"{root}/{image}",
            f"http://{root}/{image}",
            "file:///etc/passwd",
        ]
        for location in bad:
            self.assertRefused(store, location)
        self.assertEqual(outside.child(image_id).getContent(), b"secret")
        self.assertEqual(self.root.child(image).getContent(), b"mine")
        for wrong in [None, b"file:///x", 42]:
            self.failureResultOf(store.read(wrong, FakeConsumer()), BadRequest)  # type: ignore[arg-type]

    def test_symlink_at_image_name(self) -> None:
        """
        A symlink at an image's name is not followed: reading it is
        L{NotFound}, its size is L{NotFound}, deleting it removes only the
        link, and it is not listed.
        """
        store = self.store()
        outside, image_id = self.outside()
        os.symlink(outside.child(image_id).path, self.root.child(image_id).path)
        location = store.location_for(image_id)
        consumer = FakeConsumer()
        self.failureResultOf(store.read(location, consumer), NotFound)
        self.assertEqual(consumer.chunks, [])
        self.failureResultOf(store.size(location), NotFound)
        self.assertEqual(self.successResultOf(store.locations()), frozenset())
        self.successResultOf(store.delete(location))
        self.assertFalse(os.path.lexists(self.root.child(image_id).path))
        self.assertEqual(outside.child(image_id).getContent(), b"secret")

    def test_symlinked_root(self) -> None:
        """
        A root reached through a symlink works; locations name it as
        configured, and the same file named through the real path is
        accepted, since it resolves into the root.
        """
        real = self.root
        link = FilePath(self.mktemp())
        os.symlink(real.path, link.path)
        store = FilesystemStore(link, SynchronousRunner())
        image_id = new_image_id()
        location = self.commit(store, b"data", image_id)
        self.assertEqual(location, "file://" + link.path + "/" + image_id)
        self.assertEqual(self.read(store, location).value(), b"data")
        other = "file://" + real.path + "/" + image_id
        self.assertEqual(self.read(store, other).value(), b"data")
        self.assertEqual(self.successResultOf(store.size(other)), 4)

    # Reads

    def test_read_blocks(self) -> None:
        """Reads ask for block_size bytes at a time; the last block is short."""
        store = self.store(block_size=3)
        location = self.commit(store, b"0123456789")
        consumer = self.read(store, location)
        self.assertEqual(consumer.chunks, [b"012", b"345", b"678", b"9"])
        consumer = self.read(store, location, offset=2, length=5)
        self.assertEqual(consumer.chunks, [b"234", b"56"])

    def test_read_many_blocks_synchronously(self) -> None:
        """
        With a runner that answers at once, reading thousands of blocks does
        not recurse once per block (it would hit the recursion limit).
        """
        store = self.store(block_size=1)
        data = make_data(5000)
        location = self.commit(store, data)
        consumer = self.read(store, location)
        self.assertEqual(len(consumer.chunks), 5000)
        self.assertEqual(consumer.value(), data)

    def test_read_stop_with_read_in_flight(self) -> None:
        """
        Stopped while a block read is in flight, the producer waits for it,
        drops the block, closes the file and fires with C{None}, without
        unregistering itself.
        """
        runner = ManualRunner()
        store = self.store(runner, block_size=4)
        d = store.open_writer(new_image_id())
        drain(runner)
        writer = self.successResultOf(d)
        writer.write(b"0123456789")
        commit = writer.commit()
        drain(runner)
        location = self.successResultOf(commit).location
        consumer = FakeConsumer()
        read = store.read(location, consumer)
        runner.run_one()  # open
        runner.run_one()  # first block
        self.assertEqual(consumer.chunks, [b"0123"])
        self.assertEqual(runner.pending(), 1)  # the second block, in flight
        assert consumer.producer is not None
        consumer.producer.stopProducing()
        drain(runner)
        self.assertIsNone(self.successResultOf(read))
        self.assertEqual(consumer.chunks, [b"0123"])
        self.assertEqual(consumer.unregistered, 0)

    def test_read_truncated(self) -> None:
        """
        Data that ends before its size said fails the read with
        L{StoreError} (so a response is not passed off as complete), after
        unregistering the producer.
        """
        runner = ManualRunner()
        store = self.store(runner, block_size=4)
        image_id = new_image_id()
        d = store.open_writer(image_id)
        drain(runner)
        writer = self.successResultOf(d)
        writer.write(b"0123456789")
        commit = writer.commit()
        drain(runner)
        consumer = FakeConsumer()
        read = store.read(self.successResultOf(commit).location, consumer)
        runner.run_one()  # open: 10 bytes to read
        os.truncate(self.root.child(image_id).path, 6)
        drain(runner)
        failure = self.failureResultOf(read, StoreError)
        self.assertIn("ended early", failure.value.message)
        self.assertEqual(consumer.value(), b"012345")
        self.assertEqual(consumer.unregistered, 1)

    def test_read_error(self) -> None:
        """
        An I/O error while reading fails the read with L{StoreError} and
        unregisters the producer.
        """
        runner = FaultyRunner()
        store = self.store(runner)
        location = self.commit(store, b"data")
        runner.fail_after(1, OSError(errno.EIO, os.strerror(errno.EIO)))
        consumer = FakeConsumer()
        failure = self.failureResultOf(store.read(location, consumer), StoreError)
        self.assertIn("Input/output error", failure.value.message)
        self.assertEqual(consumer.chunks, [])
        self.assertEqual(consumer.unregistered, 1)

    def test_consumer_write_raises(self) -> None:
        """An exception from the consumer's C{write} fails the read."""

        class Broken(FakeConsumer):
            def write(self, data: bytes) -> None:
                raise ZeroDivisionError()

        store = self.store()
        location = self.commit(store, b"data")
        consumer = Broken()
        self.failureResultOf(store.read(location, consumer), ZeroDivisionError)
        self.assertEqual(consumer.unregistered, 1)

    def test_consumer_already_has_producer(self) -> None:
        """If the consumer refuses the producer, the read fails with its error."""
        store = self.store()
        location = self.commit(store, b"data")
        consumer = FakeConsumer()
        consumer.registerProducer(FakeProducer(), True)
        self.failureResultOf(store.read(location, consumer), RuntimeError)
        self.assertEqual(consumer.chunks, [])

    def test_read_directory(self) -> None:
        """A directory at an image's name is not image data."""
        store = self.store()
        image_id = new_image_id()
        self.root.child(image_id).makedirs()
        self.failureResultOf(
            store.read(store.location_for(image_id), FakeConsumer()), NotFound
        )
        self.failureResultOf(store.size(store.location_for(image_id)), NotFound)

    def test_file_handles_closed(self) -> None:
        """
        No file descriptor outlives an operation, whether it succeeds, is
        aborted, stopped or fails.
        """
        if not os.path.isdir("/proc/self/fd"):
            raise SkipTest("needs /proc/self/fd")
        before = open_fds()
        runner = FaultyRunner()
        store = self.store(runner, block_size=3)
        location = self.commit(store, b"0123456789")
        self.read(store, location)
        self.read(store, location, offset=100)
        self.failureResultOf(
            store.read(store.location_for(new_image_id()), FakeConsumer())
        )
        stopper = FakeConsumer(stop_on_register=True)
        self.successResultOf(store.read(location, stopper))
        pauser = FakeConsumer(pause_on_write=True)
        paused = store.read(location, pauser)
        assert pauser.producer is not None
        pauser.producer.stopProducing()
        self.successResultOf(paused)
        runner.fail_after(1, OSError(errno.EIO, "EIO"))
        self.failureResultOf(store.read(location, FakeConsumer()), StoreError)
        writer = self.writer(store)
        writer.write(b"abc")
        self.successResultOf(writer.abort())
        writer = self.writer(store)
        runner.fail_after(0, OSError(errno.ENOSPC, "ENOSPC"))
        writer.write(b"abc")
        self.failureResultOf(writer.commit(), StorageFull)
        writer = self.writer(store)
        writer.write(b"abc")
        runner.fail_after(0, OSError(errno.EIO, "EIO"))
        self.failureResultOf(writer.commit(), StoreError)
        self.successResultOf(store.locations())
        self.successResultOf(store.discard_incomplete())
        self.successResultOf(store.ping())
        self.assertEqual(open_fds(), before)

    # Listing, crash recovery, ping

    def test_locations_only_images(self) -> None:
        """
        C{locations} lists regular files named by an image id: not the
        incoming directory, other files, directories or symlinks.
        """
        store = self.store()
        location = self.commit(store, b"data")
        writer = self.writer(store)
        self.root.child("notes.txt").setContent(b"x")
        self.root.child(new_image_id()).makedirs()
        os.symlink(
            self.root.child("notes.txt").path, self.root.child(new_image_id()).path
        )
        self.root.child(str(uuid.uuid4()).upper()).setContent(b"x")
        self.assertEqual(self.successResultOf(store.locations()), frozenset({location}))
        self.successResultOf(writer.abort())

    def test_locations_no_root(self) -> None:
        """A root that does not exist yet holds nothing."""
        self.root = self.root.child("missing")
        store = self.store()
        self.assertEqual(self.successResultOf(store.locations()), frozenset())
        self.assertEqual(self.successResultOf(store.discard_incomplete()), 0)

    def test_discard_after_crash(self) -> None:
        """
        After a crash, a new store on the same root removes every file left
        in incoming/ (and only those), and counts them.
        """
        store = self.store()
        kept = self.commit(store, b"committed")
        crashed = self.writer(store)
        crashed.write(b"half an image")
        leftover = self.root.child("incoming").child(
            new_image_id() + ".0123456789abcdef.partial"
        )
        leftover.setContent(b"from an earlier crash")
        self.root.child("incoming").child("subdir").makedirs()
        restarted = self.store()
        self.assertEqual(self.successResultOf(restarted.discard_incomplete()), 2)
        self.assertEqual(self.incoming(), ["subdir"])
        self.assertEqual(self.successResultOf(restarted.locations()), frozenset({kept}))
        self.assertEqual(self.read(restarted, kept).value(), b"committed")
        self.successResultOf(crashed.abort())

    def test_ping(self) -> None:
        """C{ping} succeeds on a writable directory and leaves nothing in it."""
        store = self.store()
        self.assertIsNone(self.successResultOf(store.ping()))
        self.assertEqual(self.root.listdir(), [])

    def test_ping_missing_root(self) -> None:
        """C{ping} fails with L{StoreError} when the root does not exist."""
        self.root = self.root.child("missing")
        failure = self.failureResultOf(self.store().ping(), StoreError)
        self.assertIn("does not exist", failure.value.message)

    def test_ping_root_is_file(self) -> None:
        """C{ping} fails with L{StoreError} when the root is not a directory."""
        self.root = self.root.child("file")
        self.root.setContent(b"x")
        failure = self.failureResultOf(self.store().ping(), StoreError)
        self.assertIn("not a directory", failure.value.message)
