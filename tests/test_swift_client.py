"""
Tests for L{glance_tx.store.swift_client}: Keystone v3 against an in-memory
Klein stand-in for Keystone (no Keystone is provisioned here), everything
else against the real one-node Swift that C{tools/run-tests} starts, checked
from the side with python-swiftclient.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from attrs import define, field
from klein import Klein
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IRequest
from zope.interface import implementer

from glance_tx.errors import NotFound, StoreError
from glance_tx.keystone_auth import PasswordCredentials
from glance_tx.store.swift_client import (
    KeystoneV3Auth,
    Segment,
    SwiftClient,
    SwiftSession,
    TempAuth,
)
from tests.swift_cluster import SwiftCluster, swift_cluster, unique_container


class ClusterTests(SynchronousTestCase):
    """The one-node Swift from C{tools/run-tests} is up and usable."""

    def test_object_round_trip(self) -> None:
        """
        swiftclient logs in with tempauth and puts, reads back and deletes
        an object: fails if the cluster did not start, or started without a
        working ring, memcached or tempauth.
        """
        connection = swift_cluster(self).connection()
        container = unique_container()
        connection.put_container(container)
        connection.put_object(container, "hello", b"hello, swift")
        headers, body = connection.get_object(container, "hello")
        self.assertEqual(body, b"hello, swift")
        self.assertEqual(headers["content-length"], "12")
        connection.delete_object(container, "hello")
        connection.delete_container(container)


# -- Keystone v3, against a stand-in ---------------------------------------------

CATALOG = [
    {"type": "identity", "endpoints": [{"interface": "public", "url": "http://ks/v3"}]},
    {
        "type": "object-store",
        "endpoints": [
            {"interface": "public", "region_id": "RegionOne", "url": "http://one/v1/AUTH_p"},
            {"interface": "internal", "region_id": "RegionOne", "url": "http://int/v1/AUTH_p"},
            {"interface": "public", "region_id": "RegionTwo", "url": "http://two/v1/AUTH_p"},
        ],
    },
]


@define
class FakeKeystone:
    """C{POST /v3/auth/tokens}: accepts one password and one app credential."""

    requests: list[dict[str, Any]] = field(factory=list)
    app = Klein()

    @app.route("/v3/auth/tokens", methods=["POST"])
    def tokens(self, request: IRequest) -> bytes:
        body = json.loads(request.content.read())  # type: ignore[attr-defined]
        self.requests.append(body)
        identity = body["auth"]["identity"]
        if identity["methods"] == ["password"]:
            ok = identity["password"]["user"]["password"] == "s3cret-password"
        else:
            ok = identity["application_credential"]["secret"] == "s3cret-app"
        if not ok:
            request.setResponseCode(401)
            return b'{"error": {"code": 401}}'
        request.setResponseCode(201)
        request.setHeader(b"X-Subject-Token", b"gAAAAtoken")
        document = {"token": {"expires_at": "2999-01-01T00:00:00.000000Z", "catalog": CATALOG}}
        return json.dumps(document).encode()


@define
class BridgingKeystone:
    """A Keystone stand-in whose token and catalog lead to a real Swift."""

    storage_url: str
    token: str
    requests: list[dict[str, Any]] = field(factory=list)
    app = Klein()

    @app.route("/v3/auth/tokens", methods=["POST"])
    def tokens(self, request: IRequest) -> bytes:
        self.requests.append(json.loads(request.content.read()))  # type: ignore[attr-defined]
        request.setResponseCode(201)
        request.setHeader(b"X-Subject-Token", self.token.encode())
        catalog = [
            {"type": "object-store", "endpoints": [{"interface": "public", "url": self.storage_url}]}
        ]
        return json.dumps({"token": {"expires_at": "2999-01-01T00:00:00Z", "catalog": catalog}}).encode()


class KeystoneV3Tests(SynchronousTestCase):
    """Logging in to Keystone v3 and finding Swift in the catalog."""

    def login(self, **kwargs: Any) -> tuple[SwiftSession, FakeKeystone]:
        keystone = FakeKeystone()
        http = StubTreq(keystone.app.resource())
        where = {k: kwargs.pop(k) for k in ("region", "interface", "endpoint") if k in kwargs}
        auth = KeystoneV3Auth("http://ks/v3", PasswordCredentials(**kwargs), **where)
        client = SwiftClient(http=http, auth=auth, clock=Clock(), store_name="obj")
        session = self.successResultOf(ensureDeferred(client.session()))
        return session, keystone

    def test_password_scoped_to_project(self) -> None:
        """
        A password login names the user, its domain and the project scope,
        and takes the token from X-Subject-Token and the public
        object-store endpoint: fails if the body or the catalog walk is
        wrong.
        """
        session, keystone = self.login(
            user="glance", password="s3cret-password", project="service",
            project_domain_name="Default",
        )
        self.assertEqual(session.token, "gAAAAtoken")
        self.assertEqual(session.storage_url, "http://one/v1/AUTH_p")
        [body] = keystone.requests
        self.assertEqual(
            body["auth"]["identity"]["password"]["user"],
            {"name": "glance", "password": "s3cret-password", "domain": {"id": "default"}},
        )
        self.assertEqual(
            body["auth"]["scope"],
            {"project": {"name": "service", "domain": {"name": "Default"}}},
        )

    def test_application_credential(self) -> None:
        """An application credential logs in with its id and secret, unscoped."""
        session, keystone = self.login(
            application_credential_id="ac1", application_credential_secret="s3cret-app"
        )
        self.assertEqual(session.token, "gAAAAtoken")
        [body] = keystone.requests
        self.assertEqual(body["auth"]["identity"]["methods"], ["application_credential"])
        self.assertNotIn("scope", body["auth"])

    def test_interface_and_region(self) -> None:
        """
        C{interface} and C{region} choose among the object-store endpoints
        (glance_store's C{swift_store_endpoint_type} and C{swift_store_region}).
        """
        session, _ = self.login(user="u", password="s3cret-password", interface="internal")
        self.assertEqual(session.storage_url, "http://int/v1/AUTH_p")
        session, _ = self.login(user="u", password="s3cret-password", region="RegionTwo")
        self.assertEqual(session.storage_url, "http://two/v1/AUTH_p")

    def test_endpoint_override(self) -> None:
        """C{endpoint} (C{swift_store_endpoint}) replaces the catalog's URL."""
        session, _ = self.login(
            user="u", password="s3cret-password", endpoint="http://x/v1/AUTH_q"
        )
        self.assertEqual(session.storage_url, "http://x/v1/AUTH_q")

    def test_no_endpoint(self) -> None:
        """A catalog without the wanted endpoint is a StoreError saying so."""
        keystone = FakeKeystone()
        auth = KeystoneV3Auth(
            "http://ks/v3", PasswordCredentials(user="u", password="s3cret-password"),
            region="Nowhere",
        )
        client = SwiftClient(
            http=StubTreq(keystone.app.resource()), auth=auth, clock=Clock(), store_name="obj"
        )
        failure = self.failureResultOf(ensureDeferred(client.session()), StoreError)
        self.assertIn("no public object-store endpoint in region Nowhere", failure.value.message)
        self.assertIn("'obj'", failure.value.message)

    def test_refused_credentials_not_in_error(self) -> None:
        """
        A wrong password is a StoreError naming the store; neither the
        password nor the application credential secret appears in it.
        """
        for kwargs in (
            {"user": "u", "password": "wrong-s3cret-password"},
            {"application_credential_id": "ac1", "application_credential_secret": "wrong-s3cret"},
        ):
            keystone = FakeKeystone()
            client = SwiftClient(
                http=StubTreq(keystone.app.resource()),
                auth=KeystoneV3Auth("http://ks/v3", PasswordCredentials(**kwargs)),
                clock=Clock(),
                store_name="obj",
            )
            failure = self.failureResultOf(ensureDeferred(client.session()), StoreError)
            self.assertIn("refused the credentials", failure.value.message)
            self.assertNotIn("s3cret", failure.value.message)
            self.assertNotIn("s3cret", repr(client))


@define
class CountingAuth:
    """Hands out a new token for each login, good for 100 seconds."""

    logins: list[Deferred[None]] = field(factory=list)

    async def login(self, http: Any, now: float) -> SwiftSession:
        d: Deferred[None] = Deferred()
        self.logins.append(d)
        await d
        return SwiftSession("http://swift/v1/AUTH_x", f"tk{len(self.logins)}", now + 100)


class SessionTests(SynchronousTestCase):
    """When the client logs in."""

    def test_renewed_before_expiry_and_coalesced(self) -> None:
        """
        Callers waiting at once share one login; the token is reused until
        less than a minute of it is left, then renewed: fails if every
        request logged in, or if an expiring token were used to the end.
        """
        auth, clock = CountingAuth(), Clock()
        client = SwiftClient(http=None, auth=auth, clock=clock, store_name="obj")  # type: ignore[arg-type]
        first = ensureDeferred(client.session())
        second = ensureDeferred(client.session())
        self.assertEqual(len(auth.logins), 1)
        auth.logins[0].callback(None)
        self.assertEqual(self.successResultOf(first).token, "tk1")
        self.assertEqual(self.successResultOf(second).token, "tk1")
        clock.advance(39)
        self.assertEqual(self.successResultOf(ensureDeferred(client.session())).token, "tk1")
        clock.advance(2)  # 59 s left
        renewed = ensureDeferred(client.session())
        self.assertEqual(len(auth.logins), 2)
        auth.logins[1].callback(None)
        self.assertEqual(self.successResultOf(renewed).token, "tk2")


# -- The streamed body --------------------------------------------------------------


@implementer(IConsumer)
# -- Against the real Swift ----------------------------------------------------------


@define
class FirstTokenWrong:
    """Logs in for real, but hands out a wrong token the first time."""

    auth: TempAuth
    logins: int = 0

    async def login(self, http: Any, now: float) -> SwiftSession:
        session = await self.auth.login(http, now)
        self.logins += 1
        if self.logins == 1:
            return SwiftSession(session.storage_url, "AUTH_tk" + "0" * 32, session.expires)
        return session


class SwiftClientTests(TestCase):
    """L{SwiftClient} against the one-node Swift."""

    def setUp(self) -> None:
        self.cluster: SwiftCluster = swift_cluster(self)
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        self.container = unique_container()
        self.connection = self.cluster.connection()
        self.addCleanup(self._remove_container)

    def _remove_container(self) -> None:
        from swiftclient.exceptions import ClientException

        for container in (self.container, self.container + "_segments"):
            try:
                _, objects = self.connection.get_container(container)
                for entry in objects:
                    self.connection.delete_object(container, entry["name"])
                self.connection.delete_container(container)
            except ClientException:
                pass

    def client(self, auth: Any = None, key: str | None = None) -> SwiftClient:
        auth = auth or TempAuth(
            self.cluster.auth_url, self.cluster.user, key or self.cluster.key
        )
        return SwiftClient(http=self.http, auth=auth, clock=reactor, store_name="obj")  # type: ignore[arg-type]

    async def test_streamed_put_ranged_get_head_list_delete(self) -> None:
        """
        A PUT fed in pieces stores them all (chunked, no length given); a
        ranged GET returns just that range; HEAD gives the size; the
        listing names it; DELETE removes it and a second DELETE says it
        was gone: fails if any call is wired wrongly.
        """
        client = self.client()
        await client.create_container(self.container)
        session = await client.session()
        put = client.put_object_streaming(session, self.container, "img")
        for piece in (b"0123", b"4567", b"89"):
            await put.body.send([piece])
        etag = await client.finish_put(put, "writing img")
        self.assertEqual(len(etag or ""), 32)
        _, body = self.connection.get_object(self.container, "img")
        self.assertEqual(body, b"0123456789")

        response = await client.get_object(self.container, "img", 2, 5)
        assert response is not None
        self.assertEqual(response.code, 206)
        self.assertEqual(await treq.content(response), b"23456")
        self.assertIsNone(await client.get_object(self.container, "img", 10))
        headers = await client.head_object(self.container, "img")
        self.assertEqual(headers["content-length"], "10")
        self.assertEqual(await client.list_objects(self.container), ["img"])
        self.assertTrue(await client.delete_object(self.container, "img"))
        self.assertFalse(await client.delete_object(self.container, "img"))

    async def test_cancelled_put_stores_nothing(self) -> None:
        """
        Cancelling a streamed PUT mid-body leaves no object: the property
        every abort relies on.
        """
        client = self.client()
        await client.create_container(self.container)
        put = client.put_object_streaming(await client.session(), self.container, "img")
        await put.body.send([b"x" * 100_000])
        put.body.fail(CancelledError("upload cancelled"))
        with self.assertRaises(StoreError):
            await client.put_answer(put, "writing img")
        self.assertEqual(self.connection.get_container(self.container)[1], [])

    async def test_static_large_object(self) -> None:
        """
        A manifest over two segments reads back as their concatenation,
        and the manifest delete removes the segments too (checked with
        swiftclient).
        """
        client = self.client()
        segments_container = self.container + "_segments"
        await client.create_container(self.container)
        await client.create_container(segments_container)
        segments = []
        for i, data in enumerate((b"a" * 7, b"b" * 3)):
            put = client.put_object_streaming(
                await client.session(), segments_container, f"img/{i:08d}"
            )
            await put.body.send([data])
            etag = await client.finish_put(put, "writing a segment")
            segments.append(Segment(segments_container, f"img/{i:08d}", etag, len(data)))
        await client.put_manifest(self.container, "img", segments)
        _, body = self.connection.get_object(self.container, "img")
        self.assertEqual(body, b"a" * 7 + b"b" * 3)
        response = await client.get_object(self.container, "img", 5, 4)
        assert response is not None
        self.assertEqual(await treq.content(response), b"aabb")

        self.assertTrue(await client.delete_object(self.container, "img", large=True))
        self.assertEqual(self.connection.get_container(segments_container)[1], [])
        self.assertEqual(self.connection.get_container(self.container)[1], [])
        self.assertFalse(await client.delete_object(self.container, "img", large=True))

    async def test_missing_object_is_not_found(self) -> None:
        """A GET or HEAD of a missing object is NotFound, not a StoreError 503."""
        client = self.client()
        await client.create_container(self.container)
        with self.assertRaises(NotFound):
            await client.get_object(self.container, "nothing")
        with self.assertRaises(NotFound):
            await client.head_object(self.container, "nothing")

    async def test_invalid_token_logs_in_again_once(self) -> None:
        """
        Swift's 401 for a token it does not know makes the client log in
        again and retry the request once, successfully: fails if an expired
        token broke the store until restart.
        """
        auth = FirstTokenWrong(TempAuth(self.cluster.auth_url, self.cluster.user, self.cluster.key))
        client = self.client(auth)
        await client.create_container(self.container)
        self.assertEqual(auth.logins, 2)
        self.assertEqual(await client.list_objects(self.container), [])
        self.assertEqual(auth.logins, 2)

    async def test_keystone_v3_to_real_swift(self) -> None:
        """
        A Keystone v3 login (to a stand-in on a real socket whose catalog
        names the one-node Swift and whose token is a tempauth token) gives
        a session the client stores and reads objects with: the v3 path
        from login to Swift request, end to end.
        """
        from swiftclient.client import get_auth
        from twisted.web.server import Site

        storage_url, token = get_auth(self.cluster.auth_url, self.cluster.user, self.cluster.key)
        keystone = BridgingKeystone(storage_url, token)
        port = reactor.listenTCP(0, Site(keystone.app.resource()), interface="127.0.0.1")  # type: ignore[attr-defined,arg-type]
        self.addCleanup(port.stopListening)
        auth = KeystoneV3Auth(
            auth_address=f"http://127.0.0.1:{port.getHost().port}/v3",  # type: ignore[attr-defined]
            credentials=PasswordCredentials(
                user="glance", password="s3cret-password", project="service"
            ),
        )
        client = self.client(auth)
        await client.create_container(self.container)
        await client.put_object(self.container, "img", b"via keystone", "writing img")
        _, body = self.connection.get_object(self.container, "img")
        self.assertEqual(body, b"via keystone")
        self.assertEqual(len(keystone.requests), 1)

    async def test_errors_carry_no_credentials(self) -> None:
        """
        A wrong key, and a failed request with a good token, are
        StoreErrors naming the store; neither carries the key or the token.
        """
        wrong = self.client(key="not-the-key-" + self.cluster.key)
        with self.assertRaises(StoreError) as caught:
            await wrong.create_container(self.container)
        message = caught.exception.message
        self.assertIn("'obj'", message)
        self.assertIn("refused the credentials", message)
        self.assertNotIn(self.cluster.key, message)

        client = self.client()
        session = await client.session()
        with self.assertRaises(StoreError) as caught:
            # A container name Swift refuses (over 256 bytes).
            await client.create_container("x" * 300)
        message = caught.exception.message
        self.assertIn("'obj'", message)
        self.assertNotIn(session.token, message)
        self.assertNotIn(self.cluster.key, message)
        self.assertNotIn(session.token, repr(session))


