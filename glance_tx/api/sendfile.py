"""
Sending a file's bytes to a plain TCP client with C{os.sendfile}: the kernel
copies them from the page cache to the socket, with no read into Python, no
1 MiB block per step and no trip through the thread pool.

Twisted (through 26.x) has no sendfile. L{FileSender} therefore writes to
the connection's socket itself, around the transport:

  - It is an C{IWriteDescriptor} of its own on a C{dup()} of the socket,
    added to the reactor with C{addWriter}: the reactor calls its
    C{doWrite} when the socket can take more, and each call sends what the
    socket takes, up to L{SEND_STEP}, without blocking (the socket is
    non-blocking; C{EAGAIN} just waits for the next event). A slow client
    therefore holds nothing in memory: the bytes wait in the file.
  - It sends nothing while the transport still holds bytes written to it
    (the response's headers), so those go first
    (L{glance_tx.twisted_private.unsent_bytes}).
  - It is the request's producer, so the channel's pause and resume reach
    it (it removes and adds its writer) and a client gone stops it: it
    removes its writer, closes its descriptor and the file, and fires.
  - It adds what it sent to C{request.sentLength}, so the request's log
    line counts the bytes as it does for C{request.write}.

Only plain TCP takes this path (L{plain_tcp_socket}): TLS must encrypt in
user space, so there the store's producer still streams blocks.

C{sendfile} reads the file on the reactor thread. From the page cache that
costs nothing; a file not in the cache would make every step wait for the
disk, and every other request with it (measured: bench/RESULTS.md,
"Cold-cache downloads"). So the sender sends only bytes already loaded
into the page cache off the reactor thread: the store's open loads the
first window, and the sender asks (C{FileRange.load}, on the store's
runner) for the next L{READ_AHEAD} while it sends the one before; when
the socket is faster than the disk it stops writing until the load fires.
A window already in the cache (a warm file) loads at once: the store asks
the kernel (C{cachestat} or C{mincore}, which read nothing) and skips the
pool.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from attrs import field, mutable
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IPushProducer,
    IReactorFDSet,
    ISSLTransport,
    IWriteDescriptor,
)
from twisted.internet.tcp import Connection
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from glance_tx import twisted_private
from glance_tx.errors import StoreError
from glance_tx.store.interface import FileRange

__all__ = ["SEND_STEP", "FileSender", "client_stall_timeout", "plain_tcp_socket", "send_file"]

log = Logger()

#: How much the sender asks the store to load ahead of it at a time.
READ_AHEAD = 8 << 20

#: The most one C{sendfile} call is asked for. The kernel sends only what
#: the socket's buffer takes, so this bounds a step only on a fast link.
SEND_STEP = 4 << 20


def sendfile(out_fd: int, in_fd: int, offset: int, count: int) -> int:
    """C{os.sendfile}; a module function so tests can count the calls."""
    return os.sendfile(out_fd, in_fd, offset, count)


def plain_tcp_socket(transport: Any) -> socket.socket | None:
    """
    The socket of a TCP connection without TLS (C{twisted.internet.tcp}'s,
    through its public C{getHandle}), or C{None} for anything else: TLS
    (C{ISSLTransport}), an in-memory test transport, a UNIX socket.
    """
    if not isinstance(transport, Connection) or ISSLTransport.providedBy(transport):
        return None
    handle = transport.getHandle()
    return handle if isinstance(handle, socket.socket) else None


@implementer(IWriteDescriptor, IPushProducer)
@mutable(eq=False)
class FileSender:
    """
    Sends C{source} to C{request}'s socket (see the module docstring).

    @ivar reactor: Where the writer is added and removed.
    @ivar request: A C{twisted.web} request on plain TCP whose headers are
        set; L{start} writes them.
    @ivar source: The file range to send; closed once, at the end.
    """

    reactor: Any  # IReactorFDSet and IReactorTime
    request: Any
    source: FileRange
    #: Seconds the client may read nothing before it is cut off (the
    #: site's C{client_socket_timeout}; the channel's own deadline never
    #: sees a body that bypasses the transport); None: no limit.
    stall_timeout: float | None = None
    _stall: IDelayedCall | None = field(default=None, init=False)
    _fd: int = field(default=-1, init=False)
    _offset: int = field(default=0, init=False)
    _remaining: int = field(default=0, init=False)
    #: Where the bytes loaded into the page cache end.
    _ready: int = field(default=0, init=False)
    #: The load under way, if any (the file is closed after it).
    _loading: Deferred[None] | None = field(default=None, init=False)
    _paused: bool = field(default=False, init=False)
    _writing: bool = field(default=False, init=False)
    _finished: bool = field(default=False, init=False)
    _registered: bool = field(default=False, init=False)
    _done: Deferred[None] = field(factory=Deferred, init=False)

    def start(self) -> Deferred[None]:
        """
        Write the headers and start sending; fire once the last byte is in
        the kernel's hands, or with C{None} early if the client went away
        (the transport is then closing). Fail with a L{StoreError} if the
        file is shorter than its range.
        """
        self._offset = self.source.offset
        self._remaining = self.source.length
        self._ready = self._offset + (
            self.source.loaded if self.source.load is not None else self._remaining
        )
        if twisted_private.client_gone(self.request):
            # Gone while the file was being opened.
            self._finish(None)
            return self._done
        try:
            sock = plain_tcp_socket(self.request.transport)
            if sock is None:
                raise ValueError("FileSender needs a plain TCP connection")
            self.request.write(b"")  # the headers, into the transport's buffer
            self._fd = os.dup(sock.fileno())  # shares O_NONBLOCK with the socket
            self.request.registerProducer(self, True)
            self._registered = True
        except BaseException:
            self._finish(Failure())
            return self._done
        if self.stall_timeout is not None:
            self._stall = self.reactor.callLater(self.stall_timeout, self._stalled)
        self._start_writing()
        self._load_ahead()
        return self._done

    def _stalled(self) -> None:
        """The client read nothing for C{stall_timeout}: cut it off."""
        self._stall = None
        transport = self.request.transport
        if transport is not None:
            transport.abortConnection()
        self._finish(None)

    # IWriteDescriptor

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "FileSender"

    def doWrite(self) -> None:
        if self._finished:
            return
        transport = self.request.transport
        if transport is None or twisted_private.unsent_bytes(transport):
            return  # the headers go first; the transport is writing them
        count = min(self._remaining, SEND_STEP, self._ready - self._offset)
        if count <= 0:
            self._stop_writing()  # until the load under way fires
            return
        try:
            sent = sendfile(self._fd, self.source.file.fileno(), self._offset, count)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno == errno.EINTR:
                return
            # The client is gone (EPIPE, ECONNRESET): close the connection,
            # which stops this sender through the channel.
            transport.abortConnection()
            self._finish(None)
            return
        if sent == 0:
            error = StoreError("The image data ended early")
            transport.abortConnection()
            self._finish(Failure(error))
            return
        if self._stall is not None and self.stall_timeout is not None:
            self._stall.reset(self.stall_timeout)
        self._offset += sent
        self._remaining -= sent
        self.request.sentLength += sent
        if self._remaining == 0:
            self._finish(None)
            return
        if self._offset >= self._ready:
            self._stop_writing()  # the disk is behind the socket
        self._load_ahead()

    def _load_ahead(self) -> None:
        """
        Once at most L{READ_AHEAD} loaded bytes are left to send, load the
        next L{READ_AHEAD}; when it is there, send it. One load at a time.
        """
        load = self.source.load
        end = self.source.offset + self.source.length
        start = self._ready
        if (
            load is None
            or self._loading is not None
            or self._finished
            or start >= end
            or start - self._offset > READ_AHEAD
        ):
            return
        length = min(READ_AHEAD, end - start)

        def loaded(_: object) -> None:
            self._loading = None
            if self._finished:
                return
            self._ready = start + length
            self._start_writing()
            self._load_ahead()

        def failed(f: Failure) -> None:
            # sendfile reads the same bytes, waiting for the disk if it
            # must, and fails the download if they cannot be read.
            log.failure("Could not load image data ahead of sending", failure=f)

        loading: Deferred[None] = Deferred()
        self._loading = loading
        load(start, length).addErrback(failed).addCallback(loaded).chainDeferred(loading)

    def connectionLost(self, reason: Failure) -> None:
        """The reactor saw the socket hang up or fail."""
        self._finish(None)

    # IPushProducer, for the request's channel

    def pauseProducing(self) -> None:
        self._paused = True
        self._stop_writing()

    def resumeProducing(self) -> None:
        self._paused = False
        self._start_writing()

    def stopProducing(self) -> None:
        self._finish(None)

    # Internals

    def _start_writing(self) -> None:
        if self._remaining == 0:
            self._finish(None)
        elif not (
            self._writing or self._paused or self._finished or self._offset >= self._ready
        ):
            self._writing = True
            self.reactor.addWriter(self)

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            self.reactor.removeWriter(self)

    def _finish(self, outcome: Failure | None) -> None:
        if self._finished:
            return
        self._finished = True
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None
        self._stop_writing()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._registered:
            # On every way out, a hang-up included: the request is finished
            # next, and twisted.web refuses to finish one with a producer.
            self._registered = False
            self.request.unregisterProducer()

        def closed(result: object) -> None:
            if isinstance(result, Failure):
                log.failure("Could not close image data", failure=result)
            if outcome is None:
                self._done.callback(None)
            else:
                self._done.errback(outcome)

        # A load under way still reads the file: close it after that.
        loading, self._loading = self._loading, None
        if loading is None:
            self.source.close().addBoth(closed)
        else:
            loading.addBoth(lambda _: self.source.close()).addBoth(closed)


def send_file(reactor: IReactorFDSet, request: Any, source: FileRange) -> Deferred[None]:
    """
    Send C{source} as C{request}'s body with a L{FileSender}, cut off after
    the site's C{client_socket_timeout} without the client reading.
    """
    return FileSender(reactor, request, source, stall_timeout=client_stall_timeout(request)).start()


def client_stall_timeout(request: Any) -> float | None:
    """
    The site's C{client_socket_timeout}: how long a client may read nothing
    of a body sent around the transport (whose channel deadline never sees
    it) before it is cut off; None when the request has no such site.
    """
    site = getattr(getattr(request, "channel", None), "site", None)
    limits = getattr(site, "client_limits", None)
    timeout: float | None = limits.client_socket_timeout if limits is not None else None
    return timeout
