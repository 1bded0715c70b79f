"""
Each image location records the id of the store holding it, so two stores
of one type (two filesystem stores here) do not collide: data is read and
deleted from the store it was written to, not from the first store whose
URI scheme matches. Through the whole site in memory.
"""

from __future__ import annotations

from datetime import UTC, datetime

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from glance_tx import images
from glance_tx.errors import StoreError
from glance_tx.images import Image, Location, new_image_id
from glance_tx.store.backends import StoreMap
from glance_tx.store.filesystem import FilesystemStore
from glance_tx.threads import SynchronousRunner
from tests.api_fixtures import V1_RAW_BARE, SiteTestCase
from tests.test_api_v2 import V2TestCase

OCTET = {"Content-Type": "application/octet-stream"}


class TwoFileStoresTests(V2TestCase):
    """A site with stores C{fast} (the default) and C{bulk}, both files."""

    def make_stores(self) -> StoreMap:
        self.bulk_root = FilePath(self.mktemp())
        self.bulk = FilesystemStore(self.bulk_root.path, self.runner)
        return StoreMap({"fast": self.store, "bulk": self.bulk}, "fast")

    def files(self, root: FilePath[str]) -> list[str]:
        return sorted(p.basename() for p in root.walk() if p.isfile()) if root.exists() else []

    def test_upload_to_named_store(self) -> None:
        """
        Data uploaded with C{X-Image-Meta-Store: bulk} lands in that store,
        its location records C{bulk}, downloads read it from there and a
        delete removes it from there.
        """
        image = self.create()
        answer = self.upload(image["id"], b"bulky data", {"X-Image-Meta-Store": "bulk"})
        self.assertEqual(answer.code, 204, answer.body)
        record = self.successResultOf(self.registry.get(image["id"]))
        [location] = record.locations
        self.assertEqual(location.store, "bulk")
        self.assertEqual(location.url, self.bulk.location_for(image["id"]))
        self.assertEqual(self.files(self.bulk_root), [image["id"]])
        self.assertEqual(self.files(self.store_root), [])
        download = self.request("GET", f"/v2/images/{image['id']}/file")
        self.assertEqual(download.body, b"bulky data")
        self.assertEqual(self.request("DELETE", f"/v2/images/{image['id']}").code, 204)
        self.assertEqual(self.files(self.bulk_root), [])

    def test_upload_to_default_store(self) -> None:
        """Without a store named, the location records the default store's id."""
        image = self.create()
        self.assertEqual(self.upload(image["id"], b"quick").code, 204)
        [location] = self.successResultOf(self.registry.get(image["id"])).locations
        self.assertEqual(location, Location(self.store.location_for(image["id"]), "fast"))

    def test_location_without_store(self) -> None:
        """
        A location recorded before store ids (no store) is read from the
        store its URL's scheme names, the default one first.
        """
        image_id = new_image_id()
        writer = self.successResultOf(self.store.open_writer(image_id))
        writer.write(b"from before")
        stored = self.successResultOf(writer.commit())
        now = datetime.now(UTC)
        self.successResultOf(
            self.registry.create(
                Image(
                    id=image_id,
                    status=images.ACTIVE,
                    created_at=now,
                    updated_at=now,
                    size=stored.size,
                    disk_format="raw",
                    container_format="bare",
                    visibility="public",
                    locations=(stored.location,),
                )
            )
        )
        self.assertEqual(self.request("GET", f"/v2/images/{image_id}/file").body, b"from before")


class StoreMapLocationTests(SynchronousTestCase):
    def setUp(self) -> None:
        runner = SynchronousRunner()
        self.a = FilesystemStore(self.mktemp(), runner)
        self.b = FilesystemStore(self.mktemp(), runner)
        self.stores = StoreMap({"a": self.a, "b": self.b}, "b")

    def test_by_store_id(self) -> None:
        """A location's store id chooses its store, whatever its URL."""
        self.assertIs(self.stores.for_location(Location("file:///x", "a")), self.a)
        self.assertIs(self.stores.for_location(Location("file:///x", "b")), self.b)

    def test_store_not_enabled(self) -> None:
        """A store id that is not enabled is a L{StoreError} naming it."""
        error = self.assertRaises(
            StoreError, self.stores.for_location, Location("file:///x", "gone")
        )
        self.assertIn("'gone'", error.message)

    def test_without_store_id(self) -> None:
        """
        Without a store id (or given a bare URL) the URL's scheme decides,
        the default store first; a scheme no store has is a L{StoreError}.
        """
        self.assertIs(self.stores.for_location(Location("file:///x")), self.b)
        self.assertIs(self.stores.for_location("file:///x"), self.b)
        self.assertEqual(self.stores.store_id_for("file:///x"), "b")
        other_default = StoreMap({"a": self.a, "m": _Other()}, "m")  # type: ignore[dict-item]
        self.assertEqual(other_default.store_id_for("file:///x"), "a")
        self.assertRaises(StoreError, self.stores.for_location, "s3://b/k")

    def test_checked_id(self) -> None:
        """C{checked_id} gives the default's id for C{None} and refuses unknown ids."""
        from glance_tx.errors import BadRequest

        self.assertEqual(self.stores.checked_id(None), "b")
        self.assertEqual(self.stores.checked_id("a"), "a")
        self.assertRaises(BadRequest, self.stores.checked_id, "c")


class _Other:
    scheme = "other"


class V1StoreHeaderTests(SiteTestCase):
    """v1's C{x-image-meta-store} chooses the store too."""

    def make_stores(self) -> StoreMap:
        self.bulk_root = FilePath(self.mktemp())
        self.bulk = FilesystemStore(self.bulk_root.path, self.runner)
        return StoreMap({"fast": self.store, "bulk": self.bulk}, "fast")

    def test_v1_store_header(self) -> None:
        """A v1 upload naming C{bulk} is recorded and served from C{bulk}."""
        answer = self.request(
            "POST",
            "/v1/images",
            {**OCTET, "x-image-meta-name": "b", "x-image-meta-store": "bulk", **V1_RAW_BARE},
            data=b"v1 bulk",
        )
        self.assertEqual(answer.code, 201, answer.body)
        image_id = answer.json()["image"]["id"]
        [location] = self.successResultOf(self.registry.get(image_id)).locations
        self.assertEqual(location.store, "bulk")
        self.assertEqual(self.request("GET", f"/v1/images/{image_id}").body, b"v1 bulk")
