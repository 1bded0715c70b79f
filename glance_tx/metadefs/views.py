"""
Metadef records to Glance's JSON documents and back: what
C{/v2/metadefs/...} answers, and the records its request bodies make
(checked against L{glance_tx.metadefs.schemas} first).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

from glance_tx.api.v2 import _timestamp
from glance_tx.errors import BadRequest, Forbidden
from glance_tx.metadefs import schemas
from glance_tx.metadefs.model import (
    OBJECT,
    PRIVATE,
    PROPERTY,
    TAG,
    Association,
    Definition,
    Namespace,
    NamespaceContent,
    ResourceType,
)

#: What a client may not set (Glance answers 403 "Attribute ... is read-only").
READ_ONLY = ("self", "schema", "created_at", "updated_at")


def namespace_path(name: str) -> str:
    return f"/v2/metadefs/namespaces/{quote(name, safe=':')}"


def _times(view: dict[str, Any], created_at: datetime | None, updated_at: datetime | None) -> None:
    if created_at is not None:
        view["created_at"] = _timestamp(created_at)
    if updated_at is not None:
        view["updated_at"] = _timestamp(updated_at)


def association_view(association: Association) -> dict[str, Any]:
    view: dict[str, Any] = {"name": association.name}
    if association.prefix is not None:
        view["prefix"] = association.prefix
    if association.properties_target is not None:
        view["properties_target"] = association.properties_target
    _times(view, association.created_at, association.updated_at)
    return view


def resource_type_view(resource_type: ResourceType) -> dict[str, Any]:
    view: dict[str, Any] = {"name": resource_type.name}
    _times(view, resource_type.created_at, resource_type.updated_at)
    return view


def namespace_view(
    namespace: Namespace, associations: Iterable[Association] = ()
) -> dict[str, Any]:
    """A namespace as listed (and the head of its detail); unset fields left out."""
    view: dict[str, Any] = {
        "namespace": namespace.namespace,
        "visibility": namespace.visibility,
        "protected": namespace.protected,
    }
    for key in ("display_name", "description", "owner"):
        value = getattr(namespace, key)
        if value is not None:
            view[key] = value
    _times(view, namespace.created_at, namespace.updated_at)
    shown = [association_view(a) for a in associations]
    if shown:
        view["resource_type_associations"] = shown
    view["schema"] = "/v2/schemas/metadefs/namespace"
    view["self"] = namespace_path(namespace.namespace)
    return view


def property_view(definition: Definition, prefix: str = "") -> dict[str, Any]:
    return {**definition.document, "name": prefix + definition.name}


def properties_view(definitions: Iterable[Definition], prefix: str = "") -> dict[str, Any]:
    """Properties by name, as a namespace's detail and the listing show them."""
    return {prefix + d.name: dict(d.document) for d in definitions}


def object_view(namespace: str, definition: Definition, prefix: str = "") -> dict[str, Any]:
    document = definition.document
    view: dict[str, Any] = {"name": definition.name}
    if document.get("description") is not None:
        view["description"] = document["description"]
    view["required"] = [prefix + name for name in document.get("required") or []]
    view["properties"] = {
        prefix + name: value for name, value in (document.get("properties") or {}).items()
    }
    _times(view, definition.created_at, definition.updated_at)
    view["schema"] = "/v2/schemas/metadefs/object"
    view["self"] = f"{namespace_path(namespace)}/objects/{quote(definition.name, safe=':')}"
    return view


def tag_view(definition: Definition) -> dict[str, Any]:
    view: dict[str, Any] = {"name": definition.name}
    _times(view, definition.created_at, definition.updated_at)
    return view


# -- request bodies to records ---------------------------------------------------


def _checked(schema: str, body: Mapping[str, Any]) -> dict[str, Any]:
    for key in READ_ONLY:
        if key in body:
            raise Forbidden(f"Attribute '{key}' is read-only.")
    schemas.check(schema, dict(body))
    return dict(body)


def parse_property(body: Mapping[str, Any]) -> Definition:
    document = _checked("property", body)
    name = document.pop("name")
    return Definition(kind=PROPERTY, name=name, document=document)


def _property_definitions(properties: Mapping[str, Any]) -> tuple[Definition, ...]:
    return tuple(
        Definition(kind=PROPERTY, name=name, document={k: v for k, v in value.items() if k != "name"})
        for name, value in properties.items()
    )


def _object_document(body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "description": body.get("description"),
        "required": list(body.get("required") or []),
        "properties": dict(body.get("properties") or {}),
    }


def parse_object(body: Mapping[str, Any]) -> Definition:
    document = _checked("object", body)
    return Definition(kind=OBJECT, name=document["name"], document=_object_document(document))


def parse_tag(body: Mapping[str, Any]) -> Definition:
    document = _checked("tag", body)
    return Definition(kind=TAG, name=document["name"])


def parse_tags(body: Mapping[str, Any]) -> tuple[Definition, ...]:
    """C{{"tags": [{"name": ...}, ...]}}, Glance's bulk create."""
    tags = body.get("tags")
    if not isinstance(tags, list) or any(not isinstance(tag, dict) for tag in tags):
        raise BadRequest("tags must be a list of objects with a name")
    return tuple(parse_tag(tag) for tag in tags)


def parse_association(body: Mapping[str, Any]) -> Association:
    document = _checked("resource_type", body)
    return Association(
        name=document["name"],
        prefix=document.get("prefix"),
        properties_target=document.get("properties_target"),
    )


def parse_namespace(body: Mapping[str, Any], owner: str | None) -> NamespaceContent:
    """
    A create (or update) body: the namespace, owned by C{owner} unless the
    body names one, private unless it says otherwise; a create may carry
    properties, objects, tags and associations too.
    """
    document = _checked("namespace", body)
    namespace = Namespace(
        namespace=document["namespace"],
        display_name=document.get("display_name"),
        description=document.get("description"),
        visibility=document.get("visibility") or PRIVATE,
        protected=bool(document.get("protected", False)),
        owner=document.get("owner") or owner,
    )
    definitions = _property_definitions(document.get("properties") or {})
    definitions += tuple(
        Definition(kind=OBJECT, name=check_object_name(o), document=_object_document(o))
        for o in document.get("objects") or []
    )
    definitions += tuple(
        Definition(kind=TAG, name=check_object_name(t)) for t in document.get("tags") or []
    )
    associations = tuple(
        Association(
            name=check_object_name(a),
            prefix=a.get("prefix"),
            properties_target=a.get("properties_target"),
        )
        for a in document.get("resource_type_associations") or []
    )
    return NamespaceContent(namespace=namespace, associations=associations, definitions=definitions)


def check_object_name(item: Mapping[str, Any]) -> str:
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("Every object, tag and resource type association needs a name")
    return name
