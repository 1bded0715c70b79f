"""
The root of the HTTP tree: versions, the health check, and dispatch to
each API version's Klein app.

Dispatch is by the first path segment: ``/v1/...`` and ``/v2/...`` go to
the v1 and v2 apps with the segment moved to C{prepath}; the unversioned
``/images...`` goes to the v1 app as it is, as the first Glance did.
Everything else is answered by the root's own Klein app.

That dispatch is plain twisted.web traversal (L{RootDispatch}), not Klein
branch routes: an image GET would otherwise be routed twice, once by the
root app and once by v2's; the root's routing (werkzeug matching, the
branch and its Deferreds) was 7% of a GET's CPU (bench/metadata.py
--in-process).
"""

from __future__ import annotations

import json
from typing import Any

from attrs import define
from klein import Klein
from twisted.internet.defer import DeferredList
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from glance_tx.api.errors import json_errors
from glance_tx.api.urls import site_url
from glance_tx.api.versions import versions_document
from glance_tx.registry.interface import IRegistry
from glance_tx.store.backends import StoreMap

#: Where each version's app is mounted (the dispatch below): what its upload
#: routes are served under.
V1_PREFIXES = ("/v1", "")
V2_PREFIXES = ("/v2",)


@define
class RootAPI:
    registry: IRegistry
    stores: StoreMap
    v1: IResource
    v2: IResource

    app = json_errors(Klein())

    def resource(self) -> Any:
        return RootDispatch(self.app.resource(), v1=self.v1, v2=self.v2)

    def _versions(self, request: IRequest) -> bytes:
        document = versions_document(site_url(request), self.stores.several)
        return json.dumps(document).encode("utf-8")

    @app.route("/", methods=["GET", "HEAD"])
    @app.route("/versions", methods=["GET", "HEAD"])
    def versions(self, request: IRequest) -> bytes:
        request.setResponseCode(300)
        request.setHeader(b"Content-Type", b"application/json")
        return self._versions(request)

    @app.route("/v2", methods=["GET", "HEAD"])
    def v2_root(self, request: IRequest) -> bytes:
        """Version discovery (keystoneauth) may ask without the slash."""
        request.setHeader(b"Content-Type", b"application/json")
        return self._versions(request)

    @app.route("/healthcheck", methods=["GET", "HEAD"])
    async def healthcheck(self, request: IRequest) -> bytes:
        """200 when the registry and every store answer; 503 naming what failed."""
        names = ["registry"] + [f"store:{store_id}" for store_id in self.stores.stores]
        checks = [self.registry.ping()] + [s.ping() for s in self.stores.stores.values()]
        results = await DeferredList(checks, consumeErrors=True)
        report = {
            name: "ok" if ok else str(getattr(result, "value", result))
            for name, (ok, result) in zip(names, results, strict=True)
        }
        healthy = all(ok for ok, _ in results)
        request.setResponseCode(200 if healthy else 503)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return json.dumps({"status": "ok" if healthy else "failed", "checks": report}).encode()


class RootDispatch(Resource):
    """
    The root resource: C{/v1/...} and C{/v2/...} to those apps (the
    segment in C{prepath}), C{/images...} to v1 as it is, and every other
    path to the root's app: C{/v1} and C{/v2} themselves, and C{/v2//...}
    (an empty segment would make a second URL for a cached resource that
    purges do not name, so it is a 404).
    """

    def __init__(self, root: IResource, *, v1: IResource, v2: IResource) -> None:
        super().__init__()
        self._root = root
        self._versions = {b"v1": v1, b"v2": v2}

    def getChildWithDefault(self, path: bytes, request: Any) -> IResource:
        # twisted.web has moved C{path} from postpath to prepath.
        version = self._versions.get(path)
        rest = request.postpath
        # Not "/v2" itself, and not "/v2//...": the root answers those.
        if version is not None and rest and not (rest[0] == b"" and len(rest) > 1):
            return version
        # The v1 app's routes include "images"; the root's see the whole path.
        request.postpath.insert(0, request.prepath.pop())
        return self._versions[b"v1"] if path == b"images" else self._root

    def render(self, request: Any) -> bytes:
        # Traversal always finds a child (a path has at least one segment).
        return self._root.render(request)  # type: ignore[no-any-return]
