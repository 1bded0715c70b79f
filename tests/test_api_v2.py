"""Images API v2, every endpoint and refusal, in memory."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any, cast
from urllib.parse import quote

from attrs import evolve
from twisted.python.components import proxyForInterface
from twisted.trial.unittest import SynchronousTestCase

from glance_tx import images
from glance_tx.api import v2_schemas
from glance_tx.api.params import MAX_JSON_DEPTH
from glance_tx.api.ranges import ByteRange, parse_ranges
from glance_tx.errors import BadRequest, RangeNotSatisfiable
from glance_tx.identity.headers import HeaderIdentity
from glance_tx.registry.interface import IRegistry
from glance_tx.store.backends import StoreMap
from tests.api_fixtures import Answer, SiteTestCase
from tests.memory_http import ChunkedBody
from tests.test_api_v1 import ErrorShapeMixin, meta

OCTET = {"Content-Type": "application/octet-stream"}
PATCH_21 = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
PATCH_20 = {"Content-Type": "application/openstack-images-v2.0-json-patch"}
RAW = {"disk_format": "raw", "container_format": "bare"}


def project(name: str, roles: str = "member") -> dict[str, str]:
    """The headers Keystone's middleware would set for a user of C{name}."""
    return {"X-Project-Id": name, "X-User-Id": f"user-of-{name}", "X-Roles": roles}


ALICE = project("alice")
BOB = project("bob")
CAROL = project("carol")
ADMIN = project("ops", "admin,member")


class V2TestCase(ErrorShapeMixin, SiteTestCase):
    """Helpers for driving the v2 API."""

    def send_json(
        self, method: str, path: str, document: Any, headers: dict[str, str] | None = None
    ) -> Answer:
        return self.request(
            method,
            path,
            {"Content-Type": "application/json", **(headers or {})},
            data=json.dumps(document).encode("utf-8"),
        )

    def create(self, headers: dict[str, str] | None = None, **fields: Any) -> dict[str, Any]:
        """Create an image (default: raw/bare) and return its document."""
        answer = self.send_json("POST", "/v2/images", {**RAW, **fields}, headers)
        self.assertEqual(answer.code, 201, answer.body)
        document: dict[str, Any] = answer.json()
        return document

    def upload(
        self, image_id: str, data: bytes, headers: dict[str, str] | None = None
    ) -> Answer:
        return self.request(
            "PUT", f"/v2/images/{image_id}/file", {**OCTET, **(headers or {})}, data=data
        )

    def active(self, data: bytes = b"image data" * 100, headers: dict[str, str] | None = None, **fields: Any) -> dict[str, Any]:
        """An active image holding C{data}."""
        image = self.create(headers, **fields)
        answer = self.upload(image["id"], data, headers)
        self.assertEqual(answer.code, 204, answer.body)
        return self.show(image["id"], headers)

    def show(self, image_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        answer = self.request("GET", f"/v2/images/{image_id}", headers)
        self.assertEqual(answer.code, 200, answer.body)
        document: dict[str, Any] = answer.json()
        return document

    def patch(
        self, image_id: str, operations: Any, headers: dict[str, str] | None = None,
        media: dict[str, str] = PATCH_21,
    ) -> Answer:
        return self.request(
            "PATCH",
            f"/v2/images/{image_id}",
            {**media, **(headers or {})},
            data=json.dumps(operations).encode("utf-8"),
        )

    def listed(self, query: str = "", headers: dict[str, str] | None = None) -> list[str]:
        """The ids a listing answers, in order."""
        answer = self.request("GET", "/v2/images" + (f"?{query}" if query else ""), headers)
        self.assertEqual(answer.code, 200, answer.body)
        return [image["id"] for image in answer.json()["images"]]

    def stored_record(self, image_id: str) -> images.Image:
        return self.successResultOf(self.registry.get(image_id))


class VersionsTests(V2TestCase):
    """The versions document of a site with one store (Glance without C{enabled_backends})."""

    #: The v2 versions listed, newest first, as Glance 33 lists them without
    #: an image cache: 2.17 (the new location API) is not served, and the
    #: cache's 2.14, 2.16 and 2.18 are never listed.
    expected = ["v2.15", "v2.9", "v2.7", "v2.6", "v2.5", "v2.4", "v2.3", "v2.2", "v2.1", "v2.0"]

    def listed(self, path: str, code: int) -> list[dict[str, Any]]:
        answer = self.request("GET", path)
        self.assertEqual(answer.code, code, answer.body)
        versions: list[dict[str, Any]] = answer.json()["versions"]
        return versions

    def test_versions_list_v2(self) -> None:
        """
        GET / and /versions (300) list v1.1, v1.0 and the v2 versions served,
        the newest CURRENT and the rest SUPPORTED, each linked to /v2/.
        """
        for path in ("/", "/versions"):
            versions = self.listed(path, 300)
            self.assertEqual([v["id"] for v in versions], ["v1.1", "v1.0", *self.expected])
            self.assertEqual(
                [v["status"] for v in versions],
                ["SUPPORTED", "SUPPORTED", "CURRENT"] + ["SUPPORTED"] * (len(self.expected) - 1),
            )
            for version in versions[2:]:
                self.assertEqual(
                    version["links"], [{"rel": "self", "href": "http://127.0.0.1:9292/v2/"}]
                )

    def test_v2_root(self) -> None:
        """GET /v2/ and /v2 answer the same list (openstacksdk discovers there)."""
        for path in ("/v2/", "/v2"):
            versions = self.listed(path, 200)
            self.assertEqual([v["id"] for v in versions][2:], self.expected)

    def test_listed_features_are_served(self) -> None:
        """
        What a listed version brings answers here, for an admin: 2.15's
        store details, and with several stores 2.12's image tasks and
        2.13's usage (Tempest and glanceclient read an image's tasks only
        where 2.12 is listed).
        """
        image = self.active(name="versioned")
        calls = {
            "v2.15": "/v2/info/stores/detail",
            "v2.13": "/v2/info/usage",
            "v2.12": f"/v2/images/{image['id']}/tasks",
            "v2.8": "/v2/info/stores",
        }
        for version, path in calls.items():
            if version in self.expected:
                answer = self.request("GET", path)
                self.assertEqual(answer.code, 200, (version, answer.body))


class SeveralStoresVersionsTests(VersionsTests):
    """
    With several stores (Glance's C{enabled_backends}) the several-store
    versions are listed too: 2.8 (stores), 2.10 (delete from one store),
    2.11, 2.12 (an image's tasks) and 2.13 (usage).
    """

    expected = [
        "v2.15", "v2.13", "v2.12", "v2.11", "v2.10", "v2.9", "v2.8",
        "v2.7", "v2.6", "v2.5", "v2.4", "v2.3", "v2.2", "v2.1", "v2.0",
    ]

    def make_stores(self) -> StoreMap:
        return StoreMap({"file": self.store, "second": self.store}, "file")

    def test_delete_from_store_is_served(self) -> None:
        """2.10's C{DELETE /v2/stores/{store}/{image}} is routed (an unknown store: 409)."""
        image = self.active(name="versioned")
        answer = self.request("DELETE", f"/v2/stores/nowhere/{image['id']}")
        self.assertEqual(answer.code, 409, answer.body)


class SchemaTests(V2TestCase):
    def test_image_schema(self) -> None:
        """/v2/schemas/image is Glance's permissive image schema."""
        answer = self.request("GET", "/v2/schemas/image")
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header("Content-Type"), "application/json")
        schema = answer.json()
        self.assertEqual(schema["name"], "image")
        self.assertEqual(schema["additionalProperties"], {"type": "string"})
        self.assertEqual(
            [link["rel"] for link in schema["links"]], ["self", "enclosure", "describedby"]
        )
        properties = schema["properties"]
        for name in ("status", "checksum", "size", "created_at", "updated_at", "self",
                     "file", "schema", "os_hash_algo", "os_hash_value", "virtual_size"):
            self.assertTrue(properties[name].get("readOnly"), name)
        for name in ("name", "visibility", "tags", "min_ram", "disk_format", "protected"):
            self.assertFalse(properties[name].get("readOnly", False), name)
        self.assertEqual(properties["visibility"]["enum"],
                         ["community", "public", "private", "shared"])
        self.assertEqual(properties["disk_format"]["enum"], [None, *images.DISK_FORMATS])
        self.assertEqual(
            properties["container_format"]["enum"], [None, *images.CONTAINER_FORMATS]
        )
        self.assertEqual(set(properties["status"]["enum"]), images.STATUSES)
        self.assertEqual(properties["name"]["maxLength"], 255)
        # Glance's stock custom properties, marked so that glanceclient
        # patches them with "add".
        self.assertIs(properties["os_distro"]["is_base"], False)
        self.assertNotIn("is_base", properties["name"])

    def test_every_shown_field_is_in_the_schema(self) -> None:
        """Every core field of an image document is described by the schema."""
        image = self.active(name="described")
        properties = self.request("GET", "/v2/schemas/image").json()["properties"]
        self.assertEqual(set(image) - set(properties), set())

    def test_collection_and_member_schemas(self) -> None:
        """/v2/schemas/images, /member and /members have Glance's shapes."""
        images_schema = self.request("GET", "/v2/schemas/images").json()
        self.assertEqual(images_schema["name"], "images")
        self.assertEqual(
            images_schema["properties"]["images"]["items"]["name"], "image"
        )
        self.assertEqual(
            [link["rel"] for link in images_schema["links"]], ["first", "next", "describedby"]
        )
        member = self.request("GET", "/v2/schemas/member").json()
        self.assertEqual(member["name"], "member")
        self.assertEqual(
            member["properties"]["status"]["enum"], ["pending", "accepted", "rejected"]
        )
        members = self.request("GET", "/v2/schemas/members").json()
        self.assertEqual(members["properties"]["members"]["items"]["name"], "member")

    def test_unknown_schemas(self) -> None:
        """Schemas glance-tx lacks are 404s the client tolerates; a write to a
        schema is a 405."""
        for name in ("metadefs/nope", "nope"):
            self.assertError(self.request("GET", f"/v2/schemas/{name}"), 404)
        self.assertError(self.request("POST", "/v2/schemas/image"), 405)

    def test_schemas_are_valid_json_schema(self) -> None:
        """The real jsonschema accepts the schemas and the documents served
        under them (as glanceclient's warlock models check them)."""
        try:
            import jsonschema
        except ImportError:
            self.skipTest("jsonschema is not installed")
        schemas = {name: self.request("GET", f"/v2/schemas/{name}").json()
                   for name in v2_schemas.SCHEMAS}
        for schema in schemas.values():
            jsonschema.Draft4Validator.check_schema(schema)
        queued = self.create(name="q", os_distro="cirros", kernel_id=str(uuid.uuid4()))
        active = self.active(name="a", tags=["t"], description="with data")
        listing = self.request("GET", "/v2/images?limit=1").json()
        for document in (queued, active):
            jsonschema.validate(document, schemas["image"])
        jsonschema.validate(listing, schemas["images"])
        member = self.send_json(
            "POST", f"/v2/images/{queued['id']}/members", {"member": "bob"}
        ).json()
        jsonschema.validate(member, schemas["member"])
        members = self.request("GET", f"/v2/images/{queued['id']}/members").json()
        jsonschema.validate(members, schemas["members"])

    def test_our_own_validator_agrees(self) -> None:
        """The built-in validator refuses what jsonschema refuses."""
        try:
            import jsonschema
        except ImportError:
            self.skipTest("jsonschema is not installed")
        schema = v2_schemas.image_schema()
        cases: list[dict[str, Any]] = [
            {"name": "ok"}, {"name": None}, {"name": 5}, {"name": "n" * 256},
            {"min_ram": 1}, {"min_ram": True}, {"min_ram": "1"}, {"protected": 1},
            {"visibility": "everyone"}, {"disk_format": None}, {"disk_format": "floppy"},
            {"tags": ["a"]}, {"tags": "a"}, {"tags": [1]}, {"tags": ["t" * 256]},
            {"id": "nope"}, {"id": str(uuid.uuid4())}, {"extra": "s"}, {"extra": 1},
            {"kernel_id": None}, {"kernel_id": "x"}, {"locations": [{"url": "u"}]},
        ]
        for case in cases:
            expected = jsonschema.Draft4Validator(schema).is_valid(case)
            try:
                v2_schemas.validate(schema, case)
                ours = True
            except images.BadRequest:
                ours = False
            self.assertEqual(ours, expected, case)


class GlanceclientModelTests(V2TestCase):
    """The documents work with python-glanceclient's own model classes."""

    def setUp(self) -> None:
        super().setUp()
        try:
            import warlock
            from glanceclient.v2 import schemas
        except ImportError:
            self.skipTest("python-glanceclient is not installed")
        raw = self.request("GET", "/v2/schemas/image").json()
        self.model = warlock.model_factory(raw, base_class=schemas.SchemaBasedModel)

    def test_update_through_glanceclient_patch(self) -> None:
        """The patch glanceclient's image-update builds (properties set and
        removed, a custom schema property, tags) applies as intended."""
        image = self.create(name="before", tags=["keep"], old="x", gone="y")
        document = self.show(image["id"])
        document.pop("self")
        model = self.model(**document)
        model.name = "after"
        model.os_distro = "cirros"
        model.new = "z"
        model.old = "x2"
        del model.gone
        answer = self.patch(image["id"], json.loads(model.patch))
        self.assertEqual(answer.code, 200, answer.body)
        after = answer.json()
        self.assertEqual(after["name"], "after")
        self.assertEqual(after["os_distro"], "cirros")
        self.assertEqual(after["new"], "z")
        self.assertEqual(after["old"], "x2")
        self.assertNotIn("gone", after)
        self.assertEqual(after["tags"], ["keep"])
        after.pop("self")
        self.model(**after)  # validates


class CreateTests(V2TestCase):
    def test_create(self) -> None:
        """POST /v2/images makes a queued image: 201, Location, Glance's fields."""
        answer = self.send_json(
            "POST", "/v2/images",
            {"name": "cirros", "disk_format": "qcow2", "container_format": "bare",
             "min_ram": 64, "tags": ["a", "b", "a"], "os_distro": "cirros", "custom": "v"},
            ALICE,
        )
        self.assertEqual(answer.code, 201, answer.body)
        image = answer.json()
        self.assertEqual(
            answer.header("Location"), f"http://127.0.0.1:9292/v2/images/{image['id']}"
        )
        self.assertEqual(answer.header("OpenStack-image-import-methods"), "glance-direct")
        self.assertEqual(image["status"], "queued")
        self.assertEqual(image["visibility"], "shared")
        self.assertEqual(image["owner"], "alice")
        self.assertEqual(image["tags"], ["a", "b"])
        self.assertEqual((image["min_ram"], image["min_disk"]), (64, 0))
        self.assertIs(image["protected"], False)
        self.assertIs(image["os_hidden"], False)
        for name in ("size", "checksum", "os_hash_algo", "os_hash_value", "virtual_size"):
            self.assertIsNone(image[name])
        self.assertEqual(image["os_distro"], "cirros")
        self.assertEqual(image["custom"], "v")
        self.assertEqual(image["self"], f"/v2/images/{image['id']}")
        self.assertEqual(image["file"], f"/v2/images/{image['id']}/file")
        self.assertEqual(image["schema"], "/v2/schemas/image")
        self.assertRegex(image["created_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertRegex(image["updated_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertNotIn("locations", image)
        self.assertEqual(self.show(image["id"], ALICE), image)

    def test_create_empty_object(self) -> None:
        """{} is enough: a nameless image without formats."""
        answer = self.send_json("POST", "/v2/images", {})
        self.assertEqual(answer.code, 201, answer.body)
        self.assertIsNone(answer.json()["name"])
        self.assertEqual(answer.json()["owner"], "admin")

    def test_create_with_id(self) -> None:
        """A client may choose the id; reusing one (even deleted) is a 409."""
        image_id = str(uuid.uuid4())
        self.assertEqual(self.create(id=image_id)["id"], image_id)
        self.assertError(self.send_json("POST", "/v2/images", {"id": image_id}), 409)
        self.assertEqual(self.request("DELETE", f"/v2/images/{image_id}").code, 204)
        self.assertError(self.send_json("POST", "/v2/images", {"id": image_id}), 409)

    def test_invalid_uuid_id(self) -> None:
        """An id that is not a UUID is a 400."""
        self.assertError(self.send_json("POST", "/v2/images", {"id": "not-a-uuid"}), 400)

    def test_malformed_json(self) -> None:
        """Malformed JSON, no body, or not an object: 400."""
        for body in (b"{not json", b"", b"[1, 2]", b'"name"', b"\xff\xfe"):
            answer = self.request(
                "POST", "/v2/images", {"Content-Type": "application/json"}, data=body
            )
            self.assertError(answer, 400)

    def test_deeply_nested_json(self) -> None:
        """
        JSON nested 100,000 levels (past the decoder's recursion limit) or
        just past MAX_JSON_DEPTH is a JSON 400 that says so, not a 500; at
        the limit it parses (and is then refused for what it says).
        """
        headers = {"Content-Type": "application/json"}
        for depth in (100_000, MAX_JSON_DEPTH + 1):
            body = b'{"a": ' + b"[" * depth + b"]" * depth + b"}"
            answer = self.request("POST", "/v2/images", headers, data=body)
            self.assertError(answer, 400, "nested deeper")
        body = b'{"tags": ' + b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1) + b"}"
        answer = self.request("POST", "/v2/images", headers, data=body)
        self.assertEqual(answer.code, 400, answer.body)
        self.assertNotIn("nested", answer.json()["error"]["message"])

    def test_non_utf8_json(self) -> None:
        """A body that is not UTF-8 is a 400 that says so."""
        answer = self.request(
            "POST", "/v2/images", {"Content-Type": "application/json"},
            data=b'{"name": "\xff"}',
        )
        self.assertError(answer, 400, "UTF-8")

    def test_oversized_body(self) -> None:
        """A JSON body over 1 MiB is a 413."""
        answer = self.send_json("POST", "/v2/images", {"description": "d" * (1 << 20)})
        self.assertError(answer, 413)

    def test_read_only_fields(self) -> None:
        """Fields only the service writes are 403s, naming the field."""
        for name, value in [
            ("status", "active"), ("checksum", "0" * 32), ("size", 5),
            ("virtual_size", 5), ("created_at", "2020-01-01T00:00:00Z"),
            ("updated_at", "2020-01-01T00:00:00Z"), ("os_hash_algo", "sha512"),
            ("os_hash_value", "00"), ("self", "/x"), ("file", "/x"), ("schema", "/x"),
            ("direct_url", "file:///x"),
        ]:
            answer = self.send_json("POST", "/v2/images", {name: value})
            self.assertError(answer, 403, name)

    def test_reserved_names(self) -> None:
        """Reserved names are 403s; so is the os_glance namespace."""
        for name, value in [
            ("locations", []), ("location", "file:///x"), ("deleted", "true"),
            ("deleted_at", "x"), ("os_glance_import_task", "x"),
        ]:
            self.assertError(self.send_json("POST", "/v2/images", {name: value}), 403, name)

    def test_invalid_values(self) -> None:
        """Values the schema or the image's rules refuse are 400s."""
        cases: list[tuple[dict[str, Any], str]] = [
            ({"name": "n" * 256}, "too long"),
            ({"disk_format": "floppy"}, "floppy"),
            ({"container_format": "box"}, "box"),
            ({"visibility": "everyone"}, "everyone"),
            ({"min_ram": "lots"}, "lots"),
            ({"min_disk": -1}, "min_disk"),
            ({"min_ram": 2**31}, "min_ram"),
            ({"protected": "yes"}, "yes"),
            ({"tags": "single"}, "single"),
            ({"tags": ["t" * 256]}, "too long"),
            ({"extra": 5}, "extra"),
            ({"kernel_id": "not-a-uuid"}, "kernel_id"),
            ({"p" * 256: "v"}, "255"),
        ]
        for body, fragment in cases:
            self.assertError(self.send_json("POST", "/v2/images", body), 400, fragment)

    def test_name_of_255(self) -> None:
        """A name of exactly 255 characters is fine."""
        self.assertEqual(self.create(name="n" * 255)["name"], "n" * 255)

    def test_publicize(self) -> None:
        """Only an admin makes an image public; anyone may make it community."""
        self.assertError(
            self.send_json("POST", "/v2/images", {"visibility": "public"}, ALICE), 403, "public"
        )
        self.assertEqual(self.create(ALICE, visibility="community")["visibility"], "community")
        self.assertEqual(self.create(ADMIN, visibility="public")["visibility"], "public")

    def test_owner(self) -> None:
        """Only an admin creates an image for another project."""
        self.assertError(self.send_json("POST", "/v2/images", {"owner": "bob"}, ALICE), 403)
        self.assertEqual(self.create(ALICE, owner="alice")["owner"], "alice")
        self.assertEqual(self.create(ADMIN, owner="bob")["owner"], "bob")

    def test_default_identity_is_admin(self) -> None:
        """Without identity headers the caller is the default project, an admin."""
        image = self.create(visibility="public")
        self.assertEqual(image["owner"], "admin")


class ShowTests(V2TestCase):
    def test_invalid_uuid_is_not_found(self) -> None:
        """An id that is not a UUID is a 404 on every image path, as in Glance."""
        for method, path in [
            ("GET", "/v2/images/not-a-uuid"),
            ("DELETE", "/v2/images/not-a-uuid"),
            ("GET", "/v2/images/not-a-uuid/file"),
            ("GET", "/v2/images/not-a-uuid/members"),
            ("PUT", "/v2/images/not-a-uuid/tags/x"),
            ("POST", "/v2/images/not-a-uuid/actions/deactivate"),
        ]:
            self.assertError(self.request(method, path), 404)
        self.assertError(self.patch("not-a-uuid", []), 404)
        self.assertError(self.upload("not-a-uuid", b"data"), 404)

    def test_unknown(self) -> None:
        """An unknown id is a 404."""
        self.assertError(self.request("GET", f"/v2/images/{uuid.uuid4()}"), 404, "No image")

    def test_who_sees_what(self) -> None:
        """Another project's private or shared image is a 404; public and
        community images are seen by all; admins see everything."""
        by_visibility = {
            v: self.create(ALICE, visibility=v)["id"]
            for v in ("private", "shared", "community")
        }
        by_visibility["public"] = self.create(ADMIN, visibility="public", owner="alice")["id"]
        for visibility, image_id in by_visibility.items():
            path = f"/v2/images/{image_id}"
            self.assertEqual(self.request("GET", path, ALICE).code, 200)
            self.assertEqual(self.request("GET", path, ADMIN).code, 200)
            expected = 200 if visibility in ("public", "community") else 404
            self.assertEqual(self.request("GET", path, BOB).code, expected, visibility)

    def test_deleted_is_gone(self) -> None:
        """A deleted image is a 404."""
        image = self.create()
        self.assertEqual(self.request("DELETE", f"/v2/images/{image['id']}").code, 204)
        self.assertError(self.request("GET", f"/v2/images/{image['id']}"), 404)


class ValidateImageIdTests(SynchronousTestCase):
    """L{images.validate_image_id}: the canonical form, or a 400."""

    def test_forms(self) -> None:
        """
        A canonical id is given back as it is; another form of a UUID (upper
        case, braces, no dashes, a URN) as its canonical form; anything else
        (a trailing newline included) is refused.
        """
        canonical = str(uuid.uuid4())
        self.assertIs(images.validate_image_id(canonical), canonical)
        for other in (canonical.upper(), "{" + canonical + "}", canonical.replace("-", ""),
                      "urn:uuid:" + canonical):
            self.assertEqual(images.validate_image_id(other), canonical)
        for bad in (canonical + "\n", canonical[:-1], canonical[:-1] + "g", "", "x" * 36):
            self.assertRaises(BadRequest, images.validate_image_id, bad)


class _RewritingRegistry(proxyForInterface(IRegistry)):  # type: ignore[misc]
    """The API's registry, with every record it reads passed through C{rewrite}."""

    rewrite: Any = staticmethod(lambda image: image)

    def get(self, image_id: str, include_deleted: bool = False) -> Any:
        return self.original.get(image_id, include_deleted).addCallback(self.rewrite)


class _CountingIdentity:
    """The headers' identity, counting the resolutions asked of it."""

    def __init__(self) -> None:
        self.resolved = 0
        self._headers = HeaderIdentity(default_project="admin")

    async def resolve(self, request: Any) -> Any:
        self.resolved += 1
        return await self._headers.resolve(request)


class ResolvedOnceTests(V2TestCase):
    """Who asks is resolved once per request, and never kept for another."""

    def make_identity(self) -> Any:
        self.identity = _CountingIdentity()
        return self.identity

    def test_once_per_request(self) -> None:
        """
        A v1 PUT of a location asks who is asking for the location's
        policy and again to read the image: one resolution. Each GET
        resolves its own caller: the second caller is not answered with
        the first one's context.
        """
        image = self.create(ALICE, visibility="private")
        target = self.store_root.child(str(uuid.uuid4()))
        target.setContent(b"external bytes")
        self.identity.resolved = 0
        answer = self.request(
            "PUT", f"/v1/images/{image['id']}", meta(location="file://" + target.path)
        )
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(self.identity.resolved, 1)
        path = f"/v2/images/{image['id']}"
        self.assertEqual(self.request("GET", path, ALICE).code, 200)
        self.assertError(self.request("GET", path, BOB), 404)
        self.assertEqual(self.identity.resolved, 3)


class DocumentReuseTests(V2TestCase):
    """
    An image's document is made once per record and view and reused: never
    for a record that differs in anything, nor for another caller's view.
    """

    site_options = {"show_multiple_locations": True}

    def api_registry(self) -> IRegistry:
        self.rewriting = _RewritingRegistry(self.registry)
        return cast(IRegistry, self.rewriting)

    def test_a_different_record_is_a_different_document(self) -> None:
        """
        A record that differs only in a property (same id, version and
        updated_at: nothing a cheaper key would look at) gets its own
        document and ETag; the same record again gets the same ones.
        """
        image = self.create(visibility="public", owner="alice")
        path = f"/v2/images/{image['id']}"
        first = self.request("GET", path, ALICE)
        again = self.request("GET", path, ALICE)
        self.assertEqual((again.body, again.headers.getRawHeaders(b"etag")),
                         (first.body, first.headers.getRawHeaders(b"etag")))
        self.rewriting.rewrite = lambda record: evolve(
            record, properties={**record.properties, "os_distro": "debian"}
        )
        changed = self.request("GET", path, ALICE)
        self.assertEqual(changed.json()["os_distro"], "debian")
        self.assertNotEqual(
            changed.headers.getRawHeaders(b"etag"), first.headers.getRawHeaders(b"etag")
        )
        self.rewriting.rewrite = lambda record: record
        self.assertEqual(self.request("GET", path, ALICE).body, first.body)

    def test_listing_is_made_of_the_documents(self) -> None:
        """
        A listing page's body is byte for byte what encoding its whole
        document gives, each image in it as a GET of that image sends it
        (first and next links included), before and after a change.
        """
        ids = [self.create(name=f"n{n}", visibility="public")["id"] for n in range(3)]
        for _ in range(2):
            answer = self.request("GET", "/v2/images?limit=2&sort_key=name&sort_dir=asc", ALICE)
            self.assertEqual(answer.code, 200)
            document = json.loads(answer.body)
            self.assertEqual(answer.body, json.dumps(document).encode())
            self.assertEqual(list(document), ["images", "first", "schema", "next"])
            self.assertEqual([i["id"] for i in document["images"]], ids[:2])
            for image in document["images"]:
                shown = self.request("GET", f"/v2/images/{image['id']}", ALICE)
                self.assertIn(shown.body, answer.body)
            self.assertEqual(self.patch(ids[0], [{"op": "replace", "path": "/name", "value": "n0x"}]).code, 200)

    def test_views_are_kept_apart(self) -> None:
        """
        An admin's document (with the locations, kept out of shared
        caches) and another project's (an empty list, as Glance's) are each
        answered to their own caller, in any order.
        """
        image = self.active(visibility="public")
        path = f"/v2/images/{image['id']}"
        for _ in range(2):
            admin = self.request("GET", path, ADMIN)
            member = self.request("GET", path, ALICE)
            self.assertNotEqual(admin.json()["locations"], [])
            self.assertEqual(member.json()["locations"], [])
            self.assertEqual(admin.headers.getRawHeaders(b"cache-control"), [b"private, no-store"])
            self.assertNotEqual(member.headers.getRawHeaders(b"cache-control"), [b"private, no-store"])


class ListTests(V2TestCase):
    def test_links(self) -> None:
        """A listing has first and schema links, and next while a page is full;
        following next walks every image once."""
        made = {self.create(name=f"n{i}")["id"] for i in range(5)}
        answer = self.request("GET", "/v2/images?limit=2&sort_key=name")
        document = answer.json()
        self.assertEqual(document["schema"], "/v2/schemas/images")
        self.assertEqual(document["first"], "/v2/images?limit=2&sort_key=name")
        seen = [i["id"] for i in document["images"]]
        while "next" in document:
            self.assertTrue(document["next"].startswith("/v2/images?"))
            document = self.request("GET", document["next"]).json()
            seen.extend(i["id"] for i in document["images"])
        self.assertEqual(len(seen), 5)
        self.assertEqual(set(seen), made)

    def test_default_scope(self) -> None:
        """By default a project lists public images, its own, and shared images
        it accepted; not others' private, shared or community images."""
        own = self.create(ALICE, visibility="private")["id"]
        public = self.create(ADMIN, visibility="public")["id"]
        community = self.create(BOB, visibility="community")["id"]
        private = self.create(BOB, visibility="private")["id"]
        shared = self.create(BOB, visibility="shared")["id"]
        listed = set(self.listed(headers=ALICE))
        self.assertEqual(listed, {own, public})
        self.assertEqual(set(self.listed("visibility=all", ALICE)), {own, public, community})
        self.assertEqual(self.listed("visibility=community", ALICE), [community])
        self.assertNotIn(private, self.listed("visibility=all", ALICE))
        self.assertNotIn(shared, self.listed("visibility=all", ALICE))

    def test_filters(self) -> None:
        """Equality filters on core fields and extra properties."""
        a = self.create(name="alpha", disk_format="qcow2", container_format="bare",
                        min_ram=512, os_distro="ubuntu", protected=True)["id"]
        b = self.create(name="beta", os_distro="fedora")["id"]
        self.assertEqual(self.listed("name=alpha"), [a])
        self.assertEqual(self.listed("disk_format=qcow2"), [a])
        self.assertEqual(self.listed("min_ram=512"), [a])
        self.assertEqual(self.listed("os_distro=fedora"), [b])
        self.assertEqual(self.listed("protected=true"), [a])
        self.assertEqual(self.listed("protected=false"), [b])
        self.assertEqual(self.listed("owner=admin&status=queued&sort_key=name&sort_dir=asc"), [a, b])
        self.assertEqual(self.listed("name=nothing"), [])

    def test_filters_on_data_fields(self) -> None:
        """
        size, virtual_size and the multihash filter by equality, as in
        Glance (Tempest lists by size); a size that is not a number is a 400.
        """
        five = self.active(b"12345")
        six = self.active(b"123456")
        self.assertEqual(self.listed("size=5"), [five["id"]])
        self.assertEqual(self.listed("size=6"), [six["id"]])
        value, algo = six["os_hash_value"], six["os_hash_algo"]
        self.assertEqual(self.listed(f"os_hash_value={value}&os_hash_algo={algo}"), [six["id"]])
        self.assertEqual(self.listed(f"virtual_size={six['virtual_size']}"), [six["id"]])
        self.assertEqual(self.request("GET", "/v2/images?size=five").code, 400)

    def test_in_operator(self) -> None:
        """name=in:a,b matches any of the names; quotes keep commas."""
        a = self.create(name="a")["id"]
        b = self.create(name="b,c")["id"]
        self.create(name="other")
        self.assertEqual(set(self.listed('name=in:a,"b,c"')), {a, b})
        self.assertEqual(self.listed("name=eq:a"), [a])
        self.assertEqual(set(self.listed(f"id=in:{a},{b}")), {a, b})

    def test_tags_are_anded(self) -> None:
        """Every tag asked for must be on the image."""
        both = self.create(tags=["x", "y"])["id"]
        one = self.create(tags=["x"])["id"]
        self.assertEqual(set(self.listed("tag=x")), {both, one})
        self.assertEqual(self.listed("tag=x&tag=y"), [both])

    def test_hidden(self) -> None:
        """Hidden images are left out unless os_hidden=true, which lists them."""
        shown = self.create()["id"]
        hidden = self.create(os_hidden=True)["id"]
        self.assertEqual(self.listed(), [shown])
        self.assertEqual(self.listed("os_hidden=true"), [hidden])
        self.assertEqual(self.show(hidden)["os_hidden"], True)

    def test_sizes_and_times(self) -> None:
        """size_min/size_max and created_at comparisons."""
        small = self.active(b"x" * 10)["id"]
        big = self.active(b"x" * 1000)["id"]
        self.assertEqual(self.listed("size_min=100"), [big])
        self.assertEqual(self.listed("size_max=100"), [small])
        created = self.stored_record(small).created_at
        a_year_before = created.replace(year=created.year - 1).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.assertEqual(set(self.listed("created_at=gte:" + a_year_before)), {small, big})
        self.assertEqual(
            set(self.listed("created_at=gte:" + quote(created.isoformat()))), {small, big}
        )
        self.assertEqual(self.listed("created_at=gt:" + quote(created.isoformat())), [big])
        self.assertEqual(self.listed("created_at=lt:2000-01-01T00:00:00Z"), [])
        self.assertEqual(self.listed("updated_at=gt:2000-01-01T00:00:00Z&sort_key=size&sort_dir=asc"), [small, big])

    def test_sorting(self) -> None:
        """Repeated sort_key/sort_dir and sort=key:dir order the listing."""
        b1 = self.create(name="b", min_ram=1)["id"]
        a = self.create(name="a", min_ram=5)["id"]
        b2 = self.create(name="b", min_ram=9)["id"]
        self.assertEqual(self.listed("sort_key=name&sort_dir=asc")[0], a)
        self.assertEqual(
            self.listed("sort_key=name&sort_key=min_ram&sort_dir=asc&sort_dir=desc"), [a, b2, b1]
        )
        self.assertEqual(self.listed("sort=name:asc,min_ram:asc"), [a, b1, b2])
        self.assertEqual(self.listed("sort=name:desc,min_ram"), [b2, b1, a])
        self.assertEqual(self.listed("sort_key=min_ram&sort_key=name&sort_dir=asc"), [b1, a, b2])

    def test_member_status(self) -> None:
        """A shared image appears in a member's list once accepted, or with
        member_status asking for its status."""
        image = self.create(BOB)["id"]
        self.send_json("POST", f"/v2/images/{image}/members", {"member": "alice"}, BOB)
        self.assertEqual(self.listed(headers=ALICE), [])
        self.assertEqual(self.listed("member_status=pending", ALICE), [image])
        self.assertEqual(self.listed("member_status=all", ALICE), [image])
        self.assertEqual(self.listed("visibility=shared&member_status=pending", ALICE), [image])
        self.send_json("PUT", f"/v2/images/{image}/members/alice", {"status": "accepted"}, ALICE)
        self.assertEqual(self.listed(headers=ALICE), [image])
        self.assertEqual(self.listed("member_status=pending", ALICE), [])

    def test_bad_parameters(self) -> None:
        """Every malformed listing parameter is a 400."""
        for query in (
            "sort_key=bogus", "sort_dir=sideways", "sort=name:up", "sort=bogus",
            "sort=name&sort_key=name", "sort_key=name&sort_key=size&sort_dir=asc&sort_dir=asc&sort_dir=desc",
            "limit=-1", "limit=many", f"marker={uuid.uuid4()}", "marker=not-a-uuid",
            "visibility=everyone", "member_status=maybe", "os_hidden=maybe",
            "protected=yes", "created_at=gt:yesterday", "created_at=in:a,b",
            "size_min=big", "min_ram=-5", "name=gt:x", "changes-since=2020-01-01",
            "deleted=true", "size=five",
        ):
            self.assertError(self.request("GET", f"/v2/images?{query}"), 400)

    def test_limit_capped(self) -> None:
        """A limit over the maximum is capped, as Glance does, not refused."""
        self.create()
        self.assertEqual(self.request("GET", "/v2/images?limit=100000").code, 200)


class PatchTests(V2TestCase):
    def test_replace_add_remove(self) -> None:
        """Core fields, extra properties and tags change as the operations say."""
        image = self.create(ALICE, name="old", old="1", gone="2", tags=["t"])
        answer = self.patch(image["id"], [
            {"op": "replace", "path": "/name", "value": "new"},
            {"op": "replace", "path": "/old", "value": "changed"},
            {"op": "add", "path": "/added", "value": "3"},
            {"op": "add", "path": "/os_distro", "value": "debian"},
            {"op": "remove", "path": "/gone"},
            {"op": "replace", "path": "/tags", "value": ["u", "v"]},
            {"op": "replace", "path": "/min_ram", "value": 256},
            {"op": "replace", "path": "/protected", "value": True},
            {"op": "replace", "path": "/visibility", "value": "community"},
            {"op": "replace", "path": "/os_hidden", "value": True},
            {"op": "replace", "path": "/disk_format", "value": "qcow2"},
        ], ALICE)
        self.assertEqual(answer.code, 200, answer.body)
        after = answer.json()
        self.assertEqual(after["name"], "new")
        self.assertEqual((after["old"], after["added"], after["os_distro"]), ("changed", "3", "debian"))
        self.assertNotIn("gone", after)
        self.assertEqual(after["tags"], ["u", "v"])
        self.assertEqual(after["min_ram"], 256)
        self.assertIs(after["protected"], True)
        self.assertEqual(after["visibility"], "community")
        self.assertEqual(after["disk_format"], "qcow2")
        self.assertEqual(self.show(image["id"], ALICE), after)

    def test_add_replaces_in_v21(self) -> None:
        """In the 2.1 dialect add on an existing field sets it."""
        image = self.create(prop="1")
        answer = self.patch(image["id"], [
            {"op": "add", "path": "/prop", "value": "2"},
            {"op": "add", "path": "/name", "value": "named"},
        ])
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual((answer.json()["prop"], answer.json()["name"]), ("2", "named"))

    def test_v20_dialect(self) -> None:
        """The 2.0 media type takes {"replace": "/path", "value": ...}; add on
        an existing field is a 409 there."""
        image = self.create(prop="1")
        answer = self.patch(image["id"], [
            {"replace": "/name", "value": "v20"}, {"add": "/new", "value": "n"},
            {"remove": "/prop"},
        ], media=PATCH_20)
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(answer.json()["name"], "v20")
        self.assertEqual(answer.json()["new"], "n")
        self.assertNotIn("prop", answer.json())
        self.assertError(self.patch(image["id"], [{"add": "/new", "value": "x"}], media=PATCH_20), 409)
        self.assertError(self.patch(image["id"], [{"add": "/name", "value": "x"}], media=PATCH_20), 409)
        self.assertError(
            self.patch(image["id"], [{"add": "/a", "remove": "/b", "value": "x"}], media=PATCH_20), 400
        )

    def test_empty_patch(self) -> None:
        """An empty list of operations changes nothing and shows the image."""
        image = self.create()
        answer = self.patch(image["id"], [])
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.json(), image)

    def test_wrong_media_type(self) -> None:
        """Any other media type is a 415 with Accept-Patch naming both."""
        image = self.create()
        for content_type in ("application/json", "application/json-patch+json", None):
            headers = {"Content-Type": content_type} if content_type else {}
            answer = self.request(
                "PATCH", f"/v2/images/{image['id']}", headers, data=b"[]"
            )
            self.assertError(answer, 415)
            self.assertEqual(
                answer.header("Accept-Patch"),
                "application/openstack-images-v2.0-json-patch, "
                "application/openstack-images-v2.1-json-patch",
            )

    def test_media_type_parameters(self) -> None:
        """A charset parameter on the media type is fine."""
        image = self.create()
        answer = self.patch(image["id"], [{"op": "replace", "path": "/name", "value": "p"}],
                            media={"Content-Type": PATCH_21["Content-Type"] + "; charset=UTF-8"})
        self.assertEqual(answer.code, 200, answer.body)

    def test_malformed(self) -> None:
        """Malformed JSON, bad operations and bad paths are 400s."""
        image = self.create()
        path = f"/v2/images/{image['id']}"
        self.assertError(self.request("PATCH", path, PATCH_21, data=b"[{"), 400, "Malformed")
        nested = b"[" * 100_000 + b"]" * 100_000
        self.assertError(self.request("PATCH", path, PATCH_21, data=nested), 400, "nested deeper")
        for operations, fragment in [
            ({"op": "replace"}, "array"),
            (["replace"], "objects"),
            ([{"path": "/name", "value": "x"}], "op"),
            ([{"op": "move", "from": "/a", "path": "/name"}], "move"),
            ([{"op": "test", "path": "/name", "value": "x"}], "test"),
            ([{"op": "replace", "value": "x"}], "path"),
            ([{"op": "replace", "path": "/name"}], "value"),
            ([{"op": "replace", "path": "name", "value": "x"}], "start"),
            ([{"op": "replace", "path": "/", "value": "x"}], "valid"),
            ([{"op": "replace", "path": "/a//b", "value": "x"}], "adjacent"),
            ([{"op": "replace", "path": "/name/", "value": "x"}], "end"),
            ([{"op": "add", "path": "/tags/-", "value": "x"}], "pointer"),
            ([{"op": "add", "path": "/a~2", "value": "x"}], "~"),
            ([{"op": "add", "path": "/prop", "value": 5}], "prop"),
            ([{"op": "replace", "path": "/name", "value": "n" * 256}], "too long"),
            ([{"op": "replace", "path": "/visibility", "value": "everyone"}], "everyone"),
            ([{"op": "replace", "path": "/min_disk", "value": -1}], "min_disk"),
            ([{"op": "replace", "path": "/disk_format", "value": "floppy"}], "floppy"),
        ]:
            self.assertError(self.patch(image["id"], operations), 400, fragment)

    def test_read_only_and_reserved(self) -> None:
        """Read-only fields and reserved names are 403s; so is removing a core field."""
        image = self.create()
        for name in ("status", "id", "checksum", "size", "created_at", "os_hash_value",
                     "self", "file", "schema", "direct_url", "virtual_size"):
            self.assertError(
                self.patch(image["id"], [{"op": "replace", "path": f"/{name}", "value": "x"}]),
                403, name,
            )
        for name in ("deleted", "location", "os_glance_x"):
            self.assertError(
                self.patch(image["id"], [{"op": "add", "path": f"/{name}", "value": "x"}]),
                403, "reserved",
            )
        self.assertError(
            self.patch(image["id"], [{"op": "add", "path": "/locations/-", "value": {"url": "x", "metadata": {}}}]),
            403,
        )
        self.assertError(self.patch(image["id"], [{"op": "remove", "path": "/name"}]), 403, "name")

    def test_missing_property(self) -> None:
        """Replacing or removing a property that does not exist is a 409."""
        image = self.create()
        self.assertError(
            self.patch(image["id"], [{"op": "replace", "path": "/nope", "value": "x"}]), 409, "nope"
        )
        self.assertError(self.patch(image["id"], [{"op": "remove", "path": "/nope"}]), 409, "nope")

    def test_operations_are_atomic(self) -> None:
        """A refused operation leaves the earlier ones of the patch unapplied."""
        image = self.create(name="kept")
        self.assertError(self.patch(image["id"], [
            {"op": "replace", "path": "/name", "value": "changed"},
            {"op": "remove", "path": "/nope"},
        ]), 409)
        self.assertEqual(self.show(image["id"])["name"], "kept")

    def test_formats_fixed_once_active(self) -> None:
        """disk_format and container_format change only while queued (403 after)."""
        image = self.active()
        self.assertError(
            self.patch(image["id"], [{"op": "replace", "path": "/disk_format", "value": "qcow2"}]),
            403, "disk_format",
        )
        answer = self.patch(image["id"], [{"op": "replace", "path": "/name", "value": "ok"}])
        self.assertEqual(answer.code, 200)

    def test_who_may_patch(self) -> None:
        """Only owners and admins change an image; others' private images are
        404; only admins publicize or change the owner."""
        image = self.create(ALICE, visibility="community")
        rename = [{"op": "replace", "path": "/name", "value": "x"}]
        self.assertError(self.patch(image["id"], rename, BOB), 403)
        private = self.create(ALICE, visibility="private")
        self.assertError(self.patch(private["id"], rename, BOB), 404)
        self.assertEqual(self.patch(image["id"], rename, ADMIN).code, 200)
        self.assertError(
            self.patch(image["id"], [{"op": "replace", "path": "/visibility", "value": "public"}], ALICE),
            403, "public",
        )
        self.assertError(
            self.patch(image["id"], [{"op": "replace", "path": "/owner", "value": "bob"}], ALICE),
            403,
        )
        answer = self.patch(image["id"], [
            {"op": "replace", "path": "/visibility", "value": "public"},
            {"op": "replace", "path": "/owner", "value": "bob"},
        ], ADMIN)
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual((answer.json()["visibility"], answer.json()["owner"]), ("public", "bob"))

    def test_null_for_nullable_property(self) -> None:
        """A null for kernel_id (nullable in the schema) removes it."""
        kernel = str(uuid.uuid4())
        image = self.create(kernel_id=kernel)
        self.assertEqual(image["kernel_id"], kernel)
        answer = self.patch(image["id"], [{"op": "replace", "path": "/kernel_id", "value": None}])
        self.assertEqual(answer.code, 200, answer.body)
        self.assertNotIn("kernel_id", answer.json())


class DeleteTests(V2TestCase):
    def test_delete(self) -> None:
        """DELETE is a 204; the image and its data are gone."""
        image = self.active()
        self.assertNotEqual(self.stored_files(), [])
        answer = self.request("DELETE", f"/v2/images/{image['id']}")
        self.assertEqual(answer.code, 204)
        self.assertEqual(answer.body, b"")
        self.assertEqual(self.stored_files(), [])
        self.assertError(self.request("GET", f"/v2/images/{image['id']}"), 404)
        self.assertError(self.request("DELETE", f"/v2/images/{image['id']}"), 404)

    def test_protected(self) -> None:
        """A protected image refuses delete (403) until unprotected."""
        image = self.create(protected=True)
        self.assertError(self.request("DELETE", f"/v2/images/{image['id']}"), 403, "protected")
        self.patch(image["id"], [{"op": "replace", "path": "/protected", "value": False}])
        self.assertEqual(self.request("DELETE", f"/v2/images/{image['id']}").code, 204)

    def test_who_may_delete(self) -> None:
        """Only the owner or an admin deletes; others' private images are 404s."""
        community = self.create(ALICE, visibility="community")
        private = self.create(ALICE, visibility="private")
        self.assertError(self.request("DELETE", f"/v2/images/{community['id']}", BOB), 403)
        self.assertError(self.request("DELETE", f"/v2/images/{private['id']}", BOB), 404)
        self.assertEqual(self.request("DELETE", f"/v2/images/{community['id']}", ALICE).code, 204)
        self.assertEqual(self.request("DELETE", f"/v2/images/{private['id']}", ADMIN).code, 204)


class UploadTests(V2TestCase):
    def test_store_failure(self) -> None:
        """
        An upload the store cannot take (a file where its directory should
        be) is a 503 with C{Retry-After} and the JSON error, and the image
        is queued again, ready for a retry once the store is back.
        """
        image = self.create()
        self.store_root.remove()
        self.store_root.setContent(b"not a directory")
        answer = self.upload(image["id"], b"data")
        self.assertError(answer, 503)
        self.assertEqual(answer.header("Retry-After"), "5")
        self.assertEqual(self.show(image["id"])["status"], "queued")
        self.store_root.remove()
        self.store_root.makedirs()
        self.assertEqual(self.upload(image["id"], b"data").code, 204)

    def test_upload_and_download(self) -> None:
        """PUT /file (204) makes the image active with md5 and sha512; GET
        /file sends it with Content-Length and a hex Content-MD5 as Glance."""
        data = bytes(range(256)) * 4000
        image = self.create()
        answer = self.upload(image["id"], data)
        self.assertEqual(answer.code, 204, answer.body)
        self.assertEqual(answer.body, b"")
        shown = self.show(image["id"])
        self.assertEqual(shown["status"], "active")
        self.assertEqual(shown["size"], len(data))
        self.assertEqual(shown["checksum"], hashlib.md5(data).hexdigest())
        self.assertEqual(shown["os_hash_algo"], "sha512")
        self.assertEqual(shown["os_hash_value"], hashlib.sha512(data).hexdigest())
        download = self.request("GET", f"/v2/images/{image['id']}/file")
        self.assertEqual(download.code, 200)
        self.assertEqual(download.body, data)
        self.assertEqual(download.header("Content-Type"), "application/octet-stream")
        self.assertEqual(download.header("Content-MD5"), hashlib.md5(data).hexdigest())
        self.assertEqual(download.header("Accept-Ranges"), "bytes")

    def test_content_length_header(self) -> None:
        """The download declares its length (the client reads it)."""
        data = b"z" * 12345
        image = self.active(data)
        # treq folds Content-Length into the response; ask the raw agent.
        d = self.agent.request(b"GET", f"http://127.0.0.1:9292/v2/images/{image['id']}/file".encode())
        self.agent.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.length, len(data))

    def test_chunked_with_declared_size(self) -> None:
        """A chunked upload with x-openstack-image-size (glanceclient's way)."""
        data = b"chunk" * 300000
        image = self.create()
        answer = self.upload(
            image["id"], ChunkedBody(data, chunk_size=1 << 20, known_length=False),
            {"x-openstack-image-size": str(len(data))},
        )
        self.assertEqual(answer.code, 204, answer.body)
        self.assertEqual(self.show(image["id"])["size"], len(data))

    def test_declared_size_mismatch(self) -> None:
        """Data that does not match x-openstack-image-size is a 400: the image
        is queued again with no data or size, and a retry works."""
        image = self.create()
        answer = self.upload(
            image["id"], ChunkedBody(b"x" * 20, known_length=False),
            {"x-openstack-image-size": "10"},
        )
        self.assertError(answer, 400, "declared size")
        shown = self.show(image["id"])
        self.assertEqual(shown["status"], "queued")
        self.assertIsNone(shown["size"])
        self.assertIsNone(shown["checksum"])
        self.assertEqual(self.stored_files(), [])
        self.assertEqual(self.stored_record(image["id"]).locations, ())
        self.assertEqual(self.upload(image["id"], b"retry").code, 204)
        self.assertEqual(self.show(image["id"])["size"], 5)

    def test_short_data(self) -> None:
        """Fewer bytes than declared: 400 at the end, back to queued."""
        image = self.create()
        answer = self.upload(
            image["id"], ChunkedBody(b"x" * 20, known_length=False),
            {"x-openstack-image-size": "100"},
        )
        self.assertError(answer, 400)
        self.assertEqual(self.show(image["id"])["status"], "queued")
        self.assertEqual(self.stored_files(), [])

    def test_declared_sizes_disagree(self) -> None:
        """x-openstack-image-size and Content-Length that differ: 400, before
        anything is stored."""
        image = self.create()
        answer = self.upload(image["id"], b"x" * 20, {"x-openstack-image-size": "30"})
        self.assertError(answer, 400, "x-openstack-image-size")
        self.assertEqual(self.show(image["id"])["status"], "queued")
        self.assertError(self.upload(image["id"], b"x", {"x-openstack-image-size": "lots"}), 400)

    def test_wrong_content_type(self) -> None:
        """Image data in anything but application/octet-stream is a 415."""
        image = self.create()
        for headers in ({"Content-Type": "text/plain"}, {"Content-Type": "application/json"}):
            answer = self.request("PUT", f"/v2/images/{image['id']}/file", headers, data=b"abc")
            self.assertError(answer, 415, "octet-stream")
        answer = self.request("PUT", f"/v2/images/{image['id']}/file", data=b"abc")
        self.assertError(answer, 415)
        self.assertEqual(self.show(image["id"])["status"], "queued")

    def test_not_queued(self) -> None:
        """Uploading to an image that has data is a 409 (illegal transition)."""
        image = self.active(b"first")
        self.assertError(self.upload(image["id"], b"second"), 409, "active")
        self.assertEqual(self.request("GET", f"/v2/images/{image['id']}/file").body, b"first")

    def test_formats_required(self) -> None:
        """Data needs disk_format and container_format first (400, still queued)."""
        answer = self.send_json("POST", "/v2/images", {"name": "bare"})
        image_id = answer.json()["id"]
        self.assertError(self.upload(image_id, b"data"), 400, "disk_format, container_format")
        self.assertEqual(self.show(image_id)["status"], "queued")
        self.patch(image_id, [{"op": "replace", "path": "/disk_format", "value": "raw"}])
        self.assertError(self.upload(image_id, b"data"), 400, "container_format")

    def test_who_may_upload(self) -> None:
        """Only the owner or an admin uploads; invisible images are 404s."""
        community = self.create(ALICE, visibility="community")
        private = self.create(ALICE, visibility="private")
        self.assertError(self.upload(community["id"], b"data", BOB), 403)
        self.assertError(self.upload(private["id"], b"data", BOB), 404)
        self.assertError(self.upload(str(uuid.uuid4()), b"data"), 404)
        self.assertEqual(self.upload(community["id"], b"data", ALICE).code, 204)

    def test_empty_upload(self) -> None:
        """An empty body makes an active image of zero bytes."""
        image = self.create()
        answer = self.upload(image["id"], b"")
        self.assertEqual(answer.code, 204, answer.body)
        shown = self.show(image["id"])
        self.assertEqual((shown["status"], shown["size"]), ("active", 0))
        self.assertEqual(shown["checksum"], hashlib.md5(b"").hexdigest())
        download = self.request("GET", f"/v2/images/{image['id']}/file")
        self.assertEqual((download.code, download.body), (200, b""))

    def test_no_data_is_no_content(self) -> None:
        """GET /file of an image without data is a 204."""
        image = self.create()
        answer = self.request("GET", f"/v2/images/{image['id']}/file")
        self.assertEqual(answer.code, 204)
        self.assertEqual(answer.body, b"")

    def test_deactivated_download(self) -> None:
        """A deactivated image's data is refused (403) to all but admins."""
        image = self.active(b"secret", ALICE, visibility="community")
        self.assertEqual(self.request("POST", f"/v2/images/{image['id']}/actions/deactivate", ADMIN).code, 204)
        self.assertError(self.request("GET", f"/v2/images/{image['id']}/file", ALICE), 403, "deactivated")
        self.assertError(self.request("GET", f"/v2/images/{image['id']}/file", BOB), 403)
        self.assertEqual(self.request("GET", f"/v2/images/{image['id']}/file", ADMIN).body, b"secret")

    def test_download_invisible(self) -> None:
        """Another project's private image's data is a 404."""
        image = self.active(b"mine", ALICE, visibility="private")
        self.assertError(self.request("GET", f"/v2/images/{image['id']}/file", BOB), 404)


class HashingAlgorithmTests(V2TestCase):
    hashing_algorithm = "sha256"

    def test_upload_records_the_configured_algorithm(self) -> None:
        """
        With hashing_algorithm = sha256 an upload records os_hash_algo
        sha256 and the sha256 of the data (the md5 checksum is unchanged).
        """
        data = bytes(range(256)) * 4000
        shown = self.active(data)
        self.assertEqual(shown["os_hash_algo"], "sha256")
        self.assertEqual(shown["os_hash_value"], hashlib.sha256(data).hexdigest())
        self.assertEqual(shown["checksum"], hashlib.md5(data).hexdigest())


class SizeCapTests(V2TestCase):
    size_cap = 100

    def test_declared_over_cap(self) -> None:
        """A declared size over the cap is a 413 before any byte is stored."""
        image = self.create()
        answer = self.upload(image["id"], b"x" * 200)
        self.assertError(answer, 413)
        self.assertEqual(self.show(image["id"])["status"], "queued")
        self.assertEqual(self.stored_files(), [])

    def test_chunked_over_cap(self) -> None:
        """Undeclared data that passes the cap is a 413; back to queued."""
        image = self.create()
        answer = self.upload(image["id"], ChunkedBody(b"x" * 200, chunk_size=50, known_length=False))
        self.assertError(answer, 413)
        self.assertEqual(self.show(image["id"])["status"], "queued")
        self.assertEqual(self.stored_files(), [])


class RangeTests(V2TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.data = bytes(range(100))
        self.image_id = self.active(self.data)["id"]

    def get(self, range_header: str, **extra: str) -> Answer:
        return self.request(
            "GET", f"/v2/images/{self.image_id}/file", {"Range": range_header, **extra}
        )

    def test_single_ranges(self) -> None:
        """A single range is a 206 with Content-Range and just those bytes."""
        for header, first, last in [
            ("bytes=10-19", 10, 19), ("bytes=90-", 90, 99), ("bytes=-5", 95, 99),
            ("bytes=95-1000", 95, 99), ("bytes=0-0", 0, 0), ("bytes=-500", 0, 99),
        ]:
            answer = self.get(header)
            self.assertEqual(answer.code, 206, header)
            self.assertEqual(answer.header("Content-Range"), f"bytes {first}-{last}/100")
            self.assertEqual(answer.body, self.data[first:last + 1])
            self.assertIsNone(answer.header("Content-MD5"))

    def test_unsatisfiable(self) -> None:
        """A range past the end is a 416 with Content-Range: bytes */SIZE."""
        for header in ("bytes=100-", "bytes=500-600", "bytes=-0"):
            answer = self.get(header)
            self.assertError(answer, 416)
            self.assertEqual(answer.header("Content-Range"), "bytes */100")

    def test_served_whole(self) -> None:
        """A malformed header or another unit: the whole, 200. (Several
        ranges are multipart: tests/test_http_cache.py.)"""
        for header in ("bytes=abc", "lines=1-2", "bytes=5-1", "bytes=-", "bytes=0-1,x"):
            answer = self.get(header)
            self.assertEqual(answer.code, 200, header)
            self.assertEqual(answer.body, self.data)

    def test_if_range(self) -> None:
        """If-Range with the current ETag honours the range; another serves the whole."""
        etag = self.request("GET", f"/v2/images/{self.image_id}/file").header("ETag")
        self.assertEqual(self.get("bytes=0-1", **{"If-Range": etag}).code, 206)
        self.assertEqual(self.get("bytes=0-1", **{"If-Range": '"other"'}).code, 200)


class ParseRangeTests(SynchronousTestCase):
    """L{parse_ranges} alone (multiple ranges: tests/test_http_cache.py)."""

    def test_parse(self) -> None:
        """Single ranges are parsed against the size; malformed ones give None."""
        self.assertEqual(parse_ranges(b"bytes=0-9", 100), (ByteRange(0, 10, 100),))
        self.assertEqual(parse_ranges(b"Bytes = 5 - ", 10), None)
        self.assertEqual(parse_ranges(b"bytes=5-", 10), (ByteRange(5, 5, 10),))
        self.assertEqual(parse_ranges(b"bytes=-3", 10), (ByteRange(7, 3, 10),))
        self.assertIsNone(parse_ranges(None, 10))
        self.assertIsNone(parse_ranges(b"bytes=\xff", 10))
        self.assertRaises(RangeNotSatisfiable, parse_ranges, b"bytes=0-", 0)
        self.assertRaises(RangeNotSatisfiable, parse_ranges, b"bytes=-1", 0)
        self.assertEqual(ByteRange(5, 5, 10).content_range(), b"bytes 5-9/10")


class TagTests(V2TestCase):
    def test_add_and_delete(self) -> None:
        """PUT and DELETE /tags/{tag} are 204s; adding twice is harmless."""
        image = self.create(tags=["old"])
        path = f"/v2/images/{image['id']}/tags"
        self.assertEqual(self.request("PUT", f"{path}/new").code, 204)
        self.assertEqual(self.request("PUT", f"{path}/new").code, 204)
        self.assertEqual(self.show(image["id"])["tags"], ["new", "old"])
        answer = self.request("DELETE", f"{path}/old")
        self.assertEqual((answer.code, answer.body), (204, b""))
        self.assertEqual(self.show(image["id"])["tags"], ["new"])

    def test_refusals(self) -> None:
        """A missing tag is a 404, a long one a 400, another's image 403/404."""
        image = self.create(ALICE, visibility="community")
        path = f"/v2/images/{image['id']}/tags"
        self.assertError(self.request("DELETE", f"{path}/absent", ALICE), 404)
        self.assertError(self.request("PUT", f"{path}/{'t' * 256}", ALICE), 400)
        self.assertError(self.request("PUT", f"{path}/x", BOB), 403)
        self.assertError(self.request("DELETE", f"{path}/x", BOB), 403)
        private = self.create(ALICE, visibility="private")
        self.assertError(self.request("PUT", f"/v2/images/{private['id']}/tags/x", BOB), 404)


class MemberTests(V2TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.image_id = self.create(BOB, visibility="shared", name="shared")["id"]
        self.members = f"/v2/images/{self.image_id}/members"

    def add(self, member: str, headers: dict[str, str] = BOB) -> Answer:
        return self.send_json("POST", self.members, {"member": member}, headers)

    def test_share_accept_reject(self) -> None:
        """The owner shares; the member sees the image at once and accepts or
        rejects; Glance's member document throughout."""
        answer = self.add("alice")
        self.assertEqual(answer.code, 200, answer.body)
        member = answer.json()
        self.assertEqual(
            {k: member[k] for k in ("image_id", "member_id", "status", "schema")},
            {"image_id": self.image_id, "member_id": "alice", "status": "pending",
             "schema": "/v2/schemas/member"},
        )
        self.assertRegex(member["created_at"], r"Z$")
        self.assertEqual(self.show(self.image_id, ALICE)["name"], "shared")
        self.assertError(self.request("GET", f"/v2/images/{self.image_id}", CAROL), 404)
        answer = self.send_json("PUT", f"{self.members}/alice", {"status": "accepted"}, ALICE)
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(answer.json()["status"], "accepted")
        self.assertEqual(self.listed(headers=ALICE), [self.image_id])
        answer = self.send_json("PUT", f"{self.members}/alice", {"status": "rejected"}, ALICE)
        self.assertEqual(answer.json()["status"], "rejected")
        self.assertEqual(self.listed(headers=ALICE), [])
        # Rejected members still see the image itself.
        self.assertEqual(self.request("GET", f"/v2/images/{self.image_id}", ALICE).code, 200)

    def test_listing_members(self) -> None:
        """The owner lists every member; a member only itself; others get 404."""
        self.add("alice")
        self.add("carol")
        owner_view = self.request("GET", self.members, BOB).json()
        self.assertEqual(owner_view["schema"], "/v2/schemas/members")
        self.assertEqual(sorted(m["member_id"] for m in owner_view["members"]), ["alice", "carol"])
        alice_view = self.request("GET", self.members, ALICE).json()
        self.assertEqual([m["member_id"] for m in alice_view["members"]], ["alice"])
        self.assertError(self.request("GET", self.members, project("dave")), 404)
        self.assertEqual(self.request("GET", f"{self.members}/carol", BOB).json()["member_id"], "carol")
        self.assertEqual(self.request("GET", f"{self.members}/alice", ALICE).code, 200)
        self.assertError(self.request("GET", f"{self.members}/carol", ALICE), 404)
        self.assertError(self.request("GET", f"{self.members}/nobody", BOB), 404)

    def test_only_shared_images_have_members(self) -> None:
        """Members of a private, public or community image: 403."""
        for visibility, headers in [("private", BOB), ("community", BOB), ("public", ADMIN)]:
            image = self.create(headers, visibility=visibility)
            members = f"/v2/images/{image['id']}/members"
            self.assertError(self.send_json("POST", members, {"member": "x"}, headers), 403, "shared")
            self.assertError(self.request("GET", members, headers), 403)
            self.assertError(self.request("GET", f"{members}/x", headers), 404)

    def test_only_the_owner_adds_and_removes(self) -> None:
        """A member cannot add others or remove itself; the owner (or an admin) can."""
        self.add("alice")
        self.send_json("PUT", f"{self.members}/alice", {"status": "accepted"}, ALICE)
        self.assertError(self.add("carol", ALICE), 403)
        self.assertError(self.request("DELETE", f"{self.members}/alice", ALICE), 403)
        self.assertEqual(self.request("DELETE", f"{self.members}/alice", BOB).code, 204)
        self.assertError(self.request("GET", f"/v2/images/{self.image_id}", ALICE), 404)
        self.assertError(self.request("DELETE", f"{self.members}/alice", BOB), 404)
        self.assertEqual(self.add("carol", ADMIN).code, 200)

    def test_only_the_member_changes_its_status(self) -> None:
        """The owner cannot accept for a member (403)."""
        self.add("alice")
        answer = self.send_json("PUT", f"{self.members}/alice", {"status": "accepted"}, BOB)
        self.assertError(answer, 403)
        self.assertError(
            self.send_json("PUT", f"{self.members}/alice", {"status": "accepted"}, CAROL), 404
        )

    def test_refusals(self) -> None:
        """Bad bodies are 400s, a duplicate member a 409."""
        self.assertError(self.send_json("POST", self.members, {}, BOB), 400, "not specified")
        self.assertError(self.send_json("POST", self.members, {"member": ""}, BOB), 400)
        self.assertError(self.send_json("POST", self.members, {"member": 5}, BOB), 400)
        self.assertError(
            self.request("POST", self.members, {**BOB, "Content-Type": "application/json"}, data=b"{"),
            400, "Malformed",
        )
        self.add("alice")
        self.assertError(self.add("alice"), 409)
        for body in ({}, {"status": "maybe"}):
            self.assertError(self.send_json("PUT", f"{self.members}/alice", body, ALICE), 400)


class ActionTests(V2TestCase):
    def test_deactivate_reactivate(self) -> None:
        """An admin deactivates and reactivates (204s, idempotent)."""
        image = self.active()
        base = f"/v2/images/{image['id']}/actions"
        for _ in range(2):
            answer = self.request("POST", f"{base}/deactivate", ADMIN)
            self.assertEqual((answer.code, answer.body), (204, b""))
            self.assertEqual(self.show(image["id"])["status"], "deactivated")
        for _ in range(2):
            self.assertEqual(self.request("POST", f"{base}/reactivate", ADMIN).code, 204)
            self.assertEqual(self.show(image["id"])["status"], "active")

    def test_owner_member_or_admin(self) -> None:
        """
        Glance's secure-RBAC C{deactivate} rule: the owner project's member
        may deactivate (204); a reader of it (403) and another project that
        sees the image (403) may not.
        """
        image = self.active(headers=ALICE, visibility="community")
        action = f"/v2/images/{image['id']}/actions/deactivate"
        self.assertError(self.request("POST", action, project("alice", "reader")), 403)
        self.assertError(self.request("POST", action, BOB), 403)
        self.assertEqual(self.request("POST", action, ALICE).code, 204)
        self.assertEqual(self.show(image["id"])["status"], "deactivated")

    def test_illegal_transition(self) -> None:
        """Deactivating or reactivating a queued image is refused as Glance
        refuses it (403); the image stays queued."""
        image = self.create()
        for action in ("deactivate", "reactivate"):
            answer = self.request("POST", f"/v2/images/{image['id']}/actions/{action}")
            self.assertError(answer, 403, "queued")
        self.assertEqual(self.show(image["id"])["status"], "queued")

    def test_unknown_action(self) -> None:
        """An action that does not exist is a 404."""
        image = self.active()
        self.assertError(self.request("POST", f"/v2/images/{image['id']}/actions/explode"), 404)


class OneRegistryTests(V2TestCase):
    """v1 and v2 are two views of one registry."""

    def test_v1_image_seen_through_v2(self) -> None:
        """An image made with v1 (data, properties) is shown, listed and
        downloaded through v2."""
        data = b"from v1" * 1000
        answer = self.request(
            "POST", "/v1/images",
            {**OCTET, **meta(name="v1img", disk_format="raw", container_format="bare",
                             property_distro="cirros", is_public="true")},
            data=data,
        )
        self.assertEqual(answer.code, 201, answer.body)
        image_id = answer.json()["image"]["id"]
        shown = self.show(image_id)
        self.assertEqual(shown["name"], "v1img")
        self.assertEqual(shown["status"], "active")
        self.assertEqual(shown["visibility"], "public")
        self.assertEqual(shown["distro"], "cirros")
        self.assertEqual(shown["checksum"], hashlib.md5(data).hexdigest())
        self.assertEqual(shown["os_hash_value"], hashlib.sha512(data).hexdigest())
        self.assertIn(image_id, self.listed())
        self.assertEqual(self.request("GET", f"/v2/images/{image_id}/file").body, data)
        self.assertEqual(self.request("DELETE", f"/v2/images/{image_id}").code, 204)
        self.assertEqual(self.request("HEAD", f"/v1/images/{image_id}").code, 404)

    def test_v2_image_seen_through_v1(self) -> None:
        """An image made and uploaded with v2 is shown and downloaded through v1."""
        data = b"from v2" * 1000
        image = self.active(data, name="v2img", os_distro="fedora")
        self.patch(image["id"], [{"op": "add", "path": "/extra", "value": "yes"}])
        head = self.request("HEAD", f"/v1/images/{image['id']}")
        self.assertEqual(head.code, 200)
        self.assertEqual(head.header("x-image-meta-name"), "v2img")
        self.assertEqual(head.header("x-image-meta-status"), "active")
        self.assertEqual(head.header("x-image-meta-property-os_distro"), "fedora")
        self.assertEqual(head.header("x-image-meta-property-extra"), "yes")
        self.assertEqual(self.request("GET", f"/v1/images/{image['id']}").body, data)
        detail = self.request("GET", "/v1/images/detail").json()["images"]
        self.assertIn(image["id"], [i["id"] for i in detail])

    def test_v1_update_seen_by_v2(self) -> None:
        """Metadata changed through v1 shows through v2, and the reverse."""
        image = self.create(name="first")
        self.request("PUT", f"/v1/images/{image['id']}", meta(name="second", property_k="v"))
        shown = self.show(image["id"])
        self.assertEqual((shown["name"], shown["k"]), ("second", "v"))
        self.patch(image["id"], [{"op": "remove", "path": "/k"}])
        head = self.request("HEAD", f"/v1/images/{image['id']}")
        self.assertIsNone(head.header("x-image-meta-property-k"))

    def test_members_see_shared_images_through_v1(self) -> None:
        """
        v1 lets a member of a shared image see and download it, as v2 does
        (and as Glance v1 did); another project, or a removed member, gets
        a 404 from both.
        """
        data = b"shared" * 100
        image_id = self.active(data, ALICE, visibility="shared")["id"]
        members = f"/v2/images/{image_id}/members"
        self.assertEqual(self.send_json("POST", members, {"member": "bob"}, ALICE).code, 200)
        self.assertEqual(
            self.send_json("PUT", f"{members}/bob", {"status": "accepted"}, BOB).code, 200
        )
        for path in (f"/v1/images/{image_id}", f"/images/{image_id}"):
            head = self.request("HEAD", path, BOB)
            self.assertEqual(head.code, 200, path)
            self.assertEqual(head.header("x-image-meta-id"), image_id)
            self.assertEqual(self.request("GET", path, BOB).body, data)
            self.assertEqual(self.request("HEAD", path, CAROL).code, 404)
        self.assertEqual(self.request("GET", f"/v2/images/{image_id}", BOB).code, 200)
        self.assertEqual(self.request("DELETE", f"{members}/bob", ALICE).code, 204)
        self.assertEqual(self.request("HEAD", f"/v1/images/{image_id}", BOB).code, 404)
        self.assertEqual(self.request("GET", f"/v2/images/{image_id}", BOB).code, 404)
