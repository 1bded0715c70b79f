"""
Rows to records and back: the checks that keep a record within what its
columns hold, L{Image} and L{Member} built from rows, and the writes and
reads of an image's properties, locations, tags and memberships.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from sqlalchemy import (
    Boolean,
    Connection,
    Integer,
    RowMapping,
    String,
    Text,
    bindparam,
    cast,
    insert,
    literal,
    null,
    select,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import BindParameter

from glance_tx.errors import BadRequest, Conflict, NotFound
from glance_tx.images import (
    Image,
    Location,
    Member,
    check_image,
    check_location_metadata,
    validate_image_id,
)
from glance_tx.registry.schema import (
    image_locations,
    image_members,
    image_properties,
    image_tags,
    images,
)

#: Image attributes stored as columns of the C{images} table.
CORE_FIELDS: tuple[str, ...] = tuple(column.name for column in images.columns)

MAX_BIGINT = 2**63 - 1


_STRING_FIELDS = frozenset(
    column.name for column in images.columns if isinstance(column.type, String)
)
_NULLABLE_FIELDS = frozenset(
    column.name for column in images.columns if column.nullable
)
INTEGER_FIELDS = frozenset(
    column.name for column in images.columns if isinstance(column.type, Integer)
)
BOOLEAN_FIELDS = frozenset(
    column.name for column in images.columns if isinstance(column.type, Boolean)
)
_DATETIME_FIELDS = frozenset({"created_at", "updated_at", "deleted_at"})
_LENGTHS: dict[str, int] = {
    column.name: column.type.length
    for column in images.columns
    if isinstance(column.type, String) and column.type.length is not None
}
_TAG_LENGTH: int = image_tags.c.value.type.length  # type: ignore[attr-defined]
_MEMBER_LENGTH: int = image_members.c.member_id.type.length  # type: ignore[attr-defined]


def check_record(image: Image) -> None:
    """
    Refuse a record the database would reject or store differently: wrong
    types, strings over their column's length, integers out of range, naive
    datetimes. SQLite would accept most of these silently and PostgreSQL
    would fail with a server error; both now answer 400 alike.
    """
    if not isinstance(image.id, str) or validate_image_id(image.id) != image.id:
        raise BadRequest(f"Image id {image.id!r} is not a canonical UUID")
    for name in CORE_FIELDS:
        value = getattr(image, name)
        if value is None:
            if name not in _NULLABLE_FIELDS:
                raise BadRequest(f"{name} is required")
            continue
        if name in BOOLEAN_FIELDS:
            if not isinstance(value, bool):
                raise BadRequest(f"{name} must be a boolean")
        elif name in INTEGER_FIELDS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise BadRequest(f"{name} must be an integer")
            if not -MAX_BIGINT <= value <= MAX_BIGINT:
                raise BadRequest(f"{name} is out of range")
        elif name in _DATETIME_FIELDS:
            if not isinstance(value, datetime) or value.tzinfo is None:
                raise BadRequest(f"{name} must be a timezone-aware datetime")
        elif name in _STRING_FIELDS:
            if not isinstance(value, str):
                raise BadRequest(f"{name} must be a string")
            length = _LENGTHS.get(name)
            if length is not None and len(value) > length:
                raise BadRequest(f"{name} is longer than {length} characters")
    for location in image.locations:
        if not isinstance(location.url, str) or not location.url:
            raise BadRequest("Image locations must be non-empty strings")
        if location.store is not None and (
            not isinstance(location.store, str) or len(location.store) > 255
        ):
            raise BadRequest("A location's store must be an id of at most 255 characters")
        check_location_metadata(location.metadata)
    for tag in image.tags:
        check_tag(tag)
    check_image(image)


def check_tag(tag: str) -> None:
    if not isinstance(tag, str) or not tag:
        raise BadRequest("Image tags must be non-empty strings")
    if len(tag) > _TAG_LENGTH:
        raise BadRequest(f"Image tag is longer than {_TAG_LENGTH} characters")


#: What each row of L{load_images}'s one query is.
_PROPERTY, _LOCATION, _TAG = 0, 1, 2

# The statements of every read are built once, with bound parameters:
# building a SQLAlchemy statement and computing its cache key (which a
# statement built once keeps) cost more than SQLite takes to run it.
# Measured on one GET of an image with three properties and two tags:
# 450 us in the registry with the statements built per call, 170 us with
# these (SQLite itself: under 10 us).

#: An image's row by id (parameter C{image_id}).
IMAGE_BY_ID = select(images).where(images.c.id == bindparam("image_id"))
#: The same, locking the row until the transaction ends (PostgreSQL).
IMAGE_BY_ID_FOR_UPDATE = IMAGE_BY_ID.with_for_update()

_IDS: BindParameter[str] = bindparam("ids", expanding=True)
#: The properties, locations and tags of the images C{ids}, in one query.
_CHILDREN = union_all(
    select(
        literal(_PROPERTY, Integer),
        image_properties.c.image_id,
        image_properties.c.name,
        image_properties.c.value,
        cast(null(), Integer),
        cast(null(), Text),
    ).where(image_properties.c.image_id.in_(_IDS)),
    select(
        literal(_LOCATION, Integer),
        image_locations.c.image_id,
        image_locations.c.url,
        image_locations.c.store,
        image_locations.c.position,
        image_locations.c.meta_data,
    ).where(image_locations.c.image_id.in_(_IDS)),
    select(
        literal(_TAG, Integer),
        image_tags.c.image_id,
        image_tags.c.value,
        cast(null(), String),
        cast(null(), Integer),
        cast(null(), Text),
    ).where(image_tags.c.image_id.in_(_IDS)),
)


def load_images(connection: Connection, rows: Sequence[RowMapping]) -> builtins.list[Image]:
    """
    Build images from their rows, reading the properties, locations and
    tags of all of them in one query (a UNION ALL of the three tables).

    One query instead of three, since each statement is a round trip plus
    SQLAlchemy's work on it, and a page's child rows are few: the three
    queries were 43% of the registry server's database time per GET.
    """
    if not rows:
        return []
    ids = [row["id"] for row in rows]
    properties: dict[str, dict[str, str]] = {image_id: {} for image_id in ids}
    locations: dict[str, builtins.list[tuple[int, Location]]] = {
        image_id: [] for image_id in ids
    }
    tags: dict[str, set[str]] = {image_id: set() for image_id in ids}
    for kind, image_id, first, second, position, meta_data in connection.execute(
        _CHILDREN, {"ids": ids}
    ):
        if kind == _PROPERTY:
            properties[image_id][first] = second
        elif kind == _LOCATION:
            extra = json.loads(meta_data) if meta_data else {}
            locations[image_id].append((position, Location(first, second, extra)))
        else:
            tags[image_id].add(first)
    return [
        Image(
            **{name: row[name] for name in CORE_FIELDS},
            properties=properties[row["id"]],
            locations=[
                location for _, location in sorted(locations[row["id"]], key=_first)
            ],
            tags=tags[row["id"]],
        )
        for row in rows
    ]


def _first(pair: tuple[int, Location]) -> int:
    return pair[0]


def write_properties(
    connection: Connection, image_id: str, properties: Mapping[str, str]
) -> None:
    if properties:
        connection.execute(
            insert(image_properties),
            [
                {"image_id": image_id, "name": name, "value": value}
                for name, value in sorted(properties.items())
            ],
        )


def write_locations(
    connection: Connection, image_id: str, locations: Iterable[Location]
) -> None:
    rows = [
        {
            "image_id": image_id,
            "position": position,
            "url": location.url,
            "store": location.store,
            "meta_data": json.dumps(dict(location.metadata)) if location.metadata else None,
        }
        for position, location in enumerate(locations)
    ]
    if rows:
        connection.execute(insert(image_locations), rows)


def write_tags(connection: Connection, image_id: str, tags: Iterable[str]) -> None:
    rows = [{"image_id": image_id, "value": tag} for tag in sorted(tags)]
    if rows:
        connection.execute(insert(image_tags), rows)


# -- memberships -----------------------------------------------------------------


def check_member_type(member_id: str) -> None:
    if not isinstance(member_id, str):
        raise BadRequest("A member id must be a string")


def check_member_id(member_id: str) -> None:
    """Refuse a member id the table cannot hold (a project id: 1-255 chars)."""
    check_member_type(member_id)
    if not member_id:
        raise BadRequest("A member id cannot be empty")
    if len(member_id) > _MEMBER_LENGTH:
        raise BadRequest(f"A member id is longer than {_MEMBER_LENGTH} characters")


def live_image(connection: Connection, image_id: str, lock: bool = False) -> None:
    """
    Fail with NotFound unless the image exists and is not deleted. With
    C{lock}, hold a share lock on its row until the transaction ends, so
    that it cannot be deleted meanwhile (PostgreSQL; SQLite's write
    transactions hold the database lock anyway).
    """
    statement = select(images.c.deleted).where(images.c.id == image_id)
    if lock:
        statement = statement.with_for_update(read=True)
    deleted = connection.execute(statement).scalar()
    if deleted is None or deleted:
        raise NotFound(f"No image found with ID {image_id}")


def lock_live_image(connection: Connection, image_id: str) -> datetime:
    """
    Lock the image's row until the transaction ends (PostgreSQL: FOR
    UPDATE; SQLite's write transactions hold the database lock anyway) and
    return its C{updated_at}. NotFound unless it exists and is not deleted.
    """
    row = connection.execute(
        select(images.c.deleted, images.c.updated_at)
        .where(images.c.id == image_id)
        .with_for_update()
    ).first()
    if row is None or row.deleted:
        raise NotFound(f"No image found with ID {image_id}")
    updated_at: datetime = row.updated_at
    return updated_at


def insert_tag(connection: Connection, image_id: str, tag: str) -> bool:
    """
    Insert one tag row unless the image has that tag already, in one
    statement (INSERT ... ON CONFLICT DO NOTHING, in the dialect of each of
    the registry's two databases); whether it was new. RETURNING says so:
    SQLAlchemy does not keep an INSERT's rowcount (on PostgreSQL it is -1).
    """
    row = {"image_id": image_id, "value": tag}
    statement: postgresql.Insert | sqlite.Insert
    if connection.dialect.name == "postgresql":
        statement = postgresql.insert(image_tags).values(row)
    else:
        statement = sqlite.insert(image_tags).values(row)
    inserted = connection.execute(
        statement.on_conflict_do_nothing().returning(image_tags.c.value)
    )
    return inserted.first() is not None


def member_row(
    connection: Connection, image_id: str, member_id: str, for_update: bool = False
) -> RowMapping | None:
    statement = select(image_members).where(
        image_members.c.image_id == image_id,
        image_members.c.member_id == member_id,
    )
    if for_update:
        statement = statement.with_for_update()
    return connection.execute(statement).mappings().first()


def found_member(
    connection: Connection, image_id: str, member_id: str, for_update: bool = False
) -> Member:
    row = member_row(connection, image_id, member_id, for_update)
    if row is None:
        raise not_member(image_id, member_id)
    return member_from_row(row)


def member_from_row(row: RowMapping) -> Member:
    return Member(
        image_id=row["image_id"],
        member_id=row["member_id"],
        status=row["status"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def not_member(image_id: str, member_id: str) -> NotFound:
    return NotFound(f"Project {member_id} is not a member of image {image_id}")


def already_member(image_id: str, member_id: str) -> Conflict:
    return Conflict(f"Project {member_id} is already a member of image {image_id}")
