"""
The behaviour every L{IIdentityResolver} provider shares, as one test mixin.

A provider's test case mixes in L{IdentityConformanceMixin} (under a
L{SynchronousTestCase}) and provides:

    - C{make_resolver()}: a fresh provider.
    - C{request_as(project_id, user_id, roles)}: a request the provider
      will take as that identity (for the header provider, those headers;
      for Keystone, a token issued for that user and project).
    - C{anonymous}: what a request with no credentials acts as: a
      L{RequestContext}, or None when the provider must refuse it with
      L{Unauthorized}.
    - C{settle()} (optional): run whatever the provider waits on (an
      in-memory HTTP exchange) so that a resolve completes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IRequest
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from glance_tx.context import RequestContext
from glance_tx.errors import Unauthorized
from glance_tx.identity.interface import IIdentityResolver

if TYPE_CHECKING:
    _Base = SynchronousTestCase
else:
    _Base = object


def blank_request(headers: dict[str, str] | None = None) -> IRequest:
    """A request to C{/v2/images} with only C{headers}."""
    request = DummyRequest([b"v2", b"images"])
    for name, value in (headers or {}).items():
        request.requestHeaders.setRawHeaders(name, [value])
    return request


class IdentityConformanceMixin(_Base):
    anonymous: RequestContext | None

    def make_resolver(self) -> IIdentityResolver:
        raise NotImplementedError

    def request_as(self, project_id: str, user_id: str, roles: Iterable[str]) -> IRequest:
        raise NotImplementedError

    def settle(self) -> None:
        """Nothing to run by default: the provider answers at once."""

    def outcome(self, resolver: IIdentityResolver, request: IRequest) -> RequestContext | Failure:
        d = Deferred.fromCoroutine(resolver.resolve(request))  # type: ignore[arg-type]
        self.settle()
        results: list[RequestContext | Failure] = []
        d.addBoth(results.append)
        self.assertEqual(len(results), 1, "resolve did not complete")
        return results[0]

    def resolved(self, resolver: IIdentityResolver, request: IRequest) -> RequestContext:
        result = self.outcome(resolver, request)
        if isinstance(result, Failure):
            result.raiseException()
        assert isinstance(result, RequestContext)
        return result

    def test_provides_interface(self) -> None:
        """Every provider declares and implements IIdentityResolver."""
        self.assertTrue(verifyObject(IIdentityResolver, self.make_resolver()))

    def test_member(self) -> None:
        """A member's request acts as its user and project, not as an admin."""
        resolver = self.make_resolver()
        context = self.resolved(resolver, self.request_as("p-one", "u-one", ["member"]))
        self.assertEqual(
            (context.project_id, context.user_id), ("p-one", "u-one")
        )
        self.assertIn("member", context.roles)
        self.assertFalse(context.is_admin)

    def test_admin(self) -> None:
        """The admin role makes the context an admin's."""
        resolver = self.make_resolver()
        context = self.resolved(resolver, self.request_as("p-one", "u-admin", ["admin"]))
        self.assertTrue(context.is_admin)

    def test_projects_apart(self) -> None:
        """Two callers of one provider each get their own project."""
        resolver = self.make_resolver()
        one = self.request_as("p-one", "u-one", ["member"])
        two = self.request_as("p-two", "u-two", ["reader"])
        self.assertEqual(self.resolved(resolver, one).project_id, "p-one")
        self.assertEqual(self.resolved(resolver, two).project_id, "p-two")
        self.assertEqual(
            self.resolved(resolver, self.request_as("p-one", "u-one", ["member"])).user_id,
            "u-one",
        )
        self.assertNotIn("member", self.resolved(resolver, two).roles)

    def test_anonymous(self) -> None:
        """
        A request with no credentials acts as the provider's anonymous
        identity, or is refused with a 401 that says where to authenticate.
        """
        result = self.outcome(self.make_resolver(), blank_request())
        if self.anonymous is None:
            assert isinstance(result, Failure)
            error = result.trap(Unauthorized) and result.value
            self.assertEqual(error.status, 401)
            self.assertTrue(error.challenge)
        else:
            self.assertEqual(result, self.anonymous)
