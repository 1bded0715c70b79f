"""
The JSON schemas of Images API v2, and the validation they drive.

python-glanceclient builds its CLI arguments from ``GET /v2/schemas/image``
and validates every image it receives against it (warlock models), so the
schemas mirror Glance's own: the same properties, types, enums, ``readOnly``
markers and links, with Glance's stock ``schema-image.json`` properties
(``os_distro``, ``kernel_id``...) marked ``is_base: false`` as Glance marks
custom properties (glanceclient then patches them with ``add``, not
``replace``).

The same schema documents validate request bodies here, through a small
validator for the keywords they use (type, enum, maxLength, pattern, items,
additionalProperties), so what the API accepts cannot drift from what it
advertises. glance-tx takes no jsonschema dependency at run time; the tests
check the documents with the real jsonschema that glanceclient brings.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

from glance_tx import images
from glance_tx.api.v2_tasks import partial_task_schema, task_schema
from glance_tx.config import ImageFormatConfig
from glance_tx.errors import BadRequest

UUID_PATTERN = (
    "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}"
    "-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"
)

#: Glance's default format lists, in its order (an operator's come from
#: C{[image_format]}; see L{image_schema}).
DISK_FORMATS = images.DISK_FORMATS
CONTAINER_FORMATS = images.CONTAINER_FORMATS
IMAGE_STATUSES = (
    "queued", "saving", "active", "killed", "deleted", "uploading", "importing",
    "pending_delete", "deactivated",
)
VISIBILITIES = ("community", "public", "private", "shared")

_PROPERTY_KEYS_URL = (
    "https://docs.openstack.org/python-glanceclient/latest/cli/property-keys.html"
)


def _base_properties(formats: ImageFormatConfig | None = None) -> dict[str, Any]:
    """
    Glance's base image properties (glance.api.v2.images), the format
    enums from C{formats} (Glance's defaults when None), as Glance builds
    them from C{[image_format] disk_formats} and C{container_formats}.
    """
    formats = formats or ImageFormatConfig()
    return {
        "id": {
            "type": "string",
            "description": "An identifier for the image",
            "pattern": UUID_PATTERN,
        },
        "name": {
            "type": ["null", "string"],
            "description": "Descriptive name for the image",
            "maxLength": images.MAX_NAME_LENGTH,
        },
        "status": {
            "type": "string",
            "readOnly": True,
            "description": "Status of the image",
            "enum": list(IMAGE_STATUSES),
        },
        "visibility": {
            "type": "string",
            "description": "Scope of image accessibility",
            "enum": list(VISIBILITIES),
        },
        "protected": {
            "type": "boolean",
            "description": "If true, image will not be deletable.",
        },
        "os_hidden": {
            "type": "boolean",
            "description": "If true, image will not appear in default image list response.",
        },
        "checksum": {
            "type": ["null", "string"],
            "readOnly": True,
            "description": "md5 hash of image contents.",
            "maxLength": 32,
        },
        "os_hash_algo": {
            "type": ["null", "string"],
            "readOnly": True,
            "description": "Algorithm to calculate the os_hash_value",
            "maxLength": 64,
        },
        "os_hash_value": {
            "type": ["null", "string"],
            "readOnly": True,
            "description": (
                "Hexdigest of the image contents using the algorithm specified "
                "by the os_hash_algo"
            ),
            "maxLength": 128,
        },
        "owner": {
            "type": ["null", "string"],
            "description": "Owner of the image",
            "maxLength": 255,
        },
        "size": {
            "type": ["null", "integer"],
            "readOnly": True,
            "description": "Size of image file in bytes",
        },
        "virtual_size": {
            "type": ["null", "integer"],
            "readOnly": True,
            "description": "Virtual size of image in bytes",
        },
        "container_format": {
            "type": ["null", "string"],
            "description": "Format of the container",
            "enum": [None, *formats.container_formats],
        },
        "disk_format": {
            "type": ["null", "string"],
            "description": "Format of the disk",
            "enum": [None, *formats.disk_formats],
        },
        "created_at": {
            "type": "string",
            "readOnly": True,
            "description": "Date and time of image registration",
        },
        "updated_at": {
            "type": "string",
            "readOnly": True,
            "description": "Date and time of the last image modification",
        },
        "tags": {
            "type": "array",
            "description": "List of strings related to the image",
            "items": {"type": "string", "maxLength": 255},
        },
        "direct_url": {
            "type": "string",
            "readOnly": True,
            "description": "URL to access the image file kept in external store",
        },
        "min_ram": {
            "type": "integer",
            "description": "Amount of ram (in MB) required to boot image.",
        },
        "min_disk": {
            "type": "integer",
            "description": "Amount of disk space (in GB) required to boot image.",
        },
        "self": {
            "type": "string",
            "readOnly": True,
            "description": "An image self url",
        },
        "file": {
            "type": "string",
            "readOnly": True,
            "description": "An image file url",
        },
        "stores": {
            "type": "string",
            "readOnly": True,
            "description": (
                "Store in which image data resides.  Only present when the "
                "operator has enabled multiple stores.  May be a "
                "comma-separated list of store identifiers."
            ),
        },
        "schema": {
            "type": "string",
            "readOnly": True,
            "description": "An image schema url",
        },
        "locations": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "url": {"type": "string", "maxLength": 255},
                    "metadata": {"type": "object"},
                    "validation_data": {
                        "description": (
                            "Digests of the data at this URL: they fill in the "
                            "image's own while it is queued, and must equal "
                            "them otherwise."
                        ),
                        "type": "object",
                        "writeOnly": True,
                        "additionalProperties": False,
                        "properties": {
                            "checksum": {"type": "string", "minLength": 32, "maxLength": 32},
                            "os_hash_algo": {"type": "string", "maxLength": 64},
                            "os_hash_value": {"type": "string", "maxLength": 128},
                        },
                        "required": ["os_hash_algo", "os_hash_value"],
                    },
                },
                "required": ["url", "metadata"],
            },
            "description": "A set of URLs to access the image file kept in external store",
        },
    }


def _custom_properties() -> dict[str, Any]:
    """Glance's stock etc/schema-image.json, marked as custom properties."""
    properties: dict[str, Any] = {
        "kernel_id": {
            "type": ["null", "string"],
            "pattern": UUID_PATTERN,
            "description": (
                "ID of image stored in Glance that should be used as the "
                "kernel when booting an AMI-style image."
            ),
        },
        "ramdisk_id": {
            "type": ["null", "string"],
            "pattern": UUID_PATTERN,
            "description": (
                "ID of image stored in Glance that should be used as the "
                "ramdisk when booting an AMI-style image."
            ),
        },
        "instance_uuid": {
            "type": "string",
            "description": (
                "Metadata which can be used to record which instance this "
                "image is associated with. (Informational only, does not "
                "create an instance snapshot.)"
            ),
        },
        "architecture": {
            "type": "string",
            "description": (
                f"Operating system architecture as specified in {_PROPERTY_KEYS_URL}"
            ),
        },
        "os_distro": {
            "type": "string",
            "description": (
                "Common name of operating system distribution as specified "
                f"in {_PROPERTY_KEYS_URL}"
            ),
        },
        "os_version": {
            "type": "string",
            "description": "Operating system version as specified by the distributor.",
        },
        "description": {
            "type": "string",
            "description": "A human-readable string describing this image.",
        },
        "cinder_encryption_key_id": {
            "type": "string",
            "description": (
                "Identifier in the OpenStack Key Management Service for the "
                "encryption key for the Block Storage Service to use when "
                "mounting a volume created from this image"
            ),
        },
        "cinder_encryption_key_deletion_policy": {
            "type": "string",
            "enum": ["on_image_deletion", "do_not_delete"],
            "description": (
                "States the condition under which the Image Service will "
                "delete the object associated with the "
                "'cinder_encryption_key_id' image property.  If this property "
                "is missing, the Image Service will take no action"
            ),
        },
    }
    for value in properties.values():
        value["is_base"] = False
    return properties


#: Every image field the API shows or takes; extra properties are the rest.
BASE_PROPERTIES: Mapping[str, Any] = _base_properties()
CUSTOM_PROPERTIES: Mapping[str, Any] = _custom_properties()

#: Fields a client may never send (Glance's _disallowed_properties): 403.
DISALLOWED = frozenset({"direct_url", "self", "file", "schema", "stores"})
#: Fields only the service writes (Glance's _readonly_properties): 403 in a
#: create or a patch, whatever the value. C{stores} is not one: a patch that
#: names it is refused as Glance refuses it (see L{v2_patch.apply_patch}).
READ_ONLY = frozenset(
    {
        "created_at", "updated_at", "status", "checksum", "size", "virtual_size",
        "direct_url", "self", "file", "schema", "id", "os_hash_algo",
        "os_hash_value",
    }
)
#: Names no extra property may take: 403.
RESERVED = frozenset({"location", "locations", "deleted", "deleted_at"})
RESERVED_PREFIX = "os_glance"


def image_schema(formats: ImageFormatConfig | None = None) -> dict[str, Any]:
    """The document served at /v2/schemas/image, its enums from C{formats}."""
    return {
        "name": "image",
        "properties": {**_base_properties(formats), **copy.deepcopy(dict(CUSTOM_PROPERTIES))},
        "additionalProperties": {"type": "string"},
        "links": [
            {"rel": "self", "href": "{self}"},
            {"rel": "enclosure", "href": "{file}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    }


def _collection(name: str, item: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "properties": {
            name: {"type": "array", "items": item},
            "first": {"type": "string"},
            "next": {"type": "string"},
            "schema": {"type": "string"},
        },
        "links": [
            {"rel": "first", "href": "{first}"},
            {"rel": "next", "href": "{next}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    }


def images_schema(formats: ImageFormatConfig | None = None) -> dict[str, Any]:
    """The document served at /v2/schemas/images."""
    return _collection("images", image_schema(formats))


def member_schema() -> dict[str, Any]:
    """The document served at /v2/schemas/member."""
    return {
        "name": "member",
        "properties": {
            "member_id": {
                "type": "string",
                "description": "An identifier for the image member (tenantId)",
            },
            "image_id": {
                "type": "string",
                "description": "An identifier for the image",
                "pattern": UUID_PATTERN,
            },
            "created_at": {
                "type": "string",
                "description": "Date and time of image member creation",
            },
            "updated_at": {
                "type": "string",
                "description": "Date and time of last modification of image member",
            },
            "status": {
                "type": "string",
                "description": "The status of this image member",
                "enum": ["pending", "accepted", "rejected"],
            },
            "schema": {"type": "string", "readOnly": True},
        },
        "additionalProperties": False,
    }


def members_schema() -> dict[str, Any]:
    """The document served at /v2/schemas/members."""
    return _collection("members", member_schema())


#: Each schema by name, made for the operator's C{[image_format]}.
SCHEMAS: Mapping[str, Callable[[ImageFormatConfig | None], dict[str, Any]]] = {
    "image": image_schema,
    "images": images_schema,
    "member": lambda formats: member_schema(),
    "members": lambda formats: members_schema(),
    "task": lambda formats: task_schema(),
    # Glance's shape: the collection of partial tasks.
    "tasks": lambda formats: _collection("tasks", partial_task_schema()),
}


# -- validation -----------------------------------------------------------

_TYPES: Mapping[str, Any] = {
    "null": lambda v: v is None,
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def _problem(schema: Mapping[str, Any], value: Any) -> str | None:
    """Why C{value} does not satisfy C{schema}, or None when it does."""
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_TYPES[kind](value) for kind in kinds):
            return f"{value!r} is not of type {', '.join(map(repr, kinds))}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{value!r} is not one of {schema['enum']!r}"
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return f"{value!r} is too long (more than {schema['maxLength']} characters)"
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            return f"{value!r} does not match {schema['pattern']!r}"
    if isinstance(value, list) and "items" in schema:
        for item in value:
            problem = _problem(schema["items"], item)
            if problem is not None:
                return problem
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key in schema["properties"]:
                problem = _problem(schema["properties"][key], item)
            else:
                extra = schema.get("additionalProperties", True)
                if extra is False:
                    return f"Additional properties are not allowed ({key!r} was unexpected)"
                problem = _problem(extra, item) if isinstance(extra, Mapping) else None
            if problem is not None:
                return f"{key}: {problem}"
        for key in schema.get("required", ()):
            if key not in value:
                return f"{key!r} is a required property"
    return None


def validate(schema: Mapping[str, Any], document: Any) -> None:
    """400 unless C{document} satisfies C{schema}, saying why."""
    problem = _problem(schema, document)
    if problem is not None:
        raise BadRequest(
            f"Provided object does not match schema '{schema.get('name', '')}': {problem}"
        )


@functools.lru_cache(maxsize=8)
def _image_schema(formats: ImageFormatConfig | None) -> Mapping[str, Any]:
    """One image schema per configuration, made once (never handed out)."""
    return image_schema(formats)


def validate_image(document: Mapping[str, Any], formats: ImageFormatConfig | None = None) -> None:
    """
    400 unless C{document} (image fields by name) fits the image schema
    for C{formats} (Glance's default lists when None).
    """
    validate(_image_schema(formats), dict(document))
