"""
The one way the API learns who is asking.

The API layer never reads identity from a request itself: it awaits
L{IIdentityResolver.resolve}, so that trusting a gateway's headers
(C{auth_strategy = noauth}, L{glance_tx.identity.headers}) and validating a
token against Keystone (C{auth_strategy = keystone},
L{glance_tx.identity.keystone}) are two providers of one interface, checked
by one conformance suite (C{tests/identity_conformance.py}).
"""

from __future__ import annotations

from collections.abc import Awaitable

from twisted.web.iweb import IRequest
from zope.interface import Interface

from glance_tx.context import RequestContext


class IIdentityResolver(Interface):
    """Turns a request into the identity it acts as."""

    def resolve(request: IRequest) -> Awaitable[RequestContext]:
        """
        Who C{request} acts as. Asynchronous: a provider may ask another
        service, and must not block the reactor while it does.

        A provider may remove headers from C{request} (identity headers a
        caller must not be able to set) before the API reads it.

        @raise glance_tx.errors.Unauthorized: the caller must authenticate
            (no token, or a token that is malformed, expired or revoked).
        @raise glance_tx.errors.ServiceUnavailable: the identity service
            did not answer in time; the caller may try again.
        """
