"""
Tasks in SQL (L{glance_tx.tasks}): rows to records and back, and the
listing, each run inside a transaction the provider opens.

A listing is Glance's C{task_get_all}: equality filters, the sort key then
C{created_at} then C{id}, all in the one direction, and a keyset page after
the marker (a task the caller may see, else 400). The sort keys are the
columns that are never NULL, so the keyset condition needs no NULL rules.
An expired task (C{expires_at} passed) is neither listed nor found, as
Glance hides them before it deletes them.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    RowMapping,
    and_,
    delete,
    insert,
    or_,
    select,
)
from sqlalchemy import update as sql_update

from glance_tx.errors import BadRequest, NotFound
from glance_tx.images import MAX_LIMIT
from glance_tx.registry.schema import tasks
from glance_tx.tasks import Task, TaskQuery, check_query


def _dump(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(dict(value), sort_keys=True)


def _load(value: str | None) -> dict[str, Any] | None:
    return None if value is None else json.loads(value)


def task_row(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "type": task.type,
        "status": task.status,
        "owner": task.owner,
        "input": _dump(task.input),
        "result": _dump(task.result),
        "message": task.message,
        "expires_at": task.expires_at,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "image_id": task.image_id,
        "request_id": task.request_id,
        "user_id": task.user_id,
    }


def task_from_row(row: RowMapping) -> Task:
    return Task(
        id=row["id"],
        type=row["type"],
        status=row["status"],
        owner=row["owner"],
        input=_load(row["input"]),
        result=_load(row["result"]),
        message=row["message"],
        expires_at=row["expires_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        image_id=row["image_id"],
        request_id=row["request_id"],
        user_id=row["user_id"],
    )


def check_json(task: Task) -> None:
    """Input and result must be JSON objects the text columns can hold."""
    for name in ("input", "result"):
        value = getattr(task, name)
        if value is None:
            continue
        try:
            json.dumps(dict(value))
        except (TypeError, ValueError):
            raise BadRequest(f"A task's {name} must be a JSON object") from None


def _live(now: datetime) -> ColumnElement[bool]:
    return or_(tasks.c.expires_at.is_(None), tasks.c.expires_at > now)


def delete_expired(now: datetime) -> Any:
    """The DELETE of every task expired at C{now}."""
    return delete(tasks).where(tasks.c.expires_at.is_not(None), tasks.c.expires_at <= now)


def insert_task(connection: Connection, task: Task) -> None:
    connection.execute(insert(tasks), task_row(task))


def fetch_task(
    connection: Connection, task_id: str, now: datetime, for_update: bool = False
) -> Task:
    statement = select(tasks).where(tasks.c.id == task_id, _live(now))
    if for_update:
        statement = statement.with_for_update()
    row = connection.execute(statement).mappings().first()
    if row is None:
        raise NotFound(f"Task with the given ID {task_id} not found")
    return task_from_row(row)


def write_task(connection: Connection, task: Task) -> None:
    row = task_row(task)
    del row["id"]
    connection.execute(sql_update(tasks).where(tasks.c.id == task.id).values(**row))


def list_tasks(connection: Connection, query: TaskQuery, now: datetime) -> builtins.list[Task]:
    check_query(query)
    conditions: builtins.list[ColumnElement[bool]] = [_live(now)]
    for name in ("type", "status", "image_id", "owner"):
        value = getattr(query, name)
        if value is not None:
            conditions.append(tasks.c[name] == value)
    names = list(dict.fromkeys((query.sort_key, "created_at", "id")))
    columns = [tasks.c[name] for name in names]
    descending = query.sort_dir == "desc"
    if query.marker is not None:
        owner = [tasks.c.owner == query.owner] if query.owner is not None else []
        marker = connection.execute(
            select(*columns).where(tasks.c.id == query.marker, _live(now), *owner)
        ).first()
        if marker is None:
            raise BadRequest(f"Invalid marker: task {query.marker} not found")
        conditions.append(_after(columns, tuple(marker), descending))
    statement = (
        select(tasks)
        .where(*conditions)
        .order_by(*(c.desc() if descending else c.asc() for c in columns))
        .limit(MAX_LIMIT if query.limit is None else min(query.limit, MAX_LIMIT))
    )
    return [task_from_row(row) for row in connection.execute(statement).mappings()]


def _after(columns: builtins.list[Any], values: tuple[Any, ...], descending: bool) -> Any:
    """Rows strictly after C{values} in the order of C{columns}."""
    terms = []
    for index, column in enumerate(columns):
        beyond = column < values[index] if descending else column > values[index]
        equal = [columns[i] == values[i] for i in range(index)]
        terms.append(and_(*equal, beyond))
    return or_(*terms)
