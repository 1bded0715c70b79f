"""
A block source whose reads give up when the backend goes quiet.

A network store's read waits for bytes the backend pushes; a backend that
stops sending mid-body would leave the read (and the client's download)
hanging for ever. L{Deadline} fails a C{read_block} that has waited
C{timeout} seconds without an answer, and closes the source it wraps. The
clock runs only while a read waits, that is while the client wants more:
time the client spends paused is not the backend's fault. It also bounds
how long a client that went away keeps a stalled backend's connection: the
block producer waits for the read in flight before it closes its source.
"""

from __future__ import annotations

from attrs import field, mutable
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from glance_tx.errors import StoreError
from glance_tx.store.reader import IBlockSource

__all__ = ["Deadline"]


@implementer(IBlockSource)
@mutable
class Deadline:
    """
    C{source}, each read failed with a L{StoreError} naming C{origin} (which
    must carry no credential) after C{timeout} seconds without a block.
    """

    source: IBlockSource
    clock: IReactorTime
    timeout: float
    origin: str

    _timer: IDelayedCall | None = field(default=None, init=False)
    _waiting: Deferred[bytes] | None = field(default=None, init=False)
    _expired: bool = field(default=False, init=False)

    def read_block(self, size: int) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self._waiting = d
        self._timer = self.clock.callLater(self.timeout, self._expire)
        self.source.read_block(size).addBoth(self._answered, d)
        return d

    def close(self) -> Deferred[None]:
        return self.source.close()

    def _answered(self, result: bytes | Failure, d: Deferred[bytes]) -> None:
        if d is not self._waiting:
            return None  # given up on already
        self._waiting = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)
        return None

    def _expire(self) -> None:
        d, self._waiting, self._timer = self._waiting, None, None
        if d is not None:
            d.errback(
                StoreError(f"{self.origin} sent nothing for {self.timeout:g} seconds")
            )
