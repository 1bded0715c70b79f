"""
An OpenAPI 3.1 document of the Images API v2 as glance-tx serves it.

It is built from the JSON schemas the API already serves at
C{/v2/schemas/*} (L{glance_tx.api.v2_schemas}), so the two cannot drift
apart: OpenAPI 3.1 takes JSON Schema as it is, C{"type": ["null",
"string"]} included. Every refusal is the one error document of
L{glance_tx.api.errors}, declared as each operation's C{default}
response. C{tests/test_openapi.py} checks real responses against it and
runs schemathesis against a live server with it.
"""

from __future__ import annotations

import copy
from typing import Any

from glance_tx.api import v2_schemas
from glance_tx.images import LIST_VISIBILITIES, MAX_INT, MAX_SIZE

#: The media type of a v2 image PATCH (RFC 6902 JSON Patch, Glance's).
PATCH_MEDIA_TYPE = "application/openstack-images-v2.1-json-patch"

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "title", "message"],
            "properties": {
                "code": {"type": "integer", "minimum": 400, "maximum": 599},
                "title": {"type": "string"},
                "message": {"type": "string"},
            },
        }
    },
}

_VERSIONS = {
    "type": "object",
    "required": ["versions"],
    "properties": {
        "versions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "status", "links"],
                "properties": {
                    "id": {"type": "string"},
                    "status": {"type": "string"},
                    "links": {"type": "array"},
                },
            },
        }
    },
}


def _plain(schema: dict[str, Any]) -> dict[str, Any]:
    """A served schema without Glance's hyper-schema keys (name, links)."""
    schema = copy.deepcopy(schema)
    schema.pop("name", None)
    schema.pop("links", None)
    return schema


def _image_create() -> dict[str, Any]:
    """What a create may send: the image's fields less the service's own."""
    image = _plain(v2_schemas.image_schema())
    for name in v2_schemas.READ_ONLY | v2_schemas.DISALLOWED | {"locations"}:
        image["properties"].pop(name, None)
    image["type"] = "object"
    return image


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(name)}}


def _responses(status: int | None = None, schema: str | None = None) -> dict[str, Any]:
    """C{status} with C{schema} (or no body), and the error document for the rest."""
    responses: dict[str, Any] = {"default": {"description": "A refusal", "content": _json("Error")}}
    if status is not None:
        answer: dict[str, Any] = {"description": "Done"}
        if schema is not None:
            answer["content"] = _json(schema)
        responses[str(status)] = answer
    return responses


def _path_parameters(*names: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in names
    ]


def _listing_parameters() -> list[dict[str, Any]]:
    """The listing's documented query arguments (glance_tx.api.v2_query)."""

    def query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": schema}

    return [
        query("limit", {"type": "integer", "minimum": 0, "maximum": MAX_INT}),
        query("marker", {"type": "string"}),
        query("name", {"type": "string"}),
        query("owner", {"type": "string"}),
        query("status", {"type": "string", "enum": list(v2_schemas.IMAGE_STATUSES)}),
        query("visibility", {"type": "string", "enum": sorted(LIST_VISIBILITIES)}),
        query("disk_format", {"type": "string", "enum": list(v2_schemas.DISK_FORMATS)}),
        query("os_hidden", {"type": "boolean"}),
        query("protected", {"type": "boolean"}),
        query("tag", {"type": "string"}),
        query("size_min", {"type": "integer", "minimum": 0, "maximum": MAX_SIZE}),
        query("size_max", {"type": "integer", "minimum": 0, "maximum": MAX_SIZE}),
        query("sort_key", {"type": "string", "enum": ["name", "created_at", "updated_at", "size", "status", "id"]}),
        query("sort_dir", {"type": "string", "enum": ["asc", "desc"]}),
    ]


def openapi_document() -> dict[str, Any]:
    """The whole document (a fresh copy each call)."""
    image_id = _path_parameters("image_id")
    patch_op = {
        "type": "object",
        "required": ["op", "path"],
        "properties": {
            "op": {"type": "string", "enum": ["add", "remove", "replace"]},
            "path": {"type": "string"},
            "value": {},
        },
    }
    member_status = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["pending", "accepted", "rejected"]}},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "glance-tx Images API v2",
            "version": "2.5",
            "description": "OpenStack Images API v2, as glance-tx serves it.",
        },
        "paths": {
            "/versions": {"get": {"operationId": "versions", "responses": _responses(300, "Versions")}},
            "/v2/schemas/{name}": {
                "get": {
                    "operationId": "schema",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "enum": sorted(v2_schemas.SCHEMAS)},
                        }
                    ],
                    "responses": _responses(200, "Object"),
                }
            },
            "/v2/info/stores": {"get": {"operationId": "stores", "responses": _responses(200, "Object")}},
            "/v2/images": {
                "get": {
                    "operationId": "listImages",
                    "parameters": _listing_parameters(),
                    "responses": _responses(200, "Images"),
                },
                "post": {
                    "operationId": "createImage",
                    "requestBody": {"required": True, "content": _json("ImageCreate")},
                    "responses": _responses(201, "Image"),
                },
            },
            "/v2/images/{image_id}": {
                "parameters": image_id,
                "get": {"operationId": "showImage", "responses": _responses(200, "Image")},
                "patch": {
                    "operationId": "updateImage",
                    "requestBody": {
                        "required": True,
                        "content": {
                            PATCH_MEDIA_TYPE: {"schema": {"type": "array", "items": patch_op}}
                        },
                    },
                    "responses": _responses(200, "Image"),
                },
                "delete": {"operationId": "deleteImage", "responses": _responses(204)},
            },
            "/v2/images/{image_id}/file": {
                "parameters": image_id,
                "put": {
                    "operationId": "uploadImage",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            }
                        },
                    },
                    "responses": _responses(204),
                },
                "get": {
                    "operationId": "downloadImage",
                    "responses": {
                        **_responses(),
                        "200": {
                            "description": "The image's data",
                            "content": {"application/octet-stream": {}},
                        },
                        "204": {"description": "An active image with no data"},
                    },
                },
            },
            "/v2/images/{image_id}/tags/{tag}": {
                "parameters": _path_parameters("image_id", "tag"),
                "put": {"operationId": "addTag", "responses": _responses(204)},
                "delete": {"operationId": "deleteTag", "responses": _responses(204)},
            },
            "/v2/images/{image_id}/members": {
                "parameters": image_id,
                "get": {"operationId": "listMembers", "responses": _responses(200, "Members")},
                "post": {
                    "operationId": "addMember",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["member"],
                                    "properties": {"member": {"type": "string"}},
                                }
                            }
                        },
                    },
                    "responses": _responses(200, "Member"),
                },
            },
            "/v2/images/{image_id}/members/{member_id}": {
                "parameters": _path_parameters("image_id", "member_id"),
                "get": {"operationId": "showMember", "responses": _responses(200, "Member")},
                "put": {
                    "operationId": "updateMember",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": member_status}},
                    },
                    "responses": _responses(200, "Member"),
                },
                "delete": {"operationId": "removeMember", "responses": _responses(204)},
            },
            "/v2/images/{image_id}/actions/deactivate": {
                "parameters": image_id,
                "post": {"operationId": "deactivateImage", "responses": _responses(204)},
            },
            "/v2/images/{image_id}/actions/reactivate": {
                "parameters": image_id,
                "post": {"operationId": "reactivateImage", "responses": _responses(204)},
            },
        },
        "components": {
            "schemas": {
                "Error": copy.deepcopy(_ERROR),
                "Versions": copy.deepcopy(_VERSIONS),
                "Object": {"type": "object"},
                "Image": {**_plain(v2_schemas.image_schema()), "type": "object"},
                "ImageCreate": _image_create(),
                "Images": {**_plain(v2_schemas.images_schema()), "type": "object"},
                "Member": {**_plain(v2_schemas.member_schema()), "type": "object"},
                "Members": {**_plain(v2_schemas.members_schema()), "type": "object"},
            }
        },
    }


if __name__ == "__main__":
    import json

    print(json.dumps(openapi_document(), indent=2))
