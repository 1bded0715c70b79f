"""
Tests for Glance's per-image quotas (L{glance_tx.registry.quotas}): the
wrapper on its own, then each quota through v1 and v2, refused with a 413
that names it and leaving what is stored as it was.
"""

from __future__ import annotations

from typing import Any

from twisted.python.components import proxyForInterface
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from glance_tx.config import ImageQuotas
from glance_tx.errors import Conflict
from glance_tx.images import ImageUpdate, Location
from glance_tx.registry.interface import IRegistry
from glance_tx.registry.quotas import QuotaExceeded, QuotaRegistry
from tests.registry_conformance import make_image
from tests.test_api_v1 import FORMATS, meta
from tests.test_api_v2 import ALICE, BOB, CAROL, V2TestCase
from tests.test_registry_sql import sync_open

SMALL = ImageQuotas(
    image_member_quota=2,
    image_property_quota=3,
    image_tag_quota=3,
    image_location_quota=1,
)


class QuotaRegistryTests(SynchronousTestCase):
    """The wrapper over a SQLite registry."""

    def setUp(self) -> None:
        self.inner = sync_open("sqlite://")
        self.addCleanup(lambda: self.successResultOf(self.inner.close()))
        self.registry: Any = QuotaRegistry(self.inner, SMALL)
        self.image = self.successResultOf(
            self.registry.create(make_image(properties={"a": "1", "b": "2"}))
        )

    def refused(self, d: Any, quota: str, attempted: int, maximum: int) -> None:
        error = self.failureResultOf(d, QuotaExceeded).value
        self.assertEqual((error.status, error.quota), (413, quota))
        self.assertIn(f"Attempted: {attempted}, Maximum: {maximum}", error.message)

    def stored(self) -> Any:
        return self.successResultOf(self.inner.get(self.image.id))

    def test_provides_registry(self) -> None:
        """It is an IRegistry."""
        self.assertTrue(verifyObject(IRegistry, self.registry))

    def test_create(self) -> None:
        """A new image over a quota is not created."""
        image = make_image(tags=frozenset("wxyz"))
        self.refused(self.registry.create(image), "image_tag_quota", 4, 3)
        self.failureResultOf(self.inner.get(image.id))

    def test_properties_merged(self) -> None:
        """Properties added to the image's own are counted with them."""
        self.refused(
            self.registry.update(self.image.id, ImageUpdate(properties={"c": "3", "d": "4"})),
            "image_property_quota", 4, 3,
        )
        self.assertEqual(self.stored(), self.image)
        self.successResultOf(
            self.registry.update(self.image.id, ImageUpdate(properties={"c": "3", "a": None, "d": "4"}))
        )
        self.assertEqual(dict(self.stored().properties), {"b": "2", "c": "3", "d": "4"})

    def test_locations(self) -> None:
        """A second location passes a location quota of one."""
        two = (Location("file:///a"), Location("file:///b"))
        self.refused(
            self.registry.update(self.image.id, ImageUpdate(fields={"locations": two})),
            "image_location_quota", 2, 1,
        )
        self.assertEqual(self.stored(), self.image)

    def test_tags(self) -> None:
        """The fourth tag is refused; one the image has already is not new."""
        for tag in "xyz":
            self.successResultOf(self.registry.add_tag(self.image.id, tag))
        self.successResultOf(self.registry.add_tag(self.image.id, "x"))
        self.refused(self.registry.add_tag(self.image.id, "w"), "image_tag_quota", 4, 3)
        self.assertEqual(self.stored().tags, frozenset("xyz"))

    def test_members(self) -> None:
        """The third member is refused; adding a member twice is the registry's 409."""
        for member in ("p1", "p2"):
            self.successResultOf(self.registry.add_member(self.image.id, member))
        self.failureResultOf(self.registry.add_member(self.image.id, "p1"), Conflict)
        self.refused(self.registry.add_member(self.image.id, "p3"), "image_member_quota", 3, 2)
        members = self.successResultOf(self.inner.list_members(self.image.id))
        self.assertEqual([m.member_id for m in members], ["p1", "p2"])

    def test_over_quota_may_shrink(self) -> None:
        """
        An image already over a quota (it was lowered) may lose properties
        and change others; only growth is refused.
        """
        lowered: Any = QuotaRegistry(self.inner, ImageQuotas(image_property_quota=1))
        self.successResultOf(lowered.update(self.image.id, ImageUpdate(properties={"a": "9"})))
        self.refused(
            lowered.update(self.image.id, ImageUpdate(properties={"c": "3"})),
            "image_property_quota", 3, 1,
        )
        self.successResultOf(lowered.update(self.image.id, ImageUpdate(properties={"a": None})))
        self.assertEqual(dict(self.stored().properties), {"b": "2"})

    def test_unlimited(self) -> None:
        """A negative quota is no limit, as in Glance."""
        unlimited: Any = QuotaRegistry(
            self.inner,
            ImageQuotas(
                image_member_quota=-1, image_property_quota=-1,
                image_tag_quota=-5, image_location_quota=-1,
            ),
        )
        many = {f"p{i}": "v" for i in range(300)}
        self.successResultOf(unlimited.update(self.image.id, ImageUpdate(properties=many)))
        for i in range(200):
            self.successResultOf(unlimited.add_tag(self.image.id, f"t{i}"))
        for i in range(150):
            self.successResultOf(unlimited.add_member(self.image.id, f"m{i}"))
        self.assertEqual((len(self.stored().properties), len(self.stored().tags)), (302, 200))

    def test_known_counts_need_no_read(self) -> None:
        """
        An update that sets whole tag and location lists within the quotas
        is passed on without reading the image first (an upload's commit).
        """
        counting = _CountingGets(self.inner)
        registry: Any = QuotaRegistry(counting, SMALL)
        self.successResultOf(
            registry.update(
                self.image.id,
                ImageUpdate(fields={"locations": (Location("file:///a"),)}, tags=frozenset("x")),
            )
        )
        self.assertEqual(counting.gets, 0)
        self.successResultOf(registry.update(self.image.id, ImageUpdate(properties={"c": "3"})))
        self.assertEqual(counting.gets, 1)


class _CountingGets(proxyForInterface(IRegistry, "registry")):  # type: ignore[misc]
    """The wrapped registry, counting its C{get} calls."""

    gets = 0

    def get(self, image_id: str, include_deleted: bool = False) -> Any:
        self.gets += 1
        return self.registry.get(image_id, include_deleted)


class V2QuotaTests(V2TestCase):
    """Each quota through the v2 API."""

    quotas = SMALL

    def test_create_properties(self) -> None:
        """A create with four properties is a 413 naming the quota; nothing is created."""
        answer = self.send_json(
            "POST", "/v2/images", {"disk_format": "raw", "a": "1", "b": "2", "c": "3", "d": "4"}
        )
        self.assertError(answer, 413, "allowed image properties. Attempted: 4, Maximum: 3")
        self.assertEqual(self.listed(), [])

    def test_create_tags(self) -> None:
        """A create with four tags is a 413."""
        answer = self.send_json("POST", "/v2/images", {"tags": ["a", "b", "c", "d"]})
        self.assertError(answer, 413, "allowed image tags. Attempted: 4, Maximum: 3")
        self.assertEqual(self.listed(), [])

    def test_patch_properties(self) -> None:
        """A PATCH adding a fourth property is a 413; the image is unchanged."""
        image = self.create(a="1", b="2", c="3")
        answer = self.patch(image["id"], [{"op": "add", "path": "/d", "value": "4"}])
        self.assertError(answer, 413, "Attempted: 4, Maximum: 3")
        self.assertNotIn("d", self.stored_record(image["id"]).properties)

    def test_patch_tags(self) -> None:
        """A PATCH replacing the tags with four is a 413."""
        image = self.create(tags=["a"])
        answer = self.patch(image["id"], [{"op": "replace", "path": "/tags", "value": list("abcd")}])
        self.assertError(answer, 413, "allowed image tags. Attempted: 4, Maximum: 3")
        self.assertEqual(self.stored_record(image["id"]).tags, frozenset("a"))

    def test_put_tag(self) -> None:
        """PUT of a fourth tag is a 413; the tags are as they were."""
        image = self.create(tags=["a", "b", "c"])
        answer = self.request("PUT", f"/v2/images/{image['id']}/tags/d")
        self.assertError(answer, 413, "allowed image tags. Attempted: 4, Maximum: 3")
        self.assertEqual(self.stored_record(image["id"]).tags, frozenset("abc"))
        self.assertEqual(self.request("PUT", f"/v2/images/{image['id']}/tags/a").code, 204)

    def test_members(self) -> None:
        """A third member is a 413 naming the member quota; the members are as they were."""
        image = self.create(visibility="shared", headers=ALICE)
        members = f"/v2/images/{image['id']}/members"
        for who in (BOB, CAROL):
            answer = self.send_json("POST", members, {"member": who["X-Project-Id"]}, ALICE)
            self.assertEqual(answer.code, 200, answer.body)
        answer = self.send_json("POST", members, {"member": "dave"}, ALICE)
        self.assertError(answer, 413, "image members for this image. Attempted: 3, Maximum: 2")
        listed = self.request("GET", members, headers=ALICE).json()["members"]
        self.assertEqual(sorted(m["member_id"] for m in listed), ["bob", "carol"])


class V2DefaultQuotaTests(V2TestCase):
    """Glance's defaults apply with no configuration."""

    def test_default_property_quota(self) -> None:
        """128 properties are taken, 129 are not."""
        self.create(**{f"p{i}": "v" for i in range(128)})
        answer = self.send_json("POST", "/v2/images", {f"p{i}": "v" for i in range(129)})
        self.assertError(answer, 413, "Attempted: 129, Maximum: 128")


class V1QuotaTests(V2TestCase):
    """The property quota through v1's x-image-meta-property-* headers."""

    quotas = SMALL

    def properties(self, *names: str) -> dict[str, str]:
        return {f"x-image-meta-property-{name}": "v" for name in names}

    def test_create(self) -> None:
        """A POST with four properties is a 413; no image, no data."""
        answer = self.request("POST", "/v1/images", {**meta(name="x", disk_format="raw", container_format="bare"), **self.properties(*"abcd")})
        self.assertError(answer, 413, "allowed image properties. Attempted: 4, Maximum: 3")
        self.assertEqual(self.listed(), [])

    def test_create_with_data(self) -> None:
        """So with data: refused before any byte is stored."""
        answer = self.request(
            "POST", "/v1/images",
            {"Content-Type": "application/octet-stream", **FORMATS, **self.properties(*"abcd")},
            data=b"d" * 10000,
        )
        self.assertError(answer, 413, "Attempted: 4, Maximum: 3")
        self.assertEqual(self.listed(), [])
        self.assertEqual(self.stored_files(), [])

    def test_update(self) -> None:
        """A PUT adding a fourth property is a 413; with purge-props the same four are too."""
        created = self.request("POST", "/v1/images", {**meta(name="x", disk_format="raw", container_format="bare"), **self.properties(*"abc")})
        image_id = created.json()["image"]["id"]
        for headers in ({}, {"x-glance-registry-purge-props": "true"}):
            answer = self.request(
                "PUT", f"/v1/images/{image_id}", {**headers, **self.properties(*"abcd")}
            )
            self.assertError(answer, 413, "Attempted: 4, Maximum: 3")
        self.assertEqual(sorted(self.stored_record(image_id).properties), ["a", "b", "c"])
        answer = self.request(
            "PUT", f"/v1/images/{image_id}",
            {"x-glance-registry-purge-props": "true", **self.properties("e")},
        )
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(sorted(self.stored_record(image_id).properties), ["e"])

    def test_update_with_data(self) -> None:
        """A PUT of data with four properties is a 413; the image stays queued, no data."""
        created = self.request("POST", "/v1/images", meta(name="x", disk_format="raw", container_format="bare"))
        image_id = created.json()["image"]["id"]
        answer = self.request(
            "PUT", f"/v1/images/{image_id}",
            {"Content-Type": "application/octet-stream", **self.properties(*"abcd")},
            data=b"d" * 10000,
        )
        self.assertError(answer, 413, "Attempted: 4, Maximum: 3")
        record = self.stored_record(image_id)
        self.assertEqual((record.status, dict(record.properties)), ("queued", {}))
        self.assertEqual(self.stored_files(), [])
