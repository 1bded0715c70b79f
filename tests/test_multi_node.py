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
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
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

    async def start_cluster(self, lease_seconds: float = 60) -> tuple[str, str]:
        """
        Start glance-registry and nodes A and B (recovery on, as by default:
        leases make it safe with shared nodes); return A's and B's URLs.
        """
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
        self.store = store = FilePath(self.mktemp())
        store.makedirs()
        self.node_config = node_config = (
            "[DEFAULT]\n"
            f"registry_url = {registry.url}\n"
            f"registry_token = {TOKEN}\n"
            f"upload_lease_seconds = {lease_seconds}\n"
            "[file]\n"
            f"filesystem_store_datadir = {store.path}\n"
        )
        self.a = a = await start_twistd(self, "glance", node_config, name="node A")
        self.b = b = await start_twistd(self, "glance", node_config, name="node B")
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

    async def test_stage_on_one_node_import_on_the_other(self) -> None:
        """
        Data staged through node A lives in the shared store, so node B
        imports it (glance-direct): active, the same bytes through either
        node, and the staged copy gone.
        """
        a, b = await self.start_cluster()
        image_id = await self.new_image(a, "staged")
        data = hashlib.sha512(b"stage").digest() * 4096
        code, body = await self.call(
            "PUT", f"{a}/v2/images/{image_id}/stage", data, "application/octet-stream"
        )
        self.assertEqual(code, 204, body)
        self.assertEqual(await self.status(b, image_id), "uploading")
        code, body = await self.call(
            "POST", f"{b}/v2/images/{image_id}/import", {"method": {"name": "glance-direct"}}
        )
        self.assertEqual(code, 202, body)
        await self.wait_for_status(a, image_id, "active")
        code, body = await self.call("GET", f"{a}/v2/images/{image_id}/file")
        self.assertEqual((code, body), (200, data))
        from twisted.internet import reactor

        for _ in range(100):  # the staged copy goes just after the image is active
            files = [p.basename() for p in self.store.walk() if p.isfile()]
            if files == [image_id]:
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(files, [image_id])

    async def new_image(self, node: str, name: str) -> str:
        code, body = await self.call(
            "POST",
            f"{node}/v2/images",
            {"name": name, "disk_format": "raw", "container_format": "bare"},
        )
        self.assertEqual(code, 201, body)
        return str(json.loads(body)["id"])

    async def status(self, node: str, image_id: str) -> str:
        code, body = await self.call("GET", f"{node}/v2/images/{image_id}")
        self.assertEqual(code, 200, body)
        return str(json.loads(body)["status"])

    async def wait_for_status(self, node: str, image_id: str, wanted: str) -> None:
        from twisted.internet import reactor

        deadline = time.monotonic() + 30
        while (status := await self.status(node, image_id)) != wanted:
            if time.monotonic() > deadline:
                self.fail(f"{image_id} stayed {status}, never {wanted}")
            await deferLater(reactor, 0.1, lambda: None)

    def partials(self, image_id: str) -> list[str]:
        incoming = self.store.child("incoming")
        if not incoming.exists():
            return []
        return [n for n in incoming.listdir() if n.startswith(image_id + ".")]

    async def slow_upload(self, node: str, image_id: str) -> SlowUpload:
        """Start a v2 upload of 2 MiB through C{node} and send only half of it."""
        from twisted.internet import reactor

        host, port = node.rsplit("/", 1)[1].split(":")
        upload = SlowUpload(
            f"PUT /v2/images/{image_id}/file HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: application/octet-stream\r\n"
            f"Content-Length: {SLOW_SIZE}\r\n\r\n".encode()
            + b"x" * (SLOW_SIZE // 2)
        )
        await connectProtocol(TCP4ClientEndpoint(reactor, host, int(port)), upload)
        self.addCleanup(upload.close)
        await self.wait_for_status(node, image_id, "saving")
        deadline = time.monotonic() + 30
        while not self.partials(image_id) and time.monotonic() < deadline:
            await deferLater(reactor, 0.1, lambda: None)
        self.assertTrue(self.partials(image_id), "the upload has partial data")
        return upload

    async def test_dead_nodes_upload_reclaimed_live_one_kept(self) -> None:
        """
        SIGKILL node A mid-upload: node B keeps serving and uploading, and
        once A's lease expires B reclaims A's upload by itself (the image is
        queued again, as a v2 upload that failed; its partial data is gone
        from the shared store) without touching its own upload in progress.
        Node A restarted at once does not reclaim B's live upload either,
        which then completes.
        """
        a, b = await self.start_cluster(lease_seconds=2)
        on_a = await self.new_image(a, "on A")
        await self.slow_upload(a, on_a)
        on_b = await self.new_image(b, "on B")
        live = await self.slow_upload(b, on_b)

        self.a.protocol.transport.signalProcess("KILL")
        await self.a.protocol.ended
        done = await self.new_image(b, "after the crash")
        code, body = await self.call(
            "PUT", f"{b}/v2/images/{done}/file", b"data", "application/octet-stream"
        )
        self.assertEqual(code, 204, body)
        self.assertEqual(await self.status(b, on_a), "saving")  # the lease holds

        await self.wait_for_status(b, on_a, "queued")
        self.assertEqual(self.partials(on_a), [])
        self.assertEqual(await self.status(b, on_b), "saving")
        self.assertEqual(len(self.partials(on_b)), 1)

        port = int(self.a.url.rsplit(":", 1)[1])
        self.a = await start_twistd(self, "glance", self.node_config, name="node A", port=port)
        self.assertEqual(await self.status(a, on_b), "saving")
        self.assertEqual(len(self.partials(on_b)), 1)

        code = await live.finish(b"x" * (SLOW_SIZE - SLOW_SIZE // 2))
        self.assertEqual(code, 204, live.received)
        self.assertEqual(await self.status(a, on_b), "active")


    def files_of(self, image_id: str) -> list[str]:
        return [
            path.path for path in self.store.walk() if image_id in path.basename()
        ]

    async def test_delete_during_upload(self) -> None:
        """
        An image deleted through node B while node A receives its data: A's
        upload, once its body is complete, fails cleanly (a 4xx JSON error,
        not a 500) and its data is removed, committed or partial; the image
        stays deleted on both nodes.
        """
        a, b = await self.start_cluster()
        image_id = await self.new_image(a, "deleted mid-upload")
        upload = await self.slow_upload(a, image_id)
        code, body = await self.call("DELETE", f"{b}/v2/images/{image_id}")
        self.assertEqual(code, 204, body)
        code = await upload.finish(b"x" * (SLOW_SIZE - SLOW_SIZE // 2))
        self.assertIn(code, (404, 409, 410), upload.received)
        self.assertIn(b'"error"', upload.received)
        self.assertEqual(self.files_of(image_id), [])
        for node in (a, b):
            code, body = await self.call("GET", f"{node}/v2/images/{image_id}")
            self.assertEqual(code, 404, body)

    async def test_membership_added_twice_at_once(self) -> None:
        """
        The same member added to one image through node A and node B at once
        is added once: one request is 200, the other a 409, and the image
        has that one member.
        """
        a, b = await self.start_cluster()
        code, body = await self.call(
            "POST",
            f"{a}/v2/images",
            {
                "name": "shared",
                "disk_format": "raw",
                "container_format": "bare",
                "visibility": "shared",
            },
        )
        self.assertEqual(code, 201, body)
        image_id = json.loads(body)["id"]
        results = await gatherResults(
            [
                Deferred.fromCoroutine(
                    self.call("POST", f"{node}/v2/images/{image_id}/members", {"member": "p1"})
                )
                for node in (a, b)
            ]
        )
        self.assertEqual(sorted(code for code, _ in results), [200, 409], results)
        code, body = await self.call("GET", f"{b}/v2/images/{image_id}/members")
        self.assertEqual(code, 200, body)
        self.assertEqual([m["member_id"] for m in json.loads(body)["members"]], ["p1"])


SLOW_SIZE = 2 << 20


class SlowUpload(Protocol):
    """An HTTP upload sent by hand, so that it can stop half-way and go on."""

    def __init__(self, head: bytes) -> None:
        self.head = head
        self.received = b""
        self.answered: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.head)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"\r\n\r\n" in self.received and not self.answered.called:
            self.answered.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.answered.called:
            self.answered.callback(None)

    async def finish(self, rest: bytes) -> int:
        """Send the rest of the body; return the response's status code."""
        self.transport.write(rest)  # type: ignore[union-attr]
        await self.answered
        return int(self.received.split(b" ", 2)[1])

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

