"""
Stages and imports are leased to their node: two nodes on one registry and
one set of stores, on a fake clock; node A dies mid-stage or mid-import
(its leases no longer renewed, its work never resumed) and node B's
reclaim puts the image back to its truthful state and fails its task.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import treq
from attrs import define
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from glance_tx import images
from glance_tx.api.app import build_site
from glance_tx.api.site import GlanceSite
from glance_tx.imports import staged_record, staging_key
from glance_tx.leases import UploadLeases
from glance_tx.recovery import Reclaimer
from glance_tx.registry.sql import SQLRegistry
from glance_tx.store.backends import StoreMap
from glance_tx.store.filesystem import FilesystemStore
from glance_tx.store.http import HTTPStore
from glance_tx.task_log import TaskLog
from glance_tx.threads import BlockingRunner, SynchronousRunner
from tests.api_fixtures import BASE, Answer
from tests.fakes import ManualRunner
from tests.memory_http import SiteAgent, memory_client
from tests.test_api_v2 import ALICE, OCTET
from tests.test_registry_sql import sync_open
from tests.test_store_http import FakeWeb

LEASE = 60.0
DATA = bytes(range(256)) * 1000


@define
class Node:
    """One API node: its site, its leases, and a client of it."""

    name: str
    site: GlanceSite
    leases: UploadLeases
    client: Any
    agent: SiteAgent
    #: Its stores' runner (a ManualRunner stalls its store I/O).
    runner: BlockingRunner

    def die(self) -> None:
        """SIGKILL, as far as the others can tell: nothing renews its leases."""
        self.leases.stop()


class ImportLeaseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        # The registry's clock is the test's, so leases expire as it moves.
        self.registry: SQLRegistry = sync_open(
            "sqlite://", now=lambda: datetime.fromtimestamp(self.clock.seconds(), UTC)
        )
        self.addCleanup(lambda: self.successResultOf(self.registry.close()))
        self.roots = {}
        for store_id in ("file", "second"):
            root = FilePath(self.mktemp())
            root.makedirs()
            self.roots[store_id] = root
        self.web = FakeWeb(paced=True)

    def node(self, name: str, runner: BlockingRunner | None = None, web: FakeWeb | None = None) -> Node:
        runner = runner or SynchronousRunner()
        stores = StoreMap(
            {store_id: FilesystemStore(root.path, runner) for store_id, root in self.roots.items()},
            "file",
        )
        leases = UploadLeases(self.registry, self.clock, name, LEASE)
        leases.start()
        self.addCleanup(leases.stop)
        site = build_site(
            registry=self.registry,
            stores=stores,
            runner=SynchronousRunner(),
            image_size_cap=1 << 30,
            default_project="admin",
            reactor=MemoryReactorClock(),
            leases=leases,
            # Its own clock: a stalled fetch does not time out as leases expire.
            web_download=HTTPStore(agent=web or self.web, clock=Clock()),
        )
        client, agent = memory_client(site)
        return Node(name, site, leases, client, agent, runner)

    def reclaimer(self, node: Node) -> Reclaimer:
        """Node C{node}'s recovery, on the shared clock, its first round run."""
        reclaimer = Reclaimer(
            self.registry,
            node.site.importer.stores,
            self.clock,
            node.name,
            LEASE,
            tasks=TaskLog(self.registry),
        )
        self.successResultOf(Deferred.fromCoroutine(reclaimer.start()))
        self.addCleanup(reclaimer.stop)
        return reclaimer

    def request(self, node: Node, method: str, path: str, body: Any = None, **headers: str) -> Answer:
        all_headers = {**ALICE, **headers}
        if isinstance(body, dict):
            import json

            body = json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        d = node.client.request(
            method, BASE + path, headers={k: [v] for k, v in all_headers.items()}, data=body
        )
        node.agent.flush()
        response = self.successResultOf(d)
        content = treq.content(response)
        node.agent.flush()
        return Answer(response.code, response.headers, self.successResultOf(content))

    def create(self, node: Node) -> str:
        answer = self.request(
            node, "POST", "/v2/images", {"name": "x", "disk_format": "raw", "container_format": "bare"}
        )
        self.assertEqual(answer.code, 201, answer.body)
        return str(answer.json()["id"])

    def image(self, image_id: str) -> images.Image:
        return self.successResultOf(self.registry.get(image_id))

    def tasks(self, node: Node, image_id: str) -> list[dict[str, Any]]:
        answer = self.request(node, "GET", f"/v2/images/{image_id}/tasks")
        self.assertEqual(answer.code, 200, answer.body)
        tasks: list[dict[str, Any]] = answer.json()["tasks"]
        return tasks

    def files(self, store_id: str) -> list[str]:
        return sorted(p.basename() for p in self.roots[store_id].walk() if p.isfile())

    def expire(self) -> None:
        """
        Two lease periods on, a third at a time: a dead node's lease has
        expired and a reclaim round has run since; a live node renewed.
        """
        for _ in range(7):
            self.clock.advance(LEASE / 3)

    def test_web_download_of_a_dead_node(self) -> None:
        """
        Node A dies while its web-download is fetching. While A's lease
        holds, B's reclaim leaves the image importing (A renews while it
        lives). Once it has expired, B's next round puts the image back to
        queued, with the store in os_glance_failed_import and no store
        left importing, removes A's partial write, and fails the import's
        task with a message. A's late end, were it to come, changes nothing.
        """
        b_web = FakeWeb()
        a, b = self.node("node-a"), self.node("node-b", web=b_web)
        image_id = self.create(a)
        url = self.web.add(DATA)
        b_web.files[url] = DATA
        answer = self.request(
            a, "POST", f"/v2/images/{image_id}/import", {"method": {"name": "web-download", "uri": url}}
        )
        self.assertEqual(answer.code, 202, answer.body)
        self.assertEqual(self.image(image_id).status, images.IMAGE_IMPORTING)
        self.reclaimer(b)
        self.expire()  # A alive: its lease renewed
        self.assertEqual(self.image(image_id).status, images.IMAGE_IMPORTING)
        [task] = self.tasks(b, image_id)
        self.assertEqual(task["status"], "processing")

        a.die()
        self.expire()
        image = self.image(image_id)
        self.assertEqual(image.status, images.QUEUED)
        self.assertEqual(image.locations, ())
        self.assertEqual(image.properties[images.FAILED_IMPORT], "file")
        self.assertEqual(image.properties[images.IMPORTING_TO_STORES], "")
        [task] = self.tasks(b, image_id)
        self.assertEqual(task["status"], "failure")
        self.assertIn("node running this import stopped", task["message"])
        self.assertIsNotNone(task["expires_at"])
        # A comes back after all and finishes its fetch: too late to change
        # anything, and its copy is not left behind.
        while self.web.pending():
            self.web.run_one()
        self.successResultOf(a.site.importer.idle())
        self.assertEqual(self.image(image_id).status, images.QUEUED)
        self.assertEqual(self.files("file"), [])
        self.assertEqual(self.tasks(b, image_id)[0]["status"], "failure")
        # The image can be imported again, through B.
        answer = self.request(
            b, "POST", f"/v2/images/{image_id}/import", {"method": {"name": "web-download", "uri": url}}
        )
        self.assertEqual(answer.code, 202, answer.body)
        self.successResultOf(b.site.importer.idle())
        self.assertEqual(self.image(image_id).status, images.ACTIVE)

    def test_glance_direct_of_a_dead_node(self) -> None:
        """
        Node A dies mid glance-direct import (its store I/O stalled): B's
        reclaim returns the image to uploading with its staged data (intact
        in the shared store) and only that as its location, so B imports
        it again: active, with the data.
        """
        stalled = ManualRunner()
        a, b = self.node("node-a", stalled), self.node("node-b")
        image_id = self.create(b)
        answer = self.request(b, "PUT", f"/v2/images/{image_id}/stage", DATA, **OCTET)
        self.assertEqual(answer.code, 204, answer.body)
        answer = self.request(a, "POST", f"/v2/images/{image_id}/import", {"method": {"name": "glance-direct"}})
        self.assertEqual(answer.code, 202, answer.body)
        self.assertTrue(stalled.pending())
        self.reclaimer(b)
        a.die()
        self.expire()
        image = self.image(image_id)
        self.assertEqual(image.status, images.UPLOADING)
        self.assertEqual([loc.url.rsplit("/", 1)[1] for loc in image.locations], [staging_key(image_id)])
        self.assertEqual(self.tasks(b, image_id)[0]["status"], "failure")
        answer = self.request(b, "POST", f"/v2/images/{image_id}/import", {"method": {"name": "glance-direct"}})
        self.assertEqual(answer.code, 202, answer.body)
        self.successResultOf(b.site.importer.idle())
        self.assertEqual(self.image(image_id).status, images.ACTIVE)
        self.assertEqual(self.request(b, "GET", f"/v2/images/{image_id}/file").body, DATA)
        self.assertEqual([t["status"] for t in self.tasks(b, image_id)], ["failure", "success"])

    def test_glance_direct_whose_staged_data_is_gone(self) -> None:
        """Reclaimed to uploading, but the staged data is gone: queued, truthfully."""
        stalled = ManualRunner()
        a, b = self.node("node-a", stalled), self.node("node-b")
        image_id = self.create(b)
        self.request(b, "PUT", f"/v2/images/{image_id}/stage", DATA, **OCTET)
        self.request(a, "POST", f"/v2/images/{image_id}/import", {"method": {"name": "glance-direct"}})
        self.roots["file"].child(staging_key(image_id)).remove()
        self.reclaimer(b)
        a.die()
        self.expire()
        image = self.image(image_id)
        self.assertEqual((image.status, image.locations), (images.QUEUED, ()))

    def test_stage_of_a_dead_node(self) -> None:
        """
        A stage is leased too: node A dies half-way through one, and B's
        reclaim returns the image to queued and removes the partial staged
        write; a stage that had ended (uploading, its data recorded) is
        never touched.
        """
        a, b = self.node("node-a"), self.node("node-b")
        done = self.create(b)
        self.assertEqual(self.request(b, "PUT", f"/v2/images/{done}/stage", DATA, **OCTET).code, 204)
        image_id = self.create(a)
        upload = self.successResultOf(
            Deferred.fromCoroutine(
                a.site.v2.uploader.start(
                    self.image(image_id),
                    store_id="file",
                    failure_status=images.QUEUED,
                    working_status=images.UPLOADING,
                    record=staged_record,
                    key=staging_key(image_id),
                    stages=(),
                )
            )
        )
        upload.write(DATA[:1000])
        self.assertTrue(self.roots["file"].child("incoming").listdir())
        self.reclaimer(b)
        self.expire()
        self.assertEqual(self.image(image_id).status, images.UPLOADING)  # A lives
        a.die()
        self.expire()
        self.assertEqual(self.image(image_id).status, images.QUEUED)
        self.assertEqual(self.roots["file"].child("incoming").listdir(), [])
        self.assertEqual(self.image(done).status, images.UPLOADING)
        self.assertEqual(self.files("file"), [staging_key(done)])

    def test_copy_image_of_a_dead_node(self) -> None:
        """
        Node A dies mid copy-image: the image stays active with the copies
        it had, the store it was copying to is recorded as failed, and no
        store is left importing, so the copy can be asked again.
        """
        stalled = ManualRunner()
        a, b = self.node("node-a", stalled), self.node("node-b")
        image_id = self.create(b)
        self.assertEqual(self.request(b, "PUT", f"/v2/images/{image_id}/file", DATA, **OCTET).code, 204)
        admin = {"X-Roles": "admin,member"}
        answer = self.request(
            a, "POST", f"/v2/images/{image_id}/import",
            {"method": {"name": "copy-image"}, "stores": ["second"]}, **admin,
        )
        self.assertEqual(answer.code, 202, answer.body)
        self.assertEqual(self.image(image_id).properties[images.IMPORTING_TO_STORES], "second")
        self.reclaimer(b)
        a.die()
        self.expire()
        image = self.image(image_id)
        self.assertEqual(image.status, images.ACTIVE)
        self.assertEqual([loc.store for loc in image.locations], ["file"])
        self.assertEqual(image.properties[images.IMPORTING_TO_STORES], "")
        self.assertEqual(image.properties[images.FAILED_IMPORT], "second")
        answer = self.request(
            b, "POST", f"/v2/images/{image_id}/import",
            {"method": {"name": "copy-image"}, "stores": ["second"]}, **admin,
        )
        self.assertEqual(answer.code, 202, answer.body)
        self.successResultOf(b.site.importer.idle())
        self.assertEqual([loc.store for loc in self.image(image_id).locations], ["file", "second"])
