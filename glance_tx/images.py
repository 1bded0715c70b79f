"""
The image record: its fields, statuses, allowed transitions and validation.

Everything here is pure: no I/O, no reactor. The registry stores L{Image}
values; the APIs translate them to v1 headers or v2 JSON.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

from attrs import evolve, field, frozen

from glance_tx.errors import BadRequest, Conflict

QUEUED = "queued"
SAVING = "saving"
ACTIVE = "active"
KILLED = "killed"
DELETED = "deleted"
PENDING_DELETE = "pending_delete"
DEACTIVATED = "deactivated"
UPLOADING = "uploading"
IMAGE_IMPORTING = "importing"

#: Glance's state machine, plus v1's queued -> killed (an upload refused before
#: any byte was stored) and saving -> queued (v2 returns a failed upload to
#: queued).
TRANSITIONS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        QUEUED: frozenset({SAVING, UPLOADING, IMAGE_IMPORTING, ACTIVE, KILLED, DELETED}),
        SAVING: frozenset({ACTIVE, KILLED, DELETED, QUEUED}),
        UPLOADING: frozenset({IMAGE_IMPORTING, QUEUED, DELETED}),
        IMAGE_IMPORTING: frozenset({ACTIVE, DELETED, QUEUED}),
        ACTIVE: frozenset({PENDING_DELETE, DELETED, DEACTIVATED}),
        KILLED: frozenset({DELETED}),
        PENDING_DELETE: frozenset({DELETED, ACTIVE}),
        DELETED: frozenset(),
        DEACTIVATED: frozenset({ACTIVE, DELETED}),
    }
)
STATUSES = frozenset(TRANSITIONS)

#: The properties Glance records an import's progress in: the stores still
#: to do, and those that failed (comma-separated store ids).
IMPORTING_TO_STORES = "os_glance_importing_to_stores"
FAILED_IMPORT = "os_glance_failed_import"

#: Statuses a listing leaves out unless asked for explicitly.
HIDDEN_STATUSES = frozenset({KILLED, DELETED})

#: Glance 33's default C{[image_format] disk_formats} and
#: C{container_formats}, in its order; an operator's lists are in
#: L{glance_tx.config.ImageFormatConfig}, which the APIs check (the
#: registry holds whatever they accepted).
DISK_FORMATS = ("ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop")
CONTAINER_FORMATS = ("ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed")
#: Formats that pair up in v1 (see L{glance_tx.api.v1_meta}).
AMAZON_FORMATS = frozenset({"ami", "ari", "aki"})
VISIBILITIES = frozenset({"public", "community", "shared", "private"})

MAX_NAME_LENGTH = 255
MAX_PROPERTY_LENGTH = 255
MAX_INT = 2**31 - 1
#: The largest image size a registry holds (a signed 64-bit column).
MAX_SIZE = 2**63 - 1

#: Core fields an update may set (the registry owns id, created_at, deleted...).
MUTABLE_FIELDS = frozenset(
    {
        "name",
        "status",
        "size",
        "virtual_size",
        "checksum",
        "os_hash_algo",
        "os_hash_value",
        "disk_format",
        "container_format",
        "visibility",
        "owner",
        "min_ram",
        "min_disk",
        "protected",
        "os_hidden",
        "locations",
    }
)


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


@frozen
class Location:
    """
    Where one copy of an image's data lives: its URL, and the id of the
    enabled store that holds it, as glance_store records it. C{store} is
    C{None} for a location recorded before store ids were (registry
    migration 0003); the store map then judges by the URL's scheme.
    """

    url: str
    store: str | None = None
    #: What else the caller said of it (Glance's location C{metadata},
    #: C{store} apart), kept and shown back as given.
    metadata: Mapping[str, Any] = field(factory=dict, converter=dict, hash=False)


#: The most a location's metadata may take, as JSON.
MAX_LOCATION_METADATA = 16384


def check_location_metadata(metadata: Mapping[str, object]) -> None:
    """A JSON object of at most L{MAX_LOCATION_METADATA} bytes, or a 400."""
    try:
        size = len(json.dumps(dict(metadata)))
    except (TypeError, ValueError) as e:
        raise BadRequest(f"A location's metadata must be a JSON object: {e}") from None
    if size > MAX_LOCATION_METADATA:
        raise BadRequest(f"A location's metadata is more than {MAX_LOCATION_METADATA} bytes of JSON")


def as_location(value: Location | str) -> Location:
    """A L{Location}; a bare URL names no store."""
    return value if isinstance(value, Location) else Location(value)


def _locations(value: Iterable[Location | str]) -> tuple[Location, ...]:
    return tuple(map(as_location, value))


def _string_set(value: Iterable[str]) -> frozenset[str]:
    return frozenset(value)


@frozen
class Image:
    """One image's metadata as the registry holds it."""

    id: str
    status: str
    created_at: datetime
    updated_at: datetime
    name: str | None = None
    size: int | None = None
    virtual_size: int | None = None
    checksum: str | None = None
    os_hash_algo: str | None = None
    os_hash_value: str | None = None
    disk_format: str | None = None
    container_format: str | None = None
    visibility: str = "shared"
    owner: str | None = None
    min_ram: int = 0
    min_disk: int = 0
    protected: bool = False
    os_hidden: bool = False
    locations: tuple[Location, ...] = field(default=(), converter=_locations)
    properties: Mapping[str, str] = field(factory=dict, converter=_frozen_mapping)
    tags: frozenset[str] = field(default=frozenset(), converter=_string_set)
    deleted_at: datetime | None = None
    deleted: bool = False
    #: The registry's row version: 1 when created, one more at every change
    #: of this record (see L{glance_tx.registry.interface.IRegistry.update}).
    version: int = 1

    @property
    def is_public(self) -> bool:
        return self.visibility == "public"


@frozen
class ImageUpdate:
    """
    A partial change to an image: only what is named here changes.

    C{fields} maps names from L{MUTABLE_FIELDS} to new values. In
    C{properties} a value of C{None} removes that property; with
    C{purge_properties} every property not named is removed. C{tags}, when
    not C{None}, replaces the whole tag set.
    """

    fields: Mapping[str, Any] = field(factory=dict, converter=_frozen_mapping)
    properties: Mapping[str, str | None] = field(factory=dict, converter=_frozen_mapping)
    purge_properties: bool = False
    tags: frozenset[str] | None = None

    def __attrs_post_init__(self) -> None:
        unknown = set(self.fields) - MUTABLE_FIELDS
        if unknown:
            raise BadRequest(f"Cannot change field(s): {', '.join(sorted(unknown))}")


def apply_update(image: Image, update: ImageUpdate) -> Image:
    """
    C{image} as it is once C{update} is applied: the one reading of an
    L{ImageUpdate}, for the registries that store it and the callers that
    check its outcome first. Bookkeeping (C{updated_at}, C{version}) is the
    registry's. A field of the wrong type raises C{TypeError}.
    """
    properties = {} if update.purge_properties else dict(image.properties)
    for key, value in update.properties.items():
        if value is None:
            properties.pop(key, None)
        else:
            properties[key] = value
    return evolve(
        image,
        **update.fields,
        properties=properties,
        tags=image.tags if update.tags is None else update.tags,
    )


#: Columns a listing can be sorted by.
SORT_KEYS = frozenset(
    {
        "id",
        "name",
        "status",
        "disk_format",
        "container_format",
        "size",
        "created_at",
        "updated_at",
        "visibility",
        "owner",
        "min_ram",
        "min_disk",
    }
)
#: Core columns a listing can filter on by equality.
FILTER_FIELDS = frozenset(
    {
        "id",
        "name",
        "status",
        "container_format",
        "disk_format",
        "min_ram",
        "min_disk",
        "visibility",
        "owner",
        "protected",
        "os_hidden",
        "checksum",
        "os_hash_algo",
        "os_hash_value",
        "size",
        "virtual_size",
    }
)
DEFAULT_LIMIT = 25
MAX_LIMIT = 1000


MEMBER_STATUSES = frozenset({"pending", "accepted", "rejected"})

#: Listing scopes (the v2 ``visibility`` parameter); None is the default.
LIST_VISIBILITIES = frozenset({"public", "private", "shared", "community", "all"})

#: Fields a listing can compare with an operator, and the operators.
COMPARABLE_FIELDS = frozenset({"created_at", "updated_at", "size"})
COMPARISON_OPERATORS = frozenset({"gt", "gte", "eq", "neq", "lt", "lte"})


@frozen
class Member:
    """A project an image is shared with, and whether it accepted."""

    image_id: str
    member_id: str
    status: str
    created_at: datetime
    updated_at: datetime


#: The statuses whose images are counted as uploading (Glance's
#: C{image_count_uploading}: data on its way in, by upload or import).
UPLOADING_STATUSES = frozenset({SAVING, UPLOADING, IMAGE_IMPORTING})


@frozen
class ProjectUsage:
    """
    What one project's images hold, as Glance's unified limits count it;
    deleted images count for nothing.
    """

    #: Bytes of the project's images that have data (not killed): the sum
    #: of their sizes (C{image_size_total} counts it in MiB).
    image_size_total: int = 0
    #: Bytes staged for import (images C{uploading} or C{importing}).
    image_stage_total: int = 0
    #: Images the project owns.
    image_count_total: int = 0
    #: Images whose data is on its way in (L{UPLOADING_STATUSES}).
    image_count_uploading: int = 0


@frozen
class Viewer:
    """Who a listing is for: which images they may see follows from it."""

    project_id: str | None
    is_admin: bool = False


@frozen
class Comparison:
    """C{field op value}, e.g. created_at gt 2026-01-01T00:00:00Z."""

    field: str
    op: str
    value: Any

    def __attrs_post_init__(self) -> None:
        if self.field not in COMPARABLE_FIELDS:
            raise BadRequest(f"Cannot compare field {self.field!r}")
        if self.op not in COMPARISON_OPERATORS:
            raise BadRequest(f"Invalid operator {self.op!r}")


@frozen
class ImageQuery:
    """
    What a listing asks for: equality filters on core fields and properties,
    comparisons, tags, a scope, an ordering (the image id always breaks
    ties), and a page given by C{marker} (the last id of the previous page)
    and C{limit}.

    A filter value that is a frozenset matches any of its members. A
    C{status} filter overrides C{exclude_statuses}: asking for killed images
    lists them. Every tag in C{tags} must be on the image.

    Scope, Glance's rules: with C{viewer} None there is no restriction
    (internal use). Otherwise, for a non-admin viewer of project P, by
    C{visibility}:

      - None (the default): public images, P's own, and shared images P is
        a member of with a status in C{member_statuses};
      - "all": the default plus community images;
      - "public" / "community": images with that visibility;
      - "shared": shared images owned by P or that P is a member of (with a
        status in C{member_statuses});
      - "private": P's private images.

    An admin sees every image in the chosen visibility; by default every
    image except other projects' community images.
    """

    filters: Mapping[str, Any] = field(factory=dict, converter=_frozen_mapping)
    properties: Mapping[str, str] = field(factory=dict, converter=_frozen_mapping)
    size_min: int | None = None
    size_max: int | None = None
    comparisons: tuple[Comparison, ...] = ()
    tags: frozenset[str] = frozenset()
    sort: tuple[tuple[str, str], ...] = (("created_at", "desc"),)
    marker: str | None = None
    limit: int = DEFAULT_LIMIT
    exclude_statuses: frozenset[str] = HIDDEN_STATUSES
    viewer: Viewer | None = None
    visibility: str | None = None
    member_statuses: frozenset[str] = frozenset({"accepted"})

    def __attrs_post_init__(self) -> None:
        unknown = set(self.filters) - FILTER_FIELDS
        if unknown:
            raise BadRequest(f"Unknown filter(s): {', '.join(sorted(unknown))}")
        for key, direction in self.sort:
            if key not in SORT_KEYS:
                raise BadRequest(f"Invalid sort_key {key!r}")
            if direction not in ("asc", "desc"):
                raise BadRequest(f"Invalid sort_dir {direction!r}")
        if not 0 <= self.limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be between 0 and {MAX_LIMIT}")
        if self.visibility is not None and self.visibility not in LIST_VISIBILITIES:
            raise BadRequest(f"Invalid visibility {self.visibility!r}")
        if not self.member_statuses <= MEMBER_STATUSES:
            raise BadRequest("Invalid member_status")


def new_image_id() -> str:
    return str(uuid.uuid4())


#: A UUID in canonical form, which L{validate_image_id} gives back as it is.
_CANONICAL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def validate_image_id(image_id: str) -> str:
    """Canonical form of an image id, or a 400 when it is not a UUID."""
    if isinstance(image_id, str) and _CANONICAL_ID.fullmatch(image_id):
        return image_id  # what str(uuid.UUID(image_id)) gives, without parsing
    try:
        return str(uuid.UUID(image_id))
    except (ValueError, AttributeError, TypeError):
        raise BadRequest(f"Image id {image_id!r} is not a valid UUID") from None


def is_image_id(name: str) -> bool:
    """Whether C{name} is an image id in canonical form (a store's file or key name)."""
    try:
        return validate_image_id(name) == name
    except BadRequest:
        return False


def missing_formats(image: Image) -> list[str]:
    """
    Which of its disk and container formats C{image} lacks. Glance takes
    no data for an image, uploaded or registered, until both are set: what
    the data is must be known before it is stored.
    """
    return [name for name in ("disk_format", "container_format") if not getattr(image, name)]


def check_transition(current: str, new: str) -> None:
    """Refuse a status change Glance's state machine does not allow."""
    if current != new and new not in TRANSITIONS.get(current, frozenset()):
        raise Conflict(f"Image status cannot change from {current} to {new}")


def check_image(image: Image) -> None:
    """
    Validate the record as a whole before it is stored. Its formats are
    the APIs' to judge, against the operator's lists (Glance's database
    does not check them either): a record keeps a format later dropped.
    """
    if image.status not in STATUSES:
        raise BadRequest(f"Invalid status {image.status!r}")
    if image.name is not None and len(image.name) > MAX_NAME_LENGTH:
        raise BadRequest(f"Image name is longer than {MAX_NAME_LENGTH} characters")
    if image.visibility not in VISIBILITIES:
        raise BadRequest(f"Invalid visibility {image.visibility!r}")
    for name in ("min_ram", "min_disk"):
        value = getattr(image, name)
        if not 0 <= value <= MAX_INT:
            raise BadRequest(f"{name} must be between 0 and {MAX_INT}")
    for name in ("size", "virtual_size"):
        value = getattr(image, name)
        if value is not None and value < 0:
            raise BadRequest(f"{name} cannot be negative")
    for key, value in image.properties.items():
        if not key or len(key) > MAX_PROPERTY_LENGTH:
            raise BadRequest(f"Invalid property name {key!r}")
        if not isinstance(value, str):
            raise BadRequest(f"Property {key!r} must be a string")
