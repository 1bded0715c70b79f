"""
Tasks: Glance's record of work done in the background for a caller.

Two types are made here, as in Glance 33: C{import} (the tasks API's
C{POST /v2/tasks}: make an image and import it from a URL) and
C{api_image_import} (every interoperable import, shown at C{GET
/v2/images/{id}/tasks}). A task goes C{pending -> processing -> success}
or C{failure} (C{pending -> failure} too), as Glance's
C{Task._validate_task_status_transition} allows; once it has ended it
expires C{task_time_to_live} hours later and is no longer listed or
found. Pure: no I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from attrs import field, frozen

from glance_tx.errors import BadRequest, Conflict

PENDING, PROCESSING, SUCCESS, FAILURE = "pending", "processing", "success", "failure"
STATUSES = (PENDING, PROCESSING, SUCCESS, FAILURE)
#: The statuses a task ends in (and starts to expire from).
ENDED = frozenset({SUCCESS, FAILURE})
TRANSITIONS: Mapping[str, frozenset[str]] = {
    PENDING: frozenset({PROCESSING, FAILURE}),
    PROCESSING: frozenset({SUCCESS, FAILURE}),
    SUCCESS: frozenset(),
    FAILURE: frozenset(),
}

#: The tasks API's type, and an interoperable import's.
IMPORT, API_IMAGE_IMPORT = "import", "api_image_import"
#: Every type Glance 33's task schema names (C{location_import} is not
#: made here: locations are added synchronously).
TYPES = (IMPORT, API_IMAGE_IMPORT, "location_import")

#: Glance's C{[task] task_time_to_live} default, in hours.
DEFAULT_TIME_TO_LIVE_HOURS = 48

#: What the registry's columns hold.
MAX_MESSAGE = 65535


def _frozen_json(value: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return None if value is None else MappingProxyType(dict(value))


@frozen
class Task:
    """One task, as the registry stores it."""

    id: str
    type: str
    status: str
    created_at: datetime
    updated_at: datetime
    owner: str | None = None
    #: What the task was asked to do (a JSON object).
    input: Mapping[str, Any] | None = field(default=None, converter=_frozen_json)
    #: What it made, once it has succeeded (a JSON object).
    result: Mapping[str, Any] | None = field(default=None, converter=_frozen_json)
    #: Why it failed (Glance: the empty string otherwise).
    message: str = ""
    #: When it stops being shown: C{task_time_to_live} after it ended.
    expires_at: datetime | None = None
    image_id: str | None = None
    request_id: str | None = None
    user_id: str | None = None


@frozen
class TaskChange:
    """A move of a task to C{status}, with what it made or why it failed."""

    status: str
    result: Mapping[str, Any] | None = field(default=None, converter=_frozen_json)
    message: str | None = None
    #: Seconds from the change, by the registry's clock, until the task
    #: expires (None: as it was). The node sets C{task_time_to_live} when
    #: the task ends.
    expires_in: float | None = None


@frozen
class TaskQuery:
    """
    A listing of tasks, as Glance's C{task_get_all}: equality filters,
    one sort key (the creation time and then the id break ties), and a
    page after C{marker}. C{owner} None lists every project's tasks (an
    admin, or internal use). Expired tasks are never listed.
    """

    type: str | None = None
    status: str | None = None
    image_id: str | None = None
    owner: str | None = None
    sort_key: str = "created_at"
    sort_dir: str = "desc"
    marker: str | None = None
    limit: int | None = None


#: The keys a listing may sort by (Glance: any column; these are the ones
#: its task view shows that a task always has, so keyset pages need no
#: rule for a missing value).
SORT_KEYS = ("created_at", "updated_at", "id", "type", "status")


def new_task_id() -> str:
    return str(uuid.uuid4())


def check_query(query: TaskQuery) -> None:
    """Refuse a listing the way Glance's task deserializer does (400)."""
    if query.status is not None and query.status not in STATUSES:
        raise BadRequest(f"Invalid status value: {query.status}")
    if query.type is not None and query.type not in TYPES:
        raise BadRequest(f"Invalid type value: {query.type}")
    if query.sort_dir not in ("asc", "desc"):
        raise BadRequest(f"Invalid sort direction: {query.sort_dir}")
    if query.sort_key not in SORT_KEYS:
        raise BadRequest(f"Invalid sort key: {query.sort_key}")
    if query.limit is not None and (isinstance(query.limit, bool) or query.limit < 0):
        raise BadRequest("limit param must be positive")


def check_task(task: Task) -> None:
    """Refuse a record the registry could not hold faithfully (400)."""
    if task.type not in TYPES:
        raise BadRequest(f"Invalid task type {task.type!r}")
    if task.status not in STATUSES:
        raise BadRequest(f"Invalid task status {task.status!r}")
    for name in ("owner", "image_id", "request_id", "user_id"):
        value = getattr(task, name)
        if value is not None and (not isinstance(value, str) or len(value) > 255):
            raise BadRequest(f"Task {name} must be a string of at most 255 characters")
    if not isinstance(task.message, str) or len(task.message) > MAX_MESSAGE:
        raise BadRequest(f"A task message must be a string of at most {MAX_MESSAGE} characters")


def changed(task: Task, change: TaskChange, now: datetime) -> Task:
    """C{task} after C{change} at C{now}; a move Glance does not allow is a 409."""
    if change.status not in STATUSES:
        raise BadRequest(f"Invalid task status {change.status!r}")
    if change.status not in TRANSITIONS[task.status]:
        raise Conflict(f"Task {task.id} cannot go from {task.status} to {change.status}")
    message = task.message if change.message is None else change.message
    return Task(
        id=task.id,
        type=task.type,
        status=change.status,
        created_at=task.created_at,
        updated_at=max(now, task.updated_at),
        owner=task.owner,
        input=task.input,
        result=change.result if change.result is not None else task.result,
        message=message[:MAX_MESSAGE],
        expires_at=(
            task.expires_at if change.expires_in is None else now + timedelta(seconds=change.expires_in)
        ),
        image_id=task.image_id,
        request_id=task.request_id,
        user_id=task.user_id,
    )
