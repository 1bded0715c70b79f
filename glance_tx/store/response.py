"""
A network store's response body as an L{IBlockSource}, so that its reads
go through the shared L{glance_tx.store.reader.BlockProducer}.

The body arrives as fast as the backend sends it; the client may read
slower. What has arrived is held until the producer asks for it, and the
response's connection is paused while more than the high watermark is
held (L{glance_tx.backpressure}), so memory stays at about two blocks
whatever the image size and however slow the client.
"""

from __future__ import annotations

from collections import deque
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from zope.interface import implementer

from glance_tx import twisted_private
from glance_tx.backpressure import PauseGate, Watermarks
from glance_tx.errors import StoreError
from glance_tx.store.interface import IBodySink
from glance_tx.store.reader import IBlockSource

__all__ = ["ResponseBlocks", "relay_body", "response_blocks", "widen_body_reads"]


def widen_body_reads(transport: Any, size: int) -> None:
    """
    Let the connection under a response body's C{transport} read up to
    C{size} bytes per recv() (not less than it would anyway); a pause then
    leaves at most one such read held.

    twisted.internet.tcp reads at most the transport's bufferSize (64 KiB)
    per recv() and delivers each read as one dataReceived, so a 1 GiB body
    is 16384 reads, each with its syscall and its trip through the HTTP
    client parser. Measured with bench/stores.py's servers, two glance-tx
    processes side by side, 128 MiB downloads, 4 interleaved rounds,
    medians, with 1 MiB reads: S3 205 -> 290 MiB/s and 1.12 -> 0.80 CPU
    s/GiB; Swift (bound by its proxy) 142 -> 131 MiB/s and 1.28 -> 1.20
    CPU s/GiB. Twisted has no public API for this (see
    L{glance_tx.twisted_private.widen_body_reads}); anything else (a test's
    fake transport) is left as it is.
    """
    twisted_private.widen_body_reads(transport, size)


#: The L{PauseGate} reason for more held than the high watermark.
_HELD = "held"


@implementer(IBlockSource)
class ResponseBlocks(Protocol):
    """
    Receives a response body (as the protocol given to C{deliverBody}) and
    hands it out a block at a time (as an L{IBlockSource}).

    @param watermarks: When to pause the connection for bytes held.
    @param origin: What the bytes come from, for errors (C{"the S3 store
        'bulk'"}); it must carry no credential.
    @param read_size: How much the connection may read at once (see
        L{widen_body_reads}); C{None}: what the transport does by default.
    """

    def __init__(
        self, watermarks: Watermarks, origin: str, read_size: int | None = None
    ) -> None:
        self._watermarks = watermarks
        self._origin = origin
        self._read_size = read_size
        self._gate = PauseGate()
        self._held: deque[bytes] = deque()
        self._held_bytes = 0
        self._ended: Failure | None = None
        self._waiting: tuple[Deferred[bytes], int] | None = None
        self._closed: Deferred[None] | None = None

    # Protocol: the response body

    def makeConnection(self, transport: Any) -> None:
        # The transport of a response body is a push producer for the
        # connection (twisted.web.client's TransportProxyProducer).
        self._gate.attach(cast(IPushProducer, transport))
        if self._read_size is not None:
            widen_body_reads(transport, self._read_size)
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if self._closed is not None:
            return  # no longer wanted
        self._held.append(data)
        self._held_bytes += len(data)
        self._flow()
        self._answer()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._ended = reason or Failure(ResponseDone())
        self._gate.detach()
        self._answer()
        if self._closed is not None and not self._closed.called:
            self._closed.callback(None)

    # IBlockSource

    def read_block(self, size: int) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self._waiting = (d, size)
        self._answer()
        return d

    def close(self) -> Deferred[None]:
        """
        Drop the rest of the body, stopping the connection if the body is
        still coming, and fire once the response is over: the connection is
        then back in its pool, or closed, before the read reports done.
        """
        self._held.clear()
        self._held_bytes = 0
        if self._ended is not None:
            return succeed(None)
        self._closed = Deferred()
        producer = self._gate.producer
        if producer is not None:
            producer.stopProducing()
        return self._closed

    # Internals

    def _flow(self) -> None:
        self._watermarks.apply(self._gate, _HELD, self._held_bytes)

    def _answer(self) -> None:
        if self._waiting is None:
            return
        d, size = self._waiting
        if self._held:
            self._waiting = None
            block = self._take(size)
            self._flow()
            d.callback(block)
        elif self._ended is not None:
            self._waiting = None
            if self._ended.check(ResponseDone, PotentialDataLoss):
                d.callback(b"")  # the producer knows whether that is early
            else:
                d.errback(
                    StoreError(
                        f"The response from {self._origin} was cut short: "
                        f"{self._ended.getErrorMessage()}"
                    )
                )

    def _take(self, size: int) -> bytes:
        parts: list[bytes] = []
        taken = 0
        while self._held and taken < size:
            chunk = self._held.popleft()
            if taken + len(chunk) > size:
                chunk, rest = chunk[: size - taken], chunk[size - taken :]
                self._held.appendleft(rest)
            parts.append(chunk)
            taken += len(chunk)
        self._held_bytes -= taken
        return parts[0] if len(parts) == 1 else b"".join(parts)


def response_blocks(
    response: IResponse, block_size: int, origin: str, wide_reads: bool = False
) -> ResponseBlocks:
    """
    Start receiving C{response}'s body for reading in C{block_size} blocks:
    the connection is paused while more than two blocks are held and
    resumed once no more than one is. With C{wide_reads} it also reads up
    to a block per recv() (see L{widen_body_reads} for what that saves), so
    at most three are held. (Every network store asks for that. The HTTP
    store's downloads with 64 KiB reads were 1.78 CPU s/GiB and 0.34x
    nginx's throughput in bench/stores.py, 512 MiB, 3 rounds; with 1 MiB
    reads 0.70 CPU s/GiB and 0.91x.)
    """
    blocks = ResponseBlocks(
        Watermarks(high=2 * block_size, low=block_size),
        origin,
        read_size=block_size if wide_reads else None,
    )
    response.deliverBody(blocks)
    return blocks


def relay_body(
    consumer: IConsumer,
    response: IResponse,
    length: int,
    origin: str,
    timeout: float | None = None,
) -> Deferred[None] | None:
    """
    Offer the first C{length} bytes of C{response}'s unread body to
    C{consumer} to relay past user space, when it can (an L{IBodySink}: the
    API's for a client on plain TCP) and the body is framed by a
    C{Content-Length} that covers them; fire as L{IStore.read} does. C{None},
    the body untouched, when not: the caller streams it (chunked bodies,
    TLS on either side, the parts of a multipart body).
    """
    sink = IBodySink(consumer, None)
    size = response.length
    if sink is None or not isinstance(size, int) or length <= 0 or size < length:
        return None
    relayed: Deferred[None] | None = sink.relay(response, length, origin, timeout)
    return relayed
