"""
Validators, caching rules, conditional and ranged requests
(L{glance_tx.api.http_cache}, L{glance_tx.api.ranges},
L{glance_tx.api.downloads}), in memory through the whole site.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from attrs import define, field
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from glance_tx.api.downloads import _PartsConsumer
from glance_tx.api.http_cache import EntityTag, http_date, parse_http_date
from glance_tx.api.ranges import (
    COALESCE_GAP,
    MAX_RANGE_SPECS,
    ByteRange,
    MultipartRanges,
    parse_ranges,
)
from glance_tx.config import CacheConfig
from glance_tx.errors import RangeNotSatisfiable
from glance_tx.images import ImageUpdate
from tests.api_fixtures import Answer
from tests.test_api_v1 import meta
from tests.test_api_v2 import ADMIN, ALICE, BOB, OCTET, V2TestCase

DATA = bytes(range(256)) * 4 + b"tail"  # 1028 bytes
SIZE = len(DATA)
SHA512 = hashlib.sha512(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()


@define
class Raw:
    """A response as the bytes on the wire say it."""

    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


class CacheTestCase(V2TestCase):
    """A site with a known cache configuration, and helpers."""

    cache = CacheConfig(public_max_age=3600, metadata_max_age=0)

    def image(self, visibility: str = "public", data: bytes = DATA, **fields: Any) -> str:
        """An active image (owned by alice unless public) holding C{data}."""
        owner = {} if visibility == "public" else ALICE
        image = self.active(data, owner or None, visibility=visibility, **fields)
        image_id: str = image["id"]
        return image_id

    def record(self, image_id: str) -> Any:
        return self.successResultOf(self.registry.get(image_id))

    def raw(self, method: str, path: str, headers: dict[str, str] | None = None) -> Raw:
        """
        Send one request as bytes and parse the bytes that come back, to
        see what treq hides (Content-Length, Transfer-Encoding, HEAD bodies).
        """
        transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 9292),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 31337),
        )
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 31337))
        channel.makeConnection(transport)
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1:9292", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head, _, body = transport.value().partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parsed: dict[str, list[str]] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            parsed.setdefault(name.strip().lower(), []).append(value.strip())
        channel.connectionLost(Failure(ConnectionDone()))
        return Raw(int(status_line.split()[1]), parsed, body)

    def file(self, image_id: str, headers: dict[str, str] | None = None, method: str = "GET") -> Answer:
        return self.request(method, f"/v2/images/{image_id}/file", headers)


def _comparable(raw: Raw) -> dict[str, list[str]]:
    """Headers that must be the same for a GET and a HEAD."""
    return {
        k: v for k, v in raw.headers.items() if k not in ("date", "x-openstack-request-id")
    }


class DataHeaderTests(CacheTestCase):
    def test_public_data(self) -> None:
        """Public and community image data: the sha512 as a strong ETag,
        created_at as Last-Modified, Accept-Ranges, and cacheable by shared
        caches for public_max_age, immutable."""
        for visibility in ("public", "community"):
            image_id = self.image(visibility)
            for method in ("GET", "HEAD"):
                answer = self.file(image_id, ALICE, method)
                self.assertEqual(answer.code, 200)
                self.assertEqual(answer.header("ETag"), f'"{SHA512}"')
                self.assertEqual(
                    answer.header("Last-Modified"),
                    http_date(self.record(image_id).created_at).decode(),
                )
                self.assertEqual(answer.header("Accept-Ranges"), "bytes")
                self.assertEqual(answer.header("Cache-Control"), "public, max-age=3600, immutable")
                self.assertIsNone(answer.header("Vary"))
            self.assertEqual(self.file(image_id).body, DATA)

    def test_private_data(self) -> None:
        """Private and shared image data is never for a shared cache:
        private, no-store; the validators are still there."""
        for visibility in ("private", "shared"):
            image_id = self.image(visibility)
            for method in ("GET", "HEAD"):
                answer = self.file(image_id, ALICE, method)
                self.assertEqual(answer.code, 200)
                self.assertEqual(answer.header("Cache-Control"), "private, no-store")
                self.assertEqual(answer.header("ETag"), f'"{SHA512}"')
                self.assertIsNotNone(answer.header("Last-Modified"))

    def test_deactivated_data(self) -> None:
        """The data of a deactivated public image, which only an admin may
        read, is not for a shared cache either."""
        image_id = self.image("public")
        self.request("POST", f"/v2/images/{image_id}/actions/deactivate", ADMIN)
        answer = self.file(image_id, ADMIN)
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.header("Cache-Control"), "private, no-store")
        self.assertEqual(self.file(image_id, BOB).header("Cache-Control"), "no-store")

    def test_md5_fallback(self) -> None:
        """Without an os_hash_value, the md5 checksum is the ETag; with
        neither, there is no ETag."""
        image_id = self.image("public")
        self.successResultOf(
            self.registry.update(image_id, ImageUpdate(fields={"os_hash_value": None, "os_hash_algo": None}))
        )
        self.assertEqual(self.file(image_id).header("ETag"), f'"{MD5}"')
        self.successResultOf(self.registry.update(image_id, ImageUpdate(fields={"checksum": None})))
        answer = self.file(image_id)
        self.assertEqual(answer.code, 200)
        self.assertIsNone(answer.header("ETag"))
        self.assertEqual(answer.body, DATA)

    def test_data_validators_fixed(self) -> None:
        """Editing metadata changes neither the data's ETag nor its
        Last-Modified."""
        image_id = self.image("public")
        before = self.file(image_id)
        answer = self.patch(image_id, [{"op": "replace", "path": "/name", "value": "renamed"}])
        self.assertEqual(answer.code, 200, answer.body)
        after = self.file(image_id)
        self.assertEqual(after.header("ETag"), before.header("ETag"))
        self.assertEqual(after.header("Last-Modified"), before.header("Last-Modified"))

    def test_v1_data(self) -> None:
        """v1 GET and HEAD of image data: the strong tag is the data's and
        the metadata's; Cache-Control follows the metadata rule, since the
        x-image-meta-* headers ride along."""
        public = self.image("public")
        private = self.image("private")
        for path in (f"/v1/images/{public}", f"/images/{public}"):
            for method in ("GET", "HEAD"):
                answer = self.request(method, path, ALICE)
                self.assertEqual(answer.code, 200)
                etag = answer.header("ETag")
                self.assertRegex(etag, rf'^"{SHA512}-[0-9a-f]{{32}}"$')
                self.assertEqual(answer.header("Cache-Control"), "public, no-cache")
                self.assertEqual(answer.header("Accept-Ranges"), "bytes")
                self.assertEqual(
                    answer.header("Last-Modified"),
                    http_date(self.record(public).updated_at).decode(),
                )
        answer = self.request("GET", f"/v1/images/{private}", ALICE)
        self.assertEqual(answer.header("Cache-Control"), "private, no-store")
        self.assertEqual(answer.body, DATA)

    def test_v1_etag_follows_metadata(self) -> None:
        """A v1 metadata update changes the v1 ETag of the image (HEAD and
        GET alike), and If-None-Match with the old one gives the new
        headers; the v2 data tag does not move."""
        image_id = self.image("public")
        before = self.request("HEAD", f"/v1/images/{image_id}").header("ETag")
        answer = self.request("PUT", f"/v1/images/{image_id}", meta(name="v1-renamed"))
        self.assertEqual(answer.code, 200, answer.body)
        head = self.request("HEAD", f"/v1/images/{image_id}", {"If-None-Match": before})
        self.assertEqual(head.code, 200)
        self.assertEqual(head.header("x-image-meta-name"), "v1-renamed")
        self.assertNotEqual(head.header("ETag"), before)
        self.assertEqual(self.request("GET", f"/v1/images/{image_id}").header("ETag"), head.header("ETag"))
        self.assertEqual(self.file(image_id).header("ETag"), f'"{SHA512}"')

    def test_v1_head_without_data(self) -> None:
        """v1 HEAD of a queued image: a strong ETag of its metadata (so a
        PUT can name it in If-Match), which changes on update and
        revalidates to 304."""
        created = self.request("POST", "/v1/images", meta(name="q", is_public="true"))
        image_id = created.json()["image"]["id"]
        first = self.request("HEAD", f"/v1/images/{image_id}")
        self.assertEqual(first.code, 200)
        self.assertRegex(first.header("ETag"), r'^"[0-9a-f]{32}"$')
        self.assertEqual(first.header("Cache-Control"), "public, no-cache")
        again = self.request("HEAD", f"/v1/images/{image_id}", {"If-None-Match": first.header("ETag")})
        self.assertEqual(again.code, 304)
        self.request("PUT", f"/v1/images/{image_id}", meta(property_k="v"))
        changed = self.request("HEAD", f"/v1/images/{image_id}", {"If-None-Match": first.header("ETag")})
        self.assertEqual(changed.code, 200)
        self.assertNotEqual(changed.header("ETag"), first.header("ETag"))

    def test_errors_not_stored(self) -> None:
        """Refusals are never stored: a 404 for one project must not hide
        an image from another; 409, 412 and 416 neither."""
        private = self.image("private")
        hidden = self.file(private, BOB)
        self.assertEqual(hidden.code, 404)
        self.assertEqual(hidden.header("Cache-Control"), "no-store")
        self.assertEqual(self.request("GET", f"/v2/images/{private}", BOB).header("Cache-Control"), "no-store")
        self.assertEqual(self.request("HEAD", f"/v1/images/{private}", BOB).header("Cache-Control"), "no-store")
        queued = self.request("POST", "/v1/images", meta(name="q", disk_format="raw", container_format="bare")).json()["image"]["id"]
        conflict = self.request("GET", f"/v1/images/{queued}")
        self.assertEqual(conflict.code, 409)
        self.assertEqual(conflict.header("Cache-Control"), "no-store")
        public = self.image("public")
        failed = self.file(public, {"If-Match": '"other"'})
        self.assertEqual(failed.code, 412)
        self.assertEqual(failed.header("Cache-Control"), "no-store")
        beyond = self.file(public, {"Range": f"bytes={SIZE}-"})
        self.assertEqual(beyond.code, 416)
        self.assertEqual(beyond.header("Cache-Control"), "no-store")


class ZeroMaxAgeTests(CacheTestCase):
    cache = CacheConfig(public_max_age=0, metadata_max_age=30)

    def test_configured_ages(self) -> None:
        """public_max_age 0 makes public data no-cache (store, always
        revalidate); metadata_max_age sets the metadata's max-age."""
        image_id = self.image("public")
        self.assertEqual(self.file(image_id).header("Cache-Control"), "public, no-cache")
        self.assertEqual(
            self.request("GET", f"/v2/images/{image_id}").header("Cache-Control"), "public, max-age=30"
        )
        self.assertEqual(
            self.request("HEAD", f"/v1/images/{image_id}").header("Cache-Control"), "public, max-age=30"
        )
        self.assertEqual(
            self.request("GET", "/v1/images/detail").header("Cache-Control"), "private, max-age=30"
        )


class RevalidationTests(CacheTestCase):
    """
    L{CacheConfig.revalidate} (auth_strategy = keystone): image data and
    metadata stored by any cache but used only after glance-tx's 304 for
    the caller asking; errors before a 304 for a caller who may not read.
    """

    cache = CacheConfig(public_max_age=3600, revalidate=True)

    def test_every_visibility(self) -> None:
        """Active data and image metadata of every visibility: public,
        no-cache, must-revalidate; listings stay private."""
        for visibility in ("public", "community", "shared", "private"):
            image_id = self.image(visibility)
            for answer in (
                self.file(image_id, ALICE),
                self.file(image_id, ALICE, "HEAD"),
                self.request("GET", f"/v2/images/{image_id}", ALICE),
                self.request("HEAD", f"/v1/images/{image_id}", ALICE),
            ):
                self.assertEqual(answer.code, 200, visibility)
                self.assertEqual(
                    answer.header("Cache-Control"), "public, no-cache, must-revalidate", visibility
                )
        self.assertEqual(
            self.request("GET", "/v1/images/detail", ALICE).header("Cache-Control"),
            "private, no-store",
        )

    def test_304_only_for_readers(self) -> None:
        """A conditional request for a private image: 304 with no body for
        the owner, 404 (not 304) for another project, whatever validator
        it sends."""
        image_id = self.image("private")
        etag = self.file(image_id, ALICE).header("ETag")
        assert etag is not None
        for path in (f"/v2/images/{image_id}/file", f"/v2/images/{image_id}"):
            tag = self.request("GET", path, ALICE).header("ETag")
            assert tag is not None
            mine = self.request("GET", path, {**ALICE, "If-None-Match": tag})
            self.assertEqual((mine.code, mine.body), (304, b""), path)
            self.assertEqual(mine.header("Cache-Control"), "public, no-cache, must-revalidate")
            theirs = self.request("GET", path, {**BOB, "If-None-Match": tag})
            self.assertEqual(theirs.code, 404, path)
            self.assertEqual(theirs.header("Cache-Control"), "no-store")


class RevalidationLocationTests(CacheTestCase):
    """As L{RevalidationTests}, with C{show_multiple_locations} on."""

    cache = CacheConfig(public_max_age=3600, revalidate=True)
    site_options = {"show_multiple_locations": True}

    def test_inactive_and_location_views(self) -> None:
        """
        A deactivated image's data, and metadata showing locations (to an
        admin, to the owner), stay out of every cache; the document of a
        caller shown C{"locations": []} may be stored.
        """
        public, mine = self.image("public"), self.image("private")
        for image_id, headers in ((public, ADMIN), (mine, ADMIN), (mine, ALICE)):
            shown = self.request("GET", f"/v2/images/{image_id}", headers)
            self.assertNotEqual(json.loads(shown.body)["locations"], [])
            self.assertEqual(shown.header("Cache-Control"), "private, no-store")
        other = self.request("GET", f"/v2/images/{public}", ALICE)
        self.assertEqual(json.loads(other.body)["locations"], [])
        self.assertEqual(other.header("Cache-Control"), "public, no-cache, must-revalidate")
        self.request("POST", f"/v2/images/{public}/actions/deactivate", ADMIN)
        self.assertEqual(self.file(public, ADMIN).header("Cache-Control"), "private, no-store")


class HeadParityTests(CacheTestCase):
    def assertParity(self, path: str, headers: dict[str, str] | None = None) -> Raw:
        get = self.raw("GET", path, headers)
        head = self.raw("HEAD", path, headers)
        self.assertEqual(head.status, get.status)
        self.assertEqual(_comparable(head), _comparable(get))
        self.assertEqual(head.body, b"")
        return get

    def test_v2_file(self) -> None:
        """HEAD /v2/images/ID/file sends exactly GET's headers, no body."""
        for visibility in ("public", "private"):
            get = self.assertParity(f"/v2/images/{self.image(visibility)}/file", ALICE)
            self.assertEqual(get.header("Content-Length"), str(SIZE))
            self.assertEqual(get.body, DATA)

    def test_v1(self) -> None:
        """HEAD /v1/images/ID and /images/ID send exactly GET's headers."""
        image_id = self.image("public", os_distro="cirros")
        for path in (f"/v1/images/{image_id}", f"/images/{image_id}"):
            get = self.assertParity(path)
            self.assertEqual(get.header("x-image-meta-property-os_distro"), "cirros")
            self.assertEqual(get.header("Content-Length"), str(SIZE))

    def test_metadata(self) -> None:
        """HEAD of image JSON and of listings: GET's headers, with an exact
        Content-Length rather than chunks."""
        image_id = self.image("public")
        for path in (f"/v2/images/{image_id}", "/v1/images/detail", "/v1/images", "/v2/images"):
            get = self.assertParity(path)
            self.assertEqual(get.header("Content-Length"), str(len(get.body)), path)
            self.assertIsNone(get.header("Transfer-Encoding"))
            json.loads(get.body)

    def test_not_modified_has_no_body(self) -> None:
        """A 304 has validators and Cache-Control but no body and no
        representation headers."""
        image_id = self.image("public")
        etag = self.file(image_id).header("ETag")
        for method in ("GET", "HEAD"):
            raw = self.raw(method, f"/v2/images/{image_id}/file", {"If-None-Match": etag})
            self.assertEqual(raw.status, 304)
            self.assertEqual(raw.body, b"")
            self.assertEqual(raw.header("ETag"), etag)
            self.assertEqual(raw.header("Cache-Control"), "public, max-age=3600, immutable")
            self.assertIsNotNone(raw.header("Last-Modified"))
            for name in ("Content-Type", "Content-MD5", "Content-Length", "Transfer-Encoding"):
                self.assertIsNone(raw.header(name), name)


class MetadataTests(CacheTestCase):
    def test_v2_image_json(self) -> None:
        """v2 image JSON: a strong ETag over the document, updated_at as
        Last-Modified; public images public, no-cache; private ones
        private, no-store."""
        public = self.image("public")
        answer = self.request("GET", f"/v2/images/{public}")
        self.assertRegex(answer.header("ETag"), r'^"[0-9a-f]{32}"$')
        self.assertEqual(answer.header("Cache-Control"), "public, no-cache")
        self.assertEqual(
            answer.header("Last-Modified"), http_date(self.record(public).updated_at).decode()
        )
        private = self.image("private")
        answer = self.request("GET", f"/v2/images/{private}", ALICE)
        self.assertEqual(answer.header("Cache-Control"), "private, no-store")
        self.assertIsNotNone(answer.header("ETag"))

    def test_etag_changes_with_metadata(self) -> None:
        """After an update the JSON's ETag changes: the old one no longer
        gives a 304, the new one does."""
        image_id = self.image("public")
        old = self.request("GET", f"/v2/images/{image_id}").header("ETag")
        self.assertEqual(self.request("GET", f"/v2/images/{image_id}", {"If-None-Match": old}).code, 304)
        self.patch(image_id, [{"op": "add", "path": "/os_distro", "value": "fedora"}])
        answer = self.request("GET", f"/v2/images/{image_id}", {"If-None-Match": old})
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.json()["os_distro"], "fedora")
        new = answer.header("ETag")
        self.assertNotEqual(new, old)
        self.assertEqual(self.request("GET", f"/v2/images/{image_id}", {"If-None-Match": new}).code, 304)

    def test_listing(self) -> None:
        """A listing depends on who asks: never public. All public
        images: private, no-cache; any private one: private, no-store. Its
        ETag changes when an image in it changes."""
        public = self.image("public")
        answer = self.request("GET", "/v1/images/detail", BOB)
        self.assertEqual([i["id"] for i in answer.json()["images"]], [public])
        self.assertEqual(answer.header("Cache-Control"), "private, no-cache")
        etag = answer.header("ETag")
        self.assertRegex(etag, r'^W/"[0-9a-f]{32}"$')
        self.assertEqual(self.request("GET", "/v1/images/detail", {**BOB, "If-None-Match": etag}).code, 304)
        self.request("PUT", f"/v1/images/{public}", meta(name="changed"))
        changed = self.request("GET", "/v1/images/detail", {**BOB, "If-None-Match": etag})
        self.assertEqual(changed.code, 200)
        self.assertNotEqual(changed.header("ETag"), etag)
        self.image("private")
        mine = self.request("GET", "/v1/images/detail", ALICE)
        self.assertEqual(len(mine.json()["images"]), 2)
        self.assertEqual(mine.header("Cache-Control"), "private, no-store")
        self.assertEqual(self.request("GET", "/v2/images", ALICE).header("Cache-Control"), "private, no-store")


    def test_v2_listing_etag(self) -> None:
        """
        A v2 page's ETag (from its documents' digests and its links) is
        the same for the same body and changes with any image on it, with
        its links (another limit), and with an image added to it.
        """
        first = self.image("public")
        self.image("public")
        page = self.request("GET", "/v2/images", BOB)
        etag = page.header("ETag")
        self.assertRegex(etag, r'^W/"[0-9a-f]{32}"$')
        self.assertEqual(self.request("GET", "/v2/images", BOB).header("ETag"), etag)
        self.assertEqual(self.request("GET", "/v2/images", {**BOB, "If-None-Match": etag}).code, 304)
        self.assertNotEqual(self.request("GET", "/v2/images?limit=2", BOB).header("ETag"), etag)
        self.patch(first, [{"op": "add", "path": "/os_distro", "value": "fedora"}])
        changed = self.request("GET", "/v2/images", {**BOB, "If-None-Match": etag})
        self.assertEqual(changed.code, 200)
        self.assertNotEqual(changed.header("ETag"), etag)
        self.image("public")
        added = self.request("GET", "/v2/images", {**BOB, "If-None-Match": changed.header("ETag")})
        self.assertEqual(added.code, 200)
        self.assertEqual(len(added.json()["images"]), 3)


class ConditionalTests(CacheTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.image_id = self.image("public")
        first = self.file(self.image_id)
        self.etag = first.header("ETag")
        self.last_modified = first.header("Last-Modified")
        self.date = parse_http_date(self.last_modified)

    def at(self, delta: timedelta) -> str:
        return http_date(self.date + delta).decode()

    def test_matrix(self) -> None:
        """RFC 9110 section 13: each precondition alone and in the
        precedence order If-Match, If-Unmodified-Since, If-None-Match,
        If-Modified-Since; strong comparison for If-Match, weak for
        If-None-Match; * matches; invalid dates are ignored."""
        etag, weak = self.etag, "W/" + self.etag
        second, day = timedelta(seconds=1), timedelta(days=1)
        asctime = self.date.strftime("%a %b %e %H:%M:%S %Y")
        rfc850 = self.date.strftime("%A, %d-%b-%y %H:%M:%S GMT")
        cases: list[tuple[dict[str, str], int]] = [
            ({}, 200),
            ({"If-None-Match": etag}, 304),
            ({"If-None-Match": weak}, 304),
            ({"If-None-Match": '"other"'}, 200),
            ({"If-None-Match": f'"other", {etag}'}, 304),
            ({"If-None-Match": "*"}, 304),
            ({"If-Match": etag}, 200),
            ({"If-Match": f'"other", {etag}'}, 200),
            ({"If-Match": weak}, 412),
            ({"If-Match": '"other"'}, 412),
            ({"If-Match": "*"}, 200),
            ({"If-Modified-Since": self.last_modified}, 304),
            ({"If-Modified-Since": self.at(day)}, 304),
            ({"If-Modified-Since": self.at(-second)}, 200),
            ({"If-Modified-Since": asctime}, 304),
            ({"If-Modified-Since": rfc850}, 304),
            ({"If-Modified-Since": "yesterday"}, 200),
            ({"If-Unmodified-Since": self.last_modified}, 200),
            ({"If-Unmodified-Since": self.at(-second)}, 412),
            ({"If-Unmodified-Since": "not a date"}, 200),
            # Precedence.
            ({"If-Match": '"other"', "If-None-Match": etag}, 412),
            ({"If-Match": etag, "If-Unmodified-Since": self.at(-day)}, 200),
            ({"If-Match": etag, "If-None-Match": etag}, 304),
            ({"If-Unmodified-Since": self.at(-day), "If-None-Match": etag}, 412),
            ({"If-None-Match": '"other"', "If-Modified-Since": self.last_modified}, 200),
            ({"If-None-Match": etag, "If-Modified-Since": self.at(-day)}, 304),
        ]
        for headers, code in cases:
            for method in ("GET", "HEAD"):
                answer = self.file(self.image_id, headers, method)
                self.assertEqual(answer.code, code, (method, headers))
                if code == 200 and method == "GET":
                    self.assertEqual(answer.body, DATA)
                elif code == 304:
                    self.assertEqual(answer.body, b"")
                    self.assertEqual(answer.header("ETag"), etag)
                    self.assertEqual(answer.header("Last-Modified"), self.last_modified)
                    self.assertEqual(answer.header("Cache-Control"), "public, max-age=3600, immutable")
                elif code == 412 and method == "GET":
                    self.assertEqual(answer.json()["error"]["code"], 412)

    def test_conditions_after_refusals(self) -> None:
        """Preconditions count only where the answer would be a success: an
        unknown or invisible image is still a 404."""
        private = self.image("private")
        for headers in ({"If-None-Match": "*"}, {"If-Match": '"x"'}):
            self.assertEqual(self.file(private, {**BOB, **headers}).code, 404)

    def test_conditional_range(self) -> None:
        """A satisfied If-None-Match wins over Range: 304, not 206."""
        answer = self.file(self.image_id, {"If-None-Match": self.etag, "Range": "bytes=0-1"})
        self.assertEqual(answer.code, 304)

    def test_metadata_dates_are_exact(self) -> None:
        """Metadata can change twice in one second, so its Last-Modified
        as If-Modified-Since is not trusted for a 304 (the ETag is)."""
        answer = self.request("GET", f"/v2/images/{self.image_id}")
        again = self.request(
            "GET", f"/v2/images/{self.image_id}",
            {"If-Modified-Since": answer.header("Last-Modified")},
        )
        if self.record(self.image_id).updated_at.microsecond:
            self.assertEqual(again.code, 200)
        later = self.request(
            "GET", f"/v2/images/{self.image_id}",
            {"If-Modified-Since": http_date(datetime.now(UTC) + timedelta(days=1)).decode()},
        )
        self.assertEqual(later.code, 304)


class ConditionalWriteTests(CacheTestCase):
    """
    Writes take the same preconditions, against what a GET or HEAD of the
    same URL sends; a false one is a 412 that changes nothing.
    """

    far_past = http_date(datetime(2000, 1, 1, tzinfo=UTC)).decode()
    far_future = http_date(datetime.now(UTC) + timedelta(days=1)).decode()

    def v2_etag(self, image_id: str, headers: dict[str, str] | None = None) -> str:
        etag = self.request("GET", f"/v2/images/{image_id}", headers).header("ETag")
        assert etag is not None
        return etag

    def v1_etag(self, path: str) -> str:
        etag = self.request("HEAD", path).header("ETag")
        assert etag is not None
        return etag

    def rename(self, image_id: str, name: str, headers: dict[str, str]) -> Answer:
        return self.patch(image_id, [{"op": "replace", "path": "/name", "value": name}], headers)

    def test_v2_patch(self) -> None:
        """
        PATCH with If-Match of the image JSON's current ETag applies, and
        the new document has a new tag; the old tag, its weak form, any
        If-None-Match that matches (or *) and an If-Unmodified-Since before
        the last change are 412s that leave the image as it was.
        """
        image_id = self.image("public")
        etag = self.v2_etag(image_id)
        answer = self.rename(image_id, "first", {"If-Match": etag})
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(self.stored_record(image_id).name, "first")
        new = self.v2_etag(image_id)
        self.assertNotEqual(new, etag)
        before = self.stored_record(image_id)
        for headers in (
            {"If-Match": etag},
            {"If-Match": "W/" + new},
            {"If-Match": '"other"'},
            {"If-None-Match": new},
            {"If-None-Match": "*"},
            {"If-Unmodified-Since": self.far_past},
            {"If-Match": '"other"', "If-Unmodified-Since": self.far_future},
        ):
            failed = self.rename(image_id, "second", headers)
            self.assertError(failed, 412)
            self.assertEqual(self.stored_record(image_id), before, headers)
        for headers in (
            {"If-Match": f'"other", {new}'},
            {"If-Match": "*"},
            {"If-None-Match": etag},
            {"If-Unmodified-Since": self.far_future},
        ):
            self.assertEqual(self.rename(image_id, "again", headers).code, 200, headers)

    def test_v2_delete(self) -> None:
        """
        DELETE with a stale If-Match or an If-Unmodified-Since before the
        last change is a 412 and the image stays; with the current tag it
        is deleted.
        """
        image_id = self.image("public")
        stale = self.v2_etag(image_id)
        self.rename(image_id, "moved on", {})
        for headers in ({"If-Match": stale}, {"If-Unmodified-Since": self.far_past}):
            self.assertError(self.request("DELETE", f"/v2/images/{image_id}", headers), 412)
            self.assertEqual(self.request("GET", f"/v2/images/{image_id}").code, 200)
        self.assertEqual(self.file(image_id).body, DATA)
        current = self.v2_etag(image_id)
        answer = self.request("DELETE", f"/v2/images/{image_id}", {"If-Match": current})
        self.assertEqual(answer.code, 204)
        self.assertEqual(self.request("GET", f"/v2/images/{image_id}").code, 404)

    def test_refusals_come_first(self) -> None:
        """
        A write the caller may not make is refused as it would be without
        conditions (404 for an image they cannot see, 403 for one they may
        not change), never a 412 that would tell them the image exists.
        """
        private = self.image("private")
        public = self.image("public")
        stale = {"If-Match": '"stale"'}
        self.assertEqual(self.rename(private, "x", {**BOB, **stale}).code, 404)
        self.assertEqual(self.request("DELETE", f"/v2/images/{private}", {**BOB, **stale}).code, 404)
        self.assertEqual(self.request("DELETE", f"/v1/images/{private}", {**BOB, **stale}).code, 404)
        self.assertEqual(self.rename(public, "x", {**BOB, **stale}).code, 403)
        self.assertEqual(self.request("PUT", f"/v1/images/{public}", {**BOB, **stale}).code, 403)

    def test_v2_upload(self) -> None:
        """
        A queued image's data has no current representation: If-Match (even
        *) is a 412 and nothing is stored; If-None-Match: * holds and an
        If-Unmodified-Since is ignored.
        """
        for headers in ({"If-Match": "*"}, {"If-Match": '"x"'}):
            image_id = self.create()["id"]
            failed = self.upload(image_id, DATA, headers)
            self.assertError(failed, 412, "If-Match")
            self.assertEqual(self.stored_record(image_id).status, "queued")
            self.assertEqual(self.stored_files(), [])
        for headers in ({"If-None-Match": "*"}, {"If-Unmodified-Since": self.far_past}):
            image_id = self.create()["id"]
            self.assertEqual(self.upload(image_id, DATA, headers).code, 204, headers)
            self.assertEqual(self.file(image_id).body, DATA)

    def test_upload_refused_before_the_body(self) -> None:
        """
        The precondition of an upload is decided from the headers: an
        Expect: 100-continue client is refused at once (never told to
        continue), while one whose precondition holds is told to go on.
        """
        v2 = self.create()["id"]
        v1 = self.request("POST", "/v1/images", meta(name="q", disk_format="raw", container_format="bare")).json()["image"]["id"]
        upload = {
            "Content-Type": "application/octet-stream",
            "Content-Length": "1000000",
            "Expect": "100-continue",
        }
        for path, condition in [
            (f"/v2/images/{v2}/file", {"If-Match": "*"}),
            (f"/v1/images/{v1}", {"If-Match": '"stale"'}),
            (f"/images/{v1}", {"If-None-Match": "*"}),
        ]:
            refused = self.raw("PUT", path, {**upload, **condition})
            self.assertEqual(refused.status, 412, path)
            self.assertEqual(json.loads(refused.body)["error"]["code"], 412)
        self.assertEqual(self.stored_record(v2).status, "queued")
        self.assertEqual(self.stored_record(v1).status, "queued")
        self.assertEqual(self.stored_files(), [])
        accepted = self.raw("PUT", f"/v2/images/{v2}/file", {**upload, "If-None-Match": "*"})
        self.assertEqual(accepted.status, 100)
        accepted = self.raw(
            "PUT", f"/v1/images/{v1}", {**upload, "If-Match": self.v1_etag(f"/v1/images/{v1}")}
        )
        self.assertEqual(accepted.status, 100)

    def test_v1_put(self) -> None:
        """
        v1 PUT (versioned or not) compares with the ETag a HEAD sends: the
        current one applies the change, a stale one, If-None-Match: * or
        an If-Unmodified-Since before the last change is a 412 that
        changes nothing.
        """
        image_id = self.image("public")
        for path in (f"/v1/images/{image_id}", f"/images/{image_id}"):
            stale = self.v1_etag(path)
            answer = self.request("PUT", path, {**meta(name=path), "If-Match": stale})
            self.assertEqual(answer.code, 200, answer.body)
            self.assertEqual(answer.json()["image"]["name"], path)
            before = self.stored_record(image_id)
            for headers in (
                {"If-Match": stale},
                {"If-None-Match": "*"},
                {"If-Unmodified-Since": self.far_past},
            ):
                failed = self.request("PUT", path, {**meta(name="lost", property_x="y"), **headers})
                self.assertError(failed, 412)
                self.assertEqual(self.stored_record(image_id), before, headers)

    def test_v1_upload(self) -> None:
        """
        A v1 PUT with data to a queued image compares with the HEAD's
        ETag: the current one uploads, a stale one is a 412 that stores
        nothing and leaves the image queued.
        """
        image_id = self.request("POST", "/v1/images", meta(name="q", disk_format="raw", container_format="bare")).json()["image"]["id"]
        path = f"/v1/images/{image_id}"
        stale = self.v1_etag(path)
        self.request("PUT", path, meta(name="renamed"))
        failed = self.request("PUT", path, {**OCTET, "If-Match": stale}, data=DATA)
        self.assertError(failed, 412)
        self.assertEqual(self.stored_record(image_id).status, "queued")
        self.assertEqual(self.stored_files(), [])
        answer = self.request("PUT", path, {**OCTET, "If-Match": self.v1_etag(path)}, data=DATA)
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(self.request("GET", path).body, DATA)

    def test_v1_delete(self) -> None:
        """
        v1 DELETE (versioned or not) with a stale If-Match is a 412 and the
        image stays downloadable; with the HEAD's current ETag it goes.
        """
        image_id = self.image("public")
        for path in (f"/v1/images/{image_id}", f"/images/{image_id}"):
            stale = self.v1_etag(path)
            self.request("PUT", path, meta(name=path))
            self.assertError(self.request("DELETE", path, {"If-Match": stale}), 412)
            self.assertEqual(self.request("GET", path).body, DATA)
        current = {"If-Match": self.v1_etag(f"/images/{image_id}")}
        answer = self.request("DELETE", f"/images/{image_id}", current)
        self.assertEqual(answer.code, 200)
        self.assertEqual(self.request("HEAD", f"/v1/images/{image_id}").code, 404)


class IfRangeTests(CacheTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.image_id = self.image("public")
        first = self.file(self.image_id)
        self.etag, self.last_modified = first.header("ETag"), first.header("Last-Modified")

    def ranged(self, if_range: str, path: str | None = None) -> Answer:
        return self.request(
            "GET", path or f"/v2/images/{self.image_id}/file", {"Range": "bytes=10-19", "If-Range": if_range}
        )

    def test_if_range(self) -> None:
        """If-Range: the current strong ETag or exactly the Last-Modified
        date honours the range; a weak or other tag, another date or
        garbage sends the whole."""
        for value, code in [
            (self.etag, 206),
            (self.last_modified, 206),
            ("W/" + self.etag, 200),
            ('"other"', 200),
            (http_date(parse_http_date(self.last_modified) + timedelta(seconds=1)).decode(), 200),
            ("garbage", 200),
            (f'{self.etag}, "other"', 200),
        ]:
            answer = self.ranged(value)
            self.assertEqual(answer.code, code, value)
            self.assertEqual(answer.body, DATA[10:20] if code == 206 else DATA)

    def test_v1_if_range(self) -> None:
        """v1's tag holds until the metadata changes; then the whole is sent."""
        path = f"/v1/images/{self.image_id}"
        etag = self.request("HEAD", path).header("ETag")
        self.assertEqual(self.ranged(etag, path).code, 206)
        self.request("PUT", path, meta(name="renamed"))
        self.assertEqual(self.ranged(etag, path).code, 200)


def parse_multipart(answer: Answer | Raw) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/byteranges body, parsed independently."""
    content_type = answer.header("Content-Type")
    assert content_type is not None
    media, _, parameter = content_type.partition(";")
    assert media == "multipart/byteranges", content_type
    name, _, boundary = parameter.strip().partition("=")
    assert name == "boundary"
    delimiter = b"--" + boundary.encode()
    body = answer.body
    assert body.startswith(delimiter + b"\r\n"), body[:80]
    assert body.endswith(b"\r\n" + delimiter + b"--\r\n"), body[-80:]
    inner = body[len(delimiter) + 2 : -(len(delimiter) + 6)]
    parts = []
    for chunk in inner.split(b"\r\n" + delimiter + b"\r\n"):
        head, _, data = chunk.partition(b"\r\n\r\n")
        headers = dict(
            (k.strip().lower(), v.strip())
            for k, _, v in (line.partition(":") for line in head.decode().split("\r\n"))
        )
        parts.append((headers, data))
    return parts


class RangeTests(CacheTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.image_id = self.image("public")

    def get(self, ranges: str, method: str = "GET", path: str | None = None) -> Answer:
        return self.request(method, path or f"/v2/images/{self.image_id}/file", {"Range": ranges})

    def test_single(self) -> None:
        """One range, open or suffix: a 206 with Content-Range and the
        validators; no Content-MD5 (it would describe the whole)."""
        for header, first, last in [
            ("bytes=0-0", 0, 0), ("bytes=100-199", 100, 199), ("bytes=1000-", 1000, SIZE - 1),
            ("bytes=-28", SIZE - 28, SIZE - 1), ("bytes=-5000", 0, SIZE - 1),
            ("bytes=1020-9999", 1020, SIZE - 1),
        ]:
            answer = self.get(header)
            self.assertEqual(answer.code, 206, header)
            self.assertEqual(answer.header("Content-Range"), f"bytes {first}-{last}/{SIZE}")
            self.assertEqual(answer.body, DATA[first : last + 1])
            self.assertEqual(answer.header("Content-Type"), "application/octet-stream")
            self.assertEqual(answer.header("ETag"), f'"{SHA512}"')
            self.assertEqual(answer.header("Cache-Control"), "public, max-age=3600, immutable")
            self.assertIsNone(answer.header("Content-MD5"))

    def test_multipart(self) -> None:
        """Several ranges: multipart/byteranges, each part with its
        Content-Type and Content-Range, in the order asked, byte for byte,
        with an exact Content-Length."""
        raw = self.raw("GET", f"/v2/images/{self.image_id}/file", {"Range": "bytes=900-909,0-9,-4"})
        self.assertEqual(raw.status, 206)
        self.assertEqual(raw.header("Content-Length"), str(len(raw.body)))
        self.assertIsNone(raw.header("Transfer-Encoding"))
        self.assertIsNone(raw.header("Content-Range"))
        self.assertEqual(raw.header("ETag"), f'"{SHA512}"')
        boundary = raw.header("Content-Type").partition("boundary=")[2]
        expected = b"".join(
            (b"" if i == 0 else b"\r\n")
            + b"--" + boundary.encode() + b"\r\n"
            + b"Content-Type: application/octet-stream\r\n"
            + f"Content-Range: bytes {first}-{last}/{SIZE}\r\n\r\n".encode()
            + DATA[first : last + 1]
            for i, (first, last) in enumerate([(900, 909), (0, 9), (SIZE - 4, SIZE - 1)])
        ) + b"\r\n--" + boundary.encode() + b"--\r\n"
        self.assertEqual(raw.body, expected)
        parts = parse_multipart(raw)
        self.assertEqual(
            [(h["content-range"], d) for h, d in parts],
            [
                (f"bytes 900-909/{SIZE}", DATA[900:910]),
                (f"bytes 0-9/{SIZE}", DATA[0:10]),
                (f"bytes {SIZE - 4}-{SIZE - 1}/{SIZE}", DATA[-4:]),
            ],
        )

    def test_multipart_v1(self) -> None:
        """v1 downloads take the same path."""
        answer = self.get("bytes=0-1,500-501", path=f"/v1/images/{self.image_id}")
        self.assertEqual(answer.code, 206)
        self.assertEqual(
            [d for _, d in parse_multipart(answer)], [DATA[0:2], DATA[500:502]]
        )
        self.assertEqual(answer.header("x-image-meta-size"), str(SIZE))

    def test_coalescing(self) -> None:
        """Overlapping or close ranges are sent once; one range left is a
        plain 206."""
        for header, first, last in [
            ("bytes=0-9,5-20", 0, 20),
            ("bytes=0-9,0-9,0-9", 0, 9),
            (f"bytes=0-9,{10 + COALESCE_GAP - 1}-{10 + COALESCE_GAP + 5}", 0, 10 + COALESCE_GAP + 5),
            ("bytes=500-,-10", 500, SIZE - 1),
            ("bytes=0-9,5000-6000", 0, 9),
        ]:
            answer = self.get(header)
            self.assertEqual(answer.code, 206, header)
            self.assertEqual(answer.header("Content-Range"), f"bytes {first}-{last}/{SIZE}", header)
            self.assertEqual(answer.body, DATA[first : last + 1])

    def test_overlapping_multipart(self) -> None:
        """Overlapping groups coalesce, each taking the place of its first."""
        answer = self.get("bytes=800-810,0-5,805-820,3-9")
        self.assertEqual(
            [(h["content-range"], d) for h, d in parse_multipart(answer)],
            [(f"bytes 800-820/{SIZE}", DATA[800:821]), (f"bytes 0-9/{SIZE}", DATA[0:10])],
        )

    def test_unsatisfiable(self) -> None:
        """No range within the data: 416 with Content-Range bytes */SIZE."""
        for header in (f"bytes={SIZE}-", "bytes=5000-6000,7000-", "bytes=-0"):
            answer = self.get(header)
            self.assertEqual(answer.code, 416, header)
            self.assertEqual(answer.header("Content-Range"), f"bytes */{SIZE}")
            self.assertEqual(answer.json()["error"]["code"], 416)

    def test_too_many_ranges(self) -> None:
        """More than MAX_RANGE_SPECS ranges: the header is ignored."""
        many = ",".join(f"{i * 10}-{i * 10}" for i in range(MAX_RANGE_SPECS + 1))
        answer = self.get(f"bytes={many}")
        self.assertEqual(answer.code, 200)
        self.assertEqual(answer.body, DATA)
        spread = ",".join(f"{i * 100}-{i * 100}" for i in range(10))
        self.assertEqual(len(parse_multipart(self.get(f"bytes={spread}"))), 10)

    def test_head_ignores_range(self) -> None:
        """Ranges are defined for GET only: HEAD with Range is a 200."""
        answer = self.get("bytes=0-9,500-509", method="HEAD")
        self.assertEqual(answer.code, 200)
        self.assertIsNone(answer.header("Content-Range"))
        self.assertEqual(answer.header("Content-Type"), "application/octet-stream")


class ParseTests(SynchronousTestCase):
    def test_parse_ranges(self) -> None:
        """Ranges are resolved against the size, coalesced, kept in order;
        malformed headers are ignored; nothing satisfiable is a 416."""
        self.assertEqual(
            parse_ranges(b"bytes=0-9, 500-,-10", 1000),
            (ByteRange(0, 10, 1000), ByteRange(500, 500, 1000)),
        )
        self.assertEqual(
            parse_ranges(b"bytes=900-909,,0-9", 1000),
            (ByteRange(900, 10, 1000), ByteRange(0, 10, 1000)),
        )
        for ignored in (b"bytes=", b"bytes=1-2,a-b", b"bytes=5-1,0-1", b"items=0-1", b"bytes 0-1"):
            self.assertIsNone(parse_ranges(ignored, 1000), ignored)
        self.assertRaises(RangeNotSatisfiable, parse_ranges, b"bytes=1000-,2000-3000", 1000)

    def test_multipart_length(self) -> None:
        """The announced Content-Length is what the framing adds up to."""
        body = MultipartRanges((ByteRange(0, 10, 100), ByteRange(50, 5, 100)))
        sent = body.head(0) + b"x" * 10 + body.head(1) + b"y" * 5 + body.tail()
        self.assertEqual(body.content_length(), len(sent))
        self.assertNotEqual(MultipartRanges(body.parts).boundary, body.boundary)

    def test_dates(self) -> None:
        """The three HTTP-date formats parse to the same instant; others
        do not parse."""
        when = datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)
        for text in (
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ):
            self.assertEqual(parse_http_date(text), when, text)
        for bad in ("", "Sun, 06 Nov 1994 08:49:37 PST", "Sun, 32 Nov 1994 08:49:37 GMT", "1994-11-06"):
            self.assertIsNone(parse_http_date(bad), bad)
        self.assertEqual(http_date(when.replace(microsecond=999)), b"Sun, 06 Nov 1994 08:49:37 GMT")

    def test_entity_tags(self) -> None:
        """Strong comparison needs two strong tags; weak compares opaques."""
        strong, weak = EntityTag("a"), EntityTag("a", weak=True)
        self.assertTrue(strong.strong_match(EntityTag("a")))
        self.assertFalse(strong.strong_match(weak))
        self.assertTrue(strong.weak_match(weak))
        self.assertFalse(strong.weak_match(EntityTag("b")))
        self.assertEqual(weak.header(), b'W/"a"')


@define
class _Producer:
    calls: list[str] = field(factory=list)

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


@define
class _Request:
    written: list[bytes] = field(factory=list)

    def write(self, data: bytes) -> None:
        self.written.append(data)


class PartsConsumerTests(SynchronousTestCase):
    def test_pause_carries_over(self) -> None:
        """A part's producer registered while the client is paused starts
        paused; resume and stop reach the current part's producer."""
        request = _Request()
        parts = _PartsConsumer(request)  # type: ignore[arg-type]
        first, second = _Producer(), _Producer()
        parts.registerProducer(first, True)  # type: ignore[arg-type]
        parts.write(b"one")
        parts.pauseProducing()
        parts.unregisterProducer()
        parts.registerProducer(second, True)  # type: ignore[arg-type]
        self.assertEqual(first.calls, ["pause"])
        self.assertEqual(second.calls, ["pause"])
        parts.resumeProducing()
        parts.stopProducing()
        self.assertEqual(second.calls, ["pause", "resume", "stop"])
        self.assertTrue(parts.stopped)
        self.assertEqual(request.written, [b"one"])


class HeaderValueTests(SynchronousTestCase):
    """The header values a kept document sends are made once."""

    def test_dates(self) -> None:
        """
        One instant gives one IMF-fixdate, made once (aware or naive UTC
        alike, fractions dropped); another instant its own.
        """
        from datetime import UTC, datetime, timedelta, timezone

        when = datetime(2026, 12, 3, 15, 20, 1, 500000, tzinfo=UTC)
        first = http_date(when)
        self.assertEqual(first, b"Thu, 03 Dec 2026 15:20:01 GMT")
        self.assertIs(http_date(datetime(2026, 12, 3, 15, 20, 1, 500000, tzinfo=UTC)), first)
        self.assertEqual(http_date(when.replace(tzinfo=None)), first)
        self.assertEqual(http_date(when.astimezone(timezone(timedelta(hours=2)))), first)
        self.assertEqual(http_date(when + timedelta(seconds=1)), b"Thu, 03 Dec 2026 15:20:02 GMT")

    def test_entity_tags(self) -> None:
        """An ETag's header value is made once; weak and strong kept apart."""
        strong = EntityTag("abc").header()
        self.assertEqual(strong, b'"abc"')
        self.assertIs(EntityTag("abc").header(), strong)
        self.assertEqual(EntityTag("abc", weak=True).header(), b'W/"abc"')
