"""Upload leases: held while an upload runs, renewed on the clock, released after."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.components import proxyForInterface
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from glance_tx import images
from glance_tx.errors import Conflict
from glance_tx.images import Image, new_image_id
from glance_tx.leases import UploadLeases
from glance_tx.registry.interface import IRegistry
from glance_tx.store.backends import StoreMap
from glance_tx.store.filesystem import FilesystemStore
from glance_tx.threads import SynchronousRunner
from glance_tx.uploads import Uploader
from tests.test_registry_sql import sync_open

LEASE = 60.0


@define
class CountingRegistry(proxyForInterface(IRegistry, "inner")):  # type: ignore[misc]
    """An IRegistry that records its lease calls."""

    inner: Any
    calls: list[tuple[str, Any]] = field(factory=list)

    def hold_uploads(self, node_id: str, uploads: Any, seconds: float) -> Deferred[None]:
        self.calls.append(("hold", sorted(uploads)))
        return self.inner.hold_uploads(node_id, uploads, seconds)

    def release_upload(self, image_id: str, node_id: str) -> Deferred[None]:
        self.calls.append(("release", image_id))
        return self.inner.release_upload(image_id, node_id)


class LeaseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        # The registry's clock is the test's, so leases expire as it moves.
        sql = sync_open(
            "sqlite://", now=lambda: datetime.fromtimestamp(self.clock.seconds(), UTC)
        )
        self.addCleanup(lambda: self.successResultOf(sql.close()))
        self.registry = CountingRegistry(sql)
        self.leases = UploadLeases(self.registry, self.clock, "node-a", LEASE)
        self.leases.start()
        self.addCleanup(self.leases.stop)
        runner = SynchronousRunner()
        root = FilePath(self.mktemp())
        root.makedirs()
        self.uploader = Uploader(
            registry=self.registry,
            stores=StoreMap({"file": FilesystemStore(root.path, runner)}, "file"),
            runner=runner,
            size_cap=1 << 30,
            leases=self.leases,
        )

    def queued(self) -> Image:
        now = datetime.fromtimestamp(self.clock.seconds(), UTC)
        return self.successResultOf(
            self.registry.create(
                Image(id=new_image_id(), status=images.QUEUED, created_at=now, updated_at=now)
            )
        )

    def start(self, image: Image, status: str = images.KILLED) -> Any:
        return self.successResultOf(
            Deferred.fromCoroutine(self.uploader.start(image, failure_status=status))
        )

    def reclaimed(self) -> list[str]:
        return [i.id for i in self.successResultOf(self.registry.reclaim_uploads())]

    def test_renewed_while_running(self) -> None:
        """
        A running upload's lease is renewed every third of the lease time,
        all of a node's uploads in one registry call, so it outlives many
        lease periods without being reclaimed.
        """
        first, second = self.queued(), self.queued()
        uploads = [self.start(first), self.start(second)]
        del self.registry.calls[:]
        for _ in range(9):
            self.clock.advance(LEASE / 3)
            self.assertEqual(self.reclaimed(), [])
        self.assertEqual(self.registry.calls, [("hold", sorted([first.id, second.id]))] * 9)
        for upload in uploads:
            self.successResultOf(Deferred.fromCoroutine(upload.abort()))

    def test_expires_without_renewal(self) -> None:
        """
        Once the node stops renewing (it died), the lease expires after the
        lease time and not before; the reclaim gives the image the status
        the upload's own abort would (queued, as v2).
        """
        image = self.queued()
        self.start(image, images.QUEUED)
        self.leases.stop()
        self.clock.advance(LEASE - 1)
        self.assertEqual(self.reclaimed(), [])
        self.clock.advance(1)
        self.assertEqual(self.reclaimed(), [image.id])
        self.assertEqual(self.successResultOf(self.registry.get(image.id)).status, images.QUEUED)

    def test_released_when_finished_or_aborted(self) -> None:
        """
        The lease is released when the upload finishes or aborts, and no
        longer renewed: the node holds nothing afterwards.
        """
        done, aborted = self.queued(), self.queued()
        finishing, aborting = self.start(done), self.start(aborted)
        finishing.write(b"data")
        self.assertEqual(
            self.successResultOf(Deferred.fromCoroutine(finishing.finish())).status,
            images.ACTIVE,
        )
        self.successResultOf(Deferred.fromCoroutine(aborting.abort()))
        self.assertEqual(
            [c for c in self.registry.calls if c[0] == "release"],
            [("release", done.id), ("release", aborted.id)],
        )
        self.assertEqual(self.leases.held, {})
        del self.registry.calls[:]
        self.clock.advance(LEASE)
        self.assertEqual(self.registry.calls, [])

    def test_held_before_saving_and_released_on_conflict(self) -> None:
        """
        The lease is taken before the image moves to saving (so a saving
        image is never without one), and a start that loses (the image is
        no longer queued) releases it; a second upload to an image this
        node is already uploading is a Conflict.
        """
        image = self.queued()
        self.start(image)
        self.assertEqual(self.registry.calls, [("hold", [image.id])])
        d = Deferred.fromCoroutine(self.uploader.start(image))  # a stale queued record
        self.failureResultOf(d, Conflict)
        other = self.queued()
        self.successResultOf(
            self.registry.update(other.id, images.ImageUpdate(fields={"status": images.SAVING}))
        )
        self.failureResultOf(Deferred.fromCoroutine(self.uploader.start(other)), Conflict)
        self.assertEqual(self.registry.calls[-1], ("release", other.id))
        self.assertEqual(set(self.leases.held), {image.id})
