"""
v2 image locations for admins (Glance's C{show_multiple_locations}), in
memory: a filesystem store C{file} and an HTTP store C{web} over the
verified fake web of L{tests.test_store_http}.
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers

from glance_tx import images
from glance_tx.config import ImageQuotas
from glance_tx.errors import Conflict
from glance_tx.images import ImageUpdate, Location
from glance_tx.locations import LocationEdit
from glance_tx.store.backends import StoreMap
from glance_tx.store.http import HTTPStore
from tests.api_fixtures import V1_RAW_BARE
from tests.test_api_v2 import ADMIN, ALICE, BOB, V2TestCase, project
from tests.test_store_http import FakeResponse, FakeWeb

DATA = b"bytes on the web" * 64


def add(url: str, path: str = "/locations/-", **value: Any) -> list[dict[str, Any]]:
    """The one-operation patch that adds C{url}."""
    return [{"op": "add", "path": path, "value": {"url": url, "metadata": {}, **value}}]


def remove(path: str = "/locations/-") -> list[dict[str, Any]]:
    return [{"op": "remove", "path": path}]


def digests(data: bytes) -> dict[str, str]:
    return {
        "checksum": hashlib.md5(data).hexdigest(),
        "os_hash_algo": "sha512",
        "os_hash_value": hashlib.sha512(data).hexdigest(),
    }


class LocationsTestCase(V2TestCase):
    site_options = {"show_multiple_locations": True}

    def make_stores(self) -> StoreMap:
        self.web = FakeWeb()
        return StoreMap(
            {"file": self.store, "web": HTTPStore(agent=self.web, clock=Clock())},
            "file",
            types={"file": "file", "web": "http"},
        )

    def queued(self, **fields: Any) -> dict[str, Any]:
        return self.create(ADMIN, **fields)

    def assertQueued(self, image_id: str) -> None:
        record = self.stored_record(image_id)
        self.assertEqual((record.status, record.locations, record.size), (images.QUEUED, (), None))


class AddTests(LocationsTestCase):
    def test_add_to_queued(self) -> None:
        """
        An admin's add makes a queued image active: its size from the web
        server's HEAD, the location recorded with the store that serves it,
        shown to the admin with that store id, and the data served from it.
        """
        url = self.web.add(DATA)
        image = self.queued()
        answer = self.patch(image["id"], add(url), ADMIN)
        self.assertEqual(answer.code, 200, answer.body)
        shown = answer.json()
        self.assertEqual((shown["status"], shown["size"]), ("active", len(DATA)))
        self.assertEqual(shown["locations"], [{"url": url, "metadata": {"store": "web"}}])
        self.assertEqual(shown["stores"], "web")
        self.assertEqual(self.stored_record(image["id"]).locations, (Location(url, "web"),))
        self.assertEqual([m for m, _, _ in self.web.requests], [b"HEAD"])
        self.assertEqual(self.request("GET", f"/v2/images/{image['id']}/file", ADMIN).body, DATA)

    def test_metadata_kept(self) -> None:
        """
        Location metadata besides C{store} is kept beside the location and
        shown back with the store id, through the registry; the add of a
        second location keeps the first's.
        """
        first, second = self.web.add(DATA), self.web.add(DATA)
        image = self.queued()
        answer = self.patch(image["id"], add(first, metadata={"foo": "bar", "n": [1, {"x": None}]}), ADMIN)
        self.assertEqual(answer.code, 200, answer.body)
        answer = self.patch(image["id"], add(second, metadata={"speed": "88mph"}), ADMIN)
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(
            self.show(image["id"], ADMIN)["locations"],
            [{"url": first, "metadata": {"foo": "bar", "n": [1, {"x": None}], "store": "web"}},
             {"url": second, "metadata": {"speed": "88mph", "store": "web"}}],
        )
        self.assertEqual(
            self.stored_record(image["id"]).locations[0],
            Location(first, "web", {"foo": "bar", "n": [1, {"x": None}]}),
        )

    def test_for_admins_only(self) -> None:
        """
        The owner, not an admin, is refused with v1's policy (403 JSON
        naming admins); the web server is never asked and the image stays
        queued.
        """
        url = self.web.add(DATA)
        image = self.create(ALICE)
        self.assertError(self.patch(image["id"], add(url), ALICE), 403, "admin")
        self.assertEqual(self.web.requests, [])
        self.assertQueued(image["id"])
        self.assertEqual(self.show(image["id"], ALICE)["locations"], [])

    def test_validation_data_on_queued(self) -> None:
        """
        Digests given with the location fill in the queued image's; wrong
        kinds or sizes of digest are 409s, a missing part of one a 400, and
        the image stays queued.
        """
        url = self.web.add(DATA)
        image = self.queued()
        bad = [
            ({**digests(DATA), "os_hash_algo": "md5"}, 409, "sha512"),
            ({**digests(DATA), "os_hash_value": "zz"}, 409, "hexadecimal"),
            ({**digests(DATA), "os_hash_value": "ab" * 20}, 409, "64 bytes"),
            ({"os_hash_algo": "sha512"}, 400, "os_hash_value"),
        ]
        for validation, code, message in bad:
            answer = self.patch(image["id"], add(url, validation_data=validation), ADMIN)
            self.assertError(answer, code, message)
            self.assertQueued(image["id"])
        answer = self.patch(image["id"], add(url, validation_data=digests(DATA)), ADMIN)
        self.assertEqual(answer.code, 200, answer.body)
        shown = answer.json()
        for name, value in digests(DATA).items():
            self.assertEqual(shown[name], value)

    def test_second_location_on_active(self) -> None:
        """
        An active image gains a copy at another URL (at the end, or at the
        index given) when the sizes agree and digests given match its own;
        a different size, a contradicting digest or a URL it already has
        is refused and changes nothing.
        """
        image = self.active(DATA, ADMIN)
        first = self.stored_record(image["id"]).locations
        copy, other = self.web.add(DATA), self.web.add(DATA + b"!")
        refusals = [
            (add(other), 400, "bytes"),
            (add(copy, validation_data={**digests(DATA), "os_hash_value": "ab" * 64}), 409,
             "different value"),
            (add(first[0].url), 400, "already"),
            (add(copy, "/locations/5"), 400, "position"),
        ]
        for patch, code, message in refusals:
            self.assertError(self.patch(image["id"], patch, ADMIN), code, message)
            self.assertEqual(self.stored_record(image["id"]).locations, first)
        answer = self.patch(image["id"], add(copy, validation_data=digests(DATA)), ADMIN)
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual([loc["url"] for loc in answer.json()["locations"]], [first[0].url, copy])
        front = self.web.add(DATA)
        answer = self.patch(image["id"], add(front, "/locations/0"), ADMIN)
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(
            [loc.url for loc in self.stored_record(image["id"]).locations],
            [front, first[0].url, copy],
        )

    def test_unusable_locations(self) -> None:
        """
        A scheme no store serves, a URL the web server does not have or
        answers with a 503, a store that does not serve the URL and a
        malformed value are 400s that say what is wrong; the image stays
        queued.
        """
        image = self.queued()
        self.web.files["http://images.example/busy"] = DATA
        cases = [
            (add("ftp://images.example/x"), "ftp"),
            (add("http://images.example/missing"), "Location cannot be used"),
            (add(self.web.add(DATA), metadata={"store": "file"}), "does not serve"),
            (add(self.web.add(DATA), metadata={"store": "nope"}), "does not serve"),
            (add(self.web.add(DATA), metadata={"big": "x" * 20000}), "16384"),
            ([{"op": "add", "path": "/locations/-", "value": {"url": 7, "metadata": {}}}], "url"),
            ([{"op": "add", "path": "/locations/-", "value": {"url": "http://x/"}}], "metadata"),
            ([{"op": "add", "path": "/locations/-"}], "value"),
            (add(self.web.add(DATA), "/locations"), "pointer"),
            (add(self.web.add(DATA), "/locations/first"), "position"),
        ]
        for patch, message in cases:
            self.assertError(self.patch(image["id"], patch, ADMIN), 400, message)
            self.assertQueued(image["id"])
        self.web.responder = lambda m, u, h: FakeResponse(self.web, 503, Headers(), phrase=b"Busy")
        answer = self.patch(image["id"], add("http://images.example/busy"), ADMIN)
        self.assertError(answer, 400, "503")
        self.assertQueued(image["id"])

    def test_not_queued_or_active(self) -> None:
        """A deactivated image takes no location (409)."""
        image = self.active(DATA, ADMIN)
        answer = self.request("POST", f"/v2/images/{image['id']}/actions/deactivate", ADMIN)
        self.assertEqual(answer.code, 204, answer.body)
        self.assertError(self.patch(image["id"], add(self.web.add(DATA)), ADMIN), 409, "deactivated")

    def test_with_other_changes(self) -> None:
        """
        A location and a field in one patch are saved together, or, when
        the location is refused, neither is.
        """
        image = self.queued(name="before")
        rename = {"op": "replace", "path": "/name", "value": "after"}
        answer = self.patch(image["id"], [rename, *add("http://images.example/missing")], ADMIN)
        self.assertError(answer, 400, "Location")
        self.assertEqual(self.stored_record(image["id"]).name, "before")
        answer = self.patch(image["id"], [rename, *add(self.web.add(DATA))], ADMIN)
        self.assertEqual(answer.code, 200, answer.body)
        record = self.stored_record(image["id"])
        self.assertEqual((record.name, record.status), ("after", images.ACTIVE))

    def test_replace(self) -> None:
        """
        Replacing /locations (Glance's rule): on a queued image, adds them;
        then only their metadata and order may change (400 for another
        URL, one left out, or another store); a path into the list is 403.
        """
        first, second = self.web.add(DATA), self.web.add(DATA)
        image = self.queued()

        def replace(value: list[dict[str, Any]], path: str = "/locations") -> Any:
            return self.patch(image["id"], [{"op": "replace", "path": path, "value": value}], ADMIN)

        answer = replace([{"url": first, "metadata": {}}, {"url": second, "metadata": {"a": "b"}}])
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(answer.json()["status"], "active")
        answer = replace([{"url": second, "metadata": {"a": "c"}}, {"url": first, "metadata": {"d": "e"}}])
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(
            answer.json()["locations"],
            [{"url": second, "metadata": {"a": "c", "store": "web"}},
             {"url": first, "metadata": {"d": "e", "store": "web"}}],
        )
        for value in (
            [{"url": second, "metadata": {}}],
            [{"url": second, "metadata": {}}, {"url": self.web.add(DATA), "metadata": {}}],
            [{"url": second, "metadata": {"store": "file"}}, {"url": first, "metadata": {}}],
        ):
            self.assertError(replace(value), 400)
        self.assertError(replace([], "/locations/0"), 403)
        self.assertEqual(
            [loc.url for loc in self.stored_record(image["id"]).locations], [second, first]
        )

    def test_edit_of_a_changed_image(self) -> None:
        """
        Location changes hold only if the image is still as it was read:
        one changed meanwhile (by another node, say) is a 409 and keeps
        the other change.
        """
        image = self.stored_record(self.queued()["id"])
        edit = LocationEdit(image, self.stores)
        self.successResultOf(Deferred.fromCoroutine(edit.add(self.web.add(DATA))))
        self.successResultOf(self.registry.update(image.id, ImageUpdate(fields={"name": "other"})))
        self.failureResultOf(Deferred.fromCoroutine(edit.save(self.registry)), Conflict)
        record = self.stored_record(image.id)
        self.assertEqual((record.name, record.status), ("other", images.QUEUED))


class QuotaTests(LocationsTestCase):
    quotas = ImageQuotas(image_location_quota=2)

    def test_location_quota(self) -> None:
        """
        C{image_location_quota} caps the copies an admin adds: the third is
        a 413 with Glance's message and the image keeps its two.
        """
        image = self.active(DATA, ADMIN)
        self.assertEqual(self.patch(image["id"], add(self.web.add(DATA)), ADMIN).code, 200)
        kept = self.stored_record(image["id"]).locations
        self.assertEqual(len(kept), 2)
        answer = self.patch(image["id"], add(self.web.add(DATA)), ADMIN)
        self.assertError(answer, 413, "Maximum: 2")
        self.assertEqual(self.stored_record(image["id"]).locations, kept)


class RemoveTests(LocationsTestCase):
    def two_copies(self, owner: dict[str, str] = ADMIN) -> tuple[str, Location, str]:
        """An active image of C{owner}'s with its uploaded copy and one on the web."""
        image = self.active(DATA, owner)
        uploaded = self.stored_record(image["id"]).locations[0]
        web = self.web.add(DATA)
        self.assertEqual(self.patch(image["id"], add(web), ADMIN).code, 200)
        return image["id"], uploaded, web

    def test_remove(self) -> None:
        """
        Removing a location drops it and, as in Glance, deletes the data
        there: the uploaded copy's file goes; the image keeps serving from
        the web.
        """
        image_id, uploaded, web = self.two_copies()
        self.assertEqual(len(self.stored_files()), 1)
        answer = self.patch(image_id, remove("/locations/0"), ADMIN)
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(answer.json()["locations"], [{"url": web, "metadata": {"store": "web"}}])
        self.assertEqual(self.stored_files(), [])
        self.assertEqual(self.request("GET", f"/v2/images/{image_id}/file", ADMIN).body, DATA)

    def test_remove_web_copy(self) -> None:
        """
        Removing the web's copy (C{-}: the last) leaves the web server's
        data alone: it is not this service's to delete.
        """
        image_id, uploaded, web = self.two_copies()
        answer = self.patch(image_id, remove(), ADMIN)
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(self.stored_record(image_id).locations, (uploaded,))
        self.assertNotIn(b"DELETE", [m for m, _, _ in self.web.requests])
        self.assertEqual(len(self.stored_files()), 1)

    def test_refusals(self) -> None:
        """
        The last location is kept (403), a position with no location is a
        400, the owner (no admin) a 403 and a queued image a 409; nothing
        changes.
        """
        image_id, uploaded, web = self.two_copies(ALICE)
        for patch, headers, code, message in [
            (remove("/locations/2"), ADMIN, 400, "position"),
            (remove("/locations/0"), ALICE, 403, "admin"),
        ]:
            self.assertError(self.patch(image_id, patch, headers), code, message)
            self.assertEqual(len(self.stored_record(image_id).locations), 2)
        both = [*remove("/locations/0"), *remove("/locations/0")]
        self.assertError(self.patch(image_id, both, ADMIN), 403, "last location")
        self.assertEqual(len(self.stored_record(image_id).locations), 2)
        self.assertEqual(len(self.stored_files()), 1)
        queued = self.queued()
        self.assertError(self.patch(queued["id"], remove("/locations/0"), ADMIN), 409, "queued")


class ViewTests(LocationsTestCase):
    site_options = {"show_multiple_locations": True, "show_image_direct_url": True}

    def test_who_sees_locations(self) -> None:
        """
        Admins see C{locations} and C{direct_url} in a show, a listing and
        a patch's answer; another project sees C{"locations": []} and no
        C{direct_url}, as in Glance.
        """
        image = self.active(DATA, ADMIN, visibility="public")
        url = self.stored_record(image["id"]).locations[0].url
        shown = self.show(image["id"], ADMIN)
        self.assertEqual(shown["locations"], [{"url": url, "metadata": {"store": "file"}}])
        self.assertEqual(shown["direct_url"], url)
        listed = self.request("GET", "/v2/images", ADMIN).json()["images"]
        self.assertEqual(listed[0]["locations"], shown["locations"])
        for headers in (ALICE, project_headers()):
            other = self.show(image["id"], headers)
            self.assertEqual(other["locations"], [])
            self.assertNotIn("direct_url", other)

    def test_owner_sees_locations(self) -> None:
        """
        The owner's project, a reader of it too, sees where its own image's
        data lives (Glance's get_image_location: admin or project reader);
        another project, shown the shared image, sees none.
        """
        image = self.active(DATA, ALICE, visibility="shared")
        url = self.stored_record(image["id"]).locations[0].url
        for headers in (ALICE, project("alice", "reader")):
            shown = self.show(image["id"], headers)
            self.assertEqual(shown["locations"], [{"url": url, "metadata": {"store": "file"}}])
            self.assertEqual(shown["direct_url"], url)
        answer = self.send_json("POST", f"/v2/images/{image['id']}/members", {"member": "bob"}, ALICE)
        self.assertEqual(answer.code, 200, answer.body)
        other = self.show(image["id"], BOB)
        self.assertEqual(other["locations"], [])
        self.assertNotIn("direct_url", other)

    def test_admin_view_is_private(self) -> None:
        """
        A public image's document is cacheable by shared caches, but not
        the admin's, which shows where the data lives; its entity tag is
        the admin's own, so If-Match with it holds for the admin's PATCH.
        """
        image = self.active(DATA, ADMIN, visibility="public")
        public = self.request("GET", f"/v2/images/{image['id']}", ALICE)
        self.assertIn("public", public.header("cache-control") or "")
        admin = self.request("GET", f"/v2/images/{image['id']}", ADMIN)
        self.assertNotIn("public", admin.header("cache-control") or "")
        etag = admin.header("etag")
        assert etag is not None
        answer = self.patch(
            image["id"], [{"op": "replace", "path": "/name", "value": "n"}],
            {**ADMIN, "If-Match": etag},
        )
        self.assertEqual(answer.code, 200, answer.body)

    def test_no_credentials_shown(self) -> None:
        """
        Userinfo and a query in a location (a password, a signature) are
        never shown, to an admin either.
        """
        url = "http://alice:hunter2@images.example/signed?signature=s3cret"
        self.web.files["http://images.example/signed?signature=s3cret"] = DATA
        image = self.queued()
        answer = self.patch(image["id"], add(url), ADMIN)
        self.assertEqual(answer.code, 200, answer.body)
        shown = self.request("GET", f"/v2/images/{image['id']}", ADMIN)
        for body in (answer.body, shown.body):
            self.assertNotIn(b"hunter2", body)
            self.assertNotIn(b"s3cret", body)
        self.assertEqual(shown.json()["direct_url"], "http://images.example/signed?...")


def project_headers() -> dict[str, str]:
    """A project that neither owns the (public) image nor administers."""
    return {"X-Project-Id": "carol", "X-Roles": "member"}


class OptionOffTests(LocationsTestCase):
    site_options: dict[str, Any] = {}

    def test_off(self) -> None:
        """
        Without show_multiple_locations, as in Glance, locations are not
        shown and an admin's add is a 403 that names the option.
        """
        image = self.queued()
        answer = self.patch(image["id"], add(self.web.add(DATA)), ADMIN)
        self.assertError(answer, 403, "show_multiple_locations")
        self.assertQueued(image["id"])
        self.assertNotIn("locations", self.show(image["id"], ADMIN))


class V1Tests(LocationsTestCase):
    def test_v1_location_in_a_named_store(self) -> None:
        """
        v1's x-image-meta-location goes through the same code: the store
        x-image-meta-store names must serve the URL (400 otherwise), and
        the location is recorded with it.
        """
        url = self.web.add(DATA)
        headers = {**ADMIN, "x-image-meta-name": "v1", "x-image-meta-location": url, **V1_RAW_BARE}
        answer = self.request("POST", "/v1/images", {**headers, "x-image-meta-store": "file"})
        self.assertError(answer, 400, "does not serve")
        answer = self.request("POST", "/v1/images", {**headers, "x-image-meta-store": "web"})
        self.assertEqual(answer.code, 201, answer.body)
        image = answer.json()["image"]
        self.assertEqual((image["status"], image["size"]), ("active", len(DATA)))
        self.assertEqual(self.stored_record(image["id"]).locations, (Location(url, "web"),))
        self.assertEqual(self.show(image["id"], ADMIN)["locations"][0]["url"], url)
