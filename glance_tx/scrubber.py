"""
Delayed delete, as Glance's: with C{delayed_delete}, deleting an active
image only marks it C{pending_delete} (deleted for every reader; its
caching proxies purged at once) and keeps its data. The scrubber removes
that data once C{scrub_time} seconds have passed, then deletes the record
for good; it runs every C{wakeup_time} seconds in the API process
(L{glance_tx.services.scrubber_service}), as C{glance-scrubber --daemon}
would beside Glance.

Each round also deletes the tasks that have expired
(L{IRegistry.delete_expired_tasks}).

Time is the registry's (L{IRegistry.pending_deletes}), so the nodes' clocks
need not agree. Several nodes may scrub at once: deleting data already gone
is no error, and only one of them deletes each record.
"""

from __future__ import annotations

from attrs import frozen
from twisted.logger import Logger

from glance_tx.errors import NotFound
from glance_tx.locations import delete_data
from glance_tx.registry.interface import IRegistry
from glance_tx.store.backends import StoreMap

log = Logger()


@frozen
class Scrubber:
    """Removes what delayed delete kept, once it has waited C{scrub_time} seconds."""

    registry: IRegistry
    stores: StoreMap
    scrub_time: float

    async def scrub(self) -> int:
        """
        One round: remove the data of every image pending delete for at
        least C{scrub_time} seconds, then delete its record. An image whose
        data could not all be removed stays pending, for the next round.
        Returns how many images were scrubbed; never fails (a registry that
        does not answer is logged and waited out).
        """
        try:
            pending = await self.registry.pending_deletes(self.scrub_time)
        except Exception:
            log.failure("Scrubber could not list the images pending delete")
            return 0
        scrubbed = 0
        for image in pending:
            if not await delete_data(self.stores, image.id, image.locations):
                continue
            try:
                await self.registry.delete(image.id)
            except NotFound:
                continue  # another node scrubbed it meanwhile
            except Exception:
                log.failure("Scrubber could not delete image {image_id}", image_id=image.id)
                continue
            log.info("Scrubbed image {image_id}", image_id=image.id)
            scrubbed += 1
        await self._expire_tasks()
        return scrubbed

    async def _expire_tasks(self) -> None:
        """Tasks past their C{expires_at} are deleted for good (Glance purges them too)."""
        try:
            deleted = await self.registry.delete_expired_tasks()
        except Exception:
            log.failure("Scrubber could not delete the expired tasks")
            return
        if deleted:
            log.info("Deleted {count} expired tasks", count=deleted)
