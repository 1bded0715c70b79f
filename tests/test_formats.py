"""
Format inspection of uploads, with real images made by qemu-img: each format
is detected with qemu's virtual size, each unsafe image is refused with a
message saying what was found, and a refused upload leaves nothing stored.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from glance_tx.config import ImageFormatConfig, load_config
from glance_tx.errors import InvalidImageData
from glance_tx.formats.inspection import InspectionStage, wants_inspection
from glance_tx.stages import IUploadStage
from glance_tx.store.backends import StoreMap
from glance_tx.store.filesystem import FilesystemStore
from tests.api_fixtures import SiteTestCase
from tests.disk_images import DiskImages

OCTET = {"Content-Type": "application/octet-stream"}

#: (file, how qemu-img makes it, disk_format) for every format detected.
FORMATS = [
    ("disk.raw", ("raw",), "raw"),
    ("disk.qcow2", ("qcow2",), "qcow2"),
    ("sparse.vmdk", ("vmdk", "subformat=monolithicSparse"), "vmdk"),
    ("stream.vmdk", ("vmdk", "subformat=streamOptimized"), "vmdk"),
    ("disk.vhd", ("vpc",), "vhd"),
    ("disk.vhdx", ("vhdx",), "vhdx"),
    ("disk.vdi", ("vdi",), "vdi"),
]


def inspect(data: bytes, declared: str | None, chunk: int = 65536, **policy: Any) -> Any:
    """Feed C{data} to an inspection stage chunk by chunk; its result."""
    stage = InspectionStage(declared, ImageFormatConfig(**policy))
    for offset in range(0, len(data), chunk):
        stage.feed(data[offset : offset + chunk])
    return dict(stage.result())


class InspectionStageTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.images = DiskImages(self.mktemp())

    def assertRefused(self, data: bytes, declared: str | None, *words: str, **policy: Any) -> None:
        error = self.assertRaises(InvalidImageData, inspect, data, declared, **policy)
        for word in words:
            self.assertIn(word.lower(), error.message.lower())

    def test_is_an_upload_stage(self) -> None:
        """The inspector is one more upload stage."""
        self.assertTrue(verifyObject(IUploadStage, InspectionStage("raw")))

    def test_formats_and_virtual_sizes(self) -> None:
        """Each format qemu-img makes is recognised as its disk_format, with
        the virtual size qemu-img reports (chunk boundaries anywhere)."""
        for name, (fmt, *options), disk_format in FORMATS:
            self.images.create(name, fmt, *options)
            expected = self.images.virtual_size(name)
            for chunk in (4096, 65537, 1 << 20):
                self.assertEqual(
                    inspect(self.images.data(name), disk_format, chunk),
                    {"virtual_size": expected},
                    (name, chunk),
                )

    def test_nothing_captured_outlives_the_result(self) -> None:
        """Once an inspection has its result (or refusal), what the
        inspectors captured is freed at once, not left in reference cycles
        for a full garbage collection: the VMDK inspector alone keeps 1 MiB
        of any image, so each upload used to leave that much behind."""
        chunk = os.urandom(1 << 20)
        self.images.create("disk.qcow2", "qcow2")
        qcow2 = self.images.data("disk.qcow2")

        def one_of_each() -> None:
            inspect(chunk * 3, "raw", 1 << 20)
            self.assertRaises(InvalidImageData, inspect, qcow2, "raw")

        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        one_of_each()  # anything allocated once, on first use
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(5):
            one_of_each()
        self.assertLess(tracemalloc.get_traced_memory()[0] - before, 256 * 1024)

    def test_first_batch_not_kept(self) -> None:
        """An image that is no VMDK is not kept by the VMDK inspector past
        its first batch (it captures up to 1 MiB of any image's start as a
        possible text descriptor): what the inspectors keep of a 1 MiB
        random batch, for the rest of the upload, is a few small regions.
        A text descriptor is still read whole (test_vmdk_* above)."""
        batch = os.urandom(1 << 20)
        stage = InspectionStage("raw")
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        before = tracemalloc.get_traced_memory()[0]
        stage.feed(batch)
        self.assertLess(tracemalloc.get_traced_memory()[0] - before, 256 * 1024)
        stage.feed(batch)
        self.assertEqual(dict(stage.result()), {"virtual_size": 2 << 20})

    def test_iso(self) -> None:
        """An ISO 9660 volume is an iso; its size is its blocks."""
        with open(self.images.iso(blocks=40), "rb") as f:
            self.assertEqual(inspect(f.read(), "iso"), {"virtual_size": 40 * 2048})

    def test_raw_may_carry_a_partition_table(self) -> None:
        """A raw disk that starts with an MBR and GPT is still raw; so is an
        ISO uploaded as raw."""
        with open(self.images.gpt(size=1 << 20), "rb") as f:
            self.assertEqual(inspect(f.read(), "raw"), {"virtual_size": 1 << 20})
        with open(self.images.iso(blocks=40), "rb") as f:
            self.assertEqual(inspect(f.read(), "raw"), {"virtual_size": 40 * 2048})

    def test_gpt_safety_checks_nonfatal(self) -> None:
        """
        A GPT disk whose protective MBR fails the C{mbr} check is refused
        by default (Glance 33's empty list); with C{mbr} in
        C{gpt_safety_checks_nonfatal} it passes as raw, its size its bytes.
        """
        with open(self.images.gpt("loose.raw", size=1 << 20, start_lba=2), "rb") as f:
            data = f.read()
        self.assertRefused(data, "raw", "gpt", "mbr: GPT MBR has invalid start LBA")
        self.assertEqual(
            inspect(data, "raw", gpt_safety_checks_nonfatal=("mbr",)), {"virtual_size": 1 << 20}
        )
        self.assertRefused(data, "raw", "mbr", gpt_safety_checks_nonfatal=("gptmbr",))

    def test_gpt_nonfatal_is_for_gpt_only(self) -> None:
        """
        The option relaxes a GPT disk's checks only: a qcow2 failing the
        check named there is still refused.
        """
        self.images.create("base.raw", "raw")
        self.images.create("backed.qcow2", "qcow2", "backing_file=base.raw", "backing_fmt=raw")
        self.assertRefused(
            self.images.data("backed.qcow2"), "qcow2", "backing file",
            gpt_safety_checks_nonfatal=("backing_file", "mbr"),
        )

    def test_formats_no_inspector_knows(self) -> None:
        """Data of an uninspectable disk_format (ami) passes when it looks
        like nothing in particular, with no virtual size."""
        self.assertEqual(inspect(os.urandom(100000), "ami"), {})

    def test_qcow2_backing_file(self) -> None:
        """A qcow2 with a backing file is refused (qemu would read it)."""
        self.images.create("base.raw", "raw")
        self.images.create("backed.qcow2", "qcow2", "backing_file=base.raw", "backing_fmt=raw")
        self.assertRefused(self.images.data("backed.qcow2"), "qcow2", "qcow2", "backing file")

    def test_qcow2_data_file(self) -> None:
        """A qcow2 with an external data file is refused (CVE-2024-32498)."""
        self.images.create("external.qcow2", "qcow2", "data_file=external.raw")
        self.assertRefused(self.images.data("external.qcow2"), "qcow2", "qcow2", "data_file")

    def test_qcow2_unknown_incompatible_feature(self) -> None:
        """A qcow2 with an incompatible feature bit no qemu knows is refused."""
        with open(self.images.qcow2_unknown_feature(), "rb") as f:
            self.assertRefused(f.read(), "qcow2", "unknown_features", "Unknown QCOW2 features")

    def test_vmdk_extent_naming_a_path(self) -> None:
        """A VMDK descriptor whose extent names a host path is refused
        (CVE-2022-47951)."""
        with open(self.images.vmdk_path_extent(), "rb") as f:
            self.assertRefused(f.read(), "vmdk", "vmdk", "extent filenames")

    def test_vmdk_create_type_not_allowed(self) -> None:
        """A monolithicFlat VMDK (a descriptor naming a flat extent) is not
        in vmdk_allowed_types; the option narrows what is allowed."""
        self.images.create("flat.vmdk", "vmdk", "subformat=monolithicFlat")
        self.assertRefused(self.images.data("flat.vmdk"), "vmdk", "monolithicflat", "vmdk_allowed_types")
        self.images.create("sparse.vmdk", "vmdk", "subformat=monolithicSparse")
        sparse = self.images.data("sparse.vmdk")
        self.assertEqual(inspect(sparse, "vmdk"), {"virtual_size": self.images.virtual_size("sparse.vmdk")})
        self.assertRefused(
            sparse, "vmdk", "monolithicsparse", "not allowed", vmdk_allowed_types=("streamOptimized",)
        )

    def test_qed_refused(self) -> None:
        """QED is recognised and never allowed, whatever was declared."""
        self.images.create("disk.qed", "qed")
        for declared in ("qcow2", "raw", None):
            self.assertRefused(self.images.data("disk.qed"), declared, "qed", "never allowed")

    def test_content_contradicting_disk_format(self) -> None:
        """A qcow2 declared raw, or random bytes declared qcow2, is refused,
        naming what the content is."""
        self.images.create("disk.qcow2", "qcow2")
        self.assertRefused(self.images.data("disk.qcow2"), "raw", "content is qcow2", "disk_format raw")
        self.assertRefused(os.urandom(100000), "qcow2", "content is raw", "disk_format qcow2")

    def test_format_match_not_required(self) -> None:
        """With require_image_format_match off a mismatch is accepted (no
        virtual size), but an unsafe image is still refused."""
        self.assertEqual(inspect(os.urandom(100000), "qcow2", require_image_format_match=False), {})
        self.images.create("base.raw", "raw")
        self.images.create("backed.qcow2", "qcow2", "backing_file=base.raw", "backing_fmt=raw")
        self.assertRefused(
            self.images.data("backed.qcow2"), "raw", "backing file", require_image_format_match=False
        )

    def test_undeclared_format_is_detected(self) -> None:
        """A v1 image without a disk_format gets the virtual size of what it is."""
        self.images.create("disk.qcow2", "qcow2", size=3 << 20)
        self.assertEqual(inspect(self.images.data("disk.qcow2"), None), {"virtual_size": 3 << 20})

    def test_only_bare_images_are_inspected(self) -> None:
        """As in Glance, bare data (or a v1 image that names no container)
        is a disk to inspect; ovf, ova and docker containers are not."""
        self.assertTrue(wants_inspection("bare"))
        self.assertTrue(wants_inspection(None))
        for container in ("ovf", "ova", "docker", "compressed", "aki"):
            self.assertFalse(wants_inspection(container))


class ConfigTests(SynchronousTestCase):
    def test_image_format_section(self) -> None:
        """[image_format] holds Glance's options, with Glance's defaults."""
        self.assertEqual(load_config(None).image_format, ImageFormatConfig())
        self.assertEqual(
            ImageFormatConfig().vmdk_allowed_types, ("streamOptimized", "monolithicSparse")
        )
        self.assertTrue(ImageFormatConfig().require_image_format_match)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                "[image_format]\nrequire_image_format_match = false\n"
                "vmdk_allowed_types = streamOptimized\n"
            )
        self.assertEqual(
            load_config(path).image_format,
            ImageFormatConfig(require_image_format_match=False, vmdk_allowed_types=("streamOptimized",)),
        )

    def test_format_lists(self) -> None:
        """
        C{disk_formats}, C{container_formats} and C{gpt_safety_checks_nonfatal}
        are read as comma-separated lists; Glance 33's defaults otherwise.
        """
        defaults = ImageFormatConfig()
        self.assertEqual(defaults.disk_formats[:3], ("ami", "ari", "aki"))
        self.assertEqual(defaults.gpt_safety_checks_nonfatal, ())
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                "[image_format]\ndisk_formats = raw, qcow2,gpt\n"
                "container_formats = bare\ngpt_safety_checks_nonfatal = mbr\n"
            )
        loaded = load_config(path).image_format
        self.assertEqual(loaded.disk_formats, ("raw", "qcow2", "gpt"))
        self.assertEqual(loaded.container_formats, ("bare",))
        self.assertEqual(loaded.gpt_safety_checks_nonfatal, ("mbr",))
        self.assertEqual(loaded.vmdk_allowed_types, defaults.vmdk_allowed_types)


class NoReadsStore(FilesystemStore):
    """A filesystem store that fails the test if anything reads from it."""

    def read(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the upload read its data back from the store")


class UploadInspectionTests(SiteTestCase):
    """Uploads through the API: refused images leave no data and a truthful status."""

    def setUp(self) -> None:
        super().setUp()
        self.images = DiskImages(self.mktemp())
        self.images.create("base.raw", "raw", size=1 << 20)
        self.images.create("backed.qcow2", "qcow2", "backing_file=base.raw", "backing_fmt=raw")
        self.images.create("good.qcow2", "qcow2", size=5 << 20)

    def make_stores(self) -> StoreMap:
        self.store = NoReadsStore(self.store.root, self.runner)
        return StoreMap({"file": self.store}, "file")

    def v2_image(self, disk_format: str, container_format: str = "bare") -> str:
        answer = self.request(
            "POST",
            "/v2/images",
            {"Content-Type": "application/json"},
            data=f'{{"disk_format": "{disk_format}", "container_format": "{container_format}"}}'.encode(),
        )
        self.assertEqual(answer.code, 201, answer.body)
        return answer.json()["id"]

    def test_v2_records_virtual_size(self) -> None:
        """A qcow2 uploaded as qcow2 is active with qemu's virtual size; the
        upload never read its data back."""
        image_id = self.v2_image("qcow2")
        answer = self.request("PUT", f"/v2/images/{image_id}/file", OCTET, self.images.data("good.qcow2"))
        self.assertEqual(answer.code, 204, answer.body)
        shown = self.request("GET", f"/v2/images/{image_id}").json()
        self.assertEqual(shown["status"], "active")
        self.assertEqual(shown["virtual_size"], 5 << 20)

    def test_v2_unsafe_refused(self) -> None:
        """v2: a qcow2 with a backing file is a 415 naming it; the image is
        queued again with no data, and nothing is left in the store."""
        image_id = self.v2_image("qcow2")
        answer = self.request("PUT", f"/v2/images/{image_id}/file", OCTET, self.images.data("backed.qcow2"))
        self.assertEqual(answer.code, 415, answer.body)
        self.assertEqual(answer.header("Content-Type"), "application/json")
        self.assertIn("backing file", answer.json()["error"]["message"])
        shown = self.request("GET", f"/v2/images/{image_id}").json()
        self.assertEqual((shown["status"], shown["size"], shown["checksum"]), ("queued", None, None))
        self.assertEqual(self.stored_files(), [])
        self.assertEqual(self.request("GET", f"/v2/images/{image_id}/file").code, 204)

    def test_v2_mismatch_refused(self) -> None:
        """v2: a qcow2 declared raw is a 415 saying what the content is."""
        image_id = self.v2_image("raw")
        answer = self.request("PUT", f"/v2/images/{image_id}/file", OCTET, self.images.data("good.qcow2"))
        self.assertEqual(answer.code, 415, answer.body)
        self.assertEqual(
            answer.json()["error"]["message"], "Image content is qcow2, not its disk_format raw"
        )
        self.assertEqual(self.stored_files(), [])

    def test_v2_containers_not_inspected(self) -> None:
        """Data in an ovf container is not taken for a disk."""
        image_id = self.v2_image("qcow2", "ovf")
        answer = self.request("PUT", f"/v2/images/{image_id}/file", OCTET, b"<Envelope/>")
        self.assertEqual(answer.code, 204, answer.body)

    def v1_upload(self, disk_format: str, data: bytes) -> Any:
        return self.request(
            "POST",
            "/v1/images",
            {
                **OCTET,
                "x-image-meta-name": "v1",
                "x-image-meta-disk_format": disk_format,
                "x-image-meta-container_format": "bare",
            },
            data,
        )

    def test_v1_records_virtual_size(self) -> None:
        """v1: the created image carries the virtual size."""
        answer = self.v1_upload("qcow2", self.images.data("good.qcow2"))
        self.assertEqual(answer.code, 201, answer.body)
        self.assertEqual(answer.json()["image"]["virtual_size"], 5 << 20)

    def test_v1_unsafe_refused(self) -> None:
        """v1: an unsafe image is a 400 naming what was found; the image is
        killed and nothing is left in the store."""
        answer = self.v1_upload("qcow2", self.images.data("backed.qcow2"))
        self.assertEqual(answer.code, 400, answer.body)
        self.assertIn("backing file", answer.json()["error"]["message"])
        self.assertEqual(self.stored_files(), [])
        listed = self.request("GET", "/v1/images/detail?status=killed").json()["images"]
        self.assertEqual([i["status"] for i in listed], ["killed"])

    def test_v1_mismatch_refused(self) -> None:
        """v1: random bytes declared qcow2 are a 400; nothing stored."""
        answer = self.v1_upload("qcow2", os.urandom(200000))
        self.assertEqual(answer.code, 400, answer.body)
        self.assertIn("content is raw", answer.json()["error"]["message"])
        self.assertEqual(self.stored_files(), [])
