"""
Tests for L{glance_tx.registry.sql.fresh}: image records answered without
the registry's runner while the SQLite file has not changed, and never
after a change, whoever made it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from glance_tx.errors import NotFound
from glance_tx.images import Image, ImageUpdate
from glance_tx.registry.sql import SQLRegistry, open_sql_registry
from glance_tx.registry.sql.fresh import FreshImages
from glance_tx.threads import SynchronousRunner
from tests.registry_conformance import make_image

T = TypeVar("T")


@define
class CountingRunner:
    """A synchronous runner that counts its calls and knows when it runs one."""

    calls: int = 0
    inside: bool = False

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        self.calls += 1
        self.inside = True
        try:
            return SynchronousRunner().run(f, *args, **kwargs)
        finally:
            self.inside = False

    def serial(self) -> CountingRunner:
        return self


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


def open_registry(url: str, runner: Any) -> SQLRegistry:
    d = Deferred.fromCoroutine(open_sql_registry(url, runner))
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
        self.runner = CountingRunner()
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

    def test_only_data_version_outside_the_runner(self) -> None:
        """
        The one statement run outside the runner (on the reactor thread)
        is the probe's PRAGMA data_version; the probe is opened in it.
        """
        outside: list[str] = []
        fresh = self.registry._fresh
        assert fresh is not None
        fresh.close()
        connect = fresh.connect

        def traced() -> sqlite3.Connection:
            self.assertTrue(self.runner.inside)
            connection = connect()
            connection.set_trace_callback(
                lambda statement: None if self.runner.inside else outside.append(statement)
            )
            return connection

        self.registry._fresh = FreshImages(fresh.path, self.registry._run, traced)
        self.kept()
        self.successResultOf(self.other.update(self.image.id, ImageUpdate(fields={"name": "two"})))
        self.assertEqual(self.get().name, "two")
        self.assertEqual(set(outside), {"PRAGMA data_version"})

    def test_memory_database_always_through_the_runner(self) -> None:
        """An in-memory database has no second connection to ask: every read is a runner call."""
        runner = CountingRunner()
        registry = open_registry("sqlite://", runner)
        self.addCleanup(lambda: self.successResultOf(registry.close()))
        image = self.successResultOf(registry.create(make_image()))
        calls = runner.calls
        for _ in range(4):
            self.successResultOf(registry.get(image.id))
        self.assertEqual(runner.calls, calls + 4)


class ProbeTests(SynchronousTestCase):
    """FreshImages's probe: what it answers when it cannot tell."""

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.make_database(self.path)
        self.runner = CountingRunner()
        self.fresh = FreshImages(self.path, self.runner.run)
        self.addCleanup(self.fresh.close)
        self.image = make_image()

    def make_database(self, path: str) -> None:
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("CREATE TABLE t (x)")
        connection.close()

    def kept(self) -> None:
        self.assertIsNone(self.fresh.version())  # opens the probe
        version = self.fresh.version()
        assert version is not None
        self.fresh.keep(self.image, self.image.id, version)
        self.assertEqual(self.fresh.version(), version)
        self.assertIs(self.fresh.kept(self.image.id), self.image)

    def test_replaced_file(self) -> None:
        """
        The database file replaced (a backup restored) drops what was kept
        and the probe: it cannot see commits to the new file. A new probe
        opens on the new file.
        """
        self.kept()
        other = self.path + ".restored"
        self.make_database(other)
        os.replace(other, self.path)
        self.assertIsNone(self.fresh.version())
        self.assertIsNone(self.fresh.kept(self.image.id))
        self.assertIsNone(self.fresh.version())  # the new probe opens
        self.assertIsNotNone(self.fresh.version())

    def test_file_gone(self) -> None:
        """No file: cannot tell (read through the pool, which reports it)."""
        self.kept()
        os.rename(self.path, self.path + ".away")
        for _ in range(3):
            self.assertIsNone(self.fresh.version())
        self.assertIsNone(self.fresh.kept(self.image.id))

    def test_locked_database_answers_at_once(self) -> None:
        """
        A database another connection holds exclusively: the probe cannot
        tell, and says so at once (busy timeout 0), not after a wait. (In
        WAL mode, as the registry runs, every open connection holds a
        shared lock, so no one can; a rollback-journal file shows the
        probe's timeout.)
        """
        self.fresh.close()
        self.path = os.path.abspath(self.mktemp())
        setup = sqlite3.connect(self.path, isolation_level=None)
        setup.execute("CREATE TABLE t (x)")
        setup.close()
        self.fresh = FreshImages(self.path, self.runner.run)
        self.kept()
        holder = sqlite3.connect(self.path, isolation_level=None)
        self.addCleanup(holder.close)
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("INSERT INTO t VALUES (1)")
        started = time.monotonic()
        self.assertIsNone(self.fresh.version())
        self.assertLess(time.monotonic() - started, 0.5)
        self.assertIsNone(self.fresh.kept(self.image.id))
        holder.execute("COMMIT")
        self.assertIsNone(self.fresh.version())  # the probe opens again
        self.assertIsNotNone(self.fresh.version())

    def test_probe_failure_reopens(self) -> None:
        """A probe that fails is dropped, with what was kept, and opened again."""
        self.kept()
        probe = self.fresh._probe
        assert probe is not None
        probe.close()
        self.assertIsNone(self.fresh.version())
        self.assertIsNone(self.fresh.kept(self.image.id))
        self.assertIsNone(self.fresh.version())
        self.assertIsNotNone(self.fresh.version())

    def test_new_probe_versions_not_confused(self) -> None:
        """
        A record read at a version of one probe is not kept by the next
        (whose data_version counts afresh and may give the same number).
        """
        self.assertIsNone(self.fresh.version())
        version = self.fresh.version()
        assert version is not None
        probe = self.fresh._probe
        assert probe is not None
        probe.close()
        self.assertIsNone(self.fresh.version())
        self.assertIsNone(self.fresh.version())
        self.assertNotEqual(self.fresh.version(), version)
        self.fresh.keep(self.image, self.image.id, version)
        self.assertIsNone(self.fresh.kept(self.image.id))

    def test_closed(self) -> None:
        """Closed: nothing kept, the probe closed on the runner, none opened again."""
        self.kept()
        calls = self.runner.calls
        self.fresh.close()
        self.assertEqual(self.runner.calls, calls + 1)
        self.assertIsNone(self.fresh.version())
        self.assertIsNone(self.fresh.kept(self.image.id))
        self.assertEqual(self.runner.calls, calls + 1)
