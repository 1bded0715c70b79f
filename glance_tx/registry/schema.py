"""
The registry's tables, as SQLAlchemy Core.

This module describes the schema as the code expects it to be *now*; the
database is brought to that state by the Alembic revisions under
C{migrations/versions}, which are frozen copies and never import this module.
A test compares the two, so they cannot drift apart silently.

Indexes are chosen for keyset pagination: every listing filters on
C{deleted = false} and orders by one sort key with the id as tiebreak, so
C{(deleted, key, id)} lets a page deep in a large listing start with an index
range scan and stop after C{limit} rows. Conditions on other tables (a
property, a tag, a membership) are then checked per row through a key that
starts with the image id; for the rare value that few images have, a second
index starting with the value finds those images directly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    literal_column,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator

#: Property values are unbounded text; the (name, value) index holds only this
#: many leading characters so that a long value cannot exceed PostgreSQL's
#: B-tree row size limit. Queries compare the prefix (to use the index) and
#: then the whole value.
PROPERTY_VALUE_INDEX_PREFIX = 255


def property_value_prefix(value: ColumnElement[str]) -> ColumnElement[str]:
    """
    The indexed prefix of a property value. The bounds are literals, not
    bound parameters, so that a query's expression is textually the index's
    and the planner (SQLite's in particular) can match them.
    """
    return func.substr(
        value, literal_column("1"), literal_column(str(PROPERTY_VALUE_INDEX_PREFIX))
    )


class UTCDateTime(TypeDecorator[datetime]):
    """
    A timezone-aware UTC datetime on every backend.

    PostgreSQL stores C{timestamp with time zone}; SQLite has no time zone
    support, so values are stored as naive UTC text (which sorts
    chronologically) and made aware again when read. Naive datetimes are
    refused: their meaning depends on the host's clock settings.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"expected a timezone-aware datetime, got {value!r}")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = MetaData()

images = Table(
    "images",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(255)),
    Column("status", String(30), nullable=False),
    Column("size", BigInteger),
    Column("virtual_size", BigInteger),
    Column("checksum", String(32)),
    Column("os_hash_algo", String(64)),
    Column("os_hash_value", String(128)),
    Column("disk_format", String(20)),
    Column("container_format", String(20)),
    Column("visibility", String(20), nullable=False),
    Column("owner", String(255)),
    Column("min_ram", Integer, nullable=False),
    Column("min_disk", Integer, nullable=False),
    Column("protected", Boolean, nullable=False),
    Column("os_hidden", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("deleted_at", UTCDateTime),
    Column("deleted", Boolean, nullable=False),
    # The row version: 1 when created, one more at every change of the
    # record, so a write can be made conditional on what its caller read.
    Column("version", Integer, nullable=False, server_default="1"),
    Index("ix_images_deleted_created_at_id", "deleted", "created_at", "id"),
    Index("ix_images_deleted_updated_at_id", "deleted", "updated_at", "id"),
    Index("ix_images_deleted_name_id", "deleted", "name", "id"),
    Index("ix_images_deleted_status_id", "deleted", "status", "id"),
    Index("ix_images_deleted_size_id", "deleted", "size", "id"),
    Index("ix_images_deleted_owner_id", "deleted", "owner", "id"),
    Index("ix_images_deleted_visibility_id", "deleted", "visibility", "id"),
    Index("ix_images_checksum", "checksum"),
)

image_properties = Table(
    "image_properties",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "image_id",
        String(36),
        ForeignKey("images.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("name", String(255), nullable=False),
    Column("value", Text, nullable=False),
    UniqueConstraint("image_id", "name", name="uq_image_properties_image_id_name"),
)
Index(
    "ix_image_properties_name_value_image_id",
    image_properties.c.name,
    property_value_prefix(image_properties.c.value),
    image_properties.c.image_id,
)

image_locations = Table(
    "image_locations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "image_id",
        String(36),
        ForeignKey("images.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("position", Integer, nullable=False),
    Column("url", Text, nullable=False),
    # The id of the store holding the data, as glance_store records it;
    # NULL for rows from before migration 0003 (judged by the URL then).
    Column("store", String(255), nullable=True),
    # The rest of the location's metadata, a JSON object; NULL for none
    # (and for rows from before migration 0008).
    Column("meta_data", Text, nullable=True),
    UniqueConstraint(
        "image_id", "position", name="uq_image_locations_image_id_position"
    ),
)

image_tags = Table(
    "image_tags",
    metadata,
    Column(
        "image_id",
        String(36),
        ForeignKey("images.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("value", String(255), primary_key=True),
    # The primary key (image_id, value) answers "has this image that tag";
    # this one answers "which images have that tag" (a rare tag filter).
    Index("ix_image_tags_value_image_id", "value", "image_id"),
)

image_members = Table(
    "image_members",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "image_id",
        String(36),
        ForeignKey("images.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("member_id", String(255), nullable=False),
    Column("status", String(20), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # Also the key a listing probes, per image, for "is P a member of it".
    UniqueConstraint(
        "image_id", "member_id", name="uq_image_members_image_id_member_id"
    ),
    # "Which images is P a member of, with this status".
    Index(
        "ix_image_members_member_id_status_image_id",
        "member_id",
        "status",
        "image_id",
    ),
)

upload_leases = Table(
    "upload_leases",
    metadata,
    Column(
        "image_id",
        String(36),
        ForeignKey("images.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    # The node running the upload (its node_id); one row per node, so a
    # second node's failed attempt to start never removes the first's.
    Column("node_id", String(255), primary_key=True),
    # Until when, by the registry's clock, the node vouches it is alive.
    Column("expires_at", UTCDateTime, nullable=False),
    # The status the image takes if the upload is reclaimed: what the
    # upload's own abort would have set (v1 killed, v2 queued).
    Column("failure_status", String(30), nullable=False),
)

#: The id of each image's last write that came with one (see
#: IRegistry.update's C{write_id}): a write repeated after its answer was
#: lost finds its own id here and is answered as the first was.
image_writes = Table(
    "image_writes",
    metadata,
    Column(
        "image_id",
        String(36),
        ForeignKey("images.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("write_id", String(64), nullable=False),
)

#: Which process runs as each node id (L{IRegistry.claim_node}): a node_id
#: names one process at a time, or two nodes would reclaim each other's
#: uploads.
node_claims = Table(
    "node_claims",
    metadata,
    Column("node_id", String(255), primary_key=True),
    # The claiming process, new at every start (host, pid and a random part).
    Column("instance", String(255), nullable=False),
    # Until when, by the registry's clock, the process vouches it is alive.
    Column("expires_at", UTCDateTime, nullable=False),
)

# -- metadata definitions (glance_tx.metadefs) ----------------------------------

#: Glance's metadef namespaces; listings sort by (key, namespace).
metadef_namespaces = Table(
    "metadef_namespaces",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("namespace", String(80), nullable=False),
    Column("display_name", String(80)),
    Column("description", Text),
    Column("visibility", String(32), nullable=False),
    Column("protected", Boolean, nullable=False),
    Column("owner", String(255)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("namespace", name="uq_metadef_namespaces_namespace"),
    Index("ix_metadef_namespaces_owner", "owner"),
)

#: A namespace's objects, properties and tags (C{kind}), each a name and a
#: JSON document (glance_tx.metadefs.model.Definition).
metadef_definitions = Table(
    "metadef_definitions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "namespace_id",
        Integer,
        ForeignKey("metadef_namespaces.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("kind", String(16), nullable=False),
    Column("name", String(80), nullable=False),
    Column("document", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint(
        "namespace_id", "kind", "name", name="uq_metadef_definitions_namespace_kind_name"
    ),
)

metadef_resource_types = Table(
    "metadef_resource_types",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(80), nullable=False),
    Column("protected", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("name", name="uq_metadef_resource_types_name"),
)

metadef_associations = Table(
    "metadef_namespace_resource_types",
    metadata,
    Column(
        "namespace_id",
        Integer,
        ForeignKey("metadef_namespaces.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column(
        "resource_type_id",
        Integer,
        ForeignKey("metadef_resource_types.id"),
        primary_key=True,
    ),
    Column("prefix", String(80)),
    Column("properties_target", String(80)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # "Which namespaces apply to this resource type" (a listing's filter).
    Index("ix_metadef_namespace_resource_types_resource_type_id", "resource_type_id"),
)


#: Glance's tasks (L{glance_tx.tasks}): one row each, its input and result
#: as JSON text. Listings filter by owner (a project's own) and order by
#: creation time with the id as tiebreak; an image's tasks are found by
#: its id.
tasks = Table(
    "tasks",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("type", String(30), nullable=False),
    Column("status", String(30), nullable=False),
    Column("owner", String(255)),
    Column("input", Text),
    Column("result", Text),
    Column("message", Text, nullable=False),
    Column("expires_at", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("image_id", String(36)),
    Column("request_id", String(255)),
    Column("user_id", String(255)),
    Index("ix_tasks_created_at_id", "created_at", "id"),
    Index("ix_tasks_owner_created_at_id", "owner", "created_at", "id"),
    Index("ix_tasks_image_id", "image_id"),
)
