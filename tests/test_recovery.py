"""Crash recovery: what a dead node leaves behind is cleaned up, and only that."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase

from glance_tx import images
from glance_tx.config import load_config
from glance_tx.images import Image, ImageUpdate
from glance_tx.recovery import OrphanSweep, Reclaimer, reclaim
from glance_tx.registry.sql import open_sql_registry
from glance_tx.services import ThreadPoolService
from glance_tx.store.filesystem import FilesystemStore, filesystem_datadir
from glance_tx.tap import glance_service
from glance_tx.threads import SynchronousRunner
from tests.api_fixtures import V1_RAW_BARE, SiteTestCase

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RecoverTests(SiteTestCase):
    def make(self, status: str, data: bytes | None = None) -> Image:
        now = datetime.now(UTC)
        image = self.successResultOf(
            self.registry.create(Image(id=str(uuid.uuid4()), status=images.QUEUED, created_at=now, updated_at=now))
        )
        fields: dict = {"status": status} if status != images.QUEUED else {}
        if data is not None:
            writer = self.successResultOf(self.store.open_writer(image.id))
            writer.write(data)
            stored = self.successResultOf(writer.commit())
            fields = {"status": images.SAVING}
            self.successResultOf(self.registry.update(image.id, ImageUpdate(fields=fields)))
            fields = {"status": status, "locations": (stored.location,), "size": len(data)}
        if fields:
            self.successResultOf(self.registry.update(image.id, ImageUpdate(fields=fields)))
        return self.successResultOf(self.registry.get(image.id))

    def wait(self, coroutine: Any) -> Any:
        return self.successResultOf(Deferred.fromCoroutine(coroutine))

    def test_reclaim_expired_only(self) -> None:
        """
        reclaim fails the upload whose lease has expired (its image takes
        the lease's status, queued here as a v2 abort sets) and removes its
        partial write; a live node's upload, its partial write and data an
        image owns are left alone.
        """
        kept = self.make(images.ACTIVE, b"keep me")
        dead, live = self.make(images.SAVING), self.make(images.SAVING)
        self.successResultOf(self.registry.hold_uploads("node-a", {dead.id: images.QUEUED}, 0))
        self.successResultOf(self.registry.hold_uploads("node-b", {live.id: images.KILLED}, 3600))
        for image in (dead, live):  # writes that are not finished
            self.successResultOf(self.store.open_writer(image.id)).write(b"partial")
        self.assertEqual(self.wait(reclaim(self.registry, self.stores)), 1)
        self.assertEqual(self.successResultOf(self.registry.get(dead.id)).status, images.QUEUED)
        self.assertEqual(self.successResultOf(self.registry.get(live.id)).status, images.SAVING)
        self.assertEqual(self.successResultOf(self.registry.get(kept.id)).status, images.ACTIVE)
        [partial] = self.store.incoming.listdir()
        self.assertTrue(partial.startswith(live.id + "."))
        self.assertEqual(self.wait(reclaim(self.registry, self.stores)), 0)

    def test_orphans_removed_only_after_a_lease_period(self) -> None:
        """
        Committed data no image owns is removed only once sweeps a lease
        period apart have both seen it unowned: a live upload's data,
        committed a moment before its image records it, survives the first
        sweep and, once recorded, every later one.
        """
        clock = Clock()
        sweep = OrphanSweep(self.registry, self.stores, clock, 60)
        kept = self.make(images.ACTIVE, b"keep me")
        orphan = self.successResultOf(self.store.open_writer(str(uuid.uuid4())))
        orphan.write(b"orphan")
        self.successResultOf(orphan.commit())
        recording = self.make(images.SAVING)
        writer = self.successResultOf(self.store.open_writer(recording.id))
        writer.write(b"just committed")
        stored = self.successResultOf(writer.commit())
        self.assertEqual(self.wait(sweep.sweep()), 0)
        self.assertEqual(len(self.stored_files()), 3)
        # The upload records its data; the orphan stays unowned.
        self.successResultOf(
            self.registry.update(
                recording.id,
                ImageUpdate(fields={"status": images.ACTIVE, "locations": (stored.location,)}),
            )
        )
        clock.advance(59)
        self.assertEqual(self.wait(sweep.sweep()), 0)
        clock.advance(1)
        self.assertEqual(self.wait(sweep.sweep()), 1)
        self.assertEqual(
            sorted(self.stored_files()),
            sorted(image.locations[0].url[len("file://"):] for image in (
                kept, self.successResultOf(self.registry.get(recording.id))
            )),
        )

    def test_reclaimer_runs_every_period(self) -> None:
        """
        The Reclaimer reclaims at start (this node's own uploads from before
        a restart at once, though their leases hold) and then every period,
        so an upload whose node stops renewing is reclaimed without a
        restart; a lease renewed in time is never reclaimed.
        """
        clock = Clock()
        mine, theirs, renewed = (self.make(images.SAVING) for _ in range(3))
        hold = self.registry.hold_uploads
        self.successResultOf(hold("me", {mine.id: images.KILLED}, 3600))
        self.successResultOf(hold("them", {theirs.id: images.KILLED}, 3600))
        self.successResultOf(hold("alive", {renewed.id: images.KILLED}, 3600))
        reclaimer = Reclaimer(self.registry, self.stores, clock, "me", 60)
        self.wait(reclaimer.start())
        self.addCleanup(reclaimer.stop)
        status = lambda image: self.successResultOf(self.registry.get(image.id)).status  # noqa: E731
        self.assertEqual([status(i) for i in (mine, theirs, renewed)], ["killed", "saving", "saving"])
        # "them" dies: its lease expires; "alive" keeps renewing.
        self.successResultOf(hold("them", {theirs.id: images.KILLED}, 0))
        self.successResultOf(hold("alive", {renewed.id: images.KILLED}, 3600))
        clock.advance(60)
        self.assertEqual([status(i) for i in (theirs, renewed)], ["killed", "saving"])

class RecoverOnStartTests(TestCase):
    """The API's service tree runs start-up recovery exactly when recover_on_start says."""

    async def start_after_crash(self, setting: str) -> tuple[str, int]:
        """
        Leave what a crash mid-upload leaves (an image saving, a partial
        write), start and stop the service with C{recover_on_start =
        setting}, and return the image's status and how many partial
        writes are left.
        """
        from twisted.internet import reactor

        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        path = os.path.join(data_dir, "glance.ini")
        with open(path, "w") as f:
            f.write(f"[DEFAULT]\nrecover_on_start = {setting}\n")
        config = load_config(path, endpoint="tcp:0:interface=127.0.0.1", data_dir=data_dir)
        runner = SynchronousRunner()
        registry = await open_sql_registry(config.sql_connection, runner)
        now = datetime.now(UTC)
        image = await registry.create(
            Image(id=str(uuid.uuid4()), status=images.QUEUED, created_at=now, updated_at=now)
        )
        await registry.update(image.id, ImageUpdate(fields={"status": images.SAVING}))
        store = FilesystemStore(filesystem_datadir(config.store("file"), config.data_dir), runner)
        writer = await store.open_writer(image.id)
        writer.write(b"partial")
        self.addCleanup(writer.abort)

        pool = ThreadPool(minthreads=1, maxthreads=4)
        service = glance_service(config, reactor, ThreadPoolService(reactor, pool))
        service.startService()
        try:
            await service.when_ready()
        finally:
            await service.stopService()

        status = (await registry.get(image.id)).status
        await registry.close()
        return status, len(store.incoming.listdir())

    async def test_recovers_by_default(self) -> None:
        """recover_on_start = true (the default) kills the image, drops the partial write."""
        self.assertEqual(await self.start_after_crash("true"), (images.KILLED, 0))

    async def test_recover_on_start_false(self) -> None:
        """
        recover_on_start = false leaves both alone: they may be another API
        node's upload in progress.
        """
        self.assertEqual(await self.start_after_crash("false"), (images.SAVING, 1))


class KilledServerTests(SynchronousTestCase):
    """A real twistd killed with SIGKILL mid-upload, then started again."""

    def start(self, data_dir: str, port: int) -> subprocess.Popen:
        # The work tree, so that its twisted/plugins is found.
        env = dict(os.environ, PYTHONPATH=PROJECT_ROOT)
        server = subprocess.Popen(
            [sys.executable, "-m", "twisted", "glance", "--port", f"tcp:{port}:interface=127.0.0.1", "--data-dir", data_dir],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.addCleanup(lambda: server.poll() is None and (server.kill(), server.wait()))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=1)
                return server
            except OSError:
                time.sleep(0.1)
        self.fail("server did not start")

    def status(self, port: int, image_id: str) -> str:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/images/{image_id}", method="HEAD")
        return urllib.request.urlopen(request, timeout=5).headers["x-image-meta-status"]

    def test_sigkill_mid_upload(self) -> None:
        """After SIGKILL mid-upload and a restart, the image is killed and no
        file in the store is left without an owner; other images survive."""
        data_dir = os.path.abspath(self.mktemp())
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = self.start(data_dir, port)
        done = urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/images", data=b"finished image",
            headers={"Content-Type": "application/octet-stream", "x-image-meta-name": "ok", **V1_RAW_BARE}), timeout=10)
        finished_id = json.load(done)["image"]["id"]
        image_id = str(uuid.uuid4())
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.sendall(
                f"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                f"x-image-meta-id: {image_id}\r\nx-image-meta-disk-format: raw\r\n"
                f"x-image-meta-container-format: bare\r\nContent-Length: {1 << 30}\r\n\r\n".encode()
            )
            client.sendall(b"x" * (8 << 20))
            deadline = time.monotonic() + 20
            while self.status(port, image_id) != "saving" and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            server.send_signal(signal.SIGKILL)
            server.wait()
        images_dir = os.path.join(data_dir, "images")
        leftovers = [f for _, _, fs in os.walk(images_dir) for f in fs]
        self.assertIn(finished_id, leftovers)
        self.assertGreater(len(leftovers), 1, "the partial upload should be on disk before restart")

        self.start(data_dir, port)
        self.assertEqual(self.status(port, image_id), "killed")
        self.assertEqual(self.status(port, finished_id), "active")
        files = [f for _, _, fs in os.walk(images_dir) for f in fs]
        self.assertEqual(files, [finished_id])
