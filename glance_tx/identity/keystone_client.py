"""
Keystone v3 as a service user, on treq: token validation
(C{[keystone_authtoken]}) and reading unified limits (C{[oslo_limit]},
L{glance_tx.keystone_limits}).

  - The service's own token: a login (L{glance_tx.keystone_auth}) with the
    section's credentials, scoped to its project (or the system); kept
    until a minute before it expires, then renewed by the first request
    that needs it (concurrent ones wait for that one login).
  - A caller's token: C{GET /v3/auth/tokens} with the service token as
    C{X-Auth-Token} and the caller's as C{X-Subject-Token}. 200 is a valid
    token; 404 is one Keystone does not know or no longer honours: expired,
    revoked, malformed. A 401 is about the service token (revoked early):
    log in again and ask once more (so for any other C{GET} as the
    service, L{KeystoneClient.get_json}).

Every call is bounded by C{http_connect_timeout} on the injected clock: a
Keystone that does not answer is L{KeystoneUnavailable} within that time,
never a hang.
No message carries a token or the password.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from attrs import define, field, frozen
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from glance_tx.config import KeystoneConfig
from glance_tx.keystone_auth import (
    LoginFailed,
    LoginRefused,
    PasswordCredentials,
    log_in,
    timestamp,
    v3_url,
)
from glance_tx.once import Once, run_once
from glance_tx.store.describe import describe

log = Logger()

T = TypeVar("T")

#: Renew the service token this long before it expires.
EXPIRE_SOON = 60.0


class InvalidToken(Exception):
    """Keystone does not honour the caller's token (expired, revoked, unknown)."""


class KeystoneUnavailable(Exception):
    """Keystone could not be asked: unreachable, too slow, or refusing us."""


class UnexpectedAnswer(KeystoneUnavailable):
    """Keystone answered a C{GET} with C{code}, not 200."""

    def __init__(self, code: int, path: str) -> None:
        super().__init__(f"Keystone answered {code} to GET {path}")
        self.code = code


@frozen
class TokenInfo:
    """What a validated token says: who, for which project, until when."""

    user_id: str | None
    project_id: str | None
    roles: frozenset[str]
    #: When the token expires, in the clock's seconds (the epoch).
    expires: float


@frozen
class _ServiceToken:
    token: str = field(repr=False)
    expires: float


def token_info(document: Any) -> TokenInfo:
    """The L{TokenInfo} of a C{{"token": ...}} document Keystone sent."""
    try:
        token = document["token"]
        expires = timestamp(token["expires_at"])
        roles = frozenset(
            str(role["name"]).lower() for role in token.get("roles") or [] if role.get("name")
        )
        project = token.get("project") or {}
        user = token.get("user") or {}
    except (KeyError, TypeError, AttributeError, ValueError):
        raise KeystoneUnavailable("Keystone sent a token document glance-tx cannot read") from None
    return TokenInfo(
        user_id=user.get("id"), project_id=project.get("id"), roles=roles, expires=expires
    )


@define
class KeystoneClient:
    """
    Asks Keystone as a service user (C{credentials}, logged in at
    C{auth_url}) through C{http} (a treq C{HTTPClient}); C{clock} tells
    the time (epoch seconds, as the reactor's) and bounds every call to
    C{timeout} seconds. C{section} names the credentials' config section
    in log lines.
    """

    http: Any
    clock: IReactorTime
    auth_url: str
    credentials: PasswordCredentials
    timeout: float = 5.0
    section: str = "keystone_authtoken"
    _service: _ServiceToken | None = field(default=None, init=False)
    _login: Once[_ServiceToken] | None = field(default=None, init=False)

    @classmethod
    def for_authtoken(cls, http: Any, clock: IReactorTime, config: KeystoneConfig) -> KeystoneClient:
        """The client of C{[keystone_authtoken]}'s service user."""
        return cls(
            http=http,
            clock=clock,
            auth_url=config.auth_url,
            credentials=PasswordCredentials(
                user=config.username,
                password=config.password,
                project=config.project_name,
                user_domain_name=config.user_domain_name,
                project_domain_name=config.project_domain_name,
            ),
            timeout=config.http_connect_timeout,
        )

    async def validate(self, token: str, allow_expired: bool = False) -> TokenInfo:
        """
        What Keystone says of C{token}; with C{allow_expired}, of a token
        that expired too (Keystone's C{?allow_expired=1}, honoured within
        its C{allow_expired_window}: asked only for a caller that came with
        a valid service token).

        @raise InvalidToken: Keystone does not honour it.
        @raise KeystoneUnavailable: Keystone could not be asked.
        """
        code, body = await self.as_service(
            "/auth/tokens",
            headers={"X-Subject-Token": [token]},
            params={"allow_expired": "1"} if allow_expired else None,
        )
        if code == 200:
            try:
                return token_info(json.loads(body))
            except ValueError:
                raise KeystoneUnavailable("Keystone sent a token that is not JSON") from None
        if code == 404:
            raise InvalidToken("The token is expired, revoked or unknown")
        log.warn("Keystone answered {code} to a token validation", code=code)
        raise KeystoneUnavailable(f"Keystone answered {code} to a token validation")

    async def get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        """
        C{GET <v3>path} as the service: the JSON document of a 200.

        @raise UnexpectedAnswer: any other answer.
        @raise KeystoneUnavailable: no answer in time.
        """
        code, body = await self.as_service(path, params=params)
        if code != 200:
            raise UnexpectedAnswer(code, path)
        try:
            return json.loads(body)
        except ValueError:
            raise KeystoneUnavailable(f"Keystone's answer to GET {path} is not JSON") from None

    async def as_service(
        self,
        path: str,
        headers: dict[str, list[str]] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """
        C{GET <v3>path} with the service token: status and body. A 401 is
        about the service token (revoked early): log in again and ask
        once more; a second 401 is L{KeystoneUnavailable}.
        """
        for attempt in range(2):
            service = await self._service_token()
            code, body, _ = await self._exchange(
                "GET",
                path,
                headers={**(headers or {}), "X-Auth-Token": [service.token]},
                params=params,
            )
            if code != 401:
                return code, body
            if attempt == 0:
                # Our token (or theirs): drop ours, log in again, ask once more.
                if self._service is service:
                    self._service = None
                continue
        log.error("Keystone refused glance-tx's fresh service token ([{section}])",
                  section=self.section)
        raise KeystoneUnavailable("Keystone refused the service's token")

    async def _service_token(self) -> _ServiceToken:
        service = self._service
        if service is not None and service.expires - self.clock.seconds() > EXPIRE_SOON:
            return service
        login = self._login
        if login is None:
            login = run_once(self._log_in())
            if not login.done:
                self._login = login
            login.observe().addBoth(self._logged_in)
        return await login.observe()

    def _logged_in(self, result: object) -> None:
        self._login = None
        if isinstance(result, _ServiceToken):
            self._service = result

    async def _log_in(self) -> _ServiceToken:
        try:
            login = await self._bounded(
                lambda: log_in(self.http, self.auth_url, self.credentials)
            )
        except LoginRefused:
            log.error(
                "Keystone refused glance-tx's service user {user} ([{section}])",
                user=self.credentials.user or self.credentials.application_credential_id,
                section=self.section,
            )
            raise KeystoneUnavailable("Keystone refused the service's credentials") from None
        except LoginFailed as e:
            raise KeystoneUnavailable(str(e)) from None
        expires = login.expires
        if expires is None:
            raise KeystoneUnavailable("Keystone sent a token with no expiry")
        return _ServiceToken(login.token, expires)

    async def _exchange(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes, Any]:
        """One bounded request: status, body and headers, or KeystoneUnavailable."""
        async def exchange() -> tuple[int, bytes, Any]:
            response = await self.http.request(method, v3_url(self.auth_url) + path, **kwargs)
            body = await response.content()
            return response.code, body, response.headers

        return await self._bounded(exchange)

    async def _bounded(self, call: Callable[[], Awaitable[T]]) -> T:
        """C{call()}, given up after C{timeout} seconds: KeystoneUnavailable."""
        d = Deferred.fromCoroutine(_awaited(call))
        d.addTimeout(self.timeout, self.clock)
        try:
            return await d
        except (TimeoutError, CancelledError):
            raise KeystoneUnavailable(
                f"Keystone did not answer within {self.timeout:g} s"
            ) from None
        except (KeystoneUnavailable, LoginFailed):
            raise
        except Exception as e:
            raise KeystoneUnavailable(f"Keystone could not be reached: {describe(e)}") from None


async def _awaited(call: Callable[[], Awaitable[T]]) -> T:
    return await call()
