"""
Per-project limits (Glance's unified-limit names), checked against what
the registry counts for a project (L{IRegistry.project_usage}).

Checked where Glance checks them: C{image_count_total} before an image is
created; C{image_count_uploading} and C{image_size_total} before an
upload starts (C{image_stage_total} instead before a stage, C{PUT
/v2/images/{id}/stage}); and, which Glance leaves to the store, the size
limit during the upload too: the upload may write only what is left of
the project's allowance, and a body that goes past it is a 413 mid-stream
whose data is removed (as for C{image_size_cap}).

Where the numbers come from is an L{ILimitSource}: the same
C{[project_limits]} for every project (L{FixedLimits}), or each
project's from Keystone's unified limits (C{use_keystone_limits},
L{glance_tx.keystone_limits.KeystoneLimits}); the checks are the same.

Two uploads of one project that start together may both fit the
allowance left before either began, and together pass it; Glance's check
has the same window.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import attrs
from attrs import frozen
from zope.interface import Interface, implementer

from glance_tx.config import ProjectLimits
from glance_tx.errors import RequestEntityTooLarge
from glance_tx.images import ProjectUsage
from glance_tx.registry.interface import IRegistry

MiB = 1024 * 1024

#: The limits counted in MiB (the others count images).
SIZES = frozenset({"image_size_total", "image_stage_total"})


def _usage_in_units(usage: ProjectUsage, name: str) -> int:
    """A count in the limit's unit: MiB, rounded down, as Glance counts."""
    value: int = getattr(usage, name)
    return value // MiB if name in SIZES else value


class ProjectLimitExceeded(RequestEntityTooLarge):
    """A 413 in the words oslo.limit (and so Glance) uses."""

    def __init__(self, project_id: str, name: str, limit: int, usage: int, delta: int) -> None:
        super().__init__(
            f"Project {project_id} is over a limit for [Resource {name} is over "
            f"limit of {limit} due to current usage {usage} and delta {delta}]"
        )


class ILimitSource(Interface):
    """Where a project's limits come from."""

    def limits_for(project_id: str | None) -> Awaitable[ProjectLimits]:
        """
        C{project_id}'s limits (C{None}: a request with no project, which
        gets the defaults).

        @raise glance_tx.errors.ServiceUnavailable: the limits cannot be
            read now (the caller may try again).
        """


@implementer(ILimitSource)
@frozen
class FixedLimits:
    """The same limits for every project: C{[project_limits]}."""

    limits: ProjectLimits

    async def limits_for(self, project_id: str | None) -> ProjectLimits:
        return self.limits


@frozen
class UploadAllowance:
    """The bytes an upload may still write, and the limit (MiB) that says so."""

    remaining: int
    limit: int
    name: str = "image_size_total"


@frozen
class ProjectLimiter:
    """The one place uploads and creations ask whether a project has room."""

    registry: IRegistry
    source: ILimitSource

    def _check(
        self, limits: ProjectLimits, project_id: str, usage: ProjectUsage, name: str, delta: int
    ) -> None:
        limit: int = getattr(limits, name)
        used = _usage_in_units(usage, name)
        if limit >= 0 and used + delta > limit:
            raise ProjectLimitExceeded(project_id, name, limit, used, delta)

    async def check_new_image(self, project_id: str | None) -> None:
        """Before a create: one more image must fit C{image_count_total}."""
        if project_id is None:
            return
        limits = await self.source.limits_for(project_id)
        if limits.image_count_total < 0:
            return
        usage = await self.registry.project_usage(project_id)
        self._check(limits, project_id, usage, "image_count_total", 1)

    async def upload_allowance(
        self, project_id: str | None, size_limit: str = "image_size_total"
    ) -> UploadAllowance | None:
        """
        Before an upload: one more upload must fit C{image_count_uploading},
        and the project must not be over C{size_limit} already
        (C{image_size_total}, or C{image_stage_total} for a stage).
        Returns what the upload may write (None: no size limit).
        """
        if size_limit not in SIZES:
            raise ValueError(f"{size_limit} is not a size limit")
        if project_id is None:
            return None
        limits = await self.source.limits_for(project_id)
        limit: int = getattr(limits, size_limit)
        if limits.image_count_uploading < 0 and limit < 0:
            return None
        usage = await self.registry.project_usage(project_id)
        self._check(limits, project_id, usage, "image_count_uploading", 1)
        self._check(limits, project_id, usage, size_limit, 0)
        if limit < 0:
            return None
        used: int = getattr(usage, size_limit)
        return UploadAllowance(max(0, limit * MiB - used), limit, size_limit)

    async def usage_document(self, project_id: str | None) -> dict[str, Any]:
        """C{GET /v2/info/usage}: each limit and the project's usage, Glance's shape."""
        limits = await self.source.limits_for(project_id)
        usage = ProjectUsage()
        if project_id is not None:
            usage = await self.registry.project_usage(project_id)
        return {
            "usage": {
                name: {"limit": getattr(limits, name), "usage": _usage_in_units(usage, name)}
                for name in attrs.fields_dict(ProjectLimits)
            }
        }
