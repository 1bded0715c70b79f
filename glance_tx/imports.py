"""
Interoperable image import (Images API v2.6): data staged or fetched, then
made an image in the background.

C{PUT /v2/images/{id}/stage} is an upload (L{glance_tx.uploads}) that
leaves the image C{uploading}, its data in the default store under a key
derived from the image id (L{staging_key}) and recorded as the image's one
location. Staged data is thus in a store every API node reaches, so the
import may be asked of another node than the stage; it is owned by its
image as any data is (a delete removes it, the orphan sweep leaves it
alone), and it never collides with the image's own data in that store.

C{POST /v2/images/{id}/import} moves the image to C{importing} (or, for
C{copy-image}, leaves it C{active}) and L{Importer.start} runs the rest on
the reactor without being awaited: the source (the staged data, a URL
read through the web-download store with the request-forgery guard, or an
existing copy) streams through the upload pipeline into each target store,
the first with every upload stage (inspection and hashes), the others
copied from the first. While it runs, C{os_glance_importing_to_stores}
names the stores still to do; a store that fails is added to
C{os_glance_failed_import}. Success makes the image C{active} with its new
locations (the staged data is removed); failure, when every store had to
succeed, returns the image to C{queued} with nothing stored, as Glance's
revert does. With a L{Converter}, the source is converted first (see
L{glance_tx.formats.conversion}).

Each import is recorded as an C{api_image_import} task (L{TaskLog}), and
the tasks API's C{import} task runs through here too (as web-download):
the task goes C{processing} when the import starts and C{success} (its
result the image id) or C{failure} (its message what failed) when it ends.

While it runs, the import is leased to this node (L{UploadLeases}, held by
the API before the image moves to C{importing} and released here once the
import has ended), naming the status the image takes if the node dies and
another node reclaims it (L{glance_tx.recovery}): C{uploading} again for
glance-direct (the staged data is kept until the import ends), C{queued}
for web-download, and C{active} (unchanged) for copy-image.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from attrs import define, evolve, field, frozen
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from glance_tx import images
from glance_tx.config import IMPORT_METHOD_NAMES
from glance_tx.errors import GlanceError, NotFound, VersionConflict
from glance_tx.formats.conversion import Converter
from glance_tx.images import (
    FAILED_IMPORT,
    IMPORTING_TO_STORES,
    Image,
    ImageUpdate,
    Location,
)
from glance_tx.leases import UploadLeases
from glance_tx.registry.interface import IRegistry
from glance_tx.stages import IUploadStage
from glance_tx.store.backends import StoreMap, is_read_only
from glance_tx.store.interface import IStore
from glance_tx.streaming import UploadPipeline, UploadResult
from glance_tx.task_log import TaskLog
from glance_tx.tasks import PROCESSING
from glance_tx.uploads import Uploader

log = Logger()

#: Glance's C{enabled_import_methods} default, in its order.
IMPORT_METHODS = IMPORT_METHOD_NAMES
GLANCE_DIRECT, WEB_DOWNLOAD, COPY_IMAGE = IMPORT_METHODS


#: Staged data's keys are derived from the image id in this namespace.
STAGING_NAMESPACE = uuid.UUID("7c1e2f3a-6b0d-5e4f-9a8b-0c1d2e3f4a5b")


def staging_key(image_id: str) -> str:
    """
    The key of C{image_id}'s staged data: a UUID (what every store takes
    as a key) that any node derives alike and that is never an image's id.
    """
    return str(uuid.uuid5(STAGING_NAMESPACE, image_id))


def staged_record(result: UploadResult, store_id: str) -> ImageUpdate:
    """
    What a finished stage records: its data as the image's location, and
    its size (as Glance's stage does: the project's image_stage_total
    counts it while the image is uploading or importing).
    """
    return ImageUpdate(
        fields={"locations": (Location(result.location, store_id),), "size": result.size}
    )


def _joined(store_ids: Sequence[str]) -> str:
    return ",".join(store_ids)


def reclaim_status(method: str) -> str:
    """
    What the image of an import by C{method} becomes if its node dies
    mid-import (the status its lease names; see the module docstring).
    """
    if method == GLANCE_DIRECT:
        return images.UPLOADING
    if method == COPY_IMAGE:
        return images.ACTIVE
    return images.QUEUED


def _reason(e: BaseException) -> str:
    return e.message if isinstance(e, GlanceError) else (str(e) or type(e).__name__)


@frozen
class ImportJob:
    """One import, as the API has accepted it."""

    image: Image
    method: str
    #: Where the data comes from: the staged data, the URL (read through
    #: the web-download store), or an existing copy.
    source: Location
    stores: tuple[str, ...]
    all_stores_must_succeed: bool = True
    #: The task that records it (L{TaskLog}); None records none.
    task_id: str | None = None


@define
class Importer:
    """Runs accepted imports in the background on the reactor."""

    registry: IRegistry
    stores: StoreMap
    uploader: Uploader
    #: Reads web-download URLs (an HTTP store: the request-forgery guard);
    #: None offers no web-download.
    web: IStore | None = None
    #: Glance's C{enabled_import_methods}.
    methods: tuple[str, ...] = IMPORT_METHODS
    #: Converts imports to C{[image_conversion] output_format}; None: no
    #: conversion.
    converter: Converter | None = None
    #: Records each import's task; None records none.
    tasks: TaskLog | None = None
    #: This node's leases: each import holds one while it runs (see
    #: L{hold}); None (tests of one process) holds none.
    leases: UploadLeases | None = None
    #: Each image's import in flight on this node.
    running: dict[str, Deferred[None]] = field(factory=dict, init=False)

    @property
    def offered(self) -> tuple[str, ...]:
        """
        The methods served: web-download only with a store to read URLs,
        copy-image only with more than one store to write to.
        """
        writable = [s for s in self.stores.stores.values() if not is_read_only(s)]
        unusable = {WEB_DOWNLOAD} if self.web is None else set()
        if len(writable) < 2:
            unusable.add(COPY_IMAGE)
        return tuple(m for m in self.methods if m not in unusable)

    @property
    def staging_store_id(self) -> str:
        """Where staged data goes: the default store (see L{staging_key})."""
        return self.stores.default_id

    async def hold(self, image_id: str, method: str) -> None:
        """
        Lease the import of C{image_id} to this node, before its image
        moves on (L{start} releases it when the import ends; L{release}
        if the import is not started after all).

        @raise Conflict: this node runs an upload or import to that image.
        """
        if self.leases is not None:
            await self.leases.hold(image_id, reclaim_status(method))

    async def release(self, image_id: str) -> None:
        if self.leases is not None:
            await self.leases.release(image_id)

    def start(self, job: ImportJob) -> Deferred[None]:
        """Run C{job} in the background; the Deferred never fails."""
        d = Deferred.fromCoroutine(self._run(job))
        d.addErrback(lambda f: log.failure("Import of {image_id} failed", f, image_id=job.image.id))
        self.running[job.image.id] = d

        def ended(_: object) -> None:
            self.running.pop(job.image.id, None)  # returns d: not to be returned

        d.addBoth(ended)
        return d

    async def stop(self, clock: IReactorTime, seconds: float) -> None:
        """
        At shutdown: the imports running get C{seconds} to end; then they
        are cancelled, which fails them as any failure does (the image
        queued again, C{os_glance_failed_import} set, data removed), so no
        image is left importing by a clean stop.
        """
        if not self.running:
            return
        waiting = self.idle()

        def cancel() -> None:
            for d in list(self.running.values()):
                d.cancel()

        timer = clock.callLater(seconds, cancel)
        try:
            await waiting
        finally:
            if timer.active():
                timer.cancel()

    def idle(self) -> Deferred[list[tuple[bool, None]]]:
        """Fires once every import running now has ended (for tests, shutdown)."""
        return DeferredList(list(self.running.values()))

    async def _run(self, job: ImportJob) -> None:
        work: list[str] = []
        failure: str | None = None
        try:
            await self._move_task(job, PROCESSING)
            failure = await self._import(job, work)
        except BaseException as e:
            failure = _reason(e)
            raise
        finally:
            if job.method == GLANCE_DIRECT:
                await self._delete(job.source)  # the staged data
            if self.converter is not None:
                for key in work:
                    await self._delete(Location(self.converter.work.location_for(key)), self.converter.work)
            if self.tasks is not None and job.task_id is not None:
                if failure is None:
                    await self.tasks.succeed(job.task_id, {"image_id": job.image.id})
                else:
                    await self.tasks.fail(job.task_id, failure)
            await self.release(job.image.id)

    async def _move_task(self, job: ImportJob, status: str) -> None:
        if self.tasks is not None and job.task_id is not None:
            await self.tasks.move(job.task_id, status)

    async def _import(self, job: ImportJob, work: list[str]) -> str | None:
        """
        The import; returns None when it succeeded, else what failed (for
        its task's message).
        """
        """Into each store in turn; C{work} collects the work files made."""
        image = job.image
        source = job.source
        reader: IStore | None = self.web if job.method == WEB_DOWNLOAD else None
        stages: Sequence[IUploadStage] | None = () if job.method == COPY_IMAGE else None
        remaining = list(job.stores)
        failed: list[str] = []
        reasons: list[str] = []
        done: list[Location] = []
        first: UploadResult | None = None
        converter = self.converter
        expected = images.ACTIVE if job.method == COPY_IMAGE else images.IMAGE_IMPORTING
        if job.method != COPY_IMAGE and converter is not None and converter.wants(image.disk_format):
            try:
                source = await self._convert(converter, image, source, reader, work)
            except Exception as e:
                reason = self._failed(image, "work directory", e)
                await self._revert(image.id, list(job.stores), [])
                return reason
            image = evolve(image, disk_format=converter.output_format)
            reader = converter.work
        for store_id in job.stores:
            remaining.remove(store_id)
            try:
                stored = await self._copy(image, reader, source, self.stores.get(store_id), stages)
                location = Location(stored.location, store_id)
                await self._record(image.id, location, expected)
            except Exception as e:
                reasons.append(self._failed(image, store_id, e))
                failed.append(store_id)
                if job.all_stores_must_succeed:
                    break
            else:
                done.append(location)
                if first is None:
                    first = stored
                    # The rest are copies of what was just checked.
                    source, reader, stages = location, None, ()
            if remaining:
                await self._progress(image.id, remaining, failed)
        failure = "; ".join(reasons) if failed and job.all_stores_must_succeed else None
        if job.method == COPY_IMAGE:
            await self._add_copies(image.id, done, failed)
            return failure
        if first is not None and failure is None:
            await self._activate(image, first, done, failed)
            return None
        await self._revert(image.id, failed or list(job.stores), done)
        return "; ".join(reasons) or "No store took the image"

    def _failed(self, image: Image, where: str, e: Exception) -> str:
        """Log the failure; return what a task says of it."""
        reason = _reason(e)
        log.warn(
            "Import of {image_id} into {where} failed: {reason}",
            image_id=image.id,
            where=where,
            reason=reason,
        )
        return f"Import into {where} failed: {reason}"

    async def _convert(
        self,
        converter: Converter,
        image: Image,
        source: Location,
        reader: IStore | None,
        work: list[str],
    ) -> Location:
        """
        The source, inspected as its declared format, into a work file, and
        that converted: the location of the output in the work store.
        """
        key = converter.work_key()
        work.append(key)
        await self._copy(image, reader, source, converter.work, None, key=key)
        assert image.disk_format is not None  # wants() said so
        output = await converter.convert(key, image.disk_format)
        work.append(output)
        return Location(converter.work.location_for(output))

    async def _copy(
        self,
        image: Image,
        reader: IStore | None,
        source: Location,
        target: IStore,
        stages: Sequence[IUploadStage] | None,
        key: str | None = None,
    ) -> UploadResult:
        """
        Stream C{source}, read by C{reader} (None: the store that holds
        it), into C{target} (under C{key}, by default the image id) through
        the upload pipeline, with C{stages} (None: an upload's).
        """
        if reader is None:
            reader = self.stores.for_location(source)
        writer = await target.open_writer(key or image.id)
        pipeline = UploadPipeline(
            writer=writer,
            runner=self.uploader.runner,
            size_cap=self.uploader.size_cap,
            stages=self.uploader.stages(image, None) if stages is None else stages,
            budget=self.uploader.budget,
        )
        try:
            await reader.read(source.url, pipeline)
        except BaseException:
            await pipeline.abort()
            raise
        return await pipeline.finish()

    async def _progress(self, image_id: str, remaining: list[str], failed: list[str]) -> None:
        try:
            await self.registry.update(
                image_id,
                ImageUpdate(
                    properties={IMPORTING_TO_STORES: _joined(remaining), FAILED_IMPORT: _joined(failed)}
                ),
            )
        except GlanceError as e:
            log.info("Import progress of {image_id} not recorded: {e}", image_id=image_id, e=e.message)

    async def _activate(
        self, image: Image, result: UploadResult, done: list[Location], failed: list[str]
    ) -> None:
        """The image active with its data (in C{image}'s disk format: converted)."""
        try:
            await self.registry.update(
                image.id,
                ImageUpdate(
                    fields={
                        **result.fields,
                        "disk_format": image.disk_format,
                        "status": images.ACTIVE,
                        "size": result.size,
                        "locations": tuple(done),
                    },
                    properties={IMPORTING_TO_STORES: "", FAILED_IMPORT: _joined(failed)},
                ),
                expected_status=frozenset({images.IMAGE_IMPORTING}),
            )
        except BaseException:
            # Deleted (or changed) meanwhile: the data has no owner.
            await self._delete_all(done)
            raise

    async def _revert(self, image_id: str, failed: list[str], done: list[Location]) -> None:
        await self._delete_all(done)
        try:
            await self.registry.update(
                image_id,
                ImageUpdate(
                    # Queued holds no data: the staged size goes with it.
                    fields={"status": images.QUEUED, "locations": (), "size": None},
                    properties={IMPORTING_TO_STORES: "", FAILED_IMPORT: _joined(failed)},
                ),
                expected_status=frozenset({images.IMAGE_IMPORTING}),
            )
        except GlanceError as e:
            log.info("Image {image_id} not returned to queued: {e}", image_id=image_id, e=e.message)

    async def _record(self, image_id: str, location: Location, status: str) -> None:
        """
        Add C{location} to the image (still in C{status}) as soon as its data
        is in, so the orphan sweep never takes it for unowned however long
        the other stores take; if that cannot be recorded, remove the data.
        """
        try:
            for _ in range(5):
                image = await self.registry.get(image_id)
                try:
                    await self.registry.update(
                        image_id,
                        ImageUpdate(fields={"locations": (*image.locations, location)}),
                        expected_status=frozenset({status}),
                        expected_version=image.version,
                    )
                    return
                except VersionConflict:
                    continue
            raise VersionConflict(f"Image {image_id} kept changing")
        except BaseException:
            await self._delete(location)
            raise

    async def _add_copies(self, image_id: str, done: list[Location], failed: list[str]) -> None:
        """The copies are recorded already; say the copy has ended."""
        try:
            await self.registry.update(
                image_id,
                ImageUpdate(properties={IMPORTING_TO_STORES: "", FAILED_IMPORT: _joined(failed)}),
                expected_status=frozenset({images.ACTIVE}),
            )
        except GlanceError as e:
            log.info("Copy of {image_id} not recorded as ended: {e}", image_id=image_id, e=e.message)

    async def _delete_all(self, locations: Sequence[Location]) -> None:
        for location in locations:
            await self._delete(location)

    async def _delete(self, location: Location, store: IStore | None = None) -> None:
        try:
            await (store or self.stores.for_location(location)).delete(location.url)
        except NotFound:
            pass
        except GlanceError as e:
            log.warn("Imported data at {store} not removed: {e}", store=location.store, e=e.message)
