"""
The HTTP connection: Twisted's HTTPChannel, with an oversize request head
answered (414, 431, with the JSON error body) rather than dropped.

twisted.web.http.HTTPChannel enforces three limits on a request's head, all
public attributes: a line longer than C{MAX_LENGTH} (LineReceiver's) closes
the connection with no answer at all; a head larger than
C{totalHeadersSize} or with more than C{maxHeaders} headers is answered
C{400 Bad Request} with an empty body, by the same private method that
answers every malformed head, so the reason cannot be told apart there.
L{GlanceChannel} therefore counts the head itself, with the same limits,
before HTTPChannel does (C{lineReceived} is where HTTPChannel sees each
line; C{lineLengthExceeded} is LineReceiver's documented hook for a line too
long; C{allHeadersReceived} marks the end of a head), and answers first:

  - a request line longer than C{max_header_line}: 414 URI Too Long;
  - a header line longer than C{max_header_line}, a head of more than
    L{MAX_HEAD_BYTES} or more than L{MAX_HEADERS} headers: 431 Request
    Header Fields Too Large.

No private attribute of Twisted is used for this. Other malformed heads (no
colon, a bad Content-Length) still get Twisted's bare 400. A chunked body is
decoded by L{glance_tx.api.chunked.ChunkedDecoder}, put in place (through
L{glance_tx.twisted_private}) once the head is read.

Every answer given outside a request's normal course (these, and an upload
refused mid-body, L{glance_tx.api.site}) is written by L{answer_and_close}:
the connection is closed for writing only and the client's further bytes
are read and discarded for a grace period, because closing a socket with
unread bytes makes the kernel send a reset that can destroy the answer
before the client reads it.

How long the channel waits on its client (a request's head, a body's next
bytes, a reader, a kept connection's next request) is
L{glance_tx.api.deadlines}'s; the channel moves its L{ConnectionDeadline}
through the phases as HTTPChannel's public hooks see them pass. Twisted's own
idle timeout (C{timeOut}) is off.

At stop (L{glance_tx.api.site.GlanceSite.close_connections}) the channel
closes as soon as it can without cutting a request (L{GlanceChannel.close_when_done}):
at once if no request is under way, else once its response is out, and that
response says C{Connection: close} unless it had already begun. A connection
that has not yet sent its first request is not idle but new: its client
connected to send one (it may be on its way), and unlike a kept connection's
it would not be sent again on another, so it has L{FIRST_REQUEST_GRACE_SECONDS}
to begin it.

The site speaks HTTP/1.x only: Twisted's HTTP/2 (which needs C{h2} and TLS
ALPN) sits behind a private wrapper this channel does not use.
"""

from __future__ import annotations

import socket
import uuid
from http import HTTPStatus
from typing import Any

from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from glance_tx import twisted_private
from glance_tx.api import low_water
from glance_tx.api.chunked import ChunkedDecoder
from glance_tx.api.deadlines import ConnectionDeadline, Phase
from glance_tx.api.errors import error_document
from glance_tx.config import ClientLimits
from glance_tx.errors import Overloaded, RequestTimeout

log = Logger()

#: A site without its own limits (a test's plain Site): the defaults,
#: made once rather than at every request.
_DEFAULT_LIMITS = ClientLimits()

#: Glance's C{max_header_line}: the longest request or header line.
DEFAULT_MAX_HEADER_LINE = 16384

#: The largest request head (request line and headers). Glance (eventlet)
#: has no such limit; 64 KiB takes a v1 request with Glance's 128 properties
#: of 255 characters each in C{x-image-meta-property-*} headers.
MAX_HEAD_BYTES = 64 * 1024

#: The most headers a request may have (Twisted's own limit).
MAX_HEADERS = HTTPChannel.maxHeaders

#: How long a refused client may go on sending before it is cut off.
REFUSED_BODY_GRACE_SECONDS = 30.0


def raw_answer(
    status: int,
    message: str,
    request_id: str,
    retry_after: int | None = None,
    challenge: str | None = None,
) -> bytes:
    """
    A whole HTTP/1.1 response with the JSON error body, closing the
    connection; C{challenge} is a 401's C{WWW-Authenticate}.
    """
    body = error_document(status, message)
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"x-openstack-request-id: {request_id}",
        "Connection: close",
    ]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    if challenge is not None:
        head.append(f"WWW-Authenticate: {challenge}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


def answer_and_close(transport: Any, response: bytes, reactor: Any) -> IDelayedCall | None:
    """
    Write C{response} and close the connection once the client has seen it
    (see the module docstring); returns the call that cuts the client off
    after L{REFUSED_BODY_GRACE_SECONDS}, to be cancelled when it goes.
    """
    transport.write(response)
    is_tcp = ITCPTransport.providedBy(transport)
    if not is_tcp:  # an in-memory test's
        transport.loseConnection()
        return None
    transport.loseWriteConnection()
    transport.resumeProducing()  # read, and discard, what comes
    call: IDelayedCall = reactor.callLater(
        REFUSED_BODY_GRACE_SECONDS, transport.abortConnection
    )
    return call


def _bytes_waiting(transport: Any) -> bool:
    """
    Whether the client's next bytes are already in the socket, unread: a
    request sent before the server closed (closing now would reset it).
    A non-blocking peek; a transport that is not a socket's says no.
    """
    handle = getattr(transport, "getHandle", lambda: None)()
    if not isinstance(handle, socket.socket):
        return False
    try:
        return bool(handle.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:
        return False  # nothing there (EAGAIN), or the close will find out


#: At stop, how long a connection that has not sent its first request may
#: take to begin it (L{GlanceChannel.close_when_done}).
FIRST_REQUEST_GRACE_SECONDS = 2.0


class GlanceChannel(HTTPChannel):
    """An HTTPChannel that answers an oversize head (module docstring)."""

    MAX_LENGTH = DEFAULT_MAX_HEADER_LINE
    totalHeadersSize = MAX_HEAD_BYTES
    maxHeaders = MAX_HEADERS
    # Set by the site (twisted.web.server.Site.buildProtocol).
    site: Any

    _in_head = False
    _head_bytes = 0
    _header_count = 0
    _refused = False
    _cut_off: IDelayedCall | None = None
    _deadline: ConnectionDeadline | None = None
    #: A byte of the head awaited has come.
    _head_begun = False
    #: Between a request's head and its body's end.
    _receiving_body = False
    #: The server holds the client's body (an upload paused or starting).
    _held = False
    #: The transport's buffer is full (it paused the channel).
    _send_blocked = False
    #: Counted in the site's C{open_connections} (not refused at the limit).
    _counted = False
    #: The server stops: no request after the current one.
    _closing = False
    #: A request has been answered on this connection.
    _answered = False
    #: At stop, the call that closes a new connection still silent.
    _first_request_wait: IDelayedCall | None = None
    #: The connection's two addresses, once asked (L{getHost}, L{getPeer}).
    _host: Any = None
    _peer: Any = None

    # -- the connection's addresses -----------------------------------------

    def getHost(self) -> Any:
        """
        The local address, asked of the transport once per connection:
        every request asks (twisted.web's C{Request}), and a TCP transport
        answers with a C{getsockname} system call each time.
        """
        host = self._host
        if host is None:
            host = self._host = super().getHost()
        return host

    def getPeer(self) -> Any:
        """The client's address, made once per connection (see L{getHost})."""
        peer = self._peer
        if peer is None:
            peer = self._peer = super().getPeer()
        return peer

    # -- waiting on the client (glance_tx.api.deadlines) -------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.channels.add(self)
        limits: ClientLimits = getattr(self.site, "client_limits", _DEFAULT_LIMITS)
        self._deadline = ConnectionDeadline(self.site.reactor, limits, self._timed_out)
        most = limits.max_connections
        if most is not None and self.site.open_connections >= most:
            busy = Overloaded(
                f"This node serves {most} connections at once (max_connections); "
                "try again later."
            )
            self._refuse(busy.status, busy.message, busy.retry_after)
            return
        self.site.open_connections += 1
        self._counted = True
        self._deadline.arm(Phase.HEAD)

    def hold_client(self) -> None:
        """
        The server stops reading the client's body for reasons of its own
        (backpressure, an upload starting): the silence does not count.
        """
        self._held = True
        if self._deadline is not None and self._deadline.phase is Phase.BODY:
            self._deadline.clear()

    def release_client(self) -> None:
        """The server reads the body again: the client's silence counts."""
        self._held = False
        if (
            self._deadline is not None
            and self._receiving_body
            and self._deadline.phase is None
            and not self._refused
        ):
            self._deadline.arm(Phase.BODY)

    def allContentReceived(self) -> None:
        self._receiving_body = self._held = False
        if self._deadline is not None:
            self._deadline.clear()  # the server's turn
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        self._answered = True
        if self._deadline is not None and self.persistent:
            self._head_begun = False
            # A response the client has not read yet keeps its SEND phase:
            # loseConnection at the keep-alive timeout would wait on it.
            if not self._send_blocked:
                self._deadline.arm(Phase.KEEPALIVE)
        super().requestDone(request)

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        if self._closing or not getattr(self.site, "client_limits", _DEFAULT_LIMITS).http_keepalive:
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        return bool(super().checkPersistence(request, version))

    def close_when_done(self) -> None:
        """
        The server stops: close the connection now if no request is under
        way on it, else once the current response is out (module docstring).
        """
        self._closing = True
        if self._refused or self.transport is None:
            return  # already closing (answer_and_close)
        if self.requests:
            for request in self.requests:
                if not request.startedWriting:
                    request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            self.persistent = False  # requestDone closes
        elif self._head_begun or _bytes_waiting(self.transport):
            pass  # checkPersistence says Connection: close once the head is in
        elif self._answered:
            self.loseConnection()  # kept idle: its client retries elsewhere
        else:
            self._first_request_wait = self.site.reactor.callLater(
                FIRST_REQUEST_GRACE_SECONDS, self._close_if_silent
            )

    def _close_if_silent(self) -> None:
        """The stop's grace for a new connection is over: close it unless its
        first request has begun."""
        self._first_request_wait = None
        if not (self.requests or self._head_begun or _bytes_waiting(self.transport)):
            self.loseConnection()

    def pauseProducing(self) -> None:
        # Called by the transport: its buffer is full, the client not reading.
        super().pauseProducing()
        self._send_blocked = True
        deadline = self._deadline
        if deadline is not None and deadline.phase is None and not self._receiving_body:
            deadline.arm(Phase.SEND)

    def resumeProducing(self) -> None:
        super().resumeProducing()
        self._send_blocked = False
        if self._deadline is not None and self._deadline.phase is Phase.SEND:
            if self.requests or not self.persistent:
                self._deadline.clear()  # the response goes on, or the close
            else:
                self._deadline.arm(Phase.KEEPALIVE)  # read to the end

    def _timed_out(self, phase: Phase) -> None:
        transport: Any = self.transport
        if phase is Phase.BODY and self._deadline is not None and low_water.release(transport):
            # Bytes came that an upload's low-water mark kept from being
            # read: the client is not silent. Read them, and wait again.
            self._deadline.arm(Phase.BODY)
            return
        seconds = phase.seconds(self._deadline.limits) if self._deadline else None
        log.info(
            "{client} timed out ({phase}, {seconds}s)",
            client=getattr(transport.getPeer(), "host", "-"),
            phase=phase.value,
            seconds=seconds,
        )
        if phase is Phase.KEEPALIVE or (phase is Phase.HEAD and not self._head_begun):
            self.loseConnection()  # no request begun: nothing to answer
        elif phase is Phase.SEND:
            # Its buffers are full: an answer could not reach it either.
            getattr(transport, "abortConnection", transport.loseConnection)()
        elif phase is Phase.HEAD:
            self._refuse(
                HTTPStatus.REQUEST_TIMEOUT,
                f"The request's header fields did not arrive within {seconds} seconds.",
            )
        else:
            error = RequestTimeout(f"The request body sent nothing for {seconds} seconds.")
            request = self.requests[-1] if self.requests else None
            # glance_tx.api.site.StreamingRequest.refuse (which imports this
            # module): it aborts an upload first, so no partial data stays.
            refuse = getattr(request, "refuse", None)
            if refuse is None:
                self._refuse(error.status, error.message)
            else:
                self._refused = True
                refuse(error)

    # -- the head's limits -------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return  # what follows a refusal is discarded
        deadline = self._deadline
        if deadline is not None:
            if deadline.phase is Phase.KEEPALIVE:
                deadline.arm(Phase.HEAD)
            elif deadline.phase is Phase.BODY:
                deadline.touch()
            if deadline.phase is Phase.HEAD:
                self._head_begun = True
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return  # the rest of a read that held the refused line
        if not self._in_head:
            if not line:
                # An empty line between requests, which HTTPChannel allows.
                super().lineReceived(line)
                return
            self._in_head = True
            self._head_bytes = self._header_count = 0
        elif line and line[0] not in b" \t":
            self._header_count += 1
        self._head_bytes += len(line)
        if self._head_bytes > self.totalHeadersSize:
            self._refuse_head(
                f"The request's header fields are larger than {self.totalHeadersSize} bytes."
            )
        elif self._header_count > self.maxHeaders:
            self._refuse_head(f"The request has more than {self.maxHeaders} header fields.")
        else:
            super().lineReceived(line)

    def allHeadersReceived(self) -> None:
        twisted_private.decode_chunks_with(self, ChunkedDecoder)
        self._in_head = False
        self._receiving_body = True
        if self._deadline is not None:
            self._deadline.arm(Phase.BODY)
        super().allHeadersReceived()

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._in_head:
            self._refuse_head(
                f"A header field of the request is longer than {self.MAX_LENGTH} bytes."
            )
        else:
            self._refuse(
                HTTPStatus.REQUEST_URI_TOO_LONG,
                f"The request line is longer than {self.MAX_LENGTH} bytes.",
            )

    def _refuse_head(self, message: str) -> None:
        self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, message)

    def _refuse(self, status: int, message: str, retry_after: int | None = None) -> None:
        self._refused = True
        if self._deadline is not None:
            self._deadline.clear()  # answer_and_close's cut-off takes over
        # The request object exists once its request line was read.
        request = self.requests[-1] if self.requests else None
        if request is not None:
            request.setResponseCode(status)  # for its log line
        request_id = getattr(request, "request_id", None) or "req-" + str(uuid.uuid4())
        transport: Any = self.transport
        peer = transport.getPeer()
        log.info(
            "{request_id} {client} refused before routing: {status} {message}",
            request_id=request_id,
            client=getattr(peer, "host", "-"),
            status=int(status),
            message=message,
        )
        self._cut_off = answer_and_close(
            transport, raw_answer(status, message, request_id, retry_after), self.site.reactor
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._deadline is not None:
            self._deadline.stop()
        if self._counted:
            self._counted = False
            self.site.open_connections -= 1
        for call in (self._cut_off, self._first_request_wait):
            if call is not None and call.active():
                call.cancel()
        super().connectionLost(reason)
        # Last: the request's own connectionLost has handed the site what
        # it leaves to do (L{glance_tx.api.site.GlanceSite.finishing}).
        self.site.connection_ended(self)
