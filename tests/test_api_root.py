"""The root of the HTTP tree: dispatch by the first path segment."""

from __future__ import annotations

import json
import uuid
from typing import Any, cast

import treq
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from glance_tx.api.direct import DirectRoute
from glance_tx.api.root import RootAPI
from glance_tx.api.site import GlanceSite
from tests.api_fixtures import SiteTestCase
from tests.fakes import ManualRunner
from tests.memory_http import memory_client


class Leaf(Resource):
    """Stands in for a version's Klein app (a leaf, as Klein's resources are)."""

    isLeaf = True


class DispatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.v1, self.v2 = Leaf(), Leaf()
        # Dispatch touches neither the registry nor the stores.
        unused = cast(Any, None)
        self.root = RootAPI(
            registry=unused, stores=unused, v1=self.v1, v2=self.v2, show_image=self.show
        ).resource()

    async def show(self, request: Any, image_id: str) -> bytes:
        return image_id.encode()

    def traverse(self, path: bytes, method: bytes = b"POST") -> tuple[Any, list[bytes], list[bytes]]:
        """
        The resource twisted.web renders C{path} with (by default for a
        POST, which no direct route takes), and the request's prepath and
        postpath then.
        """
        request = DummyRequest(path.split(b"/")[1:])
        request.method = method
        found = getChildForRequest(self.root, request)
        return found, request.prepath, request.postpath

    def test_versions_by_traversal(self) -> None:
        """
        /v1/... and /v2/... reach those apps by twisted.web traversal, the
        segment moved to prepath, never through the root's Klein app (an
        image GET routed by both apps spent 7% of its CPU in the root's
        routing).
        """
        self.assertEqual(
            self.traverse(b"/v2/images/x"), (self.v2, [b"v2"], [b"images", b"x"])
        )
        self.assertEqual(self.traverse(b"/v2/"), (self.v2, [b"v2"], [b""]))
        self.assertEqual(self.traverse(b"/v1/images"), (self.v1, [b"v1"], [b"images"]))

    def test_unversioned_images_go_to_v1_whole(self) -> None:
        """/images... goes to the v1 app with "images" still in the path."""
        self.assertEqual(self.traverse(b"/images"), (self.v1, [], [b"images"]))
        self.assertEqual(self.traverse(b"/images/x"), (self.v1, [], [b"images", b"x"]))

    def test_everything_else_is_the_roots(self) -> None:
        """
        Every other path goes, whole, to the root's own app: the versions,
        the health check, /v2 itself, and /v2//... (which the root answers
        with a 404: a second URL for a cached resource would escape purges).
        """
        for path, postpath in [
            (b"/", [b""]),
            (b"/versions", [b"versions"]),
            (b"/healthcheck", [b"healthcheck"]),
            (b"/v2", [b"v2"]),
            (b"/v2//images", [b"v2", b"", b"images"]),
            (b"/v3/images", [b"v3", b"images"]),
        ]:
            found, prepath, rest = self.traverse(path)
            self.assertNotIn(found, (self.v1, self.v2), path)
            self.assertTrue(found.isLeaf, path)
            self.assertEqual((prepath, rest), ([], postpath), path)

    def test_hot_reads_skip_klein(self) -> None:
        """
        A GET or HEAD of the versions, the health check or one image is
        answered by a direct route (no Klein); the same paths with other
        methods, and image paths Klein would decode or refuse, are not.
        """
        for method in (b"GET", b"HEAD"):
            for path in (b"/", b"/versions", b"/healthcheck", b"/v2/images/abc"):
                found, _, _ = self.traverse(path, method)
                self.assertIsInstance(found, DirectRoute, (method, path))
            for path in (b"/v2/images/a%62c", b"/v2/images/abc/", b"/v2/images/", b"/v2/images/abc/file"):
                found, _, _ = self.traverse(path, method)
                self.assertIs(found, self.v2, (method, path))
        for method in (b"PUT", b"DELETE", b"PATCH"):
            self.assertIs(self.traverse(b"/v2/images/abc", method)[0], self.v2)
            self.assertNotIsInstance(self.traverse(b"/versions", method)[0], DirectRoute)


class DirectRouteTests(SiteTestCase):
    """The direct routes answer as the Klein apps do."""

    def test_refusals_and_failures_as_klein_answers_them(self) -> None:
        """
        An unknown image is the JSON 404, a caller who may not see it the
        same, HEAD has GET's headers and no body, and the versions are a
        300 with the site's URL.
        """
        missing = self.request("GET", f"/v2/images/{uuid.uuid4()}")
        self.assertEqual(missing.code, 404)
        self.assertEqual(missing.json()["error"]["code"], 404)
        self.assertEqual(self.request("GET", "/v2/images/not-a-uuid").code, 404)
        versions = self.request("GET", "/versions")
        self.assertEqual(versions.code, 300)
        self.assertEqual(
            versions.json()["versions"][0]["links"][0]["href"], "http://127.0.0.1:9292/v1/"
        )
        head = self.request("HEAD", "/versions")
        self.assertEqual((head.code, head.body), (300, b""))
        self.assertEqual(
            head.headers.getRawHeaders(b"content-length"), [str(len(versions.body)).encode()]
        )

    def test_unexpected_error_is_the_json_500(self) -> None:
        """
        An exception no handler expects is the site's JSON 500 naming the
        request id and nothing of the exception, its traceback logged.
        """

        def bad_show(request: Any, image_id: str) -> Any:
            raise RuntimeError("secret detail")

        root = RootAPI(
            registry=self.registry, stores=self.stores, v1=Leaf(), v2=Leaf(), show_image=bad_show
        )
        site = GlanceSite(root.resource(), reactor=MemoryReactorClock())
        client, agent = memory_client(site)
        with capturedLogs() as events:
            d = client.get(f"http://127.0.0.1:9292/v2/images/{uuid.uuid4()}")
            agent.flush()
            response = self.successResultOf(d)
            body = self.successResultOf(treq.content(response))
        self.assertEqual(response.code, 500)
        self.assertNotIn(b"secret", body)
        [request_id] = response.headers.getRawHeaders(b"x-openstack-request-id")
        self.assertIn(request_id, body)
        self.assertTrue(any("log_failure" in e for e in events))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_concurrent_health_checks_share_one(self) -> None:
        """
        Health checks that arrive while one is in flight are answered by
        it; one that arrives after it ended starts its own, so no answer
        comes from a check older than its request.
        """
        manual = ManualRunner()
        self.addCleanup(setattr, self.registry, "runner", self.registry.runner)
        self.registry.runner = manual
        first = self.client.get("http://127.0.0.1:9292/healthcheck")
        second = self.client.get("http://127.0.0.1:9292/healthcheck")
        self.agent.flush()
        self.assertEqual(manual.pending(), 1)
        self.assertNoResult(first)
        manual.run_one()
        self.agent.flush()
        for d in (first, second):
            self.assertEqual(self.successResultOf(d).code, 200)
        # The store fails from now on: the next request's own check says so.
        self.store_root.remove()
        third = self.client.get("http://127.0.0.1:9292/healthcheck")
        self.agent.flush()
        self.assertNoResult(third)
        self.assertEqual(manual.pending(), 1)
        manual.run_one()
        self.agent.flush()
        response = self.successResultOf(third)
        self.assertEqual(response.code, 503)
        checks = json.loads(self.successResultOf(treq.content(response)))["checks"]
        self.assertEqual(checks["registry"], "ok")
        self.assertNotEqual(checks["store:file"], "ok")
