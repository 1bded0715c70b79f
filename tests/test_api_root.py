"""The root of the HTTP tree: dispatch by the first path segment."""

from __future__ import annotations

from typing import Any, cast

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from glance_tx.api.root import RootAPI


class Leaf(Resource):
    """Stands in for a version's Klein app (a leaf, as Klein's resources are)."""

    isLeaf = True


class DispatchTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.v1, self.v2 = Leaf(), Leaf()
        # Dispatch touches neither the registry nor the stores.
        unused = cast(Any, None)
        self.root = RootAPI(registry=unused, stores=unused, v1=self.v1, v2=self.v2).resource()

    def traverse(self, path: bytes) -> tuple[Any, list[bytes], list[bytes]]:
        """
        The resource twisted.web renders C{path} with, and the request's
        prepath and postpath then.
        """
        request = DummyRequest(path.split(b"/")[1:])
        found = getChildForRequest(self.root, request)
        return found, request.prepath, request.postpath

    def test_versions_by_traversal(self) -> None:
        """
        /v1/... and /v2/... reach those apps by twisted.web traversal, the
        segment moved to prepath, never through the root's Klein app (an
        image GET routed by both apps spent 7% of its CPU in the root's
        routing).
        """
        self.assertEqual(
            self.traverse(b"/v2/images/x"), (self.v2, [b"v2"], [b"images", b"x"])
        )
        self.assertEqual(self.traverse(b"/v2/"), (self.v2, [b"v2"], [b""]))
        self.assertEqual(self.traverse(b"/v1/images"), (self.v1, [b"v1"], [b"images"]))

    def test_unversioned_images_go_to_v1_whole(self) -> None:
        """/images... goes to the v1 app with "images" still in the path."""
        self.assertEqual(self.traverse(b"/images"), (self.v1, [], [b"images"]))
        self.assertEqual(self.traverse(b"/images/x"), (self.v1, [], [b"images", b"x"]))

    def test_everything_else_is_the_roots(self) -> None:
        """
        Every other path goes, whole, to the root's own app: the versions,
        the health check, /v2 itself, and /v2//... (which the root answers
        with a 404: a second URL for a cached resource would escape purges).
        """
        for path, postpath in [
            (b"/", [b""]),
            (b"/versions", [b"versions"]),
            (b"/healthcheck", [b"healthcheck"]),
            (b"/v2", [b"v2"]),
            (b"/v2//images", [b"v2", b"", b"images"]),
            (b"/v3/images", [b"v3", b"images"]),
        ]:
            found, prepath, rest = self.traverse(path)
            self.assertNotIn(found, (self.v1, self.v2), path)
            self.assertTrue(found.isLeaf, path)
            self.assertEqual((prepath, rest), ([], postpath), path)
