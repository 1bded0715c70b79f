"""
Tests for the last-resort error handling (L{glance_tx.api.errors},
L{glance_tx.api.site.StreamingRequest.processingFailed}): an exception no
handler expects is a JSON 500 that carries the request id and nothing of the
exception, logged with its traceback; one raised after the response began
drops the connection.
"""

from __future__ import annotations

from typing import Any

import treq
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed

from glance_tx.api.app import build_site
from glance_tx.api.site import GlanceSite
from glance_tx.errors import StoreError
from glance_tx.registry.server import RegistryServer
from glance_tx.store.backends import StoreMap
from tests.api_fixtures import BASE, V1_RAW_BARE, SiteTestCase
from tests.fakes import SECRET_DETAIL, BrokenReadStore, BrokenRegistry
from tests.memory_http import memory_client
from tests.test_registry_sql import sync_open


class LastResortTests(SiteTestCase):
    """Routes of every API over a registry whose reads fail as a bug would."""

    def setUp(self) -> None:
        super().setUp()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.site = build_site(
            registry=BrokenRegistry(self.registry),
            stores=self.stores,
            runner=self.runner,
            image_size_cap=self.size_cap,
            default_project="admin",
            reactor=self.site.reactor,
        )
        self.client, self.agent = memory_client(self.site)

    def assertLastResort(self, method: str, path: str) -> None:
        """C{method path} is a JSON 500 with the request id, logged with it."""
        answer = self.request(method, path)
        self.assertEqual(answer.code, 500)
        self.assertEqual(answer.header("Content-Type"), "application/json")
        request_id = answer.header("x-openstack-request-id")
        assert request_id is not None
        self.assertNotIn(b"Processing Failed", answer.body)
        self.assertNotIn(SECRET_DETAIL.encode(), answer.body)
        self.assertNotIn(b"Traceback", answer.body)
        error = answer.json()["error"]
        self.assertEqual((error["code"], error["title"]), (500, "Internal Server Error"))
        self.assertIn(request_id, error["message"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        logged = [e for e in self.events if e.get("request_id") == request_id and "log_failure" in e]
        self.assertEqual(len(logged), 1)
        self.assertIn(SECRET_DETAIL, logged[0]["log_failure"].getTraceback())

    def test_v2(self) -> None:
        """A v2 image GET whose registry fails."""
        self.assertLastResort("GET", "/v2/images/" + "1" * 8 + "-1111-1111-1111-" + "1" * 12)

    def test_v2_listing(self) -> None:
        """A v2 listing whose registry fails."""
        self.assertLastResort("GET", "/v2/images")

    def test_v1(self) -> None:
        """A v1 HEAD (metadata) whose registry fails."""
        self.assertLastResort("GET", "/v1/images/detail")


class BrokenDownloadTests(SiteTestCase):
    """A download whose store fails after the response began."""

    def test_connection_dropped(self) -> None:
        """
        The status and part of the body are out; the connection is aborted,
        with no error document (JSON or HTML) after the bytes sent.
        """
        self.assertDropped(BrokenReadStore(self.store))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_typed_error_drops_too(self) -> None:
        """A typed error (a store failing) after the response began: dropped as well."""
        self.assertDropped(BrokenReadStore(self.store, StoreError("disk gone")))

    def assertDropped(self, store: BrokenReadStore) -> None:
        answer = self.request(
            "POST", "/v1/images", {"Content-Type": "application/octet-stream", **V1_RAW_BARE},
            data=b"y" * 5000,
        )
        image_id = answer.json()["image"]["id"]
        site = build_site(
            registry=self.registry,
            stores=StoreMap({"file": store}, "file"),
            runner=self.runner,
            image_size_cap=self.size_cap,
            default_project="admin",
            reactor=self.site.reactor,
        )
        client, agent = memory_client(site)
        d = client.get(f"{BASE}/v2/images/{image_id}/file")
        agent.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.length, 5000)
        received: list[bytes] = []
        done = response.collect(received.append)
        agent.flush()
        # Cut short: 1000 bytes of the 5000 promised, then the connection ends.
        self.failureResultOf(done, ResponseFailed)
        self.assertEqual(b"".join(received), b"x" * BrokenReadStore.sent)


class RegistryServerLastResortTests(SynchronousTestCase):
    """The registry server, as C{twistd glance-registry} serves it."""

    def test_unexpected_failure(self) -> None:
        """
        A bug behind the Registry API is a 500 error document naming the
        request id, with the error class the client maps back.
        """
        registry = sync_open("sqlite://")
        self.addCleanup(lambda: self.successResultOf(registry.close()))
        site = GlanceSite(RegistryServer(BrokenRegistry(registry)).resource())
        client, agent = memory_client(site)
        d = client.get(BASE + "/images/" + "1" * 8 + "-1111-1111-1111-" + "1" * 12)
        agent.flush()
        response = self.successResultOf(d)
        body = treq.json_content(response)
        agent.flush()
        error = self.successResultOf(body)["error"]
        self.assertEqual((response.code, error["type"]), (500, "GlanceError"))
        request_id = response.headers.getRawHeaders(b"x-openstack-request-id")[0].decode()
        self.assertIn(request_id, error["message"])
        self.assertNotIn(SECRET_DETAIL, error["message"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
