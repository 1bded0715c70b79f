"""Images API v1, every endpoint and refusal, in memory."""

from __future__ import annotations

import hashlib
import uuid

from twisted.internet.defer import Deferred

from glance_tx import images
from tests.api_fixtures import SiteTestCase
from tests.memory_http import ChunkedBody


def meta(**values: str) -> dict[str, str]:
    return {f"x-image-meta-{k.replace('_', '-')}": v for k, v in values.items()}


#: The formats an image needs before it takes data (Glance refuses it otherwise).
FORMATS = meta(disk_format="raw", container_format="bare")
#: An upload's headers.
OCTET = {"Content-Type": "application/octet-stream", **FORMATS}


class ErrorShapeMixin:
    def assertError(self, answer, code: int, fragment: str = "") -> None:
        self.assertEqual(answer.code, code, answer.body)
        self.assertEqual(answer.header("Content-Type"), "application/json")
        error = answer.json()["error"]
        self.assertEqual(error["code"], code)
        self.assertIn(fragment, error["message"])
        self.assertTrue(error["title"])


class VersionsAndHealthTests(SiteTestCase):
    def test_versions(self) -> None:
        """GET / and GET /versions list v1 with links, status 300."""
        for path in ("/", "/versions"):
            answer = self.request("GET", path)
            self.assertEqual(answer.code, 300)
            ids = [v["id"] for v in answer.json()["versions"]]
            self.assertIn("v1.1", ids)
            self.assertEqual(
                answer.json()["versions"][0]["links"][0]["href"], "http://127.0.0.1:9292/v1/"
            )

    def test_healthy(self) -> None:
        """The health check is 200 when the registry and store answer."""
        answer = self.request("GET", "/healthcheck")
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.json()["checks"], {"registry": "ok", "store:file": "ok"})

    def test_unhealthy_store(self) -> None:
        """A store that cannot be used makes the health check 503, naming it."""
        self.store_root.remove()
        answer = self.request("GET", "/healthcheck")
        self.assertEqual(answer.code, 503)
        checks = answer.json()["checks"]
        self.assertEqual(checks["registry"], "ok")
        self.assertNotEqual(checks["store:file"], "ok")

    def test_request_id(self) -> None:
        """Every response carries a request id."""
        answer = self.request("GET", "/versions")
        self.assertTrue(answer.header("x-openstack-request-id").startswith("req-"))


class CreateTests(ErrorShapeMixin, SiteTestCase):
    def test_create_metadata_only(self) -> None:
        """POST without a body makes a queued image from the headers."""
        answer = self.request(
            "POST",
            "/v1/images",
            meta(name="cirros", disk_format="qcow2", container_format="bare",
                 min_ram="128", property_distro="cirros", is_public="true"),
        )
        self.assertEqual(answer.code, 201, answer.body)
        image = answer.json()["image"]
        self.assertEqual(image["status"], "queued")
        self.assertEqual(image["name"], "cirros")
        self.assertEqual(image["min_ram"], 128)
        self.assertTrue(image["is_public"])
        self.assertEqual(image["properties"], {"distro": "cirros"})
        self.assertEqual(image["owner"], "admin")
        self.assertEqual(
            answer.header("Location"), f"http://127.0.0.1:9292/v1/images/{image['id']}"
        )

    def test_create_with_data(self) -> None:
        """POST with a body uploads it: the image is active with its md5."""
        data = bytes(range(256)) * 5000
        answer = self.request(
            "POST", "/v1/images",
            {**OCTET, **meta(name="x", disk_format="raw", container_format="bare")},
            data=data,
        )
        self.assertEqual(answer.code, 201, answer.body)
        image = answer.json()["image"]
        self.assertEqual(image["status"], "active")
        self.assertEqual(image["size"], len(data))
        self.assertEqual(image["checksum"], hashlib.md5(data).hexdigest())
        record = self.successResultOf(self.registry.get(image["id"]))
        self.assertEqual(record.os_hash_algo, "sha512")
        self.assertEqual(record.os_hash_value, hashlib.sha512(data).hexdigest())
        download = self.request("GET", f"/v1/images/{image['id']}")
        self.assertEqual(download.code, 200)
        self.assertEqual(download.body, data)
        # The data's tag is its sha512; v1 adds a digest of its metadata
        # headers (glance_tx.api.http_cache).
        self.assertTrue(
            download.header("ETag").startswith(f'"{hashlib.sha512(data).hexdigest()}-')
        )

    def test_create_chunked(self) -> None:
        """A chunked upload (no Content-Length) works the same."""
        data = b"chunky" * 100000
        answer = self.request(
            "POST", "/images", {**OCTET, **meta(name="c")},
            data=ChunkedBody(data, chunk_size=7000, known_length=False),
        )
        self.assertEqual(answer.code, 201, answer.body)
        self.assertEqual(answer.json()["image"]["size"], len(data))
        self.assertEqual(self.request("GET", f"/images/{answer.json()['image']['id']}").body, data)

    def test_create_with_id(self) -> None:
        """x-image-meta-id chooses the id; reusing it is a 409."""
        image_id = str(uuid.uuid4())
        self.assertEqual(self.request("POST", "/v1/images", meta(id=image_id)).code, 201)
        self.assertError(self.request("POST", "/v1/images", meta(id=image_id)), 409)

    def test_invalid_values(self) -> None:
        """Bad header values are 400s saying what was wrong."""
        cases = [
            (meta(disk_format="floppy"), "disk format 'floppy'"),
            (meta(container_format="box"), "container format 'box'"),
            (meta(disk_format="ami", container_format="bare"), "Invalid mix"),
            (meta(is_public="maybe"), "is_public"),
            (meta(min_ram="lots"), "min_ram"),
            (meta(min_disk="-1"), "min_disk"),
            (meta(id="not-a-uuid"), "UUID"),
            (meta(checksum="xyz"), "checksum"),
            (meta(name="n" * 256), "name"),
        ]
        for headers, fragment in cases:
            self.assertError(self.request("POST", "/v1/images", headers), 400, fragment)

    def test_wrong_content_type(self) -> None:
        """Image data in anything but application/octet-stream is a 415."""
        answer = self.request(
            "POST", "/v1/images", {"Content-Type": "text/plain"}, data=b"hello"
        )
        self.assertError(answer, 415, "octet-stream")

    def test_declared_size_mismatch(self) -> None:
        """A declared size the data does not match is a 400; the image is
        killed and no data is left."""
        image_id = str(uuid.uuid4())
        answer = self.request(
            "POST", "/v1/images",
            {**OCTET, **meta(id=image_id, size="10")},
            data=ChunkedBody(b"x" * 20, known_length=False),
        )
        self.assertError(answer, 400, "declared size")
        image = self.successResultOf(self.registry.get(image_id))
        self.assertEqual(image.status, images.KILLED)
        self.assertEqual(self.stored_files(), [])

    def test_short_data(self) -> None:
        """Fewer bytes than declared is a 400 at the end of the body."""
        image_id = str(uuid.uuid4())
        answer = self.request(
            "POST", "/v1/images",
            {**OCTET, **meta(id=image_id, size="100")},
            data=ChunkedBody(b"x" * 20, known_length=False),
        )
        self.assertError(answer, 400, "declared size")
        self.assertEqual(self.successResultOf(self.registry.get(image_id)).status, "killed")
        self.assertEqual(self.stored_files(), [])

    def test_checksum_mismatch(self) -> None:
        """A declared checksum that does not match is a 400; image killed,
        data removed."""
        image_id = str(uuid.uuid4())
        answer = self.request(
            "POST", "/v1/images",
            {**OCTET, **meta(id=image_id, checksum=hashlib.md5(b"other").hexdigest())},
            data=b"data" * 1000,
        )
        self.assertError(answer, 400, "checksum")
        self.assertEqual(self.successResultOf(self.registry.get(image_id)).status, "killed")
        self.assertEqual(self.stored_files(), [])

    def test_matching_checksum_and_size(self) -> None:
        """Declared size and checksum that match are accepted."""
        data = b"good" * 1000
        answer = self.request(
            "POST", "/v1/images",
            {**OCTET, **meta(size=str(len(data)), checksum=hashlib.md5(data).hexdigest())},
            data=data,
        )
        self.assertEqual(answer.code, 201, answer.body)

    def test_location(self) -> None:
        """x-image-meta-location registers data already in a store; the
        location is never shown."""
        target = self.store_root.child(str(uuid.uuid4()))
        target.setContent(b"external bytes")
        answer = self.request(
            "POST", "/v1/images", {**FORMATS, **meta(location="file://" + target.path)}
        )
        self.assertEqual(answer.code, 201, answer.body)
        image = answer.json()["image"]
        self.assertEqual(image["status"], "active")
        self.assertEqual(image["size"], 14)
        self.assertNotIn("location", answer.body.decode())
        self.assertEqual(self.request("GET", f"/v1/images/{image['id']}").body, b"external bytes")

    def test_location_outside_store(self) -> None:
        """A location outside every store is refused."""
        answer = self.request("POST", "/v1/images", {**FORMATS, **meta(location="file:///etc/passwd")})
        self.assertError(answer, 400, "Location")

    def test_location_and_body(self) -> None:
        """Data and a location in one request is a 400."""
        answer = self.request(
            "POST", "/v1/images", {**OCTET, **meta(location="file:///x")}, data=b"abc"
        )
        self.assertError(answer, 400, "location")


class FormatsBeforeDataTests(ErrorShapeMixin, SiteTestCase):
    """
    Glance v1 takes no data for an image whose disk or container format
    is unset (its _validate_image_for_activation): a 400 before anything
    is stored.
    """

    def listed(self) -> list[dict]:
        return self.request("GET", "/v1/images/detail?is_public=none").json()["images"]

    def test_create_with_data(self) -> None:
        """A POST with data but a format missing is a 400 naming it; no image is made."""
        octet = {"Content-Type": "application/octet-stream"}
        cases = [
            ({}, "Disk format is not specified. Container format is not specified."),
            (meta(disk_format="raw"), "Container format is not specified."),
            (meta(container_format="bare"), "Disk format is not specified."),
        ]
        for headers, message in cases:
            answer = self.request("POST", "/v1/images", {**octet, **headers}, data=b"data")
            self.assertError(answer, 400)
            self.assertEqual(answer.json()["error"]["message"], message)
        self.assertEqual(self.listed(), [])
        self.assertEqual(self.stored_files(), [])

    def test_create_with_location(self) -> None:
        """A location is data too: refused without formats, nothing made."""
        target = self.store_root.child(str(uuid.uuid4()))
        target.setContent(b"external bytes")
        answer = self.request("POST", "/v1/images", meta(location="file://" + target.path))
        self.assertError(answer, 400, "Disk format is not specified.")
        self.assertEqual(self.listed(), [])

    def test_update_with_data(self) -> None:
        """
        A PUT of data to a queued image without formats is a 400 and the
        image stays queued; the formats may come in the same PUT.
        """
        image_id = self.request("POST", "/v1/images", meta(name="q")).json()["image"]["id"]
        path = f"/v1/images/{image_id}"
        octet = {"Content-Type": "application/octet-stream"}
        refused = self.request("PUT", path, {**octet, **meta(disk_format="raw")}, data=b"data")
        self.assertError(refused, 400, "Container format is not specified.")
        record = self.successResultOf(self.registry.get(image_id))
        self.assertEqual((record.status, record.disk_format), ("queued", None))
        self.assertEqual(self.stored_files(), [])
        accepted = self.request("PUT", path, {**octet, **FORMATS}, data=b"data")
        self.assertEqual(accepted.code, 200, accepted.body)
        image = accepted.json()["image"]
        self.assertEqual(
            (image["status"], image["disk_format"], image["container_format"]),
            ("active", "raw", "bare"),
        )

    def test_update_with_location(self) -> None:
        """A PUT of a location to a queued image without formats is refused."""
        image_id = self.request("POST", "/v1/images", meta(name="q")).json()["image"]["id"]
        target = self.store_root.child(str(uuid.uuid4()))
        target.setContent(b"external bytes")
        answer = self.request(
            "PUT", f"/v1/images/{image_id}", meta(location="file://" + target.path)
        )
        self.assertError(answer, 400, "Disk format is not specified.")
        self.assertEqual(self.successResultOf(self.registry.get(image_id)).status, "queued")


class SizeCapTests(ErrorShapeMixin, SiteTestCase):
    size_cap = 1000

    def test_declared_over_cap(self) -> None:
        """A declared size over image_size_cap is refused before the body."""
        answer = self.request("POST", "/v1/images", {**OCTET, **meta(size="5000")}, data=b"x" * 5000)
        self.assertError(answer, 413, "1000")
        self.assertEqual(self.successResultOf(self.registry.list(images.ImageQuery(exclude_statuses=frozenset()))), [])

    def test_chunked_over_cap(self) -> None:
        """A chunked body passing the cap is a 413 mid-stream; the image is
        killed and nothing is stored."""
        image_id = str(uuid.uuid4())
        answer = self.request(
            "POST", "/v1/images", {**OCTET, **meta(id=image_id)},
            data=ChunkedBody(b"x" * 5000, chunk_size=100, known_length=False),
        )
        self.assertError(answer, 413, "size limit")
        self.assertEqual(self.successResultOf(self.registry.get(image_id)).status, "killed")
        self.assertEqual(self.stored_files(), [])


class ReadTests(ErrorShapeMixin, SiteTestCase):
    def create(self, data: bytes | None = None, **values: str) -> dict:
        headers = meta(**values)
        if data is not None:
            headers.update(OCTET)
        answer = self.request("POST", "/v1/images", headers, data=data)
        self.assertEqual(answer.code, 201, answer.body)
        return answer.json()["image"]

    def test_head(self) -> None:
        """HEAD gives the metadata as x-image-meta-* headers and an ETag
        (the data's sha512 and a digest of the metadata)."""
        image = self.create(b"abc", name="h", disk_format="raw", container_format="bare",
                            property_os="linux")
        answer = self.request("HEAD", f"/v1/images/{image['id']}")
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header("x-image-meta-name"), "h")
        self.assertEqual(answer.header("x-image-meta-status"), "active")
        self.assertEqual(answer.header("x-image-meta-size"), "3")
        self.assertEqual(answer.header("x-image-meta-is_public"), "False")
        self.assertEqual(answer.header("x-image-meta-property-os"), "linux")
        self.assertTrue(answer.header("ETag").startswith(f'"{hashlib.sha512(b"abc").hexdigest()}-'))
        self.assertIsNone(answer.header("x-image-meta-location"))
        self.assertEqual(answer.body, b"")

    def test_range(self) -> None:
        """v1 downloads share v2's path: a single range is a 206, past the
        end a 416."""
        image = self.create(b"0123456789", name="r")
        part = self.request("GET", f"/v1/images/{image['id']}", {"Range": "bytes=2-4"})
        self.assertEqual(part.code, 206)
        self.assertEqual(part.body, b"234")
        self.assertEqual(part.header("Content-Range"), "bytes 2-4/10")
        beyond = self.request("GET", f"/v1/images/{image['id']}", {"Range": "bytes=20-"})
        self.assertEqual(beyond.code, 416)
        self.assertEqual(beyond.header("Content-Range"), "bytes */10")

    def test_not_found(self) -> None:
        """Unknown ids are 404, and so are malformed ones, as in Glance (and v2)."""
        self.assertError(self.request("GET", f"/v1/images/{uuid.uuid4()}"), 404)
        self.assertEqual(self.request("HEAD", f"/v1/images/{uuid.uuid4()}").code, 404)
        self.assertError(self.request("GET", "/v1/images/../../etc"), 404)
        self.assertError(self.request("GET", "/v1/images/nope"), 404, "nope")
        self.assertError(self.request("DELETE", "/images/nope"), 404, "nope")

    def test_data_of_queued_image(self) -> None:
        """Asking for the data of a queued image is refused with a reason."""
        image = self.create(name="q")
        self.assertError(self.request("GET", f"/v1/images/{image['id']}"), 409, "queued")

    def test_empty_image(self) -> None:
        """An uploaded empty image is active and downloads as zero bytes."""
        image = self.create(ChunkedBody(b"", known_length=False), name="e")
        self.assertEqual(image["status"], "active")
        self.assertEqual(image["size"], 0)
        self.assertEqual(self.request("GET", f"/v1/images/{image['id']}").body, b"")

    def test_method_not_allowed(self) -> None:
        """Unsupported methods get a JSON 405."""
        self.assertError(self.request("PATCH", f"/v1/images/{uuid.uuid4()}"), 405)
        self.assertError(self.request("DELETE", "/v1/images"), 405)

    def test_unknown_path(self) -> None:
        """Unknown paths get a JSON 404."""
        self.assertError(self.request("GET", "/v9/nothing"), 404)

    def test_other_projects_private_image(self) -> None:
        """Another project's non-public image is a 404 to a non-admin."""
        image = self.create(name="mine")
        other = {"X-Project-Id": "other", "X-Roles": "member"}
        self.assertEqual(self.request("HEAD", f"/v1/images/{image['id']}", other).code, 404)
        public = self.create(name="pub", is_public="true")
        self.assertEqual(self.request("HEAD", f"/v1/images/{public['id']}", other).code, 200)


class ListTests(ErrorShapeMixin, SiteTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.ids = {}
        # In ovf containers: the made-up data is not a disk to inspect.
        for name, disk, size, public in [
            ("a", "raw", 10, "true"), ("b", "qcow2", 20, "false"),
            ("c", "qcow2", 30, "true"), ("d", "iso", 40, "false"),
        ]:
            answer = self.request(
                "POST", "/v1/images",
                {**OCTET, **meta(name=name, disk_format=disk, container_format="ovf",
                                 is_public=public, property_tier=name.upper())},
                data=b"x" * size,
            )
            self.ids[name] = answer.json()["image"]["id"]
        self.request("POST", "/v1/images", meta(name="queued-one"))

    def names(self, query: str, detail: bool = False) -> list[str]:
        path = "/v1/images/detail" if detail else "/v1/images"
        answer = self.request("GET", path + query)
        self.assertEqual(answer.code, 200, answer.body)
        return [i["name"] for i in answer.json()["images"]]

    def test_brief_and_detail(self) -> None:
        """The brief list has summary fields; detail adds properties."""
        brief = self.request("GET", "/v1/images").json()["images"][0]
        self.assertNotIn("properties", brief)
        self.assertEqual(
            set(brief), {"id", "name", "disk_format", "container_format", "size", "checksum", "status"}
        )
        detail = self.request("GET", "/v1/images/detail").json()["images"]
        self.assertIn("properties", detail[0])

    def test_filters(self) -> None:
        """Each v1 filter narrows the list."""
        self.assertEqual(self.names("?name=b"), ["b"])
        self.assertEqual(sorted(self.names("?disk_format=qcow2")), ["b", "c"])
        self.assertEqual(self.names("?status=queued"), ["queued-one"])
        self.assertEqual(sorted(self.names("?size_min=20&size_max=30")), ["b", "c"])
        self.assertEqual(sorted(self.names("?is_public=true")), ["a", "c"])
        self.assertEqual(sorted(self.names("?is_public=false")), ["b", "d", "queued-one"])
        self.assertEqual(self.names("?property-tier=D"), ["d"])
        self.assertEqual(sorted(self.names("?container_format=ovf&disk_format=iso")), ["d"])

    def test_sort_and_paginate(self) -> None:
        """sort_key/sort_dir order the list; marker+limit page through it."""
        self.assertEqual(self.names("?sort_key=name&sort_dir=asc&status=active"), ["a", "b", "c", "d"])
        self.assertEqual(self.names("?sort_key=size&sort_dir=desc&status=active"), ["d", "c", "b", "a"])
        first = self.names("?sort_key=name&sort_dir=asc&limit=2&status=active")
        self.assertEqual(first, ["a", "b"])
        rest = self.names(f"?sort_key=name&sort_dir=asc&limit=2&status=active&marker={self.ids['b']}")
        self.assertEqual(rest, ["c", "d"])

    def test_bad_parameters(self) -> None:
        """A bad list parameter is a 400 naming it."""
        for query, name in [
            ("?limit=x", "limit"), ("?limit=5000", "limit"), ("?sort_key=color", "sort_key"),
            ("?sort_dir=up", "sort_dir"), ("?size_min=big", "size_min"),
            ("?marker=nope", "UUID"), (f"?marker={uuid.uuid4()}", "marker"),
            ("?is_public=perhaps", "is_public"), ("?min_ram=x", "min_ram"),
        ]:
            self.assertError(self.request("GET", "/v1/images" + query), 400, name)

    def test_killed_not_listed(self) -> None:
        """Killed and deleted images are left out of lists."""
        self.request("DELETE", f"/v1/images/{self.ids['a']}")
        self.assertNotIn("a", self.names("?limit=100"))


class UpdateDeleteTests(ErrorShapeMixin, SiteTestCase):
    def create(self, **values: str) -> str:
        return self.request("POST", "/v1/images", meta(**values)).json()["image"]["id"]

    def test_update_metadata(self) -> None:
        """PUT changes core fields and properties from headers."""
        image_id = self.create(name="old", property_a="1", property_b="2")
        answer = self.request(
            "PUT", f"/v1/images/{image_id}", meta(name="new", min_disk="5", property_a="9")
        )
        self.assertEqual(answer.code, 200, answer.body)
        image = answer.json()["image"]
        self.assertEqual(image["name"], "new")
        self.assertEqual(image["min_disk"], 5)
        self.assertEqual(image["properties"], {"a": "9", "b": "2"})

    def test_purge_properties(self) -> None:
        """x-glance-registry-purge-props removes properties not named."""
        image_id = self.create(property_a="1", property_b="2")
        answer = self.request(
            "PUT", f"/v1/images/{image_id}",
            {**meta(property_a="1"), "x-glance-registry-purge-props": "true"},
        )
        self.assertEqual(answer.json()["image"]["properties"], {"a": "1"})

    def test_upload_to_queued_then_again(self) -> None:
        """PUT with data uploads to a queued image; a second upload is 409."""
        image_id = self.create(name="later")
        answer = self.request("PUT", f"/v1/images/{image_id}", OCTET, data=b"payload")
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(answer.json()["image"]["status"], "active")
        again = self.request("PUT", f"/v1/images/{image_id}", OCTET, data=b"other")
        self.assertError(again, 409, "queued")
        self.assertEqual(self.request("GET", f"/v1/images/{image_id}").body, b"payload")

    def test_delete(self) -> None:
        """DELETE removes the image and its data."""
        answer = self.request("POST", "/v1/images", {**OCTET, **meta(name="d")}, data=b"bytes")
        image_id = answer.json()["image"]["id"]
        self.assertEqual(len(self.stored_files()), 1)
        self.assertEqual(self.request("DELETE", f"/v1/images/{image_id}").code, 200)
        self.assertError(self.request("GET", f"/v1/images/{image_id}"), 404)
        self.assertError(self.request("DELETE", f"/v1/images/{image_id}"), 404)
        self.assertEqual(self.stored_files(), [])

    def test_protected(self) -> None:
        """A protected image refuses deletion with 403 until unprotected."""
        image_id = self.create(protected="true")
        self.assertError(self.request("DELETE", f"/v1/images/{image_id}"), 403, "protected")
        self.request("PUT", f"/v1/images/{image_id}", meta(protected="false"))
        self.assertEqual(self.request("DELETE", f"/v1/images/{image_id}").code, 200)

    def test_non_owner(self) -> None:
        """Another project may not change or delete an image, nor publicize."""
        image_id = self.create(is_public="true")
        other = {"X-Project-Id": "other", "X-Roles": "member"}
        self.assertError(self.request("PUT", f"/v1/images/{image_id}", {**other, **meta(name="x")}), 403)
        self.assertError(self.request("DELETE", f"/v1/images/{image_id}", other), 403)
        answer = self.request("POST", "/v1/images", {**other, **meta(is_public="true")})
        self.assertError(answer, 403, "public")

    def test_upload_to_deleted_during_upload(self) -> None:
        """If the image is deleted while saving, its data is not kept."""
        image_id = self.create(name="racy")
        upload = self.successResultOf(
            Deferred.fromCoroutine(
                self.site.upload_routes[1].api.uploader.start(
                    self.successResultOf(self.registry.get(image_id))
                )
            )
        )
        upload.write(b"some data")
        self.successResultOf(self.registry.delete(image_id))
        failure = self.failureResultOf(Deferred.fromCoroutine(upload.finish()))
        self.assertTrue(failure.check(Exception))
        self.assertEqual(self.stored_files(), [])
