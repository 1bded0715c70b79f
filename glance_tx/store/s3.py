"""
The S3 store: image data as objects in one bucket of an S3 service (AWS,
Ceph RGW, MinIO, ...), named by the location C{s3://<bucket>/<image id>}.

How the bytes get there depends on what the upload announced. An image of
known size below C{s3_store_large_object_size} goes up in one PUT whose
body is fed as the client's bytes arrive (L{_PutBackend}). Anything else --
larger, or of unknown size -- goes up as a multipart upload in parts of
C{s3_store_large_object_chunk_size}, each sent as soon as it has filled
while the next ones fill, up to C{s3_store_thread_pools} parts in flight
(L{_MultipartBackend}): at most three parts in memory, whatever the image
size. Any failure or abort aborts the multipart upload (or cuts the PUT
short), so S3 keeps no parts and no object.

Reads relay the ranged GET's response through the shared
L{BlockProducer} and L{glance_tx.store.response.ResponseBlocks}: the
response's connection is paused while a slow consumer leaves more than two
blocks unread; or, on plain TCP on both sides, the kernel moves the body
with C{os.splice} (L{glance_tx.store.response.relay_body}).

Locations carry no credentials (glance_store's do): the store's own
configuration has them.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

from attrs import define, field, frozen, validators
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer

from glance_tx.backpressure import Watermarks
from glance_tx.config import ConfigError, StoreConfig, bool_option
from glance_tx.errors import BadRequest, NotFound, StoreError
from glance_tx.images import is_image_id, validate_image_id
from glance_tx.store.factory import StoreServices
from glance_tx.store.fed_body import FedBody
from glance_tx.store.interface import IStore, IStoreWriter
from glance_tx.store.reader import (
    BlockProducer,
    IBlockSource,
    NoBytes,
    check_read_range,
)
from glance_tx.store.response import relay_body, response_blocks
from glance_tx.store.s3_client import (
    HTTPRequester,
    MultipartUpload,
    S3Client,
    S3Credentials,
    UploadedPart,
)
from glance_tx.store.tls import S3_TLS, load_tls_policy
from glance_tx.store.writer import NETWORK_BUDGET_WEIGHT, IWriteBackend, StoreWriter
from glance_tx.threads import BlockingRunner

__all__ = ["S3Store", "make_s3_store", "s3_store_from_options"]

MiB = 1024 * 1024

#: glance_store's defaults and floor, in MiB.
DEFAULT_LARGE_OBJECT_SIZE_MIB = 100
DEFAULT_LARGE_OBJECT_CHUNK_SIZE_MIB = 10
MIN_CHUNK_SIZE_MIB = 5  # S3's smallest part, but for the last
#: Parts of one multipart upload in flight at once: glance_store's
#: s3_store_thread_pools and its default. Most of them only wait for S3's
#: answer: see _FEEDING.
DEFAULT_THREAD_POOLS = 10
#: Parts of one multipart upload still being fed at once, which is what
#: holds memory (up to a part each). Two keep a connection busy while the
#: other's last bytes go; bench/RESULTS.md has the measurements.
_FEEDING = 2

#: Bytes relayed per write to the consumer on a read.
DEFAULT_BLOCK_SIZE = 1 * MiB


@implementer(IStore)
@frozen
class S3Store:
    """
    Image data as objects in C{bucket}, reached through C{client}.

    @ivar large_object_size: Images of a known size below this many bytes
        go up in one PUT; the rest in parts.
    @ivar part_size: Bytes per part of a multipart upload (S3 wants at
        least 5 MiB for every part but the last).
    @ivar parts_in_flight: How many parts of a multipart upload may be on
        their way to S3 at once (C{s3_store_thread_pools}); at most two of
        them hold bytes (up to C{part_size} each, until they are in the
        connection), the others only wait for S3's answer.
    @ivar create_bucket_on_put: Create the bucket at the first upload that
        finds it missing.
    @ivar runner: Where each part's CRC32 is computed, off the reactor.
    """

    scheme: ClassVar[str] = "s3"

    client: S3Client
    bucket: str
    large_object_size: int = DEFAULT_LARGE_OBJECT_SIZE_MIB * MiB
    part_size: int = DEFAULT_LARGE_OBJECT_CHUNK_SIZE_MIB * MiB
    parts_in_flight: int = field(default=DEFAULT_THREAD_POOLS, validator=validators.ge(1))
    create_bucket_on_put: bool = False
    block_size: int = DEFAULT_BLOCK_SIZE
    watermarks: Watermarks = field(factory=lambda: Watermarks(high=4 * MiB, low=1 * MiB))
    runner: BlockingRunner = field(kw_only=True)

    def location_for(self, image_id: str) -> str:
        return f"s3://{self.bucket}/{image_id}"

    def _key(self, location: object) -> str:
        """The key a location of this store names; L{BadRequest} if none."""
        if not isinstance(location, str):
            raise BadRequest(f"Location {location!r} is not a string")
        refusal = f"{location!r} is not a location in this store"
        try:
            parts = urlsplit(location)
        except ValueError:
            raise BadRequest(refusal) from None
        key = parts.path[1:]
        if (
            parts.scheme != self.scheme
            or parts.netloc != self.bucket
            or parts.query
            or parts.fragment
            or not is_image_id(key)
        ):
            raise BadRequest(refusal)
        return key

    def open_writer(self, image_id: str, size: int | None = None) -> Deferred[IStoreWriter]:
        """
        See L{IStore.open_writer}. C{size}, when the upload announced it,
        picks one streamed PUT (below C{large_object_size}) over a
        multipart upload.
        """
        return Deferred.fromCoroutine(self._open_writer(image_id, size))

    async def _open_writer(self, image_id: str, size: int | None) -> IStoreWriter:
        key = validate_image_id(image_id)
        if self.create_bucket_on_put and not await self.client.bucket_exists(self.bucket):
            await self.client.create_bucket(self.bucket)
        backend: _PutBackend | _MultipartBackend
        if size is not None and 0 <= size < self.large_object_size:
            backend = _PutBackend.start(self.client, self.bucket, key, size)
        else:
            upload = await self.client.create_multipart_upload(self.bucket, key)
            backend = _MultipartBackend(
                self.client, upload, self.part_size, self.runner, self.parts_in_flight
            )
        return StoreWriter(backend, self.watermarks, budget_weight=NETWORK_BUDGET_WEIGHT)

    def read(
        self,
        location: str,
        consumer: IConsumer,
        offset: int = 0,
        length: int | None = None,
    ) -> Deferred[None]:
        return Deferred.fromCoroutine(self._read(location, consumer, offset, length))

    async def _read(
        self, location: str, consumer: IConsumer, offset: int, length: int | None
    ) -> None:
        key = self._key(location)
        check_read_range(offset, length)
        source: IBlockSource = NoBytes()
        remaining = 0
        if length == 0:
            await self.client.object_size(self.bucket, key)  # NotFound if missing
        else:
            response = await self.client.get_object(self.bucket, key, offset, length)
            if response is not None:  # None: the range starts at or past the end
                if response.length is UNKNOWN_LENGTH:
                    raise StoreError("S3 answered a GET without a Content-Length")
                remaining = response.length
                origin = f"the S3 store {self.client.store_name!r}"
                relayed = relay_body(consumer, response, remaining, origin)
                if relayed is not None:
                    return await relayed
                source = response_blocks(response, self.block_size, origin, wide_reads=True)
        producer = BlockProducer(
            source=source, consumer=consumer, remaining=remaining, block_size=self.block_size
        )
        await producer.start()

    def delete(self, location: str) -> Deferred[None]:
        try:
            key = self._key(location)
        except BadRequest as e:
            return fail(e)
        return Deferred.fromCoroutine(self.client.delete_object(self.bucket, key))

    def size(self, location: str) -> Deferred[int]:
        try:
            key = self._key(location)
        except BadRequest as e:
            return fail(e)
        return Deferred.fromCoroutine(self.client.object_size(self.bucket, key))

    def locations(self) -> Deferred[frozenset[str]]:
        async def listed() -> frozenset[str]:
            try:
                keys = await self.client.list_keys(self.bucket)
            except NotFound:
                return frozenset()  # no bucket yet: nothing stored
            return frozenset(self.location_for(key) for key in keys if is_image_id(key))

        return Deferred.fromCoroutine(listed())

    def discard_incomplete(self, image_id: str | None = None) -> Deferred[int]:
        """
        See L{IStore.discard_incomplete}: aborts every multipart upload in
        progress for an image key in the bucket (with C{image_id}, for that
        image's key only), including those of writers still open. (An
        unfinished single PUT leaves nothing: S3 stores a body only whole.)
        """

        async def discarded() -> int:
            try:
                uploads = await self.client.list_multipart_uploads(self.bucket)
            except NotFound:
                return 0
            removed = 0
            for upload in uploads:
                if is_image_id(upload.key) and image_id in (None, upload.key):
                    await self.client.abort_multipart_upload(upload)
                    removed += 1
            return removed

        return Deferred.fromCoroutine(discarded())

    def ping(self) -> Deferred[None]:
        """
        Fire when the bucket answers with these credentials (or is missing
        but will be created at the first upload); otherwise fail with a
        L{StoreError} naming the store.
        """

        async def pinged() -> None:
            if not await self.client.bucket_exists(self.bucket):
                if not self.create_bucket_on_put:
                    raise StoreError(
                        f"S3 store {self.client.store_name!r}: bucket "
                        f"{self.bucket!r} does not exist"
                    )

        return Deferred.fromCoroutine(pinged())


# Writing


def _crc32(chunks: list[bytes]) -> int:
    """The CRC32 of a part's chunks (zlib lets go of the GIL for each)."""
    crc = 0
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
    return crc


async def _feed_chunks(body: FedBody, chunks: list[bytes]) -> None:
    """
    Feed C{chunks} in order, each let go of once it is in the connection,
    so a part being sent holds only its unsent bytes. Each goes whole: the
    connection sends from the chunk itself (L{FedBody.send}), where slicing
    it into new bytes objects copied every byte of the image once more.
    """
    chunks.reverse()
    while chunks:
        await body.write(chunks.pop())


def _stop_feed_on_failure(d: Deferred[Any], body: FedBody) -> None:
    """A request (or feeding) that fails before its body is done stops the body."""

    def failed(failure: Failure) -> Failure:
        body.fail(failure.value or StoreError("The request failed"))
        return failure

    d.addErrback(failed)


@implementer(IWriteBackend)
@define
class _PutBackend:
    """One image in one PUT of the announced size, fed as bytes arrive."""

    client: S3Client
    bucket: str
    key: str
    body: FedBody
    put: Deferred[None]
    _stored: bool = False

    def __attrs_post_init__(self) -> None:
        def stored(result: None) -> None:
            self._stored = True

        self.put.addCallback(stored)

    @classmethod
    def start(cls, client: S3Client, bucket: str, key: str, size: int) -> _PutBackend:
        body = FedBody(client.reactor, size, peer="S3")
        put = Deferred.fromCoroutine(client.put_object(bucket, key, body))
        _stop_feed_on_failure(put, body)
        return cls(client, bucket, key, body, put)

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def write(self, chunks: list[bytes]) -> Deferred[None]:
        return Deferred.fromCoroutine(self.body.send(chunks))

    def commit(self) -> Deferred[None]:
        async def committed() -> None:
            if self.body.sent != self.body.length:
                error = StoreError(
                    f"The upload announced {self.body.length} bytes and sent "
                    f"{self.body.sent}"
                )
                self.body.fail(error)
                raise error
            await self.put

        return Deferred.fromCoroutine(committed())

    def discard(self) -> Deferred[None]:
        async def discarded() -> None:
            self.body.fail(StoreError("The upload was aborted"))
            try:
                await self.put
            except Exception:
                pass  # cut short, as intended
            if self._stored:  # the whole body was in before the abort
                await self.client.delete_object(self.bucket, self.key)

        return Deferred.fromCoroutine(discarded())


@frozen
class _Part:
    """One part of a multipart upload on its way: its body and its request."""

    number: int
    body: FedBody
    sent: Deferred[UploadedPart]


@implementer(IWriteBackend)
@define
class _MultipartBackend:
    """
    One image as a multipart upload: bytes gather into a part; a full part
    is sent while the next ones gather, up to C{max_in_flight} parts at a
    time, of which at most C{_FEEDING} are still being fed (the rest wait
    for S3's answer). A write that fills a part while either limit is
    reached waits, and the L{StoreWriter} queue in front of it then pauses
    the client. A part holds its bytes (the chunks as they came, no copy)
    only until they are in its connection, so the backend holds at most
    C{_FEEDING + 1} parts, however many are in flight.

    The first part to fail fails the next C{write} or the C{commit};
    C{discard} cuts the parts still being fed, waits for every part in
    flight to land or fail, and only then aborts the upload, so no part
    stored after the abort is left behind.
    """

    client: S3Client
    upload: MultipartUpload
    part_size: int
    runner: BlockingRunner
    max_in_flight: int = 1
    _gathering: list[bytes] = field(factory=list)
    _gathered: int = 0
    _parts: int = 0
    _stored: dict[int, UploadedPart] = field(factory=dict)
    _in_flight: dict[int, _Part] = field(factory=dict)
    _feeding: set[int] = field(factory=set)
    _failure: Failure | None = None
    _waiting: list[Deferred[None]] = field(factory=list)
    _committed: bool = False

    @property
    def location(self) -> str:
        return f"s3://{self.upload.bucket}/{self.upload.key}"

    def write(self, chunks: list[bytes]) -> Deferred[None]:
        return Deferred.fromCoroutine(self._write(chunks))

    async def _write(self, chunks: list[bytes]) -> None:
        self._check()
        for index in range(len(chunks)):
            # Out of the writer's list: the part holds it until it is sent.
            chunk, chunks[index] = chunks[index], b""
            start = 0
            while start < len(chunk):
                take = min(len(chunk) - start, self.part_size - self._gathered)
                whole = start == 0 and take == len(chunk)
                self._gathering.append(chunk if whole else chunk[start : start + take])
                self._gathered += take
                start += take
                if self._gathered == self.part_size:
                    await self._send_part()

    def _check(self) -> None:
        """Raise the failure of a part, if one has failed."""
        if self._failure is not None:
            self._failure.raiseException()

    async def _send_part(self) -> None:
        """Send what has gathered as the next part, once there is room."""
        while self._failure is None and (
            len(self._in_flight) >= self.max_in_flight or len(self._feeding) >= _FEEDING
        ):
            await self._change()
        self._check()
        chunks, size = self._gathering, self._gathered
        self._gathering, self._gathered = [], 0
        self._parts += 1
        number = self._parts
        crc32 = await self.runner.run(_crc32, chunks)
        self._check()  # a part may have failed meanwhile
        body = FedBody(self.client.reactor, size, peer="S3")
        sent = Deferred.fromCoroutine(
            self.client.upload_part(self.upload, number, body, crc32)
        )
        _stop_feed_on_failure(sent, body)
        self._in_flight[number] = _Part(number, body, sent)
        sent.addBoth(self._land, number)
        self._feeding.add(number)
        fed = Deferred.fromCoroutine(_feed_chunks(body, chunks))
        _stop_feed_on_failure(fed, body)
        # A feed that fails fails its part's request, which reports it.
        fed.addBoth(lambda _: self._fed(number))

    def _fed(self, number: int) -> None:
        """A part's bytes are all in its connection (or never will be)."""
        self._feeding.discard(number)
        self._changed()

    def _land(self, result: UploadedPart | Failure, number: int) -> None:
        """A part's request is over: keep its ETag, or its failure."""
        del self._in_flight[number]
        self._feeding.discard(number)
        if isinstance(result, Failure):
            self._failure = self._failure or result
        else:
            self._stored[number] = result
        self._changed()

    def _changed(self) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    async def _change(self) -> None:
        """Wait until a part has been fed, or has landed or failed."""
        changed: Deferred[None] = Deferred()
        self._waiting.append(changed)
        await changed

    async def _all_land(self) -> None:
        """Wait until no part is in flight."""
        while self._in_flight:
            await self._change()

    def commit(self) -> Deferred[None]:
        async def committed() -> None:
            self._check()
            if self._gathered == 0 and self._parts == 0:
                # No bytes at all: S3 takes no multipart upload of no parts,
                # so the empty object goes up by itself.
                await self.client.abort_multipart_upload(self.upload)
                await self.client.put_object(self.upload.bucket, self.upload.key, FedBody(self.client.reactor, 0, peer="S3"))
                self._committed = True
                return
            if self._gathered:
                await self._send_part()
            await self._all_land()
            self._check()
            await self.client.complete_multipart_upload(self.upload, list(self._stored.values()))
            self._committed = True

        return Deferred.fromCoroutine(committed())

    def discard(self) -> Deferred[None]:
        async def discarded() -> None:
            self._gathering, self._gathered = [], 0
            for part in list(self._in_flight.values()):
                part.body.fail(StoreError("The upload was aborted"))
            await self._all_land()  # their failures are moot now
            await self.client.abort_multipart_upload(self.upload)
            if self._committed:
                await self.client.delete_object(self.upload.bucket, self.upload.key)

        return Deferred.fromCoroutine(discarded())


# Configuration


def _whole(options: Mapping[str, str], name: str, default: int, minimum: int, unit: str) -> int:
    raw = options.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        of = f" of {unit}" if unit else ""
        raise ConfigError(f"{name} must be a whole number{of}, not {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}" + (f" ({unit})" if unit else ""))
    return value


def _mib(options: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    return _whole(options, name, default, minimum, "MiB") * MiB


def _required(options: Mapping[str, str], store_id: str, name: str) -> str:
    value = options.get(name, "").strip()
    if not value:
        raise ConfigError(f"store {store_id!r} (s3) needs {name}")
    return value


def s3_store_from_options(
    store_id: str,
    options: Mapping[str, str],
    http: HTTPRequester,
    reactor: Any,
    runner: BlockingRunner,
) -> S3Store:
    """
    An L{S3Store} from its config section, with glance_store's option names
    and units (see doc/configuration.rst). A host without a scheme is
    reached over https. C{runner} computes the parts' checksums.
    """
    host = _required(options, store_id, "s3_store_host")
    if "://" not in host:
        host = "https://" + host
    addressing = options.get("s3_store_bucket_url_format", "auto").strip() or "auto"
    if addressing not in ("auto", "path", "virtual"):
        raise ConfigError(
            f"s3_store_bucket_url_format must be auto, path or virtual, not {addressing!r}"
        )
    create = bool_option(options, "s3_store_create_bucket_on_put", False)
    try:
        client = S3Client(
            http=http,
            reactor=reactor,
            endpoint=host.rstrip("/"),
            region=options.get("s3_store_region_name", "").strip() or "us-east-1",
            credentials=S3Credentials(
                _required(options, store_id, "s3_store_access_key"),
                _required(options, store_id, "s3_store_secret_key"),
            ),
            addressing=addressing,
            store_name=store_id,
        )
    except ValueError as e:
        raise ConfigError(f"store {store_id!r} (s3): {e}") from None
    return S3Store(
        client=client,
        bucket=_required(options, store_id, "s3_store_bucket"),
        large_object_size=_mib(
            options, "s3_store_large_object_size", DEFAULT_LARGE_OBJECT_SIZE_MIB, 1
        ),
        part_size=_mib(
            options,
            "s3_store_large_object_chunk_size",
            DEFAULT_LARGE_OBJECT_CHUNK_SIZE_MIB,
            MIN_CHUNK_SIZE_MIB,
        ),
        parts_in_flight=_whole(options, "s3_store_thread_pools", DEFAULT_THREAD_POOLS, 1, ""),
        create_bucket_on_put=create,
        runner=runner,
    )


async def make_s3_store(config: StoreConfig, services: StoreServices) -> S3Store:
    """
    The store factory of C{s3} stores (see L{glance_tx.store.factory}):
    reads a C{s3_store_cacert} bundle, if any; C{ping} checks the bucket.
    """
    tls = await load_tls_policy(config.options, S3_TLS, services.runner)
    return s3_store_from_options(
        config.id,
        config.options,
        services.http_client_for(tls),
        services.reactor,
        services.runner,
    )
