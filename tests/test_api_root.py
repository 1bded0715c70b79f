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
            registry=unused, stores=unused, v1=self.v1, v2=self.v2, clock=unused,
            show_image=self.show,
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
            registry=self.registry, stores=self.stores, v1=Leaf(), v2=Leaf(),
            clock=self.site.reactor, show_image=bad_show,
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


class HealthCase(SiteTestCase):
    """
    A site whose registry's calls wait to be run one by one (so a probe
    stays in flight until the test runs it), with helpers to ask for the
    health check.
    """

    def setUp(self) -> None:
        super().setUp()
        self.clock = cast(MemoryReactorClock, self.site.reactor)
        self.manual = ManualRunner()
        self.addCleanup(setattr, self.registry, "runner", self.registry.runner)
        self.registry.runner = self.manual

    def health(self) -> Any:
        """A GET of the health check, sent (its Deferred)."""
        d = self.client.get("http://127.0.0.1:9292/healthcheck")
        self.agent.flush()
        return d

    def answer(self, d: Any) -> tuple[int, dict[str, Any]]:
        """The status and JSON body of the health check C{d}, answered."""
        self.agent.flush()
        response = self.successResultOf(d)
        return response.code, json.loads(self.successResultOf(treq.content(response)))

    def probe(self) -> None:
        """Run the registry's ping of the one probe in flight."""
        self.assertEqual(self.manual.pending(), 1)
        self.manual.run_one()


class HealthCheckTests(HealthCase):
    """
    The health check probes the registry and the stores at most once per
    C{healthcheck_probe_interval} (10 s here), on the site's clock.
    """

    site_options = {"healthcheck_probe_interval": 10.0}

    def test_concurrent_health_checks_share_one_probe(self) -> None:
        """
        Health checks that arrive while a probe is in flight wait for it and
        are answered by it; none starts a probe of its own.
        """
        first, second = self.health(), self.health()
        self.assertNoResult(first)
        self.probe()
        ok = {"status": "ok", "checks": {"registry": "ok", "store:file": "ok"}}
        self.assertEqual(self.answer(first), (200, ok))
        self.assertEqual(self.answer(second), (200, ok))
        self.assertEqual(self.manual.pending(), 0)

    def test_a_store_that_fails_is_reported_after_the_interval(self) -> None:
        """
        Within the interval from a probe's start, health checks are answered
        with its answer at once, probing nothing; the first one after it
        probes again, and so reports the store that failed meanwhile (its
        directory gone) -- within the interval plus one probe. The probe's
        answer is still what clients see: a 503 naming the store.
        """
        first = self.health()
        self.probe()
        self.assertEqual(self.answer(first)[0], 200)
        self.store_root.remove()
        self.clock.advance(9)
        held = self.health()
        self.assertEqual(self.manual.pending(), 0)
        self.assertEqual(self.answer(held)[0], 200)
        self.clock.advance(1)
        after = self.health()
        self.assertNoResult(after)
        self.probe()
        status, body = self.answer(after)
        self.assertEqual(status, 503)
        self.assertEqual(body["status"], "failed")
        self.assertEqual(body["checks"]["registry"], "ok")
        self.assertIn(self.store_root.path, body["checks"]["store:file"])
        # A failure's answer is held as long, and its mending seen as soon.
        self.store_root.makedirs()
        self.assertEqual(self.answer(self.health())[0], 503)
        self.clock.advance(10)
        mended = self.health()
        self.probe()
        self.assertEqual(self.answer(mended)[0], 200)

    def test_interval_counts_from_the_probes_start(self) -> None:
        """
        A probe that took a while answers for the interval from when it
        started, not from when it ended: the failure it could not see is
        reported no later than the interval plus one probe.
        """
        first = self.health()
        self.clock.advance(8)
        self.probe()
        self.assertEqual(self.answer(first)[0], 200)
        self.clock.advance(2)
        self.assertNoResult(self.health())
        self.assertEqual(self.manual.pending(), 1)

    def test_clock_set_back(self) -> None:
        """An answer is not held longer because the clock went back."""
        self.clock.advance(100)
        first = self.health()
        self.probe()
        self.assertEqual(self.answer(first)[0], 200)
        self.clock.rightNow = 50.0
        self.assertNoResult(self.health())
        self.assertEqual(self.manual.pending(), 1)

    def test_head(self) -> None:
        """HEAD of a held answer has its status and headers, without a body."""
        first = self.health()
        self.probe()
        self.assertEqual(self.answer(first)[0], 200)
        d = self.client.head("http://127.0.0.1:9292/healthcheck")
        self.agent.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"cache-control"), [b"no-store"])
        self.assertEqual(self.successResultOf(treq.content(response)), b"")


class NoProbeIntervalTests(HealthCase):
    """C{healthcheck_probe_interval = 0}: no answer is held."""

    site_options = {"healthcheck_probe_interval": 0.0}

    def test_each_health_check_after_a_probe_probes(self) -> None:
        """
        A health check that arrives after the last probe ended starts its
        own (the clock not moved at all), so it reports a store that failed
        just before it; those arriving meanwhile still share it.
        """
        first = self.health()
        self.probe()
        self.assertEqual(self.answer(first)[0], 200)
        self.store_root.remove()
        second, third = self.health(), self.health()
        self.assertNoResult(second)
        self.probe()
        self.assertEqual(self.answer(second)[0], 503)
        self.assertEqual(self.answer(third)[0], 503)
