"""
Relaying a network store's response body to a plain TCP client with
C{os.splice}: the kernel moves the bytes from the store's socket into a
pipe and from the pipe into the client's socket, with no copy into user
space and no Python per block. (Measured before, bench/RESULTS.md "Store
downloads: where the relay's time goes": two thirds of the relay's CPU were
the kernel's copies into and out of user space, one third the interpreter.)

Twisted (through 26.x) has no splice. L{SpliceRelay} therefore reads and
writes the two sockets itself, around both transports:

  - A store that reads through a C{twisted.web} client offers the response,
    its body unread, to the consumer the API gave it
    (L{glance_tx.store.interface.IBodySink}, L{SpliceSink} for a client on
    plain TCP), when the body is framed by C{Content-Length}. The relay
    takes it only if the response's connection is plain TCP too
    (L{glance_tx.twisted_private.response_connection}); otherwise (TLS) the
    store streams the body as before.
  - The body's bytes the HTTP client read with the head are delivered to a
    protocol of ours and written to the request as usual; then the
    connection is paused (its reader removed), and nothing of Twisted reads
    that socket again.
  - Two descriptors of our own on C{dup()}s of the sockets are added to the
    reactor: the store's with C{addReader} while the pipe has room, the
    client's with C{addWriter} while the pipe holds bytes. Each C{doRead}
    splices what the store's socket has into the pipe and at once tries to
    splice it on to the client; C{doWrite} splices what the client's socket
    takes. All non-blocking (C{EAGAIN} waits for the next event). A slow
    client fills the pipe, the store's socket is no longer read, and TCP's
    window holds the store back; a slow store leaves the reader waiting in
    epoll: nothing spins either way.
  - Nothing is spliced to the client while its transport still holds bytes
    written to it (the headers, the bytes read with the head):
    L{glance_tx.twisted_private.unsent_bytes}.
  - It is the request's producer, so the channel's pause, resume and a
    client gone reach it; it counts what it sends in C{request.sentLength}.
  - It ends after exactly C{length} bytes, or early when the store's
    response ends short (the client's connection is then aborted: with its
    C{Content-Length} sent, the client sees the response cut, not a short
    image), the client goes, or either side stalls. Each way out removes
    the descriptors, closes the C{dup()}s and the pipe, and closes the
    store's connection: its HTTP client never saw that response end, so it
    cannot go back to a pool.

The response's Deferred fires from inside the HTTP client's
C{dataReceived}, before the rest of that read (the body's first bytes) is
parsed and delivered, so nothing is spliced from the store's socket until
the reactor's next turn; a byte delivered through the parser after one has
been spliced would be out of order, and fails the relay.
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

from attrs import field, frozen, mutable
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReadDescriptor,
    IWriteDescriptor,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.components import proxyForInterface
from twisted.python.failure import Failure
from zope.interface import implementer

from glance_tx import twisted_private
from glance_tx.api.sendfile import client_stall_timeout, plain_tcp_socket
from glance_tx.errors import StoreError
from glance_tx.store.interface import IBodySink

__all__ = ["PIPE_SIZE", "SpliceRelay", "SpliceSink", "available", "splice", "splice_sink"]

log = Logger()

#: How much the pipe between the sockets is asked to hold: what a slow
#: client leaves buffered (in the kernel) before the store is no longer read.
PIPE_SIZE = 1 << 20

_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


def available() -> bool:
    """Whether this system has C{splice(2)} (Linux, Python 3.10+)."""
    return hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")


def splice(source: int, destination: int, count: int) -> int:
    """C{os.splice}, non-blocking; a module function so tests can count the calls."""
    return os.splice(source, destination, count, flags=_FLAGS)


def _pipe() -> tuple[int, int, int]:
    """A non-blocking pipe (read end, write end) and how much it holds."""
    read, write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        size = fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        # Over the user's pipe-user-pages-soft: keep the default (64 KiB).
        size = fcntl.fcntl(write, fcntl.F_GETPIPE_SZ)
    return read, write, size


@implementer(IReadDescriptor)
@frozen(eq=False)
class _StoreSide:
    """The store's socket (a C{dup()}), as the reactor sees it."""

    relay: SpliceRelay
    fd: int

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "SpliceRelay(store)"

    def doRead(self) -> None:
        self.relay._store_readable()

    def connectionLost(self, reason: Failure) -> None:
        self.relay._store_lost(reason)


@implementer(IWriteDescriptor)
@frozen(eq=False)
class _ClientSide:
    """The client's socket (a C{dup()}), as the reactor sees it."""

    relay: SpliceRelay
    fd: int

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "SpliceRelay(client)"

    def doWrite(self) -> None:
        self.relay._client_writable()

    def connectionLost(self, reason: Failure) -> None:
        self.relay.stopProducing()


class _ReadWithHead(Protocol):
    """
    Receives the response body's bytes the HTTP client read with the head
    (and its end, once the connection is closed).
    """

    def __init__(self, relay: SpliceRelay) -> None:
        self.relay = relay

    def makeConnection(self, transport: Any) -> None:
        self.relay._body = transport  # a push producer for the connection
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.relay._read_with_head(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.relay._body_ended(reason)


@implementer(IPushProducer)
@mutable(eq=False)
class SpliceRelay:
    """
    Relays the first C{length} bytes of C{response}'s body to C{request}'s
    socket (see the module docstring).

    @ivar origin: Names the store's server in errors (no credential).
    @ivar timeout: Seconds the store may send nothing while the client
        wants more; None: no limit.
    @ivar stall_timeout: Seconds the client may take nothing while there
        are bytes for it (the site's C{client_socket_timeout}); None: no limit.
    """

    reactor: Any  # IReactorFDSet and IReactorTime
    request: Any
    response: Any
    length: int
    origin: str
    timeout: float | None = None
    stall_timeout: float | None = None

    _body: Any = field(default=None, init=False)
    _body_done: bool = field(default=False, init=False)
    _store: _StoreSide | None = field(default=None, init=False)
    _client: _ClientSide | None = field(default=None, init=False)
    _pipe_read: int = field(default=-1, init=False)
    _pipe_write: int = field(default=-1, init=False)
    _pipe_size: int = field(default=0, init=False)
    #: Bytes in the pipe; bytes still to take from the store; still to send.
    _in_pipe: int = field(default=0, init=False)
    _to_read: int = field(default=0, init=False)
    _to_send: int = field(default=0, init=False)
    #: The pipe refused more though it holds less than its size (its
    #: slots full of partial pages): read again once some is sent.
    _pipe_full: bool = field(default=False, init=False)
    _spliced: bool = field(default=False, init=False)
    _reading: bool = field(default=False, init=False)
    _writing: bool = field(default=False, init=False)
    _paused: bool = field(default=False, init=False)
    _registered: bool = field(default=False, init=False)
    _finished: bool = field(default=False, init=False)
    _store_timer: IDelayedCall | None = field(default=None, init=False)
    _client_timer: IDelayedCall | None = field(default=None, init=False)
    _done: Deferred[None] = field(factory=Deferred, init=False)

    def start(self) -> Deferred[None] | None:
        """
        Take the response's body and start relaying it; fire once the last
        byte is in the kernel's hands, or with C{None} early if the client
        went away; fail with a L{StoreError} (the client's connection
        aborted) if the store's response ends short or stalls. C{None}, the
        body untouched, if either connection is not plain TCP.
        """
        connection = twisted_private.response_connection(self.response)
        store_socket = plain_tcp_socket(connection)
        client_socket = plain_tcp_socket(getattr(self.request, "transport", None))
        if store_socket is None or client_socket is None:
            return None
        self._to_read = self._to_send = self.length
        # The bytes read with the head are written to the request now (or,
        # when this runs inside the client's dataReceived, as soon as it
        # has parsed them); then only this relay reads the socket.
        self.response.deliverBody(_ReadWithHead(self))
        if self._finished:
            return self._done
        if self._body is not None:
            self._body.pauseProducing()
        if twisted_private.client_gone(self.request):
            self._finish(None)
            return self._done
        try:
            self.request.write(b"")  # the headers, if no bytes wrote them yet
            self._pipe_read, self._pipe_write, self._pipe_size = _pipe()
            self._store = _StoreSide(self, os.dup(store_socket.fileno()))
            self._client = _ClientSide(self, os.dup(client_socket.fileno()))
            self.request.registerProducer(self, True)
            self._registered = True
        except BaseException:
            self._finish(Failure())
            return self._done
        if self._to_send == 0:
            self._finish(None)
            return self._done
        if self.timeout is not None:
            self._store_timer = self.reactor.callLater(self.timeout, self._store_quiet)
        if self.stall_timeout is not None:
            self._client_timer = self.reactor.callLater(self.stall_timeout, self._client_quiet)
        self._flow()
        return self._done

    # The store's side

    def _read_with_head(self, data: bytes) -> None:
        if self._finished:
            return
        if self._spliced:
            self._fail(f"{len(data)} bytes came through the HTTP client after the relay began")
            return
        if len(data) > self._to_read:
            data = data[: self._to_read]
        self._to_read -= len(data)
        self._to_send -= len(data)
        try:
            self.request.write(data)
        except BaseException:
            self._finish(Failure())
            return
        if self._to_send == 0:
            self._finish(None)

    def _body_ended(self, reason: Failure | None) -> None:
        self._body_done = True
        if not self._finished:
            why = reason.getErrorMessage() if reason is not None else "it ended"
            self._fail(f"the HTTP client lost the connection ({why})")

    def _store_readable(self) -> None:
        if self._finished or self._store is None:
            return
        count = min(self._to_read, self._pipe_size - self._in_pipe)
        if count <= 0:
            self._flow()
            return
        try:
            moved = splice(self._store.fd, self._pipe_write, count)
        except BlockingIOError:
            if self._in_pipe:
                self._pipe_full = True  # until some is sent
                self._flow()
            return
        except OSError as e:
            self._fail(e.strerror or type(e).__name__)
            return
        if moved == 0:
            got = self.length - self._to_read
            self._fail(f"it ended after {got} of {self.length} bytes")
            return
        self._spliced = True
        self._to_read -= moved
        self._in_pipe += moved
        if self._store_timer is not None and self.timeout is not None:
            self._store_timer.reset(self.timeout)
        self._send()

    def _store_lost(self, reason: Failure) -> None:
        """The reactor saw the store's socket hang up with nothing to read."""
        if not self._finished:
            self._fail(reason.getErrorMessage())

    def _store_quiet(self) -> None:
        self._store_timer = None
        if self._finished or self.timeout is None:
            return
        if self._reading:
            self._abort_client()
            self._finish(
                Failure(StoreError(f"{self.origin} sent nothing for {self.timeout:g} seconds"))
            )
        else:  # the client is the slow one
            self._store_timer = self.reactor.callLater(self.timeout, self._store_quiet)

    # The client's side

    def _client_writable(self) -> None:
        self._send()

    def _send(self) -> None:
        transport = self.request.transport
        if (
            self._finished
            or self._paused
            or not self._in_pipe
            or self._client is None
            or transport is None
            or twisted_private.unsent_bytes(transport)  # those go first
        ):
            self._flow()
            return
        try:
            sent = splice(self._pipe_read, self._client.fd, self._in_pipe)
        except BlockingIOError:
            self._flow()
            return
        except OSError:
            # The client is gone (EPIPE, ECONNRESET): close the connection,
            # which stops this relay through the channel.
            self._abort_client()
            self._finish(None)
            return
        self._in_pipe -= sent
        self._to_send -= sent
        self._pipe_full = False
        self.request.sentLength += sent
        if self._client_timer is not None and self.stall_timeout is not None:
            self._client_timer.reset(self.stall_timeout)
        if self._to_send == 0:
            self._finish(None)
        else:
            self._flow()

    def _client_quiet(self) -> None:
        self._client_timer = None
        if self._finished or self.stall_timeout is None:
            return
        if self._writing:  # bytes wait and the client takes none: cut it off
            self._abort_client()
            self._finish(None)
        else:
            self._client_timer = self.reactor.callLater(self.stall_timeout, self._client_quiet)

    # IPushProducer, for the request's channel

    def pauseProducing(self) -> None:
        self._paused = True
        self._flow()

    def resumeProducing(self) -> None:
        self._paused = False
        self._flow()

    def stopProducing(self) -> None:
        self._finish(None)

    # Internals

    def _flow(self) -> None:
        """Read the store while the pipe has room, write while it holds bytes."""
        read = (
            not self._finished
            and self._to_read > 0
            and self._in_pipe < self._pipe_size
            and not self._pipe_full
        )
        write = not self._finished and self._in_pipe > 0 and not self._paused
        # Each side's clock starts again when the relay begins to wait for
        # it: time spent waiting for the other side is not its fault.
        if read != self._reading and self._store is not None:
            self._reading = read
            if read:
                self.reactor.addReader(self._store)
                if self._store_timer is not None and self.timeout is not None:
                    self._store_timer.reset(self.timeout)
            else:
                self.reactor.removeReader(self._store)
        if write != self._writing and self._client is not None:
            self._writing = write
            if write:
                self.reactor.addWriter(self._client)
                if self._client_timer is not None and self.stall_timeout is not None:
                    self._client_timer.reset(self.stall_timeout)
            else:
                self.reactor.removeWriter(self._client)

    def _abort_client(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abortConnection()

    def _fail(self, why: str) -> None:
        """The store's response ended short: cut the client's off too."""
        self._abort_client()
        self._finish(Failure(StoreError(f"The response from {self.origin} was cut short: {why}")))

    def _finish(self, outcome: Failure | None) -> None:
        if self._finished:
            return
        self._finished = True
        for timer in (self._store_timer, self._client_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._store_timer = self._client_timer = None
        self._flow()  # removes both descriptors, before their fds close
        for fd in (
            self._store.fd if self._store is not None else -1,
            self._client.fd if self._client is not None else -1,
            self._pipe_read,
            self._pipe_write,
        ):
            if fd >= 0:
                os.close(fd)
        self._store = self._client = None
        self._pipe_read = self._pipe_write = -1
        if self._body is not None and not self._body_done:
            # The HTTP client never saw the response end: close the
            # connection rather than let it be reused.
            self._body.stopProducing()
        if self._registered:
            self._registered = False
            self.request.unregisterProducer()
        if outcome is None:
            self._done.callback(None)
        else:
            self._done.errback(outcome)


@implementer(IBodySink)
@frozen
class SpliceSink(proxyForInterface(IConsumer, "request")):  # type: ignore[misc]
    """
    The request, as the consumer a store writes a download to (its
    L{IConsumer} methods are the request's), that can also take a response
    body to relay with C{splice} (L{SpliceRelay}).
    """

    reactor: Any
    request: Any
    stall_timeout: float | None = None

    def relay(
        self, response: object, length: int, origin: str, timeout: float | None
    ) -> Deferred[None] | None:
        relay = SpliceRelay(
            self.reactor,
            self.request,
            response,
            length,
            origin,
            timeout=timeout,
            stall_timeout=self.stall_timeout,
        )
        return relay.start()


def splice_sink(reactor: Any, request: Any) -> SpliceSink:
    """A L{SpliceSink} for C{request}, its client cut off as
    L{glance_tx.api.sendfile.send_file} cuts one off."""
    return SpliceSink(reactor, request, client_stall_timeout(request))
