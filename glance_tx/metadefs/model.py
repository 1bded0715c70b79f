"""
The metadata definition records, as Glance has them: pure values, no I/O.

A namespace holds three kinds of definitions, each a name and a JSON
document: I{properties} (the document is the property's JSON schema),
I{objects} (a description, the required properties and the properties'
schemas) and I{tags} (nothing but the name). They share one record,
L{Definition}, since they are stored, renamed and listed alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from attrs import field, frozen

from glance_tx.errors import BadRequest

PUBLIC = "public"
PRIVATE = "private"
VISIBILITIES = (PUBLIC, PRIVATE)

OBJECT = "object"
PROPERTY = "property"
TAG = "tag"
KINDS = (OBJECT, PROPERTY, TAG)

#: Glance's column widths (metadef_* tables).
MAX_NAME = 80
MAX_OWNER = 255
MAX_DESCRIPTION = 500

#: Glance's C{limit_param_default}: a namespace page without C{limit}.
DEFAULT_LIMIT = 25

#: What a namespace listing may be sorted by (Glance's C{sort_key}).
SORT_KEYS = ("created_at", "updated_at", "namespace", "display_name", "visibility", "owner")


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return dict(value)


@frozen
class Namespace:
    """A namespace: what its definitions are grouped, owned and shown by."""

    namespace: str
    display_name: str | None = None
    description: str | None = None
    visibility: str = PRIVATE
    protected: bool = False
    owner: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@frozen
class Definition:
    """An object, property or tag of a namespace (C{kind}, one of L{KINDS})."""

    kind: str
    name: str
    document: Mapping[str, Any] = field(factory=dict, converter=_frozen_mapping)
    created_at: datetime | None = None
    updated_at: datetime | None = None


@frozen
class ResourceType:
    """A kind of resource definitions apply to (C{OS::Glance::Image})."""

    name: str
    protected: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None


@frozen
class Association:
    """
    A namespace applies to a resource type: its properties are named with
    C{prefix} there (C{hw_} on images, C{hw:} on flavors), and
    C{properties_target} says which of the resource's property sets they
    go to (a volume's C{image} metadata).
    """

    name: str
    prefix: str | None = None
    properties_target: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@frozen
class NamespaceContent:
    """A namespace with what it holds: a create, or a definition file."""

    namespace: Namespace
    associations: tuple[Association, ...] = ()
    definitions: tuple[Definition, ...] = ()


@frozen
class NamespaceQuery:
    """One page of a namespace listing, and who it is for."""

    #: The caller's project; None with C{is_admin} sees every namespace.
    project_id: str | None
    is_admin: bool = False
    limit: int = DEFAULT_LIMIT
    #: The namespace after which the page starts.
    marker: str | None = None
    sort_key: str = "created_at"
    sort_dir: str = "desc"
    visibility: str | None = None
    #: Only namespaces associated with one of these resource types.
    resource_types: tuple[str, ...] | None = None


def check_name(name: Any, what: str) -> str:
    """A name the tables hold (1 to L{MAX_NAME} characters), else 400."""
    if not isinstance(name, str) or not name.strip():
        raise BadRequest(f"{what} must be a non-empty string")
    if len(name) > MAX_NAME:
        raise BadRequest(f"{what} is longer than {MAX_NAME} characters")
    return name


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise BadRequest(f"{kind!r} is not one of {', '.join(KINDS)}")
    return kind


def visible(namespace: Namespace, project_id: str | None, is_admin: bool) -> bool:
    """
    Who sees a namespace, as Glance's database layer decides: an admin
    every one; others the public ones, those without owner, and their
    project's.
    """
    return (
        is_admin
        or namespace.owner is None
        or namespace.visibility == PUBLIC
        or (project_id is not None and namespace.owner == project_id)
    )
