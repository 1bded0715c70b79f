"""
How Images API v1 spells image metadata: ``x-image-meta-*`` headers on the
way in and out, and the ``{"image": {...}}`` JSON document.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from attrs import frozen
from twisted.web.http_headers import Headers

from glance_tx import images
from glance_tx.api.http_cache import (
    EntityTag,
    Validators,
    data_etag,
    fingerprint,
    metadata_cache_control,
    shareable,
)
from glance_tx.api.params import parse_int
from glance_tx.config import CacheConfig, ImageFormatConfig
from glance_tx.errors import BadRequest
from glance_tx.images import Image
from glance_tx.v1_wire import BOOLEANS, PREFIX, PROPERTY_PREFIX, SETTABLE, header_value

_MD5 = re.compile(r"[0-9a-fA-F]{32}")


def parse_bool(name: str, value: str) -> bool:
    try:
        return BOOLEANS[value.strip().lower()]
    except KeyError:
        raise BadRequest(f"x-image-meta-{name} must be true or false, not {value!r}") from None


@frozen
class V1Meta:
    """What the x-image-meta-* headers of one request ask for."""

    core: dict[str, Any]
    properties: dict[str, str]
    location: str | None
    store: str | None
    image_id: str | None
    size: int | None
    checksum: str | None


def check_formats(core: dict[str, Any], allowed: ImageFormatConfig) -> None:
    """
    Glance v1's format rules (its C{_validate_format}), on the formats a
    request names in C{core}: each one named must be in the operator's
    list (an empty header names C{None}, which is in none); when one is
    ami, ari or aki, the other must be the same, and is filled in when
    the request does not name it. (v2 has only the lists.)
    """
    disk_format = core.get("disk_format")
    container_format = core.get("container_format")
    if "disk_format" in core and disk_format not in allowed.disk_formats:
        raise BadRequest(f"Invalid disk format '{disk_format}' for image.")
    if "container_format" in core and container_format not in allowed.container_formats:
        raise BadRequest(f"Invalid container format '{container_format}' for image.")
    if disk_format in images.AMAZON_FORMATS or container_format in images.AMAZON_FORMATS:
        if disk_format is None:
            core["disk_format"] = container_format
        elif container_format is None:
            core["container_format"] = disk_format
        elif disk_format != container_format:
            raise BadRequest(
                "Invalid mix of disk and container formats. When setting a disk "
                "or container format to one of 'aki', 'ari', or 'ami', the "
                "container and disk formats must match."
            )


def parse_headers(headers: Headers, formats: ImageFormatConfig | None = None) -> V1Meta:
    """
    Read and validate every x-image-meta-* header; 400 on a bad value.
    Formats are checked against C{formats} (Glance's default lists when
    None), as L{check_formats} says.
    """
    raw: dict[str, str] = {}
    properties: dict[str, str] = {}
    for name_bytes, values in headers.getAllRawHeaders():
        name = name_bytes.decode("latin-1").lower()
        value = values[-1].decode("utf-8", "replace")
        if name.startswith(PROPERTY_PREFIX):
            key = name[len(PROPERTY_PREFIX):]
            properties[key] = value
        elif name.startswith(PREFIX):
            key = name[len(PREFIX):].replace("-", "_")
            if key in SETTABLE:
                raw[key] = value
    core: dict[str, Any] = {}
    if "name" in raw:
        core["name"] = raw["name"]
    for key in ("disk_format", "container_format"):
        if key in raw:
            # Case matters, as in Glance: "RAW" is no format.
            core[key] = raw[key].strip() or None
    check_formats(core, formats or ImageFormatConfig())
    for key in ("min_ram", "min_disk"):
        if key in raw:
            core[key] = parse_int(f"x-image-meta-{key}", raw[key], images.MAX_INT)
    if "is_public" in raw:
        core["visibility"] = "public" if parse_bool("is_public", raw["is_public"]) else "shared"
    if "protected" in raw:
        core["protected"] = parse_bool("protected", raw["protected"])
    if "owner" in raw:
        core["owner"] = raw["owner"].strip() or None
    size = parse_int("x-image-meta-size", raw["size"]) if "size" in raw else None
    checksum = raw.get("checksum", "").strip() or None
    if checksum is not None and not _MD5.fullmatch(checksum):
        raise BadRequest("x-image-meta-checksum must be an MD5 hex digest")
    image_id = images.validate_image_id(raw["id"].strip()) if "id" in raw else None
    for key in properties:
        if not key or len(key) > images.MAX_PROPERTY_LENGTH:
            raise BadRequest(f"Invalid property name {key!r}")
    return V1Meta(
        core=core,
        properties=properties,
        location=raw.get("location", "").strip() or None,
        store=raw.get("store", "").strip() or None,
        image_id=image_id,
        size=size,
        checksum=checksum.lower() if checksum else None,
    )


def _timestamp(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def image_document(image: Image) -> dict[str, Any]:
    """The full v1 representation (never the location: it can hold secrets)."""
    return {
        "id": image.id,
        "name": image.name,
        "status": image.status,
        "size": image.size,
        "virtual_size": image.virtual_size,
        "checksum": image.checksum,
        "disk_format": image.disk_format,
        "container_format": image.container_format,
        "is_public": image.is_public,
        "min_ram": image.min_ram,
        "min_disk": image.min_disk,
        "owner": image.owner,
        "protected": image.protected,
        "created_at": _timestamp(image.created_at),
        "updated_at": _timestamp(image.updated_at),
        "deleted_at": _timestamp(image.deleted_at),
        "deleted": image.deleted,
        "properties": dict(image.properties),
    }


BRIEF_FIELDS = ("id", "name", "disk_format", "container_format", "size", "checksum", "status")


def brief_document(image: Image) -> dict[str, Any]:
    full = image_document(image)
    return {key: full[key] for key in BRIEF_FIELDS}


def set_image_headers(headers: Headers, image: Image) -> None:
    """Describe the image in x-image-meta-* headers, as HEAD and GET do."""
    document = image_document(image)
    properties = document.pop("properties")
    for key, value in document.items():
        if value is None and key not in ("name",):
            continue
        headers.setRawHeaders(
            (PREFIX + key).encode("ascii"), [header_value(value)]
        )
    for key, value in properties.items():
        headers.setRawHeaders(
            (PROPERTY_PREFIX + key).encode("utf-8"), [header_value(value)]
        )


def image_validators(image: Image, headers: Headers, config: CacheConfig) -> Validators:
    """
    Validators for v1's C{/images/ID}, whose representation is the data
    and the C{x-image-meta-*} C{headers} together (see
    L{glance_tx.api.http_cache}): a strong ETag of the data's tag and a
    digest of the headers while the image is active, of the digest alone
    otherwise; Last-Modified and Cache-Control as for metadata.
    """
    digest = fingerprint(
        name.lower() + b":" + b",".join(values)
        for name, values in sorted(headers.getAllRawHeaders())
    )
    data = data_etag(image) if image.status == images.ACTIVE else None
    return Validators(
        cache_control=metadata_cache_control(config, public=shareable(image)),
        etag=EntityTag(f"{data.opaque}-{digest}" if data else digest),
        last_modified=image.updated_at,
    )
