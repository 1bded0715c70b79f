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
--in-process). The hottest requests -- a GET or HEAD of the versions, the
health check, one image and a listing page -- skip Klein altogether
(L{glance_tx.api.direct}): the same handlers, called from a plain leaf.

The versions document is made once per site URL. The health check probes
the registry and every store at most once per C{healthcheck_probe_interval}
seconds: health checks that arrive while a probe is in flight share it, and
one that arrives within the interval from the start of the last probe is
answered with that probe's answer, at once. So a part that fails is
reported within the interval plus one probe, and a load balancer (or
anyone) polling the health check cannot make the service create and
remove a file on disk, and ask its database, once per request: the
probes were 57% of a health check's CPU, which was 7x that of a bare
twisted.web answer (bench/metadata.py --in-process; 3x with the answer
held, as C{/versions}).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from attrs import define, field
from klein import Klein
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from glance_tx.api.direct import DirectRoute
from glance_tx.api.errors import json_errors
from glance_tx.api.urls import site_url
from glance_tx.api.versions import versions_document
from glance_tx.config import HEALTHCHECK_PROBE_INTERVAL
from glance_tx.once import Once
from glance_tx.registry.interface import IRegistry
from glance_tx.store.backends import StoreMap

#: Where each version's app is mounted (the dispatch below): what its upload
#: routes are served under.
V1_PREFIXES = ("/v1", "")
V2_PREFIXES = ("/v2",)


#: How many site URLs (Host headers) the versions document is kept for.
VERSIONS_KEPT = 64


@define(frozen=True)
class HealthAnswer:
    """A probe's answer (status and body) and when the probe started."""

    started: float
    status: int
    body: bytes


@define
class RootAPI:
    registry: IRegistry
    stores: StoreMap
    v1: IResource
    v2: IResource
    #: What the health check's probes are timed by.
    clock: IReactorTime
    #: The v2 app's image GET, answered without Klein (None: through it).
    show_image: Callable[[IRequest, str], Coroutine[Any, Any, bytes]] | None = None
    #: The v2 app's listing page, answered without Klein (None: through it).
    list_images: Callable[[IRequest], Coroutine[Any, Any, bytes]] | None = None
    _versions_bodies: dict[str, bytes] = field(factory=dict, init=False)
    #: Seconds a probe's answer is given again, from the probe's start (0:
    #: never; each health check then waits for a probe, shared with those
    #: in flight).
    healthcheck_probe_interval: float = HEALTHCHECK_PROBE_INTERVAL
    #: The probe in flight, if any.
    _probe: Once[tuple[int, bytes]] | None = field(default=None, init=False)
    #: The last probe's answer.
    _health: HealthAnswer | None = field(default=None, init=False)

    app = json_errors(Klein())

    def resource(self) -> Any:
        return RootDispatch(self.app.resource(), v1=self.v1, v2=self.v2, root_api=self)

    def versions_body(self, request: IRequest) -> bytes:
        """The versions document for the URL C{request} reached, made once per URL."""
        base = site_url(request)
        body = self._versions_bodies.get(base)
        if body is None:
            body = json.dumps(versions_document(base, self.stores.several)).encode("utf-8")
            if len(self._versions_bodies) >= VERSIONS_KEPT:
                # The Host header is the client's: keep a few, not one per name.
                self._versions_bodies.clear()
            self._versions_bodies[base] = body
        return body

    @app.route("/", methods=["GET", "HEAD"])
    @app.route("/versions", methods=["GET", "HEAD"])
    def versions(self, request: IRequest) -> bytes:
        request.setResponseCode(300)
        request.setHeader(b"Content-Type", b"application/json")
        return self.versions_body(request)

    @app.route("/v2", methods=["GET", "HEAD"])
    def v2_root(self, request: IRequest) -> bytes:
        """Version discovery (keystoneauth) may ask without the slash."""
        request.setHeader(b"Content-Type", b"application/json")
        return self.versions_body(request)

    @app.route("/healthcheck", methods=["GET", "HEAD"])
    def healthcheck(self, request: IRequest) -> bytes | Coroutine[Any, Any, bytes]:
        """
        200 when the registry and every store answer; 503 naming what
        failed. The last probe's answer while it is fresh (the body, at
        once: no Deferred); otherwise a coroutine that waits for a probe.
        """
        health = self._health
        if health is not None:
            age = self.clock.seconds() - health.started
            # A clock set back is no reason to keep an answer for longer.
            if 0 <= age < self.healthcheck_probe_interval:
                return self._health_answer(request, health.status, health.body)
        return self._probed(request)

    async def _probed(self, request: IRequest) -> bytes:
        """The answer of the probe in flight, or of a new one."""
        probe = self._probe
        if probe is None:
            # No probe in flight: start one; requests until it ends share it.
            probe = self._probe = Once()
            started = self.clock.seconds()
            Deferred.fromCoroutine(self._check()).addBoth(self._checked, probe, started)
        status, body = await probe.observe()
        return self._health_answer(request, status, body)

    def _health_answer(self, request: IRequest, status: int, body: bytes) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return body

    def _checked(
        self, outcome: tuple[int, bytes] | Failure, probe: Once[tuple[int, bytes]], started: float
    ) -> None:
        if self._probe is probe:
            self._probe = None
        if not isinstance(outcome, Failure):
            self._health = HealthAnswer(started, *outcome)
        probe.fire(outcome)

    async def _check(self) -> tuple[int, bytes]:
        names = ["registry"] + [f"store:{store_id}" for store_id in self.stores.stores]
        checks = [self.registry.ping()] + [s.ping() for s in self.stores.stores.values()]
        results = await DeferredList(checks, consumeErrors=True)
        report = {
            name: "ok" if ok else str(getattr(result, "value", result))
            for name, (ok, result) in zip(names, results, strict=True)
        }
        healthy = all(ok for ok, _ in results)
        body = json.dumps({"status": "ok" if healthy else "failed", "checks": report}).encode()
        return 200 if healthy else 503, body


class RootDispatch(Resource):
    """
    The root resource: C{/v1/...} and C{/v2/...} to those apps (the
    segment in C{prepath}), C{/images...} to v1 as it is, and every other
    path to the root's app: C{/v1} and C{/v2} themselves, and C{/v2//...}
    (an empty segment would make a second URL for a cached resource that
    purges do not name, so it is a 404).
    """

    def __init__(
        self, root: IResource, *, v1: IResource, v2: IResource, root_api: RootAPI | None = None
    ) -> None:
        super().__init__()
        self._root = root
        self._versions = {b"v1": v1, b"v2": v2}
        self._api = root_api

    def getChildWithDefault(self, path: bytes, request: Any) -> IResource:
        # twisted.web has moved C{path} from postpath to prepath.
        version = self._versions.get(path)
        rest = request.postpath
        if self._api is not None and request.method in (b"GET", b"HEAD"):
            direct = self._direct(path, rest)
            if direct is not None:
                return direct
        # Not "/v2" itself, and not "/v2//...": the root answers those.
        if version is not None and rest and not (rest[0] == b"" and len(rest) > 1):
            return version
        # The v1 app's routes include "images"; the root's see the whole path.
        request.postpath.insert(0, request.prepath.pop())
        return self._versions[b"v1"] if path == b"images" else self._root

    def _direct(self, path: bytes, rest: list[bytes]) -> IResource | None:
        """The direct route (L{glance_tx.api.direct}) of a GET or HEAD of this path, if any."""
        api = self._api
        assert api is not None
        if not rest:
            if path in (b"", b"versions"):
                return DirectRoute(api.versions)
            if path == b"healthcheck":
                return DirectRoute(api.healthcheck)
        elif path == b"v2" and rest == [b"images"] and api.list_images is not None:
            return DirectRoute(api.list_images)
        elif (
            path == b"v2"
            and api.show_image is not None
            and len(rest) == 2
            and rest[0] == b"images"
            and rest[1]
            and rest[1].isascii()
            and b"%" not in rest[1]
        ):
            # A segment Klein would decode (or refuse) is left to Klein.
            return DirectRoute(api.show_image, rest[1].decode("ascii"))
        return None

    def render(self, request: Any) -> bytes:
        # Traversal always finds a child (a path has at least one segment).
        return self._root.render(request)  # type: ignore[no-any-return]
