"""
C{GET /v2/info/stores} and C{/v2/info/stores/detail}, and the image's
C{stores} field: what a client reads to choose C{X-Image-Meta-Store} and to
see where an image's data lives, in Glance 33's shapes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.python.filepath import FilePath

from glance_tx.store.backends import StoreMap
from glance_tx.store.filesystem import FilesystemStore
from glance_tx.store.http import HTTPStore
from glance_tx.store.s3 import S3Store
from glance_tx.store.s3_client import S3Client, S3Credentials
from glance_tx.threads import SynchronousRunner
from tests.test_api_v2 import V2TestCase

MEMBER = {"X-Project-Id": "someone", "X-Roles": "member"}


class StoresInfoTests(V2TestCase):
    """A site with C{fast} (file, default), C{bulk} (S3) and C{web} (HTTP)."""

    def make_stores(self) -> StoreMap:
        reactor = MemoryReactorClock()
        self.bulk = S3Store(
            client=S3Client(
                http=None,  # type: ignore[arg-type]  # unused: no request is made
                reactor=reactor,
                endpoint="http://127.0.0.1:1",
                region="us-east-1",
                credentials=S3Credentials("access", "secret"),
            ),
            bucket="images",
            large_object_size=64 << 20,
            part_size=16 << 20,
            runner=SynchronousRunner(),
        )
        self.web = HTTPStore(agent=None, clock=reactor)  # type: ignore[arg-type]
        return StoreMap(
            {"fast": self.store, "bulk": self.bulk, "web": self.web},
            "fast",
            types={"fast": "file", "bulk": "s3", "web": "http"},
            descriptions={"fast": "Local disk"},
        )

    def store_list(self, path: str, headers: dict[str, str] | None = None) -> Any:
        answer = self.request("GET", path, headers)
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(answer.header("Content-Type"), "application/json")
        return answer.json()["stores"]

    def test_stores(self) -> None:
        """
        Every enabled store in order, with its description when it has one,
        C{"default": "true"} on the default and C{"read-only": "true"} on
        the HTTP store, as Glance writes them; anyone may ask.
        """
        self.assertEqual(
            self.store_list("/v2/info/stores", MEMBER),
            [
                {"id": "fast", "description": "Local disk", "default": "true"},
                {"id": "bulk"},
                {"id": "web", "read-only": "true"},
            ],
        )

    def test_detail_for_admins(self) -> None:
        """
        The detail adds each store's type, weight and the settings it runs
        with: the file store's directory and read size, S3's object sizes
        in bytes; the HTTP store has none.
        """
        fast, bulk, web = self.store_list("/v2/info/stores/detail")
        self.assertEqual(fast["type"], "file")
        self.assertEqual(
            fast["properties"],
            {"data_dir": self.store_root.path, "chunk_size": self.store.block_size,
             "thin_provisioning": False},
        )
        self.assertEqual(bulk["type"], "s3")
        self.assertEqual(bulk["properties"]["s3_store_large_object_size"], 64 << 20)
        self.assertEqual(bulk["properties"]["s3_store_large_object_chunk_size"], 16 << 20)
        self.assertEqual((web["type"], web["properties"], web["read-only"]), ("http", {}, "true"))
        self.assertEqual({fast["weight"], bulk["weight"], web["weight"]}, {0})
        self.assertEqual(fast["default"], "true")

    def test_detail_refused_to_others(self) -> None:
        """A project without the admin role gets 403 with the JSON error body."""
        answer = self.request("GET", "/v2/info/stores/detail", MEMBER)
        self.assertError(answer, 403, "admin")

    def test_detail_never_shows_credentials(self) -> None:
        """The S3 store's keys appear nowhere in the detail."""
        body = self.request("GET", "/v2/info/stores/detail").body
        self.assertNotIn(b"secret", body)
        self.assertNotIn(b"access", body)


    def test_upload_to_read_only_store_refused(self) -> None:
        """
        An upload naming the read-only HTTP store is a 400 that says so,
        decided before the image changes: it stays queued, ready for an
        upload to a store that takes one.
        """
        image = self.create()
        answer = self.upload(image["id"], b"data", {"X-Image-Meta-Store": "web"})
        self.assertError(answer, 400, "read-only")
        self.assertEqual(self.show(image["id"])["status"], "queued")
        self.assertEqual(self.upload(image["id"], b"data").code, 204)


class ImageStoresFieldTests(V2TestCase):
    """The image document says which stores hold its data."""

    def make_stores(self) -> StoreMap:
        self.bulk = FilesystemStore(FilePath(self.mktemp()).path, self.runner)
        return StoreMap({"fast": self.store, "bulk": self.bulk}, "fast")

    def test_stores_field(self) -> None:
        """
        An image uploaded to C{bulk} shows C{"stores": "bulk"}; one without
        data shows no C{stores} at all, as Glance.
        """
        queued = self.create()
        self.assertNotIn("stores", queued)
        image = self.create()
        self.assertEqual(self.upload(image["id"], b"x", {"X-Image-Meta-Store": "bulk"}).code, 204)
        self.assertEqual(self.show(image["id"])["stores"], "bulk")
        listed = self.request("GET", "/v2/images").json()["images"]
        self.assertEqual({i["id"]: i.get("stores") for i in listed},
                         {queued["id"]: None, image["id"]: "bulk"})

    def test_patch_stores(self) -> None:
        """
        What openstacksdk's C{update_image} sends for an image it was shown
        with C{stores}: C{remove /stores} next to the real change. As in
        Glance 33 with C{enabled_backends}, the patch is refused whole with
        409 (the image has no property C{stores}), and so is a replace with
        the value shown; nothing changes.
        """
        image = self.create()
        self.assertEqual(self.upload(image["id"], b"x").code, 204)
        shown = self.show(image["id"])
        self.assertEqual(shown["stores"], "fast")
        for operations in (
            [{"op": "add", "path": "/colour", "value": "blue"},
             {"op": "remove", "path": "/stores"}],
            [{"op": "replace", "path": "/stores", "value": "fast"}],
        ):
            self.assertError(self.patch(image["id"], operations), 409,
                             "Property stores does not exist.")
        self.assertNotIn("colour", self.show(image["id"]))
        answer = self.patch(image["id"], [{"op": "add", "path": "/stores", "value": "bulk"}])
        self.assertError(answer, 403, "Attribute 'stores' is read-only.")


class OneStoreTests(V2TestCase):
    """
    The default configuration, one store: like Glance without
    C{enabled_backends}, no image shows C{stores}, so what a client sends
    back does not name it.
    """

    def test_no_stores_field(self) -> None:
        """An active image (in a show, a listing, a patch's answer) has no C{stores}."""
        image = self.active()
        self.assertEqual(image["status"], "active")
        self.assertNotIn("stores", image)
        listed = self.request("GET", "/v2/images").json()["images"]
        self.assertEqual([i.get("stores", "absent") for i in listed], ["absent"])
        answer = self.patch(image["id"], [{"op": "add", "path": "/colour", "value": "blue"}])
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(answer.json()["colour"], "blue")
        self.assertNotIn("stores", answer.json())

    def test_patch_stores(self) -> None:
        """
        With no C{stores} shown, a patch naming it is refused as Glance
        refuses a property that does not exist: 409 for a remove or replace,
        and not the 403 of a read-only field.
        """
        image = self.active()
        for operations in ([{"op": "remove", "path": "/stores"}],
                           [{"op": "replace", "path": "/stores", "value": "file"}]):
            self.assertError(self.patch(image["id"], operations), 409,
                             "Property stores does not exist.")
