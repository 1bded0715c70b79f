"""
Recovery from a crash (say, SIGKILL mid-upload), safe with several nodes.

Uploads are leased to their node (L{glance_tx.leases}). A reclaim fails the
uploads whose lease has expired, and so whose node is gone, never a live
node's: each image is checked and changed in one registry transaction, so
of two nodes reclaiming at once only one acts. The image takes the status
its upload's own abort would have set (v1 C{killed}, v2 C{queued}; an
upload from before leases existed: C{killed}), and its partial data is
removed from every store (L{IStore.discard_incomplete} with the image id),
leaving other uploads' partial data alone.

A node reclaims at start (its own uploads from before the restart at once,
as expired, since a node id names one process at a time) and then every
lease period, so a surviving node cleans up after a dead one without
restarting.

The orphan sweep removes committed data that no image owns. Data is
committed a moment before its image records the location, so data seen
unowned once may be a live upload between those two steps: only data seen
unowned in sweeps at least a lease period apart is removed. By then the
upload that wrote it has recorded it, or failed and removed it itself (a
record that fails makes the upload delete its data), or its node is gone.
"""

from __future__ import annotations

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from glance_tx import images
from glance_tx.errors import GlanceError, NotFound
from glance_tx.images import Image, ImageUpdate
from glance_tx.imports import staging_key
from glance_tx.registry.interface import IRegistry
from glance_tx.store.backends import StoreMap
from glance_tx.task_log import TaskLog
from glance_tx.tasks import ENDED, TaskQuery

log = Logger()


async def reclaim(
    registry: IRegistry,
    stores: StoreMap,
    dead_node_id: str | None = None,
    tasks: TaskLog | None = None,
) -> int:
    """
    Reclaim the uploads, stages and imports of nodes that are gone (and
    those of C{dead_node_id}) and remove their partial data; return how
    many were reclaimed. An image an import returned to C{uploading} whose
    staged data is gone after all is made C{queued}; the tasks of a
    reclaimed import fail, saying why.
    """
    reclaimed = await registry.reclaim_uploads(dead_node_id)
    for image in reclaimed:
        partial = 0
        for store in stores.stores.values():
            # An upload's or an import's writes are under the image id, a
            # stage's under its staging key.
            for key in (image.id, staging_key(image.id)):
                partial += await store.discard_incomplete(key)
        if image.status == images.UPLOADING and image.locations:
            await _check_staged(registry, stores, image)
        await _fail_tasks(tasks or TaskLog(registry), image)
        log.warn(
            "Upload of {image_id} reclaimed: its node is gone; image now "
            "{status}, {partial} partial writes removed",
            image_id=image.id,
            status=image.status,
            partial=partial,
        )
    return len(reclaimed)


async def _check_staged(registry: IRegistry, stores: StoreMap, image: Image) -> None:
    """An image back to uploading keeps that status only with its staged data."""
    staged = image.locations[0]
    try:
        await stores.for_location(staged).size(staged.url)
        return
    except NotFound:
        pass
    try:
        await registry.update(
            image.id,
            ImageUpdate(fields={"status": images.QUEUED, "locations": ()}),
            expected_version=image.version,
        )
    except GlanceError as e:
        log.info("Image {image_id} left uploading: {e}", image_id=image.id, e=e.message)


async def _fail_tasks(tasks: TaskLog, image: Image) -> None:
    """The image's tasks that had not ended fail: their node is gone."""
    for task in await tasks.registry.list_tasks(TaskQuery(image_id=image.id)):
        if task.status in ENDED or task.created_at > image.updated_at:
            continue  # ended, or a new import's, begun since the reclaim
        await tasks.fail(
            task.id, f"The node running this import stopped; the image is {image.status} again"
        )


@define
class OrphanSweep:
    """Removes committed data no image owns, once it has stayed so C{min_age}."""

    registry: IRegistry
    stores: StoreMap
    clock: IReactorTime
    min_age: float
    #: Unowned location -> when a sweep first saw it unowned.
    seen: dict[str, float] = field(factory=dict, init=False)

    async def sweep(self) -> int:
        now = self.clock.seconds()
        held: dict[str, list[str]] = {}
        for store_id, store in self.stores.stores.items():
            for location in await store.locations():
                held.setdefault(location, []).append(store_id)
        # Read after the stores: data committed and recorded in between is
        # owned here; data committed and not yet recorded waits min_age.
        owned = await self.registry.all_locations()
        unowned = set(held) - owned
        self.seen = {loc: self.seen.get(loc, now) for loc in unowned}
        removed = 0
        for location, first_seen in sorted(self.seen.items()):
            if now - first_seen < self.min_age:
                continue
            for store_id in held[location]:
                await self.stores.stores[store_id].delete(location)
            del self.seen[location]
            log.warn("Removed data no image owns: {location}", location=location)
            removed += 1
        return removed


@define
class Reclaimer:
    """Reclaim and sweep at start, then every C{period} seconds on C{clock}."""

    registry: IRegistry
    stores: StoreMap
    clock: IReactorTime
    node_id: str
    period: float
    #: Fails the tasks of reclaimed imports (by default with Glance's
    #: task_time_to_live).
    tasks: TaskLog | None = None
    sweep: OrphanSweep = field(init=False)
    _loop: LoopingCall | None = field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self.sweep = OrphanSweep(self.registry, self.stores, self.clock, self.period)

    async def once(self, dead_node_id: str | None = None) -> None:
        try:
            await reclaim(self.registry, self.stores, dead_node_id, self.tasks)
            await self.sweep.sweep()
        except GlanceError as e:
            # Registry or store down: the next round tries again.
            log.warn("Reclaim of abandoned uploads failed: {e}", e=e.message)
        except Exception:
            # Logged, not raised: a failure would stop the timer for good.
            log.failure("Reclaim of abandoned uploads failed")

    async def start(self) -> None:
        """The first round (this node's own old uploads included), then the timer."""
        await self.once(dead_node_id=self.node_id)
        self._loop = LoopingCall(lambda: Deferred.fromCoroutine(self.once()))
        self._loop.clock = self.clock
        self._loop.start(self.period, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
