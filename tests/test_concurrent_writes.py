"""
Writes through the API when another request changes the image between the
API's read and its write (on this node or another): with C{If-Match} the
write is a 412, without one it is made again on the new record, so neither
change is lost (L{glance_tx.api.base.ImagesAPI._change_image}).

The race is made exact, not hoped for: L{Interloper} wraps the registry the
API talks to and commits another change just before the API's write
reaches it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.components import proxyForInterface
from zope.interface.verify import verifyObject

from glance_tx.api.base import WRITE_ATTEMPTS
from glance_tx.images import ImageUpdate
from glance_tx.registry.client import HTTPRegistryClient
from glance_tx.registry.interface import IRegistry
from glance_tx.registry.server import RegistryServer
from tests.test_api_v1 import meta
from tests.test_api_v2 import ALICE, OCTET, V2TestCase

Change = Callable[[], Deferred[Any]]


class Interloper(proxyForInterface(IRegistry, "original")):  # type: ignore[misc]
    """
    A registry whose next writes (C{update}, C{delete}) each find one of
    C{changes} committed just before them, as if another request had made
    it after the caller read the image.
    """

    def __init__(self, original: IRegistry) -> None:
        super().__init__(original)
        self.changes: list[Change] = []

    def interfere(self, *changes: Change) -> None:
        self.changes.extend(changes)

    async def _first(self, change: Change | None) -> None:
        if change is not None:
            await change()

    def _next(self) -> Deferred[None]:
        change = self.changes.pop(0) if self.changes else None
        return Deferred.fromCoroutine(self._first(change))

    def update(self, image_id: str, update: ImageUpdate, *args: Any, **kwargs: Any) -> Deferred[Any]:
        d = self._next()
        d.addCallback(lambda _: self.original.update(image_id, update, *args, **kwargs))
        return d

    def delete(self, image_id: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        d = self._next()
        d.addCallback(lambda _: self.original.delete(image_id, *args, **kwargs))
        return d


class ConcurrentWriteTests(V2TestCase):
    """Every write of v1 and v2 that reads first, racing another change."""

    def api_registry(self) -> IRegistry:
        self.interloper = Interloper(self.registry)
        verifyObject(IRegistry, self.interloper)
        return self.interloper

    def other_request(self, image_id: str, **fields: Any) -> Change:
        """A change another request makes: set C{fields} and a property."""
        return lambda: self.registry.update(
            image_id, ImageUpdate(fields=fields, properties={"other": "was here"})
        )

    def etag(self, method: str, path: str) -> str:
        value = self.request(method, path).header("ETag")
        assert value is not None
        return value

    def rename(self, image_id: str, headers: dict[str, str] | None = None) -> Any:
        return self.patch(
            image_id, [{"op": "replace", "path": "/name", "value": "mine"}], headers
        )

    def test_v2_patch_if_match_is_412(self) -> None:
        """
        A PATCH whose If-Match held when the API read the image is a 412
        once another change lands before its write: the other change stays,
        the patch is not applied.
        """
        image_id = self.create(name="first")["id"]
        etag = self.etag("GET", f"/v2/images/{image_id}")
        self.interloper.interfere(self.other_request(image_id))
        self.assertError(self.rename(image_id, {"If-Match": etag}), 412, "If-Match")
        stored = self.stored_record(image_id)
        self.assertEqual((stored.name, stored.properties), ("first", {"other": "was here"}))

    def test_v2_patches_without_preconditions_both_apply(self) -> None:
        """
        Two PATCHes that each add a property and change a field, the
        second landing between the first's read and its write: the first
        is made again on the new record (not refused 409: the two asked
        for nothing that conflicts), and both changes are kept.
        """
        image_id = self.create()["id"]

        def second() -> Deferred[Any]:
            return self.registry.update(
                image_id, ImageUpdate(fields={"min_ram": 512}, properties={"theirs": "1"})
            )

        self.interloper.interfere(second)
        answer = self.patch(
            image_id,
            [
                {"op": "replace", "path": "/name", "value": "mine"},
                {"op": "add", "path": "/mine", "value": "1"},
            ],
        )
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual((answer.json()["mine"], answer.json()["theirs"]), ("1", "1"))
        stored = self.stored_record(image_id)
        self.assertEqual(stored.properties, {"mine": "1", "theirs": "1"})
        self.assertEqual((stored.name, stored.min_ram), ("mine", 512))

    def test_v2_patch_decided_on_the_new_record(self) -> None:
        """
        A PATCH that replaces a property, raced by a request removing it,
        is the 409 it would be after the removal ("does not exist"): it
        does not bring the property back.
        """
        image_id = self.create(extra="1")["id"]
        self.interloper.interfere(
            lambda: self.registry.update(image_id, ImageUpdate(properties={"extra": None}))
        )
        answer = self.patch(image_id, [{"op": "replace", "path": "/extra", "value": "2"}])
        self.assertError(answer, 409, "does not exist")
        self.assertEqual(self.stored_record(image_id).properties, {})

    def test_v2_patch_gives_up_after_its_attempts(self) -> None:
        """
        When another change lands before every one of WRITE_ATTEMPTS
        writes, the PATCH is a 409 saying the image changed, and none of
        it is applied.
        """
        image_id = self.create(name="first")["id"]
        for n in range(WRITE_ATTEMPTS):
            self.interloper.interfere(
                lambda n=n: self.registry.add_tag(image_id, f"t{n}")
            )
        self.assertError(self.rename(image_id), 409, "changed")
        stored = self.stored_record(image_id)
        self.assertEqual(stored.name, "first")
        self.assertEqual(len(stored.tags), WRITE_ATTEMPTS)
        self.assertEqual(self.interloper.changes, [])

    def test_v2_delete_if_match_is_412(self) -> None:
        """A DELETE with If-Match, raced by a change, is a 412; the image stays."""
        image_id = self.create()["id"]
        etag = self.etag("GET", f"/v2/images/{image_id}")
        self.interloper.interfere(self.other_request(image_id))
        answer = self.request("DELETE", f"/v2/images/{image_id}", {"If-Match": etag})
        self.assertError(answer, 412)
        self.assertEqual(self.stored_record(image_id).status, "queued")

    def test_v2_delete_decided_on_the_new_record(self) -> None:
        """
        A DELETE read an unprotected image; it was protected before the
        write: the delete is decided again, a 403, and the image stays.
        """
        image_id = self.create()["id"]
        self.interloper.interfere(self.other_request(image_id, protected=True))
        answer = self.request("DELETE", f"/v2/images/{image_id}")
        self.assertError(answer, 403, "protected")
        self.assertFalse(self.stored_record(image_id).deleted)

    def test_v2_upload_into_an_image_given_away(self) -> None:
        """
        An upload by the owner, raced by an admin giving the image to
        another project: the upload is decided again, the image is no
        longer the uploader's to see (404), and no data is stored.
        """
        image_id = self.create(ALICE)["id"]
        self.interloper.interfere(self.other_request(image_id, owner="bob"))
        answer = self.upload(image_id, b"data" * 100, ALICE)
        self.assertError(answer, 404)
        stored = self.stored_record(image_id)
        self.assertEqual((stored.status, stored.owner), ("queued", "bob"))
        self.assertEqual(self.stored_files(), [])

    def test_v2_upload_after_a_rename(self) -> None:
        """
        A rename landing as an upload starts does not stop it: the upload
        starts from the renamed record and keeps the new name.
        """
        image_id = self.create()["id"]
        self.interloper.interfere(self.other_request(image_id, name="renamed"))
        self.assertEqual(self.upload(image_id, b"data" * 100).code, 204)
        stored = self.stored_record(image_id)
        self.assertEqual((stored.status, stored.name), ("active", "renamed"))

    def test_v1_put_if_match_is_412(self) -> None:
        """
        A v1 PUT whose If-Match held against the HEAD read first is a 412
        once another change lands first; the other change stays.
        """
        image_id = self.create(name="first")["id"]
        etag = self.etag("HEAD", f"/v1/images/{image_id}")
        self.interloper.interfere(self.other_request(image_id))
        answer = self.request(
            "PUT", f"/v1/images/{image_id}", {**meta(name="mine"), "If-Match": etag}
        )
        self.assertError(answer, 412)
        stored = self.stored_record(image_id)
        self.assertEqual((stored.name, stored.properties), ("first", {"other": "was here"}))

    def test_v1_put_decided_on_the_new_record(self) -> None:
        """
        A v1 PUT by the owner, raced by the image being given to another
        project, is refused as if it came after (404) and changes nothing.
        """
        image_id = self.create(ALICE)["id"]
        self.interloper.interfere(self.other_request(image_id, owner="bob"))
        answer = self.request("PUT", f"/v1/images/{image_id}", {**ALICE, **meta(name="mine")})
        self.assertError(answer, 404)
        self.assertNotEqual(self.stored_record(image_id).name, "mine")

    def test_v1_upload_if_match_is_412(self) -> None:
        """A v1 PUT with data and If-Match, raced by a change: 412, no data."""
        image_id = self.create()["id"]
        etag = self.etag("HEAD", f"/v1/images/{image_id}")
        self.interloper.interfere(self.other_request(image_id))
        answer = self.request(
            "PUT", f"/v1/images/{image_id}", {**OCTET, "If-Match": etag}, data=b"x" * 100
        )
        self.assertError(answer, 412)
        self.assertEqual(self.stored_record(image_id).status, "queued")
        self.assertEqual(self.stored_files(), [])

    def test_v1_delete_if_match_is_412(self) -> None:
        """A v1 DELETE with If-Match, raced by a change: 412; the image stays."""
        image_id = self.create()["id"]
        etag = self.etag("HEAD", f"/v1/images/{image_id}")
        self.interloper.interfere(self.other_request(image_id))
        answer = self.request("DELETE", f"/v1/images/{image_id}", {"If-Match": etag})
        self.assertError(answer, 412)
        self.assertFalse(self.stored_record(image_id).deleted)


class ThroughRegistryServerTests(ConcurrentWriteTests):
    """
    The same, with the API on the HTTP registry client and the registry
    server in between, as on a node of several: the version conflict
    crosses the wire as what it is.
    """

    def api_registry(self) -> IRegistry:
        from tests.test_registry_server import agent_for

        client = HTTPRegistryClient(
            agent_for(RegistryServer(self.registry)), "http://registry.example", Clock()
        )
        self.interloper = Interloper(client)
        return self.interloper
