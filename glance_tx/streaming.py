"""
The consumer chain every upload body goes through:

    client socket -> size limit -> stages (md5, the os_hash, ...) -> store writer

Bytes are gathered into batches of about 1 MiB so that each stage and the
store see few, large calls. Each stage (L{glance_tx.stages.IUploadStage})
runs on its own serial runner (``hashlib`` releases the GIL, so the hashes
and the store's writes proceed in parallel on worker threads), which keeps
its batches in order and lets one pool thread take batch after batch
without a trip through the reactor. What the stages find flows into the
upload's result as image fields. Backpressure: when the slowest stage falls
more than a high watermark behind, or the store writer asks for a pause,
the client's transport is paused; it resumes once every reason to pause
has gone (L{glance_tx.backpressure.PauseGate}).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, cast

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from glance_tx.backpressure import PauseGate, SharedBudget, Watermarks
from glance_tx.errors import BadRequest, GlanceError, RequestEntityTooLarge
from glance_tx.stages import IUploadStage
from glance_tx.store.interface import IStoreWriter, StoredData
from glance_tx.threads import BlockingRunner

log = Logger()

MiB = 1 << 20

#: How many serial runners an upload's stages share, round robin: two lets
#: the two hashes (C{hashlib} releases the GIL) use two cores, and a third
#: stage (the format inspector, cheap) rides behind the first's batch on
#: the same pool thread instead of waking one of its own for each batch
#: and sending its result back on its own.
STAGE_LANES = 2


@frozen
class UploadResult:
    """
    What arrived: where it is stored, its size, and the image fields the
    stages found (C{checksum}, C{os_hash_algo}, C{os_hash_value}, ...).
    """

    location: str
    size: int
    fields: Mapping[str, Any] = field(converter=lambda f: MappingProxyType(dict(f)))


@define
class _SerialStage:
    """One stage, fed batches strictly in order on a serial runner."""

    runner: BlockingRunner
    stage: IUploadStage
    #: Bytes fed but not yet taken by the stage.
    backlog: int = 0

    def feed(self, data: bytes) -> Deferred[None]:
        """Queue C{data}; the returned Deferred fires once the stage took it."""
        self.backlog += len(data)
        return self.runner.run(self.stage.feed, data).addBoth(self._fed, len(data))

    def _fed(self, result: Any, length: int) -> Any:
        self.backlog -= length
        return result

    def result(self) -> Deferred[Mapping[str, Any]]:
        """After everything fed so far: what the stage found."""
        return self.runner.run(self.stage.result)


@implementer(IConsumer, IPushProducer)
@define
class UploadPipeline:
    """
    Takes an upload's body bytes (as an L{IConsumer}) and passes them on to
    a store writer (as the L{IPushProducer} registered on it) and to each
    of its C{stages}, enforcing the size cap and the declared size as the
    bytes arrive.
    """

    writer: IStoreWriter
    runner: BlockingRunner
    size_cap: int
    stages: Sequence[IUploadStage] = ()
    expected_size: int | None = None
    #: What a body past C{size_cap} is told (by default, the cap itself).
    size_cap_message: str | None = None
    batch_size: int = MiB
    # Bytes handed to the stages but not yet taken. A few batches keep both
    # hash threads busy; more would only cost memory. Resuming as soon as
    # one batch has room (not once the stages have nearly run dry) keeps
    # them from idling while the next batch arrives.
    high_watermark: int = 4 * MiB
    low_watermark: int = 3 * MiB
    #: The bytes every upload in flight may queue together (the stages'
    #: backlog and the writer's queue both count), shared by all of them.
    budget: SharedBudget | None = None

    received: int = field(default=0, init=False)
    failure: GlanceError | None = field(default=None, init=False)
    _batch: list[bytes] = field(factory=list, init=False)
    _batch_len: int = field(default=0, init=False)
    _stages: list[_SerialStage] = field(init=False)
    _gate: PauseGate = field(factory=PauseGate, init=False)
    _stage_watermarks: Watermarks = field(init=False)
    _finished: bool = field(default=False, init=False)
    #: How much of the stages' backlog the budget has been told of.
    _counted: int = field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        lanes = [self.runner.serial() for _ in range(min(STAGE_LANES, len(self.stages)))]
        self._stages = [
            _SerialStage(lanes[i % len(lanes)], stage) for i, stage in enumerate(self.stages)
        ]
        self._stage_watermarks = Watermarks(self.high_watermark, self.low_watermark)
        self.writer.registerProducer(self, True)
        if self.budget is not None:
            self.budget.join(self._gate)
            self.writer.share(self.budget)

    # IConsumer: the client's transport registers here.
    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._gate.attach(cast(IPushProducer, producer))

    def unregisterProducer(self) -> None:
        self._gate.detach()

    def write(self, data: bytes) -> None:
        """
        Take one chunk of the body; raise the first refusal at once, the
        store's too (a full disk), so the rest of the body is not read.
        """
        if self.failure is None and self.writer.error is not None:
            self.failure = self.writer.error
        if self.failure is not None:
            raise self.failure
        if self._finished:
            raise RuntimeError("write after finish")
        self.received += len(data)
        if self.received > self.size_cap:
            self._refuse(
                RequestEntityTooLarge(
                    self.size_cap_message
                    or f"Image data exceeds the size limit of {self.size_cap} bytes"
                )
            )
        if self.expected_size is not None and self.received > self.expected_size:
            self._refuse(
                BadRequest(
                    f"Image data is larger than the declared size of "
                    f"{self.expected_size} bytes"
                )
            )
        self._batch.append(data)
        self._batch_len += len(data)
        if self._batch_len >= self.batch_size:
            self._flush()

    def _refuse(self, error: GlanceError) -> None:
        self.failure = error
        raise error

    def _flush(self) -> None:
        if not self._batch:
            return
        # bytes, also of one piece: a chunked body's pieces are memoryviews
        # (glance_tx.api.chunked); join returns a lone bytes piece as it is.
        data = b"".join(self._batch)
        self._batch = []
        self._batch_len = 0
        self.writer.write(data)
        for stage in self._stages:
            stage.feed(data).addCallbacks(self._stage_took, self._stage_failed)
        self._stage_took(None)

    @property
    def _stage_backlog(self) -> int:
        """How far the slowest stage is behind."""
        return max((stage.backlog for stage in self._stages), default=0)

    def _stage_took(self, _: None) -> None:
        """Called after every change of the stages' backlog."""
        backlog = self._stage_backlog
        self._stage_watermarks.apply(self._gate, "stages", backlog)
        if self.budget is not None and backlog != self._counted:
            self.budget.add(backlog - self._counted)
            self._counted = backlog

    def _stage_failed(self, failure: Failure) -> None:
        """A stage refused the upload: the next write, or the finish, says so."""
        self._stage_took(None)
        if self.failure is None:
            self.failure = _as_refusal(failure)

    # IPushProducer: the store writer pauses and resumes us.
    def pauseProducing(self) -> None:
        self._gate.pause("store")

    def resumeProducing(self) -> None:
        self._gate.resume("store")

    def stopProducing(self) -> None:
        self.failure = self.failure or GlanceError("The store stopped the upload")

    @property
    def paused(self) -> bool:
        return self._gate.paused

    async def finish(self) -> UploadResult:
        """
        After the last body byte: let every stage take the rest, check the
        declared size, gather what the stages found (each may refuse), and
        commit the data. On any refusal the data is aborted before the
        error is raised.
        """
        self._finished = True
        self._leave_budget()
        try:
            self._flush()
            if self.failure is not None:
                raise self.failure
            if self.expected_size is not None and self.received != self.expected_size:
                raise BadRequest(
                    f"Image data is {self.received} bytes but the declared size "
                    f"is {self.expected_size}"
                )
            fields: dict[str, Any] = {}
            for stage in self._stages:
                # Queued behind the stage's last feed, so it runs after it.
                try:
                    found = await stage.result()
                except Exception:
                    raise self.failure or _as_refusal(Failure()) from None
                if self.failure is not None:
                    raise self.failure
                fields.update(found)
        except BaseException:
            await self.abort()
            raise
        stored: StoredData = await self.writer.commit()
        return UploadResult(location=stored.location, size=stored.size, fields=fields)

    async def abort(self) -> None:
        """Drop everything received; the store removes what it wrote."""
        self._finished = True
        self._batch = []
        self._leave_budget()
        self._gate.detach()
        await self.writer.abort()

    def _leave_budget(self) -> None:
        """
        No more body bytes come: the client need not be paused for the
        budget (what is queued still counts until the stages and the
        writer have taken it).
        """
        if self.budget is not None:
            self.budget.leave(self._gate)


def _as_refusal(failure: Failure) -> GlanceError:
    """A stage's error as what the client is told: its own, or a 500 logged here."""
    if isinstance(failure.value, GlanceError):
        return failure.value
    log.failure("An upload stage failed", failure)
    return GlanceError("The upload could not be checked")
