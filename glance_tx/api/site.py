"""
The Site and Request that let image data stream in as it arrives.

twisted.web (through 26.x) has no public streaming request-body API: a
request is routed only after its last body byte, which has been spooled to
memory or a temp file. glance-tx cannot afford either for multi-GiB images.
So L{StreamingRequest} decides in C{gotLength} -- after the headers, before
any body byte -- whether the request is an image-data upload (one of the
routes declared in L{glance_tx.api.upload_routes}); if so it asks that route
to start the upload (check the image, open a store writer) while the
client's transport is paused, then passes each body chunk straight to the
L{glance_tx.uploads.Upload}.

The private details of Twisted this needs -- the request line before the
body, its HTTP version, whether the client is gone, the socket's read size --
are read through L{glance_tx.twisted_private}, where each is pinned by a test.

A refusal decided before or during the body (unknown image, wrong status,
size over the cap) is answered at once with a complete response and the
connection is closed for writing; the rest of the body is discarded. An
``Expect: 100-continue`` client is told to go on only once the upload has
really started, so a refused one never sends its body.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any
from urllib.parse import parse_qs

from attrs import frozen
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server
from zope.interface import Interface, implementer

from glance_tx import twisted_private
from glance_tx.api import low_water
from glance_tx.api.channel import (
    DEFAULT_MAX_HEADER_LINE,
    GlanceChannel,
    answer_and_close,
    raw_answer,
)
from glance_tx.api.errors import handle_unexpected_error
from glance_tx.api.upload_routes import UploadMatcher, UploadRoute
from glance_tx.config import ClientLimits
from glance_tx.errors import GlanceError, Unauthorized
from glance_tx.request_ids import HEADER, new_request_id, parse_request_id, working_for
from glance_tx.uploads import Upload

log = Logger()

#: How much one read from the socket may take while an upload's body streams
#: in (Twisted reads 64 KiB at a time). Each read runs the HTTP parser and the
#: pipeline on the reactor thread, holding the GIL the hash threads need;
#: fewer, larger reads leave them more of it (about a tenth more upload
#: throughput in bench/transfer.py). A read of the pipeline's whole batch
#: (1 MiB) is also passed on as it is, where four reads of 256 KiB were
#: joined into one batch on the reactor: 7-10% less CPU per GiB uploaded to
#: Swift (bench/RESULTS.md, "Swift uploads"). A read shorter than asked
#: for returns the rest of its buffer to the allocator at once. A body of
#: known length is also read only once this much of it (or all that is
#: left) waits in the socket (L{glance_tx.api.low_water}).
UPLOAD_READ_SIZE = 1024 * 1024


class _StreamedBody:
    """
    Stands in for C{request.content}: the bytes went to the store, so there
    is nothing to read back. Twisted's C{requestReceived} calls C{tell},
    C{seek} and, for form posts, C{read}.
    """

    def __init__(self) -> None:
        self.length = 0

    def write(self, data: bytes) -> None:
        self.length += len(data)

    def tell(self) -> int:
        return self.length

    def seek(self, offset: int, whence: int = 0) -> None:
        pass

    def read(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


class StreamingRequest(server.Request):
    """
    A Request with an id, a start time, and image-data uploads streamed to
    the store (see the module docstring). Its route runs, and its upload
    starts, working for its id (L{glance_tx.request_ids}), or for the
    caller's when the site takes callers' ids.
    """

    #: The id the caller sent in x-openstack-request-id, when the site
    #: takes them (a registry server, whose callers are API nodes).
    caller_request_id: str | None = None

    upload: Upload | None = None
    upload_started: Deferred[Upload] | None = None
    # twisted.web types these loosely (HTTPChannel has no .site; transports
    # may be None); ours always have them while a request is live.
    channel: Any
    transport: Any
    content: Any

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        self.request_id = new_request_id()
        self.started = time.monotonic()
        self.responseHeaders.setRawHeaders(HEADER, [self.request_id.encode("ascii")])
        self._refused = False
        self._body_complete = False
        self._early_chunks: list[bytes] = []
        self._send_continue = False
        self._cut_off: Any = None
        #: The body's Content-Length (None: chunked, or no body).
        self._body_length: int | None = None
        #: Whether the body is read a batch at a time (L{_next_read}).
        self._low_water = False

    # -- deciding, before the body, whether this is an upload ------------

    @property
    def working_for(self) -> str:
        """The request id this request's work is done for."""
        return self.caller_request_id or self.request_id

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        self._body_length = length
        site = self.channel.site
        # Called once every header is in.
        if getattr(site, "caller_request_ids", False):
            self.caller_request_id = parse_request_id(self.requestHeaders.getRawHeaders(HEADER))
        if length == 0:
            return
        command, uri = twisted_private.request_line(self.channel)
        path, _, query = uri.partition(b"?")
        match = site.upload_matcher.match(command, path)
        if match is None:
            return
        route, arguments = match
        self.method, self.uri, self.path = command, uri, path
        self.args = parse_qs(query, True)
        self.content.close()
        self.content = _StreamedBody()
        expect = self.requestHeaders.getRawHeaders(b"expect")
        if expect and expect[0].lower() == b"100-continue":
            # Keep HTTPChannel from saying "100 Continue" before we know.
            self.requestHeaders.removeHeader(b"expect")
            self._send_continue = (
                twisted_private.request_version(self.channel) == b"HTTP/1.1"
            )
        self._pause_client()
        self.upload_started = Deferred()
        with working_for(self.working_for):
            started = Deferred.fromCoroutine(_awaited(route.begin(self, arguments)))
        started.addCallbacks(self._upload_ready, self._upload_refused)

    def _pause_client(self) -> None:
        self.transport.pauseProducing()
        self.channel.hold_client()

    def _resume_client(self) -> None:
        self.channel.release_client()
        self.transport.resumeProducing()

    def _upload_ready(self, upload: Upload) -> None:
        self.upload = upload
        if self._refused or self.channel.transport is None or self._lost:
            Deferred.fromCoroutine(upload.abort())
            return
        if self._send_continue:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        upload.registerProducer(_ClientReads(self), True)
        self._set_read_size(UPLOAD_READ_SIZE)
        if self._body_length is not None:
            self._low_water = low_water.wait_for(self.channel.transport, 1)
        chunks, self._early_chunks = self._early_chunks, []
        for chunk in chunks:
            self._deliver(chunk)
        if not self._refused and not upload.paused:
            self._resume_client()
        assert self.upload_started is not None
        self.upload_started.callback(upload)

    def _upload_refused(self, failure: Failure) -> None:
        error = failure.value
        if not isinstance(error, GlanceError):
            log.failure("Upload could not start", failure)
            error = GlanceError("The upload could not start")
        self.refuse(error)

    # -- the body ----------------------------------------------------------

    def handleContentChunk(self, data: bytes) -> None:
        if self.upload_started is None:
            super().handleContentChunk(data)
        elif self._refused:
            return
        elif self.upload is None:
            self._early_chunks.append(data)
        else:
            self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        assert self.upload is not None
        self.content.write(data)
        if self._low_water:
            self._next_read(len(data))
        try:
            self.upload.write(data)
        except GlanceError as error:
            self.refuse(error)

    def _next_read(self, size: int) -> None:
        """
        After a read of C{size} bytes: if it was short (the client is
        slower than this server), have the socket read next only when a
        whole read, or the rest of the body, waits; after a whole read, as
        soon as anything does. A client faster than the server keeps every
        read whole, so its socket never waits (a mark held all along cost
        such an upload 0.1-0.2 CPU s/GiB more on the reactor: Linux then
        stops growing the socket's buffer, and each read waited for the
        client); a slower one is read twice per batch instead of 16 times.
        Set at every read, as the channel's body timeout may have lowered
        it (L{low_water.release}).
        """
        assert self._body_length is not None
        left = self._body_length - self.content.length
        mark = min(UPLOAD_READ_SIZE, left) if size < UPLOAD_READ_SIZE else 1
        low_water.wait_for(self.channel.transport, mark)

    def _end_low_water(self) -> None:
        """The body is no longer read in batches: every byte is read as it comes."""
        if self._low_water:
            self._low_water = False
            low_water.wait_for(self.channel.transport, 1)

    def _set_read_size(self, size: int | None) -> None:
        """Read C{size} bytes at a time from a TCP client (None: the default)."""
        transport = self.channel.transport if self.channel is not None else None
        twisted_private.set_read_size(transport, size)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._body_complete = True
        if self.upload is not None:
            self._set_read_size(None)
        super().requestReceived(command, path, version)

    def processingFailed(self, reason: Failure) -> Failure:
        """
        Twisted's last resort for an exception while rendering (Klein's too,
        for what no handler of an app took) is an HTML page; ours is the JSON
        500 of L{handle_unexpected_error}.
        """
        body = handle_unexpected_error(self, reason)
        if not self.finished and not self._lost:
            if body:
                self.setHeader(b"Content-Length", b"%d" % (len(body),))
                self.write(body)
            self.finish()
        return reason

    def process(self) -> None:
        if self._refused:
            # Already answered; the connection is closing.
            return
        with working_for(self.working_for):
            super().process()

    # -- refusing early, and losing the client -----------------------------

    @property
    def _lost(self) -> bool:
        return twisted_private.client_gone(self)

    def refuse(self, error: GlanceError) -> None:
        """
        Answer now, while the body may still be arriving, and close the
        connection once the client has seen the answer.
        """
        if self._refused:
            return
        self._refused = True
        self._end_low_water()
        started = self.upload_started
        if self.upload is None:
            # Refused before it started. If the body is already complete,
            # the route handler is awaiting upload_started and answers
            # itself; a raw answer as well would be a second response.
            if started is not None and not started.called:
                started.errback(error)
                if not self._body_complete:
                    started.addErrback(lambda _: None)
            if not self._body_complete:
                self._send_refusal(error)
            return
        # Refused mid-body. Answer once the partial data is gone and the
        # image marked failed, so a client that looks right after the
        # answer sees the truth.
        aborted = self.channel.site.finishing(Deferred.fromCoroutine(self.upload.abort(error)))
        aborted.addErrback(lambda f: log.failure("Aborting the upload failed", f))
        aborted.addCallback(lambda _: self._send_refusal(error))

    def _send_refusal(self, error: GlanceError) -> None:
        if self._lost:
            return
        challenge = error.challenge if isinstance(error, Unauthorized) else None
        response = raw_answer(
            error.status, error.message, self.request_id, error.retry_after, challenge
        )
        self.code = error.status
        self.sentLength = len(response) - response.index(b"\r\n\r\n") - 4
        # Close our side only, so the client can still read the answer while
        # it stops sending; cut it off if it does not stop.
        self._cut_off = answer_and_close(self.transport, response, self.channel.site.reactor)
        self.channel.site.log_request(self)

    def connectionLost(self, reason: Failure) -> None:
        site = self.channel.site if self.channel is not None else None
        super().connectionLost(reason)
        if not self.finished and site is not None:
            # Twisted logs a request when it finishes; one whose client
            # went away first would otherwise leave no line at all.
            site.log_request(self, note=" (connection lost)")
        if self._cut_off is not None and self._cut_off.active():
            self._cut_off.cancel()
        if self.upload is not None and not self._body_complete:
            aborted = Deferred.fromCoroutine(self.upload.abort())
            aborted.addErrback(lambda f: log.failure("Aborting the upload failed", f))
            if site is not None:
                site.finishing(aborted)


@implementer(IPushProducer)
@frozen
class _ClientReads:
    """
    The client's body as the upload pipeline pauses it: through the
    request, so that the channel does not count the pause against the
    client (L{glance_tx.api.deadlines}).
    """

    request: StreamingRequest

    def pauseProducing(self) -> None:
        self.request._pause_client()

    def resumeProducing(self) -> None:
        self.request._resume_client()

    def stopProducing(self) -> None:
        self.request.transport.stopProducing()


async def _awaited(awaitable: Awaitable[Upload]) -> Upload:
    return await awaitable


class IGracefulFactory(Interface):
    """A protocol factory whose connections can end without cutting requests."""

    def close_connections() -> Deferred[None]:
        """
        Called once no longer listening: end each connection once its
        request in flight is answered, abort those left after a grace
        period, and fire once all are gone and what they left to do is done.
        """


@implementer(IGracefulFactory)
class GlanceSite(server.Site):
    """
    A Site with streaming uploads, one log line per request, and an answer
    to an oversize request head (L{GlanceChannel}); C{max_header_line} is
    Glance's option of that name, C{client_limits} how long a client may
    keep a connection waiting (L{glance_tx.api.deadlines}). With C{caller_request_ids}, a request's
    line also names the x-openstack-request-id its caller sent (for a
    registry server, whose callers are API nodes sending the id of their
    own request).
    """

    requestFactory = StreamingRequest
    #: Connections served now (L{GlanceChannel}, C{max_connections}).
    open_connections = 0
    # twisted.web's own protocol factory wraps HTTPChannel in a private
    # class that can switch to HTTP/2; Factory.protocol is the public way to
    # choose the protocol (see glance_tx.api.channel).
    protocol = GlanceChannel  # type: ignore[assignment]
    #: The API's L{glance_tx.imports.Importer}, whose imports outlive
    #: their requests (for tests and shutdown to wait on).
    importer: Any = None
    #: The v2 app (its tasks API's import tasks, for tests to wait on).
    v2: Any = None

    def __init__(
        self,
        resource: Any,
        upload_routes: tuple[UploadRoute, ...] = (),
        max_header_line: int = DEFAULT_MAX_HEADER_LINE,
        *,
        caller_request_ids: bool = False,
        client_limits: ClientLimits | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(resource, **kwargs)
        self.upload_routes = upload_routes
        self.max_header_line = max_header_line
        self.client_limits = client_limits or ClientLimits()
        self.open_connections = 0
        #: The open connections (L{GlanceChannel} adds and removes itself).
        self.channels: set[GlanceChannel] = set()
        self._all_closed: Deferred[None] | None = None
        self._finishing: set[Deferred[Any]] = set()
        self.caller_request_ids = caller_request_ids
        self.upload_matcher = UploadMatcher(upload_routes)

    #: Appended to every request's log line: a worker names itself there
    #: (L{glance_tx.workers}).
    log_suffix = ""

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.MAX_LENGTH = self.max_header_line
        channel.timeOut = None  # GlanceChannel's deadlines instead
        return channel

    def log(self, request: Any) -> None:
        self.log_request(request)

    # -- stopping (IGracefulFactory) -------------------------------------

    def connection_ended(self, channel: GlanceChannel) -> None:
        """Called by C{channel} once its connection is lost."""
        self.channels.discard(channel)
        if not self.channels and self._all_closed is not None:
            closed, self._all_closed = self._all_closed, None
            closed.callback(None)

    def finishing(self, work: Deferred[Any]) -> Deferred[Any]:
        """
        C{work} a request leaves behind (an upload's abort when its client
        went): a stop waits for it, so the image is left in a truthful state.
        """
        self._finishing.add(work)

        def done(result: Any) -> Any:
            self._finishing.discard(work)
            return result

        return work.addBoth(done)

    def close_connections(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._close_connections())

    async def _close_connections(self) -> None:
        grace = self.client_limits.graceful_shutdown_timeout
        for channel in list(self.channels):
            channel.close_when_done()
        if self.channels:
            log.info(
                "Waiting for {count} connections to end (at most {grace}s)",
                count=len(self.channels),
                grace=grace,
            )
            self._all_closed = Deferred()
            cut = None if grace is None else self.reactor.callLater(grace, self._abort_connections)
            await self._all_closed
            if cut is not None and cut.active():
                cut.cancel()
        await DeferredList(list(self._finishing))

    def _abort_connections(self) -> None:
        log.warn(
            "Aborting {count} connections still open at the end of "
            "graceful_shutdown_timeout",
            count=len(self.channels),
        )
        for channel in list(self.channels):
            transport: Any = channel.transport
            getattr(transport, "abortConnection", transport.loseConnection)()

    def log_request(self, request: Any, note: str = "") -> None:
        started = getattr(request, "started", None)
        elapsed = time.monotonic() - started if started is not None else 0.0
        caller = getattr(request, "caller_request_id", None)
        request_id = getattr(request, "request_id", "-")
        address = request.getClientAddress()
        client = address.host if hasattr(address, "host") else "-"
        method = (request.method or b"-").decode("ascii", "replace")
        uri = (request.uri or b"-").decode("ascii", "replace")
        for_caller = f" for {caller}" if caller else ""
        # The line is formatted here, in one f-string, and the event's
        # format is that one field: twisted.logger's formatting of a
        # nine-field format string was most of a line's cost.
        log.info(
            "{request_line}",
            request_line=f'{request_id}{for_caller} {client} "{method} {uri}" '
            f"{request.code} {request.sentLength} {elapsed:.3f}s{note}{self.log_suffix}",
            request_id=request_id,
            caller_request_id=caller,
            client=client,
            method=method,
            uri=uri,
            code=request.code,
            length=request.sentLength,
            elapsed=elapsed,
        )
