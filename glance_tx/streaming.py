"""
The consumer chain every upload body goes through:

    client socket -> size limit -> md5 + sha512 -> store writer

Bytes are gathered into batches of about 1 MiB so that each hash and the
store see few, large calls. Each hash runs on its own serial runner
(``hashlib`` releases the GIL, so both hashes and the store's writes proceed in
parallel on worker threads), which keeps its batches in order and lets one
pool thread take batch after batch without a trip through the reactor.
Backpressure: when the
hashes fall more than a high watermark behind, or the store writer asks for a
pause, the client's transport is paused; it resumes once every reason to
pause has gone (L{glance_tx.backpressure.PauseGate}).
"""

from __future__ import annotations

import hashlib
from typing import Any, cast

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer
from zope.interface import implementer

from glance_tx.backpressure import PauseGate, Watermarks
from glance_tx.errors import BadRequest, GlanceError, RequestEntityTooLarge
from glance_tx.store.interface import IStoreWriter, StoredData
from glance_tx.threads import BlockingRunner

MiB = 1 << 20


@frozen
class UploadResult:
    """What arrived: where it is stored, its size and its hashes."""

    location: str
    size: int
    checksum: str
    os_hash_algo: str
    os_hash_value: str


@define
class _SerialHasher:
    """One hash object, fed batches strictly in order on a serial runner."""

    runner: BlockingRunner
    hasher: Any
    #: Bytes fed but not yet hashed.
    backlog: int = 0

    def feed(self, data: bytes) -> Deferred[None]:
        """Queue C{data}; the returned Deferred fires once it is hashed."""
        self.backlog += len(data)
        return self.runner.run(self.hasher.update, data).addCallback(
            self._hashed, len(data)
        )

    def _hashed(self, _: None, length: int) -> None:
        self.backlog -= length

    def drained(self) -> Deferred[None]:
        """Fire once everything fed so far is hashed."""
        return self.runner.run(_nothing)


def _nothing() -> None:
    pass


@implementer(IConsumer, IPushProducer)
@define
class UploadPipeline:
    """
    Takes an upload's body bytes (as an L{IConsumer}) and passes them on to
    a store writer (as the L{IPushProducer} registered on it), enforcing the
    size cap and the declared size as the bytes arrive and hashing them.
    """

    writer: IStoreWriter
    runner: BlockingRunner
    size_cap: int
    expected_size: int | None = None
    #: What a body past C{size_cap} is told (by default, the cap itself).
    size_cap_message: str | None = None
    expected_checksum: str | None = None
    batch_size: int = MiB
    # Bytes handed to the hashes but not yet hashed. A few batches keep both
    # hash threads busy; more would only cost memory. Resuming as soon as
    # one batch has room (not once the hashes have nearly run dry) keeps
    # them from idling while the next batch arrives.
    high_watermark: int = 4 * MiB
    low_watermark: int = 3 * MiB

    received: int = field(default=0, init=False)
    failure: GlanceError | None = field(default=None, init=False)
    _batch: list[bytes] = field(factory=list, init=False)
    _batch_len: int = field(default=0, init=False)
    _md5: _SerialHasher = field(init=False)
    _sha512: _SerialHasher = field(init=False)
    _gate: PauseGate = field(factory=PauseGate, init=False)
    _hash_watermarks: Watermarks = field(init=False)
    _finished: bool = field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self._md5 = _SerialHasher(
            self.runner.serial(), hashlib.md5(usedforsecurity=False)
        )
        self._sha512 = _SerialHasher(self.runner.serial(), hashlib.sha512())
        self._hash_watermarks = Watermarks(self.high_watermark, self.low_watermark)
        self.writer.registerProducer(self, True)

    # IConsumer: the client's transport registers here.
    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._gate.attach(cast(IPushProducer, producer))

    def unregisterProducer(self) -> None:
        self._gate.detach()

    def write(self, data: bytes) -> None:
        """Take one chunk of the body; raise the first refusal at once."""
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
        data = self._batch[0] if len(self._batch) == 1 else b"".join(self._batch)
        self._batch = []
        self._batch_len = 0
        self.writer.write(data)
        self._md5.feed(data).addCallback(self._hashed)
        self._sha512.feed(data).addCallback(self._hashed)
        self._hashed(None)

    @property
    def _hash_backlog(self) -> int:
        """How far the slower hash is behind."""
        return max(self._md5.backlog, self._sha512.backlog)

    def _hashed(self, _: None) -> None:
        self._hash_watermarks.apply(self._gate, "hashing", self._hash_backlog)

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
        After the last body byte: drain the hashes, check the declared size
        and checksum, and commit the data. On any refusal the data is
        aborted before the error is raised.
        """
        self._finished = True
        try:
            if self.failure is not None:
                raise self.failure
            self._flush()
            await gatherResults([self._md5.drained(), self._sha512.drained()])
            if self.expected_size is not None and self.received != self.expected_size:
                raise BadRequest(
                    f"Image data is {self.received} bytes but the declared size "
                    f"is {self.expected_size}"
                )
            checksum = self._md5.hasher.hexdigest()
            if (
                self.expected_checksum is not None
                and self.expected_checksum.lower() != checksum
            ):
                raise BadRequest(
                    f"Image data has checksum {checksum} but the declared "
                    f"checksum is {self.expected_checksum}"
                )
        except BaseException:
            await self.abort()
            raise
        stored: StoredData = await self.writer.commit()
        return UploadResult(
            location=stored.location,
            size=stored.size,
            checksum=checksum,
            os_hash_algo="sha512",
            os_hash_value=self._sha512.hasher.hexdigest(),
        )

    async def abort(self) -> None:
        """Drop everything received; the store removes what it wrote."""
        self._finished = True
        self._batch = []
        self._gate.detach()
        await self.writer.abort()
