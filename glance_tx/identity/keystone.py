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
from collections.abc import Awaitable
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
    TokenInfo,
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
    """
    Validates C{X-Auth-Token} with C{client}, remembered in C{cache}, and
    an C{X-Service-Token} when one comes too, as keystonemiddleware 13
    does: a service token Keystone does not honour is a 401; one without
    any of C{service_token_roles} is a 401 when
    C{service_token_roles_required} (else merely valid); one with such a
    role lets an expired user token through (C{allow_expired}: a service
    finishing a long job for a user, such as Nova's snapshot upload). The
    service's identity is the context's C{service_*}.
    """

    client: KeystoneClient
    cache: TokenCache
    #: Where callers get a token: C{www_authenticate_uri}.
    www_authenticate_uri: str
    service_token_roles: frozenset[str] = frozenset({"service"})
    service_token_roles_required: bool = True

    @property
    def challenge(self) -> str:
        return f'Keystone uri="{self.www_authenticate_uri}"'

    def _token(self, headers: Headers, name: bytes) -> str | None:
        """The one well-formed token in header C{name}, None if absent."""
        tokens = headers.getRawHeaders(name) or []
        if not tokens:
            return None
        token = tokens[0].decode("latin-1").strip()
        if len(tokens) != 1 or not _TOKEN.fullmatch(token):
            raise Unauthorized(f"The {name.decode()} header is malformed", self.challenge)
        return token

    async def _validate(self, token: str, what: str, allow_expired: bool = False) -> TokenInfo:
        def validate(t: str) -> Awaitable[TokenInfo]:
            return self.client.validate(t, allow_expired=allow_expired)

        try:
            return await self.cache.get(token, validate, allow_expired=allow_expired)
        except InvalidToken as e:
            raise Unauthorized(f"Authentication failed ({what}): {e}", self.challenge) from None
        except KeystoneUnavailable as e:
            raise ServiceUnavailable(
                f"The identity service cannot validate the token now: {e}"
            ) from None

    async def resolve(self, request: IRequest) -> RequestContext:
        headers = request.requestHeaders
        strip_identity_headers(headers)
        token = self._token(headers, b"X-Auth-Token")
        if token is None:
            raise Unauthorized(
                "Authentication required: send a Keystone token as X-Auth-Token",
                self.challenge,
            )
        service_token = self._token(headers, b"X-Service-Token")
        service: TokenInfo | None = None
        allow_expired = False
        if service_token is not None:
            service = await self._validate(service_token, "X-Service-Token")
            allow_expired = bool(service.roles & self.service_token_roles)
            if self.service_token_roles_required and not allow_expired:
                raise Unauthorized(
                    "Authentication failed (X-Service-Token): the service token has "
                    "none of the roles service_token_roles names",
                    self.challenge,
                )
        info = await self._validate(token, "X-Auth-Token", allow_expired)
        return RequestContext(
            project_id=info.project_id,
            user_id=info.user_id,
            roles=info.roles,
            service_user_id=service.user_id if service else None,
            service_project_id=service.project_id if service else None,
            service_roles=service.roles if service else frozenset(),
        )


def keystone_identity(
    reactor: Any, config: KeystoneConfig, http: Any
) -> KeystoneIdentity:
    """The provider for C{config}, asking Keystone through C{http} (treq)."""
    return KeystoneIdentity(
        client=KeystoneClient.for_authtoken(http, reactor, config),
        cache=TokenCache(clock=reactor, ttl=config.token_cache_time),
        www_authenticate_uri=config.www_authenticate_uri,
        service_token_roles=config.service_token_roles,
        service_token_roles_required=config.service_token_roles_required,
    )
