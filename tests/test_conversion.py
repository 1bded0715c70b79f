"""
Conversion on import (L{glance_tx.formats.conversion}): C{qemu-img
convert} as a child process under limits, and imports through a real
glance-tx with C{[image_conversion] output_format} whose results
C{qemu-img compare} finds equal to the source.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from glance_tx.formats.conversion import ConversionFailed, Converter
from glance_tx.store.filesystem import FilesystemStore
from glance_tx.threads import SynchronousRunner
from tests.disk_images import DiskImages, MiB
from tests.live_server import LiveServerTestCase, pattern_bytes

RAW_DATA = pattern_bytes(4 * MiB)


def _compare(a: str, b: str) -> int:
    return subprocess.run(["qemu-img", "compare", "-q", a, b], check=False).returncode


class ConverterTests(TestCase):
    """The converter alone, on the real reactor."""

    def setUp(self) -> None:
        self.images = DiskImages(self.mktemp())
        self.work = FilesystemStore(os.path.abspath(self.mktemp()), SynchronousRunner())
        os.makedirs(self.work.root.path)

    def converter(self, **options: Any) -> Converter:
        return Converter(reactor=reactor, work=self.work, output_format="raw", **options)

    def put(self, path: str) -> str:
        """C{path} as a work file; its key."""
        key = self.converter().work_key()
        with open(path, "rb") as f:
            self.work.root.child(key).setContent(f.read())
        return key

    async def test_qcow2_to_raw(self) -> None:
        """The output is a raw image qemu-img finds equal to the source."""
        self.images.write("disk.raw", RAW_DATA)
        self.images.qemu_img("convert", "-f", "raw", "-O", "qcow2", "disk.raw", "disk.qcow2")
        key = self.put(self.images.path("disk.qcow2"))
        output = await self.converter().convert(key, "qcow2")
        self.assertEqual(self.work.root.child(output).getContent(), RAW_DATA)

    async def test_time_limit(self) -> None:
        """A conversion that outlasts the time limit is killed; no output stays."""
        script = self.images.write("slow", b"#!/bin/sh\nexec sleep 30\n")
        os.chmod(script, 0o755)
        key = self.put(self.images.write("x.raw", b"x" * 512))
        with self.assertRaises(ConversionFailed) as caught:
            await self.converter(qemu_img=script, timeout=0.3).convert(key, "raw")
        self.assertIn("longer than 0.3 seconds", caught.exception.message)
        self.assertEqual(sorted(self.work.root.listdir()), [key])

    async def test_cancel_kills(self) -> None:
        """A cancelled conversion (a stop) kills qemu-img and leaves no output."""
        script = self.images.write("slow", b"#!/bin/sh\nexec sleep 30\n")
        os.chmod(script, 0o755)
        key = self.put(self.images.write("x.raw", b"x" * 512))
        d = Deferred.fromCoroutine(self.converter(qemu_img=script).convert(key, "raw"))
        await deferLater(reactor, 0.2)
        d.cancel()
        with self.assertRaises(CancelledError):
            await d
        self.assertEqual(sorted(self.work.root.listdir()), [key])

    async def test_memory_limit(self) -> None:
        """With too little address space qemu-img cannot run: a clear failure."""
        key = self.put(self.images.write("x.raw", b"x" * 512))
        with self.assertRaises(ConversionFailed) as caught:
            await self.converter(memory_limit=4 * MiB).convert(key, "raw")
        self.assertIn("Conversion to raw failed", caught.exception.message)
        self.assertEqual(sorted(self.work.root.listdir()), [key])

    async def test_clean(self) -> None:
        """At start-up every work file goes."""
        self.put(self.images.write("x.raw", b"x"))
        await self.converter().clean()
        self.assertEqual(self.work.root.listdir(), [])


class _ConversionLive(LiveServerTestCase):
    output_format = "raw"

    def setUp(self) -> Deferred[None]:
        self.images = DiskImages(self.mktemp())
        self.work_dir = os.path.abspath(self.mktemp())
        self.config_text = (
            f"[image_conversion]\noutput_format = {self.output_format}\n"
            f"work_dir = {self.work_dir}\n"
        )
        return super().setUp()

    async def import_file(
        self, path: str, disk_format: str, status: str = "active"
    ) -> dict[str, Any]:
        """Stage C{path} and glance-direct it; the image once it has C{status}."""
        code, image = await self.api(
            "POST", "/v2/images",
            json_body={"name": "c", "disk_format": disk_format, "container_format": "bare"},
        )
        with open(path, "rb") as f:
            data = f.read()
        response = await self.treq.put(
            f"{self.base}/v2/images/{image['id']}/stage",
            data=data, headers={"Content-Type": ["application/octet-stream"]},
        )
        await response.content()
        self.assertEqual(response.code, 204)
        code, _ = await self.api(
            "POST", f"/v2/images/{image['id']}/import", json_body={"method": {"name": "glance-direct"}}
        )
        self.assertEqual(code, 202)
        for _ in range(400):
            shown = await self.image(image["id"])
            assert shown is not None
            if shown["status"] in ("active", "queued"):
                break
            await deferLater(reactor, 0.05)
        self.assertEqual(shown["status"], status, shown)
        # Removed just after the image becomes active.
        for _ in range(100):
            if not self.work_files():
                break
            await deferLater(reactor, 0.02)
        self.assertEqual(self.work_files(), [], "work files left behind")
        return shown

    def work_files(self) -> list[str]:
        return [name for _, _, names in os.walk(self.work_dir) for name in names]

    async def downloaded(self, image_id: str, name: str) -> str:
        response = await self.treq.get(f"{self.base}/v2/images/{image_id}/file")
        return self.images.write(name, await response.content())


class QcowToRawTests(_ConversionLive):
    output_format = "raw"

    async def test_qcow2_becomes_raw(self) -> None:
        """A qcow2 import is stored raw, equal to the source, and says raw."""
        self.images.write("source.raw", RAW_DATA)
        self.images.qemu_img("convert", "-f", "raw", "-O", "qcow2", "source.raw", "source.qcow2")
        image = await self.import_file(self.images.path("source.qcow2"), "qcow2")
        self.assertEqual((image["disk_format"], image["size"]), ("raw", len(RAW_DATA)))
        self.assertEqual(image["virtual_size"], len(RAW_DATA))
        out = await self.downloaded(image["id"], "out.raw")
        self.assertEqual(_compare(out, self.images.path("source.qcow2")), 0)


    async def test_unsafe_refused_before_conversion(self) -> None:
        """
        A qcow2 with a backing file is refused by the inspector before
        qemu-img would open it (and the host file it names): queued again,
        failure recorded, no work file left.
        """
        self.images.write("base.raw", RAW_DATA)
        path = self.images.create("backed.qcow2", "qcow2", "backing_file=base.raw", "backing_fmt=raw")
        image = await self.import_file(path, "qcow2", status="queued")
        self.assertEqual(image["os_glance_failed_import"], "file")
        self.assertEqual(image["disk_format"], "qcow2")


class RawToQcowTests(_ConversionLive):
    output_format = "qcow2"

    async def test_raw_becomes_qcow2(self) -> None:
        """A raw import is stored as qcow2 that qemu-img finds equal to it."""
        source = self.images.write("source.raw", RAW_DATA)
        image = await self.import_file(source, "raw")
        self.assertEqual(image["disk_format"], "qcow2")
        out = await self.downloaded(image["id"], "out.qcow2")
        info = subprocess.run(["qemu-img", "info", out], capture_output=True, text=True).stdout
        self.assertIn("file format: qcow2", info)
        self.assertEqual(_compare(out, source), 0)
