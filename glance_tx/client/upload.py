"""
An upload's request body: a file read a block at a time off the reactor
thread, at the pace the connection takes it.

twisted.web's C{FileBodyProducer} reads on the reactor thread, which is a
stall per block on a slow disk or a network file system. L{FileBody}
reads each block through a L{BlockingRunner} instead, and reads the next
only once the last was written and the connection has not paused it, so
at most one block (C{block_size}) is held whatever the file's size: the
transport's own buffer is what backpressure fills.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import IO, Any

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from glance_tx.client.errors import ClientError
from glance_tx.threads import BlockingRunner

__all__ = ["FileBody", "readable_length"]

MiB = 1 << 20


def readable_length(file: IO[bytes]) -> int | None:
    """
    How many bytes are left to read in C{file}, if it is a regular file
    (its size less its position); None for a pipe, a socket or anything
    without a descriptor. Blocking (C{fstat}): call it on a runner.
    """
    try:
        info = os.fstat(file.fileno())
        position = file.tell()
    except (AttributeError, OSError, ValueError):
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return max(0, info.st_size - position)


@implementer(IBodyProducer)
@define
class FileBody:
    """
    C{file}'s bytes from its current position as a request body: exactly
    C{size} bytes if given (sent with a C{Content-Length}; a file that
    ends sooner fails the upload), else up to the end of the file (sent
    chunked). The file is not closed.
    """

    file: IO[bytes]
    runner: BlockingRunner
    size: int | None = None
    block_size: int = MiB
    #: Called with (bytes sent, C{size}) after each block is handed on.
    progress: Callable[[int, int | None], object] | None = None

    #: Bytes handed to the consumer so far.
    sent: int = field(default=0, init=False)
    #: The largest block held at once: what this body costs in memory.
    largest_block: int = field(default=0, init=False)
    _resumed: Deferred[None] | None = field(default=None, init=False)
    _stopped: bool = field(default=False, init=False)
    _reading: int = field(default=0, init=False)

    @property
    def length(self) -> Any:
        return UNKNOWN_LENGTH if self.size is None else self.size

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        done: Deferred[None] = Deferred(lambda _: self.stopProducing())

        def finished(result: object) -> None:
            # IBodyProducer: once stopped, the Deferred must not fire.
            if self._stopped:
                return
            if isinstance(result, Failure):
                done.errback(result)
            else:
                done.callback(None)

        Deferred.fromCoroutine(self._produce(consumer)).addBoth(finished)
        return done

    def _read_next(self) -> Deferred[bytes]:
        """Start reading the next block (b"" once C{size} bytes are sent)."""
        want = self.block_size
        if self.size is not None:
            want = min(want, self.size - self.sent - self._reading)
            if want == 0:
                return succeed(b"")
        self._reading = want
        return self.runner.run(self.file.read, want)

    async def _produce(self, consumer: IConsumer) -> None:
        # The next block is read while the last one is being sent, so the
        # socket does not idle while the disk is read: two blocks at most.
        reading = self._read_next()
        while True:
            block: bytes = await reading
            self._reading = 0
            if self._stopped:
                return
            if not block:
                if self.size is not None and self.sent < self.size:
                    raise ClientError(
                        f"The file ended after {self.sent} of the {self.size} bytes to upload"
                    )
                return
            self.largest_block = max(self.largest_block, len(block))
            while self._resumed is not None:
                await self._resumed
            if self._stopped:
                return
            self.sent += len(block)
            consumer.write(block)
            if self.progress is not None:
                self.progress(self.sent, self.size)
            reading = self._read_next()

    def pauseProducing(self) -> None:
        if self._resumed is None:
            self._resumed = Deferred()

    def resumeProducing(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.callback(None)

    def stopProducing(self) -> None:
        self._stopped = True
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.errback(CancelledError())
