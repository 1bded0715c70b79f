"""
The async L{glance_tx.client.Client}.

Most tests run it in memory against the real glance-tx site (SQLite, the
filesystem store, real HTTP parsing on both sides, no socket:
L{tests.api_fixtures.SiteTestCase}); the streaming ones run it over a
real socket against a real server (L{tests.live_server}), through a TCP
relay that can cut a download short.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import threading
import tracemalloc
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from attrs import define, field
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from glance_tx.client import (
    BadRequest,
    Client,
    Conflict,
    ConnectionFailed,
    CorruptDownload,
    DownloadInterrupted,
    Forbidden,
    HTTPError,
    ImageInfo,
    MemberInfo,
    NoImageData,
    NotFound,
    PreconditionFailed,
    RequestEntityTooLarge,
    ServiceUnavailable,
    StoreInfo,
    TimedOut,
    Unauthorized,
    json_patch,
)
from glance_tx.client.blocking import BlockingClient
from glance_tx.client.download import DataSink
from glance_tx.client.errors import ClientError, error_for, server_message
from glance_tx.client.reactor_thread import ReactorThread
from glance_tx.client.upload import FileBody, readable_length
from glance_tx.store.filesystem import filesystem_datadir
from glance_tx.threads import SynchronousRunner
from tests.api_fixtures import BASE, SiteTestCase
from tests.cutting_relay import CuttingRelay
from tests.fakes import ManualRunner
from tests.live_server import (
    MEMBER_PROJECT,
    MEMBER_TOKEN,
    OWNER_TOKEN,
    IdentityProxy,
    listening_port,
    live_config,
    settled_client,
    start_glance_tx,
)
from tests.memory_http import memory_client

T = TypeVar("T")
MiB = 1 << 20
TOKEN = "a-secret-token"


def data(size: int, seed: int = 1) -> bytes:
    unit = hashlib.sha512(seed.to_bytes(4, "big")).digest()
    return (unit * (size // len(unit) + 1))[:size]


@implementer(IAgent)
@define
class RecordingAgent:
    """An agent that notes the headers of every request it passes on."""

    agent: IAgent
    headers: list[Headers] = field(factory=list)

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None) -> Any:
        self.headers.append(headers)
        return self.agent.request(method, uri, headers, bodyProducer)


class MemoryClientTestCase(SiteTestCase):
    """A Client over the in-memory site."""

    def setUp(self) -> None:
        super().setUp()
        self.clock = MemoryReactorClock()
        self.api = Client(
            BASE, self.client, self.clock, token=TOKEN, runner=SynchronousRunner()
        )

    def wait(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Drive C{coroutine} (HTTP pumps and the clock) to its result."""
        d = Deferred.fromCoroutine(coroutine)
        for _ in range(200):
            if d.called:
                break
            self.agent.flush()
            self.clock.advance(1)
        return self.successResultOf(d)

    def failure(self, coroutine: Coroutine[Any, Any, Any], kind: type[BaseException]) -> Any:
        d = Deferred.fromCoroutine(coroutine)
        for _ in range(200):
            if d.called:
                break
            self.agent.flush()
            self.clock.advance(1)
        return self.failureResultOf(d, kind).value

    def requests(self) -> int:
        """How many requests have been sent (one connection each)."""
        return len(self.agent.pumps)

    def new_image(self, **fields: Any) -> ImageInfo:
        fields.setdefault("disk_format", "raw")
        fields.setdefault("container_format", "bare")
        return self.wait(self.api.create(**fields))

    async def all_images(self, **filters: Any) -> list[ImageInfo]:
        return [image async for image in self.api.list_images(**filters)]


class ImageTests(MemoryClientTestCase):
    def test_create_returns_typed_image(self) -> None:
        """create() sends the fields and returns an ImageInfo: core fields
        typed, extra properties apart, timestamps as datetimes."""
        image = self.new_image(name="cirros", tags=["a"], min_ram=64, os_distro="cirros")
        self.assertIsInstance(image, ImageInfo)
        self.assertEqual(
            (image.name, image.status, image.min_ram, image.tags, image.disk_format),
            ("cirros", "queued", 64, frozenset({"a"}), "raw"),
        )
        self.assertEqual(image.properties, {"os_distro": "cirros"})
        with self.assertRaises(TypeError):
            image.properties["os_distro"] = "changed"  # type: ignore[index]
        self.assertEqual(len({image, self.wait(self.api.show(image.id))}), 1)
        assert image.created_at is not None
        self.assertEqual(image.created_at.utcoffset().total_seconds(), 0)  # type: ignore[union-attr]

    def test_show(self) -> None:
        """show() returns what create() made."""
        image = self.new_image(name="x")
        self.assertEqual(self.wait(self.api.show(image.id)), image)

    def test_token_sent_not_shown(self) -> None:
        """The token is sent as X-Auth-Token and kept out of the repr."""
        agent = RecordingAgent(self.agent)
        api = Client(BASE, HTTPClient(agent), self.clock, token=TOKEN, runner=SynchronousRunner())
        self.wait(api.stores())
        self.assertEqual(agent.headers[0].getRawHeaders(b"x-auth-token"), [TOKEN.encode()])
        self.assertNotIn(TOKEN, repr(api))

    def test_base_url_forms(self) -> None:
        """The endpoint may be given with or without /v2 and a slash."""
        for url in (BASE, BASE + "/", BASE + "/v2", BASE + "/v2/"):
            self.assertEqual(Client(url, self.client, self.clock, runner=SynchronousRunner()).url, BASE)

    def test_list_follows_every_page_lazily(self) -> None:
        """list_images() yields every image across pages, fetching a page
        only when the iteration reaches it."""
        made = {self.new_image(name=f"i{n}").id for n in range(5)}
        before = self.requests()
        images = self.api.list_images(page_size=2)
        first = self.wait(images.__anext__())
        self.assertIn(first.id, made)
        self.assertEqual(self.requests() - before, 1)

        async def rest() -> list[ImageInfo]:
            return [image async for image in images]

        seen = {first.id} | {image.id for image in self.wait(rest())}
        self.assertEqual(seen, made)
        # Pages of 2, 2, 1: the last is short, so it has no next link.
        self.assertEqual(self.requests() - before, 3)

    def test_list_filters(self) -> None:
        """Filters are sent as query parameters, lists once per item."""
        self.new_image(name="a", tags=["x", "y"])
        self.new_image(name="b", tags=["x"])
        self.new_image(name="c")
        names = lambda images: sorted(i.name for i in images)  # noqa: E731
        self.assertEqual(names(self.wait(self.all_images(tag=["x", "y"]))), ["a"])
        self.assertEqual(names(self.wait(self.all_images(tag="x"))), ["a", "b"])
        self.assertEqual(names(self.wait(self.all_images(name="c"))), ["c"])

    def test_list_refuses_limit(self) -> None:
        """limit and marker would fight the paging: a TypeError."""
        self.failure(self.all_images(limit=3), TypeError)

    def test_update_sets_and_removes(self) -> None:
        """update() builds one JSON patch: fields and properties set
        (new or existing), properties removed."""
        image = self.new_image(name="old", os_distro="cirros", hw_x="1")
        updated = self.wait(
            self.api.update(image.id, set={"name": "new", "os_distro": "ubuntu", "k/~": "v"},
                            remove=["hw_x"])
        )
        self.assertEqual(updated.name, "new")
        self.assertEqual(updated.properties, {"os_distro": "ubuntu", "k/~": "v"})
        self.assertEqual(self.wait(self.api.show(image.id)), updated)

    def test_json_patch(self) -> None:
        """Names are escaped as RFC 6901 pointers; add for every set."""
        self.assertEqual(
            json_patch({"a/b": 1, "~c": "x"}, ["d"]),
            [
                {"op": "add", "path": "/a~1b", "value": 1},
                {"op": "add", "path": "/~0c", "value": "x"},
                {"op": "remove", "path": "/d"},
            ],
        )

    def test_delete(self) -> None:
        """delete() removes the image: showing it is then NotFound."""
        image = self.new_image()
        self.wait(self.api.delete(image.id))
        self.failure(self.api.show(image.id), NotFound)

    def test_deactivate_reactivate(self) -> None:
        """The admin actions change the status of an active image."""
        image = self.new_image()
        self.wait(self.api.upload(image.id, io.BytesIO(b"abc")))
        self.wait(self.api.deactivate(image.id))
        self.assertEqual(self.wait(self.api.show(image.id)).status, "deactivated")
        self.wait(self.api.reactivate(image.id))
        self.assertEqual(self.wait(self.api.show(image.id)).status, "active")

    def test_tags(self) -> None:
        """add_tag and remove_tag change the image's tags (any characters)."""
        image = self.new_image()
        self.wait(self.api.add_tag(image.id, "a b"))
        self.wait(self.api.add_tag(image.id, "d"))
        self.assertEqual(self.wait(self.api.show(image.id)).tags, {"a b", "d"})
        self.wait(self.api.remove_tag(image.id, "a b"))
        self.assertEqual(self.wait(self.api.show(image.id)).tags, {"d"})

    def test_members(self) -> None:
        """Members are added (pending), listed, shown, updated, removed."""
        image = self.new_image(visibility="shared")
        added = self.wait(self.api.add_member(image.id, "project-b"))
        self.assertIsInstance(added, MemberInfo)
        self.assertEqual((added.image_id, added.member_id, added.status),
                         (image.id, "project-b", "pending"))
        self.assertEqual(self.wait(self.api.list_members(image.id)), [added])
        self.assertEqual(self.wait(self.api.show_member(image.id, "project-b")), added)
        accepted = self.wait(self.api.update_member(image.id, "project-b", "accepted"))
        self.assertEqual(accepted.status, "accepted")
        self.wait(self.api.remove_member(image.id, "project-b"))
        self.assertEqual(self.wait(self.api.list_members(image.id)), [])

    def test_stores(self) -> None:
        """stores() lists the enabled stores, the default marked."""
        self.assertEqual(self.wait(self.api.stores()), [StoreInfo("file", default=True)])


class RefusalTests(MemoryClientTestCase):
    """The server's refusals arrive as typed errors with its message."""

    def test_not_found(self) -> None:
        """An unknown image: NotFound, 404, the server's message naming it."""
        missing = "8c4b2a1e-3f00-4d0e-9b6a-1a2b3c4d5e6f"
        error = self.failure(self.api.show(missing), NotFound)
        self.assertEqual(error.status, 404)
        self.assertIn(missing, error.message)

    def test_forbidden(self) -> None:
        """A read-only field in a patch: 403 with glance's message."""
        image = self.new_image()
        error = self.failure(self.api.update(image.id, set={"size": 3}), Forbidden)
        self.assertEqual((error.status, error.message), (403, "Attribute 'size' is read-only."))

    def test_bad_request(self) -> None:
        """A value the schema refuses: BadRequest naming the field."""
        error = self.failure(self.api.create(min_ram="lots"), BadRequest)
        self.assertEqual(error.status, 400)
        self.assertIn("min_ram", error.message)

    def test_conflict(self) -> None:
        """A second upload to an image with data: 409."""
        image = self.new_image()
        self.wait(self.api.upload(image.id, io.BytesIO(b"abc")))
        error = self.failure(self.api.upload(image.id, io.BytesIO(b"abc")), Conflict)
        self.assertIn("queued", error.message)


class ImportTests(MemoryClientTestCase):
    """Interoperable import through the client, in memory."""

    def imported(self, image_id: str) -> ImageInfo:
        """The image once the server's background import has ended."""
        self.successResultOf(self.site.importer.idle())
        return self.wait(self.api.show(image_id))

    def test_import_methods(self) -> None:
        """import_methods() lists what GET /v2/info/import offers, no more."""
        # One store and no HTTP store: only glance-direct can work.
        self.assertEqual(self.wait(self.api.import_methods()), ["glance-direct"])

    def test_stage_then_glance_direct(self) -> None:
        """stage() streams the data (progress reported, image uploading);
        import_image() makes it active with those bytes, hashed."""
        body = data(3 * MiB + 5, seed=21)
        image = self.new_image(name="staged")
        seen: list[tuple[int, int | None]] = []
        self.wait(self.api.stage(image.id, io.BytesIO(body), progress=lambda d, t: seen.append((d, t))))
        self.assertEqual(seen[-1][0], len(body))
        self.assertGreater(len(seen), 1)
        self.assertEqual(self.wait(self.api.show(image.id)).status, "uploading")
        self.wait(self.api.import_image(image.id, "glance-direct", stores=["file"]))
        done = self.imported(image.id)
        # One store enabled: the image shows no stores, as Glance's does.
        self.assertEqual((done.status, done.size, done.stores), ("active", len(body), ()))
        self.assertEqual(done.os_hash_value, hashlib.sha512(body).hexdigest())
        out = io.BytesIO()
        self.wait(self.api.download(image.id, out))
        self.assertEqual(out.getvalue(), body)

    def test_import_not_staged_refused(self) -> None:
        """glance-direct of an image not staged: Conflict with the server's reason."""
        image = self.new_image()
        error = self.failure(self.api.import_image(image.id), Conflict)
        self.assertIn("staged", error.message)

    def test_bad_method_refused(self) -> None:
        """A method the server does not know: BadRequest."""
        image = self.new_image()
        self.failure(self.api.import_image(image.id, "teleport"), BadRequest)


class ErrorParsingTests(SynchronousTestCase):
    """Error bodies in each shape servers send."""

    def test_glance_tx_shape(self) -> None:
        """glance-tx's (and Keystone's) nested error document."""
        body = b'{"error": {"code": 404, "title": "Not Found", "message": "No image x"}}'
        error = error_for(404, body, "application/json")
        self.assertIsInstance(error, NotFound)
        self.assertEqual((error.status, error.message), (404, "No image x"))

    def test_webob_json(self) -> None:
        """webob's JSON error (OpenStack Glance asked for JSON) is flat."""
        body = b'{"code": "409 Conflict", "title": "Conflict", "message": "Image is active"}'
        self.assertEqual(server_message(409, "application/json", body), "Image is active")

    def test_webob_text(self) -> None:
        """OpenStack Glance's usual answer: webob's plain-text page."""
        body = b"404 Not Found\n\nNo image found with ID abc\n\n   "
        self.assertEqual(server_message(404, "text/plain", body), "No image found with ID abc")

    def test_html(self) -> None:
        """An HTML page: tags, title and repeated status line dropped."""
        body = (b"<html><head><title>401 Unauthorized</title></head><body>"
                b"<h1>401 Unauthorized</h1>This server could not verify.<br /><br />"
                b"</body></html>")
        error = error_for(401, body, "text/html")
        self.assertIsInstance(error, Unauthorized)
        self.assertEqual(error.message, "This server could not verify.")

    def test_empty_body(self) -> None:
        """Nothing said: the status phrase is the message."""
        self.assertEqual(error_for(403, b"").message, "Forbidden")

    def test_retry_after(self) -> None:
        """A 503 keeps Retry-After, as seconds or as an HTTP date."""
        error = error_for(503, b"", retry_after="7")
        assert isinstance(error, ServiceUnavailable)
        self.assertEqual(error.retry_after, 7)
        dated = error_for(503, b"", retry_after="Thu, 01 Jan 1970 00:01:40 GMT", now=90)
        assert isinstance(dated, ServiceUnavailable)
        self.assertEqual(dated.retry_after, 10)

    def test_other_status(self) -> None:
        """A status with no class of its own is a plain HTTPError."""
        error = error_for(418, b"teapot")
        self.assertIs(type(error), HTTPError)
        self.assertEqual(str(error), "418 I'm a Teapot: teapot")


class DataTests(MemoryClientTestCase):
    """Uploads and downloads in memory."""

    def uploaded(self, body: bytes) -> ImageInfo:
        image = self.new_image()
        self.wait(self.api.upload(image.id, io.BytesIO(body)))
        return self.wait(self.api.show(image.id))

    def test_upload_from_path(self) -> None:
        """A path is read and sent whole: the server's hashes match."""
        body = data(3 * MiB + 5)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(body)
        image = self.new_image()
        self.wait(self.api.upload(image.id, path))
        shown = self.wait(self.api.show(image.id))
        self.assertEqual(
            (shown.status, shown.size, shown.checksum, shown.os_hash_value),
            ("active", len(body), hashlib.md5(body).hexdigest(),
             hashlib.sha512(body).hexdigest()),
        )

    def test_progress(self) -> None:
        """Uploads and downloads report (bytes so far, size) as they go,
        ending at the whole; a size unknown to the upload is None."""
        body = data(3 * MiB)
        image = self.new_image()
        sent: list[tuple[int, int | None]] = []
        self.wait(self.api.upload(image.id, io.BytesIO(body), progress=lambda *p: sent.append(p)))
        self.assertEqual(sent, [(MiB, None), (2 * MiB, None), (3 * MiB, None)])
        received: list[tuple[int, int | None]] = []
        self.wait(self.api.download(image.id, io.BytesIO(), progress=lambda *p: received.append(p)))
        self.assertEqual(received[-1], (len(body), len(body)))

    def test_upload_from_pipe_like_object(self) -> None:
        """A file object with no size is sent chunked, to its end."""
        body = data(MiB + 1, seed=2)
        shown = self.uploaded(body)
        self.assertEqual((shown.size, shown.checksum), (len(body), hashlib.md5(body).hexdigest()))

    def test_download_to_file_object(self) -> None:
        """download() writes the bytes and says how it checked them."""
        body = data(2 * MiB + 3)
        image = self.uploaded(body)
        out = io.BytesIO()
        result = self.wait(self.api.download(image.id, out))
        self.assertEqual(out.getvalue(), body)
        self.assertEqual(
            (result.size, result.algorithm, result.hexdigest, result.resumed),
            (len(body), "sha512", hashlib.sha512(body).hexdigest(), 0),
        )

    def test_download_to_path(self) -> None:
        """A path gets the data, and nothing else is left beside it."""
        body = data(MiB)
        image = self.uploaded(body)
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "image.raw")
        self.wait(self.api.download(image.id, path))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), body)
        self.assertEqual(os.listdir(directory), ["image.raw"])

    def corrupt_store(self) -> None:
        """Flip one byte of the (one) stored image file, size unchanged."""
        (stored,) = self.stored_files()
        with open(stored, "r+b") as f:
            f.seek(1000)
            byte = f.read(1)
            f.seek(1000)
            f.write(bytes([byte[0] ^ 0xFF]))

    def test_corrupt_download_caught(self) -> None:
        """Bytes that do not hash to os_hash_value: CorruptDownload, and
        the destination path is never created."""
        body = data(MiB)
        image = self.uploaded(body)
        self.corrupt_store()
        directory = self.mktemp()
        os.mkdir(directory)
        error = self.failure(
            self.api.download(image.id, os.path.join(directory, "x")), CorruptDownload
        )
        self.assertEqual((error.algorithm, error.expected), ("sha512", image.os_hash_value))
        self.assertEqual(os.listdir(directory), [])

    def test_md5_fallback(self) -> None:
        """Without os_hash_value the md5 checksum is what is checked."""
        body = data(10_000)
        image = self.uploaded(body)
        # What an old (pre-Rocky) Glance shows: no multihash.
        self.registry_without_multihash(image.id)
        result = self.wait(self.api.download(image.id, io.BytesIO()))
        self.assertEqual((result.algorithm, result.hexdigest), ("md5", hashlib.md5(body).hexdigest()))
        self.corrupt_store()
        error = self.failure(self.api.download(image.id, io.BytesIO()), CorruptDownload)
        self.assertEqual(error.algorithm, "md5")

    def registry_without_multihash(self, image_id: str) -> None:
        from glance_tx.images import ImageUpdate

        self.successResultOf(
            self.registry.update(
                image_id, ImageUpdate(fields={"os_hash_algo": None, "os_hash_value": None})
            )
        )

    def test_no_data(self) -> None:
        """A queued image has no data: NoImageData, not an empty file."""
        image = self.new_image()
        self.failure(self.api.download(image.id, io.BytesIO()), NoImageData)


class FileBodyTests(SynchronousTestCase):
    """The upload body producer on its own."""

    def test_reads_off_the_reactor_one_block_ahead(self) -> None:
        """Each block is read on the runner; the next is read while the
        last is sent, but not written while paused, and no further read
        starts until it is: two blocks held at most."""
        runner = ManualRunner()
        body = FileBody(io.BytesIO(b"x" * 10), runner, 10, block_size=4)
        consumer = StringTransport()
        done = body.startProducing(consumer)
        self.assertEqual((runner.pending(), consumer.value()), (1, b""))
        runner.run_one()
        self.assertEqual((runner.pending(), consumer.value()), (1, b"xxxx"))
        body.pauseProducing()
        runner.run_one()
        self.assertEqual((runner.pending(), consumer.value()), (0, b"xxxx"))
        body.resumeProducing()
        self.assertEqual((runner.pending(), consumer.value()), (1, b"xxxxxxxx"))
        runner.run_all()
        self.assertEqual(consumer.value(), b"x" * 10)
        self.assertIsNone(self.successResultOf(done))
        self.assertEqual(body.largest_block, 4)

    def test_provides_body_producer(self) -> None:
        """FileBody provides IBodyProducer, as treq and the Agent need."""
        verifyObject(IBodyProducer, FileBody(io.BytesIO(), SynchronousRunner(), 0))

    def test_length(self) -> None:
        """A known size is the body's length; else chunked (unknown)."""
        self.assertEqual(FileBody(io.BytesIO(), SynchronousRunner(), 3).length, 3)
        self.assertIs(FileBody(io.BytesIO(), SynchronousRunner()).length, UNKNOWN_LENGTH)

    def test_short_file_fails(self) -> None:
        """A file that ends before the size declared fails the body."""
        body = FileBody(io.BytesIO(b"abc"), SynchronousRunner(), 5)
        self.failureResultOf(body.startProducing(StringTransport()), ClientError)

    def test_stopped_never_fires(self) -> None:
        """Once stopped, no more is read and the Deferred never fires."""
        runner = ManualRunner()
        body = FileBody(io.BytesIO(b"abcdef"), runner, 6, block_size=2)
        consumer = StringTransport()
        done = body.startProducing(consumer)
        body.stopProducing()
        runner.run_all()
        self.assertNoResult(done)
        self.assertEqual(consumer.value(), b"")

    def test_readable_length(self) -> None:
        """What is left of a regular file; None for other objects."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"abcdef")
        with open(path, "rb") as f:
            f.read(2)
            self.assertEqual(readable_length(f), 4)
        self.assertIsNone(readable_length(io.BytesIO(b"abc")))


class DataSinkTests(SynchronousTestCase):
    """The download sink on its own."""

    def test_backpressure(self) -> None:
        """Past the high watermark the producer is paused; it resumes once
        the writes catch up; everything is written in order and hashed."""
        runner = ManualRunner()
        out = io.BytesIO()
        sink = DataSink(out, hashlib.sha512(), runner, batch_size=4,
                        high_watermark=8, low_watermark=4)
        producer = StringTransport()
        sink.attach(producer)
        for piece in (b"aaaa", b"bbbb", b"cccc"):
            sink.write(piece)
        self.assertEqual(producer.producerState, "paused")
        self.assertEqual(runner.pending(), 3)
        runner.run_one()
        self.assertEqual(producer.producerState, "paused")
        runner.run_one()
        self.assertEqual(producer.producerState, "producing")
        d = Deferred.fromCoroutine(sink.drain())
        runner.run_all()
        self.successResultOf(d)
        self.assertEqual(out.getvalue(), b"aaaabbbbcccc")
        self.assertEqual(sink.hexdigest(), hashlib.sha512(b"aaaabbbbcccc").hexdigest())
        self.assertEqual(sink.peak_held, 12)

    def test_short_writes(self) -> None:
        """A raw file that takes a few bytes per write still gets all."""

        class Trickle(io.RawIOBase):
            def __init__(self) -> None:
                self.kept = bytearray()

            def writable(self) -> bool:
                return True

            def write(self, data: Any) -> int:
                self.kept += bytes(data[:3])
                return min(3, len(data))

        out = Trickle()
        sink = DataSink(out, None, SynchronousRunner(), batch_size=4)
        sink.write(b"abcdefghij")
        self.successResultOf(Deferred.fromCoroutine(sink.drain()))
        self.assertEqual(bytes(out.kept), b"abcdefghij")

    def test_settle(self) -> None:
        """Once given up, queued writes are skipped and settle() waits
        until none is running: the file may then be closed."""
        runner = ManualRunner()
        out = io.BytesIO()
        sink = DataSink(out, None, runner, batch_size=1)
        sink.write(b"a")
        d = Deferred.fromCoroutine(sink.settle())
        self.assertNoResult(d)
        runner.run_all()
        self.successResultOf(d)
        self.assertEqual(out.getvalue(), b"")

    def test_write_failure(self) -> None:
        """A failed write stops the producer; drain raises it."""

        class Full(io.BytesIO):
            def write(self, data: Any) -> int:
                raise OSError(28, "No space left on device")

        sink = DataSink(Full(), None, SynchronousRunner(), batch_size=1)
        producer = StringTransport()
        sink.attach(producer)
        sink.write(b"x")
        self.assertTrue(sink.failed)
        self.assertEqual(producer.producerState, "stopped")
        self.failureResultOf(Deferred.fromCoroutine(sink.drain()), OSError)


class NullFile(io.RawIOBase):
    """A writable file that keeps nothing: a download's memory is the client's."""

    written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.written += len(data)
        return len(data)


class LiveClientTestCase(TestCase):
    """A Client against a real glance-tx on a real socket."""

    timeout = 300
    config_text = ""

    async def _start(self) -> None:
        config = live_config(self, self.config_text)
        self.service = await start_glance_tx(config, self.addCleanup, "client-live")
        self.port = listening_port(self.service)
        self.images_dir = filesystem_datadir(config.store("file"), config.data_dir)
        self.api = self.client(f"http://127.0.0.1:{self.port}")

    def setUp(self) -> Deferred[None]:
        self.relays: list[CuttingRelay] = []

        async def stop_relays() -> None:
            for relay in self.relays:
                await relay.stop()

        self.http = settled_client(self, stop_relays)
        return Deferred.fromCoroutine(self._start())

    def client(self, url: str, **settings: Any) -> Client:
        """A client of C{url} on the trial reactor (its thread pool too)."""
        return Client(url, self.http, reactor, token="t", **settings)

    def relay(self, cut_after: int, cuts: int = 1, stall: bool = False) -> CuttingRelay:
        relay = CuttingRelay.start(reactor, self.port, cut_after, cuts, stall)
        self.relays.append(relay)
        return relay

    async def uploaded(self, body: bytes) -> ImageInfo:
        image = await self.api.create(name="live", disk_format="raw", container_format="bare")
        await self.api.upload(image.id, io.BytesIO(body))
        return await self.api.show(image.id)

    def stored_file(self, image_id: str) -> str:
        """Where the filesystem store keeps an image's data."""
        return os.path.join(self.images_dir, image_id)


class LiveStreamingTests(LiveClientTestCase):
    async def test_upload_and_download_256mib_in_bounded_memory(self) -> None:
        """
        A 256 MiB (sparse) file uploads from its path and downloads to a
        file object with the whole process's Python allocations (server
        included: it streams too) peaking far below the image's size, so
        neither side of the client held the data whole.
        """
        size = 256 * MiB
        path = self.mktemp()
        with open(path, "wb") as f:
            f.truncate(size)
        zeros = hashlib.sha512()
        block = bytes(MiB)
        for _ in range(size // MiB):
            zeros.update(block)
        del block
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        image = await self.api.create(name="big", disk_format="raw", container_format="bare")
        await self.api.upload(image.id, path)
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        out = NullFile()
        result = await self.api.download(image.id, out)
        _, download_peak = tracemalloc.get_traced_memory()
        self.assertEqual((out.written, result.hexdigest), (size, zeros.hexdigest()))
        self.assertEqual((await self.api.show(image.id)).os_hash_value, zeros.hexdigest())
        # Measured: 7 to 9 MiB up, 8 MiB down (server included).
        self.assertLess(upload_peak, 32 * MiB, f"upload peak {upload_peak / MiB:.1f} MiB")
        self.assertLess(download_peak, 32 * MiB, f"download peak {download_peak / MiB:.1f} MiB")

    async def test_download_cut_midway_resumes_and_verifies(self) -> None:
        """
        A connection that drops mid-download is resumed from the byte it
        stopped at, with If-Match on the first answer's ETag, and the
        whole still hashes to os_hash_value.
        """
        body = data(8 * MiB, seed=3)
        image = await self.uploaded(body)
        relay = self.relay(cut_after=3 * MiB)
        api = self.client(relay.url, resume_delay=0.01)
        path = self.mktemp()
        progress: list[int] = []
        result = await api.download(image.id, path, progress=lambda n, _: progress.append(n))
        # Across the cut, progress only goes forward, to the whole.
        self.assertGreater(len(progress), 2)
        self.assertEqual(progress, sorted(set(progress)))
        self.assertEqual(progress[-1], len(body))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), body)
        self.assertEqual((result.resumed, result.hexdigest), (1, image.os_hash_value))
        first, second = relay.file_requests()
        self.assertNotIn(b"range:", first.lower())
        fields = dict(
            line.split(b": ", 1) for line in second.lower().split(b"\r\n")[1:]
        )
        start = int(fields[b"range"].removeprefix(b"bytes=").rstrip(b"-"))
        self.assertTrue(0 < start < 3 * MiB, start)
        self.assertEqual(fields[b"if-match"], f'"{image.os_hash_value}"'.encode())

    async def test_stalled_download_resumes(self) -> None:
        """A link that goes silent mid-body is given up after the client's
        timeout and the download resumed from where it stopped."""
        body = data(4 * MiB, seed=6)
        image = await self.uploaded(body)
        relay = self.relay(cut_after=MiB, stall=True)
        api = self.client(relay.url, timeout=0.5, resume_delay=0.01)
        out = io.BytesIO()
        result = await api.download(image.id, out)
        self.assertEqual((result.resumed, out.getvalue()), (1, body))
        self.assertEqual(len(relay.file_requests()), 2)

    async def test_download_gives_up_after_resumes(self) -> None:
        """A link that keeps dropping: DownloadInterrupted after the last
        resume allowed, and no file left at the destination."""
        image = await self.uploaded(data(4 * MiB))
        relay = self.relay(cut_after=64 * 1024, cuts=100)
        api = self.client(relay.url, resumes=2, resume_delay=0.01)
        directory = self.mktemp()
        os.mkdir(directory)
        with self.assertRaises(DownloadInterrupted) as caught:
            await api.download(image.id, os.path.join(directory, "image"))
        self.assertEqual(caught.exception.attempts, 3)
        self.assertEqual(len(relay.file_requests()), 3)
        self.assertEqual(os.listdir(directory), [])

    async def test_corrupted_store_caught(self) -> None:
        """Data changed in the store behind the server's back (same size):
        CorruptDownload."""
        image = await self.uploaded(data(4 * MiB, seed=4))
        with open(self.stored_file(image.id), "r+b") as f:
            f.seek(3 * MiB)
            f.write(b"rot")
        with self.assertRaises(CorruptDownload) as caught:
            await self.api.download(image.id, NullFile())
        self.assertEqual(caught.exception.expected, image.os_hash_value)

    async def test_upload_from_pipe(self) -> None:
        """A pipe has no size: sent chunked, read on the thread pool."""
        body = data(3 * MiB + 7, seed=5)
        read_end, write_end = os.pipe()
        writer = threading.Thread(target=_write_and_close, args=(write_end, body))
        writer.start()
        self.addCleanup(writer.join)
        image = await self.api.create(name="pipe", disk_format="raw", container_format="bare")
        with open(read_end, "rb") as source:
            await self.api.upload(image.id, source)
        shown = await self.api.show(image.id)
        self.assertEqual((shown.size, shown.checksum), (len(body), hashlib.md5(body).hexdigest()))


class LiveSharingTests(LiveClientTestCase):
    async def test_share_accept_download(self) -> None:
        """
        Two projects through an identity layer: the owner shares an image,
        the member sees it, accepts it, finds it in its listing and
        downloads it verified; the member may neither delete it nor add
        members.
        """
        proxy = await IdentityProxy.start(self.api.url)
        self.addCleanup(proxy.stop)
        owner = Client(proxy.url, self.http, reactor, token=OWNER_TOKEN)
        member = Client(proxy.url, self.http, reactor, token=MEMBER_TOKEN)
        body = data(MiB + 3, seed=8)
        image = await owner.create(
            name="shared", visibility="shared", disk_format="raw", container_format="bare"
        )
        await owner.upload(image.id, io.BytesIO(body))
        offer = await owner.add_member(image.id, MEMBER_PROJECT)
        self.assertEqual(offer.status, "pending")
        self.assertEqual((await member.show(image.id)).name, "shared")
        accepted = await member.update_member(image.id, MEMBER_PROJECT, "accepted")
        self.assertEqual(accepted.status, "accepted")
        listed = [i.id async for i in member.list_images(visibility="shared")]
        self.assertEqual(listed, [image.id])
        out = io.BytesIO()
        result = await member.download(image.id, out)
        self.assertEqual((out.getvalue(), result.algorithm), (body, "sha512"))
        with self.assertRaises(Forbidden):
            await member.delete(image.id)
        with self.assertRaises(Forbidden):
            await member.add_member(image.id, "someone-else")
        self.assertEqual(await owner.list_members(image.id), [accepted])


class LiveConnectionTests(LiveClientTestCase):
    async def test_connection_refused(self) -> None:
        """Nothing listening: ConnectionFailed naming the server, not the
        token."""
        port = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
        number = port.getHost().port
        await port.stopListening()
        api = Client(f"http://127.0.0.1:{number}", self.http, reactor, token=TOKEN)
        with self.assertRaises(ConnectionFailed) as caught:
            await api.show(IMAGE_ID)
        message = str(caught.exception)
        self.assertIn(f"Could not reach http://127.0.0.1:{number}: ", message)
        self.assertIn("refused", message)
        self.assertNotIn(TOKEN, message)


class LiveRefusalTests(LiveClientTestCase):
    config_text = f"[DEFAULT]\nimage_size_cap = {MiB}\n"

    async def test_too_large_mid_upload(self) -> None:
        """Data past image_size_cap: RequestEntityTooLarge with the
        server's message, though the body was still being sent."""
        image = await self.api.create(name="big", disk_format="raw", container_format="bare")
        with self.assertRaises(RequestEntityTooLarge) as caught:
            await self.api.upload(image.id, io.BytesIO(data(8 * MiB)), size=8 * MiB)
        self.assertEqual(caught.exception.status, 413)
        self.assertIn("size", caught.exception.message)

    async def test_unauthorized(self) -> None:
        """A token the identity layer does not know: Unauthorized."""
        proxy = await IdentityProxy.start(self.api.url)
        self.addCleanup(proxy.stop)
        api = Client(proxy.url, self.http, reactor, token="nobody-knows-me")
        with self.assertRaises(Unauthorized) as caught:
            await api.show(IMAGE_ID)
        self.assertEqual(caught.exception.message, "unknown token")


def _write_and_close(fd: int, body: bytes) -> None:
    with open(fd, "wb") as f:
        f.write(body)


class ScriptedImageServer(Resource):
    """
    An Images API v2 holding one image, C{body}, whose data answers are
    scripted: the first is cut after C{cut_at} bytes; each later one is
    C{resume_status} (206 as asked, 200 ignoring the Range, 412 as if the
    image had changed), its Content-Range starting at C{range_offset}
    bytes past the one asked for. Every data request's headers are kept.
    """

    isLeaf = True

    def __init__(self, body: bytes, cut_at: int) -> None:
        super().__init__()
        self.body = body
        self.cut_at = cut_at
        self.resume_status = 206
        self.range_offset = 0
        self.unavailable = False
        self.hang = False
        self.etag = b'"v1"'
        self.file_requests: list[Headers] = []

    def document(self) -> dict[str, Any]:
        return {
            "id": IMAGE_ID, "status": "active", "size": len(self.body),
            "checksum": hashlib.md5(self.body).hexdigest(), "os_hash_algo": "sha512",
            "os_hash_value": hashlib.sha512(self.body).hexdigest(),
        }

    def render(self, request: Any) -> Any:
        if self.hang:
            return NOT_DONE_YET
        if self.unavailable:
            request.setResponseCode(503)
            request.setHeader(b"Retry-After", b"30")
            return b"503 Service Unavailable\n\nThe registry is not answering\n\n"
        if request.method == b"PUT":
            self.uploaded = request.content.read()
            request.setResponseCode(204)
            return b""
        if not request.path.endswith(b"/file"):
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps(self.document()).encode()
        self.file_requests.append(request.requestHeaders.copy())
        request.setHeader(b"ETag", self.etag)
        if len(self.file_requests) == 1:
            request.setHeader(b"Content-Length", b"%d" % len(self.body))
            request.write(self.body[: self.cut_at])
            request.channel.transport.loseConnection()
            return NOT_DONE_YET
        if self.resume_status == 503:
            self.resume_status = 206
            request.setResponseCode(503)
            request.setHeader(b"Retry-After", b"20")
            return b'{"error": {"code": 503, "message": "The store is not answering"}}'
        if self.resume_status == 412:
            request.setResponseCode(412)
            return b'{"error": {"code": 412, "message": "If-Match: no current representation matches"}}'
        if self.resume_status == 200:
            return self.body
        start = int(request.getHeader(b"range").split(b"=")[1].rstrip(b"-")) + self.range_offset
        request.setResponseCode(206)
        request.setHeader(b"Content-Range", b"bytes %d-%d/%d" % (start, len(self.body) - 1, len(self.body)))
        return self.body[start:]


IMAGE_ID = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"


class ResumeTests(SynchronousTestCase):
    """How a download resumes, against a scripted server in memory."""

    def setUp(self) -> None:
        self.body = data(300_000, seed=9)
        self.server = ScriptedImageServer(self.body, cut_at=100_000)
        self.http, self.agent = memory_client(Site(self.server))
        self.clock = MemoryReactorClock()
        self.api = Client(BASE, self.http, self.clock, runner=SynchronousRunner())

    def download(self) -> Deferred[Any]:
        self.out = io.BytesIO()
        d = Deferred.fromCoroutine(self.api.download(IMAGE_ID, self.out))
        for _ in range(50):
            if d.called:
                break
            self.agent.flush()
            self.clock.advance(1)
        return d

    def test_resumes_with_range_and_if_match(self) -> None:
        """The second request asks for the rest, on the first's ETag."""
        result = self.successResultOf(self.download())
        self.assertEqual((self.out.getvalue(), result.resumed), (self.body, 1))
        resumed = self.server.file_requests[1]
        self.assertEqual(resumed.getRawHeaders(b"range"), [b"bytes=100000-"])
        self.assertEqual(resumed.getRawHeaders(b"if-match"), [b'"v1"'])

    def test_weak_etag_not_named(self) -> None:
        """A weak ETag never matches If-Match: the resume goes without."""
        self.server.etag = b'W/"v1"'
        self.successResultOf(self.download())
        self.assertIsNone(self.server.file_requests[1].getRawHeaders(b"if-match"))
        self.assertEqual(self.out.getvalue(), self.body)

    def test_server_ignoring_range(self) -> None:
        """A 200 to the resume: what had arrived is skipped, not doubled."""
        self.server.resume_status = 200
        result = self.successResultOf(self.download())
        self.assertEqual((self.out.getvalue(), result.resumed), (self.body, 1))

    def test_unavailable_while_resuming(self) -> None:
        """A 503 to a resume is waited out as its Retry-After says (not
        the shorter resume_delay), then the download resumes again."""
        self.server.resume_status = 503
        self.out = io.BytesIO()
        d = Deferred.fromCoroutine(self.api.download(IMAGE_ID, self.out))
        for _ in range(5):
            self.agent.flush()
            self.clock.advance(1)
        self.assertEqual(len(self.server.file_requests), 2)
        self.clock.advance(14)
        self.agent.flush()
        self.assertEqual(len(self.server.file_requests), 2)
        for _ in range(10):
            self.agent.flush()
            self.clock.advance(1)
        result = self.successResultOf(d)
        self.assertEqual((self.out.getvalue(), result.resumed), (self.body, 2))
        self.assertEqual(len(self.server.file_requests), 3)

    def test_image_changed(self) -> None:
        """A 412 to the resume (the ETag moved): PreconditionFailed, and
        nothing spliced on."""
        self.server.resume_status = 412
        error = self.failureResultOf(self.download(), PreconditionFailed).value
        self.assertIn("If-Match", error.message)
        self.assertTrue(self.body[:100_000].startswith(self.out.getvalue()))

    def test_wrong_content_range(self) -> None:
        """A 206 from another offset than asked is refused, not spliced."""
        self.server.range_offset = 10
        self.failureResultOf(self.download(), ClientError)

    def test_timeout(self) -> None:
        """No answer within the timeout: TimedOut, a ConnectionFailed."""
        self.server.hang = True
        api = Client(BASE, self.http, self.clock, runner=SynchronousRunner(), timeout=5)
        d = Deferred.fromCoroutine(api.show(IMAGE_ID))
        self.agent.flush()
        self.clock.advance(4)
        self.assertNoResult(d)
        self.clock.advance(1)
        error = self.failureResultOf(d, TimedOut).value
        self.assertIsInstance(error, ConnectionFailed)
        self.assertIn("within 5 seconds", str(error))

    def paced_upload(self, steps: int, reads: int) -> Deferred[None]:
        """
        Upload 50 bytes in blocks of 10 with a timeout of 5 s, the runner
        doing one file read per 4 s step, C{reads} reads at most.
        """
        runner = ManualRunner()
        api = Client(BASE, self.http, self.clock, runner=runner, timeout=5, block_size=10)
        d = Deferred.fromCoroutine(api.upload(IMAGE_ID, io.BytesIO(b"x" * 50)))
        for _ in range(steps):
            if runner.pending() and reads:
                reads -= 1
                runner.run_one()
            self.agent.flush()
            self.clock.advance(4)
        return d

    def test_upload_timeout_bounds_silence_not_the_upload(self) -> None:
        """An upload that keeps sending outlasts the timeout unharmed."""
        self.successResultOf(self.paced_upload(steps=12, reads=100))
        self.assertEqual(self.server.uploaded, b"x" * 50)

    def test_read_reported_after_the_answer(self) -> None:
        """
        A block read that the body reports after the server has answered
        (a 413 that arrives while the file is still being read) finds the
        idle timer gone instead of resetting a cancelled one.
        """
        import glance_tx.client.transport as transport

        reports: list[Callable[[int, int | None], None]] = []

        def keeping(*args: Any) -> FileBody:
            reports.append(args[-1])
            return FileBody(*args)

        self.patch(transport, "FileBody", keeping)
        self.successResultOf(self.paced_upload(steps=12, reads=100))
        reports[0](50, 50)  # raised AlreadyCancelled

    def test_upload_stalled(self) -> None:
        """An upload that sends nothing for the timeout: TimedOut."""
        error = self.failureResultOf(self.paced_upload(steps=6, reads=3), TimedOut).value
        self.assertIn("after 20 bytes", str(error))

    def test_upload_file_shorter_than_size(self) -> None:
        """A file that ends before the size given: the client's own error
        (not Twisted's wrapper), saying how far it got."""
        d = Deferred.fromCoroutine(self.api.upload(IMAGE_ID, io.BytesIO(b"abc"), size=10))
        self.agent.flush()
        error = self.failureResultOf(d, ClientError).value
        self.assertIn("after 3 of the 10 bytes", str(error))

    def test_cancel(self) -> None:
        """A caller's cancel is a CancelledError, not a ConnectionFailed."""
        self.server.hang = True
        d = Deferred.fromCoroutine(self.api.show(IMAGE_ID))
        self.agent.flush()
        d.cancel()
        self.failureResultOf(d, CancelledError)

    def test_service_unavailable(self) -> None:
        """A 503 carries the server's message and its Retry-After."""
        self.server.unavailable = True
        d = Deferred.fromCoroutine(self.api.show(IMAGE_ID))
        self.agent.flush()
        error = self.failureResultOf(d, ServiceUnavailable).value
        self.assertEqual((error.message, error.retry_after), ("The registry is not answering", 30))


#: A script with no reactor of its own: the facade, as a user runs it.
SCRIPT = """
import json, sys
from glance_tx.client import NotFound
from glance_tx.client.blocking import BlockingClient

url, source, dest = sys.argv[1:]
with BlockingClient.connect(url, token="t", timeout=30) as glance:
    image = glance.create(name="scripted", disk_format="raw", container_format="bare")
    glance.upload(image.id, source)
    result = glance.download(image.id, dest)
    try:
        glance.show("00000000-0000-4000-8000-000000000000")
        missing = None
    except NotFound as e:
        missing = e.status
    names = [i.name for i in glance.list_images(page_size=1)]
print(json.dumps({"id": image.id, "hash": result.hexdigest, "missing": missing, "names": names}))
"""


class BlockingClientTests(LiveClientTestCase):
    """The blocking facade against a real server."""

    async def test_from_a_worker_thread(self) -> None:
        """In a Twisted program, from a worker thread, on the running
        reactor: every call blocks until done; values and errors typed;
        the listing fetched lazily."""
        glance = BlockingClient(self.api)
        body = data(2 * MiB + 1, seed=11)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(body)

        def script() -> tuple[Any, ...]:
            made = [glance.create(name=f"b{n}", disk_format="raw", container_format="bare")
                    for n in range(3)]
            glance.upload(made[0].id, path)
            out = io.BytesIO()
            result = glance.download(made[0].id, out)
            listed = glance.list_images(page_size=1, sort_key="name", sort_dir="asc")
            first = next(listed)
            listed.close()
            try:
                glance.show(IMAGE_ID)
            except NotFound as e:
                missing = e
            return out.getvalue(), result, first.name, missing

        got, result, first, missing = await deferToThread(script)
        self.assertEqual(got, body)
        self.assertEqual(result.hexdigest, hashlib.sha512(body).hexdigest())
        self.assertEqual(first, "b0")
        self.assertEqual(missing.status, 404)

    async def test_reactor_thread_calls(self) -> None:
        """ReactorThread.call returns a plain result, a Deferred's and a
        coroutine's, and raises what they raised, in the calling thread."""
        thread = ReactorThread(reactor)

        async def coroutine() -> str:
            await deferLater(reactor, 0.01)
            return "awaited"

        def calls() -> tuple[Any, ...]:
            plain = thread.call(lambda: "plain")
            deferred = thread.call(deferLater, reactor, 0.01, lambda: "deferred")
            awaited = thread.call(coroutine)
            try:
                thread.call(lambda: 1 / 0)
            except ZeroDivisionError as e:
                raised = e
            return plain, deferred, awaited, raised

        plain, deferred, awaited, raised = await deferToThread(calls)
        self.assertEqual((plain, deferred, awaited), ("plain", "deferred", "awaited"))
        self.assertIsInstance(raised, ZeroDivisionError)

    def test_not_from_the_reactor_thread(self) -> None:
        """From the reactor thread a blocking call would deadlock: refused."""
        with self.assertRaises(RuntimeError):
            BlockingClient(self.api).show(IMAGE_ID)

    async def test_script_without_a_reactor(self) -> None:
        """
        A plain script (a subprocess) connects, uploads from a path,
        downloads verified, gets NotFound typed, lists, and exits by
        itself once done: the reactor thread stops with the main thread.
        """
        body = data(3 * MiB, seed=12)
        source = os.path.abspath(self.mktemp())
        with open(source, "wb") as f:
            f.write(body)
        dest = os.path.abspath(self.mktemp())
        script = os.path.abspath(self.mktemp())
        with open(script, "w") as f:
            f.write(SCRIPT)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        out, err, code = await getProcessOutputAndValue(
            sys.executable, [script, self.api.url, source, dest], env=env, reactor=reactor
        )
        self.assertEqual(code, 0, err.decode())
        report = json.loads(out)
        self.assertEqual(report["hash"], hashlib.sha512(body).hexdigest())
        self.assertEqual((report["missing"], report["names"]), (404, ["scripted"]))
        with open(dest, "rb") as f:
            self.assertEqual(f.read(), body)


INTERRUPTED_SCRIPT = """
import sys
from glance_tx.client.blocking import BlockingClient

glance = BlockingClient.connect(sys.argv[1], timeout=None)
try:
    glance.show("3f2504e0-4f89-41d3-9a0c-0305e82c3301")
except KeyboardInterrupt:
    print("interrupted", flush=True)
    # Still running: only the cancel can have closed the request.
    sys.stdin.read()
"""


class _Hanging(Resource):
    """Answers nothing; fires C{seen} on a request, C{lost} when it goes."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def render(self, request: Any) -> Any:
        request.notifyFinish().addBoth(lambda _: self.lost.callback(None))
        self.seen.callback(None)
        return NOT_DONE_YET


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)


class InterruptTests(TestCase):
    timeout = 60

    async def test_ctrl_c_cancels_the_call(self) -> None:
        """Ctrl-C in a script blocked on a call raises KeyboardInterrupt
        there and cancels the request: the server sees it go while the
        script still runs."""
        hanging = _Hanging()
        site = Site(hanging)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        script = os.path.abspath(self.mktemp())
        with open(script, "w") as f:
            f.write(INTERRUPTED_SCRIPT)
        collect = _Collect()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        process = reactor.spawnProcess(
            collect, sys.executable,
            [sys.executable, script, f"http://127.0.0.1:{port.getHost().port}"], env=env,
        )
        await hanging.seen
        process.signalProcess("INT")
        for _ in range(500):
            if hanging.lost.called:
                break
            await deferLater(reactor, 0.02)
        self.assertTrue(hanging.lost.called, "the request outlived the interrupt")
        self.assertFalse(collect.ended.called)
        process.closeStdin()
        self.assertEqual(await collect.ended, 0)
        self.assertEqual(collect.out.strip(), b"interrupted")
