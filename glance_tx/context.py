"""
Who is asking: a project, a user, roles.

Until authentication has its own module, identity comes from the headers
Keystone's auth middleware would set; a request without them acts as the
configured default project with the admin role (Glance's no-auth mode).
"""

from __future__ import annotations

from attrs import frozen
from twisted.web.iweb import IRequest


@frozen
class RequestContext:
    project_id: str | None
    user_id: str | None = None
    roles: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @classmethod
    def from_request(cls, request: IRequest, default_project: str) -> RequestContext:
        headers = request.requestHeaders

        def header(name: bytes) -> str | None:
            value = headers.getRawHeaders(name)
            return value[0].decode("utf-8").strip() if value else None

        project = header(b"X-Project-Id") or header(b"X-Tenant-Id")
        if project is None:
            return cls(project_id=default_project, roles=frozenset({"admin"}))
        roles = frozenset(
            r.strip().lower() for r in (header(b"X-Roles") or "").split(",") if r.strip()
        )
        return cls(project_id=project, user_id=header(b"X-User-Id"), roles=roles)
