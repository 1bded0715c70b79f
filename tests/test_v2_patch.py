"""JSON-patch parsing and applying for PATCH /v2/images/{id}, without HTTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from glance_tx import images
from glance_tx.api.v2_patch import (
    ACCEPT_PATCH,
    Change,
    NewLocation,
    apply_patch,
    decode_pointer,
    draft_for,
    parse_patch,
)
from glance_tx.config import ImageFormatConfig
from glance_tx.errors import BadRequest, Conflict, Forbidden, UnsupportedMediaType
from glance_tx.images import Image, ImageUpdate
from glance_tx.locations import Validation

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def image(status: str = images.QUEUED, **fields: Any) -> Image:
    return Image(id="6f1f1e0c-0000-4000-8000-000000000001", status=status,
                 created_at=NOW, updated_at=NOW, **fields)


def parse(operations: Any, draft: int = 10) -> tuple[Change, ...]:
    return parse_patch(json.dumps(operations).encode(), draft)


class MediaTypeTests(SynchronousTestCase):
    def test_drafts(self) -> None:
        """The two media types name their drafts; parameters are ignored."""
        self.assertEqual(draft_for("application/openstack-images-v2.1-json-patch"), 10)
        self.assertEqual(draft_for("Application/OpenStack-Images-v2.0-JSON-Patch; charset=utf-8"), 4)
        for other in ("application/json", None, ""):
            self.assertRaises(UnsupportedMediaType, draft_for, other)
        self.assertEqual(
            ACCEPT_PATCH,
            "application/openstack-images-v2.0-json-patch, "
            "application/openstack-images-v2.1-json-patch",
        )


class ParseTests(SynchronousTestCase):
    def test_both_dialects(self) -> None:
        """The same change in the 2.1 and 2.0 spellings."""
        self.assertEqual(
            parse([{"op": "replace", "path": "/name", "value": "x"}]),
            (Change("replace", "name", "x", 10),),
        )
        self.assertEqual(
            parse([{"replace": "/name", "value": "x"}, {"remove": "/p"}], draft=4),
            (Change("replace", "name", "x", 4), Change("remove", "p", None, 4)),
        )

    def test_pointer_escapes(self) -> None:
        """~1 is / and ~0 is ~ in a pointer."""
        self.assertEqual(decode_pointer("/a~1b~0c"), ["a/b~c"])
        self.assertEqual(parse([{"op": "add", "path": "/x~1y", "value": "v"}])[0].name, "x/y")

    def test_malformed(self) -> None:
        """Bad JSON, shapes, ops, pointers and values are BadRequests."""
        self.assertRaises(BadRequest, parse_patch, b"[", 10)
        for operations in (
            {}, [1], [{"path": "/a", "value": "v"}], [{"op": "copy", "path": "/a"}],
            [{"op": "add", "value": "v"}], [{"op": "add", "path": "/a"}],
            [{"op": "add", "path": "a", "value": "v"}], [{"op": "add", "path": "/a/b", "value": "v"}],
            [{"op": "add", "path": "/a~", "value": "v"}], [{"op": "add", "path": 5, "value": "v"}],
            [{"op": "add", "path": "/a", "value": ["list"]}],
            [{"op": "add", "path": "/" + "k" * 256, "value": "v"}],
            [{"op": "replace", "path": "/min_ram", "value": "1"}],
        ):
            self.assertRaises(BadRequest, parse, operations)
        self.assertRaises(BadRequest, parse, [{"add": "/a", "replace": "/b", "value": "v"}], 4)
        self.assertRaises(BadRequest, parse, [{"value": "v"}], 4)

    def test_forbidden(self) -> None:
        """
        Read-only and reserved paths are Forbidden, and so is replacing
        one location (the whole list may be replaced).
        """
        for path in ("/status", "/id", "/self", "/deleted", "/os_glance_x"):
            self.assertRaises(Forbidden, parse, [{"op": "add", "path": path, "value": "v"}])
        self.assertRaises(Forbidden, parse, [{"op": "replace", "path": "/locations/0", "value": {}}])
        self.assertEqual(
            parse([{"op": "replace", "path": "/locations", "value": []}]),
            (Change("replace", "locations", (), 10),),
        )

    def test_locations(self) -> None:
        """
        An add at /locations/N or /locations/- names a position (None for
        -) and a NewLocation with the store its metadata names and its
        validation data; a remove names a position. Both dialects.
        """
        url = "http://images.example/x"
        value = {"url": url, "metadata": {"store": "web"},
                 "validation_data": {"os_hash_algo": "sha512", "os_hash_value": "ab"}}
        added, removed = parse([
            {"op": "add", "path": "/locations/-", "value": value},
            {"op": "remove", "path": "/locations/3"},
        ])
        self.assertEqual((added.op, added.name, added.position), ("add", "locations", None))
        self.assertEqual(added.value, NewLocation(url, "web", Validation(None, "sha512", "ab")))
        self.assertEqual((removed.op, removed.position, removed.value), ("remove", 3, None))
        (old,) = parse([{"add": "/locations/0", "value": {"url": url, "metadata": {}}}], 4)
        self.assertEqual((old.position, old.value), (0, NewLocation(url)))

    def test_bad_locations(self) -> None:
        """Malformed location operations are 400s, before any image is read."""
        for operation in (
            {"op": "add", "path": "/locations", "value": {"url": "u", "metadata": {}}},
            {"op": "add", "path": "/locations/0/url", "value": "u"},
            {"op": "add", "path": "/locations/one", "value": {"url": "u", "metadata": {}}},
            {"op": "remove", "path": "/locations/-1"},
            {"op": "add", "path": "/locations/-"},
            {"op": "add", "path": "/locations/-", "value": "http://x"},
            {"op": "add", "path": "/locations/-", "value": {"url": "u"}},
            {"op": "add", "path": "/locations/-", "value": {"url": "u" * 256, "metadata": {}}},
            {"op": "add", "path": "/locations/-",
             "value": {"url": "u", "metadata": {"a": "x" * 20000}}},
            {"op": "add", "path": "/locations/-", "value": {"url": "u", "metadata": {"store": 1}}},
            {"op": "add", "path": "/locations/-",
             "value": {"url": "u", "metadata": {}, "validation_data": {"checksum": "ab"}}},
        ):
            self.assertRaises(BadRequest, parse, [operation])

    def test_apply_leaves_locations(self) -> None:
        """apply_patch folds the other changes and leaves locations to the caller."""
        changes = parse([
            {"op": "add", "path": "/locations/-", "value": {"url": "u", "metadata": {}}},
            {"op": "replace", "path": "/name", "value": "n"},
        ])
        self.assertEqual(apply_patch(image(), changes), ImageUpdate(fields={"name": "n"}))


class ApplyTests(SynchronousTestCase):
    def test_one_update(self) -> None:
        """Changes fold into one ImageUpdate holding only what changed."""
        before = image(name="n", properties={"a": "1", "b": "2"}, tags={"t"})
        update = apply_patch(before, parse([
            {"op": "replace", "path": "/name", "value": "m"},
            {"op": "replace", "path": "/a", "value": "1"},
            {"op": "remove", "path": "/b"},
            {"op": "add", "path": "/c", "value": "3"},
            {"op": "add", "path": "/tags", "value": ["t", "u"]},
            {"op": "replace", "path": "/min_disk", "value": 0},
        ]))
        self.assertEqual(
            update,
            ImageUpdate(fields={"name": "m"}, properties={"b": None, "c": "3"},
                        tags=frozenset({"t", "u"})),
        )

    def test_later_operations_see_earlier_ones(self) -> None:
        """Operations apply in order: add then replace then remove."""
        update = apply_patch(image(), parse([
            {"op": "add", "path": "/p", "value": "1"},
            {"op": "replace", "path": "/p", "value": "2"},
            {"op": "remove", "path": "/p"},
        ]))
        self.assertEqual(update, ImageUpdate())

    def test_conflicts(self) -> None:
        """Missing properties (replace, remove) and 2.0 adds of present ones."""
        before = image(properties={"p": "1"})
        self.assertRaises(Conflict, apply_patch, before, parse([{"op": "remove", "path": "/q"}]))
        self.assertRaises(Conflict, apply_patch, before, parse([{"op": "replace", "path": "/q", "value": "v"}]))
        self.assertRaises(Conflict, apply_patch, before, parse([{"add": "/p", "value": "v"}], 4))
        self.assertRaises(Conflict, apply_patch, before, parse([{"add": "/name", "value": "v"}], 4))

    def test_stores_shown_not_stored(self) -> None:
        """
        C{stores} is not read-only in a patch (Glance's
        _readonly_properties leaves it out): removing or replacing it, even
        with the value shown, is the Conflict of a property the image does
        not have; an add is Forbidden.
        """
        before = image(properties={"p": "1"})
        for op in ({"op": "remove", "path": "/stores"},
                   {"op": "replace", "path": "/stores", "value": "file"}):
            changes = parse([op])
            self.assertEqual(changes[0].name, "stores")
            self.assertRaises(Conflict, apply_patch, before, changes)
        self.assertRaises(
            Forbidden, apply_patch, before,
            parse([{"op": "add", "path": "/stores", "value": "file"}]),
        )

    def test_core_fields_stay(self) -> None:
        """Removing a core field is Forbidden."""
        self.assertRaises(Forbidden, apply_patch, image(), parse([{"op": "remove", "path": "/tags"}]))

    def test_formats_while_queued(self) -> None:
        """Formats change while queued, not once the image has data."""
        queued = image(disk_format="raw")
        change = parse([{"op": "replace", "path": "/disk_format", "value": "qcow2"}])
        self.assertEqual(apply_patch(queued, change).fields, {"disk_format": "qcow2"})
        active = image(images.ACTIVE, disk_format="raw")
        self.assertRaises(Forbidden, apply_patch, active, change)

    def test_formats_written_once_active(self) -> None:
        """
        Once the image has data, any write of a format is Forbidden, even
        of the value it has, or of null, by replace or add: Glance 33
        answers 403 to each (its setter refuses every assignment).
        """
        for status in (images.ACTIVE, images.DEACTIVATED, images.UPLOADING):
            active = image(status, disk_format="raw", container_format="bare")
            for op in ("replace", "add"):
                for name, value in (("disk_format", "raw"), ("container_format", "bare"),
                                    ("disk_format", None)):
                    change = parse([{"op": op, "path": f"/{name}", "value": value}])
                    error = self.assertRaises(Forbidden, apply_patch, active, change)
                    self.assertIn(f"Attribute {name} can be only replaced", error.message)
        importing = image(images.IMAGE_IMPORTING, disk_format="raw")
        same = parse([{"op": "replace", "path": "/disk_format", "value": "raw"}])
        self.assertEqual(apply_patch(importing, same), ImageUpdate())

    def test_no_pairing_rule(self) -> None:
        """
        v2 has no ami/ari/aki pairing rule (Glance 33 takes an ami disk in
        a bare container, a raw disk in an ami container); v1 keeps it.
        """
        for disk, container in (("ami", "bare"), ("raw", "ami"), ("aki", "ari")):
            change = parse([
                {"op": "replace", "path": "/disk_format", "value": disk},
                {"op": "replace", "path": "/container_format", "value": container},
            ])
            self.assertEqual(
                apply_patch(image(), change).fields,
                {"disk_format": disk, "container_format": container},
            )

    def test_formats_from_the_configuration(self) -> None:
        """
        A format outside C{[image_format] disk_formats} (or
        C{container_formats}) is a 400 quoting the schema's enum; one the
        operator added is taken.
        """
        formats = ImageFormatConfig(disk_formats=("raw", "gpt"), container_formats=("bare",))

        def op(name: str, value: str) -> bytes:
            return json.dumps([{"op": "replace", "path": f"/{name}", "value": value}]).encode()

        self.assertEqual(parse_patch(op("disk_format", "gpt"), 10, formats)[0].value, "gpt")
        error = self.assertRaises(BadRequest, parse_patch, op("disk_format", "qcow2"), 10, formats)
        self.assertIn("'qcow2' is not one of [None, 'raw', 'gpt']", error.message)
        error = self.assertRaises(BadRequest, parse_patch, op("container_format", "ovf"), 10, formats)
        self.assertIn("'ovf' is not one of [None, 'bare']", error.message)
        self.assertRaises(BadRequest, parse_patch, op("disk_format", "gpt"), 10)

    def test_null_removes_nullable_property(self) -> None:
        """A null for a nullable schema property removes it; adding one is a no-op."""
        kernel = "6f1f1e0c-0000-4000-8000-000000000002"
        before = image(properties={"kernel_id": kernel})
        self.assertEqual(
            apply_patch(before, parse([{"op": "replace", "path": "/kernel_id", "value": None}])),
            ImageUpdate(properties={"kernel_id": None}),
        )
        self.assertEqual(
            apply_patch(image(), parse([{"op": "add", "path": "/ramdisk_id", "value": None}])),
            ImageUpdate(),
        )
