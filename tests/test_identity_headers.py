"""C{auth_strategy = noauth}: identity from a trusted gateway's headers."""

from __future__ import annotations

from collections.abc import Iterable

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest

from glance_tx.context import RequestContext
from glance_tx.identity.headers import HeaderIdentity
from glance_tx.identity.interface import IIdentityResolver
from tests.identity_conformance import IdentityConformanceMixin, blank_request


class HeaderIdentityTests(IdentityConformanceMixin, SynchronousTestCase):
    anonymous = RequestContext(project_id="default", roles=frozenset({"admin"}))

    def make_resolver(self) -> IIdentityResolver:
        return HeaderIdentity("default")

    def request_as(self, project_id: str, user_id: str, roles: Iterable[str]) -> IRequest:
        return blank_request(
            {"X-Project-Id": project_id, "X-User-Id": user_id, "X-Roles": ",".join(roles)}
        )

    def test_tenant_header(self) -> None:
        """The older C{X-Tenant-Id} names the project too."""
        context = self.resolved(self.make_resolver(), blank_request({"X-Tenant-Id": "t"}))
        self.assertEqual(context, RequestContext(project_id="t"))

    def test_roles_normalised(self) -> None:
        """C{X-Roles} is split on commas, trimmed and lower-cased."""
        context = self.resolved(
            self.make_resolver(), blank_request({"X-Project-Id": "p", "X-Roles": " Admin , reader,"})
        )
        self.assertEqual(context.roles, frozenset({"admin", "reader"}))
