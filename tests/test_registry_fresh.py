"""
Tests for L{glance_tx.registry.sql.fresh}: image records answered without
the registry's runner while the SQLite file has not changed, and never
after a change, whoever made it.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.task import deferLater
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from glance_tx.errors import NotFound
from glance_tx.images import Image, ImageUpdate
from glance_tx.registry.sql import SQLRegistry, open_sql_registry
from glance_tx.registry.sql import fresh as fresh_module
from glance_tx.registry.sql.fresh import (
    FRESH_KEPT,
    IN_IGNORED,
    IN_MODIFY,
    IN_Q_OVERFLOW,
    FreshImages,
    Watch,
    open_watch,
)
from glance_tx.threads import SynchronousRunner, ThreadPoolRunner
from tests.fakes import RecordingRunner
from tests.registry_conformance import make_image

T = TypeVar("T")


@define
class LateRunner:
    """Runs each call at once, and answers it only when told (L{deliver})."""

    answers: list[tuple[Deferred[Any], Deferred[Any]]] = field(factory=list)

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        late: Deferred[T] = Deferred()
        self.answers.append((SynchronousRunner().run(f, *args, **kwargs), late))
        return late

    def serial(self) -> LateRunner:
        return self

    def deliver(self, index: int) -> None:
        done, late = self.answers[index]
        done.chainDeferred(late)


@define
class CommittingRunner:
    """
    A synchronous runner that, once armed, has another connection commit
    C{statement} right after its next call ran: a commit landing while a
    read is on the pool.
    """

    path: str
    statement: str | None = None

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        d = SynchronousRunner().run(f, *args, **kwargs)
        statement, self.statement = self.statement, None
        if statement is not None:
            commit(self.path, statement)
        return d

    def serial(self) -> CommittingRunner:
        return self


@define
class FakeFDReactor:
    """The IReactorFDSet calls FreshImages makes: readers added and removed."""

    readers: list[Any] = field(factory=list)

    def addReader(self, reader: Any) -> None:
        self.readers.append(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.remove(reader)


def commit(path: str, statement: str, journal: str | None = None) -> None:
    """Another process's (node's) commit: a connection of its own, then closed."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        if journal is not None:
            connection.execute(f"PRAGMA journal_mode = {journal}")
        connection.execute(statement)
    finally:
        connection.close()


@contextmanager
def no_blocking_calls(test: SynchronousTestCase) -> Iterator[list[str]]:
    """
    Fail any os.stat/lstat/open on this thread, and record every call of a
    sqlite3 connection's or cursor's method made on it.
    """
    calls: list[str] = []
    me = threading.get_ident()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "c_call" and threading.get_ident() == me:
            owner = getattr(arg, "__self__", None)
            if isinstance(owner, (sqlite3.Connection, sqlite3.Cursor)):
                calls.append(arg.__name__)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"file call on the calling thread: {args}")

    for name in ("stat", "lstat", "open"):
        test.patch(os, name, refuse)
    sys.setprofile(profile)
    try:
        yield calls
    finally:
        sys.setprofile(None)


def open_registry(url: str, runner: Any, reactor: Any = None) -> SQLRegistry:
    d = Deferred.fromCoroutine(open_sql_registry(url, runner, reactor=reactor))
    box: list[Any] = []
    d.addBoth(box.append)
    if not isinstance(box[0], SQLRegistry):
        box[0].raiseException()
    registry: SQLRegistry = box[0]
    return registry


class FreshReadTests(SynchronousTestCase):
    """SQLRegistry.get on a SQLite file, two registries sharing it as two nodes would."""

    def setUp(self) -> None:
        self.url = f"sqlite:///{os.path.abspath(self.mktemp())}"
        self.runner = RecordingRunner()
        self.registry = self.open(self.runner)
        #: Another API node (or worker) on the same database.
        self.other = self.open(SynchronousRunner())
        self.image = self.successResultOf(self.registry.create(make_image(name="one")))

    def open(self, runner: Any) -> SQLRegistry:
        registry = open_registry(self.url, runner)
        self.addCleanup(lambda: self.successResultOf(registry.close()))
        return registry

    def get(self, registry: SQLRegistry | None = None) -> Image:
        return self.successResultOf((registry or self.registry).get(self.image.id))

    def kept(self) -> Image:
        """Read until the record is kept; then a read costs no runner call."""
        for _ in range(3):
            self.get()
        calls = self.runner.calls
        image = self.get()
        self.assertEqual(self.runner.calls, calls)
        return image

    def test_unchanged_record_answered_without_the_runner(self) -> None:
        """
        Once read at a version of the database, a record is answered
        again, the same object, with no runner call while nothing commits.
        """
        first = self.kept()
        calls = self.runner.calls
        for _ in range(5):
            self.assertIs(self.get(), first)
        self.assertEqual(self.runner.calls, calls)
        self.assertEqual(first.name, "one")

    def test_own_write_seen(self) -> None:
        """A change made through this registry is read at the next GET."""
        self.kept()
        self.successResultOf(self.registry.update(self.image.id, ImageUpdate(fields={"name": "two"})))
        self.assertEqual(self.get().name, "two")

    def test_other_nodes_writes_seen(self) -> None:
        """
        Changes committed by another connection -- another node's update,
        tag, unrelated image, delete -- are each read at the next GET here.
        """
        self.kept()
        self.successResultOf(self.other.update(self.image.id, ImageUpdate(fields={"name": "two"})))
        self.assertEqual(self.get().name, "two")
        self.kept()
        self.successResultOf(self.other.add_tag(self.image.id, "t"))
        self.assertEqual(list(self.get().tags), ["t"])
        kept = self.kept()
        calls = self.runner.calls
        self.successResultOf(self.other.create(make_image()))
        self.assertEqual(self.get(), kept)
        self.assertGreater(self.runner.calls, calls)
        self.kept()
        self.successResultOf(self.other.delete(self.image.id))
        self.failureResultOf(self.registry.get(self.image.id), NotFound)

    def test_deleted_record_kept_only_for_include_deleted(self) -> None:
        """A deleted record read with include_deleted is still a 404 without it."""
        self.successResultOf(self.other.delete(self.image.id))
        for _ in range(3):
            deleted = self.successResultOf(self.registry.get(self.image.id, include_deleted=True))
        self.assertTrue(deleted.deleted)
        self.failureResultOf(self.registry.get(self.image.id), NotFound)

    def test_record_read_before_a_change_not_kept(self) -> None:
        """
        A read that ran before another node's commit, but whose answer
        comes back after this registry saw the commit, is not kept: only
        a read handed to the runner at the version now seen is.
        """
        self.kept()
        late = LateRunner()
        self.registry.runner = late  # type: ignore[assignment]
        self.addCleanup(setattr, self.registry, "runner", self.runner)
        self.successResultOf(self.other.update(self.image.id, ImageUpdate(fields={"name": "two"})))
        before = self.registry.get(self.image.id)  # reads "two" now
        self.successResultOf(self.other.update(self.image.id, ImageUpdate(fields={"name": "three"})))
        after = self.registry.get(self.image.id)  # reads "three" now
        late.deliver(1)
        late.deliver(0)
        self.assertEqual(self.successResultOf(before).name, "two")
        self.assertEqual(self.successResultOf(after).name, "three")
        self.assertEqual(self.get().name, "three")

    def test_plain_connection_commit_seen(self) -> None:
        """
        A commit by a sqlite3 connection of another program (another node
        without glance-tx's code) on the file, in the registry's WAL mode,
        is read at the next GET, not the kept record.
        """
        self.kept()
        path = self.registry._fresh.path  # type: ignore[union-attr]
        commit(path, f"UPDATE images SET name = 'two' WHERE id = '{self.image.id}'")
        self.assertEqual(self.get().name, "two")

    def test_commit_during_the_read_not_kept(self) -> None:
        """
        A commit that lands while a read is on the pool makes that read's
        answer not kept: the next GET reads again, and sees it.
        """
        self.kept()
        path = self.registry._fresh.path  # type: ignore[union-attr]
        runner = CommittingRunner(path)
        self.registry.runner = runner  # type: ignore[assignment]
        self.addCleanup(setattr, self.registry, "runner", self.runner)
        commit(path, "UPDATE images SET min_disk = 1")  # the kept record dropped
        runner.statement = f"UPDATE images SET name = 'two' WHERE id = '{self.image.id}'"
        self.assertEqual(self.get().name, "one")  # read before the commit
        self.assertEqual(self.get().name, "two")

    def test_kept_get_touches_no_file_nor_database(self) -> None:
        """
        A kept record is answered with no runner call, no sqlite3 call
        and no os.stat/open on the calling thread (the reactor's).
        """
        kept = self.kept()
        calls = self.runner.calls
        with no_blocking_calls(self) as sqlite_calls:
            for _ in range(3):
                self.assertIs(self.get(), kept)
        self.assertEqual(sqlite_calls, [])
        self.assertEqual(self.runner.calls, calls)

    def test_many_registries(self) -> None:
        """
        200 registries opened and closed in turn: each closes its inotify
        instance (the per-user limit is 128 by default).
        """
        for _ in range(200):
            runner = RecordingRunner()
            registry = open_registry(self.url, runner)
            for _ in range(3):
                self.successResultOf(registry.get(self.image.id))
            fresh = registry._fresh
            assert fresh is not None
            self.assertIsNotNone(fresh._watch)
            self.successResultOf(registry.close())
            self.assertIsNone(fresh._watch)

    def test_memory_database_always_through_the_runner(self) -> None:
        """An in-memory database has no second connection to ask: every read is a runner call."""
        runner = RecordingRunner()
        registry = open_registry("sqlite://", runner)
        self.addCleanup(lambda: self.successResultOf(registry.close()))
        image = self.successResultOf(registry.create(make_image()))
        calls = runner.calls
        for _ in range(4):
            self.successResultOf(registry.get(image.id))
        self.assertEqual(runner.calls, calls + 4)




class WatchTests(SynchronousTestCase):
    """FreshImages over a real inotify watch of a database's directory."""

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.make_database(self.path)
        self.runner = RecordingRunner()
        self.reactor = FakeFDReactor()
        self.fresh = FreshImages(self.path, self.runner.run, self.reactor)  # type: ignore[arg-type]
        self.addCleanup(self.fresh.close)
        self.image = make_image()

    def make_database(self, path: str, journal: str = "WAL") -> None:
        commit(path, "CREATE TABLE t (x)", journal)

    def kept(self) -> int:
        if self.fresh._watch is None:
            self.assertIsNone(self.fresh.version())  # sets the watch up
        version = self.fresh.version()
        assert version is not None
        self.fresh.keep(self.image, self.image.id, version)
        self.assertEqual(self.fresh.version(), version)
        self.assertIs(self.fresh.kept(self.image.id), self.image)
        return version

    def assertDropped(self) -> None:
        self.fresh.version()
        self.assertIsNone(self.fresh.kept(self.image.id))

    def test_wal_commit(self) -> None:
        """A commit in WAL mode (to the -wal file) drops what was kept."""
        self.kept()
        commit(self.path, "INSERT INTO t VALUES (1)")
        self.assertDropped()
        self.kept()

    def test_rollback_journal_commit(self) -> None:
        """A commit with a rollback journal (to the file itself) drops what was kept."""
        self.path = os.path.abspath(self.mktemp())
        self.make_database(self.path, "DELETE")
        self.fresh = FreshImages(self.path, self.runner.run)
        self.addCleanup(self.fresh.close)
        self.kept()
        commit(self.path, "INSERT INTO t VALUES (1)")
        self.assertDropped()

    def test_reads_keep(self) -> None:
        """
        Another connection reading the file and closing changes nothing,
        while a connection keeps the database open (as the registry's pool
        does: the last one out checkpoints and removes the -wal).
        """
        holder = sqlite3.connect(self.path)
        self.addCleanup(holder.close)
        holder.execute("SELECT * FROM t").fetchall()
        self.kept()
        connection = sqlite3.connect(self.path)
        connection.execute("SELECT * FROM t").fetchall()
        connection.close()
        self.fresh.version()
        self.assertIs(self.fresh.kept(self.image.id), self.image)

    def test_other_files_of_the_directory(self) -> None:
        """Writes to other files of the directory keep the records."""
        self.kept()
        with open(self.path + ".other", "w") as f:
            f.write("x")
        self.fresh.version()
        self.assertIs(self.fresh.kept(self.image.id), self.image)

    def test_replaced_file(self) -> None:
        """The database file replaced (a backup restored) drops what was kept."""
        self.kept()
        other = self.path + ".restored"
        self.make_database(other)
        os.replace(other, self.path)
        self.assertDropped()

    def test_file_gone(self) -> None:
        """The database file removed drops what was kept."""
        self.kept()
        os.rename(self.path, self.path + ".away")
        self.assertDropped()

    def test_directory_gone(self) -> None:
        """
        The watched directory moved away: a change, and a new watch (of
        the path's directory, again) is set up.
        """
        self.kept()
        directory = os.path.dirname(self.path)
        moved = directory + ".moved"
        os.rename(directory, moved)
        self.addCleanup(os.rename, moved, directory)
        self.assertIsNone(self.fresh.version())
        self.assertIsNone(self.fresh.kept(self.image.id))

    def test_commit_between_version_and_keep(self) -> None:
        """A record read at a version a commit has since passed is not kept."""
        version = self.kept()
        commit(self.path, "INSERT INTO t VALUES (1)")
        other = make_image()
        self.fresh.keep(other, other.id, version)
        self.assertIsNone(self.fresh.kept(other.id))

    def test_least_recently_used_goes_first(self) -> None:
        """
        Full, the record used longest ago goes, not every one: a walk over
        more images than are kept leaves the one read again and again.
        """
        version = self.kept()
        others = [make_image() for _ in range(FRESH_KEPT)]
        for other in others:
            self.fresh.keep(other, other.id, version)
            self.assertIs(self.fresh.kept(self.image.id), self.image)
        self.assertIsNone(self.fresh.kept(others[0].id))
        self.assertIs(self.fresh.kept(others[1].id), others[1])
        self.assertIs(self.fresh.kept(others[-1].id), others[-1])

    def test_reactor_reads_events(self) -> None:
        """
        The watch's descriptor is given to the reactor, which reads the
        events as they come (so the queue cannot fill while idle).
        """
        self.kept()
        [reader] = self.reactor.readers
        verifyObject(IReadDescriptor, reader)
        self.assertEqual(reader.fileno(), self.fresh._watch.fd)  # type: ignore[union-attr]
        commit(self.path, "INSERT INTO t VALUES (1)")
        reader.doRead()
        self.assertIsNone(self.fresh.kept(self.image.id))
        self.assertIsNone(self.fresh._watch.changed() or None)  # type: ignore[union-attr]

    def test_close_releases_the_descriptor(self) -> None:
        """Closed: the reader removed, the descriptor closed, nothing kept or watched again."""
        self.kept()
        fd = self.fresh._watch.fd  # type: ignore[union-attr]
        self.fresh.close()
        self.assertEqual(self.reactor.readers, [])
        self.assertRaises(OSError, os.fstat, fd)
        self.assertIsNone(self.fresh.version())
        self.assertIsNone(self.fresh.kept(self.image.id))
        self.assertIsNone(self.fresh._watch)

    def test_closed_while_opening(self) -> None:
        """A watch that comes back after close is closed at once."""
        before = set(os.listdir("/proc/self/fd"))
        late = LateRunner()
        self.fresh = FreshImages(self.path, late.run, self.reactor)  # type: ignore[arg-type]
        self.assertIsNone(self.fresh.version())
        self.assertNotEqual(set(os.listdir("/proc/self/fd")), before)
        self.fresh.close()
        late.deliver(0)
        self.assertIsNone(self.fresh._watch)
        self.assertEqual(self.reactor.readers, [])
        self.assertEqual(set(os.listdir("/proc/self/fd")), before)

    def test_no_inotify(self) -> None:
        """
        No inotify (init refused, as at the per-user limit): logged once,
        and every read goes to the pool; the watch is not tried again.
        """

        def refused(path: str) -> Watch:
            raise OSError(24, "inotify_init1: Too many open files")

        self.fresh = FreshImages(self.path, self.runner.run, watch=refused)
        logged: list[Any] = []
        self.patch(fresh_module.log, "info", lambda *a, **kw: logged.append(kw))
        calls = self.runner.calls
        for _ in range(4):
            self.assertIsNone(self.fresh.version())
        self.assertEqual(self.runner.calls, calls + 1)
        self.assertEqual(len(logged), 1)
        self.assertIn("Too many open files", logged[0]["reason"])

    def test_no_inotify_registry(self) -> None:
        """A registry without inotify reads every record through the runner."""

        def refused(path: str) -> Watch:
            raise OSError(38, "no inotify")

        self.patch(FreshImages, "__init__", _with_watch(FreshImages.__init__, refused))
        url = f"sqlite:///{os.path.abspath(self.mktemp())}"
        registry = open_registry(url, self.runner)
        self.addCleanup(lambda: self.successResultOf(registry.close()))
        image = self.successResultOf(registry.create(make_image()))
        for _ in range(3):
            self.successResultOf(registry.get(image.id))
        calls = self.runner.calls
        for _ in range(4):
            self.successResultOf(registry.get(image.id))
        self.assertEqual(self.runner.calls, calls + 4)

    def test_missing_directory(self) -> None:
        """add_watch refused (no such directory): OSError, and no descriptor left open."""
        before = set(os.listdir("/proc/self/fd"))
        self.assertRaises(OSError, open_watch, "/nonexistent/glance.sqlite")
        self.assertEqual(set(os.listdir("/proc/self/fd")), before)


def _with_watch(init: Callable[..., None], watch: Callable[[str], Watch]) -> Callable[..., None]:
    def patched(self: FreshImages, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.watch = watch

    return patched


class EventTests(SynchronousTestCase):
    """Watch.changed over hand-made inotify events (in a pipe)."""

    def setUp(self) -> None:
        read, self.write = os.pipe()
        os.set_blocking(read, False)
        self.watch = Watch(read, frozenset({b"db", b"db-wal", b"db-journal"}))
        self.addCleanup(self.watch.close)
        self.addCleanup(os.close, self.write)

    def event(self, mask: int, name: bytes = b"") -> None:
        padded = name + b"\0" * (16 - len(name)) if name else b""
        os.write(self.write, struct.pack("iIII", 1, mask, 0, len(padded)) + padded)

    def test_names(self) -> None:
        """Events of the database's names are a change; of others, not."""
        self.assertFalse(self.watch.changed())
        self.event(IN_MODIFY, b"db-shm")
        self.event(IN_MODIFY, b"other")
        self.assertFalse(self.watch.changed())
        self.event(IN_MODIFY, b"other")
        self.event(IN_MODIFY, b"db-wal")
        self.event(IN_MODIFY, b"other")
        self.assertTrue(self.watch.changed())
        self.assertFalse(self.watch.changed())
        self.assertFalse(self.watch.gone)

    def test_overflow(self) -> None:
        """An overflowed queue (events lost) is a change, and the watch is set up again."""
        self.event(IN_Q_OVERFLOW)
        self.assertTrue(self.watch.changed())
        self.assertTrue(self.watch.gone)

    def test_ignored(self) -> None:
        """The watch removed by the kernel: a change, and gone."""
        self.event(IN_IGNORED)
        self.assertTrue(self.watch.changed())
        self.assertTrue(self.watch.gone)


class ReactorTests(TestCase):
    """A registry on a real thread pool and reactor: events read as they come."""

    async def test_events_read_by_the_reactor(self) -> None:
        """
        Another connection's commit is read by the reactor with no GET
        asking (the kept record dropped), and closing the registry removes
        the reader (trial fails a test that leaves one).
        """
        from twisted.internet import reactor

        pool = ThreadPool(minthreads=1, maxthreads=2, name="ReactorTests")
        pool.start()
        self.addCleanup(pool.stop)
        runner = ThreadPoolRunner(cast(Any, reactor), pool)
        path = os.path.abspath(self.mktemp())
        registry = await open_sql_registry(f"sqlite:///{path}", runner, reactor=cast(Any, reactor))
        try:
            image = await registry.create(make_image(name="one"))
            fresh = registry._fresh
            assert fresh is not None
            for _ in range(100):  # the watch is set up on the pool meanwhile
                await registry.get(image.id)
                if fresh.kept(image.id) is not None:
                    break
                await deferLater(cast(Any, reactor), 0.01, lambda: None)
            self.assertIsNotNone(fresh.kept(image.id))
            await runner.run(commit, path, "UPDATE images SET name = 'two'")
            for _ in range(100):
                if fresh.kept(image.id) is None:
                    break
                await deferLater(cast(Any, reactor), 0.01, lambda: None)
            self.assertIsNone(fresh.kept(image.id))
            self.assertEqual((await registry.get(image.id)).name, "two")
        finally:
            await registry.close()
        self.assertIsNone(fresh._watch)
