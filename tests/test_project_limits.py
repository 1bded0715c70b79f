"""
Per-project limits under Glance's unified-limit names: checked before a
create, before an upload and during it, reported at C{GET /v2/info/usage}.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from glance_tx.config import ConfigError, ProjectLimits, load_config
from glance_tx.images import ACTIVE, SAVING, Image, new_image_id
from tests.api_fixtures import Answer, SiteTestCase
from tests.memory_http import ChunkedBody

MiB = 1024 * 1024
ALICE = {"X-Project-Id": "alice", "X-Roles": "member"}
BOB = {"X-Project-Id": "bob", "X-Roles": "member"}
OCTET = {"Content-Type": "application/octet-stream"}


class LimitsSite(SiteTestCase):
    limits = ProjectLimits()

    def setUp(self) -> None:
        self.site_options = {"project_limits": self.limits}
        super().setUp()

    def create(self, headers: dict[str, str] = ALICE) -> Answer:
        body = json.dumps({"name": "n", "disk_format": "raw", "container_format": "bare"})
        return self.request("POST", "/v2/images", {**headers, "Content-Type": "application/json"},
                            body.encode())

    def created(self, headers: dict[str, str] = ALICE) -> str:
        answer = self.create(headers)
        self.assertEqual(answer.code, 201, answer.body)
        image_id: str = answer.json()["id"]
        return image_id

    def upload(self, image_id: str, data: Any, headers: dict[str, str] = ALICE) -> Answer:
        return self.request("PUT", f"/v2/images/{image_id}/file", {**headers, **OCTET}, data)

    def status(self, image_id: str) -> str:
        status: str = self.request("GET", f"/v2/images/{image_id}", ALICE).json()["status"]
        return status

    def put_record(self, **fields: Any) -> None:
        """An image straight into the registry (a state the API takes time to reach)."""
        now = datetime(2026, 1, 1, tzinfo=UTC)
        values: dict[str, Any] = {"id": new_image_id(), "status": ACTIVE, "owner": "alice",
                                  "created_at": now, "updated_at": now}
        values.update(fields)
        self.successResultOf(self.registry.create(Image(**values)))

    def assertLimit(self, answer: Answer, name: str) -> None:
        """A JSON 413 whose message names the limit C{name}."""
        self.assertEqual(answer.code, 413, answer.body)
        self.assertIn(name, answer.json()["error"]["message"])


class CountTests(LimitsSite):
    limits = ProjectLimits(image_count_total=2)

    def test_image_count_total(self) -> None:
        """
        A project's third image is a 413 (v2 and v1) in oslo.limit's words;
        another project is not affected; deleting one makes room.
        """
        first = self.created()
        self.created()
        self.assertLimit(self.create(), "image_count_total")
        v1 = self.request("POST", "/v1/images", {**ALICE, "x-image-meta-name": "n"})
        self.assertLimit(v1, "image_count_total")
        self.assertIn("current usage 2 and delta 1", self.create().body.decode())
        self.created(BOB)
        self.assertEqual(self.request("DELETE", f"/v2/images/{first}", ALICE).code, 204)
        self.created()


class UploadingTests(LimitsSite):
    limits = ProjectLimits(image_count_uploading=1)

    def test_image_count_uploading(self) -> None:
        """With one upload of the project's in progress, another is a 413 and the image stays queued."""
        image_id = self.created()
        self.put_record(status=SAVING)
        self.assertLimit(self.upload(image_id, b"data"), "image_count_uploading")
        self.assertEqual(self.status(image_id), "queued")
        self.assertEqual(self.upload(self.created(BOB), b"data", BOB).code, 204)


class SizeTests(LimitsSite):
    limits = ProjectLimits(image_size_total=1)

    def test_declared_over_allowance(self) -> None:
        """A declared size past what is left of image_size_total is a 413 before any byte."""
        first = self.created()
        self.assertEqual(self.upload(first, b"x" * (700 * 1024)).code, 204)
        stored = self.stored_files()
        second = self.created()
        self.assertLimit(self.upload(second, b"x" * (400 * 1024)), "image_size_total")
        self.assertEqual(self.status(second), "queued")
        self.assertEqual(self.stored_files(), stored)
        self.assertEqual(self.upload(second, b"x" * (300 * 1024)).code, 204)

    def test_mid_stream(self) -> None:
        """
        An undeclared (chunked) body that passes what is left is a 413
        mid-stream: its data is removed, the image is queued again.
        """
        first = self.created()
        self.assertEqual(self.upload(first, b"x" * (700 * 1024)).code, 204)
        stored = self.stored_files()
        second = self.created()
        body = ChunkedBody(b"x" * (400 * 1024), chunk_size=64 * 1024, known_length=False)
        self.assertLimit(self.upload(second, body), "image_size_total")
        self.assertEqual(self.status(second), "queued")
        self.assertEqual(self.stored_files(), stored)

    def test_already_over(self) -> None:
        """A project already past image_size_total may not start an upload; v1 neither."""
        self.put_record(size=3 * MiB)
        self.assertLimit(self.upload(self.created(), b"x"), "image_size_total")
        v1 = self.request("POST", "/v1/images", {**ALICE, **OCTET, "x-image-meta-name": "n",
                                                 "x-image-meta-disk_format": "raw",
                                                 "x-image-meta-container_format": "bare"}, b"x")
        self.assertLimit(v1, "image_size_total")
        self.assertEqual(self.upload(self.created(BOB), b"x", BOB).code, 204)


class StageTests(LimitsSite):
    limits = ProjectLimits(image_stage_total=1, image_size_total=100)

    def stage(self, image_id: str, data: bytes) -> Answer:
        return self.request("PUT", f"/v2/images/{image_id}/stage", {**ALICE, **OCTET}, data)

    def test_image_stage_total(self) -> None:
        """
        A stage counts against image_stage_total (as Glance's stage does),
        not image_size_total: staged data past what is left is a 413 and
        the image stays queued; a plain upload of the same size still fits.
        """
        first = self.created()
        self.assertEqual(self.stage(first, b"x" * (700 * 1024)).code, 204)
        self.assertEqual(self.status(first), "uploading")
        second = self.created()
        self.assertLimit(self.stage(second, b"x" * (400 * 1024)), "image_stage_total")
        self.assertEqual(self.status(second), "queued")
        self.assertEqual(self.upload(second, b"x" * (400 * 1024)).code, 204)


class UsageTests(LimitsSite):
    limits = ProjectLimits(image_size_total=10, image_count_total=5)

    def test_usage(self) -> None:
        """GET /v2/info/usage: each limit (-1: none) and the caller's project's usage, sizes in MiB."""
        self.upload(self.created(), b"x" * (2 * MiB + 5))
        self.created()
        self.put_record(status=SAVING)
        answer = self.request("GET", "/v2/info/usage", ALICE)
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(answer.json(), {"usage": {
            "image_size_total": {"limit": 10, "usage": 2},
            "image_stage_total": {"limit": -1, "usage": 0},
            "image_count_total": {"limit": 5, "usage": 3},
            "image_count_uploading": {"limit": -1, "usage": 1},
        }})
        other = self.request("GET", "/v2/info/usage", BOB).json()["usage"]
        self.assertEqual(other["image_count_total"], {"limit": 5, "usage": 0})


class UnlimitedTests(LimitsSite):
    def test_default_unlimited(self) -> None:
        """Without [project_limits] nothing is limited and usage says -1."""
        for _ in range(3):
            self.assertEqual(self.upload(self.created(), b"x" * 1000).code, 204)
        usage = self.request("GET", "/v2/info/usage", ALICE).json()["usage"]
        self.assertEqual({v["limit"] for v in usage.values()}, {-1})
        self.assertEqual(usage["image_count_total"]["usage"], 3)


class ConfigTests(SynchronousTestCase):
    """C{[project_limits]} and C{use_keystone_limits}."""

    def load(self, text: str) -> Any:
        path = FilePath(self.mktemp())
        path.setContent(text.encode())
        return load_config(path.path)

    def test_defaults(self) -> None:
        """Unset: every limit is -1 (unlimited)."""
        self.assertEqual(self.load("[DEFAULT]\n").project_limits, ProjectLimits())

    def test_set(self) -> None:
        """Each of Glance's four names is read."""
        config = self.load("[project_limits]\nimage_size_total = 1024\nimage_stage_total = 0\n"
                           "image_count_total = 100\nimage_count_uploading = 2\n")
        self.assertEqual(config.project_limits, ProjectLimits(1024, 0, 100, 2))

    def test_refused(self) -> None:
        """
        An unknown name, a value under -1, and use_keystone_limits = true
        without [oslo_limit] (tests.test_keystone_limits) stop the start.
        """
        self.assertRaises(ConfigError, self.load, "[project_limits]\nimage_size = 1\n")
        self.assertRaises(ConfigError, self.load, "[project_limits]\nimage_count_total = -2\n")
        error = self.assertRaises(
            ConfigError, self.load, "[DEFAULT]\nuse_keystone_limits = true\n"
        )
        self.assertIn("[oslo_limit]", str(error))
