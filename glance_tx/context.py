"""
Who is asking: a project, a user, roles.

Which provider decides that for a request is C{auth_strategy}'s choice
(L{glance_tx.identity}); this is only the value every provider returns.
"""

from __future__ import annotations

from attrs import frozen


@frozen
class RequestContext:
    project_id: str | None
    user_id: str | None = None
    roles: frozenset[str] = frozenset()
    #: The service that sent the request on the user's behalf, from a
    #: validated C{X-Service-Token} (keystonemiddleware's C{X-Service-*}
    #: headers; oslo.context's names). None without one.
    service_user_id: str | None = None
    service_project_id: str | None = None
    service_roles: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles
