"""
Interoperable import over real sockets: a glance-tx with two filesystem
stores, stage and import through treq, web-download from a loopback web
server (allowed by C{[import_filtering_opts]}, and refused by the guard
when not), copy-image into the second store, and
C{glance image-create-via-import} with glance-direct and web-download.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from tests.live_server import LiveServerTestCase, MiB, pattern_bytes
from tests.test_clients_glanceclient import GlanceCLITestCase, list_table, show_table

DATA = pattern_bytes(3 * MiB + 17)
RAW = {"disk_format": "raw", "container_format": "bare"}


class _ImportServer:
    """What both live test cases share: their config and the web server."""

    #: [import_filtering_opts] lets web-download reach loopback.
    allow_loopback = True

    def import_config(self) -> str:
        second = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        text = (
            "[DEFAULT]\nenabled_backends = file:file, second:file\n"
            f"[second]\nfilesystem_store_datadir = {second}\n"
        )
        if self.allow_loopback:
            text += "[import_filtering_opts]\nhttp_store_allowed_networks = 127.0.0.0/8\n"
        return text

    def serve(self, data: bytes) -> str:
        """A loopback web server with C{data} at /disk.raw; its URL."""
        root = Resource()
        root.putChild(b"disk.raw", Data(data, "application/octet-stream"))
        port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(port.stopListening)  # type: ignore[attr-defined]
        return f"http://127.0.0.1:{port.getHost().port}/disk.raw"


class _ImportLiveCase(_ImportServer, LiveServerTestCase):
    def setUp(self) -> Deferred[None]:
        self.config_text = self.import_config()
        return super().setUp()

    async def settled(self, image_id: str) -> dict[str, Any]:
        """The image once its import has ended (at most about 20 s)."""
        for _ in range(400):
            image = await self.image(image_id)
            assert image is not None
            if image["status"] in ("active", "queued") and not image.get(
                "os_glance_importing_to_stores"
            ):
                return image
            await deferLater(reactor, 0.05)
        self.fail(f"import of {image_id} never ended: {image}")

    async def download(self, image_id: str) -> bytes:
        response = await self.treq.get(f"{self.base}/v2/images/{image_id}/file")
        body: bytes = await response.content()
        return body


class ImportLiveTests(_ImportLiveCase):
    async def test_glance_direct(self) -> None:
        """Stage (204, uploading), import (202), then active in the store asked."""
        code, image = await self.api("POST", "/v2/images", json_body={"name": "d", **RAW})
        self.assertEqual(code, 201)
        response = await self.treq.put(
            f"{self.base}/v2/images/{image['id']}/stage",
            data=DATA,
            headers={"Content-Type": ["application/octet-stream"]},
        )
        await response.content()
        self.assertEqual(response.code, 204)
        staged = await self.image(image["id"])
        assert staged is not None
        self.assertEqual(staged["status"], "uploading")
        code, _ = await self.api(
            "POST", f"/v2/images/{image['id']}/import",
            json_body={"method": {"name": "glance-direct"}, "stores": ["second"]},
        )
        self.assertEqual(code, 202)
        done = await self.settled(image["id"])
        self.assertEqual((done["status"], done["stores"], done["size"]), ("active", "second", len(DATA)))
        self.assertEqual(await self.download(image["id"]), DATA)

    async def test_web_download_from_loopback(self) -> None:
        """A URL on an allowed loopback server is fetched and becomes the image."""
        url = self.serve(DATA)
        code, image = await self.api("POST", "/v2/images", json_body={"name": "w", **RAW})
        code, _ = await self.api(
            "POST", f"/v2/images/{image['id']}/import",
            json_body={"method": {"name": "web-download", "uri": url}},
        )
        self.assertEqual(code, 202)
        done = await self.settled(image["id"])
        self.assertEqual((done["status"], done["size"]), ("active", len(DATA)), done)
        self.assertEqual(await self.download(image["id"]), DATA)

    async def test_copy_image(self) -> None:
        """copy-image puts an active image's data into the second store too."""
        code, image = await self.api("POST", "/v2/images", json_body={"name": "c", **RAW})
        response = await self.treq.put(
            f"{self.base}/v2/images/{image['id']}/file",
            data=DATA,
            headers={"Content-Type": ["application/octet-stream"]},
        )
        await response.content()
        self.assertEqual(response.code, 204)
        code, _ = await self.api(
            "POST", f"/v2/images/{image['id']}/import",
            json_body={"method": {"name": "copy-image"}, "stores": ["second"]},
        )
        self.assertEqual(code, 202)
        done = await self.settled(image["id"])
        self.assertEqual((done["status"], done["stores"]), ("active", "file,second"), done)


class GuardRefusalTests(_ImportLiveCase):
    """Without [import_filtering_opts] the guard keeps web-download off loopback."""

    allow_loopback = False

    async def test_web_download_from_loopback(self) -> None:
        """The loopback URL is refused: queued again, the store's failure recorded."""
        url = self.serve(DATA)
        code, image = await self.api("POST", "/v2/images", json_body={"name": "w", **RAW})
        code, _ = await self.api(
            "POST", f"/v2/images/{image['id']}/import",
            json_body={"method": {"name": "web-download", "uri": url}},
        )
        self.assertEqual(code, 202)
        done = await self.settled(image["id"])
        self.assertEqual((done["status"], done["os_glance_failed_import"]), ("queued", "file"), done)


class GlanceclientImportTests(_ImportServer, GlanceCLITestCase):
    """C{glance image-create-via-import} with each method glance-direct and web-download."""

    def setUp(self) -> Deferred[None]:
        self.config_text = self.import_config()
        return super().setUp()

    async def settled_active(self, image_id: str) -> dict[str, Any]:
        for _ in range(400):
            image = await self.image(image_id)
            assert image is not None
            if image["status"] in ("active", "queued"):
                return image
            await deferLater(reactor, 0.05)
        self.fail(f"import of {image_id} never ended")

    async def test_glance_direct(self) -> None:
        """The client stages the file and imports it: the image ends active."""
        path, md5, sha512 = await self.make_file("disk.raw", 2 * MiB)
        run = await self.glance(
            "image-create-via-import", "--name", "gd", "--disk-format", "raw",
            "--container-format", "bare", "--import-method", "glance-direct", "--file", path,
        )
        image_id = show_table(run.out)["id"]
        self.assertIn(f"/v2/images/{image_id}/stage", run.paths("PUT"), run)
        self.assertIn(f"/v2/images/{image_id}/import", run.paths("POST"), run)
        image = await self.settled_active(image_id)
        self.assertEqual((image["status"], image["checksum"], image["os_hash_value"]), ("active", md5, sha512))

        # With several stores Images API 2.12 is listed, and the client
        # then reads the import's task (it checks /versions first).
        run = await self.glance("--verbose", "image-tasks", image_id)
        self.assertEqual(run.paths("GET")[-2:], ["/versions", f"/v2/images/{image_id}/tasks"], run)
        [task] = list_table(run.out)
        self.assertEqual((task["Image Id"], task["Status"]), (image_id, "success"), run)

    async def test_web_download(self) -> None:
        """The client asks for a web-download of a loopback URL: active."""
        url = self.serve(DATA)
        run = await self.glance(
            "image-create-via-import", "--name", "wd", "--disk-format", "raw",
            "--container-format", "bare", "--import-method", "web-download", "--uri", url,
        )
        image_id = show_table(run.out)["id"]
        image = await self.settled_active(image_id)
        self.assertEqual((image["status"], image["size"]), ("active", len(DATA)), run)
