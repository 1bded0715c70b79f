"""
JSON-patch for ``PATCH /v2/images/{id}``, as Glance speaks it.

Two media types, two spellings of one operation:

- ``application/openstack-images-v2.1-json-patch`` (JSON Schema draft 10,
  RFC 6902 style): ``{"op": "replace", "path": "/name", "value": "x"}``;
- ``application/openstack-images-v2.0-json-patch`` (draft 4):
  ``{"replace": "/name", "value": "x"}``.

Only ``add``, ``remove`` and ``replace`` exist, and a path names one image
field or extra property (``/tags`` replaces the whole tag list). Glance's
rules: read-only fields are 403 (whatever the value), as are reserved names;
removing a core field is 403; replacing or removing an extra property that
does not exist is 409 (and so of ``stores``, shown but not stored),
and so is ``add`` on an existing field in the 2.0 dialect; a value the image
schema refuses is 400; ``disk_format`` and ``container_format`` change only
while the image is queued (403).

Parsing is separate from applying: L{parse_patch} turns a body into
L{Change}s (400 for anything malformed) before any image is looked up, and
L{apply_patch} turns changes and the current L{Image} into one
L{ImageUpdate}, so the registry sees a single atomic update.

Locations (``add`` at ``/locations/N`` or ``/locations/-``, ``remove`` of
``/locations/N``, ``replace`` of ``/locations``) parse into changes too, their values into
L{NewLocation}s; applying them needs the stores, so the API does it (see
L{glance_tx.locations}) and L{apply_patch} takes the other changes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from attrs import field as attrs_field
from attrs import frozen

from glance_tx import images
from glance_tx.api import v2_schemas
from glance_tx.api.params import parse_json
from glance_tx.config import ImageFormatConfig
from glance_tx.errors import BadRequest, Conflict, Forbidden, UnsupportedMediaType
from glance_tx.images import Image, ImageUpdate, check_location_metadata
from glance_tx.locations import Validation

#: Media type -> JSON Schema draft it follows.
MEDIA_TYPES = {
    "application/openstack-images-v2.0-json-patch": 4,
    "application/openstack-images-v2.1-json-patch": 10,
}
#: The Accept-Patch header of a 415.
ACCEPT_PATCH = ", ".join(sorted(MEDIA_TYPES))
OPERATIONS = ("add", "remove", "replace")

#: Core fields a patch may set; tags are a core field too.
PATCHABLE = frozenset(
    {
        "name", "visibility", "protected", "os_hidden", "min_ram", "min_disk",
        "disk_format", "container_format", "owner", "tags",
    }
)
#: Fields that change only while the image has no data.
FORMAT_FIELDS = frozenset({"disk_format", "container_format"})
#: Statuses in which they may change.
FORMAT_MUTABLE_STATUSES = frozenset({images.QUEUED, images.IMAGE_IMPORTING})


@frozen
class Change:
    """One operation: C{op} on the field or property C{name}."""

    op: str
    name: str
    value: Any = None
    draft: int = 10
    #: For C{locations}: the index the operation names (C{None}: C{-}).
    position: int | None = None


@frozen
class NewLocation:
    """The value of an C{add} to C{/locations}."""

    url: str
    #: The store id its metadata names, if any.
    store: str | None = None
    validation: Validation = Validation()
    #: The rest of its metadata.
    metadata: Mapping[str, Any] = attrs_field(factory=dict)


def draft_for(content_type: str | None) -> int:
    """
    The draft of a PATCH's media type (parameters ignored), or a 415 whose
    message names the accepted types (the caller sends L{ACCEPT_PATCH}).
    """
    media = (content_type or "").split(";")[0].strip().lower()
    try:
        return MEDIA_TYPES[media]
    except KeyError:
        raise UnsupportedMediaType(
            f"Unsupported media type {media or '(none)'!r} for PATCH; use one of "
            + ACCEPT_PATCH
        ) from None


def parse_patch(
    body: bytes, draft: int, formats: ImageFormatConfig | None = None
) -> tuple[Change, ...]:
    """
    Read and check a patch document; 400 or 403 for what Glance refuses,
    values checked against the image schema for C{formats}.
    """
    document = parse_json(body)
    if not isinstance(document, list):
        raise BadRequest("Request body must be a JSON array of operation objects.")
    changes = []
    for raw in document:
        if not isinstance(raw, dict):
            raise BadRequest("Operations must be JSON objects.")
        op, pointer = _operation_d10(raw) if draft == 10 else _operation_d4(raw)
        path = decode_pointer(pointer)
        name = path[0]
        if name == "locations":
            changes.append(_location_change(op, path, raw, draft))
            continue
        if len(path) != 1:
            raise BadRequest(f"Invalid JSON pointer for this resource: '/{'/'.join(path)}'")
        check_writable(name)
        value = None
        if op != "remove":
            if "value" not in raw:
                raise BadRequest(f'Operation "{op}" requires a member named "value".')
            value = raw["value"]
            v2_schemas.validate_image({name: value}, formats)
            if name not in v2_schemas.BASE_PROPERTIES:
                check_property_name(name)
        changes.append(Change(op=op, name=name, value=value, draft=draft))
    return tuple(changes)


def _location_change(op: str, path: list[str], raw: dict[str, Any], draft: int) -> Change:
    """
    An C{add} or C{remove} of one location, at C{/locations/N} (counted
    from 0) or C{/locations/-} (after the last; for a remove, the last);
    or a C{replace} of C{/locations}, its value a list of locations.
    """
    if op == "replace":
        if len(path) != 1:
            raise Forbidden("Only the whole location list can be replaced.")
        if "value" not in raw:
            raise BadRequest(f'Operation "{op}" requires a member named "value".')
        v2_schemas.validate_image({"locations": raw["value"]})
        wanted = tuple(_location_value(value) for value in raw["value"])
        return Change(op=op, name="locations", value=wanted, draft=draft)
    if len(path) != 2:
        raise BadRequest(f"Invalid JSON pointer for this resource: '/{'/'.join(path)}'")
    position = None if path[1] == "-" else _position(path[1], op)
    value = None
    if op == "add":
        if "value" not in raw:
            raise BadRequest(f'Operation "{op}" requires a member named "value".')
        v2_schemas.validate_image({"locations": [raw["value"]]})
        value = _location_value(raw["value"])
    return Change(op=op, name="locations", value=value, draft=draft, position=position)


def _position(part: str, op: str) -> int:
    if not part.isdigit():
        noun = "adding" if op == "add" else "removing"
        raise BadRequest(f"Invalid position for {noun} a location.")
    return int(part)


def _location_value(value: dict[str, Any]) -> NewLocation:
    """
    The location a (schema-valid) C{add} value names. Its metadata's
    C{store} names the enabled store that holds the data (as glance_store
    records it); the rest is kept beside the location, as in Glance.
    """
    metadata = dict(value["metadata"])
    store = metadata.pop("store", None)
    if store is not None and not isinstance(store, str):
        raise BadRequest("Location metadata 'store' must be a store id (a string).")
    digests = value.get("validation_data", {})
    check_location_metadata(metadata)
    return NewLocation(
        url=value["url"],
        store=store,
        metadata=metadata,
        validation=Validation(
            checksum=digests.get("checksum"),
            os_hash_algo=digests.get("os_hash_algo"),
            os_hash_value=digests.get("os_hash_value"),
        ),
    )


def _operation_d10(raw: dict[str, Any]) -> tuple[str, str]:
    op = raw.get("op")
    if op is None:
        raise BadRequest(
            "Unable to find `op` in JSON Schema change. It must be one of the "
            f"following: {', '.join(OPERATIONS)}."
        )
    if op not in OPERATIONS:
        raise BadRequest(
            f"Invalid operation: `{op}`. It must be one of the following: "
            f"{', '.join(OPERATIONS)}."
        )
    if "path" not in raw:
        raise BadRequest("Unable to find 'path' in JSON Schema change")
    return op, raw["path"]


def _operation_d4(raw: dict[str, Any]) -> tuple[str, str]:
    ops = [key for key in OPERATIONS if key in raw]
    if len(ops) != 1:
        raise BadRequest(
            'Operation objects must contain exactly one member named "add", '
            '"remove", or "replace".'
        )
    return ops[0], raw[ops[0]]


def decode_pointer(pointer: Any) -> list[str]:
    """
    The parts of a JSON pointer, in the limited form Glance accepts: starts
    with ``/``, no empty part, ``~`` only in ``~0`` and ``~1``.
    """
    if not isinstance(pointer, str) or not pointer.startswith("/"):
        raise BadRequest(f'Pointer `{pointer}` does not start with "/".')
    if re.search(r"/\s*?/", pointer[1:]):
        raise BadRequest(f'Pointer `{pointer}` contains adjacent "/".')
    if len(pointer) > 1 and pointer.endswith("/"):
        raise BadRequest(f'Pointer `{pointer}` end with "/".')
    if not pointer[1:].strip():
        raise BadRequest(f"Pointer `{pointer}` does not contains valid token.")
    if re.search("~[^01]", pointer) or pointer.endswith("~"):
        raise BadRequest(
            f'Pointer `{pointer}` contains "~" not part of a recognized escape sequence.'
        )
    return [
        part.replace("~1", "/").replace("~0", "~").strip()
        for part in pointer[1:].split("/")
    ]


def check_writable(name: str) -> None:
    """403 for a field only the service writes, or a reserved name."""
    if name in v2_schemas.READ_ONLY:
        raise Forbidden(f"Attribute '{name}' is read-only.")
    if name in v2_schemas.RESERVED or name.startswith(v2_schemas.RESERVED_PREFIX):
        raise Forbidden(f"Attribute '{name}' is reserved.")


def check_property_name(name: str) -> None:
    if not name or len(name) > images.MAX_PROPERTY_LENGTH:
        raise BadRequest(
            f"Custom property names must be 1 to {images.MAX_PROPERTY_LENGTH} characters."
        )


def apply_patch(image: Image, changes: tuple[Change, ...]) -> ImageUpdate:
    """
    Apply C{changes} in order to C{image} and return the one update that
    has the same effect. Policy (who may change the owner or publicize) is
    the caller's; this applies Glance's rules about the fields themselves.
    Changes to C{locations} are left out (the caller applies them).
    """
    core: dict[str, Any] = {
        name: getattr(image, name) for name in PATCHABLE if name != "tags"
    }
    tags = set(image.tags)
    properties: dict[str, str] = dict(image.properties)
    for change in changes:
        name = change.name
        if name == "locations":
            continue
        if name in PATCHABLE:
            if change.op == "remove":
                raise Forbidden(f"Property {name} may not be removed.")
            if change.op == "add" and change.draft == 4:
                raise Conflict(f"Property {name} already present.")
            if name in FORMAT_FIELDS and image.status not in FORMAT_MUTABLE_STATUSES:
                # Even to the value it has: Glance's setter refuses any write.
                raise Forbidden(f"Attribute {name} can be only replaced for a queued image.")
            if name == "tags":
                tags = set(change.value)
            else:
                core[name] = change.value
        elif name == "stores":
            # Shown (with several stores), not stored: like Glance, whose
            # image has no attribute or property of that name, a remove or
            # replace is a 409, even of the value shown (openstacksdk's
            # update_image sends ``remove /stores``). Glance would keep an
            # add as an extra property that the view then hides; refused.
            if change.op == "add":
                raise Forbidden("Attribute 'stores' is read-only.")
            raise Conflict("Property stores does not exist.")
        elif name in v2_schemas.BASE_PROPERTIES:
            # A base property glance-tx does not store (direct_url and
            # locations are refused earlier): nothing to change.
            raise Forbidden(f"Attribute '{name}' cannot be changed.")
        elif change.op == "remove" or change.value is None:
            # A null is allowed only where the schema allows it (kernel_id,
            # ramdisk_id); an image cannot hold a null property, so it
            # stands for "no such property".
            if name not in properties:
                if change.op == "remove" or change.op == "replace":
                    raise Conflict(f"Property {name} does not exist.")
                continue
            del properties[name]
        elif change.op == "replace":
            if name not in properties:
                raise Conflict(f"Property {name} does not exist.")
            properties[name] = change.value
        else:
            if change.draft == 4 and name in properties:
                raise Conflict(f"Property {name} already present.")
            properties[name] = change.value
    fields = {name: value for name, value in core.items() if getattr(image, name) != value}
    changed: dict[str, str | None] = {
        key: value for key, value in properties.items() if image.properties.get(key) != value
    }
    changed.update({key: None for key in image.properties if key not in properties})
    update = ImageUpdate(
        fields=fields,
        properties=changed,
        tags=frozenset(tags) if tags != set(image.tags) else None,
    )
    images.check_image(images.apply_update(image, update))
    return update
