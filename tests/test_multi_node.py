"""
Several API nodes on one registry, as deployed: a real ``twistd
glance-registry`` over PostgreSQL and two ``twistd glance`` processes whose
``registry_url`` points at it and that share one filesystem store
directory. What one node does, the other sees.

Needs C{GLANCE_TX_TEST_POSTGRES_URL} (set by tools/run-tests); skipped
without it, failed under C{CI=true}.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThread
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.test_registry_sql import create_database, drop_database, postgres_admin_url
from tests.twistd_process import start_twistd

TOKEN = "multi-node-token"
PATCH = "application/openstack-images-v2.1-json-patch"


class TwoNodesOneRegistryTests(TestCase):
    """Two API nodes through glance-registry on PostgreSQL, one shared store."""

    async def start_cluster(self) -> tuple[str, str]:
        """Start glance-registry and nodes A and B; return A's and B's URLs."""
        from twisted.internet import reactor

        admin_url = postgres_admin_url(self)
        database = await deferToThread(create_database, admin_url)
        self.addCleanup(deferToThread, drop_database, admin_url, database)
        self.registry_config = (
            "[DEFAULT]\n"
            f"sql_connection = {database.render_as_string(hide_password=False)}\n"
            f"registry_token = {TOKEN}\n"
        )
        self.registry = registry = await start_twistd(
            self, "glance-registry", self.registry_config, name="glance-registry"
        )
        store = FilePath(self.mktemp())
        store.makedirs()
        node_config = (
            "[DEFAULT]\n"
            f"registry_url = {registry.url}\n"
            f"registry_token = {TOKEN}\n"
            "recover_on_start = false\n"
            "[file]\n"
            f"filesystem_store_datadir = {store.path}\n"
        )
        a = await start_twistd(self, "glance", node_config, name="node A")
        b = await start_twistd(self, "glance", node_config, name="node B")
        pool = HTTPConnectionPool(reactor)
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        return a.url, b.url

    async def call_full(self, method: str, url: str) -> tuple[int, Any, bytes]:
        response = await self.http.request(method, url, timeout=30)
        return response.code, response.headers, await response.content()

    async def call(
        self, method: str, url: str, body: Any = None, content_type: str | None = None
    ) -> tuple[int, bytes]:
        headers = {}
        data = None
        if body is not None:
            if isinstance(body, bytes):
                data = body
            else:
                data = json.dumps(body).encode("utf-8")
                content_type = content_type or "application/json"
        if content_type is not None:
            headers["Content-Type"] = [content_type]
        response = await self.http.request(
            method, url, data=data, headers=headers, timeout=30
        )
        return response.code, await response.content()

    async def test_what_one_node_does_the_other_sees(self) -> None:
        """
        An image created and uploaded through node A is listed, updated and
        downloaded (the same bytes) through node B; deleted through B, it is
        gone on A too, record and data.
        """
        a, b = await self.start_cluster()
        code, body = await self.call(
            "POST",
            f"{a}/v2/images",
            {"name": "shared", "disk_format": "raw", "container_format": "bare"},
        )
        self.assertEqual(code, 201, body)
        image_id = json.loads(body)["id"]
        data = hashlib.sha512(b"seed").digest() * 4096
        code, body = await self.call(
            "PUT", f"{a}/v2/images/{image_id}/file", data, "application/octet-stream"
        )
        self.assertEqual(code, 204, body)

        code, body = await self.call("GET", f"{b}/v2/images")
        self.assertEqual(code, 200, body)
        listed = json.loads(body)["images"]
        self.assertEqual(
            [(i["id"], i["status"]) for i in listed], [(image_id, "active")]
        )

        code, body = await self.call(
            "PATCH",
            f"{b}/v2/images/{image_id}",
            [{"op": "replace", "path": "/name", "value": "renamed-on-b"}],
            PATCH,
        )
        self.assertEqual(code, 200, body)
        code, body = await self.call("GET", f"{a}/v2/images/{image_id}")
        self.assertEqual(json.loads(body)["name"], "renamed-on-b")

        code, body = await self.call("GET", f"{b}/v2/images/{image_id}/file")
        self.assertEqual((code, body), (200, data))

        code, body = await self.call("DELETE", f"{b}/v2/images/{image_id}")
        self.assertEqual(code, 204, body)
        code, body = await self.call("GET", f"{a}/v2/images/{image_id}")
        self.assertEqual(code, 404, body)
        code, body = await self.call("GET", f"{a}/v2/images/{image_id}/file")
        self.assertEqual(code, 404, body)

    async def test_one_of_two_racing_uploads_wins(self) -> None:
        """
        Two uploads to one queued image, started at once through node A and
        node B, cannot both win: one stores its data (204), the other is
        refused with 409, and the image holds the winner's bytes.
        """
        a, b = await self.start_cluster()
        code, body = await self.call(
            "POST",
            f"{a}/v2/images",
            {"name": "raced", "disk_format": "raw", "container_format": "bare"},
        )
        image_id = json.loads(body)["id"]
        bodies = {a: b"A" * (4 << 20), b: b"B" * (4 << 20)}
        results = await gatherResults(
            [
                Deferred.fromCoroutine(
                    self.call(
                        "PUT",
                        f"{node}/v2/images/{image_id}/file",
                        data,
                        "application/octet-stream",
                    )
                )
                for node, data in bodies.items()
            ]
        )
        codes = sorted(code for code, _ in results)
        self.assertEqual(codes, [204, 409], results)
        winner = bodies[a] if results[0][0] == 204 else bodies[b]
        code, body = await self.call("GET", f"{b}/v2/images/{image_id}/file")
        self.assertEqual((code, body == winner), (200, True))

    async def test_registry_restart(self) -> None:
        """
        While glance-registry is down a node answers 503 with Retry-After
        (within registry_client_timeout, no hang, no 500), and once the
        registry is back on its port the node serves again by itself.
        """
        a, _ = await self.start_cluster()
        code, body = await self.call(
            "POST",
            f"{a}/v2/images",
            {"name": "survivor", "disk_format": "raw", "container_format": "bare"},
        )
        image_id = json.loads(body)["id"]
        await self.registry.stop()

        started = time.monotonic()
        code, headers, body = await self.call_full("GET", f"{a}/v2/images/{image_id}")
        self.assertEqual(code, 503, body)
        self.assertLess(time.monotonic() - started, 12)
        self.assertEqual(headers.getRawHeaders(b"Retry-After"), [b"5"])
        self.assertEqual(json.loads(body)["error"]["code"], 503)

        port = int(self.registry.url.rsplit(":", 1)[1])
        self.registry = await start_twistd(
            self, "glance-registry", self.registry_config, port=port
        )
        code, body = await self.call("GET", f"{a}/v2/images/{image_id}")
        self.assertEqual((code, json.loads(body)["name"]), (200, "survivor"))
