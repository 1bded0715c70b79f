"""
Receiving image data: bytes written and hashed off the reactor thread,
the connection paused while too many wait.

L{DataSink} is where every byte of one download goes, across however many
responses it takes (a dropped connection is resumed with a C{Range}
request into the same sink, so the hash runs over the whole). Bytes are
gathered into batches of about C{batch_size}; each batch is written to the
file and fed to the hash on a serial runner, in order. When more than the
high watermark waits for the runner, the response's transport is paused
(L{glance_tx.backpressure}); memory stays at a few batches however fast
the server and however slow the disk.

L{receive} delivers one response's body into the sink and says how it
ended.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import IO, Any, cast

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from glance_tx.backpressure import PauseGate, Watermarks
from glance_tx.client.errors import ClientError
from glance_tx.threads import BlockingRunner

__all__ = ["BodyStalled", "DataSink", "new_hash", "receive"]

MiB = 1 << 20


def new_hash(algorithm: str) -> Any:
    """A hash object for C{algorithm} (Glance's C{os_hash_algo} names hashlib's)."""
    if algorithm == "md5":
        return hashlib.md5(usedforsecurity=False)
    return hashlib.new(algorithm)


@define
class DataSink:
    """Writes C{file} and updates C{hasher} (if any) with every byte received."""

    file: IO[bytes]
    hasher: Any
    runner: BlockingRunner
    batch_size: int = MiB
    # A couple of batches in flight keep the writer thread busy while the
    # next fills; more would only cost memory.
    high_watermark: int = 4 * MiB
    low_watermark: int = 2 * MiB
    #: Called with (bytes received, C{total}) as each piece arrives.
    progress: Callable[[int, int | None], object] | None = None
    total: int | None = None

    #: Bytes taken so far, written or not.
    received: int = field(default=0, init=False)
    #: The most bytes held at once, batch and backlog: the sink's memory.
    peak_held: int = field(default=0, init=False)
    _batch: list[bytes] = field(factory=list, init=False)
    _batch_len: int = field(default=0, init=False)
    _backlog: int = field(default=0, init=False)
    _failure: Failure | None = field(default=None, init=False)
    _gate: PauseGate = field(factory=PauseGate, init=False)
    _watermarks: Watermarks = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._watermarks = Watermarks(self.high_watermark, self.low_watermark)

    @property
    def paused(self) -> bool:
        """Whether the sink is holding its producer back."""
        return self._gate.paused

    @property
    def failed(self) -> bool:
        """Whether writing failed (the rest of the download is pointless)."""
        return self._failure is not None

    def attach(self, producer: IPushProducer) -> None:
        """Take C{producer} (a response's transport) as the one to pause."""
        self._gate.attach(producer)

    def detach(self) -> None:
        self._gate.detach()

    def write(self, data: bytes) -> None:
        self.received += len(data)
        if self.progress is not None:
            self.progress(self.received, self.total)
        self._batch.append(data)
        self._batch_len += len(data)
        self.peak_held = max(self.peak_held, self._batch_len + self._backlog)
        if self._batch_len >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        data = self._batch[0] if len(self._batch) == 1 else b"".join(self._batch)
        self._batch = []
        self._batch_len = 0
        self._backlog += len(data)
        self._watermarks.apply(self._gate, "writing", self._backlog)
        self.runner.run(self._store, data).addCallbacks(
            self._stored, self._store_failed, callbackArgs=(len(data),)
        )

    def _store(self, data: bytes) -> None:
        """On the runner: the file, then the hash, strictly in order."""
        if self._failure is not None:
            return
        _write_all(self.file, data)
        if self.hasher is not None:
            self.hasher.update(data)

    def _stored(self, _: None, length: int) -> None:
        self._backlog -= length
        self._watermarks.apply(self._gate, "writing", self._backlog)

    def _store_failed(self, failure: Failure) -> None:
        if self._failure is None:
            self._failure = failure
        producer = self._gate.producer
        if producer is not None:
            producer.stopProducing()

    async def drain(self) -> None:
        """Write out everything received; raise what writing raised."""
        self._flush()
        await self.runner.run(_nothing)
        if self._failure is not None:
            self._failure.raiseException()

    async def settle(self) -> None:
        """
        After a failure: write nothing more, and wait until no write is
        running, so that the file may be closed.
        """
        self._batch = []
        self._batch_len = 0
        if self._failure is None:
            self._failure = Failure(ClientError("The download was given up"))
        await self.runner.run(_nothing)

    def hexdigest(self) -> str | None:
        """The hash of every byte written (after L{drain})."""
        return None if self.hasher is None else str(self.hasher.hexdigest())


def _nothing() -> None:
    pass


def _write_all(file: IO[bytes], data: bytes) -> None:
    """
    All of C{data}: a raw (unbuffered) file may take less than it is
    given. A file whose write returns nothing is taken to have taken all.
    """
    view = memoryview(data)
    while view:
        written = file.write(view)
        if written is None:
            return
        view = view[written:]


class _Receiver(Protocol):
    """
    One response body into the sink, its first C{skip} bytes dropped.

    With an C{idle_timeout}, a body that sends nothing for that long while
    the sink is not holding it back is given up (its connection closed),
    so that a stalled link is resumed rather than waited on for ever.
    """

    def __init__(
        self,
        sink: DataSink,
        skip: int,
        ended: Deferred[BaseException],
        clock: IReactorTime,
        idle_timeout: float | None,
    ) -> None:
        self.sink = sink
        self.skip = skip
        self.ended = ended
        self.clock = clock
        self.idle_timeout = idle_timeout
        self._idle: IDelayedCall | None = None
        self.stalled = False

    def connectionMade(self) -> None:
        # twisted.web.client documents the body transport as a push producer.
        self.sink.attach(cast(IPushProducer, self.transport))
        if self.idle_timeout is not None:
            self._idle = self.clock.callLater(self.idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        assert self.idle_timeout is not None
        if self.sink.paused:
            # Our own disk is the slow side: not the link's fault.
            self._idle = self.clock.callLater(self.idle_timeout, self._check_idle)
            return
        self._idle = None
        self.stalled = True
        cast(IPushProducer, self.transport).stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._idle is not None:
            self._idle.reset(cast(float, self.idle_timeout))
        if self.sink.failed:
            return
        if self.skip:
            dropped = min(self.skip, len(data))
            self.skip -= dropped
            data = data[dropped:]
            if not data:
                return
        self.sink.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self.sink.detach()
        ended = reason.value if reason.value is not None else ConnectionDone()
        if self.stalled:
            ended = BodyStalled(f"No data for {self.idle_timeout} seconds")
        # The exception, not the Failure: a Failure would errback.
        self.ended.callback(ended)


class BodyStalled(Exception):
    """A response body sent nothing for longer than the idle timeout."""


async def receive(
    response: IResponse,
    sink: DataSink,
    clock: IReactorTime,
    skip: int = 0,
    idle_timeout: float | None = None,
) -> BaseException:
    """
    Deliver C{response}'s body into C{sink}, dropping its first C{skip}
    bytes (what a server that ignored a C{Range} sends again), giving up
    after C{idle_timeout} seconds without a byte. Returns the exception
    the body ended with: C{ResponseDone} if whole, else why not.
    """
    ended: Deferred[BaseException] = Deferred()
    response.deliverBody(_Receiver(sink, skip, ended, clock, idle_timeout))
    return await ended
