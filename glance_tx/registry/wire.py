"""
The Registry API's wire format, shared by the server and the client.

One module turns registry values (L{Image}, L{ImageUpdate}, L{ImageQuery},
L{Member}) and typed errors into JSON-able values and back, so the two ends
cannot drift apart (as Tahoe-LAFS keeps its storage protocol in
C{http_common.py}). Decoding is exact: C{decode_x(encode_x(v)) == v}, with
datetimes kept to the microsecond and in their offset, ints apart from
bools, and sets apart from single values.

Errors travel by class name, not by status code: C{StoreError} and
C{ServiceUnavailable} are both 503, and the client must re-raise the one
the registry raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote

import attrs

from glance_tx import errors
from glance_tx.errors import BadRequest, GlanceError, ServiceUnavailable
from glance_tx.images import (
    Comparison,
    Image,
    ImageQuery,
    ImageUpdate,
    Location,
    Member,
    ProjectUsage,
    Viewer,
)
from glance_tx.metadefs.model import (
    DEFAULT_LIMIT,
    Association,
    Definition,
    Namespace,
    NamespaceContent,
    NamespaceQuery,
    ResourceType,
)
from glance_tx.registry.interface import HeldClaim
from glance_tx.tasks import Task, TaskChange, TaskQuery

_R = TypeVar("_R")

#: The header an API node sends the registry's shared secret in.
TOKEN_HEADER = b"Authorization"
TOKEN_SCHEME = b"Bearer "

#: Image fields a brief listing (C{GET /images}) carries, as Glance's
#: registry did.
BRIEF_FIELDS = (
    "id",
    "name",
    "status",
    "size",
    "checksum",
    "disk_format",
    "container_format",
)

_DATETIME_FIELDS = ("created_at", "updated_at", "deleted_at")


# -- values ------------------------------------------------------------------------


def encode_datetime(value: datetime | None) -> str | None:
    """ISO 8601 to the microsecond, with the value's own offset (if any)."""
    if value is None:
        return None
    # isoformat() keeps the microseconds whenever there are any, and is a
    # third faster than with timespec (three per image on every listing).
    return value.isoformat()


def decode_datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"Expected an ISO 8601 time, not {value!r}")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"Invalid ISO 8601 time {value!r}") from None


def encode_value(value: Any) -> Any:
    """
    A filter, comparison or update value: JSON scalars as they are, and
    tagged objects for what JSON lacks (a time, a set, a sequence).
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return {"datetime": encode_datetime(value)}
    if isinstance(value, frozenset | set):
        return {"any": sorted((encode_value(v) for v in value), key=repr)}
    if isinstance(value, tuple | list):
        return {"sequence": [encode_value(v) for v in value]}
    if isinstance(value, Location):
        return {"location": encode_location(value)}
    raise TypeError(f"Cannot put {type(value).__name__} on the registry wire")


def decode_value(value: Any) -> Any:
    if isinstance(value, list):
        raise BadRequest("A list value must be tagged as 'any' or 'sequence'")
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise BadRequest(f"Invalid tagged value {value!r}")
    ((tag, inner),) = value.items()
    if tag == "datetime":
        return decode_datetime(inner)
    if tag in ("any", "sequence") and isinstance(inner, list):
        items = [decode_value(v) for v in inner]
        return frozenset(items) if tag == "any" else tuple(items)
    if tag == "location":
        return decode_location(inner)
    raise BadRequest(f"Invalid tagged value {value!r}")


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{what} must be a list of strings")
    return value


# -- images ------------------------------------------------------------------------


def encode_location(location: Location) -> dict[str, Any]:
    return {"url": location.url, "store": location.store, "metadata": dict(location.metadata)}


def decode_location(value: Any) -> Location:
    """A location object; a bare URL string (no store) is taken too."""
    if isinstance(value, str):
        return Location(value)
    fields = _mapping(value, "location")
    url, store = fields.get("url"), fields.get("store")
    if not isinstance(url, str) or not (store is None or isinstance(store, str)):
        raise BadRequest("A location needs a string url and a string or null store")
    return Location(url, store, _mapping(fields.get("metadata", {}), "location metadata"))


def encode_image(image: Image) -> dict[str, Any]:
    return {
        "id": image.id,
        "status": image.status,
        "created_at": encode_datetime(image.created_at),
        "updated_at": encode_datetime(image.updated_at),
        "name": image.name,
        "size": image.size,
        "virtual_size": image.virtual_size,
        "checksum": image.checksum,
        "os_hash_algo": image.os_hash_algo,
        "os_hash_value": image.os_hash_value,
        "disk_format": image.disk_format,
        "container_format": image.container_format,
        "visibility": image.visibility,
        "owner": image.owner,
        "min_ram": image.min_ram,
        "min_disk": image.min_disk,
        "protected": image.protected,
        "os_hidden": image.os_hidden,
        "locations": [encode_location(location) for location in image.locations],
        "properties": dict(image.properties),
        "tags": sorted(image.tags),
        "deleted_at": encode_datetime(image.deleted_at),
        "deleted": image.deleted,
        "version": image.version,
    }


def decode_image(value: Any) -> Image:
    fields = dict(_mapping(value, "image"))
    for name in _DATETIME_FIELDS:
        if name in fields:
            fields[name] = decode_datetime(fields[name])
    if "tags" in fields:
        fields["tags"] = _strings(fields["tags"], "tags")
    if "locations" in fields:
        if not isinstance(fields["locations"], list):
            raise BadRequest("locations must be a list")
        fields["locations"] = [decode_location(v) for v in fields["locations"]]
    if "properties" in fields:
        fields["properties"] = _mapping(fields["properties"], "properties")
    try:
        return Image(**fields)
    except TypeError as e:
        raise BadRequest(f"Invalid image record: {e}") from None


def encode_brief_image(image: Image) -> dict[str, Any]:
    """The few fields of a C{GET /images} listing."""
    full = encode_image(image)
    return {name: full[name] for name in BRIEF_FIELDS}


def encode_update(update: ImageUpdate) -> dict[str, Any]:
    return {
        "fields": {k: encode_value(v) for k, v in update.fields.items()},
        "properties": dict(update.properties),
        "purge_properties": update.purge_properties,
        "tags": None if update.tags is None else sorted(update.tags),
    }


def decode_update(value: Any) -> ImageUpdate:
    body = _mapping(value, "update")
    fields = _mapping(body.get("fields", {}), "fields")
    tags = body.get("tags")
    return ImageUpdate(
        fields={k: decode_value(v) for k, v in fields.items()},
        properties=_mapping(body.get("properties", {}), "properties"),
        purge_properties=bool(body.get("purge_properties", False)),
        tags=None if tags is None else frozenset(_strings(tags, "tags")),
    )


def encode_statuses(statuses: frozenset[str] | None) -> list[str] | None:
    return None if statuses is None else sorted(statuses)


def decode_statuses(value: Any) -> frozenset[str] | None:
    return None if value is None else frozenset(_strings(value, "expected_status"))


def decode_version(value: Any) -> int | None:
    """An C{expected_version}: a JSON integer, or digits in a query string."""
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest("expected_version must be an integer")
    return value


def decode_write_id(value: Any) -> str | None:
    """A C{write_id}: a string, or absent (the registry checks its length)."""
    if value is None or isinstance(value, str):
        return value
    raise BadRequest("write_id must be a string")


def decode_seconds(value: str | None, what: str) -> float:
    """A finite number of seconds, 0 or more, from a query string."""
    try:
        seconds = float(value if value is not None else "")
    except ValueError:
        raise BadRequest(f"{what} must be a number of seconds") from None
    if not 0 <= seconds < float("inf"):
        raise BadRequest(f"{what} must be a finite number of seconds, 0 or more")
    return seconds


# -- upload leases -----------------------------------------------------------------


def encode_leases(uploads: Mapping[str, str], seconds: float) -> dict[str, Any]:
    """The body of a lease renewal: image id -> failure status, and for how long."""
    return {"uploads": dict(uploads), "seconds": seconds}


def decode_leases(value: Any) -> tuple[dict[str, str], float]:
    body = _mapping(value, "A lease renewal")
    uploads = _mapping(body.get("uploads"), "uploads")
    if not all(isinstance(v, str) for v in uploads.values()):
        raise BadRequest("uploads must map image ids to statuses")
    return dict(uploads), _seconds(body.get("seconds"))


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise BadRequest("seconds must be a number of seconds, 0 or more")
    return float(value)


# -- node claims -------------------------------------------------------------------


def encode_claim(instance: str, seconds: float, replacing: str | None) -> dict[str, Any]:
    """The body of a node claim: the claiming process, for how long, whom it replaces."""
    return {"instance": instance, "seconds": seconds, "replacing": replacing}


def decode_claim(value: Any) -> tuple[str, float, str | None]:
    body = _mapping(value, "A node claim")
    instance = body.get("instance")
    if not isinstance(instance, str):
        raise BadRequest("instance must be a string")
    replacing = body.get("replacing")
    if replacing is not None and not isinstance(replacing, str):
        raise BadRequest("replacing must be a string or null")
    return instance, _seconds(body.get("seconds")), replacing


def encode_claim_answer(held: HeldClaim | None) -> dict[str, Any]:
    """A claim's answer: null when claimed, else the claim that holds."""
    if held is None:
        return {"held": None}
    return {"held": {"instance": held.instance, "seconds_left": held.seconds_left}}


def decode_claim_answer(value: Any) -> HeldClaim | None:
    held = _mapping(value, "A node claim's answer").get("held")
    if held is None:
        return None
    body = _mapping(held, "held")
    instance = body.get("instance")
    if not isinstance(instance, str):
        raise BadRequest("held.instance must be a string")
    return HeldClaim(instance, _seconds(body.get("seconds_left")))


# -- queries -----------------------------------------------------------------------


def encode_query(query: ImageQuery) -> dict[str, Any]:
    viewer = query.viewer
    return {
        "filters": {k: encode_value(v) for k, v in query.filters.items()},
        "properties": dict(query.properties),
        "size_min": query.size_min,
        "size_max": query.size_max,
        "comparisons": [
            [c.field, c.op, encode_value(c.value)] for c in query.comparisons
        ],
        "tags": sorted(query.tags),
        "sort": [list(key) for key in query.sort],
        "marker": query.marker,
        "limit": query.limit,
        "exclude_statuses": sorted(query.exclude_statuses),
        "viewer": None
        if viewer is None
        else {"project_id": viewer.project_id, "is_admin": viewer.is_admin},
        "visibility": query.visibility,
        "member_statuses": sorted(query.member_statuses),
    }


def decode_query(value: Any) -> ImageQuery:
    body = dict(_mapping(value, "query"))
    try:
        if "filters" in body:
            filters = _mapping(body["filters"], "filters")
            body["filters"] = {k: decode_value(v) for k, v in filters.items()}
        if "properties" in body:
            body["properties"] = _mapping(body["properties"], "properties")
        if "comparisons" in body:
            body["comparisons"] = tuple(
                Comparison(name, op, decode_value(operand))
                for name, op, operand in body["comparisons"]
            )
        if "sort" in body:
            body["sort"] = tuple((key, direction) for key, direction in body["sort"])
        for name in ("tags", "exclude_statuses", "member_statuses"):
            if name in body:
                body[name] = frozenset(_strings(body[name], name))
        viewer = body.get("viewer")
        if viewer is not None:
            viewer = _mapping(viewer, "viewer")
            body["viewer"] = Viewer(
                project_id=viewer.get("project_id"),
                is_admin=bool(viewer.get("is_admin", False)),
            )
        return ImageQuery(**body)
    except (TypeError, ValueError) as e:
        raise BadRequest(f"Invalid image query: {e}") from None


# -- members -----------------------------------------------------------------------


def encode_member(member: Member) -> dict[str, Any]:
    return {
        "image_id": member.image_id,
        "member_id": member.member_id,
        "status": member.status,
        "created_at": encode_datetime(member.created_at),
        "updated_at": encode_datetime(member.updated_at),
    }


def decode_member(value: Any) -> Member:
    fields = dict(_mapping(value, "member"))
    for name in ("created_at", "updated_at"):
        if name in fields:
            fields[name] = decode_datetime(fields[name])
    try:
        return Member(**fields)
    except TypeError as e:
        raise BadRequest(f"Invalid member record: {e}") from None


def encode_usage(usage: ProjectUsage) -> dict[str, int]:
    return {
        "image_size_total": usage.image_size_total,
        "image_stage_total": usage.image_stage_total,
        "image_count_total": usage.image_count_total,
        "image_count_uploading": usage.image_count_uploading,
    }


def decode_usage(value: Any) -> ProjectUsage:
    fields = _mapping(value, "usage")
    counts = {}
    for name in encode_usage(ProjectUsage()):
        count = fields.get(name)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise BadRequest(f"Invalid usage record: {name} must be a count, not {count!r}")
        counts[name] = count
    return ProjectUsage(**counts)


# -- metadata definitions ----------------------------------------------------------

_TIMES = ("created_at", "updated_at")


def encode_record(record: Namespace | Definition | Association | ResourceType) -> dict[str, Any]:
    """A metadef record's fields, its times as L{encode_datetime}."""
    fields = {name: getattr(record, name) for name in attrs.fields_dict(type(record))}
    for name in _TIMES:
        fields[name] = encode_datetime(fields[name])
    if isinstance(record, Definition):
        fields["document"] = dict(record.document)
    return fields


def _decode_record(kind: type[_R], value: Any, what: str) -> _R:
    fields = dict(_mapping(value, what))
    for name in _TIMES:
        if name in fields:
            fields[name] = decode_datetime(fields[name])
    try:
        return kind(**fields)
    except TypeError as e:
        raise BadRequest(f"Invalid {what} record: {e}") from None


def decode_namespace(value: Any) -> Namespace:
    return _decode_record(Namespace, value, "namespace")


def decode_definition(value: Any) -> Definition:
    _mapping(_mapping(value, "definition").get("document", {}), "a definition's document")
    return _decode_record(Definition, value, "definition")


def decode_association(value: Any) -> Association:
    return _decode_record(Association, value, "association")


def decode_resource_type(value: Any) -> ResourceType:
    return _decode_record(ResourceType, value, "resource type")


def encode_content(content: NamespaceContent) -> dict[str, Any]:
    return {
        "namespace": encode_record(content.namespace),
        "associations": [encode_record(a) for a in content.associations],
        "definitions": [encode_record(d) for d in content.definitions],
    }


def _items(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadRequest(f"{what} must be a list")
    return value


def decode_content(value: Any) -> NamespaceContent:
    fields = _mapping(value, "namespace content")
    return NamespaceContent(
        namespace=decode_namespace(fields.get("namespace")),
        associations=tuple(
            decode_association(a) for a in _items(fields.get("associations", []), "associations")
        ),
        definitions=tuple(
            decode_definition(d) for d in _items(fields.get("definitions", []), "definitions")
        ),
    )


def encode_namespace_query(query: NamespaceQuery) -> dict[str, Any]:
    fields = {name: getattr(query, name) for name in attrs.fields_dict(NamespaceQuery)}
    if query.resource_types is not None:
        fields["resource_types"] = list(query.resource_types)
    return fields


def decode_namespace_query(value: Any) -> NamespaceQuery:
    fields = dict(_mapping(value, "namespace query"))
    if fields.get("resource_types") is not None:
        fields["resource_types"] = tuple(_strings(fields["resource_types"], "resource_types"))
    limit = fields.get("limit", DEFAULT_LIMIT)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise BadRequest(f"Invalid namespace query: limit {limit!r}")
    try:
        return NamespaceQuery(**fields)
    except TypeError as e:
        raise BadRequest(f"Invalid namespace query: {e}") from None


def decode_flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{what} must be true or false")
    return value
# -- tasks -------------------------------------------------------------------------

_TASK_TIMES = ("created_at", "updated_at", "expires_at")


def _json_object(value: Any, what: str) -> dict[str, Any] | None:
    return None if value is None else dict(_mapping(value, what))


def encode_task(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "type": task.type,
        "status": task.status,
        "owner": task.owner,
        "input": None if task.input is None else dict(task.input),
        "result": None if task.result is None else dict(task.result),
        "message": task.message,
        "expires_at": encode_datetime(task.expires_at),
        "created_at": encode_datetime(task.created_at),
        "updated_at": encode_datetime(task.updated_at),
        "image_id": task.image_id,
        "request_id": task.request_id,
        "user_id": task.user_id,
    }


def decode_task(value: Any) -> Task:
    fields = dict(_mapping(value, "task"))
    for name in _TASK_TIMES:
        if name in fields:
            fields[name] = decode_datetime(fields[name])
    for name in ("input", "result"):
        if name in fields:
            fields[name] = _json_object(fields[name], name)
    try:
        return Task(**fields)
    except TypeError as e:
        raise BadRequest(f"Invalid task record: {e}") from None


def encode_task_change(change: TaskChange) -> dict[str, Any]:
    return {
        "status": change.status,
        "result": None if change.result is None else dict(change.result),
        "message": change.message,
        "expires_in": change.expires_in,
    }


def decode_task_change(value: Any) -> TaskChange:
    body = _mapping(value, "A task change")
    status, message = body.get("status"), body.get("message")
    if not isinstance(status, str):
        raise BadRequest("A task change needs a string status")
    if message is not None and not isinstance(message, str):
        raise BadRequest("A task change's message must be a string or null")
    expires_in = body.get("expires_in")
    return TaskChange(
        status=status,
        result=_json_object(body.get("result"), "result"),
        message=message,
        expires_in=None if expires_in is None else _seconds(expires_in),
    )


def encode_task_query(query: TaskQuery) -> dict[str, Any]:
    return {
        "type": query.type,
        "status": query.status,
        "image_id": query.image_id,
        "owner": query.owner,
        "sort_key": query.sort_key,
        "sort_dir": query.sort_dir,
        "marker": query.marker,
        "limit": query.limit,
    }


def decode_task_query(value: Any) -> TaskQuery:
    body = dict(_mapping(value, "A task query"))
    for name, item in body.items():
        if name == "limit":
            if item is not None and (isinstance(item, bool) or not isinstance(item, int)):
                raise BadRequest("limit must be an integer")
        elif item is not None and not isinstance(item, str):
            raise BadRequest(f"{name} must be a string or null")
    try:
        return TaskQuery(**body)
    except TypeError as e:
        raise BadRequest(f"Invalid task query: {e}") from None


# -- paths -------------------------------------------------------------------------


def path_segment(value: Any, what: str) -> str:
    """
    C{value} quoted as one URL path segment. Only a non-empty string can be
    one, so anything else is refused here, as the registry would refuse it.
    """
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{what} must be a non-empty string, not {value!r}")
    return quote(value, safe="")


# -- errors ------------------------------------------------------------------------

#: Every typed error, by the class name it travels under.
ERROR_TYPES: Mapping[str, type[GlanceError]] = {
    name: value
    for name, value in vars(errors).items()
    if isinstance(value, type) and issubclass(value, GlanceError)
}


def encode_error(error: GlanceError) -> dict[str, Any]:
    """The API's error document, plus the error's class under C{type}."""
    return {
        "error": {
            "code": int(error.status),
            "title": error.title,
            "message": error.message,
            "type": type(error).__name__,
        }
    }


def decode_error(status: int, value: Any) -> GlanceError:
    """
    The error a registry response stands for. A body that names no known
    class (a proxy's page, a registry being restarted) is the registry being
    unavailable, whatever the status.
    """
    detail = value.get("error") if isinstance(value, dict) else None
    if not isinstance(detail, dict):
        detail = {}
    kind = ERROR_TYPES.get(str(detail.get("type")))
    if kind is None:
        return ServiceUnavailable(
            f"The registry answered {status} without a known error"
        )
    return kind(str(detail.get("message", "")))


# -- image forms in a read's body --------------------------------------------------

#: The header of an image read's answer (C{GET /images/ID}, C{GET
#: /images/detail}) that says where in the body each image's wire form is,
#: as "offset+length" pairs: a client that decoded an equal form before
#: takes its image again without parsing the body.
FORMS_HEADER = b"Glance-Registry-Forms"


def join_forms(head: bytes, forms: list[bytes], tail: bytes) -> tuple[bytes, bytes]:
    """
    The JSON body C{head + ",".join(forms) + tail}, and its L{FORMS_HEADER}
    value.
    """
    spans = []
    offset = len(head)
    for form in forms:
        spans.append(b"%d+%d" % (offset, len(form)))
        offset += len(form) + 1
    return head + b",".join(forms) + tail, b",".join(spans)


def split_forms(header: bytes | None, body: bytes) -> list[bytes] | None:
    """
    The image forms a L{FORMS_HEADER} value places in C{body}, or None if
    there is none or it does not fit the body (then parse the body whole).
    """
    if header is None:
        return None
    if not header:
        return []
    forms = []
    try:
        for span in header.split(b","):
            offset, length = (int(n) for n in span.split(b"+"))
            form = body[offset : offset + length]
            if offset < 0 or len(form) != length or form[:1] != b"{" or form[-1:] != b"}":
                return None
            forms.append(form)
    except ValueError:
        return None
    return forms
