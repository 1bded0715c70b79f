"""
The Registry API: any L{IRegistry} served over HTTP, for API nodes that
share one registry (C{twistd glance-registry}).

Every body is JSON in the shapes of L{glance_tx.registry.wire}::

    GET    /healthcheck                              ping (no token needed)
    GET    /images?query=JSON                        brief listing
    GET    /images/detail?query=JSON                 full listing
    POST   /images                 {"image": ...}    create (201)
    GET    /images/ID[?include_deleted=true]         get
    PUT    /images/ID              {"update": ..., "expected_status": [...],
                                    "expected_version": N, "write_id": W}
    DELETE /images/ID[?expected_version=N][&write_id=W]
                                                     delete
    PUT    /images/ID/tags/TAG                       add a tag
    DELETE /images/ID/tags/TAG[?write_id=W]          remove a tag
    GET    /images/ID/members                        list members
    POST   /images/ID/members      {"member_id": M}  add a member (201)
    GET    /images/ID/members/M                      get a member
    PUT    /images/ID/members/M    {"status": S}     update a member
    DELETE /images/ID/members/M[?write_id=W]         remove a member (204)
    GET    /locations                                every live location
    PUT    /leases/NODE            {"uploads": {ID: S}, "seconds": N}
                                                     hold or renew NODE's uploads
    DELETE /leases/NODE/ID                           release one upload's lease
    POST   /leases/reclaim         {"dead_node_id": NODE or null}
                                                     reclaim expired uploads
    PUT    /nodes/NODE             {"instance": I, "seconds": N, "replacing": J}
                                                     claim or renew node id NODE:
                                                     {"held": null or {"instance": K,
                                                                       "seconds_left": N}}
    DELETE /nodes/NODE/I                             release I's claim (204)
    POST   /tasks                  {"task": ...}     create a task (201)
    GET    /tasks?query=JSON                         list tasks
    GET    /tasks/ID                                 get a task
    PUT    /tasks/ID               {"change": ...}   move a task on
    DELETE /tasks/expired                            delete expired tasks: {"deleted": N}

Metadata definitions (L{glance_tx.metadefs.interface.IMetadefRegistry}),
a namespace NS and its definitions of KIND (object, property, tag):

    GET    /metadefs/namespaces?query=JSON           one page of namespaces
    POST   /metadefs/namespaces    {"content": ..., "replace": B}
                                                     create (201)
    GET    /metadefs/namespaces/NS                   get
    PUT    /metadefs/namespaces/NS {"namespace": ...}
                                                     update (or rename)
    DELETE /metadefs/namespaces/NS                   delete (204)
    GET    /metadefs/namespaces/NS/definitions/KIND  list
    POST   /metadefs/namespaces/NS/definitions/KIND {"definition": ...}
                                                     create (201)
    PUT    /metadefs/namespaces/NS/definitions/KIND {"definitions": [...],
                                                     "append": B} replace all
    GET    /metadefs/namespaces/NS/definitions/KIND/NAME  get
    PUT    /metadefs/namespaces/NS/definitions/KIND/NAME {"definition": ...}
                                                     update (or rename)
    DELETE /metadefs/namespaces/NS/definitions/KIND/NAME  delete (204)
    GET    /metadefs/resource_types                  every resource type
    GET    /metadefs/associations?namespace=NS...    associations by namespace
    POST   /metadefs/namespaces/NS/associations {"association": ...}
                                                     associate (201)
    DELETE /metadefs/namespaces/NS/associations/RT   dissociate (204)

A listing's C{query} is one encoded L{glance_tx.images.ImageQuery}, so the
registry lists with the same filters, order and keyset pages the API asked
for. Errors are the API's error document with the error's class added
(L{wire.encode_error}).

With a token configured, every request but the health check must carry
C{Authorization: Bearer TOKEN} (else 401); it is compared in constant time.
Without one the registry is open to whoever reaches its port: bind it to
loopback.
"""

from __future__ import annotations

import hmac
import json
from http import HTTPStatus
from typing import Any

from attrs import define, field
from klein import Klein
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from werkzeug.exceptions import HTTPException

from glance_tx.api.channel import DEFAULT_MAX_HEADER_LINE
from glance_tx.api.errors import handle_routing_error, unexpected_error
from glance_tx.api.params import parse_json
from glance_tx.api.site import GlanceSite
from glance_tx.config import REGISTRY_KEEPALIVE_SECONDS, ClientLimits
from glance_tx.errors import BadRequest, GlanceError, NotFound
from glance_tx.images import Image, ImageQuery
from glance_tx.metadefs.interface import IMetadefRegistry
from glance_tx.registry import wire
from glance_tx.registry.interface import IRegistry
from glance_tx.registry.kept import Kept


def _json(request: IRequest, value: Any, status: int = HTTPStatus.OK) -> bytes:
    return _json_bytes(request, _dumps(value), status)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def _encode_image(image: Image) -> bytes:
    return _dumps(wire.encode_image(image))


def _json_bytes(request: IRequest, body: bytes, status: int = HTTPStatus.OK) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    # A length, not chunks: no chunk framing to write here or to decode
    # on the API node, which reads every registry answer whole.
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def _body(request: IRequest) -> dict[str, Any]:
    """The request's JSON object body, or a BadRequest."""
    content = request.content
    value = parse_json(content.read() if content is not None else b"")
    if not isinstance(value, dict):
        raise BadRequest("The request body must be a JSON object")
    return value


def _raw_arg(request: IRequest, name: bytes) -> bytes | None:
    values = (request.args or {}).get(name)
    return values[-1] if values else None


def _arg(request: IRequest, name: bytes) -> str | None:
    raw = _raw_arg(request, name)
    try:
        return raw.decode("utf-8") if raw is not None else None
    except UnicodeDecodeError:
        raise BadRequest(f"The {name.decode()} parameter is not UTF-8") from None


def _query(request: IRequest) -> ImageQuery:
    raw = _raw_arg(request, b"query")
    if raw is None:
        return ImageQuery()
    return wire.decode_query(parse_json(raw, "the query parameter"))


@define
class RegistryServer:
    """The Registry API over an injected L{IRegistry}."""

    registry: IRegistry
    #: The shared secret API nodes must send; None leaves the API open.
    token: str | None = None
    #: By id, each image read and its wire form as JSON (see L{_encoded}).
    _forms: Kept[Image, bytes] = field(factory=Kept, init=False)

    app = Klein()

    def _encoded(self, image: Image) -> bytes:
        """
        C{image}'s wire form as JSON: the one made before from the same
        record or an equal one. The SQL registry gives the same object for
        an unchanged row, so a listing page read again encodes nothing
        (encoding was a third of glance-registry's busy time per page).
        """
        return self._forms.made(image.id, image, _encode_image)

    def resource(self) -> IResource:
        """The app, behind the token check when a token is set."""
        inner = self.app.resource()
        if self.token is None:
            return inner
        return _TokenGate(inner, self.token.encode("utf-8"))

    @app.handle_errors(GlanceError)
    def _glance_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, GlanceError)
        return _json(request, wire.encode_error(error), error.status)

    @app.handle_errors(HTTPException)
    def _routing_error(self, request: IRequest, failure: Failure) -> bytes:
        return handle_routing_error(request, failure)

    @app.handle_errors(Exception)
    def _unexpected(self, request: IRequest, failure: Failure) -> bytes:
        error = unexpected_error(request, failure)
        return _json(request, wire.encode_error(error), error.status)

    # -- health ------------------------------------------------------------------

    @app.route("/healthcheck", methods=["GET", "HEAD"])
    async def healthcheck(self, request: IRequest) -> bytes:
        await self.registry.ping()
        return _json(request, {"status": "ok"})

    # -- images ------------------------------------------------------------------

    @app.route("/images", methods=["GET"])
    async def list_brief(self, request: IRequest) -> bytes:
        found = await self.registry.list(_query(request))
        return _json(request, {"images": [wire.encode_brief_image(i) for i in found]})

    @app.route("/images/detail", methods=["GET"])
    async def list_detail(self, request: IRequest) -> bytes:
        found = await self.registry.list(_query(request))
        # The bytes _json({"images": [...]}) gives, from each image's form.
        return self._forms_answer(
            request, b'{"images":[', list(map(self._encoded, found)), b"]}"
        )

    def _forms_answer(
        self, request: IRequest, head: bytes, forms: list[bytes], tail: bytes
    ) -> bytes:
        """A read's answer, saying where each image's form is in it (see L{wire.FORMS_HEADER})."""
        body, spans = wire.join_forms(head, forms, tail)
        request.setHeader(wire.FORMS_HEADER, spans)
        return _json_bytes(request, body)

    @app.route("/images", methods=["POST"])
    async def create(self, request: IRequest) -> bytes:
        image = wire.decode_image(_body(request).get("image"))
        created = await self.registry.create(image)
        return _json(request, {"image": wire.encode_image(created)}, HTTPStatus.CREATED)

    @app.route("/images/<image_id>", methods=["GET"])
    async def get(self, request: IRequest, image_id: str) -> bytes:
        include_deleted = _arg(request, b"include_deleted") == "true"
        image = await self.registry.get(image_id, include_deleted=include_deleted)
        return self._forms_answer(request, b'{"image":', [self._encoded(image)], b"}")

    @app.route("/images/<image_id>", methods=["PUT"])
    async def update(self, request: IRequest, image_id: str) -> bytes:
        body = _body(request)
        image = await self.registry.update(
            image_id,
            wire.decode_update(body.get("update")),
            expected_status=wire.decode_statuses(body.get("expected_status")),
            expected_version=wire.decode_version(body.get("expected_version")),
            write_id=wire.decode_write_id(body.get("write_id")),
        )
        return _json(request, {"image": wire.encode_image(image)})

    @app.route("/images/<image_id>", methods=["DELETE"])
    async def delete(self, request: IRequest, image_id: str) -> bytes:
        image = await self.registry.delete(
            image_id,
            expected_version=wire.decode_version(_arg(request, b"expected_version")),
            write_id=wire.decode_write_id(_arg(request, b"write_id")),
        )
        return _json(request, {"image": wire.encode_image(image)})

    @app.route("/locations", methods=["GET"])
    async def all_locations(self, request: IRequest) -> bytes:
        locations = await self.registry.all_locations()
        return _json(request, {"locations": sorted(locations)})

    @app.route("/pending-deletes", methods=["GET"])
    async def pending_deletes(self, request: IRequest) -> bytes:
        older_than = wire.decode_seconds(_arg(request, b"older_than"), "older_than")
        pending = await self.registry.pending_deletes(older_than)
        return _json(request, {"images": [wire.encode_image(i) for i in pending]})

    @app.route("/projects/<path:project_id>/usage", methods=["GET"])
    async def project_usage(self, request: IRequest, project_id: str) -> bytes:
        usage = await self.registry.project_usage(project_id)
        return _json(request, {"usage": wire.encode_usage(usage)})

    # -- upload leases -------------------------------------------------------------

    @app.route("/leases/reclaim", methods=["POST"])
    async def reclaim_uploads(self, request: IRequest) -> bytes:
        dead = _body(request).get("dead_node_id")
        if dead is not None and not isinstance(dead, str):
            raise BadRequest("dead_node_id must be a string or null")
        reclaimed = await self.registry.reclaim_uploads(dead)
        return _json(request, {"images": [wire.encode_image(i) for i in reclaimed]})

    @app.route("/leases/<node_id>", methods=["PUT"])
    async def hold_uploads(self, request: IRequest, node_id: str) -> bytes:
        uploads, seconds = wire.decode_leases(_body(request))
        await self.registry.hold_uploads(node_id, uploads, seconds)
        request.setResponseCode(HTTPStatus.NO_CONTENT)
        return b""

    @app.route("/leases/<node_id>/<image_id>", methods=["DELETE"])
    async def release_upload(
        self, request: IRequest, node_id: str, image_id: str
    ) -> bytes:
        await self.registry.release_upload(image_id, node_id)
        request.setResponseCode(HTTPStatus.NO_CONTENT)
        return b""

    # -- node claims -------------------------------------------------------------

    @app.route("/nodes/<node_id>", methods=["PUT"])
    async def claim_node(self, request: IRequest, node_id: str) -> bytes:
        instance, seconds, replacing = wire.decode_claim(_body(request))
        held = await self.registry.claim_node(node_id, instance, seconds, replacing)
        return _json(request, wire.encode_claim_answer(held))

    # Not <instance>: Klein's route wrapper has a parameter of that name.
    @app.route("/nodes/<node_id>/<claimant>", methods=["DELETE"])
    async def release_node(self, request: IRequest, node_id: str, claimant: str) -> bytes:
        await self.registry.release_node(node_id, claimant)
        request.setResponseCode(HTTPStatus.NO_CONTENT)
        return b""

    # -- tasks -------------------------------------------------------------------

    @app.route("/tasks", methods=["POST"])
    async def create_task(self, request: IRequest) -> bytes:
        task = await self.registry.create_task(wire.decode_task(_body(request).get("task")))
        return _json(request, {"task": wire.encode_task(task)}, HTTPStatus.CREATED)

    @app.route("/tasks", methods=["GET"])
    async def list_tasks(self, request: IRequest) -> bytes:
        raw = _raw_arg(request, b"query")
        query = wire.decode_task_query(parse_json(raw, "the query parameter") if raw else {})
        found = await self.registry.list_tasks(query)
        return _json(request, {"tasks": [wire.encode_task(t) for t in found]})

    @app.route("/tasks/expired", methods=["DELETE"])
    async def delete_expired_tasks(self, request: IRequest) -> bytes:
        return _json(request, {"deleted": await self.registry.delete_expired_tasks()})

    @app.route("/tasks/<task_id>", methods=["GET"])
    async def get_task(self, request: IRequest, task_id: str) -> bytes:
        task = await self.registry.get_task(task_id)
        return _json(request, {"task": wire.encode_task(task)})

    @app.route("/tasks/<task_id>", methods=["PUT"])
    async def update_task(self, request: IRequest, task_id: str) -> bytes:
        change = wire.decode_task_change(_body(request).get("change"))
        task = await self.registry.update_task(task_id, change)
        return _json(request, {"task": wire.encode_task(task)})

    # -- tags --------------------------------------------------------------------

    @app.route("/images/<image_id>/tags/<path:tag>", methods=["PUT"])
    async def add_tag(self, request: IRequest, image_id: str, tag: str) -> bytes:
        image = await self.registry.add_tag(image_id, tag)
        return _json(request, {"image": wire.encode_image(image)})

    @app.route("/images/<image_id>/tags/<path:tag>", methods=["DELETE"])
    async def remove_tag(self, request: IRequest, image_id: str, tag: str) -> bytes:
        image = await self.registry.remove_tag(
            image_id, tag, write_id=wire.decode_write_id(_arg(request, b"write_id"))
        )
        return _json(request, {"image": wire.encode_image(image)})

    # -- members -----------------------------------------------------------------

    @app.route("/images/<image_id>/members", methods=["GET"])
    async def list_members(self, request: IRequest, image_id: str) -> bytes:
        members = await self.registry.list_members(image_id)
        return _json(request, {"members": [wire.encode_member(m) for m in members]})

    @app.route("/images/<image_id>/members", methods=["POST"])
    async def add_member(self, request: IRequest, image_id: str) -> bytes:
        member_id = _body(request).get("member_id")
        if not isinstance(member_id, str):
            raise BadRequest("member_id must be a string")
        member = await self.registry.add_member(image_id, member_id)
        return _json(
            request, {"member": wire.encode_member(member)}, HTTPStatus.CREATED
        )

    @app.route("/images/<image_id>/members/<path:member_id>", methods=["GET"])
    async def get_member(
        self, request: IRequest, image_id: str, member_id: str
    ) -> bytes:
        member = await self.registry.get_member(image_id, member_id)
        return _json(request, {"member": wire.encode_member(member)})

    @app.route("/images/<image_id>/members/<path:member_id>", methods=["PUT"])
    async def update_member(
        self, request: IRequest, image_id: str, member_id: str
    ) -> bytes:
        status: Any = _body(request).get("status")  # the registry checks it
        member = await self.registry.update_member(image_id, member_id, status)
        return _json(request, {"member": wire.encode_member(member)})

    @app.route("/images/<image_id>/members/<path:member_id>", methods=["DELETE"])
    async def remove_member(
        self, request: IRequest, image_id: str, member_id: str
    ) -> bytes:
        await self.registry.remove_member(
            image_id, member_id, write_id=wire.decode_write_id(_arg(request, b"write_id"))
        )
        request.setResponseCode(HTTPStatus.NO_CONTENT)
        return b""


    # -- metadata definitions ------------------------------------------------------

    def _metadefs(self) -> IMetadefRegistry:
        if not IMetadefRegistry.providedBy(self.registry):
            raise NotFound("This registry keeps no metadata definitions")
        return self.registry  # type: ignore[return-value]

    @app.route("/metadefs/namespaces", methods=["GET"])
    async def list_namespaces(self, request: IRequest) -> bytes:
        raw = _raw_arg(request, b"query")
        if raw is None:
            raise BadRequest("A namespace listing needs its query")
        query = wire.decode_namespace_query(parse_json(raw, "the query parameter"))
        found = await self._metadefs().list_namespaces(query)
        return _json(request, {"namespaces": [wire.encode_record(n) for n in found]})

    @app.route("/metadefs/namespaces", methods=["POST"])
    async def create_namespace(self, request: IRequest) -> bytes:
        body = _body(request)
        created = await self._metadefs().create_namespace(
            wire.decode_content(body.get("content")),
            replace=wire.decode_flag(body.get("replace", False), "replace"),
        )
        return _json(request, {"namespace": wire.encode_record(created)}, HTTPStatus.CREATED)

    @app.route("/metadefs/namespaces/<namespace>", methods=["GET"])
    async def get_namespace(self, request: IRequest, namespace: str) -> bytes:
        found = await self._metadefs().get_namespace(namespace)
        return _json(request, {"namespace": wire.encode_record(found)})

    @app.route("/metadefs/namespaces/<namespace>", methods=["PUT"])
    async def update_namespace(self, request: IRequest, namespace: str) -> bytes:
        record = wire.decode_namespace(_body(request).get("namespace"))
        updated = await self._metadefs().update_namespace(namespace, record)
        return _json(request, {"namespace": wire.encode_record(updated)})

    @app.route("/metadefs/namespaces/<namespace>", methods=["DELETE"])
    async def delete_namespace(self, request: IRequest, namespace: str) -> bytes:
        await self._metadefs().delete_namespace(namespace)
        request.setResponseCode(HTTPStatus.NO_CONTENT)
        return b""

    @app.route("/metadefs/namespaces/<namespace>/definitions/<kind>", methods=["GET"])
    async def list_definitions(self, request: IRequest, namespace: str, kind: str) -> bytes:
        found = await self._metadefs().list_definitions(namespace, kind)
        return _json(request, {"definitions": [wire.encode_record(d) for d in found]})

    @app.route("/metadefs/namespaces/<namespace>/definitions/<kind>", methods=["POST"])
    async def create_definition(self, request: IRequest, namespace: str, kind: str) -> bytes:
        definition = wire.decode_definition(_body(request).get("definition"))
        if definition.kind != kind:
            raise BadRequest(f"A {definition.kind} posted to the {kind}s")
        created = await self._metadefs().create_definition(namespace, definition)
        return _json(request, {"definition": wire.encode_record(created)}, HTTPStatus.CREATED)

    @app.route("/metadefs/namespaces/<namespace>/definitions/<kind>", methods=["PUT"])
    async def replace_definitions(self, request: IRequest, namespace: str, kind: str) -> bytes:
        body = _body(request)
        values = body.get("definitions")
        if not isinstance(values, list):
            raise BadRequest("definitions must be a list")
        written = await self._metadefs().replace_definitions(
            namespace,
            kind,
            [wire.decode_definition(v) for v in values],
            append=wire.decode_flag(body.get("append", False), "append"),
        )
        return _json(request, {"definitions": [wire.encode_record(d) for d in written]})

    @app.route(
        "/metadefs/namespaces/<namespace>/definitions/<kind>/<path:name>", methods=["GET"]
    )
    async def get_definition(
        self, request: IRequest, namespace: str, kind: str, name: str
    ) -> bytes:
        found = await self._metadefs().get_definition(namespace, kind, name)
        return _json(request, {"definition": wire.encode_record(found)})

    @app.route(
        "/metadefs/namespaces/<namespace>/definitions/<kind>/<path:name>", methods=["PUT"]
    )
    async def update_definition(
        self, request: IRequest, namespace: str, kind: str, name: str
    ) -> bytes:
        definition = wire.decode_definition(_body(request).get("definition"))
        if definition.kind != kind:
            raise BadRequest(f"A {definition.kind} put to the {kind}s")
        updated = await self._metadefs().update_definition(namespace, name, definition)
        return _json(request, {"definition": wire.encode_record(updated)})

    @app.route(
        "/metadefs/namespaces/<namespace>/definitions/<kind>/<path:name>", methods=["DELETE"]
    )
    async def delete_definition(
        self, request: IRequest, namespace: str, kind: str, name: str
    ) -> bytes:
        await self._metadefs().delete_definition(namespace, kind, name)
        request.setResponseCode(HTTPStatus.NO_CONTENT)
        return b""

    @app.route("/metadefs/resource_types", methods=["GET"])
    async def list_resource_types(self, request: IRequest) -> bytes:
        found = await self._metadefs().list_resource_types()
        return _json(request, {"resource_types": [wire.encode_record(r) for r in found]})

    @app.route("/metadefs/associations", methods=["GET"])
    async def list_associations(self, request: IRequest) -> bytes:
        names = [
            raw.decode("utf-8", "replace") for raw in (request.args or {}).get(b"namespace", [])
        ]
        found = await self._metadefs().list_associations(names)
        return _json(
            request,
            {
                "associations": {
                    name: [wire.encode_record(a) for a in associations]
                    for name, associations in found.items()
                }
            },
        )

    @app.route("/metadefs/namespaces/<namespace>/associations", methods=["POST"])
    async def create_association(self, request: IRequest, namespace: str) -> bytes:
        association = wire.decode_association(_body(request).get("association"))
        created = await self._metadefs().create_association(namespace, association)
        return _json(
            request, {"association": wire.encode_record(created)}, HTTPStatus.CREATED
        )

    @app.route(
        "/metadefs/namespaces/<namespace>/associations/<path:resource_type>",
        methods=["DELETE"],
    )
    async def delete_association(
        self, request: IRequest, namespace: str, resource_type: str
    ) -> bytes:
        await self._metadefs().delete_association(namespace, resource_type)
        request.setResponseCode(HTTPStatus.NO_CONTENT)
        return b""


def registry_site(
    server: RegistryServer, reactor: Any, max_header_line: int = DEFAULT_MAX_HEADER_LINE
) -> Site:
    """
    The registry server's Site: a GlanceSite for its request ids and one
    log line per request (it has no upload routes), naming the API
    request each call is for (the x-openstack-request-id API nodes send).
    """
    site = GlanceSite(
        server.resource(),
        max_header_line=max_header_line,
        reactor=reactor,
        caller_request_ids=True,
        # API nodes keep idle connections for less (their
        # registry_client_pool_unused_timeout); closing them sooner would
        # race their reuse.
        client_limits=ClientLimits(http_keepalive_timeout=REGISTRY_KEEPALIVE_SECONDS),
    )
    site.displayTracebacks = False
    return site


class _TokenGate(Resource):
    """
    Lets a request through to the app only with the right bearer token;
    the health check is open, so a load balancer may probe it.
    """

    isLeaf = True

    def __init__(self, inner: IResource, token: bytes) -> None:
        super().__init__()
        self._inner = inner
        self._expected = wire.TOKEN_SCHEME + token

    def render(self, request: IRequest) -> Any:
        given = request.getHeader(wire.TOKEN_HEADER) or b""
        if request.path == b"/healthcheck" or hmac.compare_digest(
            given, self._expected
        ):
            return self._inner.render(request)
        # No error class: an API node must not pass a registry's 401 on to
        # its own client as if the client's credentials were wrong.
        request.setHeader(b"WWW-Authenticate", b'Bearer realm="glance-registry"')
        status = HTTPStatus.UNAUTHORIZED
        return _json(
            request,
            {
                "error": {
                    "code": status,
                    "title": status.phrase,
                    "message": "A valid registry token is required",
                }
            },
            status,
        )
