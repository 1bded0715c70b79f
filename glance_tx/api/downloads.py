"""
Sending image data: one streaming path for every API version.

The store's producer is registered on the request, so a slow client pauses
the store and memory stays flat whatever the image size; or, for a local
file sent whole or as one range to a plain TCP client, the kernel copies
it with C{os.sendfile} (L{glance_tx.api.sendfile}), and a network store's
response to one with C{os.splice} (L{glance_tx.api.splice}). L{serve_data}
adds, in RFC 9110's order, conditional requests (304, 412; see
L{glance_tx.api.http_cache}) and ranges (206 for one range,
C{multipart/byteranges} for several, 416; see L{glance_tx.api.ranges}).
"""

from __future__ import annotations

import base64
from typing import cast

from attrs import define, field
from twisted.internet.interfaces import (
    IConsumer,
    IProducer,
    IPushProducer,
    IReactorFDSet,
)
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from zope.interface import implementer

from glance_tx import images, twisted_private
from glance_tx.api.http_cache import Validators, if_range_holds, not_modified
from glance_tx.api.ranges import (
    ByteRange,
    MultipartRanges,
    parse_ranges,
    unsatisfied_range,
)
from glance_tx.api.sendfile import plain_tcp_socket, send_file
from glance_tx.api.splice import available as splice_available
from glance_tx.api.splice import splice_sink
from glance_tx.backpressure import PauseGate
from glance_tx.errors import Conflict, Forbidden, GlanceError, RangeNotSatisfiable
from glance_tx.images import Image
from glance_tx.store.backends import StoreMap
from glance_tx.store.interface import IFileRanges

log = Logger()


def check_downloadable(image: Image) -> None:
    """Only active images have data to give; say why others do not."""
    if image.status == images.DEACTIVATED:
        raise Forbidden(f"Image {image.id} is deactivated; its data cannot be downloaded")
    if image.status != images.ACTIVE:
        raise Conflict(
            f"Image {image.id} is {image.status}; only an active image's data "
            "can be downloaded"
        )


def set_data_headers(request: IRequest, image: Image, hex_md5: bool = False) -> None:
    """
    Describe the data: type, length, checksum. C{Content-MD5} is base64 as
    RFC 1864 says, or with C{hex_md5} the hex digest, as Glance v2 sends it
    and python-glanceclient and openstacksdk compare it.
    """
    request.setHeader(b"Content-Type", b"application/octet-stream")
    request.setHeader(b"Content-Length", str(image.size or 0).encode("ascii"))
    request.setHeader(b"Accept-Ranges", b"bytes")
    if image.checksum:
        if hex_md5:
            digest = image.checksum.encode("ascii")
        else:
            digest = base64.b64encode(bytes.fromhex(image.checksum))
        request.setHeader(b"Content-MD5", digest)


async def send_data(
    request: IRequest,
    image: Image,
    stores: StoreMap,
    byte_range: ByteRange | None = None,
    consumer: IConsumer | None = None,
) -> None:
    """
    Stream an active image's data (or one range of it) to C{consumer}, by
    default the request.
    """
    if not image.size or not image.locations or request.method == b"HEAD":
        return
    offset, length = (
        (byte_range.offset, byte_range.length) if byte_range is not None else (0, image.size)
    )
    location = image.locations[0]
    store = stores.for_location(location)
    if consumer is None:
        reactor = _socket_reactor(request)
        if reactor is not None and IFileRanges.providedBy(store):
            source = await cast(IFileRanges, store).open_range(location.url, offset, length)
            await send_file(reactor, request, source)
            return
        if reactor is not None and splice_available():
            # A network store may hand its response's socket to this sink.
            consumer = splice_sink(reactor, request)
        else:
            consumer = cast(IConsumer, request)  # a twisted.web Request is one
    _raise_send_limit(request)
    await store.read(location.url, consumer, offset, length)


def _socket_reactor(request: IRequest) -> IReactorFDSet | None:
    """
    The reactor to write to the client's socket around its transport
    through, when the client is on plain TCP: a local file (L{IFileRanges})
    is then sent with C{os.sendfile} (L{glance_tx.api.sendfile}), a network
    store's response relayed with C{os.splice} (L{glance_tx.api.splice});
    else C{None}, and the store's producer streams the bytes (TLS, the parts
    of a C{multipart/byteranges} body).
    """
    if plain_tcp_socket(getattr(request, "transport", None)) is None:
        return None
    reactor = getattr(getattr(getattr(request, "channel", None), "site", None), "reactor", None)
    return reactor if IReactorFDSet.providedBy(reactor) else None


#: How much one send() may take. The store produces 1 MiB blocks.
DOWNLOAD_SEND_LIMIT = 1 << 20


def _raise_send_limit(request: IRequest) -> None:
    """
    twisted.internet.abstract.FileDescriptor sends at most its SEND_LIMIT
    (128 KiB) per send() and asks the producer for more only once its buffer
    is empty, so 1 MiB blocks leave the socket idle between small sends.
    Twisted has no public API for this (see
    L{glance_tx.twisted_private.set_send_limit}). Measured on loopback: about 1.5x the download
    throughput at lower CPU per GiB (bench/RESULTS.md).
    """
    twisted_private.set_send_limit(getattr(request, "transport", None), DOWNLOAD_SEND_LIMIT)


def requested_ranges(
    request: IRequest, image: Image, validators: Validators
) -> tuple[ByteRange, ...] | None:
    """
    The byte ranges a GET asks for, or None for everything (no Range, a
    Range that is ignored, an If-Range that does not hold, or not a GET:
    RFC 9110 defines ranges for GET only).

    @raise RangeNotSatisfiable: with C{Content-Range: bytes */SIZE} set.
    """
    header = request.getHeader(b"range")
    if header is None or request.method != b"GET" or not if_range_holds(request, validators):
        return None
    size = image.size or 0
    try:
        return parse_ranges(header, size)
    except RangeNotSatisfiable:
        request.setHeader(b"Content-Range", unsatisfied_range(size))
        raise


async def serve_data(
    request: IRequest,
    image: Image,
    stores: StoreMap,
    validators: Validators,
    hex_md5: bool = False,
    metadata: Headers | None = None,
) -> None:
    """
    Answer a GET or HEAD of image data, after the caller has found the
    image and checked it may be read: a 304 or 412 as the preconditions
    say; else the whole as a 200, one range as a 206 with
    C{Content-Range}, several as a 206 C{multipart/byteranges}; ranges
    past the end are a 416. C{metadata} holds more headers for a 200 or
    206 (v1's C{x-image-meta-*}).
    """
    if not_modified(request, validators):
        return
    ranges = requested_ranges(request, image, validators)
    # A store that fails before the first byte (unreadable, unreachable)
    # is answered with an error document: the headers set here for the
    # data (its Content-Length above all) must not describe that answer.
    prepared = request.responseHeaders.copy()
    try:
        await _serve(request, image, stores, validators, ranges, hex_md5, metadata)
    except GlanceError:
        if not getattr(request, "startedWriting", True):
            request.responseHeaders = prepared
        raise


async def _serve(
    request: IRequest,
    image: Image,
    stores: StoreMap,
    validators: Validators,
    ranges: tuple[ByteRange, ...] | None,
    hex_md5: bool,
    metadata: Headers | None,
) -> None:
    if metadata is not None:
        for name, values in metadata.getAllRawHeaders():
            request.responseHeaders.setRawHeaders(name, values)
    set_data_headers(request, image, hex_md5=hex_md5)
    validators.apply(request)
    if ranges is None:
        await send_data(request, image, stores)
        return
    request.setResponseCode(206)
    # Content-MD5 describes the body sent, which is now a part.
    request.responseHeaders.removeHeader(b"Content-MD5")
    if len(ranges) == 1:
        (byte_range,) = ranges
        request.setHeader(b"Content-Range", byte_range.content_range())
        request.setHeader(b"Content-Length", str(byte_range.length).encode("ascii"))
        await send_data(request, image, stores, byte_range)
        return
    body = MultipartRanges(ranges)
    request.setHeader(b"Content-Type", body.media_type())
    request.setHeader(b"Content-Length", str(body.content_length()).encode("ascii"))
    await _send_parts(request, image, stores, body)


async def _send_parts(
    request: IRequest, image: Image, stores: StoreMap, body: MultipartRanges
) -> None:
    """
    Stream a C{multipart/byteranges} body: each part's head, then its
    bytes read from the store, part after part, all through one
    L{_PartsConsumer} so backpressure holds across parts.
    """
    parts = _PartsConsumer(request)
    consumer = cast(IConsumer, request)  # a twisted.web Request is one
    consumer.registerProducer(parts, True)
    try:
        for index, byte_range in enumerate(body.parts):
            if parts.stopped:
                return
            request.write(body.head(index))
            await send_data(request, image, stores, byte_range, consumer=parts)
        if not parts.stopped:
            request.write(body.tail())
    finally:
        if not parts.stopped:
            consumer.unregisterProducer()


@implementer(IConsumer, IPushProducer)
@define
class _PartsConsumer:
    """
    Stands between the request and the store's producer of each part.

    twisted.web takes one producer at a time and does not tell a producer
    registered while the client's socket is full that it should wait, so
    the second part's producer would run unpaused until the socket
    drained. Registered once on the request for the whole body, this
    object keeps the pause state across parts and passes it on to each
    part's producer as it comes.
    """

    request: IRequest
    stopped: bool = field(default=False, init=False)
    _gate: PauseGate = field(factory=PauseGate, init=False)

    # IConsumer, for the store

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self._gate.producer is not None:
            raise RuntimeError("A producer is already registered")
        if not streaming:
            raise ValueError("Only streaming (push) producers can send parts")
        if self.stopped:
            cast(IPushProducer, producer).stopProducing()
        self._gate.attach(cast(IPushProducer, producer))

    def unregisterProducer(self) -> None:
        self._gate.detach()

    def write(self, data: bytes) -> None:
        self.request.write(data)

    # IPushProducer, for the request

    def pauseProducing(self) -> None:
        self._gate.pause("client")

    def resumeProducing(self) -> None:
        self._gate.resume("client")

    def stopProducing(self) -> None:
        self.stopped = True
        if self._gate.producer is not None:
            self._gate.producer.stopProducing()
