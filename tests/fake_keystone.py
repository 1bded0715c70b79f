"""
An in-memory Keystone v3, enough of it for token validation: a Klein app
(served through treq's StubTreq, no socket) that issues password tokens,
validates them for a service token holding the C{service} or C{admin}
role, and forgets revoked and expired ones (404, as Keystone answers;
expired ones are still shown with C{?allow_expired=1}, for two days). It
counts what it was asked, and can be made slow (requests wait on a gate)
or broken (a status of the test's choosing).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from attrs import define, field, frozen
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from glance_tx.config import KeystoneConfig

SERVICE_USER = "glance"
SERVICE_PASSWORD = "service-secret"
SERVICE_PROJECT = "service"


@frozen
class Issued:
    user_id: str
    project_id: str
    roles: frozenset[str]
    expires: float


@define
class FakeKeystone:
    clock: IReactorTime
    lifetime: float = 3600.0
    #: user name -> (password, user id, project name, project id, roles)
    users: dict[str, tuple[str, str, str, str, frozenset[str]]] = field(factory=dict)
    tokens: dict[str, Issued] = field(factory=dict)
    logins: int = 0
    validations: int = 0
    #: Validations that asked for C{allow_expired}.
    allow_expired_asked: int = 0
    #: The catalog and unified limits (C{/v3/services}, C{/v3/endpoints},
    #: C{/v3/regions}, C{/v3/registered_limits}, C{/v3/limits}): lists of
    #: Keystone's JSON objects, filtered as Keystone filters them.
    services: list[dict[str, Any]] = field(factory=list)
    endpoints: list[dict[str, Any]] = field(factory=list)
    regions: list[str] = field(factory=list)
    registered_limits: list[dict[str, Any]] = field(factory=list)
    limits: list[dict[str, Any]] = field(factory=list)
    #: Requests to those, by path.
    reads: list[str] = field(factory=list)
    #: When set, every request waits for it (a slow or hung Keystone).
    gate: Deferred[None] | None = None
    #: When set, every request is answered with this status.
    broken: int | None = None

    app = Klein()

    def __attrs_post_init__(self) -> None:
        self.add_user(SERVICE_USER, SERVICE_PASSWORD, SERVICE_PROJECT, ["service"])

    def add_user(self, name: str, password: str, project: str, roles: Iterable[str]) -> None:
        self.users[name] = (password, f"uid-{name}", project, f"pid-{project}", frozenset(roles))

    def issue(
        self, user_id: str, project_id: str, roles: Iterable[str], lifetime: float | None = None
    ) -> str:
        """A token for that identity, as a login would give."""
        token = "gAAAA" + secrets.token_urlsafe(32)
        expires = self.clock.seconds() + (self.lifetime if lifetime is None else lifetime)
        self.tokens[token] = Issued(user_id, project_id, frozenset(roles), expires)
        return token

    def revoke(self, token: str) -> None:
        self.tokens.pop(token, None)

    def client(self) -> StubTreq:
        return StubTreq(self.app.resource())

    def config(self, **overrides: Any) -> KeystoneConfig:
        values: dict[str, Any] = {
            "auth_url": "http://keystone.test:5000",
            "username": SERVICE_USER,
            "password": SERVICE_PASSWORD,
            "project_name": SERVICE_PROJECT,
            "www_authenticate_uri": "http://keystone.test:5000",
        }
        values.update(overrides)
        return KeystoneConfig(**values)

    def _document(self, issued: Issued) -> bytes:
        expires = datetime.fromtimestamp(issued.expires, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return json.dumps(
            {
                "token": {
                    "expires_at": expires,
                    "user": {"id": issued.user_id},
                    "project": {"id": issued.project_id},
                    "roles": [{"id": "r-" + r, "name": r} for r in sorted(issued.roles)],
                }
            }
        ).encode()

    def _live(self, token: str | None, allow_expired: bool = False) -> Issued | None:
        issued = self.tokens.get(token or "")
        if issued is None:
            return None
        # Keystone's [token] allow_expired_window: two days.
        window = 2 * 86400 if allow_expired else 0
        if issued.expires + window <= self.clock.seconds():
            return None
        return issued

    async def _wait(self, request: IRequest) -> bool:
        if self.gate is not None:
            await self.gate
        if self.broken is not None:
            request.setResponseCode(self.broken)
            return False
        return True

    @app.route("/v3/auth/tokens", methods=["POST"])
    async def login(self, request: IRequest) -> bytes:
        self.logins += 1
        if not await self._wait(request):
            return b"{}"
        body = json.loads(request.content.read())
        user = body["auth"]["identity"]["password"]["user"]
        known = self.users.get(user["name"])
        if known is None or known[0] != user["password"]:
            request.setResponseCode(401)
            return b'{"error": {"code": 401}}'
        _, user_id, _, project_id, roles = known
        token = self.issue(user_id, project_id, roles)
        request.setResponseCode(201)
        request.setHeader(b"X-Subject-Token", token.encode())
        return self._document(self.tokens[token])

    @app.route("/v3/auth/tokens", methods=["GET"])
    async def validate(self, request: IRequest) -> bytes:
        self.validations += 1
        if not await self._wait(request):
            return b"{}"

        def header(name: bytes) -> str | None:
            values = request.requestHeaders.getRawHeaders(name)
            return values[0].decode() if values else None

        service = self._live(header(b"X-Auth-Token"))
        if service is None or not service.roles & {"service", "admin"}:
            request.setResponseCode(401)
            return b'{"error": {"code": 401}}'
        self.allow_expired_asked += request.args.get(b"allow_expired") == [b"1"]
        subject = self._live(
            header(b"X-Subject-Token"), request.args.get(b"allow_expired") == [b"1"]
        )
        if subject is None:
            request.setResponseCode(404)
            return b'{"error": {"code": 404}}'
        return self._document(subject)

    async def _as_service(self, request: IRequest) -> bool:
        self.reads.append(request.path.decode())
        if not await self._wait(request):
            return False
        tokens = request.requestHeaders.getRawHeaders(b"X-Auth-Token") or [b""]
        if self._live(tokens[0].decode()) is None:
            request.setResponseCode(401)
            return False
        return True

    def _filtered(self, request: IRequest, items: list[dict[str, Any]], key: str) -> bytes:
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        return json.dumps(
            {key: [i for i in items if all(i.get(k) == v for k, v in args.items())]}
        ).encode()

    @app.route("/v3/services", methods=["GET"])
    async def list_services(self, request: IRequest) -> bytes:
        if not await self._as_service(request):
            return b"{}"
        return self._filtered(request, self.services, "services")

    @app.route("/v3/endpoints", methods=["GET"])
    async def list_endpoints(self, request: IRequest) -> bytes:
        if not await self._as_service(request):
            return b"{}"
        return self._filtered(request, self.endpoints, "endpoints")

    @app.route("/v3/endpoints/<endpoint_id>", methods=["GET"])
    async def get_endpoint(self, request: IRequest, endpoint_id: str) -> bytes:
        if not await self._as_service(request):
            return b"{}"
        for endpoint in self.endpoints:
            if endpoint["id"] == endpoint_id:
                return json.dumps({"endpoint": endpoint}).encode()
        request.setResponseCode(404)
        return b'{"error": {"code": 404}}'

    @app.route("/v3/regions/<region_id>", methods=["GET"])
    async def get_region(self, request: IRequest, region_id: str) -> bytes:
        if not await self._as_service(request):
            return b"{}"
        if region_id in self.regions:
            return json.dumps({"region": {"id": region_id}}).encode()
        request.setResponseCode(404)
        return b'{"error": {"code": 404}}'

    @app.route("/v3/registered_limits", methods=["GET"])
    async def list_registered_limits(self, request: IRequest) -> bytes:
        if not await self._as_service(request):
            return b"{}"
        return self._filtered(request, self.registered_limits, "registered_limits")

    @app.route("/v3/limits", methods=["GET"])
    async def list_limits(self, request: IRequest) -> bytes:
        if not await self._as_service(request):
            return b"{}"
        return self._filtered(request, self.limits, "limits")
