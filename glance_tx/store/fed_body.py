"""
A request body fed by its owner as an upload's bytes arrive: how the S3
and Swift stores relay image data to their servers without holding it.

The agent registers the body as its producer and pauses it while the
connection's buffer is full; L{FedBody.send} fires only once the connection
has taken its chunks and is not paused, so an owner that waits for it sends
no faster than the network takes the bytes, and memory holds the buffer,
never the image. L{FedBody.fail} ends the request without a complete body:
the agent drops the connection before the last byte, so the server stores
nothing.

The owner is woken on C{clock}, never from inside C{startProducing} or
C{resumeProducing}: the connection calls those in the middle of its own
state changes, and an owner that went on from there at once (finishing the
body, starting its next request) would run inside them.
"""

from __future__ import annotations

from attrs import define, field
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from glance_tx.errors import StoreError
from glance_tx.twisted_private import body_transport, set_send_limit

__all__ = ["SEND_LIMIT", "FedBody"]

#: How much one send() of a body may take: an upload's 1 MiB batches leave
#: in one call and one reactor turn each rather than eight (Twisted's
#: 128 KiB).
SEND_LIMIT = 1 << 20


@implementer(IBodyProducer)
@define
class FedBody:
    """
    One request's body. With a C{length} the request says so
    (Content-Length) and the body is complete once that many bytes are
    sent; without one it is sent chunked and complete at L{finish}.

    @ivar peer: Who receives it, for errors (C{"S3"}, C{"Swift"}).
    @ivar send_limit: The connection may hand the kernel up to this many
        bytes per C{send()} (C{None}: Twisted's 128 KiB).
    """

    clock: IReactorTime
    length: int | object = UNKNOWN_LENGTH
    peer: str = "the store"
    send_limit: int | None = SEND_LIMIT
    sent: int = field(default=0, init=False)
    _consumer: IConsumer | None = field(default=None, init=False)
    _done: Deferred[None] | None = field(default=None, init=False)
    _waiting: list[Deferred[None]] = field(factory=list, init=False)
    _paused: bool = field(default=False, init=False)
    _stopped: bool = field(default=False, init=False)
    _ended: bool = field(default=False, init=False)
    _failed: Failure | None = field(default=None, init=False)

    # IBodyProducer: the agent's side

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        if self._failed is not None:  # given up before the connection was made
            return fail(self._failed)
        self._consumer = consumer
        if self.send_limit is not None:
            set_send_limit(body_transport(consumer), self.send_limit)
        self._done = Deferred()
        if self._ended or self.length == 0:
            self._done.callback(None)
        self._wake_soon()
        return self._done

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._wake_soon()

    def stopProducing(self) -> None:
        self._stopped = True
        self._wake_soon()

    # The owner's side

    async def write(self, data: bytes) -> None:
        """L{send} one chunk."""
        await self.send([data])

    async def send(self, chunks: list[bytes]) -> None:
        """
        Write C{chunks}; return once they are taken and more may be written.
        Each chunk is taken out of the list (its place left empty) as it is
        written, so once the connection has sent it nothing here keeps it:
        an upload's batch waiting for a slow store then holds its unsent
        bytes, not all of them until the last is sent.

        @raise StoreError: the connection stopped taking the body, or the
            chunks run past C{length}; or the reason given to L{fail}.
        """
        while self._consumer is None and not self._given_up:
            await self._wait()
        for index in range(len(chunks)):
            # One chunk at a time, each once the connection has sent the
            # last: its buffer then holds only that chunk, which it sends
            # without copying it (a transport joins what it is given when
            # it holds more than one piece).
            while self._paused and not self._given_up:
                await self._wait()
            self._check()
            chunk, chunks[index] = chunks[index], b""
            if isinstance(self.length, int) and self.sent + len(chunk) > self.length:
                raise StoreError(f"More image data than the {self.length} bytes announced")
            assert self._consumer is not None
            self._consumer.write(chunk)
            self.sent += len(chunk)
        if self.sent == self.length:
            self.finish()
            return
        while self._paused and not self._given_up:
            await self._wait()
        self._check()

    def finish(self) -> None:
        """The body is complete (for a body of unknown length)."""
        self._ended = True
        if self._done is not None and not self._done.called:
            self._done.callback(None)

    def fail(self, reason: BaseException) -> None:
        """Give up the body: the request fails and the server keeps nothing."""
        if self._failed is not None:
            return
        self._failed = Failure(reason)
        if self._done is not None and not self._done.called and not self._stopped:
            self._done.errback(self._failed)
        self._wake()

    @property
    def _given_up(self) -> bool:
        return self._stopped or self._failed is not None

    def _check(self) -> None:
        if self._failed is not None:
            self._failed.raiseException()
        if self._stopped:
            raise StoreError(f"The connection to {self.peer} stopped taking the upload")

    def _wait(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def _wake_soon(self) -> None:
        if self._waiting:
            self.clock.callLater(0, self._wake)

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)
