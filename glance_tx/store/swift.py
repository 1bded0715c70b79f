"""
The Swift store: image data as objects in one container of an OpenStack
Swift account.

An image's data is the object C{<container>/<image id>}, named by the
location C{swift+http://<auth host>/<auth path>/<container>/<image id>}
(C{swift+https} for an https auth address): glance_store's form, less the
credentials it would put before the host. A location never carries a user,
key or token.

Uploads stream. An image whose declared size is at most
C{swift_store_large_object_size} goes up as one PUT of that length, fed as
bytes arrive; Swift makes an object visible only
when its body has ended, so an abort simply drops the request. A larger
image, or one whose size is not known, becomes a Static Large Object:
segments of C{swift_store_large_object_chunk_size} bytes, each one PUT
(of its length when the image's size is declared, else chunked) streamed
as the bytes arrive (so memory holds the writer's queue, never
a segment), in C{<container>_segments} under C{<image id>/<upload id>/},
and at commit a manifest at the image's name. Every upload first puts an
empty marker object C{<image id>/<upload id>} in the segments container and
removes it when it commits or aborts: what a crash leaves behind is found
by its marker and removed by L{SwiftStore.discard_incomplete}. An abort or
a failure deletes every segment already sent.

Reads relay one GET (ranged when asked for part of the data) to the
consumer through the shared read-ahead producer, pausing the Swift
connection while the consumer is slow; or, on plain TCP on both sides with
a Content-Length, the kernel moves the body with C{os.splice}
(L{glance_tx.store.response.relay_body}). Deletes use
C{?multipart-manifest=delete}, which removes a manifest's segments with it.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from attrs import define, field, mutable
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.web.iweb import IResponse
from zope.interface import implementer

from glance_tx.backpressure import Watermarks
from glance_tx.config import ConfigError, StoreConfig, bool_option
from glance_tx.errors import BadRequest, NotFound, StoreError
from glance_tx.images import is_image_id, validate_image_id
from glance_tx.keystone_auth import PasswordCredentials
from glance_tx.store.factory import StoreServices
from glance_tx.store.interface import IStore, IStoreWriter
from glance_tx.store.reader import (
    BlockProducer,
    IBlockSource,
    NoBytes,
    check_read_range,
)
from glance_tx.store.response import relay_body, response_blocks
from glance_tx.store.swift_client import (
    INTERFACES,
    KeystoneV3Auth,
    Segment,
    StreamingPut,
    SwiftClient,
    TempAuth,
)
from glance_tx.store.tls import SWIFT_TLS, load_tls_policy
from glance_tx.store.writer import NETWORK_BUDGET_WEIGHT, IWriteBackend, StoreWriter

__all__ = ["SwiftStore", "make_swift_store", "swift_store_from_options"]

MiB = 1024 * 1024

DEFAULT_BLOCK_SIZE = 1 * MiB
DEFAULT_HIGH_WATERMARK = 4 * MiB
DEFAULT_LOW_WATERMARK = 1 * MiB
#: glance_store's defaults, in bytes (its options are in MiB).
DEFAULT_LARGE_OBJECT_SIZE = 5120 * MiB
DEFAULT_LARGE_OBJECT_CHUNK_SIZE = 200 * MiB


@implementer(IStore)
@define
class SwiftStore:
    """
    Image data in C{container} of the account C{client} logs in to.

    @ivar auth_address: The auth URL the locations are built from.
    @ivar create_container: Create the container (and the segments
        container) at the first upload, as glance_store's
        C{swift_store_create_container_on_put}.
    @ivar large_object_size: Images larger than this (bytes) are Static
        Large Objects...
    @ivar chunk_size: ... of segments of this many bytes.
    """

    client: SwiftClient
    auth_address: str
    container: str = "glance"
    create_container: bool = False
    large_object_size: int = DEFAULT_LARGE_OBJECT_SIZE
    chunk_size: int = DEFAULT_LARGE_OBJECT_CHUNK_SIZE
    block_size: int = DEFAULT_BLOCK_SIZE
    high_watermark: int = DEFAULT_HIGH_WATERMARK
    low_watermark: int = DEFAULT_LOW_WATERMARK
    _containers_made: bool = field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        self.watermarks  # noqa: B018 -- refuse a bad pair now, not at the first upload
        if self.chunk_size < 1 or self.large_object_size < 0:
            raise ValueError("the large object sizes must be positive")

    @property
    def scheme(self) -> str:  # type: ignore[override]
        return "swift+" + (urlsplit(self.auth_address).scheme or "http")

    @property
    def watermarks(self) -> Watermarks:
        return Watermarks(high=self.high_watermark, low=self.low_watermark)

    @property
    def segments_container(self) -> str:
        return self.container + "_segments"

    @property
    def _prefix(self) -> str:
        """Every location of this store starts with this."""
        parts = urlsplit(self.auth_address)
        host = parts.netloc.rpartition("@")[2]  # never a user:password@
        return f"{self.scheme}://{host}{parts.path.rstrip('/')}/{self.container}/"

    def location_for(self, image_id: str) -> str:
        return self._prefix + image_id

    def _object_name(self, location: object) -> str:
        """The image id a location of this store names; BadRequest if none."""
        if (
            not isinstance(location, str)
            or not location.startswith(self._prefix)
            or not is_image_id(location[len(self._prefix) :])
        ):
            raise BadRequest(f"{location!r} is not a location in this store")
        return location[len(self._prefix) :]

    # Writing

    def open_writer(self, image_id: str, size: int | None = None) -> Deferred[IStoreWriter]:
        """
        See L{IStore.open_writer}. C{size}, when the upload declares it,
        decides between one PUT and a Static Large Object; unknown, the
        image is uploaded as a Static Large Object, as glance_store does.
        """
        try:
            image_id = validate_image_id(image_id)
        except BadRequest:
            return fail()
        return Deferred.fromCoroutine(self._open_writer(image_id, size))

    async def _open_writer(self, image_id: str, size: int | None) -> IStoreWriter:
        await self._ensure_containers()
        backend = _SwiftUpload(
            store=self,
            image_id=image_id,
            upload_id=secrets.token_hex(8),
            large=self._is_large(size),
            size=size,
        )
        try:
            await self.client.put_object(
                self.segments_container, backend.marker, b"", doing="starting an upload"
            )
        except NotFound:
            raise StoreError(
                f"Swift store {self.client.store_name!r}: the container "
                f"{self.segments_container} does not exist"
            ) from None
        return StoreWriter(backend, self.watermarks, budget_weight=NETWORK_BUDGET_WEIGHT)

    def _is_large(self, size: int | None) -> bool:
        """Whether an upload of C{size} (C{None}: not declared) is a Static Large Object."""
        return size is None or size > self.large_object_size

    async def _ensure_containers(self) -> None:
        if not self.create_container or self._containers_made:
            return
        for container in (self.container, self.segments_container):
            await self.client.create_container(container)
        self._containers_made = True

    # Reading

    def read(
        self,
        location: str,
        consumer: IConsumer,
        offset: int = 0,
        length: int | None = None,
    ) -> Deferred[None]:
        try:
            name = self._object_name(location)
            check_read_range(offset, length)
        except BadRequest:
            return fail()
        return Deferred.fromCoroutine(self._read(name, consumer, offset, length))

    async def _read(
        self, name: str, consumer: IConsumer, offset: int, length: int | None
    ) -> None:
        source: IBlockSource
        if length == 0:
            await self.client.head_object(self.container, name)  # NotFound if missing
            source, remaining = NoBytes(), 0
        else:
            response = await self.client.get_object(self.container, name, offset, length)
            if response is None:
                source, remaining = NoBytes(), 0
            else:
                origin = f"the Swift store {self.client.store_name!r}"
                remaining = _length(response)
                relayed = relay_body(consumer, response, remaining, origin)
                if relayed is not None:
                    return await relayed
                source = response_blocks(response, self.block_size, origin, wide_reads=True)
        producer = BlockProducer(
            source=source, consumer=consumer, remaining=remaining, block_size=self.block_size
        )
        await producer.start()

    def size(self, location: str) -> Deferred[int]:
        try:
            name = self._object_name(location)
        except BadRequest:
            return fail()
        d = Deferred.fromCoroutine(self.client.head_object(self.container, name))
        return d.addCallback(lambda headers: int(headers.get("content-length", "0")))

    # The rest

    def delete(self, location: str) -> Deferred[None]:
        try:
            name = self._object_name(location)
        except BadRequest:
            return fail()
        d = Deferred.fromCoroutine(self.client.delete_object(self.container, name, large=True))
        return d.addCallback(lambda _: None)

    def locations(self) -> Deferred[frozenset[str]]:
        return Deferred.fromCoroutine(self._locations())

    async def _locations(self) -> frozenset[str]:
        try:
            names = await self.client.list_objects(self.container)
        except NotFound:
            return frozenset()
        return frozenset(self.location_for(n) for n in names if is_image_id(n))

    def discard_incomplete(self, image_id: str | None = None) -> Deferred[int]:
        """
        See L{IStore.discard_incomplete}: every upload marker (with
        C{image_id}, every C{<image id>/<upload id>} marker of that image),
        with the segments under it, is removed, those of uploads still open
        too.
        """
        return Deferred.fromCoroutine(self._discard_incomplete(image_id))

    async def _discard_incomplete(self, image_id: str | None) -> int:
        try:
            names = await self.client.list_objects(self.segments_container)
        except NotFound:
            return 0
        markers = {
            n
            for n in names
            if n.count("/") == 1 and image_id in (None, n.split("/", 1)[0])
        }
        for name in names:
            if name not in markers and name.rsplit("/", 1)[0] in markers:
                await self.client.delete_object(self.segments_container, name)
        for marker in markers:
            await self.client.delete_object(self.segments_container, marker)
        return len(markers)

    def ping(self) -> Deferred[None]:
        """
        Fire when Swift takes our credentials and the container exists (or
        will be created at the first upload).
        """
        return Deferred.fromCoroutine(self._ping())

    async def _ping(self) -> None:
        try:
            await self.client.head_container(self.container)
        except NotFound:
            if not self.create_container:
                raise StoreError(
                    f"Swift store {self.client.store_name!r}: the container "
                    f"{self.container} does not exist"
                ) from None


def _length(response: IResponse) -> int:
    if isinstance(response.length, int):
        return response.length
    values = response.headers.getRawHeaders("Content-Length") or ["0"]
    return int(values[0])


@implementer(IWriteBackend)
@mutable
class _SwiftUpload:
    """
    How one image's bytes reach Swift: one streamed PUT of the image's
    object, or streamed PUTs of segments and, at commit, the manifest.
    """

    store: SwiftStore
    image_id: str
    upload_id: str
    large: bool
    #: The image's declared size, if any: each PUT then says its length
    #: (Content-Length), which costs Swift's proxy less than a chunked
    #: body and lets the connection send each batch without copying it.
    size: int | None = None

    _put: StreamingPut | None = field(default=None, init=False)
    _put_name: str | None = field(default=None, init=False)
    _in_put: int = field(default=0, init=False)
    _segments: list[Segment] = field(factory=list, init=False)
    _final_attempted: bool = field(default=False, init=False)

    @property
    def location(self) -> str:
        return self.store.location_for(self.image_id)

    @property
    def marker(self) -> str:
        return f"{self.image_id}/{self.upload_id}"

    @property
    def client(self) -> SwiftClient:
        return self.store.client

    def write(self, chunks: list[bytes]) -> Deferred[None]:
        return Deferred.fromCoroutine(self._write(chunks))

    async def _write(self, chunks: list[bytes]) -> None:
        if not self.large:
            if self._put is None:
                await self._start_put(self.store.container, self.image_id, self.size)
            await self._send(chunks)
            return
        pending = deque(chunks)
        chunks.clear()  # each is let go of once sent (see FedBody.send)
        batch: list[bytes] = []
        while pending:
            if self._put is None:
                await self._start_segment()
            chunk = pending.popleft()
            room = self.store.chunk_size - self._in_put
            if len(chunk) > room:
                chunk, rest = chunk[:room], chunk[room:]
                pending.appendleft(rest)
            batch.append(chunk)
            self._in_put += len(chunk)
            if self._in_put == self.store.chunk_size:
                await self._send(batch)
                batch = []
                await self._end_segment()
        if batch:
            await self._send(batch)

    async def _send(self, batch: list[bytes]) -> None:
        put = self._put
        assert put is not None
        try:
            await put.body.send(batch)
        except StoreError:
            # Swift may answer before it has the whole body (a 413 for a
            # quota) and close the connection: when it has answered, its
            # answer says why, not the connection that stopped taking bytes.
            # (Its proxy mostly reads the rest first; tests.test_store_swift's
            # test_quota_refusal_is_413 met the close about one run in six.)
            if put.response.called:
                await self.client.put_answer(put, "storing image data")
            raise

    async def _start_put(self, container: str, name: str, length: int | None) -> None:
        session = await self.client.session()
        self._put = self.client.put_object_streaming(session, container, name, length=length)
        self._put_name, self._in_put = name, 0

    async def _start_segment(self) -> None:
        number = len(self._segments) + 1
        length = None
        if self.size is not None:
            done = sum(segment.size for segment in self._segments)
            length = min(self.store.chunk_size, self.size - done)
        await self._start_put(
            self.store.segments_container, f"{self.marker}/{number:08d}", length
        )

    async def _end_segment(self) -> None:
        put, name, size = self._put, self._put_name, self._in_put
        assert put is not None and name is not None
        # Its body is complete: from here a discard deletes the segment
        # (if Swift stored it) rather than cancel the request.
        self._put = None
        etag = await self.client.finish_put(put, "storing a segment")
        self._put_name = None
        self._segments.append(Segment(self.store.segments_container, name, etag, size))

    def commit(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._commit())

    async def _commit(self) -> None:
        container = self.store.container
        # The image's object may exist from here on, even if we never hear
        # Swift's answer: a discard deletes it.
        self._final_attempted = True
        if not self.large:
            if self._put is None:  # nothing written: an empty object
                await self.client.put_object(container, self.image_id, b"", "storing image data")
            else:
                put, self._put = self._put, None
                await self.client.finish_put(put, "storing image data")
        else:
            if self._put is not None:
                await self._end_segment()
            if self._segments:
                await self.client.put_manifest(container, self.image_id, self._segments)
            else:
                await self.client.put_object(container, self.image_id, b"", "storing image data")
        await self.client.delete_object(self.store.segments_container, self.marker)

    def discard(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._discard())

    async def _discard(self) -> None:
        segments = self.store.segments_container
        if self._put is not None:
            put, self._put = self._put, None
            put.body.fail(CancelledError("upload cancelled"))
            try:
                await self.client.put_answer(put, "cancelling an upload")
            except Exception:
                pass  # cancelled: Swift stored nothing, and says so
        if self.large and self._put_name:
            # Also a segment whose body was complete but whose answer never
            # came (the connection dropped): Swift may have stored it.
            await self.client.delete_object(segments, self._put_name)
        if self._final_attempted:
            # Removes a manifest's segments too (or a plain object).
            await self.client.delete_object(self.store.container, self.image_id, large=True)
        for segment in self._segments:
            await self.client.delete_object(segments, segment.name)
        self._segments = []
        await self.client.delete_object(segments, self.marker)


def _mib(options: Mapping[str, str], name: str, default: int) -> int:
    raw = options.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number of MiB, not {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be at least 1 (MiB)")
    return value * MiB


async def make_swift_store(config: StoreConfig, services: StoreServices) -> SwiftStore:
    """
    The L{glance_tx.store.factory.StoreFactory} of C{swift} stores: reads
    a C{swift_store_cacert} bundle, if any; the first request logs in.
    """
    tls = await load_tls_policy(config.options, SWIFT_TLS, services.runner)
    return swift_store_from_options(
        config.id, config.options, services.http_client_for(tls), services.reactor
    )


def swift_store_from_options(
    store_id: str, options: Mapping[str, str], http: Any, clock: IReactorTime
) -> SwiftStore:
    """
    A Swift store from its config section (glance_store's option names;
    the two large object sizes in MiB, as there). No I/O: the first
    request logs in.
    """

    def need(name: str) -> str:
        value = options.get(name)
        if not value:
            raise ConfigError(f"store {store_id!r}: {name} is required")
        return value

    auth_address = need("swift_store_auth_address")
    version = options.get("swift_store_auth_version", "3").strip()
    auth: TempAuth | KeystoneV3Auth
    if version in ("1", "1.0"):
        auth = TempAuth(auth_address, need("swift_store_user"), need("swift_store_key"))
    elif version in ("3", "3.0"):
        endpoint_type = options.get("swift_store_endpoint_type", "publicURL")
        if endpoint_type not in INTERFACES:
            raise ConfigError(
                f"store {store_id!r}: swift_store_endpoint_type must be "
                "publicURL, internalURL or adminURL"
            )
        if options.get("swift_store_application_credential_id"):
            credentials = PasswordCredentials(
                application_credential_id=options["swift_store_application_credential_id"],
                application_credential_secret=need("swift_store_application_credential_secret"),
            )
        else:
            # glance_store's "project:user" form.
            project, _, user = need("swift_store_user").rpartition(":")
            credentials = PasswordCredentials(
                user=user,
                password=need("swift_store_key"),
                project=project or None,
                user_domain_id=options.get("swift_store_user_domain_id", "default"),
                user_domain_name=options.get("swift_store_user_domain_name"),
                project_domain_id=options.get("swift_store_project_domain_id", "default"),
                project_domain_name=options.get("swift_store_project_domain_name"),
            )
        auth = KeystoneV3Auth(
            auth_address=auth_address,
            credentials=credentials,
            region=options.get("swift_store_region"),
            interface=INTERFACES[endpoint_type],
            service_type=options.get("swift_store_service_type", "object-store"),
            endpoint=options.get("swift_store_endpoint"),
        )
    else:
        raise ConfigError(
            f"store {store_id!r}: swift_store_auth_version must be 1 or 3, not {version!r}"
        )
    try:
        return SwiftStore(
            client=SwiftClient(http=http, auth=auth, clock=clock, store_name=store_id),
            auth_address=auth_address,
            container=options.get("swift_store_container", "glance"),
            create_container=bool_option(options, "swift_store_create_container_on_put", False),
            large_object_size=_mib(
                options, "swift_store_large_object_size", DEFAULT_LARGE_OBJECT_SIZE
            ),
            chunk_size=_mib(
                options, "swift_store_large_object_chunk_size", DEFAULT_LARGE_OBJECT_CHUNK_SIZE
            ),
        )
    except ValueError as e:
        raise ConfigError(f"store {store_id!r}: {e}") from None
