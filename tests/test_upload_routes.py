"""Upload routes: one declaration gives the Klein route and the site's match."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from glance_tx.api.root import V1_PREFIXES, V2_PREFIXES
from glance_tx.api.upload_routes import UploadMatcher
from glance_tx.api.v1 import V1API
from glance_tx.api.v2 import V2API


class UploadMatcherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.v1 = object.__new__(V1API)
        self.v2 = object.__new__(V2API)
        self.matcher = UploadMatcher(
            V1API.uploads.bound(self.v1, V1_PREFIXES) + V2API.uploads.bound(self.v2, V2_PREFIXES)
        )

    def matched(self, method: bytes, path: bytes) -> tuple[object, str, dict] | None:
        found = self.matcher.match(method, path)
        if found is None:
            return None
        route, arguments = found
        return route.api, route.start.__name__, dict(arguments)

    def test_upload_requests(self) -> None:
        """Each declared upload is matched under each prefix its app is served
        under, with the rule's arguments, the path's segments unquoted."""
        image = "0b1c6a3e-5d59-4f27-9c4c-6a3f1b2c3d4e"
        self.assertEqual(self.matched(b"POST", b"/v1/images"), (self.v1, "_start_create", {}))
        self.assertEqual(self.matched(b"post", b"/images"), (self.v1, "_start_create", {}))
        self.assertEqual(
            self.matched(b"PUT", f"/v1/images/{image}".encode()),
            (self.v1, "_start_update", {"image_id": image}),
        )
        self.assertEqual(
            self.matched(b"PUT", b"/images/a%20b"), (self.v1, "_start_update", {"image_id": "a b"})
        )
        self.assertEqual(
            self.matched(b"PUT", f"/v2/images/{image}/file".encode()),
            (self.v2, "_begin_upload", {"image_id": image}),
        )

    def test_other_requests(self) -> None:
        """What Klein routes elsewhere is no upload: other methods, other
        paths, the other version's shapes, undecodable paths."""
        for method, path in [
            (b"GET", b"/v2/images/x/file"),
            (b"PUT", b"/v2/images/x"),
            (b"PUT", b"/v1/images/x/file"),
            (b"POST", b"/v2/images"),
            (b"PATCH", b"/v1/images/x"),
            (b"PUT", b"/v3/images/x/file"),
            (b"PUT", b"/v2/images/%ff/file"),
            (b"POST", b"/v1/images/detail/more"),
        ]:
            self.assertIsNone(self.matcher.match(method, path), (method, path))

    def test_klein_routes_the_same_rules(self) -> None:
        """The handler of each declared upload is the Klein route of the
        same rule and method."""
        for api in (V1API, V2API):
            rules = {(r.rule, m) for r in api.app.url_map.iter_rules() for m in r.methods or ()}
            for route in api.uploads.bound(None, ("",)):
                self.assertIn((route.rule, route.method), rules)
