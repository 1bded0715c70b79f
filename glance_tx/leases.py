"""
Upload leases: how a node tells the registry its uploads are still alive.

Each upload in progress is leased to the node running it (L{IRegistry.hold_uploads})
before its image moves to C{saving}, renewed every third of the lease time
in one registry call for all of the node's uploads, and released once the
upload has finished or failed. A node that stops renewing (SIGKILL, power
loss, a partition longer than the lease) lets its leases expire, and any
node's reclaim (L{glance_tx.recovery}) then fails those uploads; a live
node's uploads are never touched.
"""

from __future__ import annotations

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from glance_tx.errors import Conflict, GlanceError
from glance_tx.registry.interface import IRegistry

log = Logger()


@define
class UploadLeases:
    """The leases of this node's uploads in progress, renewed on C{clock}."""

    registry: IRegistry
    clock: IReactorTime
    node_id: str
    seconds: float
    #: Image id -> the status its image takes if the upload is reclaimed.
    held: dict[str, str] = field(factory=dict, init=False)
    _renewal: LoopingCall | None = field(default=None, init=False)

    async def hold(self, image_id: str, failure_status: str) -> None:
        """
        Lease the upload of C{image_id} to this node (before it starts).

        @raise Conflict: this node is already uploading to that image (the
            two would share one lease, and the loser's release end both).
        """
        if image_id in self.held:
            raise Conflict(f"Image {image_id} is already being uploaded to")
        self.held[image_id] = failure_status
        try:
            await self.registry.hold_uploads(
                self.node_id, {image_id: failure_status}, self.seconds
            )
        except BaseException:
            del self.held[image_id]
            raise

    async def release(self, image_id: str) -> None:
        """
        Drop the lease once the upload has finished or failed. A release
        the registry does not take is only logged: the lease expires.
        """
        if self.held.pop(image_id, None) is None:
            return
        try:
            await self.registry.release_upload(image_id, self.node_id)
        except GlanceError as e:
            log.info(
                "Lease on {image_id} not released ({e}); it will expire",
                image_id=image_id,
                e=e.message,
            )

    async def renew(self) -> None:
        """Renew every held lease, in one registry call."""
        if not self.held:
            return
        try:
            await self.registry.hold_uploads(self.node_id, dict(self.held), self.seconds)
        except GlanceError as e:
            # The next tick tries again; two misses in a row and another
            # node may reclaim these uploads.
            log.warn("Upload leases not renewed: {e}", e=e.message)
        except Exception:
            # Logged, not raised: a failure would stop the timer for good.
            log.failure("Upload leases not renewed")

    def start(self) -> None:
        """Renew every third of the lease time, from now on."""
        self._renewal = LoopingCall(lambda: Deferred.fromCoroutine(self.renew()))
        self._renewal.clock = self.clock
        self._renewal.start(self.seconds / 3, now=False)

    def stop(self) -> None:
        if self._renewal is not None and self._renewal.running:
            self._renewal.stop()
        self._renewal = None
