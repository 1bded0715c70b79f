"""
The life of one image-data upload, independent of API version.

C{start} moves a queued image to C{saving} (atomically, so two uploads to one
image cannot both begin), opens a store writer and chooses the stages the
bytes pass through (L{glance_tx.stages}). The L{Upload} then takes the body,
as the L{IConsumer} the client's transport is registered on; C{finish}
records the result (what the stages found included) and makes the image
C{active}, and
C{abort} removes the partial data and puts the image in its truthful failure
state: v1 says C{killed}, v2 returns the image to C{queued}. While it runs
the upload is leased to this node (L{glance_tx.leases}), so that if the node
dies another node reclaims it (L{glance_tx.recovery}) with that same status.
A node takes at most C{max_concurrent_uploads} at once (L{UploadSlots}).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from attrs import define, field
from twisted.internet.interfaces import IConsumer, IProducer
from twisted.logger import Logger
from zope.interface import implementer

from glance_tx import images, malloc
from glance_tx.backpressure import SharedBudget, Watermarks
from glance_tx.config import ImageFormatConfig
from glance_tx.errors import (
    BadRequest,
    Conflict,
    GlanceError,
    Overloaded,
    RequestEntityTooLarge,
)
from glance_tx.formats.inspection import InspectionStage, wants_inspection
from glance_tx.images import Image, ImageUpdate, Location
from glance_tx.leases import UploadLeases
from glance_tx.project_limits import ProjectLimiter
from glance_tx.registry.interface import IRegistry
from glance_tx.stages import ChecksumStage, HashStage, IUploadStage
from glance_tx.store.backends import StoreMap
from glance_tx.store.interface import IStore
from glance_tx.streaming import UploadPipeline, UploadResult
from glance_tx.threads import BlockingRunner

log = Logger()

#: What a finished upload records: the image change, from what arrived and
#: the id of the store it is in.
Record = Callable[[UploadResult, str], ImageUpdate]


def becomes_active(result: UploadResult, store_id: str) -> ImageUpdate:
    """A direct upload's record: the data is the image's, which is active."""
    return ImageUpdate(
        fields={
            **result.fields,
            "status": images.ACTIVE,
            "size": result.size,
            "locations": (Location(result.location, store_id),),
        }
    )


def upload_budget(size: int | None) -> SharedBudget | None:
    """
    The budget of C{upload_buffer_budget} bytes that every upload's queued
    batches share (None: none). Resumed at three quarters of it, as one
    upload's own queue resumes once a batch has room.
    """
    if size is None:
        return None
    return SharedBudget(Watermarks(high=size, low=size * 3 // 4))


@define
class UploadSlots:
    """
    How many uploads this node runs, and the most it may (None: no limit).
    Each one holds its slot from before its image is C{saving} until it is
    finished or aborted, and so also bounds the hash and store work (and
    the memory of its batches) that uploads hold. When the last one gives
    its slot back, C{on_idle} runs (by default L{glance_tx.malloc.trim}:
    what the uploads' threads freed goes back to the system).
    """

    limit: int | None = None
    active: int = 0
    on_idle: Callable[[], object] = malloc.trim

    def take(self) -> None:
        """
        @raise Overloaded: every slot is taken (503 with Retry-After).
        """
        if self.limit is not None and self.active >= self.limit:
            raise Overloaded(
                f"This node takes {self.limit} uploads at once "
                "(max_concurrent_uploads); try again later."
            )
        self.active += 1

    def give_back(self) -> None:
        self.active -= 1
        if self.active == 0:
            self.on_idle()


@implementer(IConsumer)
@define
class Upload:
    """
    One upload in progress: the consumer of its body. The client's
    transport registers as its producer (and is paused while the store or
    a stage is behind); the body's bytes go to C{write}.
    """

    image: Image
    pipeline: UploadPipeline
    registry: IRegistry
    store: IStore
    store_id: str
    failure_status: str
    leases: UploadLeases | None = None
    slots: UploadSlots | None = None
    #: The image's status while the data arrives (v2's stage: uploading).
    working_status: str = images.SAVING
    record: Record = becomes_active
    done: bool = field(default=False, init=False)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self.pipeline.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.pipeline.unregisterProducer()

    def write(self, data: bytes) -> None:
        """Take the next body bytes; raise a L{GlanceError} to refuse them."""
        self.pipeline.write(data)

    @property
    def paused(self) -> bool:
        """Whether the client should be paused now."""
        return self.pipeline.paused

    async def finish(self) -> Image:
        """Check and commit the data, then record it: the image is active."""
        self.done = True
        try:
            return await self._finish()
        finally:
            await self._release()

    async def _release(self) -> None:
        if self.slots is not None:
            self.slots.give_back()
            self.slots = None
        if self.leases is not None:
            await self.leases.release(self.image.id)

    async def _finish(self) -> Image:
        try:
            result = await self.pipeline.finish()
        except BaseException:
            await self._mark_failed()
            raise
        try:
            return await self.registry.update(
                self.image.id,
                self.record(result, self.store_id),
                expected_status=frozenset({self.working_status}),
            )
        except BaseException:
            # The image was deleted (or changed) while uploading: the data
            # has no owner, so it must not stay.
            log.warn(
                "Upload of {image_id} committed but not recorded; removing data",
                image_id=self.image.id,
            )
            await self.store.delete(result.location)
            raise

    async def abort(self, reason: GlanceError | None = None) -> None:
        """Remove the partial data and mark the image failed (idempotent)."""
        if self.done:
            return
        self.done = True
        log.info(
            "Upload of {image_id} aborted: {reason}",
            image_id=self.image.id,
            reason=reason.message if reason else "client went away",
        )
        try:
            await self.pipeline.abort()
            await self._mark_failed()
        finally:
            await self._release()

    async def _mark_failed(self) -> None:
        try:
            await self.registry.update(
                self.image.id,
                ImageUpdate(fields={"status": self.failure_status}),
                expected_status=frozenset({self.working_status}),
            )
        except GlanceError as e:
            # Deleted meanwhile, or already failed: nothing more to record.
            log.info("Image {image_id} not marked failed: {e}", image_id=self.image.id, e=e.message)


@define
class Uploader:
    """Starts uploads: the one path by which image data enters a store."""

    registry: IRegistry
    stores: StoreMap
    runner: BlockingRunner
    size_cap: int
    #: This node's upload leases; None (tests of one process) takes none.
    leases: UploadLeases | None = None
    #: The algorithm of os_hash_value (Glance's hashing_algorithm).
    hashing_algorithm: str = "sha512"
    #: What the content of a bare image must be; None inspects nothing.
    image_format: ImageFormatConfig | None = field(factory=ImageFormatConfig)

    def stages(self, image: Image, expected_checksum: str | None) -> Sequence[IUploadStage]:
        """What every byte of an upload to C{image} passes through."""
        stages: list[IUploadStage] = [
            ChecksumStage(expected_checksum),
            HashStage(self.hashing_algorithm),
        ]
        if self.image_format is not None and wants_inspection(image.container_format):
            stages.append(InspectionStage(image.disk_format, self.image_format))
        return stages

    #: Per-project limits (image_count_uploading, image_size_total).
    limiter: ProjectLimiter | None = None
    slots: UploadSlots = field(factory=UploadSlots)
    #: What every upload's queued bytes count against (None: no budget).
    budget: SharedBudget | None = None

    def check_declared_size(
        self, declared_name: str, declared: int | None, content_length: int | None
    ) -> int | None:
        """
        Refuse, before any body byte, an upload whose declared size or
        Content-Length is over the cap (413), or whose two disagree (400).
        Returns the size the body must have, if the client said.
        """
        for size in (declared, content_length):
            if size is not None and size > self.size_cap:
                raise RequestEntityTooLarge(
                    f"Image size {size} exceeds the limit of {self.size_cap} bytes"
                )
        if declared is not None and content_length is not None and declared != content_length:
            raise BadRequest(
                f"{declared_name} ({declared}) does not match the "
                f"Content-Length ({content_length})"
            )
        return declared if declared is not None else content_length

    async def _size_cap(
        self, image: Image, expected_size: int | None, size_limit: str
    ) -> tuple[int, str | None]:
        """
        The most this upload may write, and what a body past it is told:
        C{image_size_cap}, or less when the owner's C{size_limit} leaves
        less (refused at once when the declared size does not fit).
        """
        if self.limiter is None:
            return self.size_cap, None
        allowance = await self.limiter.upload_allowance(image.owner, size_limit)
        if allowance is None or allowance.remaining >= self.size_cap:
            return self.size_cap, None
        message = (
            f"Image data exceeds what is left of project {image.owner}'s "
            f"{allowance.name} limit of {allowance.limit} MiB "
            f"({allowance.remaining} bytes)"
        )
        if expected_size is not None and expected_size > allowance.remaining:
            raise RequestEntityTooLarge(message)
        return allowance.remaining, message

    async def start(
        self,
        image: Image,
        *,
        store_id: str | None = None,
        expected_size: int | None = None,
        expected_checksum: str | None = None,
        failure_status: str = images.KILLED,
        changes: ImageUpdate | None = None,
        expected_version: int | None = None,
        working_status: str = images.SAVING,
        record: Record = becomes_active,
        key: str | None = None,
        stages: Sequence[IUploadStage] | None = None,
        size_limit: str = "image_size_total",
    ) -> Upload:
        """
        Move C{image} from C{queued} to C{saving} (or C{working_status};
        applying C{changes} in the same step) and open a writer on the
        chosen store, under C{key} (by default the image id). With
        C{expected_version}, only if the record is still at that version.
        C{record} says what the finished upload records; C{stages}, what
        the bytes pass through (by default L{stages}); C{size_limit}, the
        project limit its bytes count against (C{image_stage_total} for a
        stage).

        @raise Conflict: the image is not queued (already has data, or
            another upload has started).
        @raise VersionConflict: the record is no longer at
            C{expected_version}.
        """
        store_id = self.stores.checked_id(store_id)
        store = self.stores.get(store_id)
        if image.status != images.QUEUED:
            raise Conflict(
                f"Image {image.id} is {image.status}; data can only be uploaded "
                "to a queued image"
            )
        size_cap, cap_message = await self._size_cap(image, expected_size, size_limit)
        base = changes or ImageUpdate()
        working = attrs.evolve(base, fields={**base.fields, "status": working_status})
        self.slots.take()
        try:
            return await self._start(
                image,
                store,
                store_id,
                working,
                expected_size=expected_size,
                expected_checksum=expected_checksum,
                failure_status=failure_status,
                expected_version=expected_version,
                size_cap=size_cap,
                cap_message=cap_message,
                working_status=working_status,
                record=record,
                key=key,
                stages=stages,
            )
        except BaseException:
            self.slots.give_back()
            raise

    async def _start(
        self,
        image: Image,
        store: IStore,
        store_id: str,
        working: ImageUpdate,
        *,
        expected_size: int | None,
        expected_checksum: str | None,
        failure_status: str,
        expected_version: int | None,
        size_cap: int,
        cap_message: str | None,
        working_status: str,
        record: Record,
        key: str | None,
        stages: Sequence[IUploadStage] | None,
    ) -> Upload:
        # Leased before it is saving (or uploading, for a stage): a saving
        # image never lacks its lease (one without a lease is reclaimed at
        # once), and a stage in progress shows by its lease.
        leases = self.leases
        if leases is not None:
            await leases.hold(image.id, failure_status)
        try:
            image = await self.registry.update(
                image.id,
                working,
                expected_status=frozenset({images.QUEUED}),
                expected_version=expected_version,
            )
            try:
                writer = await store.open_writer(key or image.id, size=expected_size)
            except BaseException:
                await self.registry.update(
                    image.id,
                    ImageUpdate(fields={"status": failure_status}),
                    expected_status=frozenset({working_status}),
                )
                raise
        except BaseException:
            if leases is not None:
                await leases.release(image.id)
            raise
        pipeline = UploadPipeline(
            writer=writer,
            runner=self.runner,
            size_cap=size_cap,
            size_cap_message=cap_message,
            stages=self.stages(image, expected_checksum) if stages is None else stages,
            expected_size=expected_size,
            budget=self.budget,
        )
        return Upload(
            image=image,
            pipeline=pipeline,
            registry=self.registry,
            store=store,
            store_id=store_id,
            failure_status=failure_status,
            leases=leases,
            slots=self.slots,
            working_status=working_status,
            record=record,
        )
