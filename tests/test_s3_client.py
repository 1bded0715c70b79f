"""
Tests for L{glance_tx.store.s3_client}: against a real moto S3 server with
signature checking on (see L{tests.s3_server}), checked with boto3; the
request signing and addressing also in memory, through a recording HTTP client.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

from attrs import define, field
from treq import content
from treq.client import HTTPClient
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from zope.interface import implementer

from glance_tx.errors import BadRequest, NotFound, StoreError
from glance_tx.store.fed_body import FedBody
from glance_tx.store.s3_client import S3Client, S3Credentials
from tests.s3_server import REGION, TEST_PART_SIZE, S3Server, s3_server


def live_client(case: TestCase, server: S3Server, **overrides: Any) -> S3Client:
    """An S3 client on the real reactor with its own pool, closed at cleanup."""
    pool = HTTPConnectionPool(_global_reactor, persistent=True)
    case.addCleanup(pool.closeCachedConnections)
    settings: dict[str, Any] = {
        "http": HTTPClient(Agent(_global_reactor, pool=pool)),
        "reactor": _global_reactor,
        "endpoint": server.endpoint,
        "region": REGION,
        "credentials": S3Credentials(server.access_key, server.secret_key),
        "addressing": "path",
        "store_name": "bulk",
    }
    settings.update(overrides)
    return S3Client(**settings)


async def feed(body: FedBody, data: bytes, chunk: int = 7919) -> None:
    for start in range(0, len(data), chunk):
        await body.write(data[start : start + chunk])


class LiveClientTests(TestCase):
    """The client against moto_server over a real socket."""

    def setUp(self) -> None:
        self.server = s3_server(self)
        self.client = live_client(self, self.server)
        self.bucket = self.server.new_bucket()
        self.boto = self.server.boto3()

    def keys(self) -> list[str]:
        listing = self.boto.list_objects_v2(Bucket=self.bucket)
        return [item["Key"] for item in listing.get("Contents", [])]

    def uploads(self) -> list[str]:
        listing = self.boto.list_multipart_uploads(Bucket=self.bucket)
        return [item["Key"] for item in listing.get("Uploads", [])]

    async def put(self, key: str, data: bytes) -> None:
        body = FedBody(_global_reactor, len(data), peer="S3")
        put = Deferred.fromCoroutine(self.client.put_object(self.bucket, key, body))
        await feed(body, data)
        await put

    def test_put_get_head_list_delete(self) -> None:
        """
        A body fed in pieces is stored whole; HEAD gives its size, GET the
        bytes (whole or a range), the listing names it, and after DELETE it
        is gone for GET and HEAD (L{NotFound}) while a second DELETE passes.
        """

        async def go() -> None:
            data = bytes(range(256)) * 400
            await self.put("image-1", data)
            self.assertEqual(self.boto.get_object(Bucket=self.bucket, Key="image-1")["Body"].read(), data)
            self.assertEqual(await self.client.object_size(self.bucket, "image-1"), len(data))
            response = await self.client.get_object(self.bucket, "image-1")
            assert response is not None
            self.assertEqual(await content(response), data)
            response = await self.client.get_object(self.bucket, "image-1", 1000, 24)
            assert response is not None
            self.assertEqual(response.code, 206)
            self.assertEqual(await content(response), data[1000:1024])
            response = await self.client.get_object(self.bucket, "image-1", 102_000)
            assert response is not None
            self.assertEqual(await content(response), data[102_000:])
            self.assertIsNone(await self.client.get_object(self.bucket, "image-1", len(data)))
            self.assertEqual(await self.client.list_keys(self.bucket), ["image-1"])
            await self.client.delete_object(self.bucket, "image-1")
            await self.client.delete_object(self.bucket, "image-1")
            with self.assertRaises(NotFound):
                await self.client.get_object(self.bucket, "image-1")
            with self.assertRaises(NotFound):
                await self.client.object_size(self.bucket, "image-1")
            self.assertEqual(self.keys(), [])

        return Deferred.fromCoroutine(go())

    def test_empty_object(self) -> None:
        """An empty body stores an empty object of size 0."""

        async def go() -> None:
            await self.put("empty", b"")
            self.assertEqual(await self.client.object_size(self.bucket, "empty"), 0)

        return Deferred.fromCoroutine(go())

    def test_multipart(self) -> None:
        """
        Parts uploaded one by one and completed make one object of their
        bytes in order; no upload is left in progress.
        """

        async def go() -> None:
            parts = [b"a" * TEST_PART_SIZE, b"b" * TEST_PART_SIZE, b"tail"]
            upload = await self.client.create_multipart_upload(self.bucket, "big")
            self.assertEqual(self.uploads(), ["big"])
            stored = []
            for number, part in enumerate(parts, start=1):
                body = FedBody(_global_reactor, len(part), peer="S3")
                d = Deferred.fromCoroutine(
                    self.client.upload_part(upload, number, body, zlib.crc32(part))
                )
                await feed(body, part, chunk=10_000)
                stored.append(await d)
            stored.reverse()  # completed in part-number order all the same
            await self.client.complete_multipart_upload(upload, stored)
            self.assertEqual(self.uploads(), [])
            got = self.boto.get_object(Bucket=self.bucket, Key="big", ChecksumMode="ENABLED")
            self.assertEqual(got["Body"].read(), b"".join(parts))
            # S3's checksum of a multipart object is of its parts' CRC32s.
            crcs = b"".join(zlib.crc32(part).to_bytes(4, "big") for part in parts)
            whole = base64.b64encode(zlib.crc32(crcs).to_bytes(4, "big")).decode()
            self.assertEqual(got["ChecksumCRC32"], f"{whole}-{len(parts)}")

        return Deferred.fromCoroutine(go())

    def test_abort_multipart(self) -> None:
        """
        Aborting a multipart upload leaves no upload, part or object, and
        aborting it again passes; C{list_multipart_uploads} saw it before.
        """

        async def go() -> None:
            upload = await self.client.create_multipart_upload(self.bucket, "doomed")
            body = FedBody(_global_reactor, TEST_PART_SIZE, peer="S3")
            part = b"x" * TEST_PART_SIZE
            d = Deferred.fromCoroutine(
                self.client.upload_part(upload, 1, body, zlib.crc32(part))
            )
            await feed(body, part)
            await d
            self.assertEqual(
                await self.client.list_multipart_uploads(self.bucket), [upload]
            )
            await self.client.abort_multipart_upload(upload)
            await self.client.abort_multipart_upload(upload)
            self.assertEqual(self.uploads(), [])
            self.assertEqual(self.keys(), [])
            self.assertEqual(await self.client.list_multipart_uploads(self.bucket), [])

        return Deferred.fromCoroutine(go())

    def test_failed_body_stores_nothing(self) -> None:
        """
        A body given up half way (L{FedBody.fail}) fails the PUT and the
        connection is dropped: S3 stores nothing.
        """

        async def go() -> None:
            body = FedBody(_global_reactor, 100_000, peer="S3")
            put = Deferred.fromCoroutine(self.client.put_object(self.bucket, "cut", body))
            await feed(body, b"y" * 40_000)
            body.fail(StoreError("the client went away"))
            with self.assertRaises(StoreError):
                await put
            self.assertEqual(self.keys(), [])

        return Deferred.fromCoroutine(go())

    def test_too_much_data_refused(self) -> None:
        """Writing past a feed's length fails at once; nothing is stored."""

        async def go() -> None:
            body = FedBody(_global_reactor, 10, peer="S3")
            put = Deferred.fromCoroutine(self.client.put_object(self.bucket, "long", body))
            await body.write(b"12345")
            with self.assertRaises(StoreError):
                await body.write(b"123456")
            body.fail(StoreError("too long"))
            with self.assertRaises(StoreError):
                await put
            self.assertEqual(self.keys(), [])

        return Deferred.fromCoroutine(go())

    def test_missing_bucket(self) -> None:
        """A bucket that does not exist is L{NotFound} for GET, and reported by
        C{bucket_exists}; C{create_bucket} makes it, and again is harmless."""

        async def go() -> None:
            name = self.bucket + "-new"
            with self.assertRaises(NotFound):
                await self.client.get_object(name, "x")
            self.assertFalse(await self.client.bucket_exists(name))
            await self.client.create_bucket(name)
            await self.client.create_bucket(name)
            self.assertTrue(await self.client.bucket_exists(name))

        return Deferred.fromCoroutine(go())

    def test_wrong_credentials(self) -> None:
        """
        A wrong secret key or an unknown access key is a L{StoreError} (not
        L{NotFound}) that names the store and says the credentials were
        refused, and carries neither key.
        """

        async def go() -> None:
            for credentials in [
                S3Credentials(self.server.access_key, "wrong-secret-0123456789"),
                S3Credentials("AKIANOSUCHKEY0000000", self.server.secret_key),
            ]:
                client = live_client(self, self.server, credentials=credentials)
                for attempt in [
                    client.object_size(self.bucket, "x"),
                    client.list_keys(self.bucket),
                ]:
                    with self.assertRaises(StoreError) as caught:
                        await attempt
                    message = str(caught.exception)
                    self.assertNotIsInstance(caught.exception, NotFound)
                    self.assertIn("'bulk'", message)
                    self.assertIn("credentials were refused", message)
                    for secret in (credentials.access_key, credentials.secret_key):
                        self.assertNotIn(secret, message)
                        self.assertNotIn(secret, repr(client))

        return Deferred.fromCoroutine(go())

    def test_unreachable(self) -> None:
        """A server that is not there is a L{StoreError} naming the store."""

        async def go() -> None:
            client = live_client(self, self.server, endpoint="http://127.0.0.1:1")
            with self.assertRaises(StoreError) as caught:
                await client.list_keys(self.bucket)
            self.assertIn("'bulk'", str(caught.exception))
            self.assertNotIn(self.server.secret_key, str(caught.exception))

        return Deferred.fromCoroutine(go())


@implementer(IResponse)
@define
class _EmptyResponse:
    """A 200 answer with no body."""

    code: int = 200
    length: int = 0
    headers: Headers = field(factory=lambda: Headers({b"etag": [b'"x"']}))

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(None)
        protocol.connectionLost(Failure(ResponseDone()))


@define
class _Recorder:
    """An HTTP client that answers 200 to anything, remembering each request."""

    seen: list[tuple[str, str, dict[bytes, bytes]]] = field(factory=list)
    bodies: list[StringTransport] = field(factory=list)

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        headers = {k.lower().encode(): v[0].encode() for k, v in kwargs["headers"].items()}
        self.seen.append((method, url, headers))
        body = StringTransport()
        producer = kwargs["data"]
        if producer is not None:
            producer.startProducing(body)
        self.bodies.append(body)
        return succeed(_EmptyResponse())


class SigningTests(SynchronousTestCase):
    """What goes on the wire, recorded in memory."""

    credentials = S3Credentials("AKIAEXAMPLE000000000", "secret/example+key")

    def client(self, recorder: _Recorder, **overrides: Any) -> S3Client:
        settings: dict[str, Any] = {
            "http": recorder,
            "reactor": None,
            "endpoint": "http://s3.example.com:8080",
            "region": "eu-west-3",
            "credentials": self.credentials,
            "addressing": "path",
        }
        settings.update(overrides)
        return S3Client(**settings)

    def test_sigv4_headers(self) -> None:
        """
        Requests carry a SigV4 Authorization for the access key, region and
        service C{s3}; a streamed body is signed as C{UNSIGNED-PAYLOAD} and
        sent with its Content-Length, an empty one with the empty hash. The
        secret never goes on the wire.
        """
        recorder = _Recorder()
        client = self.client(recorder)
        body = FedBody(Clock(), 3, peer="S3")
        d = Deferred.fromCoroutine(client.put_object("bucket", "key", body))
        Deferred.fromCoroutine(body.write(b"abc"))
        self.successResultOf(d)
        self.successResultOf(Deferred.fromCoroutine(client.delete_object("bucket", "key")))
        (put_method, put_uri, put), (_, _, delete) = recorder.seen
        self.assertEqual((put_method, put_uri), ("PUT", "http://s3.example.com:8080/bucket/key"))
        self.assertEqual([body.value() for body in recorder.bodies], [b"abc", b""])
        self.assertTrue(
            put[b"authorization"].startswith(
                b"AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE000000000/"
            )
        )
        self.assertIn(b"/eu-west-3/s3/aws4_request", put[b"authorization"])
        self.assertEqual(put[b"x-amz-content-sha256"], b"UNSIGNED-PAYLOAD")
        self.assertEqual(put[b"content-length"], b"3")
        self.assertEqual(
            delete[b"x-amz-content-sha256"],
            b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        )
        for _, _, headers in recorder.seen:
            for value in headers.values():
                self.assertNotIn(b"secret", value)

    def test_addressing(self) -> None:
        """
        Path addressing puts the bucket in the path, virtual in the host;
        auto picks virtual for a DNS-label bucket on a named host and path
        for an IP address host. Sub-resources such as C{?uploads} have no
        C{=}.
        """
        recorder = _Recorder()
        path = self.client(recorder)
        virtual = self.client(recorder, addressing="virtual")
        auto_ip = self.client(recorder, addressing="auto", endpoint="http://127.0.0.1:9000")
        auto_name = self.client(recorder, addressing="auto")
        self.assertEqual(path.url("images", "k"), "http://s3.example.com:8080/images/k")
        self.assertEqual(virtual.url("images", "k"), "http://images.s3.example.com:8080/k")
        self.assertEqual(virtual.url("images"), "http://images.s3.example.com:8080/")
        self.assertEqual(auto_ip.url("images", "k"), "http://127.0.0.1:9000/images/k")
        self.assertEqual(auto_name.url("images", "k"), "http://images.s3.example.com:8080/k")
        self.assertEqual(auto_name.url("Not_DNS", "k"), "http://s3.example.com:8080/Not_DNS/k")
        self.assertEqual(
            path.url("b", "k", {"uploads": ""}), "http://s3.example.com:8080/b/k?uploads"
        )

    def test_endpoint_checked(self) -> None:
        """An endpoint that is not http(s), or carries credentials, is refused."""
        for endpoint in ["s3.example.com", "ftp://host", "http://user:pw@host"]:
            with self.assertRaises(ValueError):
                self.client(_Recorder(), endpoint=endpoint)
        with self.assertRaises(ValueError):
            self.client(_Recorder(), addressing="sideways")

    def test_bad_range(self) -> None:
        """A negative offset or an empty length is a L{BadRequest}, sent nowhere."""
        recorder = _Recorder()
        client = self.client(recorder)
        for offset, length in [(-1, None), (0, 0), (5, -1)]:
            d = Deferred.fromCoroutine(client.get_object("b", "k", offset, length))
            self.failureResultOf(d, BadRequest)
        self.assertEqual(recorder.seen, [])

    def test_credentials_repr(self) -> None:
        """Neither key shows in the repr of the credentials or the client."""
        client = self.client(_Recorder())
        for text in (repr(self.credentials), repr(client)):
            self.assertNotIn("AKIAEXAMPLE", text)
            self.assertNotIn("secret", text)
