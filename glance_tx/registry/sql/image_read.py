"""
The registry's hottest reads, one image by id and the health check's ping,
each as one SQLite statement on the pool's DBAPI connection.

Every compute node asks for an image's metadata on every boot. Through
SQLAlchemy that read was a BEGIN, the image's row, its children (one UNION
ALL) and a COMMIT: 240 us of the registry thread's CPU per GET, of which
SQLite itself ran under 20 (bench/metadata.py --in-process, cProfile).
Here it is one SELECT whose scalar subqueries bring the properties,
locations and tags as JSON arrays (SQLite's JSON functions, built in since
3.38): one statement is one implicit read transaction, so the row and its
children are one snapshot, as the transaction gave. The row's values go
through the columns' own result processors (SQLAlchemy's, for this
dialect), so the record is the one the SQLAlchemy path builds.

On PostgreSQL (psycopg), L{PostgresImageReader} does the same with
C{json_agg}: the image's row and its children in one statement run in
autocommit on the pool's connection, where the SQLAlchemy path
(L{glance_tx.registry.sql.rows}) made five round trips (BEGIN, the row,
the children's UNION ALL, COMMIT, and the pool's ping) and built the
record anew each time.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable
from typing import Any

from attrs import field, frozen
from sqlalchemy import Engine, Text, bindparam, cast, func, select
from sqlalchemy.exc import OperationalError

from glance_tx.images import Image, Location
from glance_tx.registry.kept import Kept
from glance_tx.registry.schema import (
    image_locations,
    image_properties,
    image_tags,
    images,
)

_NAMES: tuple[str, ...] = tuple(column.name for column in images.columns)

#: The image's row, then its properties, locations and tags as JSON
#: arrays (each "[]" when it has none). Positions are sorted here, not
#: trusted to an aggregate's input order.
_SELECT_IMAGES = (
    "SELECT "
    + ", ".join(f"images.{name}" for name in _NAMES)
    + ", (SELECT json_group_array(json_array(name, value)) FROM image_properties"
    " WHERE image_id = images.id)"
    ", (SELECT json_group_array(json_array(position, url, store, meta_data)) FROM image_locations"
    " WHERE image_id = images.id)"
    ", (SELECT json_group_array(value) FROM image_tags WHERE image_id = images.id)"
    " FROM images WHERE images.id "
)
SELECT_IMAGE = _SELECT_IMAGES + "= ?"

#: What says a kept image is still the row's record (see L{ImageReader.get_many}):
#: every change of an image or of its children raises its version (the
#: provider's writes and tag changes), and the creation time tells an image
#: re-created under a purged one's id from the one kept.
_STAMP: tuple[str, ...] = ("id", "version", "created_at", "updated_at")
_STAMP_AT: tuple[int, ...] = tuple(_NAMES.index(name) for name in _STAMP)
_SELECT_STAMPS = "SELECT " + ", ".join(_STAMP) + " FROM images WHERE id IN ("

@frozen
class Records:
    """
    Images decoded from rows of the images' columns followed by their
    properties, locations and tags as JSON text (L{_SELECT_IMAGES}'s
    layout, and PostgreSQL's page statement's), the last used kept: a row
    read again, equal in every value, is the same record (only the
    decoding is saved; every read still reads the row), and the same
    object, which the API's documents and the registry server's wire
    forms check first.
    """

    #: Each column's result processor for the engine's dialect (or None).
    processors: tuple[Callable[[Any], Any] | None, ...]
    #: By id, the row each image was decoded from, and the image.
    kept: Kept[Any, Image] = field(factory=Kept)

    @classmethod
    def for_dialect(cls, dialect: Any) -> Records:
        return cls(
            tuple(
                column.type.dialect_impl(dialect).result_processor(dialect, None)
                for column in images.columns
            )
        )

    def image(self, row: Any) -> Image:
        """The image of C{row}: the one kept if decoded from an equal row."""
        return self.kept.made(row[0], row, self._decode)

    def _decode(self, row: Any) -> Image:
        count = len(_NAMES)
        fields = {
            name: value if process is None or value is None else process(value)
            for name, process, value in zip(_NAMES, self.processors, row, strict=False)
        }
        properties, locations, tags = (json.loads(value) for value in row[count:])
        return Image(
            **fields,
            properties=dict(sorted(properties)),
            locations=[
                Location(url, store, json.loads(meta_data) if meta_data else {})
                for _, url, store, meta_data in sorted(locations, key=_position)
            ],
            tags=tags,
        )


@frozen
class ImageReader:
    """Reads one image with L{SELECT_IMAGE} from a SQLite engine's pool."""

    engine: Engine
    records: Records

    @classmethod
    def for_engine(cls, engine: Engine) -> ImageReader | None:
        """A reader for C{engine}, or None where it does not apply (not SQLite)."""
        if engine.dialect.name != "sqlite":
            return None
        return cls(engine, Records.for_dialect(engine.dialect))

    def _one(self, statement: str, parameters: tuple[Any, ...]) -> Any:
        """The first row of C{statement}, on a connection of the pool."""
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(statement, parameters)
                return cursor.fetchone()
            finally:
                cursor.close()
        finally:
            connection.close()

    def ping(self) -> None:
        """
        What the health check asks: a connection of the pool (checked out,
        so checked to be on the database file still there) answers a
        statement. The SQLAlchemy path's BEGIN and COMMIT around the same
        C{SELECT 1} added nothing to the check but half its CPU.
        """
        self._one("SELECT 1", ())

    def get(self, image_id: str) -> tuple[Image, bool] | None:
        """
        The image C{image_id} and whether it is deleted, or None if there is
        no such row. Blocking: call it on the registry's runner.
        """
        row = self._one(SELECT_IMAGE, (image_id,))
        if row is None:
            return None
        image = self.records.image(row)
        return image, image.deleted

    def get_many(self, dbapi_connection: Any, ids: list[str]) -> list[Image]:
        """
        The images C{ids}, in that order (those that exist), read on
        C{dbapi_connection}: a listing's, inside its transaction, so they
        are of the snapshot its page was chosen from.

        A listing's pages are read again and again, and their images rarely
        change: the images kept whose stamp (L{_STAMP}) is the row's are
        taken as they are, and only the others are read whole. Reading the
        stamps is a fifth of reading the rows with their children (SQLite's
        correlated JSON subqueries cost more than the rows themselves).
        """
        if not ids:
            return []
        # Stamps are read only where they can save a whole read: for the
        # ids kept, when they are at least half the page (a page never read
        # would pay them on top).
        kept = [image_id for image_id in ids if image_id in self.records.kept]
        stale = [image_id for image_id in ids if image_id not in self.records.kept]
        if len(kept) * 2 < len(ids):
            kept, stale = [], list(ids)
        found: dict[str, Image] = {}
        cursor = dbapi_connection.cursor()
        try:
            if kept:
                cursor.execute(_SELECT_STAMPS + ", ".join("?" * len(kept)) + ")", kept)
                for stamp in cursor.fetchall():
                    image_id = stamp[0]
                    row, image = self.records.kept.get(image_id) or (None, None)
                    if image is not None and _stamp(row) == stamp:
                        found[image_id] = image
                    else:
                        stale.append(image_id)
            if stale:
                cursor.execute(
                    _SELECT_IMAGES + "IN (" + ", ".join("?" * len(stale)) + ")", stale
                )
                found.update(
                    (image.id, image) for image in map(self.records.image, cursor.fetchall())
                )
        finally:
            cursor.close()
        return [found[image_id] for image_id in ids if image_id in found]

    def forget(self, image_id: str) -> None:
        self.records.kept.forget(image_id)


def postgres_children(image_id: Any) -> list[Any]:
    """
    The properties, locations and tags of the image C{image_id} (a column
    or expression) as three PostgreSQL scalar subqueries of JSON text
    ("[]" for none): the layout L{Records} decodes after the row.
    """
    return [
        _json_text(
            func.json_agg(
                func.json_build_array(image_properties.c.name, image_properties.c.value)
            ),
            image_properties.c.image_id == image_id,
        ),
        _json_text(
            func.json_agg(
                func.json_build_array(
                    image_locations.c.position,
                    image_locations.c.url,
                    image_locations.c.store,
                    image_locations.c.meta_data,
                )
            ),
            image_locations.c.image_id == image_id,
        ),
        _json_text(func.json_agg(image_tags.c.value), image_tags.c.image_id == image_id),
    ]


def _json_text(aggregate: Any, where: Any) -> Any:
    return select(func.coalesce(cast(aggregate, Text), "[]")).where(where).scalar_subquery()


def autocommit_rows(engine: Engine, sql: str, parameters: Any) -> list[Any]:
    """
    The rows of one statement on a connection of C{engine}'s pool (psycopg),
    in autocommit: one statement is one snapshot, and BEGIN and COMMIT
    would be two more round trips. A failed connection is invalidated and
    the failure raised as SQLAlchemy's OperationalError (a 503), as is a
    connection that cannot be made: the pool's connect raises the driver's
    own error, which C{Engine.connect} would have wrapped.
    """
    dbapi_error = engine.dialect.loaded_dbapi.OperationalError
    try:
        connection = engine.raw_connection()
    except dbapi_error as e:
        raise OperationalError(sql, None, e) from e
    try:
        driver: Any = connection.driver_connection
        driver.autocommit = True
        try:
            with driver.cursor() as cursor:
                cursor.execute(sql, parameters)
                rows: list[Any] = cursor.fetchall()
        finally:
            if not driver.closed:
                driver.autocommit = False
    except dbapi_error as e:
        connection.invalidate(e)
        raise OperationalError(sql, None, e) from e
    finally:
        connection.close()
    return rows


@frozen
class PostgresImageReader:
    """Reads one image in one statement from a PostgreSQL (psycopg) engine's pool."""

    engine: Engine
    records: Records
    #: The statement (a L{page_read.Compiled}): the image's id is its one
    #: supplied value.
    statement: Any

    @classmethod
    def for_engine(cls, engine: Engine) -> PostgresImageReader | None:
        """A reader for C{engine}, or None where it does not apply."""
        if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
            return None
        # Not at the top: page_read imports this module.
        from glance_tx.registry.sql.page_read import Compiled

        dialect = type(engine.dialect)(paramstyle="format")  # type: ignore[call-arg]
        statement = select(*images.c, *postgres_children(images.c.id)).where(
            images.c.id == bindparam("image_id", type_=images.c.id.type)
        )
        compiled = Compiled.of(statement, dialect, {"image_id"})
        return cls(engine, Records.for_dialect(engine.dialect), compiled)

    def get(self, image_id: str) -> tuple[Image, bool] | None:
        """As L{ImageReader.get}. Blocking: call it on the registry's runner."""
        statement = self.statement
        rows = autocommit_rows(
            self.engine, statement.sql, statement.parameters({"image_id": image_id})
        )
        if not rows:
            return None
        image = self.records.image(rows[0])
        return image, image.deleted

    def forget(self, image_id: str) -> None:
        self.records.kept.forget(image_id)


#: The L{_STAMP} values of an image's row, as L{_SELECT_STAMPS} reads them.
_stamp: Callable[[Any], tuple[Any, ...]] = operator.itemgetter(*_STAMP_AT)


def _position(location: list[Any]) -> int:
    position: int = location[0]
    return position
