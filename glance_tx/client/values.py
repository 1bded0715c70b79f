"""
What the client returns: frozen attrs values read from the Images API v2
documents, not the documents themselves.

Typed rather than dicts so that a caller's typo (C{image.chekcsum}) fails
under mypy and at once, timestamps arrive as C{datetime}s, and the image's
extra properties sit apart from its core fields (in the document they are
mixed, as top-level strings). A core field a server leaves out is C{None};
a key the client does not know of is kept in C{properties}, so nothing a
newer server sends is lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from attrs import field, fields, frozen

__all__ = ["DownloadResult", "ImageInfo", "MemberInfo", "StoreInfo"]

#: Keys of the image document that are links, not data.
_LINKS = frozenset({"self", "file", "schema"})


def _time(value: Any) -> datetime | None:
    """An ISO 8601 timestamp as Glance writes it (C{...Z}), or None."""
    if not isinstance(value, str) or not value:
        return None
    return datetime.fromisoformat(value)


def _v1_time(value: Any) -> datetime | None:
    """A v1 timestamp (UTC, written without a zone), or None."""
    parsed = _time(value)
    if parsed is not None and parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _read_only(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@frozen
class ImageInfo:
    """One image, as C{GET /v2/images/{id}} shows it."""

    id: str
    name: str | None = None
    status: str | None = None
    visibility: str | None = None
    protected: bool = False
    os_hidden: bool = False
    checksum: str | None = None
    os_hash_algo: str | None = None
    os_hash_value: str | None = None
    size: int | None = None
    virtual_size: int | None = None
    min_disk: int = 0
    min_ram: int = 0
    disk_format: str | None = None
    container_format: str | None = None
    owner: str | None = None
    tags: frozenset[str] = frozenset()
    created_at: datetime | None = None
    updated_at: datetime | None = None
    #: The ids of the stores holding the data (Glance's comma-joined C{stores}).
    stores: tuple[str, ...] = ()
    #: Every other key: the extra properties (and anything newer), read-only.
    #: Left out of the hash (a mapping has none); compared as usual.
    properties: Mapping[str, Any] = field(factory=dict, converter=_read_only, hash=False)

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> ImageInfo:
        """Read an image document; unknown keys become C{properties}."""
        core = {f.name for f in fields(cls)} - {"properties"}
        return cls(
            **_common_fields(document),
            visibility=document.get("visibility"),
            os_hidden=bool(document.get("os_hidden", False)),
            os_hash_algo=document.get("os_hash_algo"),
            os_hash_value=document.get("os_hash_value"),
            tags=frozenset(document.get("tags") or ()),
            created_at=_time(document.get("created_at")),
            updated_at=_time(document.get("updated_at")),
            stores=_store_list(document.get("stores")),
            properties={
                key: value
                for key, value in document.items()
                if key not in core and key not in _LINKS
            },
        )

    @classmethod
    def from_v1_document(cls, document: Mapping[str, Any]) -> ImageInfo:
        """
        Read an Images API v1 image document (its JSON, or its
        C{x-image-meta-*} headers as one): C{is_public} is C{visibility}
        C{public} or C{private}, its C{properties} are the properties.
        """
        return cls(
            **_common_fields(document),
            visibility="public" if document.get("is_public") else "private",
            created_at=_v1_time(document.get("created_at")),
            updated_at=_v1_time(document.get("updated_at")),
            properties=dict(document.get("properties") or {}),
        )

    @property
    def importing_to_stores(self) -> tuple[str, ...]:
        """The stores an import still has to write (C{os_glance_importing_to_stores})."""
        return _store_list(self.properties.get("os_glance_importing_to_stores"))

    @property
    def failed_import(self) -> tuple[str, ...]:
        """The stores an import failed to write (C{os_glance_failed_import})."""
        return _store_list(self.properties.get("os_glance_failed_import"))


def _common_fields(document: Mapping[str, Any]) -> dict[str, Any]:
    """The image fields v1 and v2 documents spell alike."""
    return {
        "id": str(document["id"]),
        "name": document.get("name"),
        "status": document.get("status"),
        "protected": bool(document.get("protected", False)),
        "checksum": document.get("checksum"),
        "size": _int(document.get("size")),
        "virtual_size": _int(document.get("virtual_size")),
        "min_disk": _int(document.get("min_disk")) or 0,
        "min_ram": _int(document.get("min_ram")) or 0,
        "disk_format": document.get("disk_format"),
        "container_format": document.get("container_format"),
        "owner": document.get("owner"),
    }


def _store_list(value: Any) -> tuple[str, ...]:
    """Glance's comma-joined store ids as a tuple."""
    return tuple(s for s in (value or "").split(",") if s)


@frozen
class MemberInfo:
    """One project an image is shared with, and whether it accepted."""

    image_id: str
    member_id: str
    status: str
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> MemberInfo:
        return cls(
            image_id=str(document["image_id"]),
            member_id=str(document["member_id"]),
            status=str(document["status"]),
            created_at=_time(document.get("created_at")),
            updated_at=_time(document.get("updated_at")),
        )


@frozen
class StoreInfo:
    """One store an upload may name, from C{GET /v2/info/stores}."""

    id: str
    description: str | None = None
    default: bool = False
    read_only: bool = False

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> StoreInfo:
        # Glance writes its flags as the string "true" and leaves a false out.
        return cls(
            id=str(document["id"]),
            description=document.get("description"),
            default=str(document.get("default", "")).lower() == "true",
            read_only=str(document.get("read-only", "")).lower() == "true",
        )


@frozen
class DownloadResult:
    """What a download wrote, and how it was checked."""

    image_id: str
    size: int
    #: The hash the data was checked with (C{sha512}, C{md5}), or None if
    #: the image carried none to check against.
    algorithm: str | None
    hexdigest: str | None
    #: How many times the download resumed after a dropped connection.
    resumed: int = 0
