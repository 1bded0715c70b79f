"""
L{glance_tx.client.V1Client}: the Images API v1 through the client.

In memory against glance-tx's real site (its v1 app), and over a real
socket against a real server for the streaming, a cut download resumed
and the blocking client's C{version=1}. glance-tx's v1 has no member
routes, so the members are checked against a scripted server that
answers as Glance v1 does.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

from attrs import define
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site

from glance_tx.client import (
    Client,
    ClientError,
    ImageInfo,
    MemberInfo,
    NotFound,
    PreconditionFailed,
    V1Client,
)
from glance_tx.client.blocking import BlockingClient
from glance_tx.client.v1 import document_from_headers, meta_headers
from glance_tx.threads import SynchronousRunner
from tests.api_fixtures import BASE
from tests.memory_http import memory_client
from tests.test_client import (
    LiveClientTestCase,
    MemoryClientTestCase,
    MiB,
    NullFile,
    data,
)


class V1MemoryTests(MemoryClientTestCase):
    """Against glance-tx's v1 app, in memory."""

    def setUp(self) -> None:
        super().setUp()
        self.v1 = V1Client(BASE, self.client, self.clock, token="t", runner=SynchronousRunner())

    def made(self, **fields: Any) -> ImageInfo:
        fields.setdefault("disk_format", "raw")
        fields.setdefault("container_format", "bare")
        return self.wait(self.v1.create(**fields))

    def test_create_and_show(self) -> None:
        """A create sends x-image-meta-* headers; a HEAD reads them back typed; v2 agrees."""
        image = self.made(name="old", visibility="public", min_ram=64, protected=True, os_distro="cirros")
        shown = self.wait(self.v1.show(image.id))
        self.assertEqual(
            (shown.name, shown.status, shown.visibility, shown.min_ram, shown.protected,
             dict(shown.properties)),
            ("old", "queued", "public", 64, True, {"os_distro": "cirros"}),
        )
        self.assertEqual(shown.created_at, image.created_at)
        self.assertIsNotNone(shown.created_at and shown.created_at.tzinfo)
        self.assertEqual(self.wait(self.api.show(image.id)).properties["os_distro"], "cirros")

    def test_url_forms(self) -> None:
        """With or without /v1 (or /v2) the endpoint is the same."""
        for url in [BASE, BASE + "/v1", BASE + "/v1/", BASE + "/v2"]:
            self.assertEqual(V1Client(url, self.client, self.clock, runner=SynchronousRunner()).url, BASE)

    def test_list_pages_and_filters(self) -> None:
        """Pages follow the last id as marker; a property filter is property-KEY."""
        for n in range(3):
            self.made(name=f"v1-{n}", batch="listed")
        self.made(name="other", batch="not")

        async def listing() -> list[str]:
            return [
                image.name or ""
                async for image in self.v1.list_images(
                    page_size=2, batch="listed", sort_key="name", sort_dir="asc"
                )
            ]

        self.assertEqual(self.wait(listing()), ["v1-0", "v1-1", "v1-2"])

    def test_update_sets_and_removes(self) -> None:
        """Set a field and a property; remove a property (read, then replaced under If-Match)."""
        image = self.made(name="before", keep="yes", gone="soon")
        updated = self.wait(self.v1.update(image.id, {"name": "after", "added": "1"}, ["gone"]))
        self.assertEqual(
            (updated.name, dict(updated.properties)), ("after", {"keep": "yes", "added": "1"})
        )
        self.assertEqual(dict(self.wait(self.v1.show(image.id)).properties), {"keep": "yes", "added": "1"})

    def test_upload_download_delete(self) -> None:
        """Data up and down, checked against the md5 v1 carries; then deleted: NotFound."""
        image = self.made(name="data")
        body = data(300_000, seed=21)
        self.wait(self.v1.upload(image.id, io.BytesIO(body)))
        shown = self.wait(self.v1.show(image.id))
        self.assertEqual((shown.status, shown.size, shown.checksum), ("active", len(body), hashlib.md5(body).hexdigest()))
        out = io.BytesIO()
        result = self.wait(self.v1.download(image.id, out))
        self.assertEqual((out.getvalue(), result.algorithm), (body, "md5"))
        self.wait(self.v1.delete(image.id))
        self.failure(self.v1.show(image.id), NotFound)

    def test_not_in_v1(self) -> None:
        """What v1 lacks is a ClientError saying so, sent to no server."""
        image = self.made(name="plain")
        sent = self.requests()
        for call in [
            self.v1.add_tag(image.id, "t"), self.v1.stores(), self.v1.import_methods(),
            self.v1.update_member(image.id, "p", "accepted"), self.v1.create(tags=["t"]),
            self.v1.create(visibility="community"),
        ]:
            self.assertIn("v1 has no", str(self.failure(call, ClientError)))
        self.assertEqual(self.requests(), sent)


class V1HeadersTests(SynchronousTestCase):
    """The header spelling, both ways."""

    def test_meta_headers(self) -> None:
        """Core fields under x-image-meta-, the rest as properties; visibility as is_public."""
        self.assertEqual(
            meta_headers({"name": "n", "visibility": "public", "min_ram": 5, "os_type": "linux"}),
            {
                "x-image-meta-name": "n", "x-image-meta-is_public": "True",
                "x-image-meta-min_ram": "5", "x-image-meta-property-os_type": "linux",
            },
        )

    def test_document_from_headers(self) -> None:
        """Numbers and flags typed, an empty value None, properties apart."""
        headers = Headers({
            b"X-Image-Meta-Id": [b"i"], b"X-Image-Meta-Size": [b"12"], b"X-Image-Meta-Is_public": [b"False"],
            b"X-Image-Meta-Protected": [b"True"], b"X-Image-Meta-Name": [b""],
            b"X-Image-Meta-Property-Os_type": [b"linux"], b"ETag": [b'"x"'],
        })
        self.assertEqual(
            document_from_headers(headers),
            {"id": "i", "size": 12, "is_public": False, "protected": True, "name": None,
             "properties": {"os_type": "linux"}},
        )


class _V1Members(Resource):
    """Glance v1's member routes for one image, as it answers them."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.members: list[str] = []
        self.seen: list[tuple[bytes, bytes]] = []

    def render(self, request: Any) -> bytes:
        self.seen.append((request.method, request.path))
        parts = request.path.decode().split("/")  # /v1/images/ID/members[/MEMBER]
        if request.method == b"GET":
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps(
                {"members": [{"member_id": m, "can_share": False} for m in self.members]}
            ).encode()
        if request.method == b"PUT":
            self.members.append(parts[5])
        elif request.method == b"DELETE":
            self.members.remove(parts[5])
        request.setResponseCode(204)
        return b""


class V1MemberTests(SynchronousTestCase):
    def test_members(self) -> None:
        """Add (PUT), list, remove (DELETE) on Glance v1's paths; members read as accepted."""
        server = _V1Members()
        http, agent = memory_client(Site(server))
        v1 = V1Client(BASE, http, MemoryReactorClock(), runner=SynchronousRunner())

        def wait(coroutine: Any) -> Any:
            from twisted.internet.defer import Deferred

            d = Deferred.fromCoroutine(coroutine)
            agent.flush()
            return self.successResultOf(d)

        added = wait(v1.add_member("img", "proj"))
        self.assertEqual(added, MemberInfo("img", "proj", "accepted"))
        self.assertEqual(wait(v1.list_members("img")), [MemberInfo("img", "proj", "accepted")])
        wait(v1.remove_member("img", "proj"))
        self.assertEqual(wait(v1.list_members("img")), [])
        self.assertEqual(
            server.seen,
            [(b"PUT", b"/v1/images/img/members/proj"), (b"GET", b"/v1/images/img/members"),
             (b"DELETE", b"/v1/images/img/members/proj"), (b"GET", b"/v1/images/img/members")],
        )


class V1LiveTests(LiveClientTestCase):
    """Against a real server over a real socket."""

    def v1(self, url: str | None = None, **settings: Any) -> V1Client:
        from twisted.internet import reactor

        return V1Client(url or self.api.url, self.http, reactor, token="t", **settings)

    async def test_stream_up_and_down(self) -> None:
        """8 MiB from a path up, down to a path verified by md5, what v2 sees too."""
        body = data(8 * MiB, seed=22)
        source = self.mktemp()
        with open(source, "wb") as f:
            f.write(body)
        v1 = self.v1()
        image = await v1.create(name="v1-live", disk_format="raw", container_format="bare")
        await v1.upload(image.id, source)
        dest = self.mktemp()
        result = await v1.download(image.id, dest)
        with open(dest, "rb") as f:
            self.assertEqual(f.read(), body)
        self.assertEqual(result.hexdigest, hashlib.md5(body).hexdigest())
        self.assertEqual((await self.api.show(image.id)).checksum, result.hexdigest)

    async def test_cut_download_resumes(self) -> None:
        """A v1 download cut mid-way resumes with Range and still checks."""
        image = await self.uploaded(data(4 * MiB, seed=23))
        relay = self.relay(cut_after=MiB)
        out = NullFile()
        result = await self.v1(relay.url, resume_delay=0.01).download(image.id, out)
        self.assertEqual((result.resumed, out.written, result.hexdigest), (1, 4 * MiB, image.checksum))
        self.assertIn(b"range: bytes=", relay.file_requests()[1].lower())

    async def test_changed_between_read_and_write(self) -> None:
        """A property removal whose image changed after the read is refused, not lost."""
        from twisted.internet import reactor

        v1 = _Raced(self.api.url, self.http, reactor, token="t", meanwhile=self.api)
        image = await v1.create(name="racing", disk_format="raw", container_format="bare", a="1")
        with self.assertRaises(PreconditionFailed):
            await v1.update(image.id, remove=["a"])
        self.assertEqual((await self.api.show(image.id)).properties.get("a"), "1")

    async def test_blocking_version_1(self) -> None:
        """BlockingClient.connect(version=1) speaks v1 (a HEAD for show)."""
        image = await self.uploaded(b"blocking v1")

        def script() -> ImageInfo:
            with BlockingClient.connect(self.api.url, token="t", version=1) as glance:
                assert isinstance(glance.client, V1Client)
                return glance.show(image.id)

        shown = await deferToThread(script)
        self.assertEqual((shown.id, shown.checksum), (image.id, image.checksum))


@define
class _Raced(V1Client):
    """A v1 client whose every read of an image is followed by a v2 rename of it."""

    meanwhile: Client | None = None

    async def _head(self, image_id: str) -> Headers:
        headers = await super()._head(image_id)
        if self.meanwhile is not None:
            await self.meanwhile.update(image_id, {"name": "changed meanwhile"})
        return headers
