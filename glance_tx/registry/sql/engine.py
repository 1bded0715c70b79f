"""
The registry's database: engines configured for SQLite and PostgreSQL, the
transactions every registry call runs in, and the Alembic migrations that
bring a database to this code's schema.

Everything here blocks: call it through a L{glance_tx.threads.BlockingRunner}.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any, cast
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import StaticPool

MIGRATIONS_DIR = Path(__file__).parent.parent / "migrations"

#: Execution option asking SQLite for C{BEGIN IMMEDIATE}: a transaction that
#: reads and then writes must hold the write lock from its first read, or two
#: of them can both read the old status and both write (or deadlock).
_SQLITE_WRITE = "glance_tx_sqlite_write"

#: Any constant: the PostgreSQL advisory lock that keeps API nodes starting
#: at the same time from running the migrations concurrently.
_MIGRATION_LOCK_ID = 0x676C616E6365


def is_memory_sqlite(url: URL) -> bool:
    """Whether C{url} names an in-memory SQLite database (one connection)."""
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def create_registry_engine(url: str | URL, **options: Any) -> Engine:
    """
    Make an engine configured for the registry (this does not connect,
    though it creates a missing SQLite file: see L{_watch_file}).

    SQLite gets WAL, foreign keys, a busy timeout (L{SQLITE_BUSY_TIMEOUT})
    and explicit transaction control (so writers can take the lock up front); an in-memory SQLite
    database uses one shared connection so every thread sees the same data.

    C{postgresql://} URLs use psycopg 3, with its automatic server-side
    prepared statements turned off: after a few runs of one statement
    PostgreSQL would switch to a generic plan, blind to the values, and a
    listing's best plan depends on them (a rare tag or property is found
    through its index and sorted, a common one is checked row by row along
    the ordered scan). Measured: a page filtered on a tag held by 0.1% of
    100,000 images took 91 ms with the generic plan, 10 ms without.
    Timeouts (L{POSTGRES_TIMEOUTS}) keep a stopped server from hanging
    a request. C{options} go to L{create_engine}.
    """
    url = make_url(url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() == "sqlite":
        memory = is_memory_sqlite(url)
        connect_args: dict[str, Any] = {
            "check_same_thread": False,
            "timeout": SQLITE_BUSY_TIMEOUT,
        }
        connect_args.update(options.pop("connect_args", {}))
        if memory:
            # One shared connection: there is no pool to size.
            options.pop("pool_size", None)
            options.setdefault("poolclass", StaticPool)
            engine = create_engine(url, connect_args=connect_args, **options)
        else:
            path = os.path.abspath(cast(str, url.database))
            _create_file(path)
            engine = create_engine(
                url, creator=_existing_file(path, connect_args), **options
            )
            _watch_file(engine, path)
        _configure_sqlite(engine, wal=not memory)
        return engine
    options.setdefault("pool_pre_ping", True)
    if url.get_backend_name() == "postgresql" and url.get_driver_name() == "psycopg":
        driver_args: dict[str, Any] = {"prepare_threshold": None, **POSTGRES_TIMEOUTS}
        driver_args.update(options.pop("connect_args", {}))
        options["connect_args"] = driver_args
    return create_engine(url, **options)


#: libpq settings that bound how long a stopped or unreachable PostgreSQL
#: server can hold a request (and a thread of the pool): a connection
#: attempt gives up after 5 s, and an open connection whose server has
#: gone silent is found dead by TCP keepalives and C{tcp_user_timeout}
#: (unacknowledged data) in about 15 s, rather than the kernel's minutes.
#: A query that merely runs long is not cut: its server still answers
#: keepalives.
POSTGRES_TIMEOUTS: Mapping[str, Any] = MappingProxyType(
    {
        "connect_timeout": 5,
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 3,
        "tcp_user_timeout": 15000,
    }
)

#: Seconds a SQLite statement waits for another connection's lock before
#: it fails as "database is locked" (then a 503). Transactions here hold
#: the lock for milliseconds; a lock held for seconds is a fault (a stuck
#: process, a backup holding it), and a longer wait would hold a thread of
#: the pool per request, until every request waited on it.
SQLITE_BUSY_TIMEOUT = 5.0


def _inode(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _create_file(path: str) -> None:
    """
    An empty file is an empty SQLite database: make it if missing. If it
    cannot be made, the first connection says why.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    except OSError:
        pass


def _existing_file(path: str, connect_args: Mapping[str, Any]) -> Callable[[], Any]:
    """
    Connections to the database file at C{path} that do not create it
    (C{mode=rw}): a file gone while the service runs is an error to
    report, not an empty database to write to.
    """
    uri = "file:" + quote(path) + "?mode=rw"

    def connect() -> Any:
        return sqlite3.connect(uri, uri=True, **connect_args)

    return connect


def _watch_file(engine: Engine, path: str) -> None:
    """
    Make each pooled connection check, when it is taken, that C{path} is
    still the file it opened. A connection keeps an unlinked file open: the
    database deleted or replaced (restored from a backup) would otherwise
    go on taking writes that no one will see. A connection whose file is
    gone is replaced; the new one fails to open until the file is back.
    """

    @event.listens_for(engine, "connect")
    def connect(dbapi_connection: Any, connection_record: Any) -> None:
        connection_record.info["inode"] = _inode(path)

    @event.listens_for(engine, "checkout")
    def checkout(dbapi_connection: Any, connection_record: Any, proxy: Any) -> None:
        if _inode(path) != connection_record.info.get("inode"):
            raise DisconnectionError(f"The registry database {path} was removed or replaced")


def _configure_sqlite(engine: Engine, wal: bool) -> None:
    """
    Take transaction control away from the sqlite3 module (which would BEGIN
    lazily and COMMIT before DDL) and emit BEGIN ourselves.
    """

    @event.listens_for(engine, "connect")
    def connect(dbapi_connection: Any, connection_record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys = ON")
            if wal:
                cursor.execute("PRAGMA journal_mode = WAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def begin(connection: Connection) -> None:
        if connection.get_execution_options().get(_SQLITE_WRITE):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")


#: The revision this code's schema is at. Start-up compares the database's
#: alembic_version with it and imports Alembic (about 11 MiB of resident
#: memory, for the life of the process) only when there is migrating to do.
#: A test checks it against the migration scripts' head.
SCHEMA_REVISION = "0011"


def alembic_config(connection: Connection) -> Any:
    """An Alembic configuration built in code, bound to C{connection}."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The head revision of the migration scripts."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at (C{None} for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """
    Bring the database up to C{revision}, in one transaction. Blocking.

    Running it on an up-to-date database changes nothing.
    """
    from alembic import command

    with engine.connect() as connection:
        connection.execution_options(**{_SQLITE_WRITE: True})
        with connection.begin():
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:id)"),
                    {"id": _MIGRATION_LOCK_ID},
                )
            command.upgrade(alembic_config(connection), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the database back to C{revision} (C{"base"}: empty). Blocking."""
    from alembic import command

    with engine.connect() as connection:
        connection.execution_options(**{_SQLITE_WRITE: True})
        with connection.begin():
            command.downgrade(alembic_config(connection), revision)


def _is_current(engine: Engine) -> bool:
    """Whether the database is at L{SCHEMA_REVISION}, asked without Alembic."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return False
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        return list(versions) == [SCHEMA_REVISION]


def open_engine(url: str | URL, options: Mapping[str, Any]) -> Engine:
    """
    An engine on C{url} whose database is at L{SCHEMA_REVISION}, migrated
    first if it is not (Alembic is imported only then). Blocking.
    """
    engine = create_registry_engine(url, **options)
    try:
        if not _is_current(engine):
            upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


@contextmanager
def transaction(engine: Engine, write: bool) -> Iterator[Connection]:
    """
    A connection in one transaction: committed on success, rolled back on
    any exception (including the typed refusals raised inside it).

    On PostgreSQL, reads are REPEATABLE READ: a listing's queries (marker,
    the NULL and non-NULL ranges, the children) then see one snapshot, so
    an image renamed meanwhile cannot appear twice on a page. Writes stay
    READ COMMITTED and lock the row they change (SELECT ... FOR UPDATE).
    """
    with engine.connect() as connection:
        if write:
            connection.execution_options(**{_SQLITE_WRITE: True})
        elif connection.dialect.name == "postgresql":
            connection.execution_options(isolation_level="REPEATABLE READ")
        with connection.begin():
            yield connection
