"""
The wire side of Glance's tasks (L{glance_tx.tasks}): the documents of
C{/v2/tasks} and C{/v2/images/{id}/tasks}, their schemas, and the reading
of a create's body and a listing's parameters, refused as Glance 33's
C{glance/api/v2/tasks.py} refuses them.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from attrs import frozen

from glance_tx.api.params import parse_int
from glance_tx.errors import BadRequest
from glance_tx.images import MAX_LIMIT, validate_image_id
from glance_tx.net_guard import SCHEMES
from glance_tx.tasks import IMPORT, STATUSES, TYPES, Task, TaskQuery

#: Glance's C{limit_param_default}.
DEFAULT_LIMIT = 25


def _isotime(value: datetime) -> str:
    """Glance's C{timeutils.isotime}: UTC, a Z, no fraction."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _primitive_time(value: datetime | None) -> str | None:
    """How Glance's JSON serializer writes a bare datetime (oslo's to_primitive)."""
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def _json(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else copy.deepcopy(dict(value))


def task_view(task: Task) -> dict[str, Any]:
    """C{GET /v2/tasks/{id}}: Glance's C{_format_task}."""
    view: dict[str, Any] = {
        "id": task.id,
        "input": _json(task.input),
        "type": task.type,
        "status": task.status,
        "owner": task.owner,
        "message": task.message,
        "result": _json(task.result),
        "created_at": _isotime(task.created_at),
        "updated_at": _isotime(task.updated_at),
        "self": f"/v2/tasks/{task.id}",
        "schema": "/v2/schemas/task",
    }
    for name in ("image_id", "request_id", "user_id"):
        if getattr(task, name):
            view[name] = getattr(task, name)
    if task.expires_at is not None:
        view["expires_at"] = _isotime(task.expires_at)
    return view


def task_stub_view(task: Task) -> dict[str, Any]:
    """A listing's entry: Glance's C{_format_task_stub} (no input, result, message)."""
    view = task_view(task)
    for name in ("input", "result", "message", "image_id", "request_id", "user_id"):
        view.pop(name, None)
    return view


def image_task_view(task: Task) -> dict[str, Any]:
    """
    An entry of C{GET /v2/images/{id}/tasks}: Glance serializes its
    database's C{_task_format} as it is, times in oslo's primitive form.
    """
    return {
        "id": task.id,
        "type": task.type,
        "status": task.status,
        "owner": task.owner,
        "expires_at": _primitive_time(task.expires_at),
        "created_at": _primitive_time(task.created_at),
        "updated_at": _primitive_time(task.updated_at),
        "deleted_at": None,
        "deleted": False,
        "image_id": task.image_id,
        "request_id": task.request_id,
        "user_id": task.user_id,
        "input": _json(task.input),
        "result": _json(task.result),
        "message": task.message,
    }


# -- schemas -------------------------------------------------------------------

_UUID_PATTERN = (
    "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"
)


def _task_properties() -> dict[str, Any]:
    """Glance 33's C{_TASK_SCHEMA}."""
    return {
        "id": {"description": "An identifier for the task", "pattern": _UUID_PATTERN, "type": "string"},
        "type": {
            "description": "The type of task represented by this content",
            "enum": list(TYPES),
            "type": "string",
        },
        "status": {
            "description": "The current status of this task",
            "enum": list(STATUSES),
            "type": "string",
        },
        "input": {"description": "The parameters required by task, JSON blob", "type": ["null", "object"]},
        "result": {"description": "The result of current task, JSON blob", "type": ["null", "object"]},
        "owner": {"description": "An identifier for the owner of this task", "type": "string"},
        "message": {
            "description": "Human-readable informative message only included when appropriate "
            "(usually on failure)",
            "type": "string",
        },
        "image_id": {"description": "Image associated with the task", "type": "string"},
        "request_id": {"description": "Human-readable informative request-id", "type": "string"},
        "user_id": {"description": "User associated with the task", "type": "string"},
        "expires_at": {
            "description": "Datetime when this resource would be subject to removal",
            "type": ["null", "string"],
        },
        "created_at": {"description": "Datetime when this resource was created", "type": "string"},
        "updated_at": {"description": "Datetime when this resource was updated", "type": "string"},
        "self": {"readOnly": True, "type": "string"},
        "schema": {"readOnly": True, "type": "string"},
    }


def task_schema() -> dict[str, Any]:
    """C{/v2/schemas/task}."""
    return {"name": "task", "properties": _task_properties(), "additionalProperties": False}


def partial_task_schema() -> dict[str, Any]:
    """A task as C{/v2/schemas/tasks} lists it: without its input, result and message."""
    partial = _task_properties()
    for name in ("input", "result", "message"):
        del partial[name]
    return {"name": "task", "properties": partial, "additionalProperties": False}


# -- requests ------------------------------------------------------------------


@frozen
class ImportTaskRequest:
    """A checked C{POST /v2/tasks} of type import."""

    input: Mapping[str, Any]
    #: Where the data is read from (C{import_from}).
    uri: str


def _is_http_url(uri: str) -> bool:
    try:
        parts = urlsplit(uri)
        return parts.scheme in SCHEMES and bool(parts.hostname)
    except ValueError:
        return False


def parse_task(body: dict[str, Any]) -> ImportTaskRequest:
    """
    Glance's C{RequestDeserializer.create} (type and input required, the
    schema's types) and its check of C{import_from} at create: an http or
    https URL with a host. Only the import type can be made here.
    """
    for name in ("type", "input"):
        if name not in body:
            raise BadRequest(f"Task '{name}' is required")
    extra = sorted(set(body) - {"type", "input"})
    if extra:
        raise BadRequest(f"Additional properties are not allowed ({', '.join(map(repr, extra))} were unexpected)")
    task_type, task_input = body["type"], body["input"]
    if task_type not in TYPES:
        raise BadRequest(f"Provided object does not match schema 'task': {task_type!r} is not one of {list(TYPES)}")
    if task_type != IMPORT:
        raise BadRequest(f"Task type {task_type!r} cannot be created through the tasks API")
    if not isinstance(task_input, dict):
        raise BadRequest("Provided object does not match schema 'task': input is not of type 'object'")
    uri = task_input.get("import_from")
    if not (isinstance(uri, str) and _is_http_url(uri)):
        raise BadRequest(f"URI for legacy import task does not pass filtering: {uri}")
    return ImportTaskRequest(input=task_input, uri=uri)


def parse_task_query(args: Mapping[bytes, list[bytes]], owner: str | None) -> TaskQuery:
    """
    A listing's parameters (Glance's C{RequestDeserializer.index}):
    C{limit}, C{marker} (a UUID), C{sort_key}, C{sort_dir} and the filters
    C{type} and C{status}; C{owner} None for an admin (every project's).
    """

    def arg(name: str) -> str | None:
        values = args.get(name.encode("ascii"))
        return values[-1].decode("utf-8", "replace") if values else None

    marker = arg("marker")
    if marker is not None:
        try:
            validate_image_id(marker)
        except BadRequest:
            raise BadRequest("Invalid marker format") from None
    limit = arg("limit")
    sort_dir = arg("sort_dir") or "desc"
    if sort_dir not in ("asc", "desc"):
        raise BadRequest(f"Invalid sort direction: {sort_dir}")
    status, task_type = arg("status"), arg("type")
    if status and status not in STATUSES:
        raise BadRequest(f"Invalid status value: {status}")
    if task_type and task_type not in TYPES:
        raise BadRequest(f"Invalid type value: {task_type}")
    query = TaskQuery(
        type=task_type or None,
        status=status or None,
        owner=owner,
        sort_key=arg("sort_key") or "created_at",
        sort_dir=sort_dir,
        marker=marker,
        limit=min(parse_int("limit", limit), MAX_LIMIT) if limit is not None else DEFAULT_LIMIT,
    )
    return query
