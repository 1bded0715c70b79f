"""
L{IRegistry} on a SQL database: SQLite by default, PostgreSQL to scale out.

SQLAlchemy Core is blocking, so every statement runs inside a callable handed
to a L{BlockingRunner}: a thread pool in production, the calling thread in
tests. Nothing here touches the database on the reactor thread: on a
SQLite file, an image's record still current is answered there from what
L{glance_tx.registry.sql.fresh} kept, told by reading an inotify
descriptor without blocking, as a socket is read.
"""

from __future__ import annotations

import builtins
import os
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from attrs import define, evolve, field
from sqlalchemy import (
    Connection,
    Engine,
    RowMapping,
    and_,
    case,
    delete,
    false,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy import update as sql_update
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError, OperationalError
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFDSet
from zope.interface import implementer

from glance_tx.errors import (
    BadRequest,
    Conflict,
    NotFound,
    ServiceUnavailable,
    VersionConflict,
)
from glance_tx.images import (
    ACTIVE,
    DELETED,
    FAILED_IMPORT,
    IMAGE_IMPORTING,
    IMPORTING_TO_STORES,
    KILLED,
    MEMBER_STATUSES,
    PENDING_DELETE,
    QUEUED,
    SAVING,
    STATUSES,
    UPLOADING,
    UPLOADING_STATUSES,
    Image,
    ImageQuery,
    ImageUpdate,
    Member,
    ProjectUsage,
    apply_update,
    check_transition,
)
from glance_tx.metadefs.interface import IMetadefRegistry
from glance_tx.registry.interface import HeldClaim, IRegistry
from glance_tx.registry.schema import (
    image_locations,
    image_members,
    image_properties,
    image_tags,
    image_writes,
    images,
    node_claims,
    tasks,
    upload_leases,
)
from glance_tx.registry.sql.engine import is_memory_sqlite, open_engine, transaction
from glance_tx.registry.sql.fresh import FreshImages
from glance_tx.registry.sql.image_read import ImageReader, PostgresImageReader
from glance_tx.registry.sql.metadefs import SQLMetadefs
from glance_tx.registry.sql.page_read import FreshPages, PageReader
from glance_tx.registry.sql.pg_page_read import PostgresPageReader
from glance_tx.registry.sql.query import (
    child_condition,
    child_filters,
    few_matches,
    filter_conditions,
    scope_condition,
    segments,
    sort_keys,
)
from glance_tx.registry.sql.rows import (
    CORE_FIELDS,
    IMAGE_BY_ID,
    IMAGE_BY_ID_FOR_UPDATE,
    already_member,
    check_member_id,
    check_member_type,
    check_record,
    check_tag,
    found_member,
    insert_tag,
    live_image,
    load_images,
    lock_live_image,
    member_from_row,
    member_row,
    not_member,
    write_locations,
    write_properties,
    write_tags,
)
from glance_tx.registry.sql.tasks import (
    check_json,
    delete_expired,
    fetch_task,
    insert_task,
    list_tasks,
    write_task,
)
from glance_tx.tasks import Task, TaskChange, TaskQuery, changed, check_task
from glance_tx.threads import BlockingRunner

T = TypeVar("T")


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def open_sql_registry(
    url: str | URL,
    runner: BlockingRunner,
    *,
    now: Callable[[], datetime] = _utcnow,
    engine_options: Mapping[str, Any] | None = None,
    reactor: IReactorFDSet | None = None,
) -> SQLRegistry:
    """
    Connect to the database at C{url}, migrate it to the current schema and
    return a registry over it. Everything blocking runs through C{runner}.

    C{sqlite:///path} is a file database, C{sqlite://} an in-memory one (for
    tests), C{postgresql+psycopg://user@host/db} PostgreSQL. C{reactor}
    reads a SQLite file's change events as they come (else only at each
    read of an image).
    """
    engine = await runner.run(open_engine, url, dict(engine_options or {}))
    return SQLRegistry(engine, runner, now=now, reactor=reactor)


# -- the registry --------------------------------------------------------------


@implementer(IRegistry, IMetadefRegistry)
@define
class SQLRegistry(SQLMetadefs):
    """
    Image records in SQL tables (see L{glance_tx.registry.schema}), and
    metadata definitions (L{SQLMetadefs}).

    Build one with L{open_sql_registry}, which also migrates the database.
    A registry over an in-memory SQLite database serializes its work, since
    all threads share the one connection.
    """

    engine: Engine
    runner: BlockingRunner
    now: Callable[[], datetime] = _utcnow
    #: On SQLite, a property or tag filter that at most this many images
    #: match is served from the index on its value (see
    #: L{glance_tx.registry.sql.query.child_condition}).
    rare_filter_images: int = 1000
    #: Reads a SQLite file's change events as they come (L{FreshImages}).
    reactor: IReactorFDSet | None = None
    _lock: AbstractContextManager[Any] = field(init=False)
    #: The one-statement read of an image, on SQLite (see its module).
    _reader: ImageReader | None = field(init=False)
    #: The one-statement read of an image, on SQLite or PostgreSQL.
    _one: ImageReader | PostgresImageReader | None = field(init=False)
    #: Listing pages from statements kept per query shape (SQLite's, or
    #: PostgreSQL's page in one statement).
    _pages: PageReader | PostgresPageReader | None = field(init=False)
    #: Records answered without the pool while unchanged, on a SQLite file.
    _fresh: FreshImages | None = field(init=False, default=None)
    #: Listing pages answered without the pool while unchanged, likewise.
    _fresh_pages: FreshPages | None = field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._reader = ImageReader.for_engine(self.engine)
        self._one = self._reader or PostgresImageReader.for_engine(self.engine)
        self._pages = (
            PostgresPageReader.for_engine(self.engine)
            if self._reader is None
            else PageReader(self._reader)
        )
        if is_memory_sqlite(self.engine.url):
            self._lock = threading.Lock()
        else:
            self._lock = nullcontext()
            if self._reader is not None:
                path = os.path.abspath(str(self.engine.url.database))
                self._fresh = FreshImages(path, self.runner.run, self.reactor)
                self._fresh_pages = FreshPages(self._fresh)

    # IRegistry

    def create(self, image: Image) -> Deferred[Image]:
        return self._run(self._create, image)

    def get(self, image_id: str, include_deleted: bool = False) -> Deferred[Image]:
        fresh = self._fresh
        version = None if fresh is None else fresh.version()
        if version is None:
            return self._run(self._get, image_id, include_deleted)
        assert fresh is not None
        image = fresh.kept(image_id)
        if image is not None and (include_deleted or not image.deleted):
            return succeed(image)
        return self._run(self._get, image_id, include_deleted).addCallback(
            fresh.keep, image_id, version
        )

    def list(self, query: ImageQuery) -> Deferred[builtins.list[Image]]:
        if self._fresh_pages is not None:
            return self._fresh_pages.list(query, partial(self._run, self._list))
        return self._run(self._list, query)

    def update(
        self,
        image_id: str,
        update: ImageUpdate,
        expected_status: frozenset[str] | None = None,
        expected_version: int | None = None,
        write_id: str | None = None,
    ) -> Deferred[Image]:
        return self._run(
            self._update, image_id, update, expected_status, expected_version, write_id
        )

    def delete(
        self, image_id: str, expected_version: int | None = None, write_id: str | None = None
    ) -> Deferred[Image]:
        return self._run(self._delete, image_id, expected_version, write_id)

    def all_locations(self) -> Deferred[frozenset[str]]:
        return self._run(self._all_locations)

    def pending_deletes(self, older_than: float) -> Deferred[builtins.list[Image]]:
        return self._run(self._pending_deletes, older_than)
    def project_usage(self, project_id: str) -> Deferred[ProjectUsage]:
        return self._run(self._project_usage, project_id)

    def add_tag(self, image_id: str, tag: str) -> Deferred[Image]:
        """
        Tag the image (already tagged: no change) and fire with the record;
        C{updated_at} moves only if the tag is new. NotFound for an unknown
        or deleted image, BadRequest for a tag the table cannot hold.

        One row is inserted, not the tag set rewritten, so concurrent calls
        for one image cannot undo each other (as a read of the image and an
        C{update} of its whole tag set would).
        """
        return self._run(self._add_tag, image_id, tag)

    def remove_tag(
        self, image_id: str, tag: str, write_id: str | None = None
    ) -> Deferred[Image]:
        """
        Untag the image, bump C{updated_at} and fire with the record; one
        row deleted, as L{add_tag}. NotFound for an unknown or deleted
        image, or a tag it does not have, unless this is a repeat of the
        removal that took it (C{write_id}).
        """
        return self._run(self._remove_tag, image_id, tag, write_id)

    def add_member(self, image_id: str, member_id: str) -> Deferred[Member]:
        return self._run(self._add_member, image_id, member_id)

    def get_member(self, image_id: str, member_id: str) -> Deferred[Member]:
        return self._run(self._get_member, image_id, member_id)

    def list_members(self, image_id: str) -> Deferred[builtins.list[Member]]:
        return self._run(self._list_members, image_id)

    def update_member(
        self, image_id: str, member_id: str, status: str
    ) -> Deferred[Member]:
        return self._run(self._update_member, image_id, member_id, status)

    def remove_member(
        self, image_id: str, member_id: str, write_id: str | None = None
    ) -> Deferred[None]:
        return self._run(self._remove_member, image_id, member_id, write_id)

    def ping(self) -> Deferred[None]:
        return self._run(self._ping)

    def create_task(self, task: Task) -> Deferred[Task]:
        return self._run(self._create_task, task)

    def get_task(self, task_id: str) -> Deferred[Task]:
        return self._run(self._get_task, task_id)

    def list_tasks(self, query: TaskQuery) -> Deferred[builtins.list[Task]]:
        return self._run(self._list_tasks, query)

    def update_task(self, task_id: str, change: TaskChange) -> Deferred[Task]:
        return self._run(self._update_task, task_id, change)

    def delete_expired_tasks(self) -> Deferred[int]:
        return self._run(self._delete_expired_tasks)

    def hold_uploads(
        self, node_id: str, uploads: Mapping[str, str], seconds: float
    ) -> Deferred[None]:
        return self._run(self._hold_uploads, node_id, dict(uploads), seconds)

    def release_upload(self, image_id: str, node_id: str) -> Deferred[None]:
        return self._run(self._release_upload, image_id, node_id)

    def reclaim_uploads(
        self, dead_node_id: str | None = None
    ) -> Deferred[builtins.list[Image]]:
        return self._run(self._reclaim_uploads, dead_node_id)

    def claim_node(
        self, node_id: str, instance: str, seconds: float, replacing: str | None = None
    ) -> Deferred[HeldClaim | None]:
        return self._run(self._claim_node, node_id, instance, seconds, replacing)

    def release_node(self, node_id: str, instance: str) -> Deferred[None]:
        return self._run(self._release_node, node_id, instance)

    def close(self) -> Deferred[None]:
        """Close the database connections (the registry is unusable after)."""
        if self._fresh is not None:
            self._fresh.close()
        return self.runner.run(self.engine.dispose)

    # plumbing

    def _run(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        return self.runner.run(self._blocking, f, *args)

    def _blocking(self, f: Callable[..., T], *args: Any) -> T:
        """Runs on the runner's thread: the only way into the database."""
        try:
            with self._lock:
                return f(*args)
        except (OperationalError, sqlite3.OperationalError) as e:
            # The second: from ImageReader, which runs on the DBAPI itself.
            raise ServiceUnavailable(
                "The image registry database is unavailable"
            ) from e

    def _write(self) -> AbstractContextManager[Connection]:
        """A transaction that will write (on SQLite, it takes the lock first)."""
        return transaction(self.engine, write=True)

    def _read(self) -> AbstractContextManager[Connection]:
        return transaction(self.engine, write=False)

    def _after(self, previous: datetime) -> datetime:
        """
        The next C{updated_at}: now, but always later than C{previous}
        (another node's clock, or this one's, may be behind).
        """
        return max(self.now(), previous + timedelta(microseconds=1))

    # blocking implementations

    def _create(self, image: Image) -> Image:
        image = evolve(image, version=1)
        check_record(image)
        with self._write() as connection:
            taken = connection.execute(
                select(images.c.id).where(images.c.id == image.id)
            ).first()
            if taken is not None:
                raise Conflict(f"An image with ID {image.id} already exists")
            try:
                connection.execute(
                    insert(images), {name: getattr(image, name) for name in CORE_FIELDS}
                )
            except IntegrityError:
                raise Conflict(f"An image with ID {image.id} already exists") from None
            write_properties(connection, image.id, image.properties)
            write_locations(connection, image.id, image.locations)
            write_tags(connection, image.id, image.tags)
            return self._fetch(connection, image.id, include_deleted=True)

    def _get(self, image_id: str, include_deleted: bool) -> Image:
        if self._one is not None:
            found = self._one.get(image_id)
            if found is None or (found[1] and not include_deleted):
                raise NotFound(f"No image found with ID {image_id}")
            return found[0]
        with self._read() as connection:
            return self._fetch(connection, image_id, include_deleted)

    def _fetch(
        self,
        connection: Connection,
        image_id: str,
        include_deleted: bool,
        for_update: bool = False,
    ) -> Image:
        statement = IMAGE_BY_ID_FOR_UPDATE if for_update else IMAGE_BY_ID
        row = connection.execute(statement, {"image_id": image_id}).mappings().first()
        if row is None or (row["deleted"] and not include_deleted):
            raise NotFound(f"No image found with ID {image_id}")
        return load_images(connection, [row])[0]

    def _list(self, query: ImageQuery) -> builtins.list[Image]:
        if self._pages is not None:
            page = self._pages.list(query, self.rare_filter_images)
            if page is not None:
                return page
        keys = sort_keys(query.sort)
        scope = scope_condition(query)
        with self._read() as connection:
            marker: Sequence[Any] | None = None
            if query.marker is not None:
                # The marker must be an image this listing's scope shows; it
                # need not match the filters (it may have been renamed since).
                found = connection.execute(
                    select(*(key.column for key in keys)).where(
                        images.c.id == query.marker,
                        images.c.deleted == false(),
                        scope,
                    )
                ).first()
                if found is None:
                    raise BadRequest(f"Invalid marker: image {query.marker} not found")
                marker = tuple(found)
            children = child_filters(query, connection.dialect.name)
            few = few_matches(connection, children, self.rare_filter_images)
            conditions = filter_conditions(
                query,
                scope,
                [child_condition(child, f) for child, f in zip(children, few, strict=True)],
            )
            order_by = [
                key.order_by(leading=index == 0) for index, key in enumerate(keys)
            ]
            rows: builtins.list[RowMapping] = []
            row_values = connection.dialect.name == "postgresql"
            # On SQLite only the page's ids are chosen here; the reader reads
            # the images, in this transaction (see ImageReader.get_many).
            selected = (images.c.id,) if self._reader is not None else (images,)
            for segment in segments(keys, marker, row_values):
                wanted = query.limit - len(rows)
                if wanted <= 0:
                    break
                rows.extend(
                    connection.execute(
                        select(*selected)
                        .where(*conditions, segment)
                        .order_by(*order_by)
                        .limit(wanted)
                    ).mappings()
                )
            if self._reader is not None:
                return self._reader.get_many(
                    connection.connection.driver_connection, [row["id"] for row in rows]
                )
            return load_images(connection, rows)

    def _update(
        self,
        image_id: str,
        change: ImageUpdate,
        expected_status: frozenset[str] | None,
        expected_version: int | None,
        write_id: str | None,
    ) -> Image:
        _check_version(expected_version)
        _check_write_id(write_id)
        with self._write() as connection:
            if _repeated(connection, image_id, write_id):
                return self._fetch(connection, image_id, include_deleted=True)
            current = self._fetch(connection, image_id, False, for_update=True)
            _check_current(current, expected_version)
            if expected_status is not None and current.status not in expected_status:
                raise Conflict(
                    f"Image {image_id} is {current.status}, not "
                    + " or ".join(sorted(expected_status))
                )
            fields = dict(change.fields)
            if "status" in fields:
                if fields["status"] not in STATUSES:
                    raise BadRequest(f"Invalid status {fields['status']!r}")
                check_transition(current.status, fields["status"])
            if isinstance(fields.get("locations"), str | bytes):
                raise BadRequest("locations must be a list of URLs")
            now = self._after(current.updated_at)
            try:
                new = evolve(apply_update(current, change), updated_at=now)
            except TypeError as e:
                raise BadRequest(f"Invalid image update: {e}") from None
            if new.status == DELETED:
                new = evolve(new, deleted=True, deleted_at=now, locations=())
            elif new.status == PENDING_DELETE and current.status != PENDING_DELETE:
                # Deleted for every reader, its data kept for the scrubber.
                new = evolve(new, deleted=True, deleted_at=now)
            check_record(new)
            self._store_changes(connection, current, new)
            _record_write(connection, image_id, write_id)
            return self._fetch(connection, image_id, include_deleted=True)

    def _store_changes(self, connection: Connection, old: Image, new: Image) -> None:
        """
        Write C{new} over C{old}, one version on. The row is locked already;
        the version in the WHERE makes the write itself conditional on the
        row being the one read, whatever locking a database does.
        """
        values = {name: getattr(new, name) for name in CORE_FIELDS if name != "id"}
        values["version"] = old.version + 1
        written = connection.execute(
            sql_update(images)
            .where(images.c.id == old.id, images.c.version == old.version)
            .values(values)
        )
        if written.rowcount != 1:
            raise VersionConflict(f"Image {old.id} was changed meanwhile")
        gone = {
            key
            for key, value in old.properties.items()
            if new.properties.get(key) != value
        }
        if gone:
            connection.execute(
                delete(image_properties).where(
                    image_properties.c.image_id == old.id,
                    image_properties.c.name.in_(sorted(gone)),
                )
            )
        write_properties(
            connection,
            old.id,
            {k: v for k, v in new.properties.items() if old.properties.get(k) != v},
        )
        if new.locations != old.locations:
            connection.execute(
                delete(image_locations).where(image_locations.c.image_id == old.id)
            )
            write_locations(connection, old.id, new.locations)
        if new.tags != old.tags:
            connection.execute(
                delete(image_tags).where(image_tags.c.image_id == old.id)
            )
            write_tags(connection, old.id, new.tags)

    def _delete(
        self, image_id: str, expected_version: int | None, write_id: str | None
    ) -> Image:
        _check_version(expected_version)
        _check_write_id(write_id)
        with self._write() as connection:
            if _repeated(connection, image_id, write_id):
                return self._fetch(connection, image_id, include_deleted=True)
            current = self._fetch(connection, image_id, True, for_update=True)
            if current.deleted and current.status != PENDING_DELETE:
                raise NotFound(f"No image found with ID {image_id}")
            _check_current(current, expected_version)
            check_transition(current.status, DELETED)
            now = self._after(current.updated_at)
            new = evolve(
                current,
                status=DELETED,
                deleted=True,
                # A pending delete keeps the time it was deleted at.
                deleted_at=current.deleted_at if current.deleted else now,
                updated_at=now,
                locations=(),
            )
            self._store_changes(connection, current, new)
            _record_write(connection, image_id, write_id)
            if self._one is not None:
                self._one.forget(image_id)
            return self._fetch(connection, image_id, include_deleted=True)

    def _all_locations(self) -> frozenset[str]:
        with self._read() as connection:
            return frozenset(
                connection.execute(
                    select(image_locations.c.url)
                    .join(images, images.c.id == image_locations.c.image_id)
                    .where(
                        or_(
                            and_(images.c.deleted == false(), images.c.status != KILLED),
                            images.c.status == PENDING_DELETE,
                        )
                    )
                ).scalars()
            )

    def _pending_deletes(self, older_than: float) -> builtins.list[Image]:
        before = self.now() - timedelta(seconds=older_than)
        with self._read() as connection:
            rows = connection.execute(
                select(images)
                .where(
                    images.c.status == PENDING_DELETE,
                    images.c.deleted_at <= before,
                )
                .order_by(images.c.deleted_at, images.c.id)
            ).mappings().all()
            return load_images(connection, rows)

    def _project_usage(self, project_id: str) -> ProjectUsage:
        """One aggregate query, on the (deleted, owner) index."""
        size = func.coalesce(images.c.size, 0)
        staged = (UPLOADING, IMAGE_IMPORTING)
        query = select(
            func.count(),
            func.coalesce(func.sum(case((images.c.status != KILLED, size), else_=0)), 0),
            func.coalesce(func.sum(case((images.c.status.in_(staged), size), else_=0)), 0),
            func.coalesce(
                func.sum(case((images.c.status.in_(sorted(UPLOADING_STATUSES)), 1), else_=0)), 0
            ),
        ).where(images.c.owner == project_id, images.c.deleted == false())
        with self._read() as connection:
            count, total, stage, uploading = connection.execute(query).one()
        return ProjectUsage(
            image_size_total=int(total),
            image_stage_total=int(stage),
            image_count_total=int(count),
            image_count_uploading=int(uploading),
        )

    def _ping(self) -> None:
        if self._reader is not None:
            self._reader.ping()
            return
        with self._read() as connection:
            connection.execute(select(1)).scalar_one()

    # tasks (see glance_tx.registry.sql.tasks)

    def _create_task(self, task: Task) -> Task:
        check_task(task)
        check_json(task)
        if task.expires_at is not None and (
            not isinstance(task.expires_at, datetime) or task.expires_at.tzinfo is None
        ):
            raise BadRequest("A task's expires_at must be a timezone-aware time")
        now = self.now()
        task = evolve(task, created_at=now, updated_at=now)
        with self._write() as connection:
            if connection.execute(select(tasks.c.id).where(tasks.c.id == task.id)).first():
                raise Conflict(f"A task with ID {task.id} already exists")
            try:
                insert_task(connection, task)
            except IntegrityError:
                raise Conflict(f"A task with ID {task.id} already exists") from None
            return fetch_task(connection, task.id, now)

    def _get_task(self, task_id: str) -> Task:
        if not isinstance(task_id, str):
            raise BadRequest("A task id must be a string")
        with self._read() as connection:
            return fetch_task(connection, task_id, self.now())

    def _list_tasks(self, query: TaskQuery) -> builtins.list[Task]:
        with self._read() as connection:
            return list_tasks(connection, query, self.now())

    def _update_task(self, task_id: str, change: TaskChange) -> Task:
        with self._write() as connection:
            now = self.now()
            current = fetch_task(connection, task_id, now, for_update=True)
            new = changed(current, change, now)
            check_task(new)
            check_json(new)
            write_task(connection, new)
            # Not read back: a change may expire the task at once.
            return new

    def _delete_expired_tasks(self) -> int:
        with self._write() as connection:
            return int(connection.execute(delete_expired(self.now())).rowcount)

    # upload leases (see IRegistry.hold_uploads): times are this registry's
    # clock, never a node's.

    def _hold_uploads(
        self, node_id: str, uploads: dict[str, str], seconds: float
    ) -> None:
        _check_node_id(node_id)
        for status in uploads.values():
            if status not in STATUSES:
                raise BadRequest(f"Invalid status {status!r}")
        if not uploads:
            return
        expires_at = self.now() + timedelta(seconds=seconds)
        with self._write() as connection:
            live = set(
                connection.execute(
                    select(images.c.id).where(
                        images.c.id.in_(sorted(uploads)), images.c.deleted == false()
                    )
                ).scalars()
            )
            connection.execute(
                delete(upload_leases).where(
                    upload_leases.c.node_id == node_id,
                    upload_leases.c.image_id.in_(sorted(uploads)),
                )
            )
            if live:
                connection.execute(
                    insert(upload_leases),
                    [
                        {
                            "image_id": image_id,
                            "node_id": node_id,
                            "expires_at": expires_at,
                            "failure_status": uploads[image_id],
                        }
                        for image_id in sorted(live)
                    ],
                )

    def _release_upload(self, image_id: str, node_id: str) -> None:
        with self._write() as connection:
            connection.execute(
                delete(upload_leases).where(
                    upload_leases.c.image_id == image_id,
                    upload_leases.c.node_id == node_id,
                )
            )

    def _reclaim_uploads(self, dead_node_id: str | None) -> builtins.list[Image]:
        with self._read() as connection:
            # Saving and importing images always run under a lease (one
            # without any is from before leases: reclaimed too); a stage or
            # a copy only shows by its lease.
            candidates = connection.execute(
                select(images.c.id)
                .where(
                    images.c.deleted == false(),
                    or_(
                        images.c.status.in_((SAVING, IMAGE_IMPORTING)),
                        and_(
                            images.c.status.in_((UPLOADING, ACTIVE)),
                            images.c.id.in_(select(upload_leases.c.image_id)),
                        ),
                    ),
                )
                .order_by(images.c.created_at, images.c.id)
            ).scalars().all()
        reclaimed = []
        for image_id in candidates:
            image = self._reclaim_one(image_id, dead_node_id)
            if image is not None:
                reclaimed.append(image)
        return reclaimed

    def _reclaim_one(self, image_id: str, dead_node_id: str | None) -> Image | None:
        """Reclaim one image's upload if, with its row held, it is still ours to."""
        with self._write() as connection:
            try:
                current = self._fetch(connection, image_id, False, for_update=True)
            except NotFound:
                return None
            if current.status not in (SAVING, IMAGE_IMPORTING, UPLOADING, ACTIVE):
                return None  # finished, failed, or reclaimed by another node
            now = self.now()
            leases = connection.execute(
                select(upload_leases).where(upload_leases.c.image_id == image_id)
            ).mappings().all()
            if any(
                lease["expires_at"] > now and lease["node_id"] != dead_node_id
                for lease in leases
            ):
                return None  # a live node runs it
            statuses = {lease["failure_status"] for lease in leases}
            new = _reclaimed(current, statuses)
            if new is not None:
                new = evolve(new, updated_at=self._after(current.updated_at))
                self._store_changes(connection, current, new)
            # Dropped either way: an expired lease on an image whose work
            # ended (its release lost) is only stale.
            connection.execute(
                delete(upload_leases).where(upload_leases.c.image_id == image_id)
            )
            if new is None:
                return None
            return self._fetch(connection, image_id, include_deleted=True)

    # node claims (see IRegistry.claim_node): the registry's clock, as for
    # leases.

    def _claim_node(
        self, node_id: str, instance: str, seconds: float, replacing: str | None
    ) -> HeldClaim | None:
        _check_node_id(node_id)
        if not isinstance(instance, str) or not instance or len(instance) > 255:
            raise BadRequest("A node instance must be a string of 1 to 255 characters")
        try:
            return self._claim_node_once(node_id, instance, seconds, replacing)
        except IntegrityError:
            # Another process inserted the first claim on this id at the
            # same moment: decide again, against its row.
            return self._claim_node_once(node_id, instance, seconds, replacing)

    def _claim_node_once(
        self, node_id: str, instance: str, seconds: float, replacing: str | None
    ) -> HeldClaim | None:
        with self._write() as connection:
            now = self.now()
            row = connection.execute(
                select(node_claims)
                .where(node_claims.c.node_id == node_id)
                .with_for_update()
            ).mappings().first()
            expires_at = now + timedelta(seconds=seconds)
            if row is None:
                connection.execute(
                    insert(node_claims),
                    {"node_id": node_id, "instance": instance, "expires_at": expires_at},
                )
                return None
            holder = row["instance"]
            if holder not in (instance, replacing) and row["expires_at"] > now:
                return HeldClaim(holder, (row["expires_at"] - now).total_seconds())
            connection.execute(
                sql_update(node_claims)
                .where(node_claims.c.node_id == node_id)
                .values(instance=instance, expires_at=expires_at)
            )
            return None

    def _release_node(self, node_id: str, instance: str) -> None:
        with self._write() as connection:
            connection.execute(
                delete(node_claims).where(
                    node_claims.c.node_id == node_id, node_claims.c.instance == instance
                )
            )

    # tags: each call is one transaction that first locks the image's row,
    # so changes to one image (tags, update, delete) happen one after the
    # other, and a tag never lands on an image deleted meanwhile.

    def _add_tag(self, image_id: str, tag: str) -> Image:
        check_tag(tag)
        with self._write() as connection:
            updated_at = lock_live_image(connection, image_id)
            if insert_tag(connection, image_id, tag):
                self._touch(connection, image_id, updated_at)
            return self._fetch(connection, image_id, include_deleted=False)

    def _remove_tag(self, image_id: str, tag: str, write_id: str | None) -> Image:
        if not isinstance(tag, str):
            raise BadRequest("A tag must be a string")
        _check_write_id(write_id)
        with self._write() as connection:
            if _repeated(connection, image_id, write_id):
                return self._fetch(connection, image_id, include_deleted=True)
            updated_at = lock_live_image(connection, image_id)
            removed = connection.execute(
                delete(image_tags).where(
                    image_tags.c.image_id == image_id, image_tags.c.value == tag
                )
            ).rowcount
            if not removed:
                raise NotFound(f"Tag {tag!r} not found on image {image_id}")
            self._touch(connection, image_id, updated_at)
            _record_write(connection, image_id, write_id)
            return self._fetch(connection, image_id, include_deleted=False)

    def _touch(
        self, connection: Connection, image_id: str, updated_at: datetime
    ) -> None:
        connection.execute(
            sql_update(images)
            .where(images.c.id == image_id)
            .values(updated_at=self._after(updated_at), version=images.c.version + 1)
        )

    # memberships: each call is one transaction; the image must exist and
    # not be deleted (a deleted image's memberships are kept but not found).

    def _add_member(self, image_id: str, member_id: str) -> Member:
        check_member_id(member_id)
        with self._write() as connection:
            live_image(connection, image_id, lock=True)
            if member_row(connection, image_id, member_id) is not None:
                raise already_member(image_id, member_id)
            now = self.now()
            try:
                connection.execute(
                    insert(image_members),
                    {
                        "image_id": image_id,
                        "member_id": member_id,
                        "status": "pending",
                        "created_at": now,
                        "updated_at": now,
                    },
                )
            except IntegrityError:
                raise already_member(image_id, member_id) from None
            return found_member(connection, image_id, member_id)

    def _get_member(self, image_id: str, member_id: str) -> Member:
        check_member_type(member_id)
        with self._read() as connection:
            live_image(connection, image_id)
            return found_member(connection, image_id, member_id)

    def _list_members(self, image_id: str) -> builtins.list[Member]:
        with self._read() as connection:
            live_image(connection, image_id)
            return [
                member_from_row(row)
                for row in connection.execute(
                    select(image_members)
                    .where(image_members.c.image_id == image_id)
                    .order_by(image_members.c.created_at, image_members.c.id)
                ).mappings()
            ]

    def _update_member(self, image_id: str, member_id: str, status: str) -> Member:
        check_member_type(member_id)
        if not isinstance(status, str) or status not in MEMBER_STATUSES:
            raise BadRequest(
                f"Invalid member status {status!r}; expected one of "
                + ", ".join(sorted(MEMBER_STATUSES))
            )
        with self._write() as connection:
            live_image(connection, image_id, lock=True)
            current = found_member(connection, image_id, member_id, for_update=True)
            now = self._after(current.updated_at)
            connection.execute(
                sql_update(image_members)
                .where(
                    image_members.c.image_id == image_id,
                    image_members.c.member_id == member_id,
                )
                .values(status=status, updated_at=now)
            )
            return found_member(connection, image_id, member_id)

    def _remove_member(
        self, image_id: str, member_id: str, write_id: str | None
    ) -> None:
        check_member_type(member_id)
        _check_write_id(write_id)
        with self._write() as connection:
            if _repeated(connection, image_id, write_id):
                return
            live_image(connection, image_id, lock=True)
            removed = connection.execute(
                delete(image_members).where(
                    image_members.c.image_id == image_id,
                    image_members.c.member_id == member_id,
                )
            ).rowcount
            if not removed:
                raise not_member(image_id, member_id)
            _record_write(connection, image_id, write_id)


def _reclaimed(current: Image, statuses: set[str]) -> Image | None:
    """
    What an image whose work lost its node becomes (None: nothing to undo),
    from its status and the statuses its expired leases name:

      - saving (an upload): the lease's status (v1 killed, v2 queued);
        several leases (two nodes raced to start; one won) name one status
        unless v1 and v2 raced: then killed, the stricter; none: killed;
      - uploading (a stage): queued, its partial data for the caller to
        remove, unless the stage had ended (its data recorded);
      - importing: uploading again for glance-direct (its lease says so),
        with its staged data (the first location; the copies made since
        are swept out as orphans), else queued with no data; an import
        from before leases, queued;
      - active (a copy-image): unchanged, its copies as recorded.

    An import's C{os_glance_importing_to_stores} (what was still to do)
    is emptied and its stores added to C{os_glance_failed_import}.
    """
    status = current.status
    if status == SAVING:
        target = statuses.pop() if len(statuses) == 1 else KILLED
        check_transition(status, target)
        return evolve(current, status=target)
    if status == UPLOADING:
        if current.locations or QUEUED not in statuses:
            return None
        return evolve(current, status=QUEUED, locations=())
    remaining = [s for s in current.properties.get(IMPORTING_TO_STORES, "").split(",") if s]
    if status == ACTIVE and (ACTIVE not in statuses or not remaining):
        return None
    failed = [s for s in current.properties.get(FAILED_IMPORT, "").split(",") if s]
    properties = {
        **current.properties,
        IMPORTING_TO_STORES: "",
        FAILED_IMPORT: ",".join(dict.fromkeys(failed + remaining)),
    }
    if status == ACTIVE:
        return evolve(current, properties=properties)
    if statuses == {UPLOADING} and current.locations:
        # Not a move a client may make (Glance's state machine has no
        # importing -> uploading): the reclaim undoes the import's start,
        # and the staged data, kept until an import ends, is still there.
        return evolve(current, status=UPLOADING, locations=current.locations[:1], properties=properties)
    return evolve(current, status=QUEUED, locations=(), properties=properties)


def _check_write_id(write_id: str | None) -> None:
    if write_id is not None and (
        not isinstance(write_id, str) or not write_id or len(write_id) > 64
    ):
        raise BadRequest("write_id must be a string of 1 to 64 characters")


def _repeated(connection: Connection, image_id: str, write_id: str | None) -> bool:
    """
    Whether the image's last identified write was C{write_id}: then this
    write is a repeat of one already made. Locks the image's row first, so
    a repeat that arrives while its first is still running waits for it.
    """
    if write_id is None:
        return False
    connection.execute(
        select(images.c.id).where(images.c.id == image_id).with_for_update()
    ).first()
    last = connection.execute(
        select(image_writes.c.write_id).where(image_writes.c.image_id == image_id)
    ).scalar()
    return bool(last == write_id)


def _record_write(connection: Connection, image_id: str, write_id: str | None) -> None:
    """Remember C{write_id} as the image's last identified write."""
    if write_id is None:
        return
    connection.execute(delete(image_writes).where(image_writes.c.image_id == image_id))
    connection.execute(insert(image_writes), {"image_id": image_id, "write_id": write_id})


def _check_node_id(node_id: str) -> None:
    if not isinstance(node_id, str) or not node_id or len(node_id) > 255:
        raise BadRequest("A node id must be a string of 1 to 255 characters")


def _check_version(expected_version: int | None) -> None:
    if expected_version is not None and (
        isinstance(expected_version, bool) or not isinstance(expected_version, int)
    ):
        raise BadRequest("expected_version must be an integer")


def _check_current(current: Image, expected_version: int | None) -> None:
    """VersionConflict unless the record is at C{expected_version} (if given)."""
    if expected_version is not None and current.version != expected_version:
        raise VersionConflict(
            f"Image {current.id} has changed: it is at version {current.version}, "
            f"not {expected_version}"
        )
