"""
The read-ahead block producer every store can use for C{IStore.read}, and
the contract of the block source behind it.

A store says only how to get the next block of the bytes asked for, by
providing L{IBlockSource} (an open file read on the thread pool, one
ranged request per block, ...). L{BlockProducer} registers itself on the
consumer and streams the blocks to it with backpressure.
"""

from __future__ import annotations

from attrs import field, mutable
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from glance_tx.errors import BadRequest, GlanceError, StoreError
from glance_tx.store.describe import describe

__all__ = ["BlockProducer", "IBlockSource", "NoBytes", "check_read_range"]


def check_read_range(offset: object, length: object) -> None:
    """
    Refuse what L{glance_tx.store.interface.IStore.read} refuses before any
    I/O: an offset that is not a whole number of at least 0, or a length
    that is neither C{None} nor such a number.
    """
    if not isinstance(offset, int) or offset < 0:
        raise BadRequest(f"Invalid offset {offset!r}")
    if length is not None and (not isinstance(length, int) or length < 0):
        raise BadRequest(f"Invalid length {length!r}")

_log = Logger()


class IBlockSource(Interface):
    """
    The bytes of one read, a block at a time.

    L{BlockProducer} calls C{read_block} one at a time (never before the
    last call's Deferred has fired) and C{close} exactly once, when the
    read is done, stopped or failed, after any C{read_block} in flight.
    """

    def read_block(size: int) -> Deferred[bytes]:
        """
        The next bytes, at most C{size} of them. C{b""} means the data
        ended before the read did, which fails it; a short block is
        followed by another read.
        """

    def close() -> Deferred[None]:
        """Release what the read holds (a file, a connection)."""


@implementer(IBlockSource)
class NoBytes:
    """
    The source of a read that has nothing to give (a length of 0, an
    offset at or past the end), for a store that need open nothing then.
    """

    def read_block(self, size: int) -> Deferred[bytes]:
        return succeed(b"")

    def close(self) -> Deferred[None]:
        return succeed(None)


@implementer(IPushProducer)
@mutable
class BlockProducer:
    """
    Streams C{remaining} bytes of C{source} to C{consumer}, one block of
    C{block_size} at a time.

    At most one read is in flight, and at most one block is held while the
    consumer has paused us, so memory stays at about one block whatever the
    image size and however slow the consumer. That one block is read ahead
    while paused, so that on resume the socket is not kept waiting for the
    store. C{_pump} is a loop rather than a recursion so that a source that
    answers at once does not grow the stack with every block.
    """

    source: IBlockSource
    consumer: IConsumer
    remaining: int
    block_size: int

    _done: Deferred[None] = field(factory=Deferred, init=False)
    _held: bytes | None = field(default=None, init=False)
    _error: Failure | None = field(default=None, init=False)
    _paused: bool = field(default=False, init=False)
    _stopped: bool = field(default=False, init=False)
    _reading: bool = field(default=False, init=False)
    _pumping: bool = field(default=False, init=False)
    _finished: bool = field(default=False, init=False)

    def start(self) -> Deferred[None]:
        """
        Register on the consumer and start; fire once the last byte is
        written and this producer unregistered, or with C{None} early if
        the consumer stops us (without unregistering: see
        L{glance_tx.store.interface.IStore.read}). Fail if reading or the
        consumer fails.
        """
        try:
            self.consumer.registerProducer(self, True)
        except BaseException:
            self._error = Failure()
            self._finish(unregister=False)
            return self._done
        self._pump()
        return self._done

    # IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        self._stopped = True
        self._pump()

    # Internals

    def _pump(self) -> None:
        if self._pumping:
            return  # the loop below, further up the stack, carries on
        self._pumping = True
        try:
            while not (self._finished or self._reading):
                if self._stopped:
                    self._finish(unregister=False)
                elif self._error is not None:
                    self._finish(unregister=True)
                elif self._held is None and self.remaining == 0:
                    # All written: finish even if the consumer just paused us.
                    self._finish(unregister=True)
                elif self._held is not None:
                    if self._paused:
                        return
                    data, self._held = self._held, None
                    try:
                        self.consumer.write(data)
                    except BaseException:
                        self._error = Failure()
                else:
                    self._reading = True
                    size = min(self.block_size, self.remaining)
                    d = maybeDeferred(self.source.read_block, size)
                    d.addBoth(self._got_block)
        finally:
            self._pumping = False

    def _got_block(self, result: bytes | Failure) -> None:
        self._reading = False
        if isinstance(result, Failure):
            cause = result.value
            if isinstance(cause, GlanceError):
                self._error = result
            else:
                error = StoreError(f"Could not read image data: {describe(cause)}")
                error.__cause__ = cause
                self._error = Failure(error)
        elif not result:
            self._error = Failure(StoreError("The image data ended early"))
        else:
            self.remaining -= len(result)
            self._held = result
        self._pump()

    def _finish(self, unregister: bool) -> None:
        self._finished = True
        self._held = None
        outcome: object = None if self._stopped else self._error

        def closed(result: object) -> None:
            nonlocal outcome
            if isinstance(result, Failure):
                _log.failure("Could not close image data", failure=result)
            if unregister and not self._stopped:
                try:
                    self.consumer.unregisterProducer()
                except BaseException:
                    outcome = outcome or Failure()
            if isinstance(outcome, Failure):
                self._done.errback(outcome)
            else:
                self._done.callback(None)

        maybeDeferred(self.source.close).addBoth(closed)
