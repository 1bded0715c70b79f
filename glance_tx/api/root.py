"""
The root of the HTTP tree: versions, the health check, and dispatch to
each API version's Klein app.

Dispatch is by the first path segment: ``/v1/...`` and ``/v2/...`` go to
the v1 and v2 apps with the segment moved to C{prepath}; the unversioned
``/images...`` goes to the v1 app as it is, as the first Glance did.
Everything else is answered here.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import define
from klein import Klein
from twisted.internet.defer import DeferredList
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from glance_tx.api.errors import json_errors
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
        return self.app.resource()

    def _host_url(self, request: IRequest) -> str:
        return request.URLPath().click(b"/").__str__().rstrip("/")

    @app.route("/", methods=["GET", "HEAD"])
    @app.route("/versions", methods=["GET", "HEAD"])
    def versions(self, request: IRequest) -> bytes:
        request.setResponseCode(300)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(versions_document(self._host_url(request))).encode("utf-8")

    @app.route("/v1/", branch=True)
    def v1_versioned(self, request: IRequest) -> IResource:
        return self.v1

    @app.route("/v2", methods=["GET", "HEAD"])
    def v2_root(self, request: IRequest) -> bytes:
        """Version discovery (keystoneauth) may ask without the slash."""
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(versions_document(self._host_url(request))).encode("utf-8")

    @app.route("/v2/", branch=True)
    def v2_versioned(self, request: IRequest) -> IResource:
        return self.v2

    @app.route("/images", branch=True)
    def v1_unversioned(self, request: IRequest) -> IResource:
        # Klein moved "images" into prepath; the v1 app's routes include it.
        request.postpath.insert(0, request.prepath.pop())
        return self.v1

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
