"""
Tests for L{glance_tx.store.s3}: the store conformance mixin against a real
moto S3 server with signature checking on (see L{tests.s3_server}), for
multipart uploads of small parts; the single streamed PUT; faults (an abort
or a dropped connection mid-upload) checked with boto3 to leave no object
and no multipart upload; credentials kept out of locations and errors;
configuration.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

from attrs import define, field
from treq import collect as treq_collect
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.protocols.portforward import ProxyFactory, ProxyServer
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from zope.interface import implementer

from glance_tx.api import splice as splice_module
from glance_tx.backpressure import Watermarks
from glance_tx.config import ConfigError
from glance_tx.errors import BadRequest, StoreError
from glance_tx.images import new_image_id
from glance_tx.store.fed_body import FedBody
from glance_tx.store.interface import IStoreWriter
from glance_tx.store.s3 import S3Store, _feed_chunks, s3_store_from_options
from glance_tx.store.s3_client import S3Client, S3Credentials
from glance_tx.store.writer import NETWORK_BUDGET_WEIGHT, StoreWriter
from glance_tx.threads import SynchronousRunner
from tests.api_fixtures import V1_RAW_BARE
from tests.live_server import (
    listening_port,
    live_config,
    settled_client,
    start_glance_tx,
)
from tests.s3_server import REGION, TEST_PART_SIZE, S3Server, s3_server
from tests.store_conformance import (
    FakeConsumer,
    FakeProducer,
    UnpacedStoreConformanceMixin,
    make_data,
)
from tests.test_end_to_end import GeneratedBody
from tests.test_splice import _Splices

MiB = 1024 * 1024


def live_store(case: TestCase, server: S3Server, bucket: str, **overrides: Any) -> S3Store:
    """An S3 store on the real reactor with its own pool, closed at cleanup."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    case.addCleanup(pool.closeCachedConnections)
    client_settings: dict[str, Any] = {
        "http": HTTPClient(Agent(reactor, pool=pool)),
        "reactor": reactor,
        "endpoint": server.endpoint,
        "region": REGION,
        "credentials": S3Credentials(server.access_key, server.secret_key),
        "addressing": "path",
        "store_name": "bulk",
    }
    for name in list(overrides):
        if name in client_settings:
            client_settings[name] = overrides.pop(name)
    settings: dict[str, Any] = {
        "client": S3Client(**client_settings),
        "bucket": bucket,
        "part_size": TEST_PART_SIZE,
        "large_object_size": 4 * TEST_PART_SIZE,
        "block_size": 4096,
        "watermarks": Watermarks(high=64 * 1024, low=16 * 1024),
        "runner": SynchronousRunner(),
    }
    settings.update(overrides)
    return S3Store(**settings)


class _Live(TestCase):
    def setUp(self) -> None:
        self.server = s3_server(self)
        self.bucket = self.server.new_bucket()
        self.boto = self.server.boto3()

    def make_store(self) -> S3Store:
        return live_store(self, self.server, self.bucket)

    def complete(self, d: Deferred[Any]) -> object:
        return d

    def keys(self) -> list[str]:
        listing = self.boto.list_objects_v2(Bucket=self.bucket)
        return [item["Key"] for item in listing.get("Contents", [])]

    def uploads(self) -> list[str]:
        listing = self.boto.list_multipart_uploads(Bucket=self.bucket)
        return [item["Key"] for item in listing.get("Uploads", [])]

    def assertNothingLeft(self) -> None:
        self.assertEqual(self.keys(), [])
        self.assertEqual(self.uploads(), [])


class S3ConformanceTests(_Live, UnpacedStoreConformanceMixin):
    """
    The S3 store against moto, writers of unknown size: multipart uploads
    of 8 KiB parts, so most tests' data spans several parts.
    """


class SinglePutTests(_Live):
    """Uploads that announce a size below the large-object size: one PUT."""

    def test_streamed_put(self) -> None:
        """
        A writer told the size streams one PUT: no multipart upload is ever
        started, and the object holds the bytes.
        """

        async def go() -> None:
            store = self.make_store()
            data = make_data(3 * TEST_PART_SIZE + 5, seed=20)
            writer = await store.open_writer(new_image_id(), size=len(data))
            # A network store's queue counts double against the upload budget.
            self.assertEqual(cast(StoreWriter, writer).budget_weight, NETWORK_BUDGET_WEIGHT)
            for start in range(0, len(data), 1000):
                writer.write(data[start : start + 1000])
            self.assertEqual(self.uploads(), [])
            stored = await writer.commit()
            self.assertEqual(stored.size, len(data))
            key = stored.location.rpartition("/")[2]
            got = self.boto.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            self.assertEqual(got, data)

        return Deferred.fromCoroutine(go())

    def test_large_announced_size_is_multipart(self) -> None:
        """A size at or above the large-object size starts a multipart upload."""

        async def go() -> None:
            store = self.make_store()
            writer = await store.open_writer(new_image_id(), size=4 * TEST_PART_SIZE)
            self.assertEqual(len(self.uploads()), 1)
            await writer.abort()
            self.assertNothingLeft()

        return Deferred.fromCoroutine(go())

    def test_short_body_stores_nothing(self) -> None:
        """
        Fewer bytes than announced: the commit fails with L{StoreError} and
        S3 keeps nothing.
        """

        async def go() -> None:
            store = self.make_store()
            writer = await store.open_writer(new_image_id(), size=1000)
            writer.write(b"x" * 400)
            with self.assertRaises(StoreError):
                await writer.commit()
            self.assertNothingLeft()

        return Deferred.fromCoroutine(go())

    def test_abort_mid_put(self) -> None:
        """An abort half way through the PUT leaves no object."""

        async def go() -> None:
            store = self.make_store()
            writer = await store.open_writer(new_image_id(), size=20_000)
            writer.write(b"y" * 10_000)
            await deferLater(reactor, 0.05)
            await writer.abort()
            self.assertNothingLeft()

        return Deferred.fromCoroutine(go())


class _CuttingProxy(ProxyServer):
    """Forwards to moto, but drops its connection once it has carried
    C{factory.cut_after} request bytes (once per factory)."""

    seen = 0

    def dataReceived(self, data: bytes) -> None:
        factory: Any = self.factory
        if factory.cut_after is not None:
            self.seen += len(data)
            if self.seen > factory.cut_after:
                factory.cut_after = None
                factory.cuts += 1
                self.transport.abortConnection()
                return
        super().dataReceived(data)


class _CountingCutProxy(ProxyServer):
    """
    Forwards to moto, counting the request bytes of all its connections
    together: drops the connection that carries the byte past
    C{factory.cut_after} (once per factory), and records in
    C{factory.most_open} how many connections were open at once.
    """

    def connectionMade(self) -> None:
        factory: Any = self.factory
        factory.open += 1
        factory.most_open = max(factory.most_open, factory.open)
        super().connectionMade()

    def connectionLost(self, reason: Any) -> None:
        factory: Any = self.factory
        factory.open -= 1
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        factory: Any = self.factory
        factory.carried += len(data)
        if factory.cut_after is not None and factory.carried > factory.cut_after:
            factory.cut_after = None
            factory.cuts += 1
            self.transport.abortConnection()
            return
        super().dataReceived(data)


class FaultTests(_Live):
    """Failures mid-upload leave no object and no parts, as boto3 sees it."""

    def test_abort_mid_multipart(self) -> None:
        """
        An abort after several parts went up aborts the multipart upload:
        no object, no upload in progress.
        """

        async def go() -> None:
            store = self.make_store()
            writer = await store.open_writer(new_image_id())
            data = make_data(5 * TEST_PART_SIZE, seed=21)
            for start in range(0, len(data), 3000):
                writer.write(data[start : start + 3000])
            await deferLater(reactor, 0.2)
            self.assertEqual(len(self.uploads()), 1)
            await writer.abort()
            self.assertNothingLeft()

        return Deferred.fromCoroutine(go())

    def test_connection_dropped_mid_upload(self) -> None:
        """
        The connection carrying a part drops half way: the commit fails
        with a L{StoreError} naming the store, and the multipart upload is
        aborted (over a new connection) so nothing is left.
        """

        async def go() -> None:
            port = self.server.endpoint.rpartition(":")[2]
            factory = ProxyFactory("127.0.0.1", int(port))
            factory.protocol = _CuttingProxy
            factory.cut_after, factory.cuts = None, 0
            listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
            self.addCleanup(listening.stopListening)
            endpoint = f"http://127.0.0.1:{listening.getHost().port}"
            store = live_store(self, self.server, self.bucket, endpoint=endpoint)
            writer = await store.open_writer(new_image_id())
            factory.cut_after = TEST_PART_SIZE // 2
            data = make_data(4 * TEST_PART_SIZE, seed=22)
            for start in range(0, len(data), 2000):
                writer.write(data[start : start + 2000])
            with self.assertRaises(StoreError) as caught:
                await writer.commit()
            self.assertEqual(factory.cuts, 1)
            self.assertIn("'bulk'", str(caught.exception))
            self.assertNothingLeft()

        return Deferred.fromCoroutine(go())

    def test_part_fails_with_several_in_flight(self) -> None:
        """
        With four parts in flight, the connection of one part half way
        through the upload drops: the commit fails naming the store, and
        once the other parts have landed the multipart upload is aborted,
        so boto3 finds no object and no upload (and so no parts).
        """

        async def go() -> None:
            port = self.server.endpoint.rpartition(":")[2]
            factory = ProxyFactory("127.0.0.1", int(port))
            factory.protocol = _CountingCutProxy
            factory.cut_after, factory.cuts, factory.carried = None, 0, 0
            factory.open = factory.most_open = 0
            listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
            self.addCleanup(listening.stopListening)
            endpoint = f"http://127.0.0.1:{listening.getHost().port}"
            store = live_store(
                self, self.server, self.bucket, endpoint=endpoint, parts_in_flight=4
            )
            writer = await store.open_writer(new_image_id())
            self.assertEqual(len(self.uploads()), 1)
            factory.cut_after = factory.carried + 6 * TEST_PART_SIZE
            data = make_data(12 * TEST_PART_SIZE, seed=23)
            for start in range(0, len(data), 2000):
                writer.write(data[start : start + 2000])
            with self.assertRaises(StoreError) as caught:
                await writer.commit()
            self.assertEqual(factory.cuts, 1)
            self.assertGreaterEqual(factory.most_open, 3)
            self.assertIn("'bulk'", str(caught.exception))
            self.assertNothingLeft()

        return Deferred.fromCoroutine(go())

    def test_wrong_credentials(self) -> None:
        """
        A store with a wrong secret key fails to open a writer (and to
        ping) with a L{StoreError} naming the store and carrying neither
        key; the locations a working store gives carry neither either.
        """

        async def go() -> None:
            secret = "not-the-secret-key-0123456789"
            store = live_store(
                self,
                self.server,
                self.bucket,
                credentials=S3Credentials(self.server.access_key, secret),
            )
            for attempt in [store.open_writer(new_image_id()), store.ping()]:
                with self.assertRaises(StoreError) as caught:
                    await attempt
                message = str(caught.exception)
                self.assertIn("'bulk'", message)
                for key in (self.server.access_key, secret, self.server.secret_key):
                    self.assertNotIn(key, message)
            good = self.make_store()
            location = await good.open_writer(new_image_id())
            stored = await location.commit()
            for key in (self.server.access_key, self.server.secret_key):
                self.assertNotIn(key, stored.location)
            self.assertTrue(stored.location.startswith(f"s3://{self.bucket}/"))

        return Deferred.fromCoroutine(go())

    def test_create_bucket_on_put(self) -> None:
        """
        With C{create_bucket_on_put} a missing bucket is made at the first
        upload (and C{ping} passes before); without it C{ping} fails.
        """

        async def go() -> None:
            bucket = self.bucket + "-later"
            lazy = live_store(self, self.server, bucket, create_bucket_on_put=True)
            strict = live_store(self, self.server, bucket)
            await lazy.ping()
            with self.assertRaises(StoreError):
                await strict.ping()
            self.assertEqual(await lazy.locations(), frozenset())
            writer = await lazy.open_writer(new_image_id())
            writer.write(b"data")
            stored = await writer.commit()
            self.assertEqual(await strict.locations(), frozenset({stored.location}))
            await strict.ping()

        return Deferred.fromCoroutine(go())


class ReadFlowTests(_Live):
    """A read relays the GET's response and pauses it for a slow consumer."""

    def test_paused_consumer_pauses_the_response(self) -> None:
        """
        While the consumer has paused the read, what the store holds stays
        at about two blocks (the connection is paused); once resumed, all
        the data arrives.
        """

        async def go() -> None:
            store = self.make_store()
            data = make_data(2 * MiB, seed=23)
            writer = await store.open_writer(new_image_id())
            writer.write(data)
            location = (await writer.commit()).location
            consumer = FakeConsumer(pause_on_write=True)
            d = store.read(location, consumer)
            await deferLater(reactor, 0.3)
            self.assertLess(len(consumer.value()), 3 * store.block_size)
            while consumer.producer is not None:
                consumer.producer.resumeProducing()
                await deferLater(reactor, 0)
            await d
            self.assertEqual(consumer.value(), data)

        return Deferred.fromCoroutine(go())


@implementer(IResponse)
@define
class _Answer:
    """An S3 answer with a small body, delivered at once."""

    code: int = 200
    body: bytes = b""
    headers: Headers = field(factory=Headers)

    @property
    def length(self) -> int:
        return len(self.body)

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(None)
        protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


def _text(element: ElementTree.Element, name: str) -> str:
    [child] = [child for child in element if child.tag == name]
    return child.text or ""


@define
class _HeldParts:
    """
    An HTTP client speaking just enough S3 for one multipart upload. It
    takes each part's body at once (with C{slow_bodies}, only its first
    write until L{take_body}) and holds its answer until the test gives it
    (L{answer}, L{fail}): the parts in flight are those in C{held}, and
    C{most} is how many were in flight at once.
    """

    slow_bodies: bool = False
    #: The client's clock: a fed body wakes its feeder on it.
    clock: Clock = field(factory=Clock)
    held: dict[int, Deferred[Any]] = field(factory=dict)
    producers: dict[int, Any] = field(factory=dict)
    bodies: dict[int, StringTransport] = field(factory=dict)
    most: int = 0
    part_checksums: dict[int, str] = field(factory=dict)
    checksum_algorithm: str = ""
    completed: list[bytes] = field(factory=list)
    aborted: int = 0

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        query = parse_qs(urlsplit(url).query, keep_blank_values=True)
        body = StringTransport()
        producer = kwargs["data"]
        if producer is not None:
            if self.slow_bodies and method == "PUT":
                producer.pauseProducing()  # as a full connection would
            producer.startProducing(body)
        headers = {name.lower(): values[0] for name, values in kwargs["headers"].items()}
        if method == "POST" and "uploads" in query:
            self.checksum_algorithm = headers["x-amz-checksum-algorithm"]
            return succeed(_Answer(body=b"<Result><UploadId>u-1</UploadId></Result>"))
        if method == "PUT" and "partNumber" in query:
            number = int(query["partNumber"][0])
            self.bodies[number] = body
            self.producers[number] = producer
            self.part_checksums[number] = headers["x-amz-checksum-crc32"]
            self.held[number] = Deferred()
            self.most = max(self.most, len(self.held))
            return self.held[number]
        if method == "POST" and "uploadId" in query:
            self.completed.append(body.value())
            return succeed(_Answer(body=b"<CompleteMultipartUploadResult/>"))
        if method == "DELETE" and "uploadId" in query:
            self.aborted += 1
            return succeed(_Answer(code=204))
        raise AssertionError(f"unexpected {method} {url}")

    def answer(self, number: int) -> None:
        """Part C{number} is stored: answer with its ETag."""
        etag = Headers({b"etag": [f'"etag-{number}"'.encode()]})
        self.held.pop(number).callback(_Answer(headers=etag))

    def take_body(self, number: int) -> None:
        """The connection of part C{number} takes the rest of its body."""
        self.producers[number].resumeProducing()
        self.clock.advance(0)

    def fail(self, number: int) -> None:
        """Part C{number}'s connection is lost before its answer."""
        self.held.pop(number).errback(ConnectionLost())


class PartsInFlightTests(SynchronousTestCase):
    """
    The multipart writer in memory, against L{_HeldParts}: how many parts
    are in flight, the client paused while no more may go, ETags in part
    order whatever order the parts land in, and an abort only once every
    part in flight has landed.
    """

    part = 8 * 1024

    def writer_and_producer(
        self, fake: _HeldParts, parts_in_flight: int
    ) -> tuple[IStoreWriter, FakeProducer]:
        client = S3Client(
            http=fake,
            reactor=fake.clock,
            endpoint="http://s3.example.com",
            region=REGION,
            credentials=S3Credentials("AKIAEXAMPLE", "secret-key"),
            addressing="path",
            store_name="bulk",
        )
        store = S3Store(
            client=client,
            bucket="images",
            part_size=self.part,
            parts_in_flight=parts_in_flight,
            watermarks=Watermarks(high=self.part, low=self.part // 2),
            runner=SynchronousRunner(),
        )
        writer = self.successResultOf(store.open_writer(new_image_id()))
        producer = FakeProducer()
        writer.registerProducer(producer, True)
        return writer, producer

    def test_bounded_in_order(self) -> None:
        """
        With three parts in flight, a fourth full part waits and the
        client is paused until one lands; parts landing out of order still
        complete the upload with the ETags in part-number order and the
        bytes in order.
        """
        fake = _HeldParts()
        writer, producer = self.writer_and_producer(fake, parts_in_flight=3)
        data = make_data(6 * self.part + 100, seed=30)
        for start in range(0, len(data), 1000):
            writer.write(data[start : start + 1000])
        self.assertEqual(sorted(fake.held), [1, 2, 3])
        self.assertEqual(producer.events, ["pause"])
        for number in [2, 4, 3]:
            fake.answer(number)
        self.assertEqual(sorted(fake.held), [1, 5, 6])
        self.assertEqual(producer.events, ["pause", "resume"])  # all queued bytes taken
        committed = writer.commit()
        self.assertNoResult(committed)  # the last 100 bytes wait for a slot
        for number in [1, 7, 6, 5]:
            fake.answer(number)
        stored = self.successResultOf(committed)
        self.assertEqual(stored.size, len(data))
        self.assertEqual(fake.most, 3)
        self.assertEqual(b"".join(fake.bodies[n].value() for n in range(1, 8)), data)
        [complete] = fake.completed
        listed = [
            (_text(part, "PartNumber"), _text(part, "ETag"), _text(part, "ChecksumCRC32"))
            for part in ElementTree.fromstring(complete)
        ]
        self.assertEqual(
            listed,
            [
                (str(n), f'"etag-{n}"', fake.part_checksums[n])
                for n in range(1, 8)
            ],
        )
        for n in range(1, 8):
            crc = zlib.crc32(fake.bodies[n].value()).to_bytes(4, "big")
            self.assertEqual(fake.part_checksums[n], base64.b64encode(crc).decode())
        self.assertEqual(fake.checksum_algorithm, "CRC32")

    def test_two_parts_fed_at_once(self) -> None:
        """
        However many parts may be in flight, only two are fed at once: a
        third full part waits (and the client is paused) until one of them
        is all in its connection, though none has been answered.
        """
        fake = _HeldParts(slow_bodies=True)
        writer, producer = self.writer_and_producer(fake, parts_in_flight=10)
        data = make_data(4 * self.part, seed=32)
        for start in range(0, len(data), 1000):
            writer.write(data[start : start + 1000])
        self.assertEqual(sorted(fake.held), [1, 2])
        self.assertEqual(producer.events, ["pause"])
        fake.take_body(2)
        self.assertEqual(sorted(fake.held), [1, 2, 3])
        fake.take_body(1)
        self.assertEqual(sorted(fake.held), [1, 2, 3, 4])
        committed = writer.commit()
        for number in [3, 4]:
            fake.take_body(number)
        for number in [4, 1, 3, 2]:
            fake.answer(number)
        self.assertEqual(self.successResultOf(committed).size, len(data))
        self.assertEqual(b"".join(fake.bodies[n].value() for n in range(1, 5)), data)
        self.assertEqual(len(fake.completed), 1)

    def test_failed_part_aborts_after_the_rest_land(self) -> None:
        """
        One of three parts in flight fails: no further part is sent, the
        client is let go (its bytes are dropped), and the multipart upload
        is aborted only once the two other parts have landed, so none is
        stored after the abort; the commit fails naming the store.
        """
        fake = _HeldParts()
        writer, producer = self.writer_and_producer(fake, parts_in_flight=3)
        data = make_data(5 * self.part, seed=31)
        for start in range(0, len(data), 1000):
            writer.write(data[start : start + 1000])
        self.assertEqual(sorted(fake.held), [1, 2, 3])
        fake.fail(2)
        self.assertEqual(producer.events, ["pause", "resume"])
        committed = writer.commit()
        fake.answer(3)
        self.assertEqual(fake.aborted, 0)  # part 1 may still be stored
        self.assertNoResult(committed)
        fake.answer(1)
        self.assertEqual(fake.aborted, 1)
        failure = self.failureResultOf(committed, StoreError)
        self.assertIn("'bulk'", str(failure.value))
        self.assertEqual(sorted(fake.bodies), [1, 2, 3])
        self.assertEqual(fake.completed, [])


@define
class _PausingConnection:
    """Records a body's writes and pauses it at each, as a full TCP transport."""

    producer: Any = None
    written: list[bytes] = field(factory=list)

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self.producer.pauseProducing()


class FeedTests(SynchronousTestCase):
    def test_chunks_go_whole(self) -> None:
        """
        A part's chunks reach its connection as the very objects gathered,
        one write each, and the part lets go of each once it is written:
        fails if they are sliced into copies again.
        """
        clock = Clock()
        chunks = [make_data(MiB, seed=40), make_data(MiB + 1, seed=41), b"end"]
        given = list(chunks)
        body = FedBody(clock, sum(map(len, chunks)), peer="S3")
        connection = _PausingConnection(producer=body)
        done = body.startProducing(connection)
        fed = Deferred.fromCoroutine(_feed_chunks(body, chunks))
        clock.advance(0)
        for n in range(len(given)):
            self.assertEqual(len(connection.written), n + 1)
            self.assertIs(connection.written[n], given[n])
            self.assertEqual(len(chunks), len(given) - n - 1)
            body.resumeProducing()
            clock.advance(0)
        self.successResultOf(fed)
        self.successResultOf(done)


class ConfigTests(SynchronousTestCase):
    """The store from its config section, in glance_store's names and units."""

    options = {
        "s3_store_host": "http://127.0.0.1:9000",
        "s3_store_access_key": "AKIAEXAMPLE",
        "s3_store_secret_key": "secret-key",
        "s3_store_bucket": "images",
    }

    def from_options(self, options: dict[str, str]) -> S3Store:
        return s3_store_from_options(
            "bulk", options, http=None, reactor=None, runner=SynchronousRunner()
        )

    def test_defaults_and_units(self) -> None:
        """Sizes are in MiB (defaults 100 and 10); region and addressing default."""
        store = self.from_options(self.options)
        self.assertEqual(store.large_object_size, 100 * MiB)
        self.assertEqual(store.part_size, 10 * MiB)
        self.assertEqual(store.client.region, "us-east-1")
        self.assertEqual(store.client.addressing, "auto")
        self.assertFalse(store.create_bucket_on_put)
        self.assertEqual(store.parts_in_flight, 10)
        store = self.from_options(
            {
                **self.options,
                "s3_store_host": "s3.example.com",
                "s3_store_large_object_size": "50",
                "s3_store_large_object_chunk_size": "5",
                "s3_store_region_name": "eu-west-3",
                "s3_store_bucket_url_format": "virtual",
                "s3_store_create_bucket_on_put": "true",
                "s3_store_thread_pools": "3",
            }
        )
        self.assertEqual(store.client.endpoint, "https://s3.example.com")
        self.assertEqual((store.large_object_size, store.part_size), (50 * MiB, 5 * MiB))
        self.assertEqual(store.client.region, "eu-west-3")
        self.assertEqual(store.client.addressing, "virtual")
        self.assertTrue(store.create_bucket_on_put)
        self.assertEqual(store.parts_in_flight, 3)

    def test_refused(self) -> None:
        """
        A missing host, key or bucket, parts below S3's 5 MiB, a bad URL
        format or a non-number is a L{ConfigError} naming the option, and
        never shows the secret.
        """
        for name in self.options:
            options = {k: v for k, v in self.options.items() if k != name}
            with self.assertRaises(ConfigError) as caught:
                self.from_options(options)
            self.assertIn(name, str(caught.exception))
        for name, value in [
            ("s3_store_large_object_chunk_size", "4"),
            ("s3_store_large_object_size", "ten"),
            ("s3_store_bucket_url_format", "sideways"),
            ("s3_store_create_bucket_on_put", "maybe"),
            ("s3_store_thread_pools", "0"),
            ("s3_store_thread_pools", "some"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                self.from_options({**self.options, name: value})
            self.assertIn(name, str(caught.exception))
            self.assertNotIn("secret-key", str(caught.exception))

    def test_foreign_locations(self) -> None:
        """Only C{s3://<this bucket>/<image id>} is this store's."""
        store = self.from_options(self.options)
        image = new_image_id()
        for location in [
            f"s3://other/{image}",
            f"s3://images/{image}/x",
            "s3://images/not-an-id",
            f"s3://key:secret@images/{image}",
            f"file:///images/{image}",
        ]:
            self.failureResultOf(store.size(location), BadRequest)
        self.assertEqual(store._key(f"s3://images/{image}"), image)


class ThroughTheAPITests(_Live):
    """
    glance-tx with an S3 store (its factory, from the config file) serving
    v1 uploads and downloads over real sockets, moto behind it.
    """

    timeout = 120

    def setUp(self) -> Deferred[None]:
        super().setUp()
        self.treq = settled_client(self, tries=250)
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        config = live_config(
            self,
            "[DEFAULT]\nenabled_backends = bulk:s3\n\n[bulk]\n"
            f"s3_store_host = {self.server.endpoint}\n"
            f"s3_store_access_key = {self.server.access_key}\n"
            f"s3_store_secret_key = {self.server.secret_key}\n"
            f"s3_store_bucket = {self.bucket}\n"
            "s3_store_bucket_url_format = path\n"
            "s3_store_large_object_size = 1\n"
            "s3_store_large_object_chunk_size = 5\n",
        )
        service = await start_glance_tx(config, self.addCleanup, "s3-api")
        self.base = f"http://127.0.0.1:{listening_port(service)}"

    async def status(self, image_id: str) -> str:
        response = await self.treq.head(f"{self.base}/v1/images/{image_id}")
        return response.headers.getRawHeaders("x-image-meta-status")[0]

    def test_put_upload_ranged_download_delete(self) -> None:
        """
        An upload of announced size below the large-object size is one
        object (no multipart upload); it downloads whole (relayed with
        splice) and by range, and DELETE removes the object.
        """

        async def go() -> None:
            data = make_data(300_000, seed=30)
            response = await self.treq.post(
                f"{self.base}/v1/images",
                headers={
                    "Content-Type": "application/octet-stream",
                    "x-image-meta-name": "small",
                    "x-image-meta-size": str(len(data)),
                    **V1_RAW_BARE,
                },
                data=data,
            )
            self.assertEqual(response.code, 201)
            image = (await response.json())["image"]
            self.assertEqual(self.keys(), [image["id"]])
            etag = self.boto.head_object(Bucket=self.bucket, Key=image["id"])["ETag"]
            self.assertNotIn("-", etag)  # a multipart object's ETag ends in -<parts>
            url = f"{self.base}/v1/images/{image['id']}"
            splices = _Splices()
            self.patch(splice_module, "splice", splices)
            self.assertEqual(await (await self.treq.get(url)).content(), data)
            # moto answers on plain TCP with a Content-Length: the kernel relays it.
            self.assertGreater(splices.to_client, 0)
            ranged = await self.treq.get(url, headers={"Range": "bytes=1000-1999"})
            self.assertEqual(ranged.code, 206)
            self.assertEqual(await ranged.content(), data[1000:2000])
            self.assertEqual((await self.treq.delete(url)).code, 200)
            self.assertNothingLeft()

        return Deferred.fromCoroutine(go())

    def test_chunked_upload_is_multipart(self) -> None:
        """
        A chunked upload (size unknown) of 7 MiB goes up in 5 MiB parts and
        downloads with the same md5.
        """

        async def go() -> None:
            response = await self.treq.post(
                f"{self.base}/v1/images",
                headers={
                    "Content-Type": "application/octet-stream",
                    "x-image-meta-name": "big",
                    **V1_RAW_BARE,
                },
                data=GeneratedBody(7),
            )
            self.assertEqual(response.code, 201)
            image = (await response.json())["image"]
            self.assertEqual(image["size"], 7 * MiB)
            head = self.boto.head_object(Bucket=self.bucket, Key=image["id"])
            self.assertEqual(head["ContentLength"], 7 * MiB)
            self.assertTrue(head["ETag"].endswith('-2"'))  # two parts
            download = await self.treq.get(
                f"{self.base}/v1/images/{image['id']}", unbuffered=True
            )
            got = hashlib.md5()
            await treq_collect(download, got.update)
            self.assertEqual(got.hexdigest(), image["checksum"])
            self.assertEqual(self.uploads(), [])

        return Deferred.fromCoroutine(go())

    def test_interrupted_upload(self) -> None:
        """
        A client that drops after more than one part's worth leaves the
        image killed, and no object and no multipart upload in the bucket.
        """

        async def go() -> None:
            response = await self.treq.post(
                f"{self.base}/v1/images", headers={"x-image-meta-name": "cut", **V1_RAW_BARE}
            )
            image_id = (await response.json())["image"]["id"]
            protocol = await connectProtocol(
                TCP4ClientEndpoint(reactor, "127.0.0.1", int(self.base.rpartition(":")[2])),
                Protocol(),
            )
            protocol.transport.write(
                f"PUT /v1/images/{image_id} HTTP/1.1\r\nHost: x\r\n"
                "Content-Type: application/octet-stream\r\n"
                f"Content-Length: {100 * MiB}\r\n\r\n".encode()
                + b"x" * (6 * MiB)
            )
            for _ in range(300):
                if self.uploads():
                    break
                await deferLater(reactor, 0.02)
            await deferLater(reactor, 0.3)
            protocol.transport.abortConnection()
            for _ in range(300):
                if await self.status(image_id) == "killed" and not self.uploads():
                    break
                await deferLater(reactor, 0.02)
            self.assertEqual(await self.status(image_id), "killed")
            self.assertNothingLeft()

        return Deferred.fromCoroutine(go())
