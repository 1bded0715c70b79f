"""
Faults of the machinery under the API, made for real: a store whose disk
fills up mid-upload (a small tmpfs this test mounts). Each must end in a
clear answer, the image in its truthful state, no partial data left, and
service that goes on once the fault is mended.
"""

from __future__ import annotations

import errno
import os

from twisted.trial.unittest import SynchronousTestCase

from glance_tx.errors import StorageFull, StoreError, os_error
from glance_tx.images import ImageQuery
from glance_tx.store.backends import StoreMap
from glance_tx.store.filesystem import FilesystemStore
from tests.api_fixtures import SiteTestCase
from tests.mounts import tmpfs
from tests.test_api_v1 import OCTET, ErrorShapeMixin, meta

MiB = 1024 * 1024

#: Glance's message for glance_store's StorageFull.
FULL = "Image storage media is full: There is not enough disk space on the image storage media."


class DiskFullTests(ErrorShapeMixin, SiteTestCase):
    """The filesystem store on a 2 MiB tmpfs; uploads of 3 MiB fill it."""

    def make_stores(self) -> StoreMap:
        self.disk = tmpfs(self, "2m")
        self.store_root = self.disk.child("images")
        self.store_root.makedirs()
        self.store = FilesystemStore(self.store_root.path, self.runner)
        return StoreMap({"file": self.store}, "file")

    def files_on_disk(self) -> list[str]:
        return sorted(p.path for p in self.disk.walk() if p.isfile())

    def test_v1_upload_fills_the_disk(self) -> None:
        """
        v1: a POST whose body does not fit gets 413 with Glance's message;
        the image is killed (as Glance's safe_kill), the partial file is
        gone, and an upload that fits then succeeds.
        """
        answer = self.request(
            "POST", "/v1/images",
            {**OCTET, **meta(name="big", disk_format="raw", container_format="bare")},
            data=b"x" * (3 * MiB),
        )
        self.assertError(answer, 413, FULL)
        self.assertEqual(self.files_on_disk(), [])
        (big,) = self.successResultOf(self.registry.list(ImageQuery(exclude_statuses=frozenset())))
        self.assertEqual(big.status, "killed")

        answer = self.request(
            "POST", "/v1/images",
            {**OCTET, **meta(name="small", disk_format="raw", container_format="bare")},
            data=b"y" * MiB,
        )
        self.assertEqual(answer.code, 201, answer.body)
        self.assertEqual(answer.json()["image"]["status"], "active")
        self.assertEqual(len(self.files_on_disk()), 1)

    def test_v2_upload_fills_the_disk(self) -> None:
        """
        v2: a PUT /file that does not fit gets 413 with Glance's message,
        the image goes back to queued (Glance's _restore), the partial
        file is gone, and the same image then takes data that fits.
        """
        created = self.request(
            "POST", "/v2/images", {"Content-Type": "application/json"},
            data=b'{"disk_format": "raw", "container_format": "bare"}',
        )
        image_id = created.json()["id"]
        answer = self.request("PUT", f"/v2/images/{image_id}/file", OCTET, data=b"x" * (3 * MiB))
        self.assertError(answer, 413, FULL)
        self.assertEqual(self.files_on_disk(), [])
        self.assertEqual(self.request("GET", f"/v2/images/{image_id}").json()["status"], "queued")

        answer = self.request("PUT", f"/v2/images/{image_id}/file", OCTET, data=b"y" * MiB)
        self.assertEqual(answer.code, 204, answer.body)
        shown = self.request("GET", f"/v2/images/{image_id}").json()
        self.assertEqual((shown["status"], shown["size"]), ("active", MiB))
        download = self.request("GET", f"/v2/images/{image_id}/file")
        self.assertEqual(download.body, b"y" * MiB)



class OSErrorTests(SynchronousTestCase):
    """L{os_error}: the one mapping of a store's OS errors to answers."""

    def test_full(self) -> None:
        """ENOSPC, EDQUOT and EFBIG are StorageFull: 413, Glance's message."""
        for number in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            error = os_error(OSError(number, os.strerror(number), "/secret/path"), "Writing")
            self.assertIsInstance(error, StorageFull)
            self.assertEqual((error.status, error.message), (413, FULL))

    def test_other(self) -> None:
        """Anything else is a 503 StoreError without the file name."""
        error = os_error(OSError(errno.EROFS, os.strerror(errno.EROFS), "/secret/path"), "Writing")
        self.assertIsInstance(error, StoreError)
        self.assertEqual(error.status, 503)
        self.assertEqual(error.message, "Writing: Read-only file system")
