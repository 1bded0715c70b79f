"""
Tests for L{glance_tx.registry.server} and L{glance_tx.registry.client} in
memory: the server's routes, errors and token check through C{StubTreq};
the whole IRegistry contract through client and server over a synchronous
SQLite registry; and the client's time bounds and retries on a L{Clock}.
(Real sockets: C{tests.test_registry_http}.)
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any
from urllib.parse import quote

from attrs import define, field
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived
from zope.interface import implementer
from zope.interface.verify import verifyObject

from glance_tx.errors import (
    BadRequest,
    NotFound,
    ServiceUnavailable,
    StoreError,
)
from glance_tx.images import QUEUED, SAVING, Image, ImageQuery, ImageUpdate
from glance_tx.registry import wire
from glance_tx.registry.client import HTTPRegistryClient
from glance_tx.registry.interface import IRegistry
from glance_tx.registry.server import RegistryServer
from tests.metadef_conformance import MetadefConformanceMixin
from tests.registry_conformance import RegistryConformanceMixin, make_image
from tests.test_registry_sql import sync_open

BASE = "http://registry.example"
TOKEN = "s3cret-token"


def stub(server: RegistryServer) -> Any:
    """An in-memory treq for C{server} (typed loosely: StubTreq's methods
    are set at run time)."""
    return StubTreq(server.resource())


def agent_for(server: RegistryServer) -> RequestTraversalAgent:
    """An in-memory agent for C{server}: what L{HTTPRegistryClient} sends with."""
    return RequestTraversalAgent(server.resource())


def open_memory_registry(case: SynchronousTestCase) -> Any:
    registry = sync_open("sqlite://")
    case.addCleanup(lambda: case.successResultOf(registry.close()))
    return registry


class StubConformanceTests(RegistryConformanceMixin, SynchronousTestCase):
    """
    The whole IRegistry contract through the HTTP client and the server,
    in memory, over SQLite: whatever the wire loses or changes fails here.
    """

    def make_registry(self) -> HTTPRegistryClient:
        server = RegistryServer(open_memory_registry(self), token=TOKEN)
        return HTTPRegistryClient(
            agent=agent_for(server), url=BASE, clock=Clock(), token=TOKEN
        )


class StubMetadefConformanceTests(MetadefConformanceMixin, SynchronousTestCase):
    """
    The IMetadefRegistry contract through the HTTP client and the server,
    in memory, over SQLite: whatever the wire loses or changes fails here.
    """

    make_registry = StubConformanceTests.make_registry


@implementer(IRegistry)
@define
class FailingRegistry:
    """A registry whose every call fails with C{error} (or never answers)."""

    error: Exception | None = None
    pending: list[Deferred[Any]] = field(factory=list)

    def _answer(self, *args: Any, **kwargs: Any) -> Deferred[Any]:
        if self.error is None:
            d: Deferred[Any] = Deferred()
            self.pending.append(d)
            return d
        error = self.error
        d = Deferred()
        d.errback(error)
        return d

    create = get = list = update = delete = all_locations = _answer
    add_tag = remove_tag = add_member = get_member = list_members = _answer
    update_member = remove_member = ping = _answer
    hold_uploads = release_upload = reclaim_uploads = _answer
    claim_node = release_node = project_usage = _answer
    create_task = get_task = list_tasks = update_task = delete_expired_tasks = _answer


class ServerTests(SynchronousTestCase):
    """The Registry API as an HTTP client without our client class sees it."""

    def setUp(self) -> None:
        self.registry = open_memory_registry(self)
        self.http: Any = StubTreq(RegistryServer(self.registry, token=TOKEN).resource())
        self.auth = {b"Authorization": [b"Bearer " + TOKEN.encode()]}

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        kwargs.setdefault("headers", self.auth)
        response = self.successResultOf(
            self.http.request(method, BASE + path, **kwargs)
        )
        body = self.successResultOf(response.content())
        return response.code, response.headers, json.loads(body) if body else None

    def test_token_required(self) -> None:
        """
        Without the token, or with a wrong one (even one that shares a
        prefix), every route but the health check is a 401 JSON error with
        a WWW-Authenticate challenge, and the registry is not touched.
        """
        image = self.successResultOf(self.registry.create(make_image()))
        for headers in (
            {},
            {b"Authorization": [b"Bearer wrong"]},
            {b"Authorization": [b"Bearer " + TOKEN.encode() + b"x"]},
            {b"Authorization": [TOKEN.encode()]},
        ):
            code, response_headers, body = self.call(
                "DELETE", f"/images/{image.id}", headers=headers
            )
            self.assertEqual(code, 401)
            self.assertEqual(body["error"]["code"], 401)
            self.assertTrue(response_headers.hasHeader(b"WWW-Authenticate"))
        self.assertEqual(self.successResultOf(self.registry.get(image.id)), image)
        self.assertEqual(self.call("GET", "/healthcheck", headers={})[0], 200)
        self.assertEqual(self.call("GET", f"/images/{image.id}")[0], 200)

    def test_open_without_token(self) -> None:
        """With no token configured, requests need no Authorization header."""
        http: Any = StubTreq(RegistryServer(self.registry).resource())
        response = self.successResultOf(http.get(BASE + "/images/detail"))
        self.assertEqual(response.code, 200)

    def test_image_crud(self) -> None:
        """
        POST creates (201, the stored record), GET fetches, PUT updates,
        DELETE deletes, each answering {"image": ...} in the wire format; a
        deleted image is found only with include_deleted=true.
        """
        image = make_image(name="a")
        code, _, body = self.call(
            "POST", "/images", json={"image": wire.encode_image(image)}
        )
        self.assertEqual((code, wire.decode_image(body["image"])), (201, image))
        code, headers, body = self.call("GET", f"/images/{image.id}")
        self.assertEqual((code, wire.decode_image(body["image"])), (200, image))
        self.assertEqual(headers.getRawHeaders(b"Content-Type"), [b"application/json"])
        update = {"update": {"fields": {"name": "b"}}, "expected_status": ["queued"]}
        code, _, body = self.call("PUT", f"/images/{image.id}", json=update)
        self.assertEqual((code, body["image"]["name"]), (200, "b"))
        code, _, body = self.call("DELETE", f"/images/{image.id}")
        self.assertEqual((code, body["image"]["status"]), (200, "deleted"))
        self.assertEqual(self.call("GET", f"/images/{image.id}")[0], 404)
        code, _, body = self.call(
            "GET", f"/images/{image.id}", params={"include_deleted": "true"}
        )
        self.assertEqual((code, body["image"]["deleted"]), (200, True))

    def test_listings(self) -> None:
        """
        /images/detail lists full records and /images the brief fields, both
        with the encoded query's filters, order and limit applied.
        """
        images = [
            self.successResultOf(self.registry.create(make_image(name=n, size=s)))
            for n, s in [("x", 3), ("x", 1), ("y", 2)]
        ]
        query = ImageQuery(filters={"name": "x"}, sort=(("size", "asc"),), limit=5)
        params = {"query": json.dumps(wire.encode_query(query))}
        code, _, body = self.call("GET", "/images/detail", params=params)
        self.assertEqual(code, 200)
        self.assertEqual(
            [wire.decode_image(i) for i in body["images"]], [images[1], images[0]]
        )
        code, _, body = self.call("GET", "/images", params=params)
        self.assertEqual(set(body["images"][0]), set(wire.BRIEF_FIELDS))
        self.assertEqual(
            [i["id"] for i in body["images"]], [images[1].id, images[0].id]
        )

    def test_errors_carry_their_class(self) -> None:
        """
        Refusals are JSON error documents naming the error's class: 404 for
        an unknown image, 409 for a duplicate, 400 for a bad query, a bad
        body or a record failing validation.
        """
        image = self.successResultOf(self.registry.create(make_image()))
        cases: list[tuple[str, str, dict[str, Any], int, str]] = [
            ("GET", f"/images/{make_image().id}", {}, 404, "NotFound"),
            (
                "POST",
                "/images",
                {"json": {"image": wire.encode_image(image)}},
                409,
                "Conflict",
            ),
            ("GET", "/images/detail", {"params": {"query": "{"}}, 400, "BadRequest"),
            (
                "GET",
                "/images/detail",
                {"params": {"query": '{"limit": -1}'}},
                400,
                "BadRequest",
            ),
            ("POST", "/images", {"data": b"not json"}, 400, "BadRequest"),
            ("POST", "/images", {"json": {"image": {"id": "x"}}}, 400, "BadRequest"),
            (
                "PUT",
                f"/images/{image.id}",
                {"json": {"update": {"fields": {"id": 1}}}},
                400,
                "BadRequest",
            ),
        ]
        for method, path, kwargs, status, kind in cases:
            code, _, body = self.call(method, path, **kwargs)
            self.assertEqual(
                (code, body["error"]["type"]), (status, kind), (method, path)
            )
            self.assertEqual(body["error"]["code"], status)

    def test_store_error_and_unavailable_stay_apart(self) -> None:
        """
        StoreError and ServiceUnavailable both answer 503, but the body names
        which one, and the client raises that one.
        """
        for error in (StoreError("disk"), ServiceUnavailable("database down")):
            server = RegistryServer(FailingRegistry(error))
            client = HTTPRegistryClient(agent_for(server), BASE, Clock())
            failure = self.failureResultOf(client.get(make_image().id))
            self.assertIs(type(failure.value), type(error))
            self.assertEqual(failure.value.message, error.message)

    def test_unexpected_failure_is_a_500(self) -> None:
        """A bug in the registry is a 500 error document, not a traceback page."""
        server = RegistryServer(FailingRegistry(ZeroDivisionError("oops")))
        response = self.successResultOf(stub(server).get(BASE + "/images/detail"))
        self.assertEqual(response.code, 500)
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual(body["error"]["type"], "GlanceError")
        self.assertNotIn("oops", body["error"]["message"])
        self.flushLoggedErrors(ZeroDivisionError)

    def test_hostile_json(self) -> None:
        """
        A body nested 100,000 deep (a query 40 deep: a URL is short), not
        JSON or not UTF-8 is a 400 error document saying which, and the
        registry is not touched.
        """
        deep = b"[" * 100_000 + b"]" * 100_000
        less_deep = "[" * 40 + "]" * 40
        for method, path, body, says in (
            ("POST", "/images", deep, "nested deeper than 32"),
            ("POST", "/images", b"{", "Malformed JSON in request body"),
            ("POST", "/images", b'{"image": "\xff"}', "not UTF-8"),
            ("GET", "/images?query=" + quote(less_deep), None, "nested deeper than 32"),
            ("GET", "/images?query=%7B", None, "Malformed JSON in the query parameter"),
        ):
            code, _, answer = self.call(method, path, data=body)
            self.assertEqual(code, 400, (method, path[:20], body and body[:20]))
            self.assertIn(says, answer["error"]["message"])
            self.assertEqual(answer["error"]["type"], "BadRequest")
        self.assertEqual(self.successResultOf(self.registry.list(ImageQuery())), [])

    def test_unknown_route(self) -> None:
        """An unknown path is a 404 JSON error, a wrong method a 405."""
        self.assertEqual(self.call("GET", "/nonesuch")[0], 404)
        self.assertEqual(self.call("PATCH", "/images")[0], 405)

    def test_pending_deletes_needs_seconds(self) -> None:
        """C{older_than} must be a finite number of seconds, 0 or more (400)."""
        for query in ("", "?older_than=soon", "?older_than=-1", "?older_than=inf"):
            code, _, body = self.call("GET", "/pending-deletes" + query)
            self.assertEqual(code, 400, query)
            self.assertIn("older_than", body["error"]["message"])
        self.assertEqual(self.call("GET", "/pending-deletes?older_than=0")[2], {"images": []})

    def test_tags_and_members_with_awkward_names(self) -> None:
        """
        Tags and member ids with slashes, spaces, percent signs and unicode
        reach the registry intact through their quoted path segment.
        """
        image = self.successResultOf(self.registry.create(make_image()))
        tag = "a/b c%2F☃?#"
        code, _, body = self.call(
            "PUT", f"/images/{image.id}/tags/{quote(tag, safe='')}"
        )
        self.assertEqual((code, body["image"]["tags"]), (200, [tag]))
        member = "proj/1 %"
        code, _, body = self.call(
            "POST", f"/images/{image.id}/members", json={"member_id": member}
        )
        self.assertEqual((code, body["member"]["member_id"]), (201, member))
        path = f"/images/{image.id}/members/{quote(member, safe='')}"
        code, _, body = self.call("PUT", path, json={"status": "accepted"})
        self.assertEqual((code, body["member"]["status"]), (200, "accepted"))
        self.assertEqual(self.call("DELETE", path)[0], 204)
        self.assertEqual(self.call("GET", path)[0], 404)

    def test_healthcheck_reports_registry_failure(self) -> None:
        """The health check is a 503 naming the error when the registry fails."""
        server = RegistryServer(FailingRegistry(ServiceUnavailable("db down")))
        response = self.successResultOf(stub(server).get(BASE + "/healthcheck"))
        self.assertEqual(response.code, 503)
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual(body["error"]["type"], "ServiceUnavailable")


@define
class FlakyAgent:
    """
    An agent that refuses the first C{failures} connections, then passes
    requests on to C{agent}; records each method.
    """

    agent: Any
    failures: int
    methods: list[str] = field(factory=list)

    def request(
        self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None
    ) -> Deferred[Any]:
        self.methods.append(method.decode("ascii"))
        if self.failures > 0:
            self.failures -= 1
            d: Deferred[Any] = Deferred()
            d.errback(ConnectionRefusedError("refused"))
            return d
        result: Deferred[Any] = self.agent.request(method, uri, headers, bodyProducer)
        return result


@define
class LosingAgent:
    """
    An agent whose first C{losses} requests reach the registry (and are
    applied) but whose answers are lost, as when the connection drops
    between the registry's commit and its response; records each method.
    """

    agent: Any
    losses: int
    methods: list[str] = field(factory=list)

    def request(
        self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None
    ) -> Deferred[Any]:
        self.methods.append(method.decode("ascii"))
        result: Deferred[Any] = self.agent.request(method, uri, headers, bodyProducer)
        if self.losses > 0:
            self.losses -= 1

            def lost(response: Any) -> Any:
                raise ResponseNeverReceived([Failure(ConnectionLost("gone"))])

            result.addCallback(lost)
        return result


class ClientTests(SynchronousTestCase):
    """The client's time bound, retries and token, on a Clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = open_memory_registry(self)
        self.agent = agent_for(RegistryServer(self.registry, token=TOKEN))

    def client(self, agent: Any, **kwargs: Any) -> HTTPRegistryClient:
        kwargs.setdefault("token", TOKEN)
        return HTTPRegistryClient(agent=agent, url=BASE + "/", clock=self.clock, **kwargs)

    def test_provides_interface(self) -> None:
        """The client provides IRegistry."""
        self.assertTrue(verifyObject(IRegistry, self.client(self.agent)))

    def test_unchanged_images_are_decoded_once(self) -> None:
        """
        An image read again through the client, unchanged, is the record
        decoded the first time (a listing or a get alike), and the server
        sends the JSON it made for it then; a change to the image, its
        tags or its properties gives a new record, fresh; as does a delete.
        """
        server = RegistryServer(self.registry, token=TOKEN)
        client = self.client(agent_for(server))
        made = [
            self.successResultOf(self.registry.create(make_image(name=f"i{n}")))
            for n in range(3)
        ]
        query = ImageQuery(sort=(("name", "asc"),))
        first = self.successResultOf(client.list(query))
        self.assertEqual(first, made)
        from glance_tx.registry import client as client_module

        parsed: list[bytes] = []
        decode = client_module._decode_form

        def counted(form: bytes) -> Image:
            parsed.append(form)
            return decode(form)

        self.patch(client_module, "_decode_form", counted)
        second = self.successResultOf(client.list(query))
        for before, after in zip(first, second, strict=True):
            self.assertIs(after, before)
        self.assertEqual(parsed, [])
        self.assertIs(self.successResultOf(client.get(made[0].id)), first[0])
        self.assertIs(server._encoded(first[0]), server._encoded(first[0]))
        self.successResultOf(self.registry.update(made[0].id, ImageUpdate(properties={"p": "1"})))
        self.successResultOf(self.registry.add_tag(made[1].id, "t"))
        self.successResultOf(self.registry.delete(made[2].id))
        third = self.successResultOf(client.list(query))
        self.assertEqual(len(parsed), 2)  # the two changed; the deleted one is gone
        self.assertEqual([i.id for i in third], [made[0].id, made[1].id])
        self.assertEqual(third[0].properties, {"p": "1"})
        self.assertEqual(third[1].tags, {"t"})
        self.assertEqual(third, [self.successResultOf(self.registry.get(m.id)) for m in made[:2]])

    def test_slow_registry_times_out(self) -> None:
        """
        A registry that never answers fails the call with ServiceUnavailable
        once the timeout passes, not before, and nothing is left waiting.
        """
        slow = FailingRegistry()
        d = self.client(agent_for(RegistryServer(slow)), timeout=3).get(make_image().id)
        self.clock.advance(2.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        failure = self.failureResultOf(d, ServiceUnavailable)
        self.assertIn("did not answer within 3s", failure.value.message)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_idempotent_requests_retried_after_refusal(self) -> None:
        """
        A GET, PUT or DELETE whose connection was refused is sent again
        after retry_delay and succeeds if the registry answers then.
        """
        image = self.successResultOf(self.registry.create(make_image()))
        for method, call in (
            ("GET", lambda c: c.get(image.id)),
            ("PUT", lambda c: c.add_tag(image.id, "t")),
            ("DELETE", lambda c: c.remove_tag(image.id, "t")),
        ):
            flaky = FlakyAgent(self.agent, failures=1)
            d = call(self.client(flaky, retry_delay=0.5))
            self.assertNoResult(d)
            self.clock.advance(0.5)
            self.successResultOf(d)
            self.assertEqual(flaky.methods, [method, method])

    def test_conditional_writes_repeated_after_a_lost_answer(self) -> None:
        """
        An update or delete conditional on what was read, applied by the
        registry but its answer lost, is sent again and succeeds, applied
        once: the repeat is known by its write_id, not refused for failing
        its own expected_version or expected_status (nor a delete for
        finding the image gone).
        """
        image = self.successResultOf(self.registry.create(make_image()))
        calls = [
            lambda c: c.update(
                image.id,
                ImageUpdate(fields={"status": SAVING}),
                expected_status=frozenset({QUEUED}),
                expected_version=1,
            ),
            lambda c: c.update(
                image.id, ImageUpdate(properties={"n": "1"}), expected_version=2
            ),
            lambda c: c.delete(image.id, expected_version=3),
        ]
        for version, call in enumerate(calls, start=2):
            losing = LosingAgent(self.agent, losses=1)
            d = call(self.client(losing, retry_delay=0.5))
            self.assertNoResult(d)
            self.clock.advance(0.5)
            answered = self.successResultOf(d)
            self.assertEqual(losing.methods[0], losing.methods[1])
            self.assertEqual(len(losing.methods), 2)
            self.assertEqual(answered.version, version)
            stored = self.successResultOf(self.registry.get(image.id, include_deleted=True))
            self.assertEqual(stored, answered)
        self.assertTrue(stored.deleted)
        self.assertEqual(stored.properties, {"n": "1"})

    def test_removals_repeated_after_a_lost_answer(self) -> None:
        """
        A tag or membership removal applied by the registry but its answer
        lost is sent again with the same write_id and succeeds, as the
        first did, instead of answering NotFound for what it removed; a
        new removal of the absent tag or member is still NotFound.
        """
        image = self.successResultOf(
            self.registry.create(make_image(tags={"t"}, visibility="shared"))
        )
        self.successResultOf(self.registry.add_member(image.id, "p"))
        for call in (
            lambda c: c.remove_tag(image.id, "t"),
            lambda c: c.remove_member(image.id, "p"),
        ):
            losing = LosingAgent(self.agent, losses=1)
            d = call(self.client(losing, retry_delay=0.5))
            self.assertNoResult(d)
            self.clock.advance(0.5)
            self.successResultOf(d)
            self.assertEqual(losing.methods, ["DELETE", "DELETE"])
            self.failureResultOf(call(self.client(self.agent)), NotFound)
        stored = self.successResultOf(self.registry.get(image.id))
        self.assertEqual((stored.tags, stored.version), (frozenset(), 2))
        self.failureResultOf(self.registry.get_member(image.id, "p"), NotFound)

    def test_post_never_retried(self) -> None:
        """A POST whose connection failed is not sent again: ServiceUnavailable."""
        flaky = FlakyAgent(self.agent, failures=1)
        image = make_image()
        failure = self.failureResultOf(self.client(flaky).create(image))
        self.assertIsInstance(failure.value, ServiceUnavailable)
        self.assertIn("unreachable", failure.value.message)
        self.assertEqual(flaky.methods, ["POST"])
        self.failureResultOf(self.registry.get(image.id), NotFound)

    def test_retries_bounded(self) -> None:
        """
        A registry refusing every connection fails an idempotent call after
        1 + retries attempts with ServiceUnavailable.
        """
        flaky = FlakyAgent(self.agent, failures=100)
        d = self.client(flaky, retries=2, retry_delay=1).get(make_image().id)
        self.clock.advance(1)
        self.clock.advance(1)
        self.failureResultOf(d, ServiceUnavailable)
        self.assertEqual(flaky.methods, ["GET"] * 3)

    def test_wrong_token_is_unavailable(self) -> None:
        """
        A registry refusing this node's token is ServiceUnavailable (the
        node is misconfigured), never passed on as the caller's 401.
        """
        failure = self.failureResultOf(
            self.client(self.agent, token="wrong").get(make_image().id)
        )
        self.assertIsInstance(failure.value, ServiceUnavailable)
        self.assertIn("registry_token", failure.value.message)

    def test_unencodable_path_is_bad_request(self) -> None:
        """An id or tag that cannot be a path segment is a BadRequest, sent nowhere."""
        flaky = FlakyAgent(self.agent, failures=0)
        self.failureResultOf(self.client(flaky).get(""), BadRequest)
        self.failureResultOf(
            self.client(flaky).add_tag(make_image().id, ""), BadRequest
        )
        self.assertEqual(flaky.methods, [])


class APIThroughRegistryTests(SynchronousTestCase):
    """What an API node answers when its registry server is slow or down."""

    def site_over(self, registry: Any, clock: Clock) -> Any:
        from glance_tx.api.app import build_site
        from glance_tx.store.backends import StoreMap
        from glance_tx.store.filesystem import FilesystemStore
        from glance_tx.threads import SynchronousRunner
        from tests.memory_http import memory_client

        runner = SynchronousRunner()
        client = HTTPRegistryClient(
            agent_for(RegistryServer(registry, token=TOKEN)), BASE, clock, token=TOKEN
        )
        store_dir = self.mktemp()
        os.makedirs(store_dir)
        stores = StoreMap({"file": FilesystemStore(store_dir, runner)}, "file")
        site = build_site(
            registry=client,
            stores=stores,
            runner=runner,
            image_size_cap=1 << 30,
            default_project="admin",
            reactor=MemoryReactorClock(),
        )
        return memory_client(site)

    def test_slow_registry_is_503_with_retry_after(self) -> None:
        """
        With the registry not answering, v1 and v2 requests are answered 503
        with Retry-After and the JSON error once registry_client_timeout
        passes: no hang, no 500.
        """
        clock = Clock()
        http, agent = self.site_over(FailingRegistry(), clock)
        for path in (
            "/v2/images",
            f"/v2/images/{make_image().id}",
            "/v1/images/detail",
        ):
            d = http.get("http://api.example" + path)
            agent.flush()
            self.assertNoResult(d)
            clock.advance(5)
            agent.flush()
            response = self.successResultOf(d)
            self.assertEqual(response.code, 503, path)
            self.assertEqual(response.headers.getRawHeaders(b"Retry-After"), [b"5"])
            body = self.successResultOf(response.content())
            agent.flush()
            self.assertIn("did not answer", json.loads(body)["error"]["message"])

    def test_api_over_registry_server(self) -> None:
        """
        An image created through the API over the HTTP registry is stored
        in the registry behind the server, and listed back through the API.
        """
        registry = open_memory_registry(self)
        http, agent = self.site_over(registry, Clock())
        d = http.post(
            "http://api.example/v2/images",
            json={
                "name": "over-http",
                "disk_format": "raw",
                "container_format": "bare",
            },
        )
        agent.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 201)
        listed = self.successResultOf(registry.list(ImageQuery()))
        self.assertEqual([i.name for i in listed], ["over-http"])
        d = http.get("http://api.example/v2/images")
        agent.flush()
        body = self.successResultOf(self.successResultOf(d).content())
        self.assertEqual([i["name"] for i in json.loads(body)["images"]], ["over-http"])


@define
class HeaderRecorder:
    """An agent that records each request's headers and passes it on."""

    agent: Any
    headers: list[Any] = field(factory=list)

    def request(
        self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None
    ) -> Deferred[Any]:
        self.headers.append(headers)
        result: Deferred[Any] = self.agent.request(method, uri, headers, bodyProducer)
        return result


class RequestIdTests(SynchronousTestCase):
    """
    One request followed across nodes: the registry client sends the
    x-openstack-request-id of the API request it works for, and the
    registry server's log line names it.
    """

    def setUp(self) -> None:
        from glance_tx.api.app import build_site
        from glance_tx.registry.server import registry_site
        from glance_tx.store.backends import StoreMap
        from glance_tx.store.filesystem import FilesystemStore
        from glance_tx.threads import SynchronousRunner
        from tests.memory_http import SiteAgent, memory_client

        self.registry = open_memory_registry(self)
        self.registry_agent = SiteAgent(
            registry_site(RegistryServer(self.registry, token=TOKEN), MemoryReactorClock())
        )
        self.recorder = HeaderRecorder(self.registry_agent)
        client = HTTPRegistryClient(self.recorder, BASE, Clock(), token=TOKEN)
        runner = SynchronousRunner()
        store_dir = self.mktemp()
        os.makedirs(store_dir)
        self.api = build_site(
            registry=client,
            stores=StoreMap({"file": FilesystemStore(store_dir, runner)}, "file"),
            runner=runner,
            image_size_cap=1 << 30,
            default_project="admin",
            reactor=MemoryReactorClock(),
        )
        self.http, self.api_agent = memory_client(self.api)

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[Any, bytes, list[Any]]:
        """
        One API request, both sites pumped until it is answered: the
        response, its body, and the log events of both nodes meanwhile.
        """
        from twisted.logger import capturedLogs

        with capturedLogs() as events:
            d = self.http.request(method, "http://api.example" + path, **kwargs)
            for _ in range(20):
                self.api_agent.flush()
                self.registry_agent.flush()
            response = self.successResultOf(d)
            body_d = response.content()
            self.api_agent.flush()
            body = self.successResultOf(body_d)
        return response, body, list(events)

    def request_lines(self, events: list[Any]) -> list[Any]:
        return [e for e in events if "request_id" in e and "method" in e]

    def test_registry_log_names_the_api_request(self) -> None:
        """
        Every registry call a PATCH makes (the read, the write) carries the
        API request's id, and each of the registry's log lines names it
        after its own id; the API's own line names no caller.
        """
        created, body, _ = self.call(
            "POST", "/v2/images", json={"disk_format": "raw", "container_format": "bare"}
        )
        image_id = json.loads(body)["id"]
        self.recorder.headers.clear()
        response, body, events = self.call(
            "PATCH",
            f"/v2/images/{image_id}",
            data=b'[{"op": "replace", "path": "/name", "value": "x"}]',
            headers={"Content-Type": ["application/openstack-images-v2.1-json-patch"]},
        )
        self.assertEqual(response.code, 200, body)
        [api_id] = response.headers.getRawHeaders(b"x-openstack-request-id")
        sent = [h.getRawHeaders(b"x-openstack-request-id") for h in self.recorder.headers]
        self.assertEqual(sent, [[api_id]] * len(sent))
        self.assertGreaterEqual(len(sent), 2)
        lines = self.request_lines(events)
        registry_lines = [e for e in lines if e["uri"].startswith("/images/")]
        self.assertEqual(
            sorted(e["method"] for e in registry_lines), ["GET", "PUT"]
        )
        from twisted.logger import formatEvent

        for event in registry_lines:
            self.assertEqual(event["caller_request_id"], api_id.decode())
            self.assertNotEqual(event["request_id"], api_id.decode())
            self.assertIn(f" for {api_id.decode()} ", formatEvent(event))
        [api_line] = [e for e in lines if e["uri"].startswith("/v2/")]
        self.assertEqual(api_line["request_id"], api_id.decode())
        self.assertIsNone(api_line["caller_request_id"])

    def test_upload_calls_carry_the_id(self) -> None:
        """
        An upload's registry calls, started before the body arrives and
        finished after, carry the upload request's id too.
        """
        _, body, _ = self.call(
            "POST", "/v2/images", json={"disk_format": "raw", "container_format": "bare"}
        )
        image_id = json.loads(body)["id"]
        self.recorder.headers.clear()
        response, body, _ = self.call(
            "PUT",
            f"/v2/images/{image_id}/file",
            data=b"data" * 1000,
            headers={"Content-Type": ["application/octet-stream"]},
        )
        self.assertEqual(response.code, 204, body)
        [api_id] = response.headers.getRawHeaders(b"x-openstack-request-id")
        sent = [h.getRawHeaders(b"x-openstack-request-id") for h in self.recorder.headers]
        # read, queued -> saving, saving -> active
        self.assertGreaterEqual(len(sent), 3)
        self.assertEqual(sent, [[api_id]] * len(sent))

    def test_caller_ids_taken_only_where_configured(self) -> None:
        """
        The API node does not take a client's x-openstack-request-id as its
        caller's (clients are not API nodes); the registry ignores one that
        is not a request id, so nothing odd reaches its log.
        """
        from tests.memory_http import memory_client

        given = "req-" + str(uuid.uuid4())
        _, _, events = self.call(
            "GET", "/v2/images", headers={"x-openstack-request-id": [given]}
        )
        [api_line] = [e for e in self.request_lines(events) if e["uri"].startswith("/v2/")]
        self.assertIsNone(api_line["caller_request_id"])
        http, agent = memory_client(self.registry_agent.site)
        from twisted.logger import capturedLogs

        for odd in (given + "\nforged line", "req-1", given.upper()):
            with capturedLogs() as events:
                d = http.get(
                    BASE + "/healthcheck", headers={"x-openstack-request-id": [odd]}
                )
                agent.flush()
                self.successResultOf(d)
            [line] = self.request_lines(list(events))
            self.assertIsNone(line["caller_request_id"], odd)

    def test_no_id_outside_a_request(self) -> None:
        """
        Work no API request started (the purger, lease renewals) sends no
        request id; inside working_for, the client sends that one.
        """
        from glance_tx.request_ids import working_for

        client = HTTPRegistryClient(self.recorder, BASE, Clock(), token=TOKEN)
        d = client.ping()
        self.registry_agent.flush()
        self.successResultOf(d)
        given = "req-" + str(uuid.uuid4())
        with working_for(given):
            d = client.ping()
        self.registry_agent.flush()
        self.successResultOf(d)
        self.assertEqual(
            [h.getRawHeaders(b"x-openstack-request-id") for h in self.recorder.headers],
            [None, [given.encode()]],
        )
