"""
The rules on an image's C{disk_format} and C{container_format}, v1 and v2,
each as a real Glance answers it (v2 measured against Glance 33 under
uwsgi; v1, which Glance 33 no longer serves, read from the last Glance that
did, its C{_validate_format}): v2 checks only the operator's lists (the
schema's enums), v1 also pairs ami/ari/aki.
"""

from __future__ import annotations

from typing import Any

from glance_tx import images
from glance_tx.config import ImageFormatConfig
from tests.test_api_v1 import meta
from tests.test_api_v2 import V2TestCase

#: An operator's lists: gpt added, most of Glance's left out.
NARROW = ImageFormatConfig(disk_formats=("raw", "qcow2", "gpt"), container_formats=("bare", "ovf"))


class V2FormatTests(V2TestCase):
    """v2: the lists, no pairing."""

    def test_any_mix_accepted(self) -> None:
        """
        A mix outside the ami/ari/aki pairing is created as sent (Glance 33
        answers 201 to each), and an ami disk in a bare container takes data.
        """
        for disk, container in (("raw", "ami"), ("ami", "bare"), ("aki", "ari"), ("qcow2", "aki")):
            image = self.create(disk_format=disk, container_format=container)
            self.assertEqual((image["disk_format"], image["container_format"]), (disk, container))
        image = self.create(disk_format="ami", container_format="bare")
        self.assertEqual(self.upload(image["id"], b"x" * 1024).code, 204)
        self.assertEqual(self.show(image["id"])["status"], images.ACTIVE)

    def test_unknown_formats(self) -> None:
        """
        A format outside the lists is a 400 quoting the enum, in a create or
        a patch: no case folding ("RAW"), no empty string, nothing the
        inspector knows but the list lacks ("gpt").
        """
        for body in ({"disk_format": "bogus"}, {"disk_format": "RAW"}, {"disk_format": ""},
                     {"disk_format": "gpt"}, {"container_format": "bogus"}):
            value = next(iter(body.values()))
            self.assertError(
                self.send_json("POST", "/v2/images", body), 400, f"{value!r} is not one of [None, "
            )
        image = self.create()
        self.assertError(
            self.patch(image["id"], [{"op": "replace", "path": "/disk_format", "value": "bogus"}]),
            400, "'bogus' is not one of",
        )

    def test_null_formats_until_upload(self) -> None:
        """
        Null formats are allowed while queued; an upload then is a 400
        naming what is missing (Glance 33: 400, not 409), the image left
        queued.
        """
        for fields, missing in (
            ({}, "Properties disk_format, container_format must"),
            ({"disk_format": "raw"}, "Property container_format must"),
            ({"container_format": "bare"}, "Property disk_format must"),
        ):
            image = self.create(**{"disk_format": None, "container_format": None, **fields})
            self.assertError(self.upload(image["id"], b"data"), 400, missing)
            self.assertEqual(self.show(image["id"])["status"], images.QUEUED)

    def test_formats_fixed_once_active(self) -> None:
        """
        Once active (or deactivated), writing a format is a 403 even to the
        value it has, as in Glance 33; a PATCH of nothing else succeeds.
        """
        image = self.active()
        for value in ("raw", "qcow2"):
            self.assertError(
                self.patch(image["id"], [{"op": "replace", "path": "/disk_format", "value": value}]),
                403, "Attribute disk_format can be only replaced for a queued image.",
            )
        self.assertError(
            self.patch(image["id"], [{"op": "replace", "path": "/container_format", "value": "bare"}]),
            403, "Attribute container_format can be only replaced",
        )
        answer = self.patch(image["id"], [{"op": "replace", "path": "/name", "value": "n"}])
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(self.request("POST", f"/v2/images/{image['id']}/actions/deactivate").code, 204)
        self.assertError(
            self.patch(image["id"], [{"op": "replace", "path": "/disk_format", "value": "raw"}]),
            403, "Attribute disk_format",
        )

    def test_defaults_are_glance_33s(self) -> None:
        """With no [image_format] lists, the schema's enums are Glance 33's, in its order."""
        properties = self.request("GET", "/v2/schemas/image").json()["properties"]
        self.assertEqual(
            properties["disk_format"]["enum"],
            [None, "ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop"],
        )
        self.assertEqual(
            properties["container_format"]["enum"],
            [None, "ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed"],
        )


class V2ConfiguredFormatTests(V2TestCase):
    """v2 with an operator's C{disk_formats} and C{container_formats}."""

    site_options: dict[str, Any] = {"image_format": NARROW}

    def test_schema_follows_the_lists(self) -> None:
        """Both schemas (image, and images' items) list the configured formats."""
        image = self.request("GET", "/v2/schemas/image").json()["properties"]
        self.assertEqual(image["disk_format"]["enum"], [None, "raw", "qcow2", "gpt"])
        self.assertEqual(image["container_format"]["enum"], [None, "bare", "ovf"])
        listing = self.request("GET", "/v2/schemas/images").json()
        items = listing["properties"]["images"]["items"]["properties"]
        self.assertEqual(items["disk_format"]["enum"], [None, "raw", "qcow2", "gpt"])

    def test_create_and_patch_follow_the_lists(self) -> None:
        """A listed format is taken, one only Glance's default lists hold is a 400."""
        image = self.create(disk_format="gpt", container_format="ovf")
        self.assertEqual(image["disk_format"], "gpt")
        self.assertError(
            self.send_json("POST", "/v2/images", {"disk_format": "vmdk"}), 400,
            "'vmdk' is not one of [None, 'raw', 'qcow2', 'gpt']",
        )
        self.assertError(
            self.send_json("POST", "/v2/images", {"container_format": "ami"}), 400,
            "'ami' is not one of [None, 'bare', 'ovf']",
        )
        self.assertError(
            self.patch(image["id"], [{"op": "replace", "path": "/disk_format", "value": "iso"}]),
            400, "'iso' is not one of",
        )

    def test_records_keep_dropped_formats(self) -> None:
        """
        An image whose format the operator has since dropped is still
        served and changed (the registry does not judge formats).
        """
        image = self.create(disk_format="qcow2")
        self.successResultOf(
            self.registry.update(image["id"], images.ImageUpdate(fields={"disk_format": "vhd"}))
        )
        answer = self.patch(image["id"], [{"op": "replace", "path": "/name", "value": "kept"}])
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(answer.json()["disk_format"], "vhd")


class V1FormatTests(V2TestCase):
    """v1: the lists, and Glance v1's ami/ari/aki pairing."""

    def v1(self, method: str, path: str, **values: str) -> Any:
        return self.request(method, path, meta(**values))

    def test_pairing(self) -> None:
        """When one format is ami, ari or aki, the other must be the same: 400."""
        for disk, container in (("ami", "bare"), ("raw", "ami"), ("aki", "ari")):
            self.assertError(
                self.v1("POST", "/v1/images", disk_format=disk, container_format=container),
                400, "Invalid mix of disk and container formats.",
            )
        answer = self.v1("POST", "/v1/images", disk_format="ari", container_format="ari")
        self.assertEqual(answer.code, 201, answer.body)

    def test_pair_filled_in(self) -> None:
        """An amazon format with the other one unnamed names both, on create and update."""
        answer = self.v1("POST", "/v1/images", disk_format="ami")
        self.assertEqual(answer.code, 201, answer.body)
        self.assertEqual(answer.json()["image"]["container_format"], "ami")
        answer = self.v1("POST", "/v1/images", container_format="aki")
        self.assertEqual(answer.json()["image"]["disk_format"], "aki")
        image_id = self.v1("POST", "/v1/images", disk_format="raw", container_format="bare").json()["image"]["id"]
        answer = self.v1("PUT", f"/v1/images/{image_id}", container_format="ari")
        self.assertEqual(answer.code, 200, answer.body)
        shown = answer.json()["image"]
        self.assertEqual((shown["disk_format"], shown["container_format"]), ("ari", "ari"))

    def test_unknown_formats(self) -> None:
        """
        Glance v1's messages; no case folding, and an empty header names no
        format, which is in no list.
        """
        for value, shown in (("floppy", "floppy"), ("RAW", "RAW"), ("", "None")):
            self.assertError(
                self.v1("POST", "/v1/images", disk_format=value), 400,
                f"Invalid disk format '{shown}' for image.",
            )
        self.assertError(
            self.v1("POST", "/v1/images", container_format="box"), 400,
            "Invalid container format 'box' for image.",
        )


class V1ConfiguredFormatTests(V1FormatTests):
    """v1 with an operator's lists (and every v1 rule above still holds)."""

    site_options: dict[str, Any] = {
        "image_format": ImageFormatConfig(
            disk_formats=("raw", "ami", "aki", "ari"), container_formats=("bare", "ami", "aki", "ari")
        )
    }

    def test_lists(self) -> None:
        """Glance's default lists no longer apply: qcow2 and ovf are refused."""
        self.assertError(
            self.v1("POST", "/v1/images", disk_format="qcow2"), 400, "Invalid disk format 'qcow2'"
        )
        self.assertError(
            self.v1("POST", "/v1/images", container_format="ovf"), 400, "Invalid container format 'ovf'"
        )
        answer = self.v1("POST", "/v1/images", disk_format="raw", container_format="bare")
        self.assertEqual(answer.code, 201, answer.body)
