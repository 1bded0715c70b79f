"""
Tests for L{glance_tx.store.swift}: the shared IStore conformance suite and
the Swift-specific behaviour (one PUT or a Static Large Object, nothing
left behind by an abort or a failure), all against the real one-node Swift
that C{tools/run-tests} starts, checked from the side with swiftclient.
Small thresholds (16 and 64 KiB segments) keep the images small and the
suite fast.
"""

from __future__ import annotations

from typing import Any, cast

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
)
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from glance_tx.api import splice as splice_module
from glance_tx.config import ConfigError
from glance_tx.errors import StorageFull, StoreError
from glance_tx.images import new_image_id
from glance_tx.store.swift import SwiftStore, swift_store_from_options
from glance_tx.store.swift_client import KeystoneV3Auth, SwiftClient, TempAuth
from glance_tx.store.writer import NETWORK_BUDGET_WEIGHT, StoreWriter
from tests.api_fixtures import V1_RAW_BARE
from tests.store_conformance import (
    FakeProducer,
    UnpacedStoreConformanceMixin,
    make_data,
)
from tests.swift_cluster import SwiftCluster, swift_cluster, unique_container
from tests.test_splice import _Splices

MiB = 1024 * 1024
SEGMENT = 16 * 1024


class _SwiftHarness:
    """A fresh container per test on the one-node Swift, emptied afterwards."""

    addCleanup: Any
    declared_size: bool = False
    segment: int = SEGMENT

    def setUp(self) -> None:
        self.cluster: SwiftCluster = swift_cluster(self)  # type: ignore[arg-type]
        self.pool = HTTPConnectionPool(reactor)
        self.addCleanup(self.pool.closeCachedConnections)
        self.container = unique_container()
        self.connection = self.cluster.connection()
        self.addCleanup(self._remove_containers)

    def _remove_containers(self) -> None:
        _empty_containers(self.connection, self.container)

    def make_store(self, auth_url: str | None = None, pool: Any = None, **kwargs: Any) -> SwiftStore:
        http = HTTPClient(Agent(reactor, pool=pool or self.pool))
        auth = TempAuth(auth_url or self.cluster.auth_url, self.cluster.user, self.cluster.key)
        client = SwiftClient(http=http, auth=auth, clock=reactor, store_name="obj")  # type: ignore[arg-type]
        options: dict[str, Any] = dict(
            container=self.container,
            create_container=True,
            large_object_size=4 * self.segment,
            chunk_size=self.segment,
            block_size=4096,
            high_watermark=64 * 1024,
            low_watermark=16 * 1024,
        )
        options.update(kwargs)
        store_class = _DeclaredSizeStore if self.declared_size else SwiftStore
        return store_class(client=client, auth_address=self.cluster.auth_url, **options)

    def complete(self, d: Deferred[Any]) -> object:
        return d

    def objects(self, container: str) -> list[str]:
        from swiftclient.exceptions import ClientException

        try:
            return [o["name"] for o in self.connection.get_container(container)[1]]
        except ClientException:
            return []


class _DeclaredSizeStore(SwiftStore):
    """
    Uploads every image as one PUT (chunked when no size is declared, as
    the conformance suite's uploads are).
    """

    def _is_large(self, size: int | None) -> bool:
        return False


class SwiftStoreLargeObjectConformanceTests(
    _SwiftHarness, UnpacedStoreConformanceMixin, TestCase
):
    """
    The IStore conformance suite, uploads of unknown size: every image a
    Static Large Object of 64 KiB segments (the larger images have two).
    """

    segment = 64 * 1024


class SwiftStoreOnePutConformanceTests(
    _SwiftHarness, UnpacedStoreConformanceMixin, TestCase
):
    """The IStore conformance suite, every upload one streamed PUT."""

    declared_size = True


class SwiftStoreTests(_SwiftHarness, TestCase):
    """How the Swift store lays data out in Swift, and what it leaves."""

    async def upload(self, store: SwiftStore, data: bytes, size: int | None, piece: int = 5000) -> str:
        writer = await store.open_writer(new_image_id(), size)
        # A network store's queue counts double against the upload budget.
        self.assertEqual(cast(StoreWriter, writer).budget_weight, NETWORK_BUDGET_WEIGHT)
        for start in range(0, len(data), piece):
            writer.write(data[start : start + piece])
        return (await writer.commit()).location

    async def test_small_image_is_one_object(self) -> None:
        """
        An image declared at most C{large_object_size} is one plain object,
        with no segments and no upload marker left.
        """
        store = self.make_store()
        data = make_data(3 * SEGMENT)
        location = await self.upload(store, data, len(data))
        name = location.rsplit("/", 1)[1]
        headers, body = self.connection.get_object(self.container, name)
        self.assertEqual(body, data)
        self.assertNotIn("x-static-large-object", headers)
        self.assertEqual(self.objects(self.container + "_segments"), [])

    async def test_large_image_is_a_static_large_object(self) -> None:
        """
        An image above C{large_object_size} (or of unknown size) is a
        manifest over segments of C{chunk_size}; deleting it removes the
        segments too.
        """
        store = self.make_store()
        data = make_data(5 * SEGMENT + 123)
        for size in (len(data), None):
            location = await self.upload(store, data, size)
            name = location.rsplit("/", 1)[1]
            headers, body = self.connection.get_object(self.container, name)
            self.assertEqual(body, data)
            self.assertEqual(headers.get("x-static-large-object"), "True")
            segments = self.objects(self.container + "_segments")
            self.assertEqual(len(segments), 6)
            self.assertTrue(all(s.startswith(name + "/") for s in segments))
            for segment in segments[:5]:
                self.assertEqual(
                    int(self.connection.head_object(self.container + "_segments", segment)["content-length"]),
                    SEGMENT,
                )
            await store.delete(location)
            self.assertEqual(self.objects(self.container), [])
            self.assertEqual(self.objects(self.container + "_segments"), [])

    async def test_declared_sizes_are_content_lengths(self) -> None:
        """
        With the image's size declared, the object's PUT (and each
        segment's) says its length, which Swift's proxy reads at less cost
        than a chunked body; undeclared, the segments go chunked. Fails if
        a declared upload is sent chunked, or with a wrong length (Swift
        would then refuse it or store it short).
        """
        lengths: list[tuple[str, object]] = []
        store = self.make_store()
        http = store.client.http
        request = http.request

        def recording(method: str, url: str, **kwargs: Any) -> Any:
            body = kwargs.get("data")
            if method == "PUT" and IBodyProducer.providedBy(body):  # not the marker's b""
                lengths.append((url.rsplit("/", 1)[1], body.length))
            return request(method, url, **kwargs)

        http.request = recording
        small = make_data(3 * SEGMENT)
        location = await self.upload(store, small, len(small))
        self.assertEqual(lengths, [(location.rsplit("/", 1)[1], len(small))])
        self.assertEqual(self.connection.get_object(self.container, lengths[0][0])[1], small)
        large = make_data(5 * SEGMENT + 123)
        for size, expected in (
            (len(large), [SEGMENT] * 5 + [123]),
            (None, [UNKNOWN_LENGTH] * 6),
        ):
            del lengths[:]
            location = await self.upload(store, large, size)
            self.assertEqual([length for _, length in lengths], expected)
            name = location.rsplit("/", 1)[1]
            self.assertEqual(self.connection.get_object(self.container, name)[1], large)

    async def test_location_has_no_credentials(self) -> None:
        """The location names the auth host and container, never the user or key."""
        store = self.make_store()
        location = await self.upload(store, b"data", 4)
        self.assertTrue(location.startswith("swift+http://127.0.0.1:"))
        self.assertIn(f"/auth/v1.0/{self.container}/", location)
        self.assertNotIn(self.cluster.key, location)
        self.assertNotIn("tester", location)

    async def test_abort_mid_upload_leaves_nothing(self) -> None:
        """
        Aborting a Static Large Object upload after segments have gone up
        removes them all, and the marker: swiftclient sees nothing.
        """
        store = self.make_store()
        writer = await store.open_writer(new_image_id())
        data = make_data(3 * SEGMENT + 100)
        for start in range(0, len(data), 4000):
            writer.write(data[start : start + 4000])
        await _settle()
        self.assertNotEqual(self.objects(self.container + "_segments"), [])
        await writer.abort()
        self.assertEqual(self.objects(self.container), [])
        self.assertEqual(self.objects(self.container + "_segments"), [])
        self.assertEqual(await store.discard_incomplete(), 0)

    async def test_abort_during_commit_leaves_nothing(self) -> None:
        """
        An abort while the commit is in flight (segments closing, the
        manifest going up) wins: the commit fails and neither the image's
        object nor any segment is left, for a large and a one-PUT upload.
        """
        store = self.make_store()
        data = make_data(2 * SEGMENT + 10)
        for size in (None, len(data)):
            writer = await store.open_writer(new_image_id(), size)
            writer.write(data)
            await _settle(5)
            committing = writer.commit()
            await writer.abort()
            with self.assertRaises(StoreError):
                await committing
            self.assertEqual(self.objects(self.container), [])
            self.assertEqual(self.objects(self.container + "_segments"), [])

    async def test_slow_swift_pauses_the_upload(self) -> None:
        """
        A Swift that stops taking bytes mid-PUT (the relay in front of it
        stops reading) pauses the writer's producer, that is the uploading
        client, once the writer's queue passes its high watermark; when
        Swift takes bytes again the producer resumes and the data arrives
        whole.
        """
        proxy = await FaultProxy.start(self, self.cluster)
        store = self.make_store(proxy.auth_url, large_object_size=64 * MiB)
        writer = await store.open_writer(new_image_id(), 24 * MiB)
        producer = FakeProducer()
        writer.registerProducer(producer, True)
        data = make_data(24 * MiB, seed=5)
        piece = 64 * 1024  # no more than the high watermark

        async def send_until_paused(limit: int) -> int:
            sent = 0
            while "pause" not in producer.events and sent < limit:
                writer.write(data[offset + sent : offset + sent + piece])
                sent += piece
                await _settle(1)
            return sent

        offset = 0
        offset += await send_until_paused(2 * MiB)
        self.assertEqual(producer.events, [])  # Swift keeps up: no pause
        proxy.hold()
        sent = offset + await send_until_paused(len(data) - offset)
        self.assertIn("pause", producer.events)
        self.assertLess(sent, len(data))  # paused long before all was sent
        proxy.release()
        for _ in range(200):
            if "resume" in producer.events:
                break
            await _settle(1)
        self.assertEqual(producer.events, ["pause", "resume"])
        writer.write(data[sent:])
        writer.unregisterProducer()
        stored = await writer.commit()
        _, body = self.connection.get_object(self.container, stored.location.rsplit("/", 1)[1])
        self.assertEqual(body, data)

    async def test_connection_cut_mid_upload_leaves_nothing(self) -> None:
        """
        When the connection to Swift drops in the middle of a segment, the
        commit fails with a StoreError naming the store, and the segments
        already sent are deleted: nothing is left.
        """
        proxy = await FaultProxy.start(self, self.cluster)
        store = self.make_store(proxy.auth_url, pool=HTTPConnectionPool(reactor, persistent=False))
        writer = await store.open_writer(new_image_id())
        data = make_data(2 * SEGMENT + 5000)
        writer.write(data)
        await _settle()
        proxy.cut()
        writer.write(data)
        with self.assertRaises(StoreError) as caught:
            await writer.commit()
        self.assertIn("'obj'", caught.exception.message)
        self.assertEqual(self.objects(self.container), [])
        self.assertEqual(self.objects(self.container + "_segments"), [])

    async def test_server_error_mid_upload_leaves_nothing(self) -> None:
        """
        When Swift answers 503 to the next segment's PUT mid-upload, the
        commit fails with a StoreError and every segment is deleted.
        """
        proxy = await FaultProxy.start(self, self.cluster)
        store = self.make_store(proxy.auth_url, pool=HTTPConnectionPool(reactor, persistent=False))
        writer = await store.open_writer(new_image_id())
        data = make_data(2 * SEGMENT + 5000)
        writer.write(data)
        await _settle()
        self.assertEqual(len(self.objects(self.container + "_segments")), 3)  # marker + 2
        proxy.fail_next = 1
        writer.write(data)
        with self.assertRaises(StoreError) as caught:
            await writer.commit()
        self.assertIn("503", caught.exception.message)
        self.assertEqual(proxy.failed, 1)
        self.assertEqual(self.objects(self.container), [])
        self.assertEqual(self.objects(self.container + "_segments"), [])

    def fill_past_quota(self, container: str) -> None:
        """
        Make C{container} refuse every further upload: a few bytes in it,
        then a quota of 1 byte (Swift's container_quotas middleware, in
        the one-node proxy's pipeline). The quota's POST also drops the
        proxy's cached container info, so the next PUT sees the bytes.
        """
        self.connection.put_container(container)
        self.connection.put_object(container, "filler", b"0123456789")
        self.connection.post_container(container, {"X-Container-Meta-Quota-Bytes": "1"})

    async def test_quota_refusal_is_storage_full(self) -> None:
        """
        Swift refusing an upload with 413 (a container over its quota) is
        StorageFull, Glance's 413 "Image storage media is full", for a
        one-PUT upload (the image's container full) and a Static Large
        Object (the segments container full, which refuses the upload's
        marker first); nothing of either upload is left.
        """
        # 4 MiB in one PUT: Swift's proxy answers 413 at once but reads
        # (and drops) the rest of the body, so the answer is heard at commit.
        store = self.make_store(large_object_size=8 * MiB)
        data = make_data(4 * MiB)
        for container, size in (
            (self.container, len(data)),
            (self.container + "_segments", None),
        ):
            self.fill_past_quota(container)
            with self.assertRaises(StorageFull) as caught:
                writer = await store.open_writer(new_image_id(), size)
                for start in range(0, len(data), 64 * 1024):
                    writer.write(data[start : start + 64 * 1024])
                await writer.commit()
            self.assertEqual(caught.exception.status, 413)
            self.assertTrue(
                caught.exception.message.startswith("Image storage media is full: "),
                caught.exception.message,
            )
            self.assertIn("'obj'", caught.exception.message)
            for checked in (self.container, self.container + "_segments"):
                self.assertEqual(
                    self.objects(checked), ["filler"] if checked == container else []
                )
            self.connection.delete_object(container, "filler")
            self.connection.post_container(container, {"X-Container-Meta-Quota-Bytes": ""})

    async def test_missing_container_without_create(self) -> None:
        """
        Without C{create_container} an upload into a container that does
        not exist fails with a StoreError, and C{ping} says why.
        """
        store = self.make_store(create_container=False)
        with self.assertRaises(StoreError) as caught:
            await store.ping()
        self.assertIn("does not exist", caught.exception.message)
        with self.assertRaises(StoreError):
            await self.upload(store, b"data", 4)


async def _settle(rounds: int = 20) -> None:
    """Let the reactor run a few rounds (requests go out, answers come in)."""
    from twisted.internet.task import deferLater

    for _ in range(rounds):
        await deferLater(reactor, 0.01, lambda: None)


class _Relay(Protocol):
    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.peer: Protocol | None = None
        self.buffer: list[bytes] = []

    def connectionMade(self) -> None:
        if self.proxy.fail_next:
            self.proxy.fail_next -= 1
            self.proxy.failed += 1
            self.transport.write(  # type: ignore[union-attr]
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n"
            )
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.proxy.active.add(self)
        if self.proxy.holding:
            self.transport.pauseProducing()  # type: ignore[union-attr]
        upstream = _Upstream(self)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy.upstream_port)
        connectProtocol(endpoint, upstream).addErrback(lambda _: self.transport.abortConnection())  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self.peer is None:
            self.buffer.append(data)
        else:
            self.peer.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.proxy.active.discard(self)
        if self.peer is not None:
            self.peer.transport.loseConnection()  # type: ignore[union-attr]


class _Upstream(Protocol):
    def __init__(self, relay: _Relay) -> None:
        self.relay = relay

    def connectionMade(self) -> None:
        self.relay.peer = self
        for data in self.relay.buffer:
            self.transport.write(data)  # type: ignore[union-attr]
        self.relay.buffer = []

    def dataReceived(self, data: bytes) -> None:
        self.relay.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.relay.transport.loseConnection()  # type: ignore[union-attr]


class FaultProxy:
    """
    A TCP relay in front of the Swift proxy server that a test can cut
    (drop every open connection) or make answer the next connections with
    a 503 instead of relaying them.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.active: set[_Relay] = set()
        self.fail_next = 0
        self.failed = 0
        self.holding = False
        self.port: IListeningPort | None = None

    @classmethod
    async def start(cls, case: TestCase, cluster: SwiftCluster) -> FaultProxy:
        from urllib.parse import urlsplit

        parts = urlsplit(cluster.auth_url)
        proxy = cls(parts.port or 80)
        factory = Factory.forProtocol(lambda: _Relay(proxy))
        proxy.port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        case.addCleanup(proxy.stop)
        proxy.auth_url = f"http://127.0.0.1:{proxy.port.getHost().port}{parts.path}"  # type: ignore[union-attr]
        return proxy

    auth_url: str

    def hold(self) -> None:
        """Stop reading from glance-tx's side, as a Swift too slow to keep up."""
        self.holding = True
        for relay in list(self.active):
            relay.transport.pauseProducing()  # type: ignore[union-attr]

    def release(self) -> None:
        self.holding = False
        for relay in list(self.active):
            relay.transport.resumeProducing()  # type: ignore[union-attr]

    def cut(self) -> None:
        for relay in list(self.active):
            relay.transport.abortConnection()  # type: ignore[union-attr]
            if relay.peer is not None:
                relay.peer.transport.abortConnection()  # type: ignore[union-attr]

    async def stop(self) -> None:
        self.cut()
        if self.port is not None:
            await maybeDeferred(self.port.stopListening)


class ConfigTests(SynchronousTestCase):
    """L{swift_store_from_options} reads glance_store's option names."""

    def test_tempauth(self) -> None:
        """Auth version 1 is tempauth with the user and key as given; sizes are MiB."""
        store = swift_store_from_options(
            "obj",
            {
                "swift_store_auth_address": "http://127.0.0.1:8080/auth/v1.0",
                "swift_store_auth_version": "1",
                "swift_store_user": "test:tester",
                "swift_store_key": "testing",
                "swift_store_container": "images",
                "swift_store_create_container_on_put": "True",
                "swift_store_large_object_size": "100",
                "swift_store_large_object_chunk_size": "10",
            },
            http=None,
            clock=reactor,  # type: ignore[arg-type]
        )
        self.assertEqual(store.client.auth, TempAuth("http://127.0.0.1:8080/auth/v1.0", "test:tester", "testing"))
        self.assertEqual(store.container, "images")
        self.assertTrue(store.create_container)
        self.assertEqual(store.large_object_size, 100 * 1024 * 1024)
        self.assertEqual(store.chunk_size, 10 * 1024 * 1024)
        self.assertEqual(store.scheme, "swift+http")
        self.assertNotIn("testing", repr(store))

    def test_location_drops_userinfo(self) -> None:
        """An auth address with C{user:password@} still gives locations without them."""
        store = swift_store_from_options(
            "obj",
            {
                "swift_store_auth_address": "http://u:s3cret@127.0.0.1:8080/auth/v1.0",
                "swift_store_auth_version": "1",
                "swift_store_user": "a:b",
                "swift_store_key": "k",
            },
            http=None,
            clock=reactor,  # type: ignore[arg-type]
        )
        location = store.location_for(new_image_id())
        self.assertTrue(location.startswith("swift+http://127.0.0.1:8080/auth/v1.0/glance/"))

    def test_keystone_v3(self) -> None:
        """
        Auth version 3 (the default) splits C{project:user} and maps
        C{swift_store_endpoint_type} and C{swift_store_region}.
        """
        store = swift_store_from_options(
            "obj",
            {
                "swift_store_auth_address": "https://keystone:5000/v3",
                "swift_store_user": "service:glance",
                "swift_store_key": "pw",
                "swift_store_endpoint_type": "internalURL",
                "swift_store_region": "RegionTwo",
            },
            http=None,
            clock=reactor,  # type: ignore[arg-type]
        )
        auth = store.client.auth
        assert isinstance(auth, KeystoneV3Auth)
        credentials = auth.credentials
        self.assertEqual(
            (credentials.project, credentials.user, credentials.password),
            ("service", "glance", "pw"),
        )
        self.assertEqual((auth.interface, auth.region), ("internal", "RegionTwo"))
        self.assertEqual(store.scheme, "swift+https")
        self.assertEqual(store.large_object_size, 5120 * 1024 * 1024)

    def test_bad_options(self) -> None:
        """A missing address, an unknown auth version or a bad size is a ConfigError."""
        base = {
            "swift_store_auth_address": "http://a/auth/v1.0",
            "swift_store_auth_version": "1",
            "swift_store_user": "a:b",
            "swift_store_key": "k",
        }
        for options in (
            {k: v for k, v in base.items() if k != "swift_store_auth_address"},
            {**base, "swift_store_auth_version": "2"},
            {**base, "swift_store_large_object_chunk_size": "0"},
            {**base, "swift_store_large_object_size": "big"},
        ):
            with self.assertRaises(ConfigError):
                swift_store_from_options("obj", options, http=None, clock=reactor)  # type: ignore[arg-type]


class FactoryTests(SynchronousTestCase):
    """C{enabled_backends = <id>:swift} builds a Swift store from its section."""

    def test_built_through_the_registry(self) -> None:
        """
        The C{swift} factory is registered: a store map built from an INI
        file has a L{SwiftStore} for the C{swift} entry, configured from its
        own section and sending through the shared HTTP client.
        """
        from twisted.internet.testing import MemoryReactorClock
        from twisted.python.filepath import FilePath

        from glance_tx.config import load_config
        from glance_tx.store.backends import build_store_map
        from glance_tx.threads import SynchronousRunner

        path = FilePath(self.mktemp())
        path.setContent(
            b"[DEFAULT]\nenabled_backends = fast:file, obj:swift\n"
            b"[obj]\nswift_store_auth_address = http://127.0.0.1:1/auth/v1.0\n"
            b"swift_store_auth_version = 1\nswift_store_user = a:b\n"
            b"swift_store_key = k\nswift_store_container = images\n"
        )
        config = load_config(path.path, data_dir=self.mktemp())
        client = HTTPClient(object())  # type: ignore[arg-type]
        stores = self.successResultOf(
            Deferred.fromCoroutine(
                build_store_map(
                    config, SynchronousRunner(), MemoryReactorClock(), http_client=client
                )
            )
        )
        store = stores.get("obj")
        assert isinstance(store, SwiftStore)
        self.assertEqual(store.container, "images")
        self.assertIs(store.client.http, client)
        self.assertEqual(store.client.store_name, "obj")


class ServiceTests(TestCase):
    """
    glance-tx itself with a Swift store, over real sockets: what a client
    uploads lands in Swift, as one object or a Static Large Object, reads
    back through the API, and an interrupted upload leaves nothing.
    """

    timeout = 120

    async def _start(self) -> None:
        from tests.live_server import (
            listening_port,
            live_config,
            settled_client,
            start_glance_tx,
        )

        self.cluster = swift_cluster(self)
        self.container = unique_container()
        self.connection = self.cluster.connection()
        self.addCleanup(_empty_containers, self.connection, self.container)
        config = live_config(
            self,
            "[DEFAULT]\nenabled_backends = obj:swift\n"
            f"[obj]\nswift_store_auth_address = {self.cluster.auth_url}\n"
            "swift_store_auth_version = 1\n"
            f"swift_store_user = {self.cluster.user}\n"
            f"swift_store_key = {self.cluster.key}\n"
            f"swift_store_container = {self.container}\n"
            "swift_store_create_container_on_put = true\n"
            "swift_store_large_object_size = 1\n"
            "swift_store_large_object_chunk_size = 1\n",
        )
        self.treq = settled_client(self, tries=250)
        self.service = await start_glance_tx(config, self.addCleanup, "swift-test")
        self.base = f"http://127.0.0.1:{listening_port(self.service)}"

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return Deferred.fromCoroutine(self._start())

    def objects(self, container: str) -> list[str]:
        from swiftclient.exceptions import ClientException

        try:
            return [o["name"] for o in self.connection.get_container(container)[1]]
        except ClientException:
            return []

    async def upload(self, data: bytes, declared: bool) -> dict[str, Any]:
        import treq as treq_module

        headers: dict[str | bytes, str | bytes] = {
            "Content-Type": "application/octet-stream",
            "x-image-meta-name": "img",
            **V1_RAW_BARE,
        }
        if declared:
            headers["x-image-meta-size"] = str(len(data))
        body: Any = data if declared else _Chunked(data)
        response = await self.treq.post(f"{self.base}/v1/images", headers=headers, data=body)
        self.assertEqual(response.code, 201, await treq_module.content(response))
        image: dict[str, Any] = (await response.json())["image"]
        return image

    async def test_upload_download_delete(self) -> None:
        """
        A 2.5 MiB upload of unknown length becomes a manifest over three
        1 MiB-or-less segments; a 300 KiB one with a declared size is one
        object. Both read back whole and by range through the API, and
        deleting the image removes the object and every segment.
        """
        import hashlib

        big, small = make_data(5 * MiB // 2, seed=3), make_data(300 * 1024, seed=4)
        big_image = await self.upload(big, declared=False)
        small_image = await self.upload(small, declared=True)
        self.assertEqual(big_image["checksum"], hashlib.md5(big).hexdigest())
        headers = self.connection.head_object(self.container, big_image["id"])
        self.assertEqual(headers.get("x-static-large-object"), "True")
        self.assertEqual(len(self.objects(self.container + "_segments")), 3)
        self.assertNotIn(
            "x-static-large-object", self.connection.head_object(self.container, small_image["id"])
        )

        splices = _Splices()
        self.patch(splice_module, "splice", splices)
        for image, data in ((big_image, big), (small_image, small)):
            relayed = splices.to_client
            response = await self.treq.get(f"{self.base}/v1/images/{image['id']}")
            self.assertEqual(response.code, 200)
            self.assertEqual(await response.content(), data)
            # The proxy answers on plain TCP with a Content-Length (a large
            # object's too): the kernel relays it.
            self.assertGreater(splices.to_client, relayed)
            response = await self.treq.get(
                f"{self.base}/v1/images/{image['id']}",
                headers=Headers({"Range": ["bytes=1000-1999"]}),
            )
            self.assertEqual(response.code, 206)
            self.assertEqual(await response.content(), data[1000:2000])

        for image in (big_image, small_image):
            response = await self.treq.delete(f"{self.base}/v1/images/{image['id']}")
            self.assertEqual(response.code, 200)
        self.assertEqual(self.objects(self.container), [])
        self.assertEqual(self.objects(self.container + "_segments"), [])

    async def test_quota_refusal_is_413(self) -> None:
        """
        Swift refusing the data with 413 (the container over its quota):
        v1 answers 413 with Glance's "Image storage media is full" and the
        image is killed; v2's PUT /file answers the same and the image is
        queued again; Swift holds nothing of either upload.
        """
        import treq as treq_module

        self.connection.put_container(self.container)
        self.connection.put_object(self.container, "filler", b"0123456789")
        self.connection.post_container(self.container, {"X-Container-Meta-Quota-Bytes": "1"})
        data = make_data(300 * 1024, seed=5)
        octet = {"Content-Type": "application/octet-stream"}
        response = await self.treq.post(
            f"{self.base}/v1/images",
            headers={
                **octet,
                "x-image-meta-name": "full",
                "x-image-meta-size": str(len(data)),
                **V1_RAW_BARE,
            },
            data=data,
        )
        body = await treq_module.content(response)
        self.assertEqual(response.code, 413, body)
        self.assertIn(b"Image storage media is full: ", body)
        listed = await self.treq.get(f"{self.base}/v2/images?name=full")
        (v1_image,) = (await listed.json())["images"]
        self.assertEqual(v1_image["status"], "killed")

        created = await self.treq.post(
            f"{self.base}/v2/images",
            json={"name": "full-v2", "disk_format": "raw", "container_format": "bare"},
        )
        image_id = (await created.json())["id"]
        response = await self.treq.put(
            f"{self.base}/v2/images/{image_id}/file", headers=octet, data=data
        )
        body = await treq_module.content(response)
        self.assertEqual(response.code, 413, body)
        self.assertIn(b"Image storage media is full: ", body)
        shown = await (await self.treq.get(f"{self.base}/v2/images/{image_id}")).json()
        self.assertEqual(shown["status"], "queued")
        self.assertEqual(self.objects(self.container), ["filler"])
        self.assertEqual(self.objects(self.container + "_segments"), [])

    async def test_interrupted_upload_leaves_nothing(self) -> None:
        """
        A client that goes away after 3 MiB of a large upload: the image is
        killed and Swift holds no object, no segment and no marker.
        """
        response = await self.treq.post(
            f"{self.base}/v1/images", headers=Headers({"x-image-meta-name": ["cut"], **{k: [v] for k, v in V1_RAW_BARE.items()}})
        )
        image_id = (await response.json())["image"]["id"]
        from tests.live_server import listening_port

        port = listening_port(self.service)
        protocol = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Protocol())
        protocol.transport.write(  # type: ignore[union-attr]
            f"PUT /v1/images/{image_id} HTTP/1.1\r\nHost: x\r\n"
            "Content-Type: application/octet-stream\r\n"
            f"Content-Length: {100 * MiB}\r\n\r\n".encode() + b"x" * (3 * MiB + 1000)
        )
        for _ in range(300):
            if len(self.objects(self.container + "_segments")) >= 3:
                break
            await _settle(2)
        self.assertGreaterEqual(len(self.objects(self.container + "_segments")), 3)
        protocol.transport.abortConnection()  # type: ignore[union-attr]
        status = ""
        for _ in range(300):
            response = await self.treq.head(f"{self.base}/v1/images/{image_id}")
            status = response.headers.getRawHeaders("x-image-meta-status")[0]
            if status == "killed" and not self.objects(self.container + "_segments"):
                break
            await _settle(2)
        self.assertEqual(status, "killed")
        self.assertEqual(self.objects(self.container), [])
        self.assertEqual(self.objects(self.container + "_segments"), [])


@implementer(IBodyProducer)
class _Chunked:
    """A body sent with chunked transfer encoding (no length declared)."""

    length = UNKNOWN_LENGTH

    def __init__(self, data: bytes) -> None:
        self.data = data

    def startProducing(self, consumer: Any) -> Deferred[None]:
        for start in range(0, len(self.data), 65536):
            consumer.write(self.data[start : start + 65536])
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _empty_containers(connection: Any, container: str) -> None:
    from swiftclient.exceptions import ClientException

    for name in (container, container + "_segments"):
        try:
            for entry in connection.get_container(name)[1]:
                connection.delete_object(name, entry["name"])
            connection.delete_container(name)
        except ClientException:
            pass
