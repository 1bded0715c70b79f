"""
Start-up recovery after a crash (say, SIGKILL mid-upload).

Before serving: every store drops data from writes that never finished;
images left in C{saving} are marked C{killed} (their data went with the
partial writes); and committed data that no image owns is deleted, so the
stores hold exactly what the registry points at.

This assumes no other API node uses the same registry or stores: it would
take their uploads in progress for interrupted ones and kill the images; with
a shared store it would also delete their incoming data, and could delete data
committed a moment before its image records the location. Where nodes share
them, turn it off with ``recover_on_start = false`` (doc/deployment.rst).
"""

from __future__ import annotations

from attrs import frozen
from twisted.logger import Logger

from glance_tx import images
from glance_tx.images import ImageQuery, ImageUpdate
from glance_tx.registry.interface import IRegistry
from glance_tx.store.backends import StoreMap

log = Logger()


@frozen
class RecoveryReport:
    partial_writes_removed: int
    images_killed: int
    orphans_removed: int


async def recover(registry: IRegistry, stores: StoreMap) -> RecoveryReport:
    partial = 0
    for store in stores.stores.values():
        partial += await store.discard_incomplete()

    killed = 0
    while True:
        stuck = await registry.list(
            ImageQuery(
                filters={"status": images.SAVING},
                exclude_statuses=frozenset(),
                sort=(("created_at", "asc"),),
                limit=images.MAX_LIMIT,
            )
        )
        if not stuck:
            break
        for image in stuck:
            await registry.update(
                image.id,
                ImageUpdate(fields={"status": images.KILLED}),
                expected_status=frozenset({images.SAVING}),
            )
            log.warn("Image {image_id} was saving when the server stopped; now killed", image_id=image.id)
            killed += 1

    owned = await registry.all_locations()
    orphans = 0
    for store in stores.stores.values():
        for location in await store.locations() - owned:
            await store.delete(location)
            log.warn("Removed data no image owns: {location}", location=location)
            orphans += 1

    report = RecoveryReport(partial, killed, orphans)
    log.info(
        "Recovery: {partial} partial writes removed, {killed} images killed, "
        "{orphans} orphaned data removed",
        partial=partial, killed=killed, orphans=orphans,
    )
    return report
