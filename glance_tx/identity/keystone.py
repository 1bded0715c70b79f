"""
C{auth_strategy = keystone}: identity only from a token Keystone validates.

Each request's C{X-Auth-Token} is validated against Keystone v3
(L{glance_tx.identity.keystone_client}) through the token cache
(L{glance_tx.identity.token_cache}); the context is the token's user,
project and roles. Identity headers a caller sends (C{X-Roles},
C{X-Project-Id}, C{X-Identity-Status}, ...) are removed from the request
first, however they are spelled (case, C{_} for C{-}), as keystonemiddleware
does, so nothing behind this provider can ever read them.

A missing, malformed, expired or revoked token is a 401 whose
C{WWW-Authenticate: Keystone uri="..."} says where to get one; a Keystone
that cannot be asked in time is a 503 with C{Retry-After}.
"""

from __future__ import annotations

import re
from typing import Any

from attrs import define
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from zope.interface import implementer

from glance_tx.config import KeystoneConfig
from glance_tx.context import RequestContext
from glance_tx.errors import ServiceUnavailable, Unauthorized
from glance_tx.identity.interface import IIdentityResolver
from glance_tx.identity.keystone_client import (
    InvalidToken,
    KeystoneClient,
    KeystoneUnavailable,
)
from glance_tx.identity.token_cache import TokenCache

#: Header names (lower case, C{-} for C{_}) that carry identity: those
#: keystonemiddleware sets and strips, service-token variants, and the old
#: tenant names.
_IDENTITY_HEADER = re.compile(
    r"x-(service-)?("
    r"identity-status|roles?|is-admin-project|service-catalog|system-scope"
    r"|(user|project|domain|tenant|user-domain|project-domain|default-project)(-(id|name))?"
    r"|trust-id|trustee-user-id|trustor-user-id|app-cred-id|auth-project-id"
    r")"
)
#: A token is printable ASCII with no spaces; fernet tokens are ~200
#: bytes, PKI ones were a few KiB.
_TOKEN = re.compile(r"[!-~]{1,8192}")


def strip_identity_headers(headers: Headers) -> None:
    """Remove every identity header from C{headers}, whatever its spelling."""
    for name, _ in list(headers.getAllRawHeaders()):
        if _IDENTITY_HEADER.fullmatch(name.decode("latin-1").lower().replace("_", "-")):
            headers.removeHeader(name)


@implementer(IIdentityResolver)
@define
class KeystoneIdentity:
    """Validates C{X-Auth-Token} with C{client}, remembered in C{cache}."""

    client: KeystoneClient
    cache: TokenCache
    #: Where callers get a token: C{www_authenticate_uri}.
    www_authenticate_uri: str

    @property
    def challenge(self) -> str:
        return f'Keystone uri="{self.www_authenticate_uri}"'

    async def resolve(self, request: IRequest) -> RequestContext:
        headers = request.requestHeaders
        strip_identity_headers(headers)
        tokens = headers.getRawHeaders(b"X-Auth-Token") or []
        if not tokens:
            raise Unauthorized(
                "Authentication required: send a Keystone token as X-Auth-Token",
                self.challenge,
            )
        token = tokens[0].decode("latin-1").strip()
        if len(tokens) != 1 or not _TOKEN.fullmatch(token):
            raise Unauthorized("The X-Auth-Token header is malformed", self.challenge)
        try:
            info = await self.cache.get(token, self.client.validate)
        except InvalidToken as e:
            raise Unauthorized(f"Authentication failed: {e}", self.challenge) from None
        except KeystoneUnavailable as e:
            raise ServiceUnavailable(
                f"The identity service cannot validate the token now: {e}"
            ) from None
        return RequestContext(project_id=info.project_id, user_id=info.user_id, roles=info.roles)


def keystone_identity(
    reactor: Any, config: KeystoneConfig, http: Any
) -> KeystoneIdentity:
    """The provider for C{config}, asking Keystone through C{http} (treq)."""
    return KeystoneIdentity(
        client=KeystoneClient(http=http, clock=reactor, config=config),
        cache=TokenCache(clock=reactor, ttl=config.token_cache_time),
        www_authenticate_uri=config.www_authenticate_uri,
    )
