"""
Interoperable import (Images API v2.6), in memory: stage, the three
methods, the statuses and properties on the way, and failures that return
the image to queued with C{os_glance_failed_import}.
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath

from glance_tx.imports import staging_key
from glance_tx.store.backends import StoreMap
from glance_tx.store.filesystem import FilesystemStore
from glance_tx.store.http import HTTPStore
from tests.disk_images import DiskImages
from tests.test_api_v2 import ADMIN, ALICE, BOB, OCTET, V2TestCase
from tests.test_store_http import FakeWeb

DATA = bytes(range(256)) * 2000


class ImportTestCase(V2TestCase):
    """A site with stores C{file} (default) and C{second}, and a fake web."""

    def setUp(self) -> None:
        self.web = FakeWeb()
        self.site_options = {**self.site_options, "web_download": HTTPStore(agent=self.web, clock=Clock())}
        super().setUp()

    def make_stores(self) -> StoreMap:
        second = FilePath(self.mktemp())
        second.makedirs()
        self.second_root = second
        self.second = FilesystemStore(second.path, self.runner)
        return StoreMap({"file": self.store, "second": self.second}, "file")

    def stage(self, image_id: str, data: bytes = DATA, headers: dict[str, str] | None = None) -> Any:
        return self.request(
            "PUT", f"/v2/images/{image_id}/stage", {**OCTET, **(headers or {})}, data=data
        )

    def import_(self, image_id: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        answer = self.send_json("POST", f"/v2/images/{image_id}/import", body, headers)
        self.successResultOf(self.site.importer.idle())
        return answer

    def files_in(self, root: FilePath) -> list[str]:
        return sorted(p.basename() for p in root.walk() if p.isfile())


class InfoTests(ImportTestCase):
    def test_import_methods(self) -> None:
        """C{GET /v2/info/import} lists the methods in Glance's shape."""
        answer = self.request("GET", "/v2/info/import", ALICE)
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(
            answer.json(),
            {
                "import-methods": {
                    "description": "Import methods available.",
                    "type": "array",
                    "value": ["glance-direct", "web-download", "copy-image"],
                }
            },
        )

    def test_create_header(self) -> None:
        """A create names the same methods in OpenStack-image-import-methods."""
        answer = self.send_json("POST", "/v2/images", {"name": "x"}, ALICE)
        self.assertEqual(
            answer.header("OpenStack-image-import-methods"),
            "glance-direct,web-download,copy-image",
        )


class GlanceDirectTests(ImportTestCase):
    def test_stage_then_import(self) -> None:
        """
        Stage leaves the image uploading, its data in the default store under
        the staging key and not shown; import (202) makes it active with the
        hashes, in the store asked for, and removes the staged data.
        """
        image = self.create(ALICE)
        answer = self.stage(image["id"], headers=ALICE)
        self.assertEqual(answer.code, 204, answer.body)
        staged = self.show(image["id"], ALICE)
        self.assertEqual(staged["status"], "uploading")
        self.assertNotIn("stores", staged)
        self.assertEqual(self.files_in(self.store_root), [staging_key(image["id"])])
        self.assertEqual(self.request("GET", f"/v2/images/{image['id']}/file", ALICE).code, 204)

        answer = self.import_(image["id"], {"method": {"name": "glance-direct"}, "stores": ["second"]}, ALICE)
        self.assertEqual(answer.code, 202, answer.body)
        shown = self.show(image["id"], ALICE)
        self.assertEqual(shown["status"], "active")
        self.assertEqual(shown["stores"], "second")
        self.assertEqual(shown["size"], len(DATA))
        self.assertEqual(shown["checksum"], hashlib.md5(DATA).hexdigest())
        self.assertEqual(shown["os_hash_value"], hashlib.sha512(DATA).hexdigest())
        self.assertEqual(shown["os_glance_importing_to_stores"], "")
        self.assertEqual(shown["os_glance_failed_import"], "")
        self.assertEqual(self.files_in(self.store_root), [])
        self.assertEqual(self.files_in(self.second_root), [image["id"]])
        download = self.request("GET", f"/v2/images/{image['id']}/file", ALICE)
        self.assertEqual(download.body, DATA)

    def test_import_into_all_stores(self) -> None:
        """C{all_stores} puts the data in every writable store."""
        image = self.create(ALICE)
        self.stage(image["id"], headers=ALICE)
        answer = self.import_(image["id"], {"method": {"name": "glance-direct"}, "all_stores": True}, ALICE)
        self.assertEqual(answer.code, 202, answer.body)
        shown = self.show(image["id"], ALICE)
        self.assertEqual(shown["stores"], "file,second")
        self.assertEqual(self.files_in(self.store_root), [image["id"]])
        self.assertEqual(self.files_in(self.second_root), [image["id"]])

    def break_second(self) -> None:
        self.second_root.remove()
        self.second_root.setContent(b"not a directory")

    def test_one_store_fails_all_must_succeed(self) -> None:
        """
        The second store failing fails the import (the default): queued, the
        first store's data (recorded as it landed) removed too.
        """
        image = self.create(ALICE)
        self.stage(image["id"], headers=ALICE)
        self.break_second()
        self.import_(image["id"], {"method": {"name": "glance-direct"}, "all_stores": True}, ALICE)
        shown = self.show(image["id"], ALICE)
        self.assertEqual((shown["status"], shown["os_glance_failed_import"]), ("queued", "second"))
        self.assertEqual(self.files_in(self.store_root), [])
        self.assertEqual(self.stored_record(image["id"]).locations, ())

    def test_one_store_fails_others_may(self) -> None:
        """With all_stores_must_succeed false, active in the stores that worked."""
        image = self.create(ALICE)
        self.stage(image["id"], headers=ALICE)
        self.break_second()
        self.import_(
            image["id"],
            {"method": {"name": "glance-direct"}, "all_stores": True, "all_stores_must_succeed": False},
            ALICE,
        )
        shown = self.show(image["id"], ALICE)
        self.assertEqual(
            (shown["status"], shown["stores"], shown["os_glance_failed_import"]),
            ("active", "file", "second"),
        )
        self.assertEqual(self.files_in(self.store_root), [image["id"]])

    def test_import_needs_stage(self) -> None:
        """glance-direct of an image not staged is a 409, as Glance."""
        image = self.create(ALICE)
        answer = self.import_(image["id"], {"method": {"name": "glance-direct"}}, ALICE)
        self.assertError(answer, 409)
        self.assertIn("staged", answer.body.decode())

    def test_failed_stage_returns_to_queued(self) -> None:
        """A stage whose body is not its declared size is a 400: queued, nothing kept."""
        image = self.create(ALICE)
        answer = self.stage(image["id"], headers={**ALICE, "x-openstack-image-size": str(len(DATA) + 1)})
        self.assertError(answer, 400)
        self.assertEqual(self.show(image["id"], ALICE)["status"], "queued")
        self.assertEqual(self.files_in(self.store_root), [])
        self.assertEqual(self.stage(image["id"], headers=ALICE).code, 204)

    def test_stage_only_queued(self) -> None:
        """Staging an image that is not queued is a 409."""
        image = self.active(headers=ALICE)
        self.assertError(self.stage(image["id"], headers=ALICE), 409)

    def test_stage_by_other_refused(self) -> None:
        """Only who may modify the image may stage to it."""
        image = self.create(ALICE, visibility="community")
        self.assertEqual(self.stage(image["id"], headers=BOB).code, 403)
        self.assertEqual(self.show(image["id"], ALICE)["status"], "queued")

    def test_refused_content_returns_to_queued(self) -> None:
        """
        Staged data the inspector refuses (a qcow2 declared raw) fails the
        import: the image is queued again, the store recorded in
        os_glance_failed_import, and nothing is left in any store.
        """
        qcow2 = DiskImages(self.mktemp())
        qcow2.create("disk.qcow2", "qcow2")
        image = self.create(ALICE)
        self.stage(image["id"], qcow2.data("disk.qcow2"), ALICE)
        answer = self.import_(image["id"], {"method": {"name": "glance-direct"}}, ALICE)
        self.assertEqual(answer.code, 202, answer.body)
        shown = self.show(image["id"], ALICE)
        self.assertEqual(shown["status"], "queued")
        self.assertEqual(shown["os_glance_failed_import"], "file")
        self.assertEqual(shown["os_glance_importing_to_stores"], "")
        self.assertIsNone(shown["size"])
        self.assertEqual(self.files_in(self.store_root), [])

    def test_delete_staged_image(self) -> None:
        """Deleting a staged image removes its staged data."""
        image = self.create(ALICE)
        self.stage(image["id"], headers=ALICE)
        self.assertEqual(self.request("DELETE", f"/v2/images/{image['id']}", ALICE).code, 204)
        self.assertEqual(self.files_in(self.store_root), [])

    def test_bad_bodies(self) -> None:
        """An import body Glance refuses is a 400 naming what is wrong."""
        image = self.create(ALICE)
        self.stage(image["id"], headers=ALICE)
        for body, message in [
            ({}, "'method'"),
            ({"method": {}}, "'name'"),
            ({"method": {"name": "glance-download"}}, "Unknown import method"),
            ({"method": {"name": "glance-direct"}, "all_stores_must_succeed": "yes"}, "boolean"),
            ({"method": {"name": "glance-direct"}, "all_stores": True, "stores": ["file"]}, "All_stores"),
            ({"method": {"name": "web-download", "uri": "file:///etc/passwd"}}, "http or https"),
        ]:
            answer = self.import_(image["id"], body, ALICE)
            self.assertError(answer, 400)
            self.assertIn(message, answer.body.decode())
        self.assertEqual(self.show(image["id"], ALICE)["status"], "uploading")

    def test_unknown_store(self) -> None:
        """An unknown store is a 409, as Glance answers it (UnknownScheme)."""
        image = self.create(ALICE)
        self.stage(image["id"], headers=ALICE)
        answer = self.import_(image["id"], {"method": {"name": "glance-direct"}, "stores": ["nowhere"]}, ALICE)
        self.assertError(answer, 409)
        self.assertIn("nowhere", answer.body.decode())


class WebDownloadTests(ImportTestCase):
    def test_web_download(self) -> None:
        """The URL's data is streamed through the pipeline: active, hashed."""
        url = self.web.add(DATA)
        image = self.create(ALICE)
        answer = self.import_(image["id"], {"method": {"name": "web-download", "uri": url}}, ALICE)
        self.assertEqual(answer.code, 202, answer.body)
        shown = self.show(image["id"], ALICE)
        self.assertEqual(shown["status"], "active")
        self.assertEqual(shown["os_hash_value"], hashlib.sha512(DATA).hexdigest())
        self.assertEqual(self.request("GET", f"/v2/images/{image['id']}/file", ALICE).body, DATA)

    def test_missing_url_returns_to_queued(self) -> None:
        """A URL that answers 404 returns the image to queued, failure recorded."""
        image = self.create(ALICE)
        answer = self.import_(
            image["id"],
            {"method": {"name": "web-download", "uri": "http://images.example/missing"}},
            ALICE,
        )
        self.assertEqual(answer.code, 202)
        shown = self.show(image["id"], ALICE)
        self.assertEqual(shown["status"], "queued")
        self.assertEqual(shown["os_glance_failed_import"], "file")
        self.assertEqual(self.files_in(self.store_root), [])

    def test_only_queued(self) -> None:
        """web-download of an image that is not queued is a 409."""
        image = self.create(ALICE)
        self.stage(image["id"], headers=ALICE)
        answer = self.import_(
            image["id"], {"method": {"name": "web-download", "uri": self.web.add(DATA)}}, ALICE
        )
        self.assertError(answer, 409)


class CopyImageTests(ImportTestCase):
    def test_copy_into_second_store(self) -> None:
        """copy-image (admin) adds a copy in the store asked for; still active."""
        image = self.active(DATA)
        answer = self.import_(image["id"], {"method": {"name": "copy-image"}, "stores": ["second"]}, ADMIN)
        self.assertEqual(answer.code, 202, answer.body)
        shown = self.show(image["id"])
        self.assertEqual(shown["status"], "active")
        self.assertEqual(shown["stores"], "file,second")
        self.assertEqual(self.files_in(self.second_root), [image["id"]])
        self.assertEqual(self.second_root.child(image["id"]).getContent(), DATA)

    def test_copy_all_stores_skips_held(self) -> None:
        """With all_stores, stores that hold the image already are skipped."""
        image = self.active(DATA)
        self.import_(image["id"], {"method": {"name": "copy-image"}, "all_stores": True}, ADMIN)
        self.assertEqual(self.show(image["id"])["stores"], "file,second")
        again = self.import_(image["id"], {"method": {"name": "copy-image"}, "all_stores": True}, ADMIN)
        self.assertEqual(again.code, 202)

    def test_copy_refusals(self) -> None:
        """Not an admin: 403; a store that has it: 400; not active: 409."""
        image = self.active(DATA, ALICE)
        body = {"method": {"name": "copy-image"}, "stores": ["second"]}
        self.assertError(self.import_(image["id"], body, ALICE), 403)
        self.assertError(
            self.import_(image["id"], {"method": {"name": "copy-image"}, "stores": ["file"]}, ADMIN), 400
        )
        queued = self.create(ALICE)
        self.assertError(self.import_(queued["id"], body, ADMIN), 409)

    def test_copy_failure_recorded(self) -> None:
        """A copy the target cannot take leaves the image active, failure recorded."""
        image = self.active(DATA)
        self.second_root.remove()
        self.second_root.setContent(b"not a directory")
        answer = self.import_(image["id"], {"method": {"name": "copy-image"}, "stores": ["second"]}, ADMIN)
        self.assertEqual(answer.code, 202)
        shown = self.show(image["id"])
        self.assertEqual(shown["status"], "active")
        self.assertEqual(shown["stores"], "file")
        self.assertEqual(shown["os_glance_failed_import"], "second")


class DeleteFromStoreTests(ImportTestCase):
    """C{DELETE /v2/stores/STORE/IMAGE}, Glance's delete-from-store."""

    def copied(self) -> dict[str, Any]:
        """An active image of ALICE's with copies in both stores."""
        image = self.active(DATA, ALICE)
        self.import_(image["id"], {"method": {"name": "copy-image"}, "stores": ["second"]}, ADMIN)
        self.assertEqual(self.show(image["id"])["stores"], "file,second")
        return image

    def test_delete_one_copy(self) -> None:
        """An admin removes the copy in one store: its file goes, the other stays."""
        image = self.copied()
        answer = self.request("DELETE", f"/v2/stores/second/{image['id']}", ADMIN)
        self.assertEqual((answer.code, answer.body), (204, b""))
        shown = self.show(image["id"])
        self.assertEqual((shown["status"], shown["stores"]), ("active", "file"))
        self.assertEqual(self.files_in(self.second_root), [])
        self.assertEqual(self.request("GET", f"/v2/images/{image['id']}/file", ALICE).body, DATA)

    def test_refusals(self) -> None:
        """
        The owner, not an admin: 403 (delete_image_location); an unknown
        store: 409; a store without the image: 409; its only copy: 403; an
        image that is not active: 409; nothing is removed.
        """
        image = self.copied()
        path = f"/v2/stores/second/{image['id']}"
        self.assertError(self.request("DELETE", path, ALICE), 403)
        self.assertError(self.request("DELETE", f"/v2/stores/nowhere/{image['id']}", ADMIN), 409, "nowhere")
        self.assertEqual(self.request("DELETE", path, ADMIN).code, 204)
        self.assertError(self.request("DELETE", path, ADMIN), 409, "not present")
        self.assertError(self.request("DELETE", f"/v2/stores/file/{image['id']}", ADMIN), 403, "only store")
        self.assertEqual(self.show(image["id"])["stores"], "file")
        queued = self.create(ALICE)
        self.assertError(self.request("DELETE", f"/v2/stores/file/{queued['id']}", ADMIN), 409, "active")


class StopTests(ImportTestCase):
    def test_stop_cancels_stalled_import(self) -> None:
        """
        At shutdown an import that does not end in time is cancelled and
        fails as any failure does: queued, failure recorded, nothing left.
        """
        self.web.paced = True
        url = self.web.add(DATA)
        image = self.create(ALICE)
        answer = self.send_json(
            "POST", f"/v2/images/{image['id']}/import",
            {"method": {"name": "web-download", "uri": url}}, ALICE,
        )
        self.assertEqual(answer.code, 202)
        self.assertEqual(self.show(image["id"], ALICE)["status"], "importing")
        clock = Clock()
        stopped = Deferred.fromCoroutine(self.site.importer.stop(clock, 5))
        self.assertNoResult(stopped)
        clock.advance(5)
        self.successResultOf(stopped)
        shown = self.show(image["id"], ALICE)
        self.assertEqual((shown["status"], shown["os_glance_failed_import"]), ("queued", "file"))
        self.assertEqual(self.files_in(self.store_root), [])
