"""
Tests for L{glance_tx.registry.sql}: the conformance suite on SQLite (in
memory and synchronous; file-backed on a real thread pool) and PostgreSQL,
the migrations, the rule that no database work happens on the calling
(reactor) thread, and what the SQL provider adds to the contract.

PostgreSQL tests need C{GLANCE_TX_TEST_POSTGRES_URL}, an SQLAlchemy URL of a
server where that user may CREATE DATABASE (for example
C{postgresql+psycopg://postgres@127.0.0.1:54329/postgres}). The conformance
tests share one new database per test process (emptied before each test),
each migration test gets a new database of its own; all are dropped after.
Without the variable these tests are skipped, except under C{CI=true},
where they fail.
"""

from __future__ import annotations

import atexit
import itertools
import os
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import psycopg
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from attrs import define, evolve, field
from sqlalchemy import (
    Engine,
    column,
    create_engine,
    event,
    insert,
    inspect,
    table,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import Pool
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from glance_tx.errors import BadRequest, NotFound, ServiceUnavailable
from glance_tx.images import (
    ACTIVE,
    QUEUED,
    Comparison,
    Image,
    ImageQuery,
    ImageUpdate,
    Location,
    Viewer,
)
from glance_tx.registry.kept import Kept
from glance_tx.registry.schema import UTCDateTime, metadata
from glance_tx.registry.sql import SQLRegistry, open_sql_registry
from glance_tx.registry.sql.engine import (
    SCHEMA_REVISION,
    create_registry_engine,
    current_revision,
    downgrade,
    head_revision,
    upgrade,
)
from glance_tx.registry.sql.image_read import SELECT_IMAGE, Records
from glance_tx.registry.sql.page_read import Compiled, shape_key
from glance_tx.registry.sql.pg_page_read import PostgresPageReader, page_statement
from glance_tx.registry.sql.query import sort_keys
from glance_tx.threads import SynchronousRunner, ThreadPoolRunner
from tests.fakes import ManualRunner, RecordingRunner
from tests.metadef_conformance import MetadefConformanceMixin
from tests.registry_conformance import T0, RegistryConformanceMixin, make_image

T = TypeVar("T")

POSTGRES_ENV = "GLANCE_TX_TEST_POSTGRES_URL"
TABLES = {
    "images",
    "image_properties",
    "image_locations",
    "image_tags",
    "image_members",
    "upload_leases",
    "node_claims",
    "image_writes",
    "metadef_namespaces",
    "metadef_definitions",
    "metadef_resource_types",
    "metadef_namespace_resource_types",
    "tasks",
}
HEAD = SCHEMA_REVISION


def sync_open(url: str | URL, **kwargs: Any) -> SQLRegistry:
    """Open a registry on a synchronous runner (fires at once)."""
    d = Deferred.fromCoroutine(open_sql_registry(url, SynchronousRunner(), **kwargs))
    box: list[Any] = []
    d.addBoth(box.append)
    result = box[0]
    if not isinstance(result, SQLRegistry):
        result.raiseException()
    return result


# -- PostgreSQL fixtures ---------------------------------------------------------


def postgres_admin_url(case: SynchronousTestCase) -> URL:
    """
    The server the PostgreSQL tests use. Missing: skip, or fail under CI,
    where a missing component must not pass as a skip.
    """
    url = os.environ.get(POSTGRES_ENV)
    problem = None
    if not url:
        problem = f"{POSTGRES_ENV} is not set"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            problem = "psycopg is not installed"
    if problem is not None:
        if os.environ.get("CI") == "true":
            case.fail(f"PostgreSQL tests cannot run under CI: {problem}")
        raise SkipTest(f"PostgreSQL tests not run: {problem}")
    assert url is not None
    return make_url(url)


def create_database(admin_url: URL) -> URL:
    """Create an empty database on the server; return its URL. Blocking."""
    name = f"glance_tx_test_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        admin.dispose()
    return admin_url.set(database=name)


def drop_database(admin_url: URL, url: URL) -> None:
    """Drop a database made by L{create_database}, connections and all."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(
                f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'
            )
    finally:
        admin.dispose()


_shared_databases: dict[str, URL] = {}
_shared_lock = threading.Lock()


def shared_database(admin_url: URL) -> URL:
    """
    One database per test process for the conformance tests (creating one
    per test would cost a third of a second each); each test empties it
    first. Dropped when the process exits. Blocking.
    """
    key = admin_url.render_as_string(hide_password=False)
    with _shared_lock:
        if key not in _shared_databases:
            url = create_database(admin_url)
            _shared_databases[key] = url
            atexit.register(drop_database, admin_url, url)
        return _shared_databases[key]


def empty_tables(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "TRUNCATE tasks, metadef_namespace_resource_types, metadef_definitions,"
            " metadef_resource_types, metadef_namespaces,"
            " image_writes, node_claims, upload_leases, image_members, image_tags, image_locations, image_properties,"
            " images"
        )


# -- thread checking ---------------------------------------------------------------


@define
class OffThreadCheck:
    """
    Records every connection opened and statement executed, by any engine,
    on the main (reactor) thread: with a real thread pool there must be none.
    """

    offences: list[str] = field(factory=list)
    statements: int = 0

    def install(self, case: SynchronousTestCase) -> None:
        event.listen(Engine, "before_cursor_execute", self._execute)
        event.listen(Pool, "connect", self._connect)
        case.addCleanup(self._uninstall)

    def _uninstall(self) -> None:
        event.remove(Engine, "before_cursor_execute", self._execute)
        event.remove(Pool, "connect", self._connect)

    def _check(self, what: str) -> None:
        if threading.current_thread() is threading.main_thread():
            self.offences.append(what)

    def _execute(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements += 1
        self._check(statement)

    def _connect(self, dbapi_connection: Any, record: Any) -> None:
        self._check("connect")


# -- conformance -----------------------------------------------------------------


class SQLiteMemoryConformanceTests(RegistryConformanceMixin, SynchronousTestCase):
    """The contract, on in-memory SQLite with a synchronous runner."""

    def make_registry(self) -> SQLRegistry:
        registry = sync_open("sqlite://")
        self.addCleanup(lambda: self.successResultOf(registry.close()))
        return registry


class _ThreadPoolHarness(TestCase):
    """A real thread pool on trial's reactor, and a check that it is used."""

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.off_thread = OffThreadCheck()
        self.off_thread.install(self)
        self.addCleanup(self._check_threads)
        self.pool = ThreadPool(minthreads=1, maxthreads=6, name=type(self).__name__)
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.runner = ThreadPoolRunner(cast(IReactorFromThreads, reactor), self.pool)

    def _check_threads(self) -> None:
        self.assertEqual(self.off_thread.offences, [])
        self.assertGreater(self.off_thread.statements, 0)


class SQLiteFileThreadPoolConformanceTests(RegistryConformanceMixin, _ThreadPoolHarness):
    """
    The contract, on a SQLite file (WAL) through a real thread pool, with
    no connection or statement on the reactor thread; the reactor reads
    the file's change events (and trial checks that close removed them).
    """

    async def make_registry(self) -> SQLRegistry:
        from twisted.internet import reactor

        url = f"sqlite:///{os.path.abspath(self.mktemp())}"
        registry = await open_sql_registry(url, self.runner, reactor=cast(Any, reactor))
        self.addCleanup(registry.close)
        return registry


class PostgreSQLConformanceTests(RegistryConformanceMixin, _ThreadPoolHarness):
    """The contract, on PostgreSQL through a real thread pool."""

    def setUp(self) -> None:
        self.admin_url = postgres_admin_url(self)
        super().setUp()

    async def make_registry(self) -> SQLRegistry:
        url = await self.runner.run(shared_database, self.admin_url)
        registry = await open_sql_registry(url, self.runner)
        self.addCleanup(registry.close)
        await self.runner.run(empty_tables, registry.engine)
        return registry


class PostgreSQLEngineTests(SynchronousTestCase):
    """How create_registry_engine configures PostgreSQL connections."""

    def test_statements_are_not_prepared_server_side(self) -> None:
        """
        Statements run repeatedly are never prepared on the server, so
        PostgreSQL plans each listing for its values instead of switching
        to a generic plan.
        """
        engine = create_registry_engine(postgres_admin_url(self))
        self.addCleanup(engine.dispose)
        with engine.connect() as connection:
            for n in range(12):
                connection.execute(text("SELECT :n"), {"n": n}).scalar_one()
            prepared = connection.exec_driver_sql(
                "SELECT count(*) FROM pg_prepared_statements"
            ).scalar_one()
        self.assertEqual(prepared, 0)


# -- migrations ----------------------------------------------------------------


def index_names(engine: Engine) -> set[str]:
    """Every index in the database, read from the catalogue (expression indexes too)."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            sql = "SELECT name FROM sqlite_master WHERE type = 'index'"
        else:
            sql = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
        return set(connection.exec_driver_sql(sql).scalars())


def insert_at_0001(connection: Any, stored: list[Image]) -> None:
    """
    Write images into tables as revision 0001 made them, named here column
    by column (not through glance_tx.registry.schema, which follows head).
    """
    images_0001 = table(
        "images",
        *(
            column(name, UTCDateTime) if name.endswith("_at") else column(name)
            for name in (
                "id name status size virtual_size checksum os_hash_algo"
                " os_hash_value disk_format container_format visibility owner"
                " min_ram min_disk protected os_hidden created_at updated_at"
                " deleted_at deleted"
            ).split()
        ),
    )
    properties = table(
        "image_properties", column("image_id"), column("name"), column("value")
    )
    locations = table(
        "image_locations", column("image_id"), column("position"), column("url")
    )
    tags = table("image_tags", column("image_id"), column("value"))
    for image in stored:
        connection.execute(
            insert(images_0001),
            {c.name: getattr(image, c.name) for c in images_0001.columns},
        )
        connection.execute(
            insert(properties),
            [
                {"image_id": image.id, "name": k, "value": v}
                for k, v in image.properties.items()
            ],
        )
        connection.execute(
            insert(locations),
            [
                {"image_id": image.id, "position": n, "url": location.url}
                for n, location in enumerate(image.locations)
            ],
        )
        connection.execute(
            insert(tags), [{"image_id": image.id, "value": t} for t in image.tags]
        )


class MigrationTestsMixin:
    """Migration behaviour common to every backend."""

    def make_engine(self) -> Engine:
        raise NotImplementedError

    def test_fresh_database_is_migrated_to_head(self: Any) -> None:
        """
        Upgrading an empty database creates every table and index and
        records the head revision in alembic_version.
        """
        engine = self.make_engine()
        with engine.connect() as connection:
            self.assertIsNone(current_revision(connection))
        upgrade(engine)
        self.assertEqual(
            set(inspect(engine).get_table_names()), TABLES | {"alembic_version"}
        )
        declared = {
            index.name for table in metadata.tables.values() for index in table.indexes
        }
        self.assertTrue(declared <= index_names(engine), declared - index_names(engine))
        self.assertEqual(head_revision(), HEAD)
        with engine.connect() as connection:
            self.assertEqual(current_revision(connection), HEAD)
            rows = connection.execute(
                text("SELECT version_num FROM alembic_version")
            ).all()
        self.assertEqual([tuple(row) for row in rows], [(HEAD,)])

    def test_migrated_schema_matches_declared_tables(self: Any) -> None:
        """
        The schema the migrations build is the one glance_tx.registry.schema
        declares (columns, types, nullability, indexes, keys).
        """
        engine = self.make_engine()
        upgrade(engine)
        with engine.connect() as connection, warnings.catch_warnings():
            # Neither side can reflect the expression index; the test above
            # checks that it exists.
            warnings.simplefilter("ignore")
            context = MigrationContext.configure(
                connection, opts={"compare_type": True}
            )
            self.assertEqual(compare_metadata(context, metadata), [])

    def test_upgrade_again_keeps_data(self: Any) -> None:
        """
        Upgrading an up-to-date database (every start-up does) changes
        nothing: data stays, the version row stays single.
        """
        engine = self.make_engine()
        upgrade(engine)
        registry = SQLRegistry(engine, SynchronousRunner())
        image = self.successResultOf(registry.create(make_image(name="kept")))
        upgrade(engine)
        self.assertEqual(self.successResultOf(registry.get(image.id)), image)
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT version_num FROM alembic_version")
            ).all()
        self.assertEqual([tuple(row) for row in rows], [(HEAD,)])

    def test_upgrade_from_0001_keeps_data(self: Any) -> None:
        """
        A database at 0001 holding images (with properties, locations and
        tags) upgrades to head with every record intact; members can then
        be added and scope listings work. Downgrading back to 0001 drops the
        memberships and keeps the images.
        """
        engine = self.make_engine()
        upgrade(engine, "0001")
        self.assertNotIn("image_members", inspect(engine).get_table_names())
        stored = [
            make_image(
                name=f"old-{n}",
                status=ACTIVE,
                size=n * 100,
                visibility=["public", "shared"][n % 2],
                owner="owner",
                created_at=T0 + timedelta(seconds=n),
                properties={"os_distro": "cirros", "n": str(n)},
                locations=(f"file:///{n}/a", f"file:///{n}/b"),
                tags={"old", f"t{n}"},
            )
            for n in range(3)
        ]
        with engine.begin() as connection:
            insert_at_0001(connection, stored)
        upgrade(engine)
        with engine.connect() as connection:
            self.assertEqual(current_revision(connection), HEAD)
        self.assertTrue(
            {
                "ix_image_tags_value_image_id",
                "ix_image_members_member_id_status_image_id",
            }
            <= index_names(engine)
        )
        registry = SQLRegistry(engine, SynchronousRunner())
        for image in stored:
            self.assertEqual(self.successResultOf(registry.get(image.id)), image)
        shared = stored[1]
        self.successResultOf(registry.add_member(shared.id, "member"))
        self.successResultOf(registry.update_member(shared.id, "member", "accepted"))
        listed = self.successResultOf(
            registry.list(ImageQuery(viewer=Viewer("member"), tags=frozenset({"old"})))
        )
        self.assertEqual(
            {i.id for i in listed}, {stored[0].id, stored[2].id, shared.id}
        )
        downgrade(engine, "0001")
        self.assertNotIn("image_members", inspect(engine).get_table_names())
        self.assertNotIn("ix_image_tags_value_image_id", index_names(engine))
        with engine.connect() as connection:
            self.assertEqual(
                connection.execute(text("SELECT count(*) FROM image_tags")).scalar(), 6
            )
        upgrade(engine)
        self.assertEqual(self.successResultOf(registry.get(shared.id)), shared)
        self.assertEqual(self.successResultOf(registry.list_members(shared.id)), [])

    def test_upgrade_from_0002_locations_without_store(self: Any) -> None:
        """
        Locations stored before 0003 read back with no store id (the store
        map judges them by their URL); new ones keep theirs. Downgrading to
        0002 drops the store ids and keeps the URLs.
        """
        engine = self.make_engine()
        upgrade(engine, "0002")
        old = make_image(
            status=ACTIVE, locations=("file:///old/a", "file:///old/b"), properties={"p": "v"}, tags={"t"}
        )
        with engine.begin() as connection:
            insert_at_0001(connection, [old])
        upgrade(engine)
        registry = SQLRegistry(engine, SynchronousRunner())
        got = self.successResultOf(registry.get(old.id))
        self.assertEqual(got.locations, (Location("file:///old/a"), Location("file:///old/b")))
        new = self.successResultOf(
            registry.create(make_image(locations=(Location("s3://b/k", "bulk"),)))
        )
        self.assertEqual(
            self.successResultOf(registry.get(new.id)).locations, (Location("s3://b/k", "bulk"),)
        )
        downgrade(engine, "0002")
        self.assertNotIn(
            "store", {c["name"] for c in inspect(engine).get_columns("image_locations")}
        )
        with engine.connect() as connection:
            self.assertEqual(
                connection.execute(text("SELECT count(*) FROM image_locations")).scalar(), 3
            )

    def test_upgrade_from_0004_starts_every_image_at_version_1(self: Any) -> None:
        """
        Images stored before row versions (0004) are at version 1 after the
        upgrade and count on from there; a downgrade to 0004 drops the
        column and keeps the images.
        """
        engine = self.make_engine()
        upgrade(engine, "0004")
        stored = [
            make_image(
                name=f"old-{n}", properties={"n": str(n)}, locations=(f"file:///{n}",), tags={"t"}
            )
            for n in range(2)
        ]
        with engine.begin() as connection:
            insert_at_0001(connection, stored)
        upgrade(engine)
        registry = SQLRegistry(engine, SynchronousRunner())
        for image in stored:
            self.assertEqual(self.successResultOf(registry.get(image.id)).version, 1)
        updated = self.successResultOf(
            registry.update(stored[0].id, ImageUpdate(fields={"name": "new"}), expected_version=1)
        )
        self.assertEqual(updated.version, 2)
        downgrade(engine, "0004")
        self.assertNotIn("version", {c["name"] for c in inspect(engine).get_columns("images")})
        upgrade(engine)
        self.assertEqual(self.successResultOf(registry.get(stored[0].id)).name, "new")

    def test_upgrade_from_older_revision(self: Any) -> None:
        """
        A database at an older revision (here: base, the only one before
        0001, with the version table present but empty) is brought to head.
        """
        engine = self.make_engine()
        upgrade(engine)
        downgrade(engine, "base")
        self.assertEqual(set(inspect(engine).get_table_names()), {"alembic_version"})
        upgrade(engine)
        self.assertEqual(
            set(inspect(engine).get_table_names()), TABLES | {"alembic_version"}
        )
        with engine.connect() as connection:
            self.assertEqual(current_revision(connection), head_revision())


class SQLiteMigrationTests(MigrationTestsMixin, SynchronousTestCase):
    """Migrations on a SQLite file."""

    def make_engine(self) -> Engine:
        engine = create_registry_engine(f"sqlite:///{os.path.abspath(self.mktemp())}")
        self.addCleanup(engine.dispose)
        return engine

    def test_open_migrates_file_database_once(self) -> None:
        """
        Opening a registry on an existing file database migrates nothing
        and sees the data a previous registry stored there.
        """
        url = f"sqlite:///{os.path.abspath(self.mktemp())}"
        first = sync_open(url)
        image = self.successResultOf(first.create(make_image()))
        self.successResultOf(first.close())
        second = sync_open(url)
        self.addCleanup(lambda: self.successResultOf(second.close()))
        self.assertEqual(self.successResultOf(second.get(image.id)), image)

    def test_file_database_uses_wal_and_foreign_keys(self) -> None:
        """A file database is in WAL mode and enforces foreign keys."""
        registry = sync_open(f"sqlite:///{os.path.abspath(self.mktemp())}")
        self.addCleanup(lambda: self.successResultOf(registry.close()))
        with registry.engine.connect() as connection:
            self.assertEqual(
                connection.exec_driver_sql("PRAGMA journal_mode").scalar(), "wal"
            )
            self.assertEqual(
                connection.exec_driver_sql("PRAGMA foreign_keys").scalar(), 1
            )


    def test_schema_revision_is_the_head(self) -> None:
        """The revision start-up compares with is the migration scripts' head."""
        self.assertEqual(SCHEMA_REVISION, head_revision())

    def test_current_database_opens_without_alembic(self) -> None:
        """
        Opening a database already at the head does not import Alembic (it
        costs about 11 MiB of memory for the life of the server); opening
        a fresh one migrates it.
        """
        import subprocess
        import sys

        url = "sqlite:///" + os.path.abspath(self.mktemp())
        script = (
            "import asyncio, sys\n"
            "from twisted.internet.defer import Deferred\n"
            "from glance_tx.registry.sql import open_sql_registry\n"
            "from glance_tx.threads import SynchronousRunner\n"
            "d = Deferred.fromCoroutine(open_sql_registry(sys.argv[1], SynchronousRunner()))\n"
            "d.addCallback(lambda r: r.close())\n"
            "print('alembic' in sys.modules)\n"
        )
        runs = [
            subprocess.run(
                [sys.executable, "-c", script, url], capture_output=True, text=True, check=True
            ).stdout.strip()
            for _ in range(2)
        ]
        self.assertEqual(runs, ["True", "False"])

class PostgreSQLMigrationTests(MigrationTestsMixin, SynchronousTestCase):
    """Migrations on PostgreSQL, each test in a database of its own."""

    def make_engine(self) -> Engine:
        admin_url = postgres_admin_url(self)
        url = create_database(admin_url)
        self.addCleanup(drop_database, admin_url, url)
        engine = create_registry_engine(url)
        self.addCleanup(engine.dispose)
        return engine

    def test_concurrent_upgrades_serialize(self) -> None:
        """
        Two nodes starting at once on an empty database both succeed: the
        migration takes an advisory lock, so the second finds it done.
        """
        engine = self.make_engine()
        errors: list[BaseException] = []

        def migrate() -> None:
            try:
                upgrade(engine)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=migrate) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(errors, [])
        with engine.connect() as connection:
            self.assertEqual(current_revision(connection), head_revision())


# -- the reactor-thread rule -------------------------------------------------------


class RunnerOnlyTests(SynchronousTestCase):
    """All database work happens inside the runner, none on the caller's thread."""

    def test_every_statement_runs_inside_the_runner(self) -> None:
        """
        Opening, every IRegistry method and close touch the database only
        from inside runner.run.
        """
        runner = RecordingRunner()
        outside: list[str] = []
        executed: list[str] = []

        def execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            executed.append(statement)
            if not runner.inside:
                outside.append(statement)

        def connect(dbapi_connection: Any, record: Any) -> None:
            if not runner.inside:
                outside.append("connect")

        event.listen(Engine, "before_cursor_execute", execute)
        self.addCleanup(event.remove, Engine, "before_cursor_execute", execute)
        event.listen(Pool, "connect", connect)
        self.addCleanup(event.remove, Pool, "connect", connect)

        url = f"sqlite:///{os.path.abspath(self.mktemp())}"
        registry = self.successResultOf(
            Deferred.fromCoroutine(open_sql_registry(url, runner))
        )
        image = self.successResultOf(
            registry.create(make_image(locations=("file:///a",), properties={"p": "v"}))
        )
        self.successResultOf(registry.get(image.id))
        self.successResultOf(
            registry.list(ImageQuery(marker=image.id, properties={"p": "v"}))
        )
        self.successResultOf(
            registry.update(image.id, ImageUpdate(fields={"name": "n"}))
        )
        self.successResultOf(registry.all_locations())
        self.successResultOf(registry.ping())
        self.successResultOf(registry.add_tag(image.id, "t"))
        self.successResultOf(registry.remove_tag(image.id, "t"))
        self.successResultOf(registry.add_member(image.id, "b"))
        self.successResultOf(registry.get_member(image.id, "b"))
        self.successResultOf(registry.update_member(image.id, "b", "accepted"))
        self.successResultOf(registry.list_members(image.id))
        self.successResultOf(
            registry.list(
                ImageQuery(
                    viewer=Viewer("b"),
                    visibility="all",
                    tags=frozenset({"t"}),
                    comparisons=(Comparison("size", "gt", 1),),
                )
            )
        )
        self.successResultOf(registry.remove_member(image.id, "b"))
        self.successResultOf(registry.delete(image.id))
        self.successResultOf(registry.close())
        self.assertEqual(outside, [])
        self.assertGreater(len(executed), 10)
        self.assertGreaterEqual(runner.calls, 17)

    def test_nothing_happens_until_the_runner_runs(self) -> None:
        """
        Calling a registry method only queues work: the database is not
        touched and the Deferred has no result until the runner runs it.
        """
        registry = sync_open("sqlite://")
        self.addCleanup(lambda: self.successResultOf(registry.close()))
        manual = ManualRunner()
        self.addCleanup(setattr, registry, "runner", registry.runner)
        registry.runner = manual
        executed: list[str] = []

        def execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            executed.append(statement)

        event.listen(registry.engine, "before_cursor_execute", execute)
        self.addCleanup(event.remove, registry.engine, "before_cursor_execute", execute)
        d = registry.create(make_image())
        self.assertNoResult(d)
        self.assertEqual(executed, [])
        self.assertEqual(manual.pending(), 1)
        manual.run_one()
        self.successResultOf(d)
        self.assertNotEqual(executed, [])


# -- what the SQL provider adds --------------------------------------------------


def assert_kept_pages_are_sqlalchemys(
    case: SynchronousTestCase, registry: SQLRegistry, rares: tuple[int, ...]
) -> None:
    """
    Fill C{registry} with images of every kind, then check that for many
    shapes of listing, each limit and marker, and each C{rare_filter_images}
    of C{rares}, the page its kept statements answer is the SQLAlchemy
    path's (the provider without its page reader), or the same refusal.
    """
    made = [
        make_image(
            name=None if n % 5 == 0 else f"n{n % 7}",
            size=None if n % 4 == 0 else n,
            owner=f"p{n % 3}",
            visibility=["public", "private", "shared", "community"][n % 4],
            created_at=T0 + timedelta(seconds=n % 9),
            min_disk=n % 3,
            protected=bool(n % 2),
            properties={"os": "abc"[n % 3]} if n % 5 else {},
            tags={f"t{n % 2}", "all"},
            locations=[Location(f"file:///{n}/{i}", "file", {"i": i}) for i in range(n % 3)],
        )
        for n in range(30)
    ]
    for image in made:
        case.successResultOf(registry.create(image))
    case.successResultOf(registry.add_member(made[2].id, "p1"))
    case.successResultOf(registry.update_member(made[2].id, "p1", "accepted"))
    queries = [
        ImageQuery(),
        ImageQuery(sort=(("name", "asc"),)),
        ImageQuery(sort=(("name", "desc"),)),
        ImageQuery(sort=(("size", "desc"), ("name", "asc"))),
        ImageQuery(viewer=Viewer("p1")),
        ImageQuery(viewer=Viewer("p2"), visibility="all"),
        ImageQuery(viewer=Viewer(None)),
        ImageQuery(viewer=Viewer("p1", True), visibility="shared"),
        ImageQuery(filters={"min_disk": frozenset({0, 2})}),
        ImageQuery(filters={"status": frozenset()}),
        ImageQuery(filters={"protected": "true"}),
        ImageQuery(size_min=5, size_max=20),
        ImageQuery(comparisons=(Comparison("created_at", "gt", T0 + timedelta(seconds=3)),)),
        ImageQuery(properties={"os": "a"}),
        ImageQuery(properties={"os": "b"}, tags=frozenset({"t1"}), viewer=Viewer("p1")),
        ImageQuery(tags=frozenset({"all", "t0"}), sort=(("name", "asc"),)),
        ImageQuery(properties={"os": 1}),  # type: ignore[dict-item]
    ]

    def answer(query: ImageQuery) -> Any:
        d = registry.list(query)
        results: list[Any] = []
        d.addBoth(results.append)
        [result] = results
        if isinstance(result, list):
            return result
        return type(result.value)

    for query, rare in itertools.product(queries, rares):
        registry.rare_filter_images = rare
        for limit in (3, 100):
            for marker in [None, *(image.id for image in made[::6]), "nonexistent"]:
                asked = evolve(query, limit=limit, marker=marker)
                kept = answer(asked)
                pages, registry._pages = registry._pages, None
                try:
                    built = answer(asked)
                finally:
                    registry._pages = pages
                case.assertEqual(kept, built, asked)


class SQLRegistryTests(SynchronousTestCase):
    """Behaviour specific to SQLRegistry, beyond the interface's contract."""

    def setUp(self) -> None:
        self.clock = [datetime(2025, 1, 1, tzinfo=UTC)]
        self.registry = sync_open("sqlite://", now=lambda: self.clock[0])
        self.addCleanup(lambda: self.successResultOf(self.registry.close()))

    def refused(self, d: Deferred[Any], kind: type[Exception] = BadRequest) -> str:
        return str(self.failureResultOf(d, kind).value)

    def executed(self, call: Callable[[], Deferred[Any]]) -> list[Any]:
        """The SQLAlchemy statements C{call} executes (driver SQL left out)."""
        statements: list[Any] = []

        def record(connection: Any, clause: Any, *args: Any) -> None:
            if not isinstance(clause, str):
                statements.append(clause)

        event.listen(self.registry.engine, "before_execute", record)
        try:
            self.successResultOf(call())
        finally:
            event.remove(self.registry.engine, "before_execute", record)
        return statements

    def test_listing_reads_its_images_in_one_statement(self) -> None:
        """
        On SQLite a listing's statement chooses the page's ids only; the
        images' stamps are one more statement, and those not kept already
        (with their children) one more, on the same connection, in the same
        transaction (L{ImageReader.get_many}), whether the statement is built with SQLAlchemy or (as a shape not
        yet met is) run from the statements kept for its shape, on the
        DBAPI.
        """
        image = self.successResultOf(
            self.registry.create(make_image(properties={"a": "1"}, tags={"t"}))
        )
        other = self.successResultOf(self.registry.create(make_image(name="z")))
        # (First the count that judges the tag rare: see child_condition.)
        pages, self.registry._pages = self.registry._pages, None
        try:
            *_, page = self.executed(
                lambda: self.registry.list(ImageQuery(tags=frozenset({"t"})))
            )
        finally:
            self.registry._pages = pages
        self.assertEqual([c.name for c in page.selected_columns], ["id"])
        traced: list[str] = []
        raw = self.registry.engine.raw_connection()
        raw.driver_connection.set_trace_callback(traced.append)  # type: ignore[union-attr]
        self.addCleanup(raw.driver_connection.set_trace_callback, None)  # type: ignore[union-attr]
        raw.close()
        self.assertEqual(self.executed(lambda: self.registry.list(ImageQuery())), [])
        self.assertEqual(
            [statement.split()[:2] for statement in traced],
            [
                ["BEGIN"],
                ["SELECT", "images.id"],
                ["SELECT", "id,"],
                ["SELECT", "images.id,"],
                ["COMMIT"],
            ],
        )
        # A filtered one too, after counting the tag's images; its image
        # is kept now.
        del traced[:]
        self.assertEqual(
            self.executed(lambda: self.registry.list(ImageQuery(tags=frozenset({"t"})))),
            [],
        )
        self.assertEqual(
            [statement.split()[:2] for statement in traced],
            [
                ["BEGIN"],
                ["SELECT", "count(*)"],
                ["SELECT", "images.id"],
                ["SELECT", "id,"],
                ["COMMIT"],
            ],
        )
        shown = self.successResultOf(self.registry.list(ImageQuery(sort=(("name", "desc"),))))
        self.assertEqual([i.id for i in shown], [other.id, image.id])
        self.assertEqual((shown[1].properties, shown[1].tags), ({"a": "1"}, {"t"}))
        self.assertEqual(shown, [other, image])

    def test_pages_kept_per_shape_take_the_values_of_each_query(self) -> None:
        """
        On SQLite a listing runs the statements kept for its shape, whose
        viewer's project, marker and limit are values of each query: the
        second project's listing, another marker and another limit each
        answer their own page, not the first query's.
        """
        made = [
            self.successResultOf(
                self.registry.create(
                    make_image(
                        owner=f"p{n % 2}",
                        visibility="private",
                        created_at=T0 + timedelta(seconds=n),
                    )
                )
            )
            for n in range(8)
        ]

        def listed(project: str, marker: str | None = None, limit: int = 25) -> list[str]:
            query = ImageQuery(
                viewer=Viewer(project), marker=marker, limit=limit
            )
            return [i.id for i in self.successResultOf(self.registry.list(query))]

        def owned(project: str) -> list[str]:
            return [i.id for i in reversed(made) if i.owner == project]

        self.assertEqual(listed("p0"), owned("p0"))
        self.assertEqual(listed("p1"), owned("p1"))
        self.assertEqual(listed("p1", limit=2), owned("p1")[:2])
        self.assertEqual(listed("p1", marker=owned("p1")[0]), owned("p1")[1:])
        self.assertEqual(listed("p1", marker=owned("p1")[2]), owned("p1")[3:])
        # The marker must be one the viewer may see, with the statement kept.
        self.failureResultOf(
            self.registry.list(ImageQuery(viewer=Viewer("p1"), marker=owned("p0")[0])),
            BadRequest,
        )

    def test_pages_kept_per_shape_are_sqlalchemys_pages(self) -> None:
        """
        For listings of every kind of shape (sort keys with NULLs, scopes,
        filters of several values, bounds, comparisons), each limit and
        marker, the statements kept per shape answer exactly what the
        SQLAlchemy path answers (the same page, or the same refusal), with
        each child filter matching few images (read from its value's
        index) and many (probed per row).
        """
        assert_kept_pages_are_sqlalchemys(self, self.registry, (0, 1000))

    def test_shape_key(self) -> None:
        """
        Queries differing only in the viewer's project, marker or limit
        share a shape; a filter value keeps its type (C{True == 1}, yet
        only one is a valid boolean filter); so do property and tag
        filters.
        """
        self.assertEqual(
            shape_key(ImageQuery(viewer=Viewer("a"), limit=3)),
            shape_key(ImageQuery(viewer=Viewer("b"), marker="m")),
        )
        self.assertNotEqual(
            shape_key(ImageQuery(viewer=Viewer("a"))), shape_key(ImageQuery(viewer=Viewer(None)))
        )
        self.assertNotEqual(
            shape_key(ImageQuery(filters={"protected": True})),
            shape_key(ImageQuery(filters={"protected": 1})),
        )
        self.failureResultOf(
            self.registry.list(ImageQuery(filters={"protected": 1})), BadRequest
        )
        self.successResultOf(self.registry.list(ImageQuery(filters={"protected": True})))
        self.failureResultOf(
            self.registry.list(ImageQuery(filters={"protected": 1})), BadRequest
        )
        self.assertNotEqual(
            shape_key(ImageQuery(tags=frozenset({"t"}))),
            shape_key(ImageQuery(tags=frozenset({"u"}))),
        )
        self.assertNotEqual(
            shape_key(ImageQuery(properties={"p": "1"})),
            shape_key(ImageQuery(properties={"p": 1})),  # type: ignore[dict-item]
        )

    def test_equal_rows_are_decoded_once(self) -> None:
        """
        On SQLite a row read again, equal in every value (its children
        included), gives the record decoded the first time, by a get or a
        listing; a change to the row or to a child gives a new one.
        """
        image = self.successResultOf(self.registry.create(make_image(tags={"t"})))
        first = self.successResultOf(self.registry.get(image.id))
        self.assertIs(self.successResultOf(self.registry.get(image.id)), first)
        self.assertIs(self.successResultOf(self.registry.list(ImageQuery()))[0], first)
        tagged = self.successResultOf(self.registry.add_tag(image.id, "u"))
        again = self.successResultOf(self.registry.get(image.id))
        self.assertIsNot(again, first)
        self.assertEqual(again, tagged)
        self.assertEqual(again.tags, {"t", "u"})

    def test_listing_reads_again_only_images_changed(self) -> None:
        """
        On SQLite a listing read again reads whole only the images whose
        stamp (id, version, creation and update times) is not the one
        kept: an image changed, or one created under the id of an image
        purged since (whose version starts again at 1). A page of which
        less than half is kept reads no stamps.
        """
        made = [
            self.successResultOf(self.registry.create(make_image(name=f"i{n}")))
            for n in range(3)
        ]
        traced: list[str] = []
        raw = self.registry.engine.raw_connection()
        raw.driver_connection.set_trace_callback(traced.append)  # type: ignore[union-attr]
        self.addCleanup(raw.driver_connection.set_trace_callback, None)  # type: ignore[union-attr]
        raw.close()

        def whole() -> list[str]:
            """The ids each whole read of this listing read, and forget the trace."""
            read = [s for s in traced if s.startswith("SELECT images.id,")]
            del traced[:]
            return sorted(i for i in (m.id for m in made) if any(i in s for s in read))

        # None kept yet: no stamps read, only the images.
        self.successResultOf(self.registry.list(ImageQuery()))
        self.assertFalse([s for s in traced if s.startswith("SELECT id,")])
        self.assertEqual(whole(), sorted(m.id for m in made))
        first = self.successResultOf(self.registry.list(ImageQuery()))
        self.assertEqual(whole(), [])
        changed = self.successResultOf(
            self.registry.update(made[1].id, ImageUpdate(properties={"p": "1"}))
        )
        tagged = self.successResultOf(self.registry.add_tag(made[2].id, "t"))
        del traced[:]
        second = self.successResultOf(self.registry.list(ImageQuery()))
        self.assertEqual(whole(), sorted([made[1].id, made[2].id]))
        by_id = {image.id: image for image in second}
        self.assertIs(by_id[made[0].id], {i.id: i for i in first}[made[0].id])
        self.assertEqual(by_id[made[1].id], changed)
        self.assertEqual(by_id[made[2].id].tags, {"t"})
        self.assertEqual(by_id[made[2].id], tagged)
        # Purged and created again under its id since: its version is the
        # one kept (1, as made), its creation time is not.
        with self.registry.engine.begin() as connection:
            connection.execute(
                text("UPDATE images SET created_at = '2001-01-01 00:00:00.000000',"
                     " name = 'again' WHERE id = :id"),
                {"id": made[0].id},
            )
        del traced[:]
        third = self.successResultOf(self.registry.list(ImageQuery()))
        self.assertEqual(whole(), [made[0].id])
        self.assertIn("again", [image.name for image in third])

    def test_get_is_one_statement(self) -> None:
        """
        On SQLite, getting an image is one statement (L{SELECT_IMAGE}: no
        BEGIN, no COMMIT, no SQLAlchemy statement), and it reads the record
        the SQLAlchemy path of a listing reads: every field, the properties,
        the locations in their order (a store or none), the tags.
        """
        image = self.successResultOf(
            self.registry.create(
                make_image(
                    properties={"b": "2", "a": "1", "\u00e9": "caf\u00e9 \"x\""},
                    tags={"t", "u"},
                    locations=(Location("file:///z", "fast"), "file:///a", Location("s3://b", "s3")),
                    size=5,
                    protected=True,
                    owner="p",
                )
            )
        )
        traced: list[str] = []
        raw = self.registry.engine.raw_connection()
        raw.driver_connection.set_trace_callback(traced.append)  # type: ignore[union-attr]
        self.addCleanup(raw.driver_connection.set_trace_callback, None)  # type: ignore[union-attr]
        raw.close()
        self.assertEqual(self.executed(lambda: self.registry.get(image.id)), [])
        self.assertEqual(traced, [SELECT_IMAGE.replace("?", f"'{image.id}'")])
        got = self.successResultOf(self.registry.get(image.id))
        [listed] = self.successResultOf(self.registry.list(ImageQuery()))
        self.assertEqual(got, listed)
        self.assertEqual(got, image)
        self.assertEqual(
            [(loc.url, loc.store) for loc in got.locations],
            [("file:///z", "fast"), ("file:///a", None), ("s3://b", "s3")],
        )
        deleted = self.successResultOf(self.registry.delete(image.id))
        self.failureResultOf(self.registry.get(image.id), NotFound)
        self.assertEqual(
            self.successResultOf(self.registry.get(image.id, include_deleted=True)), deleted
        )

    def test_updated_at_comes_from_the_clock(self) -> None:
        """
        update, add_tag and remove_tag stamp updated_at with the injected
        clock's time.
        """
        image = self.successResultOf(self.registry.create(make_image()))
        self.clock[0] = datetime(2025, 6, 1, 12, tzinfo=UTC)
        updated = self.successResultOf(
            self.registry.update(image.id, ImageUpdate(fields={"name": "x"}))
        )
        self.assertEqual(updated.updated_at, self.clock[0])
        self.clock[0] += timedelta(hours=1)
        tagged = self.successResultOf(self.registry.add_tag(image.id, "t"))
        self.assertEqual(tagged.updated_at, self.clock[0])
        self.clock[0] += timedelta(hours=1)
        untagged = self.successResultOf(self.registry.remove_tag(image.id, "t"))
        self.assertEqual(untagged.updated_at, self.clock[0])

    def test_updated_at_never_goes_backwards(self) -> None:
        """
        If the clock is behind the record's updated_at (clock stepped back,
        or it did not tick), updated_at still increases, by a microsecond,
        whatever the change.
        """
        image = self.successResultOf(
            self.registry.create(
                make_image(updated_at=datetime(2030, 1, 1, tzinfo=UTC))
            )
        )
        first = self.successResultOf(
            self.registry.update(image.id, ImageUpdate(fields={"name": "x"}))
        )
        self.assertEqual(first.updated_at, image.updated_at + timedelta(microseconds=1))
        tagged = self.successResultOf(self.registry.add_tag(image.id, "t"))
        self.assertEqual(tagged.updated_at, first.updated_at + timedelta(microseconds=1))
        untagged = self.successResultOf(self.registry.remove_tag(image.id, "t"))
        self.assertEqual(
            untagged.updated_at, tagged.updated_at + timedelta(microseconds=1)
        )
        deleted = self.successResultOf(self.registry.delete(image.id))
        self.assertEqual(
            deleted.updated_at, untagged.updated_at + timedelta(microseconds=1)
        )
        self.assertEqual(deleted.deleted_at, deleted.updated_at)

    def test_filters_accept_query_string_text(self) -> None:
        """Boolean and integer filters also accept "true"/"false" and digits."""
        wanted = make_image(protected=True, min_ram=512)
        self.successResultOf(self.registry.create(wanted))
        self.successResultOf(self.registry.create(make_image()))
        for filters in (
            {"protected": "true"},
            {"protected": "True"},
            {"min_ram": "512"},
        ):
            found = self.successResultOf(
                self.registry.list(ImageQuery(filters=filters))
            )
            self.assertEqual([image.id for image in found], [wanted.id], filters)

    def test_bad_filter_values_refused(self) -> None:
        """Filter values of the wrong type are a BadRequest, not a server error."""
        bad: list[dict[str, Any]] = [
            {"protected": "maybe"},
            {"min_ram": "lots"},
            {"name": 3},
        ]
        for filters in bad:
            self.refused(self.registry.list(ImageQuery(filters=filters)))
        self.refused(self.registry.list(ImageQuery(properties={"a": 1})))  # type: ignore[dict-item]
        self.refused(self.registry.list(ImageQuery(size_min="1")))  # type: ignore[arg-type]

    def test_records_the_database_cannot_hold_are_refused(self) -> None:
        """
        Naive datetimes, non-canonical ids, wrong types and strings longer
        than their column are a BadRequest on every backend (SQLite would
        otherwise accept them and PostgreSQL fail with a server error).
        """
        naive = datetime(2024, 1, 1)
        for image in (
            make_image(created_at=naive),
            make_image(id="7D3A43F4-0000-4000-8000-000000000000"),
            make_image(id="x" * 36),
            make_image(size="12"),
            make_image(protected=1),
            make_image(owner="o" * 256),
            make_image(checksum="c" * 33),
            make_image(tags={"t" * 256}),
            make_image(size=2**63),
        ):
            self.refused(self.registry.create(image))
        self.assertEqual(
            self.successResultOf(
                self.registry.list(ImageQuery(exclude_statuses=frozenset()))
            ),
            [],
        )

    def test_bad_update_values_refused(self) -> None:
        """Updates with values of the wrong type are a BadRequest; nothing changes."""
        image = self.successResultOf(self.registry.create(make_image(status=ACTIVE)))
        bad: list[dict[str, Any]] = [
            {"locations": "file:///not-a-list"},
            {"size": "big"},
            {"status": None},
            {"protected": "yes"},
        ]
        for fields in bad:
            self.refused(self.registry.update(image.id, ImageUpdate(fields=fields)))
        self.assertEqual(self.successResultOf(self.registry.get(image.id)), image)

    def test_member_timestamps_come_from_the_clock(self) -> None:
        """
        A membership is stamped with the injected clock's time when added
        and when its status changes; updated_at never goes backwards, even
        when the clock does.
        """
        image = self.successResultOf(self.registry.create(make_image()))
        added = self.successResultOf(self.registry.add_member(image.id, "b"))
        self.assertEqual((added.created_at, added.updated_at), (self.clock[0],) * 2)
        self.clock[0] = datetime(2025, 3, 1, tzinfo=UTC)
        accepted = self.successResultOf(
            self.registry.update_member(image.id, "b", "accepted")
        )
        self.assertEqual(accepted.updated_at, self.clock[0])
        self.assertEqual(accepted.created_at, added.created_at)
        self.clock[0] = datetime(2024, 1, 1, tzinfo=UTC)
        rejected = self.successResultOf(
            self.registry.update_member(image.id, "b", "rejected")
        )
        self.assertEqual(
            rejected.updated_at, accepted.updated_at + timedelta(microseconds=1)
        )

    def test_bad_member_ids_refused(self) -> None:
        """
        A member id the table cannot hold (empty, over 255 characters, not a
        string) is a BadRequest when added, and not a string anywhere; an
        over-long one is simply nobody's membership elsewhere.
        """
        image = self.successResultOf(self.registry.create(make_image()))
        for member_id in ("", "m" * 256, 3, None):
            self.refused(self.registry.add_member(image.id, member_id))  # type: ignore[arg-type]
        self.successResultOf(self.registry.add_member(image.id, "m" * 255))
        self.refused(self.registry.get_member(image.id, 3))  # type: ignore[arg-type]
        self.refused(self.registry.update_member(image.id, 3, "accepted"))  # type: ignore[arg-type]
        self.refused(self.registry.remove_member(image.id, 3))  # type: ignore[arg-type]
        self.refused(self.registry.update_member(image.id, "m" * 255, None))  # type: ignore[arg-type]
        self.refused(self.registry.get_member(image.id, "m" * 256), NotFound)
        self.assertEqual(
            [
                m.member_id
                for m in self.successResultOf(self.registry.list_members(image.id))
            ],
            ["m" * 255],
        )

    def test_bad_comparison_and_tag_values_refused(self) -> None:
        """
        Comparisons take aware datetimes for created_at/updated_at and
        integers in range for size; tags are strings. Anything else is a
        BadRequest, not a server error.
        """
        self.successResultOf(self.registry.create(make_image(size=1)))
        bad: list[Comparison] = [
            Comparison("created_at", "gt", datetime(2024, 1, 1)),
            Comparison("created_at", "gt", "2024-01-01T00:00:00Z"),
            Comparison("updated_at", "lt", 5),
            Comparison("size", "gt", "5"),
            Comparison("size", "gt", True),
            Comparison("size", "gt", 1.5),
            Comparison("size", "lt", 2**70),
        ]
        for comparison in bad:
            self.refused(self.registry.list(ImageQuery(comparisons=(comparison,))))
        self.refused(self.registry.list(ImageQuery(tags=frozenset({1}))))  # type: ignore[arg-type]

    def test_unknown_size_matches_no_comparison(self) -> None:
        """
        An image with no size is left out by every size comparison,
        neq included (documented in sql._comparison).
        """
        sized = self.successResultOf(self.registry.create(make_image(size=5)))
        self.successResultOf(self.registry.create(make_image()))
        for op in ("neq", "gte", "lte", "gt", "lt"):
            found = self.successResultOf(
                self.registry.list(
                    ImageQuery(
                        comparisons=(
                            Comparison(
                                "size", op, 4 if op in ("gt", "gte", "neq") else 6
                            ),
                        )
                    )
                )
            )
            self.assertEqual([i.id for i in found], [sized.id], op)

    def test_database_unavailable_is_service_unavailable(self) -> None:
        """A database that cannot be reached fails calls with ServiceUnavailable."""
        missing = os.path.join(os.path.abspath(self.mktemp()), "no", "such", "dir.db")
        registry = SQLRegistry(
            create_registry_engine(f"sqlite:///{missing}"), SynchronousRunner()
        )
        self.addCleanup(lambda: self.successResultOf(registry.close()))
        self.failureResultOf(registry.ping(), ServiceUnavailable)
        self.failureResultOf(registry.get(str(uuid.uuid4())), ServiceUnavailable)

    def test_listing_queries_do_not_grow_with_the_page(self) -> None:
        """
        A page's properties, locations and tags are read for all its images
        at once: a page of 25 runs as many statements as a page of 2.
        """
        for n in range(30):
            self.successResultOf(
                self.registry.create(
                    make_image(
                        created_at=T0 + timedelta(seconds=n),
                        properties={"n": str(n)},
                        locations=(f"file:///{n}",),
                        tags={"t"},
                    )
                )
            )
        statements: list[str] = []

        def execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            statements.append(statement)

        event.listen(self.registry.engine, "before_cursor_execute", execute)
        self.addCleanup(
            event.remove, self.registry.engine, "before_cursor_execute", execute
        )
        counts = []
        for limit in (2, 25):
            del statements[:]
            page = self.successResultOf(self.registry.list(ImageQuery(limit=limit)))
            self.assertEqual(len(page), limit)
            self.assertEqual({len(image.locations) for image in page}, {1})
            counts.append(len(statements))
        self.assertEqual(counts[0], counts[1])
        self.assertLessEqual(counts[1], 6)  # BEGIN, page, 3 children, COMMIT

    def test_plain_postgresql_url_uses_psycopg(self) -> None:
        """A postgresql:// URL gets the psycopg (3) driver without connecting."""
        try:
            engine = create_registry_engine("postgresql://user@db.invalid/glance")
        except ImportError:
            raise SkipTest("psycopg is not installed") from None
        self.addCleanup(engine.dispose)
        self.assertEqual(engine.url.drivername, "postgresql+psycopg")

    def test_in_memory_database_is_shared_between_threads(self) -> None:
        """
        An in-memory database is one database whichever thread asks (one
        shared connection), so a thread pool sees what was written.
        """
        image = self.successResultOf(self.registry.create(make_image()))
        seen: list[Any] = []

        def read() -> None:
            with self.registry.engine.connect() as connection:
                seen.append(
                    connection.exec_driver_sql(
                        "SELECT id FROM images WHERE id = ?", (image.id,)
                    ).scalar()
                )

        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
        self.assertEqual(seen, [image.id])


class SQLiteQueryPlanTests(SynchronousTestCase):
    """
    Listing pages are index range scans on SQLite: the cost of a page deep
    in a large listing must not grow with the number of images. (The bench,
    bench/registry_pages.py, measures it.)
    """

    def setUp(self) -> None:
        self.registry = sync_open(f"sqlite:///{os.path.abspath(self.mktemp())}")
        self.addCleanup(lambda: self.successResultOf(self.registry.close()))
        self.images = [
            make_image(
                name=None if n % 5 == 0 else f"image-{n % 7}",
                status=[ACTIVE, QUEUED][n % 2],
                size=None if n % 4 == 0 else n,
                owner=f"p{n % 3}",
                visibility=["public", "private"][n % 2],
                created_at=T0 + timedelta(seconds=n),
                updated_at=T0 + timedelta(seconds=n),
                properties={"os_distro": ["ubuntu", "debian"][n % 2], "rare": str(n)},
            )
            for n in range(60)
        ]
        for image in self.images:
            self.successResultOf(self.registry.create(image))
        self.statements: list[str] = []

        def record(statement: str) -> None:
            if (
                # The page's statement (on SQLite it selects only the ids).
                statement.lstrip().startswith("SELECT images.id")
                and "ORDER BY" in statement
            ):
                self.statements.append(statement)

        # SQLite's trace of every statement run, its values in place: the
        # pages kept per shape run on the DBAPI, not through SQLAlchemy.
        def trace(dbapi_connection: Any, record_: Any, proxy: Any) -> None:
            dbapi_connection.set_trace_callback(record)

        event.listen(self.registry.engine, "checkout", trace)
        self.addCleanup(event.remove, self.registry.engine, "checkout", trace)

    def plans(self, query: ImageQuery) -> list[str]:
        """The query plan of each page query the listing ran."""
        del self.statements[:]
        # Through the pool: a page read again is answered from the kept
        # pages (FreshPages), with no statement to explain.
        self.successResultOf(self.registry._run(self.registry._list, query))
        self.assertTrue(self.statements)
        plans = []
        with self.registry.engine.connect() as connection:
            for statement in self.statements:
                rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement).all()
                # A page that selects only the ids may be served from the
                # index alone (COVERING): the same index, the same walk.
                plan = "\n".join(row[-1] for row in rows)
                plans.append(plan.replace("images USING COVERING INDEX", "images USING INDEX"))
        return plans

    def test_pages_use_the_sort_key_index(self) -> None:
        """
        For each indexed sort key, both directions, with and without a
        marker (in the NULL range and in the values), each page query walks
        the (deleted, key, id) index and sorts nothing.
        """
        middle = self.images[30]
        unnamed = self.images[25]
        for key, index in (
            ("created_at", "ix_images_deleted_created_at_id"),
            ("updated_at", "ix_images_deleted_updated_at_id"),
            ("name", "ix_images_deleted_name_id"),
            ("status", "ix_images_deleted_status_id"),
            ("size", "ix_images_deleted_size_id"),
            ("owner", "ix_images_deleted_owner_id"),
            ("visibility", "ix_images_deleted_visibility_id"),
        ):
            for direction in ("asc", "desc"):
                for marker in (None, middle.id, unnamed.id):
                    query = ImageQuery(sort=((key, direction),), marker=marker)
                    for plan in self.plans(query):
                        context = f"{key} {direction} after {marker}:\n{plan}"
                        self.assertIn(f"USING INDEX {index}", plan, context)
                        self.assertNotIn("TEMP B-TREE", plan, context)

    def test_common_property_filter_keeps_the_ordered_scan(self) -> None:
        """
        A property value many images share is checked per row of the
        ordered scan, which stops after one page.
        """
        for _ in range(2):
            self.successResultOf(self.registry.create(make_image()))
        with self.registry.engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO image_properties (image_id, name, value) "
                "SELECT id, 'common', 'yes' FROM images"
            )
        self.registry.rare_filter_images = 10
        [plan] = self.plans(ImageQuery(properties={"common": "yes"}))
        self.assertIn("USING INDEX ix_images_deleted_created_at_id", plan)
        self.assertNotIn("TEMP B-TREE", plan)

    def test_rare_property_filter_uses_the_property_index(self) -> None:
        """
        A property value few images have is looked up through the (name,
        value prefix) index rather than by scanning every image.
        """
        [plan] = self.plans(ImageQuery(properties={"rare": "7"}))
        self.assertIn("ix_image_properties_name_value_image_id (name=? AND <expr>=?)", plan)

    def test_scoped_pages_keep_the_ordered_scan(self) -> None:
        """
        A project's listing, in each visibility, and an admin's, still walk
        the sort key's index and sort nothing; a membership is probed
        through the (image_id, member_id) key, row by row.
        """
        shared = self.images[11]  # p2's, private: made shared with p1
        self.successResultOf(
            self.registry.update(
                shared.id, ImageUpdate(fields={"visibility": "shared"})
            )
        )
        self.successResultOf(self.registry.add_member(shared.id, "p1"))
        self.successResultOf(self.registry.update_member(shared.id, "p1", "accepted"))
        marker = self.images[40]  # public, so within every scope below
        for viewer, visibility in (
            (Viewer("p1"), None),
            (Viewer("p1"), "all"),
            (Viewer("p1"), "shared"),
            (Viewer("p1"), "private"),
            (Viewer("p1", is_admin=True), None),
        ):
            for mark in (None, marker.id if visibility in (None, "all") else None):
                query = ImageQuery(viewer=viewer, visibility=visibility, marker=mark)
                for plan in self.plans(query):
                    context = f"{viewer} {visibility} after {mark}:\n{plan}"
                    self.assertIn(
                        "USING INDEX ix_images_deleted_created_at_id", plan, context
                    )
                    self.assertNotIn("TEMP B-TREE", plan, context)
                    if not viewer.is_admin and visibility != "private":
                        self.assertIn(
                            "image_members USING INDEX sqlite_autoindex_image_members_1"
                            " (image_id=? AND member_id=?)",
                            plan,
                            context,
                        )

    def test_tag_filters_use_the_tag_index_when_rare(self) -> None:
        """
        A tag few images carry is looked up through the (value, image_id)
        index; a common one is checked per row of the ordered scan.
        """
        with self.registry.engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO image_tags (image_id, value) SELECT id, 'common' FROM images"
            )
        self.successResultOf(
            self.registry.update(
                self.images[3].id, ImageUpdate(tags=frozenset({"rare"}))
            )
        )
        self.registry.rare_filter_images = 10
        [plan] = self.plans(ImageQuery(tags=frozenset({"rare"})))
        self.assertIn(
            "image_tags USING COVERING INDEX ix_image_tags_value_image_id (value=?)",
            plan,
        )
        [plan] = self.plans(ImageQuery(tags=frozenset({"common"})))
        self.assertIn("USING INDEX ix_images_deleted_created_at_id", plan)
        self.assertNotIn("TEMP B-TREE", plan)
        self.assertNotIn("LIST SUBQUERY", plan)

    def test_status_filter_is_not_a_scan(self) -> None:
        """A listing sorted by name and filtered by status does not read the whole table."""
        for plan in self.plans(
            ImageQuery(sort=(("name", "asc"),), filters={"status": QUEUED})
        ):
            self.assertNotIn("SCAN images", plan)


class PostgreSQLQueryPlanTests(SynchronousTestCase):
    """
    Deep pages stay ordered index scans on PostgreSQL, whose planner
    chooses from its statistics: the conditions must not mislead it. With
    20,000 images, a page 90% into a listing filtered on a property one
    image in five has (or a tag one in twenty has) used to be planned as a
    hash join over every remaining image and a sort, because the keyset
    condition and the property's prefix-and-whole test were each counted
    twice.
    """

    def setUp(self) -> None:
        admin_url = postgres_admin_url(self)
        url = create_database(admin_url)
        self.addCleanup(drop_database, admin_url, url)
        self.registry = sync_open(url)
        self.addCleanup(lambda: self.successResultOf(self.registry.close()))
        with self.registry.engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO images (id, name, status, visibility, owner, min_ram,"
                " min_disk, protected, os_hidden, created_at, updated_at, deleted)"
                " SELECT md5(n::text)::uuid::text, 'image-' || (n %% 100), 'active',"
                " (ARRAY['public', 'private', 'shared'])[1 + n %% 3], 'p' || (n %% 7),"
                " 0, 0, false, false,"
                " timestamptz '2024-01-01' + (n / 2) * interval '1 second',"
                " timestamptz '2024-01-01', false"
                " FROM generate_series(1, 20000) n"
            )
            connection.exec_driver_sql(
                "INSERT INTO image_properties (image_id, name, value)"
                " SELECT id, 'os_distro',"
                " (ARRAY['a', 'b', 'c', 'd', 'e'])[1 + abs(hashtext(id)) %% 5]"
                " FROM images"
            )
            connection.exec_driver_sql(
                "INSERT INTO image_tags (image_id, value) SELECT id, 'gpu'"
                " FROM images WHERE abs(hashtext(id)) %% 20 = 0"
            )
            connection.exec_driver_sql(
                "INSERT INTO image_members"
                " (image_id, member_id, status, created_at, updated_at)"
                " SELECT id, 'p1', 'accepted', created_at, created_at FROM images"
                " WHERE visibility = 'shared' AND owner <> 'p1'"
                " AND abs(hashtext(id)) %% 10 = 0"
            )
        with self.registry.engine.connect().execution_options(
            isolation_level="AUTOCOMMIT"
        ) as connection:
            connection.exec_driver_sql("VACUUM ANALYZE")
        self.statements: list[tuple[str, Any]] = []
        # The SQLAlchemy path's statements (a shape not kept takes it; the
        # one-statement page's plan: PostgreSQLPageTests).
        self.registry._pages = None

        def record(
            conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any
        ) -> None:
            if (
                # The page's statement (on SQLite it selects only the ids).
                statement.lstrip().startswith("SELECT images.id")
                and "ORDER BY" in statement
            ):
                self.statements.append((statement, parameters))

        event.listen(self.registry.engine, "before_cursor_execute", record)
        self.addCleanup(
            event.remove, self.registry.engine, "before_cursor_execute", record
        )

    def every_id(self, query: ImageQuery) -> list[str]:
        ids: list[str] = []
        marker = None
        while True:
            page = self.successResultOf(
                self.registry.list(evolve(query, marker=marker, limit=1000))
            )
            if not page:
                return ids
            ids.extend(image.id for image in page)
            marker = ids[-1]

    def test_deep_pages_keep_the_ordered_scan(self) -> None:
        """
        Halfway and 90% into listings filtered by a common property, a
        tag, or a project's scope, each page query walks the created_at
        index from the marker (a row comparison) and sorts nothing.
        """
        for query in (
            ImageQuery(properties={"os_distro": "b"}),
            ImageQuery(tags=frozenset({"gpu"})),
            ImageQuery(viewer=Viewer("p1")),
            ImageQuery(viewer=Viewer("p1"), visibility="shared"),
        ):
            ids = self.every_id(query)
            self.assertGreater(len(ids), 500, query)
            for depth in (0.5, 0.9):
                del self.statements[:]
                marker = ids[int(len(ids) * depth)]
                self.successResultOf(self.registry.list(evolve(query, marker=marker)))
                [(statement, parameters)] = self.statements
                with self.registry.engine.connect() as connection:
                    plan = "\n".join(
                        connection.exec_driver_sql(
                            "EXPLAIN " + statement, parameters
                        ).scalars()
                    )
                context = f"{query} at {depth:.0%}:\n{plan}"
                self.assertIn(
                    "Index Scan Backward using ix_images_deleted_created_at_id",
                    plan,
                    context,
                )
                self.assertIn("ROW(created_at, (id)::text) < ROW(", plan, context)
                self.assertNotIn("Sort", plan, context)
                self.assertNotIn("Hash Join", plan, context)
                # A membership is probed per row, not hashed whole first.
                self.assertNotIn("hashed SubPlan", plan, context)


def libpq_sent(
    case: SynchronousTestCase, registry: SQLRegistry, call: Callable[[], T]
) -> tuple[T, list[list[str]]]:
    """
    What C{call} returns, and each message the client sent PostgreSQL
    meanwhile on the connections of C{registry}'s pool once checked out
    (and pinged): libpq's trace, each line split into "F", its length, its
    type, ...
    """
    trace = case.mktemp()
    pool = registry.engine.pool

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        pgconn = dbapi_connection.pgconn
        pgconn.trace(os.open(trace, os.O_WRONLY | os.O_CREAT | os.O_APPEND))
        pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)

    def checkin(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.pgconn.untrace()

    event.listen(pool, "checkout", checkout)
    event.listen(pool, "checkin", checkin)
    try:
        result = call()
    finally:
        event.remove(pool, "checkout", checkout)
        event.remove(pool, "checkin", checkin)
    with open(trace) as f:
        return result, [line.split("\t") for line in f if line.startswith("F\t")]


class _PostgreSQLRegistryCase(SynchronousTestCase):
    """A SQL registry on a fresh PostgreSQL database of the test's own."""

    def setUp(self) -> None:
        self.admin_url = postgres_admin_url(self)
        self.url = create_database(self.admin_url)
        self.addCleanup(drop_database, self.admin_url, self.url)
        self.registry = sync_open(self.url)
        self.addCleanup(lambda: self.successResultOf(self.registry.close()))

    @contextmanager
    def images_locked(self) -> Iterator[None]:
        """
        The images table locked by another connection, on a database whose
        new connections wait for a lock at most 200 ms (C{lock_timeout}), so
        a statement needing it fails as an operational error.
        """
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        self.addCleanup(admin.dispose)
        with admin.connect() as connection:
            connection.exec_driver_sql(
                f'ALTER DATABASE "{self.url.database}" SET lock_timeout = 200'
            )
        self.registry.engine.dispose()  # new connections take the setting
        locker = create_engine(self.url)
        self.addCleanup(locker.dispose)
        with locker.connect() as connection:
            connection.exec_driver_sql("LOCK TABLE images IN ACCESS EXCLUSIVE MODE")
            yield
            connection.rollback()


class PostgreSQLGetTests(_PostgreSQLRegistryCase):
    """
    On PostgreSQL an image is read in one statement
    (L{glance_tx.registry.sql.image_read.PostgresImageReader}): the record
    SQLAlchemy's path reads, fresh after every write, and a database that
    fails it is a 503.
    """

    def get(self, image_id: str, include_deleted: bool = False) -> Image:
        return self.successResultOf(self.registry.get(image_id, include_deleted))

    def test_get_is_one_statement(self) -> None:
        """
        Getting an image is one request to PostgreSQL, in autocommit (no
        BEGIN, no COMMIT), and it reads the record SQLAlchemy's path reads:
        every field, the properties, the locations in their order (a store
        or none, metadata), the tags.
        """
        image = self.successResultOf(
            self.registry.create(
                make_image(
                    properties={"b": "2", "a": "1", "\u00e9": "caf\u00e9 \"x\""},
                    tags={"t", "u"},
                    locations=(
                        Location("file:///z", "fast", {"k": ["v", 1]}),
                        "file:///a",
                        Location("s3://b", "s3"),
                    ),
                    size=5,
                    protected=True,
                    owner="p",
                )
            )
        )
        got, sent = libpq_sent(self, self.registry, lambda: self.get(image.id))
        kinds = [fields[2].strip() for fields in sent]
        self.assertEqual([kind for kind in kinds if kind in ("Sync", "Query")], ["Sync"], kinds)
        self.assertNotIn("BEGIN", " ".join(" ".join(fields) for fields in sent))
        with self.registry.engine.connect() as connection:
            self.assertEqual(got, self.registry._fetch(connection, image.id, False))
        self.assertEqual(got, image)
        self.assertEqual(
            [(loc.url, loc.store, dict(loc.metadata)) for loc in got.locations],
            [
                ("file:///z", "fast", {"k": ["v", 1]}),
                ("file:///a", None, {}),
                ("s3://b", "s3", {}),
            ],
        )
        self.failureResultOf(self.registry.get(make_image().id), NotFound)

    def test_a_write_shows_in_the_next_get(self) -> None:
        """
        An unchanged row read again is the same record (decoded once); a
        change to the row or its children, or a delete, shows in the next
        read.
        """
        image = self.successResultOf(self.registry.create(make_image(properties={"p": "0"})))
        first = self.get(image.id)
        self.assertIs(self.get(image.id), first)
        self.successResultOf(
            self.registry.update(image.id, ImageUpdate(properties={"p": "1"}))
        )
        self.assertEqual(self.get(image.id).properties, {"p": "1"})
        self.successResultOf(self.registry.add_tag(image.id, "t"))
        self.assertEqual(self.get(image.id).tags, {"t"})
        deleted = self.successResultOf(self.registry.delete(image.id))
        self.failureResultOf(self.registry.get(image.id), NotFound)
        self.assertEqual(self.get(image.id, include_deleted=True), deleted)

    def test_database_failing_the_get_is_service_unavailable(self) -> None:
        """
        A read PostgreSQL fails as an operational error (a lock waited for
        longer than C{lock_timeout}) is a 503, and the next read, the lock
        gone, is served.
        """
        image = self.successResultOf(self.registry.create(make_image()))
        with self.images_locked():
            self.failureResultOf(self.registry.get(image.id), ServiceUnavailable)
        self.assertEqual(self.get(image.id), image)


class PostgreSQLPageTests(_PostgreSQLRegistryCase):
    """
    On PostgreSQL a listing page is one statement kept per query shape
    (L{glance_tx.registry.sql.pg_page_read}): the same pages as the
    SQLAlchemy path, one round trip after the pool's ping, fresh after
    every write, and a database that fails it is a 503.
    """

    def listed(self, query: ImageQuery) -> list[Image]:
        return self.successResultOf(self.registry.list(query))

    def test_pages_are_sqlalchemys_pages(self) -> None:
        """
        Every shape, limit and marker (NULL sort values or not, one the
        viewer may not see, none such) answers what SQLAlchemy's path does,
        image for image and field for field.
        """
        assert_kept_pages_are_sqlalchemys(self, self.registry, (1000,))

    def test_page_is_one_statement(self) -> None:
        """
        A page after a marker is one statement, in autocommit (no BEGIN or
        COMMIT): libpq's trace of the connection once the pool has checked
        it out (and pinged it) shows one request of the client.
        """
        made = [
            self.successResultOf(self.registry.create(make_image(name=f"i{n}", tags={"t"}, owner="p")))
            for n in range(5)
        ]
        query = ImageQuery(sort=(("name", "asc"),), tags=frozenset({"t"}), viewer=Viewer("p"))
        self.listed(evolve(query, marker=made[1].id))
        page, sent = libpq_sent(
            self, self.registry, lambda: self.listed(evolve(query, marker=made[1].id))
        )
        self.assertEqual([image.name for image in page], ["i2", "i3", "i4"])
        kinds = [fields[2].strip() for fields in sent]
        # A request ends with Sync (extended protocol) or is one Query.
        requests = [kind for kind in kinds if kind in ("Sync", "Query")]
        parsed = ["\t".join(fields) for fields in sent if fields[2] == "Parse"]
        self.assertEqual(requests, ["Sync"], kinds)
        self.assertEqual(len(parsed), 1, parsed)
        self.assertIn("WITH marker AS", parsed[0])
        self.assertNotIn("BEGIN", " ".join(" ".join(fields) for fields in sent))

    def test_a_write_shows_in_the_next_page(self) -> None:
        """
        A page read again after a change to an image's row or children
        (or its deletion) shows the change: the records kept are taken
        only for rows equal in every value.
        """
        made = [
            self.successResultOf(
                self.registry.create(make_image(name=f"i{n}", properties={"p": "0"}))
            )
            for n in range(3)
        ]
        query = ImageQuery(sort=(("name", "asc"),))
        first = self.listed(query)
        self.assertIs(self.listed(query)[0], first[0])
        self.successResultOf(
            self.registry.update(made[0].id, ImageUpdate(properties={"p": "1"}))
        )
        self.successResultOf(self.registry.add_tag(made[1].id, "t"))
        self.successResultOf(self.registry.delete(made[2].id))
        second = self.listed(query)
        self.assertEqual([image.id for image in second], [made[0].id, made[1].id])
        self.assertEqual(second[0].properties, {"p": "1"})
        self.assertEqual(second[1].tags, {"t"})
        self.assertEqual(second, [self.successResultOf(self.registry.get(m.id)) for m in made[:2]])

    def test_database_failing_the_page_is_service_unavailable(self) -> None:
        """
        A page statement PostgreSQL fails as an operational error (here a
        lock it waits for longer than C{lock_timeout}) is a 503, and the
        next page, the lock gone, is served.
        """
        self.successResultOf(self.registry.create(make_image()))
        with self.images_locked():
            self.failureResultOf(self.registry.list(ImageQuery()), ServiceUnavailable)
        self.assertEqual(len(self.listed(ImageQuery())), 1)

    def test_deep_pages_keep_the_ordered_scan(self) -> None:
        """
        The one statement's page 90% into a listing filtered by a common
        property walks the created_at index from the marker's values (a
        row comparison with the marker's CTE) and sorts only the page.
        """
        with self.registry.engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO images (id, name, status, visibility, owner, min_ram,"
                " min_disk, protected, os_hidden, created_at, updated_at, deleted)"
                " SELECT md5(n::text)::uuid::text, 'image-' || (n %% 100), 'active',"
                " 'public', 'p', 0, 0, false, false,"
                " timestamptz '2024-01-01' + (n / 2) * interval '1 second',"
                " timestamptz '2024-01-01', false"
                " FROM generate_series(1, 20000) n"
            )
            connection.exec_driver_sql(
                "INSERT INTO image_properties (image_id, name, value)"
                " SELECT id, 'os_distro',"
                " (ARRAY['a', 'b', 'c', 'd', 'e'])[1 + abs(hashtext(id)) %% 5]"
                " FROM images"
            )
        with self.registry.engine.connect().execution_options(
            isolation_level="AUTOCOMMIT"
        ) as connection:
            connection.exec_driver_sql("VACUUM ANALYZE")
        query = ImageQuery(properties={"os_distro": "b"})
        ids: list[str] = []
        while page := self.listed(evolve(query, marker=ids[-1] if ids else None, limit=1000)):
            ids.extend(image.id for image in page)
        marker = ids[int(len(ids) * 0.9)]
        reader = self.registry._pages
        assert isinstance(reader, PostgresPageReader)
        keys = tuple(sort_keys(query.sort))
        statement = Compiled.of(
            page_statement(query, keys, (False, False)),
            reader._dialect,
            {"glance_project", "glance_marker", "glance_limit"},
        )
        parameters = statement.parameters(
            {"glance_project": None, "glance_marker": marker, "glance_limit": 25}
        )
        raw = self.registry.engine.raw_connection()
        try:
            with raw.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
                cursor.execute("EXPLAIN " + statement.sql, parameters)
                plan = "\n".join(row[0] for row in cursor.fetchall())
        finally:
            raw.close()
        self.assertIn("Index Scan Backward using ix_images_deleted_created_at_id", plan, plan)
        self.assertIn("ROW(created_at, (id)::text) < ROW(", plan, plan)
        self.assertNotIn("Hash Join", plan, plan)
        # One sort, of the page's rows, above the scan's LIMIT.
        self.assertEqual(plan.count("Sort  ("), 1, plan)
        self.assertLess(plan.index("Sort  ("), plan.index("Nested Loop Left Join"), plan)
        page = self.listed(evolve(query, marker=marker, limit=25))
        self.assertEqual([image.id for image in page], ids[ids.index(marker) + 1 :][:25])


class KeptTests(SynchronousTestCase):
    """
    What a read makes of a record is kept while the record is the same or
    equal, the most recently used first kept.
    """

    def test_made_again_only_from_another_source(self) -> None:
        kept: Kept[list[int], object] = Kept()
        source = [1]
        first = kept.made("a", source, lambda s: object())
        self.assertIs(kept.made("a", source, lambda s: object()), first)
        self.assertIs(kept.made("a", [1], lambda s: object()), first)  # equal
        second = kept.made("a", [2], lambda s: object())
        self.assertIsNot(second, first)
        self.assertIs(kept.made("a", [2], lambda s: object()), second)

    def test_keep_and_clear(self) -> None:
        """
        What was made elsewhere is kept as C{made} keeps (replacing the
        key's, the least recently used going when full); clear forgets all.
        """
        kept: Kept[int, str] = Kept(2)
        kept.keep("a", 1, "a1")
        kept.keep("b", 1, "b1")
        kept.keep("a", 2, "a2")  # replaced, and now the most recent
        self.assertEqual(kept.get("a"), (2, "a2"))
        kept.keep("c", 1, "c1")  # "b" goes
        self.assertNotIn("b", kept)
        self.assertEqual(kept.made("c", 1, lambda s: "other"), "c1")
        kept.clear()
        self.assertNotIn("a", kept)
        self.assertNotIn("c", kept)

    def test_least_recently_used_goes_first(self) -> None:
        """
        Full, the entry used longest ago goes (not all of them): here the
        decoded records of a reader keeping two.
        """
        registry = sync_open("sqlite://")
        self.addCleanup(lambda: self.successResultOf(registry.close()))
        made = [self.successResultOf(registry.create(make_image())) for _ in range(3)]
        records = Records(Records.for_dialect(registry.engine.dialect).processors, Kept(2))
        with registry.engine.connect() as connection:
            raw = connection.connection.driver_connection
            rows = [raw.execute(SELECT_IMAGE, (m.id,)).fetchone() for m in made]  # type: ignore[union-attr]
        first = records.image(rows[0])
        second = records.image(rows[1])
        self.assertIs(records.image(rows[0]), first)  # now the most recent
        records.image(rows[2])  # the second goes
        self.assertIs(records.image(rows[0]), first)
        self.assertIsNot(records.image(rows[1]), second)
        self.assertEqual(records.image(rows[1]), second)
        self.assertEqual(first, made[0])


# -- metadata definitions --------------------------------------------------------


class SQLiteMemoryMetadefTests(MetadefConformanceMixin, SynchronousTestCase):
    """The metadef contract, on in-memory SQLite with a synchronous runner."""

    def make_registry(self) -> SQLRegistry:
        registry = sync_open("sqlite://")
        self.addCleanup(lambda: self.successResultOf(registry.close()))
        return registry


class SQLiteFileThreadPoolMetadefTests(MetadefConformanceMixin, _ThreadPoolHarness):
    """The metadef contract on a SQLite file, through a real thread pool."""

    make_registry = SQLiteFileThreadPoolConformanceTests.make_registry


class PostgreSQLMetadefTests(MetadefConformanceMixin, _ThreadPoolHarness):
    """The metadef contract on PostgreSQL, through a real thread pool."""

    def setUp(self) -> None:
        self.admin_url = postgres_admin_url(self)
        super().setUp()

    make_registry = PostgreSQLConformanceTests.make_registry
