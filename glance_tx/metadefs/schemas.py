"""
The JSON schemas of C{/v2/schemas/metadefs/...}, in Glance's names and
fields, and the checks of request bodies against them (the one schema
checker of L{glance_tx.api.v2_schemas}).

Glance writes its shared parts as C{$ref}s to C{definitions}; here they
are written out where used, so that one document is both what a client
reads and what a request is checked with.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from glance_tx.api.v2_schemas import validate
from glance_tx.metadefs.model import MAX_DESCRIPTION, MAX_NAME, MAX_OWNER, VISIBILITIES

_TYPES = ["array", "boolean", "integer", "number", "object", "string"]

_STRINGS = {"type": "array", "items": {"type": "string"}, "uniqueItems": True}


def _timestamp(what: str) -> dict[str, Any]:
    return {
        "type": "string",
        "readOnly": True,
        "description": f"Date and time of {what}",
        "format": "date-time",
    }


def _property_fields() -> dict[str, Any]:
    """What one property definition may say (Glance's C{property} definition)."""
    return {
        "name": {"type": "string", "maxLength": MAX_NAME},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "operators": {"type": "array", "items": {"type": "string"}},
        "type": {"type": "string", "enum": _TYPES},
        "required": copy.deepcopy(_STRINGS),
        "minimum": {"type": "number"},
        "maximum": {"type": "number"},
        "maxLength": {"type": "integer", "minimum": 0},
        "minLength": {"type": "integer", "minimum": 0},
        "pattern": {"type": "string", "format": "regex"},
        "enum": {"type": "array"},
        "readonly": {"type": "boolean"},
        "default": {},
        "items": {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": _TYPES},
                "enum": {"type": "array"},
            },
        },
        "maxItems": {"type": "integer", "minimum": 0},
        "minItems": {"type": "integer", "minimum": 0},
        "uniqueItems": {"type": "boolean", "default": False},
        "additionalItems": {"type": "boolean"},
    }


def _property_map() -> dict[str, Any]:
    """Property definitions by name, as a namespace or an object holds them."""
    return {
        "type": "object",
        "additionalProperties": {
            "type": "object",
            "required": ["title", "type"],
            "properties": _property_fields(),
        },
    }


def _links(*rels: str) -> list[dict[str, str]]:
    return [{"rel": rel, "href": "{%s}" % ("schema" if rel == "describedby" else rel)} for rel in rels]


def _collection(name: str, item: dict[str, Any], paged: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "name": name,
        "properties": {name: {"type": "array", "items": item}, "schema": {"type": "string"}},
        "links": _links("describedby"),
    }
    if paged:
        schema["properties"].update({"first": {"type": "string"}, "next": {"type": "string"}})
        schema["links"] = _links("first", "next", "describedby")
    return schema


def association_schema() -> dict[str, Any]:
    return {
        "name": "resource_type_association",
        "properties": {
            "name": {
                "type": "string",
                "maxLength": MAX_NAME,
                "description": "Resource type names should be aligned with Heat resource"
                " types whenever possible: https://docs.openstack.org/heat/latest/"
                "template_guide/openstack.html",
            },
            "prefix": {
                "type": "string",
                "maxLength": MAX_NAME,
                "description": "Specifies the prefix to use for the given resource type."
                " Any properties in the namespace should be prefixed with this prefix"
                " when being applied to the specified resource type.",
            },
            "properties_target": {
                "type": "string",
                "maxLength": MAX_NAME,
                "description": "Some resource types allow more than one key / value pair"
                " per instance; this names which one the properties apply to.",
            },
            "created_at": _timestamp("resource type association"),
            "updated_at": _timestamp("the last resource type association modification"),
        },
        "required": ["name"],
        "additionalProperties": False,
    }


def association_collection_schema() -> dict[str, Any]:
    return _collection("resource_type_associations", association_schema())


def object_schema() -> dict[str, Any]:
    return {
        "name": "object",
        "properties": {
            "name": {"type": "string", "maxLength": MAX_NAME},
            "description": {"type": "string"},
            "required": copy.deepcopy(_STRINGS),
            "properties": _property_map(),
            "schema": {"type": "string", "readOnly": True},
            "self": {"type": "string", "readOnly": True},
            "created_at": _timestamp("object creation"),
            "updated_at": _timestamp("the last object modification"),
        },
        "required": ["name"],
        "additionalProperties": False,
    }


def object_collection_schema() -> dict[str, Any]:
    return _collection("objects", object_schema())


def property_schema() -> dict[str, Any]:
    return {
        "name": "property",
        "properties": _property_fields(),
        "required": ["name", "title", "type"],
        "additionalProperties": False,
    }


def property_collection_schema() -> dict[str, Any]:
    return {
        "name": "properties",
        "properties": {"properties": _property_map(), "schema": {"type": "string"}},
        "links": _links("first", "next", "describedby"),
    }


def tag_schema() -> dict[str, Any]:
    return {
        "name": "tag",
        "properties": {
            "name": {"type": "string", "maxLength": MAX_NAME},
            "created_at": _timestamp("tag creation"),
            "updated_at": _timestamp("the last tag modification"),
        },
        "required": ["name"],
        "additionalProperties": False,
    }


def tag_collection_schema() -> dict[str, Any]:
    return _collection("tags", tag_schema(), paged=True)


def namespace_schema() -> dict[str, Any]:
    return {
        "name": "namespace",
        "properties": {
            "namespace": {
                "type": "string",
                "maxLength": MAX_NAME,
                "description": "The unique namespace text.",
            },
            "display_name": {
                "type": "string",
                "maxLength": MAX_NAME,
                "description": "The user friendly name for the namespace. Used by UI if available.",
            },
            "description": {
                "type": "string",
                "maxLength": MAX_DESCRIPTION,
                "description": "Provides a user friendly description of the namespace.",
            },
            "visibility": {
                "type": "string",
                "enum": list(VISIBILITIES),
                "description": "Scope of namespace accessibility.",
            },
            "protected": {
                "type": "boolean",
                "description": "If true, namespace will not be deletable.",
            },
            "owner": {
                "type": "string",
                "maxLength": MAX_OWNER,
                "description": "Owner of the namespace.",
            },
            "created_at": _timestamp("namespace creation"),
            "updated_at": _timestamp("the last namespace modification"),
            "schema": {"type": "string", "readOnly": True},
            "self": {"type": "string", "readOnly": True},
            "resource_type_associations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "prefix": {"type": "string"},
                        "properties_target": {"type": "string"},
                    },
                },
            },
            "properties": _property_map(),
            "objects": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "description": {"type": "string"},
                        "required": copy.deepcopy(_STRINGS),
                        "properties": _property_map(),
                    },
                },
            },
            "tags": {
                "type": "array",
                "items": {"type": "object", "properties": {"name": {"type": "string"}}},
            },
        },
        "required": ["namespace"],
        "additionalProperties": False,
    }


def namespace_collection_schema() -> dict[str, Any]:
    return _collection("namespaces", namespace_schema(), paged=True)


#: What C{/v2/schemas/metadefs/<name>} serves, by name.
SCHEMAS: Mapping[str, Callable[[], dict[str, Any]]] = {
    "namespace": namespace_schema,
    "namespaces": namespace_collection_schema,
    "object": object_schema,
    "objects": object_collection_schema,
    "property": property_schema,
    "properties": property_collection_schema,
    "tag": tag_schema,
    "tags": tag_collection_schema,
    "resource_type": association_schema,
    "resource_types": association_collection_schema,
}

_CHECKED = {name: make() for name, make in SCHEMAS.items()}


def check(name: str, document: Any) -> None:
    """400 unless C{document} fits the schema served as C{name}, saying why."""
    validate(_CHECKED[name], document)
