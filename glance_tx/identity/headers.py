"""
C{auth_strategy = noauth}: identity from the headers a trusted gateway sets.

This is Glance's no-auth mode and glance-tx's behaviour from the start:
C{X-Project-Id} (or C{X-Tenant-Id}), C{X-User-Id} and C{X-Roles} are taken
as written, the way Keystone's auth_token middleware in front would set
them; a request without a project acts as the configured default project
with the admin role. "No auth" and "headers from a trusted gateway" are one
provider: the headers are trusted when present and the default applies
when they are not. Safe only where no untrusted caller can reach the port
(the default listener is on loopback).
"""

from __future__ import annotations

from attrs import frozen
from twisted.web.iweb import IRequest
from zope.interface import implementer

from glance_tx.context import RequestContext
from glance_tx.identity.interface import IIdentityResolver


def _header(request: IRequest, name: bytes) -> str | None:
    value = request.requestHeaders.getRawHeaders(name)
    return value[0].decode("utf-8", "replace").strip() if value else None


def parse_roles(raw: str) -> frozenset[str]:
    """C{X-Roles}' comma-separated names, lower-cased (Glance compares so)."""
    return frozenset(r.strip().lower() for r in raw.split(",") if r.strip())


@implementer(IIdentityResolver)
@frozen
class HeaderIdentity:
    """Trusts the identity headers; without them, C{default_project} as admin."""

    default_project: str

    async def resolve(self, request: IRequest) -> RequestContext:
        project = _header(request, b"X-Project-Id") or _header(request, b"X-Tenant-Id")
        if project is None:
            return RequestContext(project_id=self.default_project, roles=frozenset({"admin"}))
        return RequestContext(
            project_id=project,
            user_id=_header(request, b"X-User-Id"),
            roles=parse_roles(_header(request, b"X-Roles") or ""),
        )
