"""
Tasks as background work goes: made when the work is accepted, moved on
as it runs, ended with what it made or why it failed (L{glance_tx.tasks}).

A task is a record for the caller, not the work's state: the work goes on
whether or not its task could be written, so a move the registry refuses
(the registry down, the task ended by a reclaim meanwhile) is logged and
the work carries on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from attrs import define
from twisted.logger import Logger

from glance_tx.errors import GlanceError
from glance_tx.registry.interface import IRegistry
from glance_tx.tasks import (
    DEFAULT_TIME_TO_LIVE_HOURS,
    ENDED,
    FAILURE,
    PENDING,
    SUCCESS,
    Task,
    TaskChange,
    new_task_id,
)

log = Logger()


@define
class TaskLog:
    """Writes tasks to the registry; an ended task expires after C{time_to_live}."""

    registry: IRegistry
    #: Glance's C{task_time_to_live}, in hours.
    time_to_live_hours: float = DEFAULT_TIME_TO_LIVE_HOURS
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    async def new(
        self,
        type: str,
        *,
        owner: str | None,
        input: Mapping[str, Any],
        image_id: str | None = None,
        user_id: str | None = None,
        request_id: str | None = None,
    ) -> Task:
        """A new pending task (fails as the registry's create does)."""
        now = self.clock()
        return await self.registry.create_task(
            Task(
                id=new_task_id(),
                type=type,
                status=PENDING,
                created_at=now,
                updated_at=now,
                owner=owner,
                input=input,
                image_id=image_id,
                user_id=user_id,
                request_id=request_id,
            )
        )

    async def move(
        self,
        task_id: str,
        status: str,
        *,
        result: Mapping[str, Any] | None = None,
        message: str | None = None,
    ) -> Task | None:
        """Move the task on; None (logged) when the registry refuses."""
        change = TaskChange(
            status,
            result=result,
            message=message,
            expires_in=self.time_to_live_hours * 3600 if status in ENDED else None,
        )
        try:
            return await self.registry.update_task(task_id, change)
        except GlanceError as e:
            log.info("Task {task_id} not moved to {status}: {e}", task_id=task_id, status=status, e=e.message)
            return None

    async def succeed(self, task_id: str, result: Mapping[str, Any]) -> Task | None:
        return await self.move(task_id, SUCCESS, result=result)

    async def fail(self, task_id: str, message: str) -> Task | None:
        return await self.move(task_id, FAILURE, message=message)
