"""
C{auth_strategy = keystone}: tokens validated against an in-memory Keystone
(L{tests.fake_keystone}) through treq's StubTreq, on a fake clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from glance_tx.context import RequestContext
from glance_tx.errors import ServiceUnavailable, Unauthorized
from glance_tx.identity.interface import IIdentityResolver
from glance_tx.identity.keystone import (
    KeystoneIdentity,
    keystone_identity,
    strip_identity_headers,
)
from glance_tx.identity.token_cache import TokenCache, token_key
from tests.api_fixtures import SiteTestCase
from tests.fake_keystone import FakeKeystone
from tests.identity_conformance import IdentityConformanceMixin, blank_request

#: A realistic "now" (2026), so expiry times look like Keystone's.
NOW = 1_790_000_000.0


class KeystoneHarness(SynchronousTestCase):
    """A fake clock, a fake Keystone and a provider asking it."""

    config_overrides: dict[str, Any] = {}

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.keystone = FakeKeystone(self.clock)
        self.stub = self.keystone.client()
        self.resolver = self.make_resolver()

    def make_resolver(self) -> KeystoneIdentity:
        return keystone_identity(
            self.clock, self.keystone.config(**self.config_overrides), self.stub
        )

    def settle(self) -> None:
        self.stub.flush()

    def token_request(self, token: str, **headers: str) -> IRequest:
        return blank_request({"X-Auth-Token": token, **headers})

    def member_token(self, project: str = "p-one", lifetime: float | None = None) -> str:
        return self.keystone.issue("u-one", project, ["member", "reader"], lifetime)

    def start(self, request: IRequest) -> Deferred[RequestContext]:
        d = Deferred.fromCoroutine(self.resolver.resolve(request))
        self.settle()
        return d

    def refusal(self, request: IRequest) -> Unauthorized:
        failure = self.failureResultOf(self.start(request), Unauthorized)
        error = failure.value
        assert isinstance(error, Unauthorized)
        self.assertEqual(error.challenge, 'Keystone uri="http://keystone.test:5000"')
        return error

    def unavailable(self, request: IRequest) -> ServiceUnavailable:
        failure = self.failureResultOf(self.start(request), ServiceUnavailable)
        error = failure.value
        assert isinstance(error, ServiceUnavailable)
        self.assertEqual(error.status, 503)
        self.assertEqual(error.retry_after, 5)
        return error


class KeystoneConformanceTests(IdentityConformanceMixin, KeystoneHarness):
    anonymous = None

    def make_resolver(self) -> KeystoneIdentity:
        return KeystoneHarness.make_resolver(self)

    def settle(self) -> None:
        KeystoneHarness.settle(self)

    def request_as(self, project_id: str, user_id: str, roles: Iterable[str]) -> IRequest:
        return self.token_request(self.keystone.issue(user_id, project_id, roles))


class TokenTests(KeystoneHarness):
    def test_spoofed_identity_headers_ignored(self) -> None:
        """
        A member's token with X-Roles: admin (in any spelling) and another
        project's headers acts as the token says; the headers are gone.
        """
        request = self.token_request(
            self.member_token(),
            **{"X-Roles": "admin", "x_roles": "admin", "X-PROJECT-ID": "p-two",
               "X-Identity-Status": "Confirmed", "X-Tenant-Id": "p-two",
               "X-Service-Roles": "admin", "X-Is-Admin-Project": "True"},
        )
        context = self.successResultOf(self.start(request))
        self.assertEqual(context.project_id, "p-one")
        self.assertFalse(context.is_admin)
        self.assertEqual(
            [name for name, _ in request.requestHeaders.getAllRawHeaders()],
            [b"X-Auth-Token"],
        )

    def test_strip_keeps_other_headers(self) -> None:
        """Only identity headers go: the token, content type and Glance's own stay."""
        headers = Headers(
            {"X-Auth-Token": ["t"], "Content-Type": ["a/b"], "X-Image-Meta-Name": ["n"],
             "X-User-Domain-Name": ["d"], "X-Roles": ["admin"]}
        )
        strip_identity_headers(headers)
        self.assertEqual(
            sorted(name for name, _ in headers.getAllRawHeaders()),
            [b"Content-Type", b"X-Auth-Token", b"X-Image-Meta-Name"],
        )

    def test_missing_token(self) -> None:
        """No X-Auth-Token: 401 with the challenge, Keystone not asked."""
        error = self.refusal(blank_request({"X-Roles": "admin"}))
        self.assertEqual(error.status, 401)
        self.assertEqual(self.keystone.validations, 0)

    def test_malformed_token(self) -> None:
        """A token with spaces, or far too long, is refused without asking."""
        self.refusal(self.token_request("not a token"))
        self.refusal(self.token_request("a" * 9000))
        self.assertEqual(self.keystone.validations, 0)

    def test_unknown_revoked_expired(self) -> None:
        """Tokens Keystone does not honour (404) are 401s."""
        self.refusal(self.token_request("gAAAAunknown"))
        revoked = self.member_token()
        self.keystone.revoke(revoked)
        self.refusal(self.token_request(revoked))
        expired = self.member_token(lifetime=10)
        self.clock.advance(11)
        self.refusal(self.token_request(expired))

    def test_admin_role(self) -> None:
        """Roles come from the token; admin among them makes an admin."""
        token = self.keystone.issue("u-a", "p-admin", ["admin", "member", "reader"])
        context = self.successResultOf(self.start(self.token_request(token)))
        self.assertTrue(context.is_admin)
        self.assertEqual(context.roles, frozenset({"admin", "member", "reader"}))


class CacheTests(KeystoneHarness):
    config_overrides = {"token_cache_time": 300}

    def test_cached(self) -> None:
        """A second request with one token does not ask Keystone again."""
        token = self.member_token()
        self.successResultOf(self.start(self.token_request(token)))
        self.successResultOf(self.start(self.token_request(token)))
        self.assertEqual(self.keystone.validations, 1)

    def test_token_cache_time(self) -> None:
        """After token_cache_time, Keystone is asked again (and a revocation seen)."""
        token = self.member_token()
        self.successResultOf(self.start(self.token_request(token)))
        self.keystone.revoke(token)
        self.clock.advance(299)
        self.successResultOf(self.start(self.token_request(token)))
        self.clock.advance(2)
        self.refusal(self.token_request(token))
        self.assertEqual(self.keystone.validations, 2)

    def test_token_expiry_sooner(self) -> None:
        """A token expiring before token_cache_time is not honoured past its expiry."""
        token = self.member_token(lifetime=30)
        self.successResultOf(self.start(self.token_request(token)))
        self.clock.advance(31)
        self.refusal(self.token_request(token))

    def test_concurrent_one_validation(self) -> None:
        """Five concurrent requests with one new token: one validation."""
        self.successResultOf(self.start(self.token_request(self.member_token())))
        before = self.keystone.validations
        token = self.member_token("p-two")
        self.keystone.gate = Deferred()
        waiting = [self.start(self.token_request(token)) for _ in range(5)]
        for d in waiting:
            self.assertNoResult(d)
        gate, self.keystone.gate = self.keystone.gate, None
        gate.callback(None)
        self.settle()
        self.assertEqual(
            {self.successResultOf(d).project_id for d in waiting}, {"p-two"}
        )
        self.assertEqual(self.keystone.validations - before, 1)

    def test_keyed_by_hash(self) -> None:
        """The cache keeps the token's sha256, not the token."""
        token = self.member_token()
        self.successResultOf(self.start(self.token_request(token)))
        cache = self.resolver.cache
        self.assertEqual(list(cache._entries), [token_key(token)])
        self.assertNotIn(token, repr(cache._entries))

    def test_bounded(self) -> None:
        """Past max_entries the least recently used token is forgotten."""
        cache = TokenCache(clock=self.clock, ttl=300, max_entries=2)
        self.resolver = KeystoneIdentity(
            self.resolver.client, cache, self.resolver.www_authenticate_uri
        )
        tokens = [self.member_token() for _ in range(3)]
        for token in tokens:
            self.successResultOf(self.start(self.token_request(token)))
        self.assertEqual(len(cache), 2)
        self.successResultOf(self.start(self.token_request(tokens[0])))
        self.assertEqual(self.keystone.validations, 4)

    def test_refusal_cached(self) -> None:
        """A refused token is refused again without asking, until token_cache_time."""
        self.refusal(self.token_request("gAAAAunknown"))
        self.refusal(self.token_request("gAAAAunknown"))
        self.assertEqual(self.keystone.validations, 1)
        self.clock.advance(301)
        self.refusal(self.token_request("gAAAAunknown"))
        self.assertEqual(self.keystone.validations, 2)

    def test_unavailable_not_cached(self) -> None:
        """A Keystone that failed to answer is asked again on the next request."""
        token = self.member_token()
        self.keystone.broken = 500
        self.failureResultOf(self.start(self.token_request(token)), ServiceUnavailable)
        self.keystone.broken = None
        self.assertEqual(self.successResultOf(self.start(self.token_request(token))).project_id, "p-one")


class ServiceTokenTests(KeystoneHarness):
    config_overrides = {"token_cache_time": 0}

    def test_one_login(self) -> None:
        """The service logs in once for many validations."""
        for _ in range(3):
            self.successResultOf(self.start(self.token_request(self.member_token())))
        self.assertEqual((self.keystone.logins, self.keystone.validations), (1, 3))

    def test_renewed_before_expiry(self) -> None:
        """Within a minute of its expiry the service token is renewed."""
        self.successResultOf(self.start(self.token_request(self.member_token())))
        self.clock.advance(self.keystone.lifetime - 59)
        self.successResultOf(self.start(self.token_request(self.member_token())))
        self.assertEqual(self.keystone.logins, 2)

    def test_revoked_service_token(self) -> None:
        """A service token revoked early: log in again, ask again, succeed."""
        self.successResultOf(self.start(self.token_request(self.member_token())))
        for token, issued in list(self.keystone.tokens.items()):
            if issued.user_id == "uid-glance":
                self.keystone.revoke(token)
        context = self.successResultOf(self.start(self.token_request(self.member_token())))
        self.assertEqual(context.project_id, "p-one")
        self.assertEqual(self.keystone.logins, 2)

    def test_service_credentials_refused(self) -> None:
        """A wrong service password is a 503 (not the caller's fault), not a 401."""
        self.resolver = keystone_identity(
            self.clock, self.keystone.config(password="wrong"), self.stub
        )
        self.unavailable(self.token_request(self.member_token()))


class XServiceTokenTests(KeystoneHarness):
    """An X-Service-Token beside the user's, as keystonemiddleware 13 treats it."""

    config_overrides = {"token_cache_time": 300}

    def nova_token(self, roles: Iterable[str] = ("service",)) -> str:
        return self.keystone.issue("u-nova", "p-service", roles)

    def test_service_identity_exposed(self) -> None:
        """
        A valid service token with the service role: the user acts as
        themselves, and the context names the service (X-Service-* as
        keystonemiddleware sets them, oslo.context's service_* names).
        """
        context = self.successResultOf(self.start(self.token_request(
            self.member_token(), **{"X-Service-Token": self.nova_token()})))
        self.assertEqual((context.project_id, context.user_id), ("p-one", "u-one"))
        self.assertEqual(context.roles, frozenset({"member", "reader"}))
        self.assertEqual(
            (context.service_user_id, context.service_project_id, context.service_roles),
            ("u-nova", "p-service", frozenset({"service"})),
        )
        plain = self.successResultOf(self.start(self.token_request(self.member_token())))
        self.assertIsNone(plain.service_user_id)

    def test_expired_user_token_allowed(self) -> None:
        """
        An expired user token with a valid service token (service role) is
        accepted (Keystone asked with allow_expired=1); without the service
        token, or with a service token lacking the role, it is a 401.
        """
        expired = self.member_token(lifetime=10)
        self.clock.advance(11)
        self.refusal(self.token_request(expired))
        context = self.successResultOf(self.start(self.token_request(
            expired, **{"X-Service-Token": self.nova_token()})))
        self.assertEqual(context.project_id, "p-one")
        self.assertEqual(self.keystone.allow_expired_asked, 1)
        # Remembered apart: a plain request with it is still refused.
        self.refusal(self.token_request(expired))

    def test_invalid_service_token(self) -> None:
        """A service token Keystone does not honour is a 401 naming X-Service-Token."""
        error = self.refusal(self.token_request(
            self.member_token(), **{"X-Service-Token": "gAAAAunknown"}))
        self.assertIn("X-Service-Token", error.message)
        error = self.refusal(self.token_request(
            self.member_token(), **{"X-Service-Token": "not a token"}))
        self.assertIn("X-Service-Token header is malformed", error.message)

    def test_roles_required(self) -> None:
        """
        service_token_roles_required (the default): a user's token sent as
        the service token is a 401; with it off, the request goes through
        as the user, but an expired user token is still refused.
        """
        user_as_service = self.keystone.issue("u-two", "p-two", ["member"])
        error = self.refusal(self.token_request(
            self.member_token(), **{"X-Service-Token": user_as_service}))
        self.assertIn("service_token_roles", error.message)
        self.resolver = keystone_identity(
            self.clock,
            self.keystone.config(service_token_roles_required=False,
                                 service_token_roles=frozenset({"nova"})),
            self.stub,
        )
        context = self.successResultOf(self.start(self.token_request(
            self.member_token(), **{"X-Service-Token": user_as_service})))
        self.assertEqual(context.service_user_id, "u-two")
        expired = self.member_token(lifetime=10)
        self.clock.advance(11)
        self.refusal(self.token_request(expired, **{"X-Service-Token": self.nova_token()}))
        nova_role = self.nova_token(roles=["nova"])
        context = self.successResultOf(self.start(self.token_request(
            expired, **{"X-Service-Token": nova_role})))
        self.assertEqual(context.user_id, "u-one")


class UnavailableTests(KeystoneHarness):
    def test_slow(self) -> None:
        """A Keystone that does not answer: 503 after http_connect_timeout, not a hang."""
        token = self.member_token()
        self.keystone.gate = Deferred()
        d = self.start(self.token_request(token))
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.failureResultOf(d, ServiceUnavailable)

    def test_error_status(self) -> None:
        """A Keystone answering 500 is a 503."""
        self.keystone.broken = 500
        self.unavailable(self.token_request(self.member_token()))

    def test_unreachable(self) -> None:
        """A Keystone refusing connections is a 503 that names no token."""

        class Refusing:
            def request(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
                return Deferred.fromCoroutine(self._fail())

            async def _fail(self) -> Any:
                raise ConnectionRefusedError()

        self.resolver = keystone_identity(self.clock, self.keystone.config(), Refusing())
        token = self.member_token()
        error = self.unavailable(self.token_request(token))
        self.assertNotIn(token, error.message)
        self.assertIn("could not be reached", error.message)


class KeystoneSiteTests(SiteTestCase):
    """The API with the Keystone provider: 401s and 503s as a client sees them."""

    def make_identity(self) -> IIdentityResolver:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.keystone = FakeKeystone(self.clock)
        self.stub = self.keystone.client()
        return keystone_identity(self.clock, self.keystone.config(), self.stub)

    def ask(self, method: str, path: str, token: str | None = None, **headers: str) -> Any:
        if token is not None:
            headers["X-Auth-Token"] = token
        d = self.client.request(method, "http://127.0.0.1:9292" + path,
                                headers={k: [v] for k, v in headers.items()})
        for _ in range(3):
            self.agent.flush()
            self.stub.flush()
        return self.successResultOf(d)

    def answer(self, method: str, path: str, token: str | None = None, **headers: str) -> Any:
        import treq

        response = self.ask(method, path, token, **headers)
        body = treq.json_content(response)
        self.agent.flush()
        return response, self.successResultOf(body)

    def test_no_token_401(self) -> None:
        """No token: a JSON 401 with WWW-Authenticate, even with identity headers."""
        for path in ("/v2/images", "/v1/images", "/v2/schemas/image", "/v2/info/stores"):
            response, body = self.answer("GET", path, None, **{"X-Roles": "admin",
                                                               "X-Project-Id": "admin"})
            self.assertEqual(response.code, 401, path)
            self.assertEqual(
                response.headers.getRawHeaders("WWW-Authenticate"),
                ['Keystone uri="http://keystone.test:5000"'],
            )
            self.assertEqual(body["error"]["code"], 401)

    def test_refusals_not_stored(self) -> None:
        """A 401 or 503 on a cacheable route tells caches not to store it."""
        response = self.ask("GET", "/v2/images")
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers.getRawHeaders("Cache-Control"), ["no-store"])
        self.keystone.broken = 500
        response = self.ask("GET", "/v2/images", "gAAAAsome")
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders("Cache-Control"), ["no-store"])

    def test_versions_open(self) -> None:
        """The versions document needs no token (clients discover with it)."""
        response = self.ask("GET", "/versions")
        self.assertIn(response.code, (200, 300))

    def test_projects_see_their_own(self) -> None:
        """Each project's token lists its own private images, not the other's."""
        one = self.keystone.issue("u-1", "p-one", ["member", "reader"])
        two = self.keystone.issue("u-2", "p-two", ["member", "reader"])
        for token, name in ((one, "one"), (two, "two")):
            import json as _json

            d = self.client.post(
                "http://127.0.0.1:9292/v2/images",
                data=_json.dumps({"name": name, "visibility": "private"}).encode(),
                headers={"X-Auth-Token": [token], "Content-Type": ["application/json"]},
            )
            for _ in range(3):
                self.agent.flush()
                self.stub.flush()
            self.assertEqual(self.successResultOf(d).code, 201)
        _, listing = self.answer("GET", "/v2/images", one, **{"X-Roles": "admin"})
        self.assertEqual([i["name"] for i in listing["images"]], ["one"])
        self.assertEqual(listing["images"][0]["owner"], "p-one")

    def test_upload_without_token(self) -> None:
        """An image-data upload, refused before its body: 401 with the challenge."""
        d = self.client.put(
            "http://127.0.0.1:9292/v2/images/" + "0" * 8 + "-0000-4000-8000-" + "0" * 12 + "/file",
            data=b"x" * 1000,
            headers={"Content-Type": ["application/octet-stream"], "X-Roles": ["admin"]},
        )
        for _ in range(3):
            self.agent.flush()
            self.stub.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 401)
        self.assertEqual(
            response.headers.getRawHeaders("WWW-Authenticate"),
            ['Keystone uri="http://keystone.test:5000"'],
        )
        self.assertEqual(self.keystone.validations, 0)

    def test_one_validation_per_request(self) -> None:
        """A v1 update asks who is asking twice; Keystone is asked once."""
        self.resolver_cache_off()
        token = self.keystone.issue("u-1", "p-one", ["member"])
        response, body = self.answer("POST", "/v1/images", token, **{"x-image-meta-name": "n"})
        self.assertEqual(response.code, 201)
        before = self.keystone.validations
        response, _ = self.answer(
            "PUT", f"/v1/images/{body['image']['id']}", token, **{"x-image-meta-name": "m"}
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(self.keystone.validations - before, 1)

    def resolver_cache_off(self) -> None:
        """Rebuild the site with token_cache_time = 0 (every request asks)."""
        from glance_tx.api.app import build_site
        from tests.memory_http import memory_client

        identity = keystone_identity(
            self.clock, self.keystone.config(token_cache_time=0), self.stub
        )
        self.site = build_site(
            registry=self.registry, stores=self.stores, runner=self.runner,
            image_size_cap=self.size_cap, default_project="admin",
            reactor=MemoryReactorClock(), identity=identity,
        )
        self.client, self.agent = memory_client(self.site)

    def test_keystone_down_503(self) -> None:
        """Keystone answering 500: the API answers 503 with Retry-After."""
        self.keystone.broken = 503
        response, body = self.answer("GET", "/v2/images", "gAAAAsome")
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders("Retry-After"), ["5"])
        self.assertNotIn("gAAAAsome", body["error"]["message"])

