"""
Images API v2: the JSON API today's OpenStack tooling speaks.

Served under ``/v2``; the root resource moves that segment to C{prepath}, so
routes here start at ``/images``. Image data uploaded with ``PUT
/v2/images/{id}/file`` streams through an L{UploadRoute} (see
L{glance_tx.api.upload_routes}); the route handler then only finishes it. A failed
upload puts the image back to ``queued`` with no data left, as Glance v2
does. Downloads take the one streaming path every version shares
(L{glance_tx.api.downloads}).

The JSON shapes and refusals follow Glance: documents and schemas in
L{glance_tx.api.v2_schemas}, PATCH in L{glance_tx.api.v2_patch}, listing
parameters in L{glance_tx.api.v2_query}. An image id that is not a UUID is
simply not found (404), as in Glance, so clients that look an image up by
name first (openstacksdk's C{find_image}) fall back to a listing.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from attrs import Factory, define, field
from klein import Klein
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from glance_tx import images
from glance_tx.api import v2_info, v2_schemas, v2_tasks
from glance_tx.api.base import ImagesAPI
from glance_tx.api.downloads import serve_data
from glance_tx.api.errors import json_errors
from glance_tx.api.http_cache import (
    Validators,
    check_preconditions,
    data_validators,
    forbid_storing,
    listing_validators,
    metadata_cache_control,
    metadata_validators,
    serve_document,
    shareable,
)
from glance_tx.api.params import json_answer as _json
from glance_tx.api.params import parse_int
from glance_tx.api.params import read_object as _read_object
from glance_tx.api.params import request_body as _body
from glance_tx.api.site import StreamingRequest
from glance_tx.api.upload_routes import UploadRoutes
from glance_tx.api.urls import site_url
from glance_tx.api.v2_import import import_info_document, parse_import
from glance_tx.api.v2_patch import (
    ACCEPT_PATCH,
    Change,
    NewLocation,
    apply_patch,
    draft_for,
    parse_patch,
)
from glance_tx.api.v2_query import parse_query
from glance_tx.api.v2_task_routes import TasksAPI
from glance_tx.api.versions import versions_document
from glance_tx.config import ProjectLimits
from glance_tx.context import RequestContext
from glance_tx.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    GlanceError,
    NotFound,
    UnsupportedMediaType,
)
from glance_tx.images import Image, ImageUpdate, Location, Member, Viewer
from glance_tx.imports import (
    COPY_IMAGE,
    FAILED_IMPORT,
    GLANCE_DIRECT,
    IMPORTING_TO_STORES,
    WEB_DOWNLOAD,
    Importer,
    ImportJob,
    staged_record,
    staging_key,
)
from glance_tx.locations import LocationEdit
from glance_tx.project_limits import FixedLimits, ProjectLimiter
from glance_tx.request_ids import HEADER as REQUEST_ID_HEADER
from glance_tx.store.http import shown_url
from glance_tx.task_log import TaskLog
from glance_tx.tasks import API_IMAGE_IMPORT, TaskQuery
from glance_tx.uploads import Upload

log = Logger()

#: Core fields a create may set (id is checked on its own).
CREATE_FIELDS = (
    "name", "visibility", "protected", "os_hidden", "min_ram", "min_disk",
    "disk_format", "container_format",
)
#: How many image documents L{V2API._document} keeps (about 1 KiB each).
DOCUMENTS_KEPT = 4096
#: The statuses in which an image's only locations are its staged data,
#: which is not shown.
STAGED_STATUSES = frozenset({images.UPLOADING, images.IMAGE_IMPORTING})


def _timestamp(value: datetime) -> str:
    """ISO 8601 in UTC with a Z and no fraction, as Glance's isotime."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_view(
    image: Image,
    *,
    locations: bool = False,
    direct_url: bool = False,
    stores: bool = False,
    located: bool = True,
) -> dict[str, Any]:
    """
    The v2 image document: core fields, links, and extra properties as
    top-level strings; with C{locations}, the image's locations, and with
    C{direct_url}, its first one's URL (Glance's C{show_multiple_locations}
    and C{show_image_direct_url}). A caller who may not see where the data
    lives (not C{located}) gets, as from Glance, C{"locations": []} and no
    C{direct_url}. A URL is shown without what can hold a secret: no
    userinfo, no query (see L{shown_url}). With C{stores}, the ids of the
    stores that hold the data: Glance shows them only when several stores
    are enabled, and a client that sends back what it was shown
    (openstacksdk's C{update_image}) then fails with Glance's 409.
    """
    view: dict[str, Any] = {
        key: value
        for key, value in image.properties.items()
        # A property (set through v1) that shadows a core field is not shown.
        if key not in v2_schemas.BASE_PROPERTIES
    }
    view.update(
        {
            "id": image.id,
            "name": image.name,
            "status": image.status,
            "visibility": image.visibility,
            "protected": image.protected,
            "os_hidden": image.os_hidden,
            "checksum": image.checksum,
            "os_hash_algo": image.os_hash_algo,
            "os_hash_value": image.os_hash_value,
            "size": image.size,
            "virtual_size": image.virtual_size,
            "min_disk": image.min_disk,
            "min_ram": image.min_ram,
            "disk_format": image.disk_format,
            "container_format": image.container_format,
            "owner": image.owner,
            "tags": sorted(image.tags),
            "created_at": _timestamp(image.created_at),
            "updated_at": _timestamp(image.updated_at),
            "self": f"/v2/images/{image.id}",
            "file": f"/v2/images/{image.id}/file",
            "schema": "/v2/schemas/image",
        }
    )
    shown = () if image.status in STAGED_STATUSES else image.locations
    held = dict.fromkeys(loc.store for loc in shown if loc.store) if stores else {}
    if held:
        # Glance's form: the ids of the stores holding the data, comma-joined.
        view["stores"] = ",".join(held)
    if not located:
        shown = ()
    if locations:
        view["locations"] = [location_view(location) for location in shown]
    if direct_url and shown:
        view["direct_url"] = shown_url(shown[0].url)
    return view


def location_view(location: Location) -> dict[str, Any]:
    """One location as Glance shows it, the store id in its metadata."""
    metadata = dict(location.metadata)
    if location.store:
        metadata["store"] = location.store
    return {"url": shown_url(location.url), "metadata": metadata}


def member_view(member: Member) -> dict[str, Any]:
    return {
        "member_id": member.member_id,
        "image_id": member.image_id,
        "status": member.status,
        "created_at": _timestamp(member.created_at),
        "updated_at": _timestamp(member.updated_at),
        "schema": "/v2/schemas/member",
    }


def _opaque(validators: Validators) -> bytes:
    """A document's entity tag (every image document has one)."""
    etag = validators.etag
    assert etag is not None
    return etag.opaque.encode("ascii")


def _no_content(request: IRequest) -> bytes:
    request.setResponseCode(204)
    return b""


def _header(request: IRequest, name: bytes) -> str | None:
    values = request.requestHeaders.getRawHeaders(name)
    return values[-1].decode("latin-1").strip() if values else None


@define
class V2API(ImagesAPI):
    """The v2 Klein app."""

    app = json_errors(Klein())
    #: The requests whose bodies are image data (see upload_routes).
    uploads = UploadRoutes(app)

    #: Show admins each image's C{locations}, and let them add and remove
    #: locations (Glance's option; off by default, as there).
    show_multiple_locations: bool = False
    #: Show admins each image's C{direct_url} (Glance's option).
    show_image_direct_url: bool = False
    #: The per-project limits C{/v2/info/usage} reports (by default none).
    limiter: ProjectLimiter = field(
        default=Factory(
            lambda self: ProjectLimiter(self.registry, FixedLimits(ProjectLimits())), takes_self=True
        )
    )
    #: Runs interoperable imports; None serves none.
    importer: Importer | None = None
    #: Records tasks (imports', and the tasks API's); None: no tasks API.
    tasks: TaskLog | None = None
    #: The tasks API, mounted at C{/tasks} (None without C{tasks}).
    tasks_api: TasksAPI | None = field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        if self.tasks is not None:
            self.tasks_api = TasksAPI(
                tasks=self.tasks,
                registry=self.registry,
                stores=self.stores,
                policy=self.policy,
                context=self._context,
                new_image=self._new_image,
                importer=self.importer,
            )
    #: The documents made (see L{_document}): by image and whether the
    #: caller sees where the data lives, the record each was made from, its
    #: body and validators.
    _documents: dict[tuple[str, bool], tuple[Image, bytes, Validators]] = field(
        factory=dict, init=False
    )

    # -- helpers ------------------------------------------------------------

    def _base_url(self, request: IRequest) -> str:
        return site_url(request)

    def _located(self, context: RequestContext, image: Image) -> bool:
        """Whether this caller may see where C{image}'s data lives, if shown."""
        shown = self.show_multiple_locations or self.show_image_direct_url
        return shown and self.policy.sees_locations(context, image)

    def _view(self, context: RequestContext, image: Image) -> dict[str, Any]:
        """The image document for this caller (see L{_located})."""
        return self._image_view(image, self._located(context, image))

    def _image_view(self, image: Image, located: bool) -> dict[str, Any]:
        """
        Where the data lives is shown when the options say so, to whom
        C{get_image_location} allows (C{located}: by default an admin and
        the owner's project), as in Glance; C{stores} only when there is
        more than one (Glance: when C{enabled_backends} is set, which its
        one-store configuration leaves unset).
        """
        return image_view(
            image,
            locations=self.show_multiple_locations,
            direct_url=self.show_image_direct_url,
            located=located,
            stores=self.stores.several,
        )

    def _document(self, context: RequestContext, image: Image) -> tuple[bytes, Validators]:
        """
        The image JSON a GET sends this caller, and its validators: made
        once per record and view, and kept (L{DOCUMENTS_KEPT} of them) for
        as long as the registry returns an equal record. Every GET still
        reads the record: only the encoding and the ETag's digest are
        saved (a tenth of a GET's CPU).
        """
        key = (image.id, self._located(context, image))
        kept = self._documents.get(key)
        # The registry's reader gives the same object for an unchanged
        # row: identity first spares the field-by-field comparison
        # (a tenth of a 25-image page's CPU).
        if kept is not None and (kept[0] is image or kept[0] == image):
            return kept[1], kept[2]
        view = self._image_view(image, key[1])
        body = json.dumps(view).encode("utf-8")
        # What only an admin may see is kept out of shared caches.
        cache_control = metadata_cache_control(
            self.cache,
            public=shareable(image),
            admin_only=bool(view.get("locations")) or "direct_url" in view,
        )
        validators = metadata_validators(body, image.updated_at, cache_control)
        self._documents.pop(key, None)
        if len(self._documents) >= DOCUMENTS_KEPT:
            # The oldest made goes first.
            del self._documents[next(iter(self._documents))]
        self._documents[key] = (image, body, validators)
        return body, validators

    # -- versions and schemas -----------------------------------------------

    @app.route("/", methods=["GET"])
    def versions(self, request: IRequest) -> bytes:
        """openstacksdk (keystoneauth) discovers versions here."""
        document = versions_document(self._base_url(request), self.stores.several)
        return _json(request, document)

    @app.route("/schemas/<name>", methods=["GET"])
    async def schema(self, request: IRequest, name: str) -> bytes:
        await self._context(request)  # only for callers who authenticate, as in Glance
        make = v2_schemas.SCHEMAS.get(name)
        if make is None:
            raise NotFound(f"No schema named {name!r}")
        return _json(request, make(self.image_format))

    # -- images ---------------------------------------------------------------

    @app.route("/info/stores", methods=["GET"])
    async def stores_info(self, request: IRequest) -> bytes:
        """The stores an upload may name in C{X-Image-Meta-Store}."""
        await self._context(request)
        return _json(request, v2_info.stores_document(self.stores))

    @app.route("/info/usage", methods=["GET"])
    async def usage_info(self, request: IRequest) -> bytes:
        """The caller's project's limits and usage (Glance's unified-limit names)."""
        context = await self._context(request)
        return _json(request, await self.limiter.usage_document(context.project_id))

    @app.route("/info/stores/detail", methods=["GET"])
    async def stores_info_detail(self, request: IRequest) -> bytes:
        """Each store's type and set-up: for admins only, as in Glance."""
        if not self.policy.is_admin(await self._context(request)):
            raise Forbidden("Only an admin may see the stores' details")
        return _json(request, v2_info.stores_detail_document(self.stores))

    def _methods(self) -> tuple[str, ...]:
        return self.importer.offered if self.importer is not None else ()

    @app.route("/info/import", methods=["GET"])
    async def import_info(self, request: IRequest) -> bytes:
        """The import methods served (Glance's discovery document)."""
        await self._context(request)
        return _json(request, import_info_document(self._methods()))

    @app.route("/images", methods=["GET"])
    async def list_images(self, request: IRequest) -> bytes:
        forbid_storing(request)
        context = await self._context(request)
        self.policy.check_list(context)
        query = parse_query(request.args, Viewer(context.project_id, self.policy.is_admin(context)))
        found = await self.registry.list(query)
        params = [
            (key.decode("utf-8"), value.decode("utf-8"))
            for key, values in request.args.items()
            if key != b"marker"
            for value in values
        ]
        links: dict[str, Any] = {
            "first": "/v2/images" + (f"?{urlencode(params)}" if params else ""),
            "schema": "/v2/schemas/images",
        }
        if found and len(found) == query.limit:
            links["next"] = "/v2/images?" + urlencode([*params, ("marker", found[-1].id)])
        # The bytes json.dumps({"images": [...], **links}) gives, from each
        # image's document as a GET of it sends it (made once, see
        # _document): encoding the page's documents was a fifth of its CPU.
        documents = [self._document(context, image) for image in found]
        tail = json.dumps(links)[1:].encode("utf-8")
        body = b'{"images": [' + b", ".join(d[0] for d in documents) + b"], " + tail
        # The ETag from the documents' own digests and the links: the same
        # body, the same tag, without hashing the page's 17 KB again.
        pieces = [tail, *(_opaque(validators) for _, validators in documents)]
        return serve_document(
            request,
            body,
            b"application/json",
            listing_validators(body, found, self.cache, pieces),
        )

    @app.route("/images", methods=["POST"])
    async def create(self, request: IRequest) -> bytes:
        context = await self._context(request)
        image = self._new_image(context, _read_object(request))
        image = await self.registry.create(image)
        request.setHeader(b"Location", f"{self._base_url(request)}/v2/images/{image.id}".encode())
        request.setHeader(b"OpenStack-image-import-methods", ",".join(self._methods()).encode())
        return _json(request, self._view(context, image), 201)

    def _new_image(self, context: RequestContext, body: dict[str, Any]) -> Image:
        """An image from a create's body, refused as Glance refuses it."""
        for key in sorted(v2_schemas.DISALLOWED & set(body)):
            raise Forbidden(f"Attribute '{key}' is read-only.")
        v2_schemas.validate_image(body, self.image_format)
        for key in sorted(set(body) - {"id"}):
            if key in v2_schemas.READ_ONLY:
                raise Forbidden(f"Attribute '{key}' is read-only.")
            if key in v2_schemas.RESERVED or key.startswith(v2_schemas.RESERVED_PREFIX):
                raise Forbidden(f"Attribute '{key}' is reserved.")
            if key not in v2_schemas.BASE_PROPERTIES and len(key) > images.MAX_PROPERTY_LENGTH:
                raise BadRequest(
                    f"Custom property should not be greater than {images.MAX_PROPERTY_LENGTH} characters."
                )
        core = {key: body[key] for key in CREATE_FIELDS if key in body}
        owner = body.get("owner", context.project_id)
        self.policy.check_create(context, owner)
        self.policy.check_visibility(context, None, core.get("visibility"))
        properties = {
            key: value
            for key, value in body.items()
            if key not in v2_schemas.BASE_PROPERTIES and value is not None
        }
        now = self.clock()
        image = Image(
            id=images.validate_image_id(body["id"]) if "id" in body else images.new_image_id(),
            status=images.QUEUED,
            created_at=now,
            updated_at=now,
            owner=owner,
            properties=properties,
            tags=frozenset(body.get("tags", ())),
            **core,
        )
        images.check_image(image)
        return image

    @app.route("/images/<image_id>", methods=["GET"])
    async def show(self, request: IRequest, image_id: str) -> bytes:
        forbid_storing(request)
        context, image = await self._image(request, image_id)
        body, validators = self._document(context, image)
        return serve_document(request, body, b"application/json", validators)

    @app.route("/images/<image_id>", methods=["PATCH"])
    async def update(self, request: IRequest, image_id: str) -> bytes:
        """
        The patch is applied to the record read and written only if that
        record is still current, and preconditions are evaluated against
        the image JSON's validators of that record (see
        L{ImagesAPI._change_image}).
        """
        try:
            draft = draft_for(_header(request, b"content-type"))
        except UnsupportedMediaType:
            request.setHeader(b"Accept-Patch", ACCEPT_PATCH.encode("ascii"))
            raise
        changes = parse_patch(_body(request), draft, self.image_format)
        located = [change for change in changes if change.name == "locations"]

        async def write(context: RequestContext, image: Image) -> tuple[RequestContext, Image]:
            self.policy.check_modifiable(context, image)
            check_preconditions(request, self._document(context, image)[1])
            if located:
                self.policy.check_set_location(context, image)
                if not self.show_multiple_locations:
                    raise Forbidden(
                        "It's not allowed to change locations if locations are "
                        "invisible (show_multiple_locations is off)."
                    )
            update = apply_patch(image, changes)
            if "owner" in update.fields:
                self.policy.check_owner_change(context, image, update.fields["owner"])
            if "visibility" in update.fields:
                self.policy.check_visibility(context, image, update.fields["visibility"])
            if located:
                return context, await self._edit_locations(image, located, update)
            if not (update.fields or update.properties or update.tags is not None):
                return context, image
            return context, await self.registry.update(
                image.id, update, expected_version=image.version
            )

        context, image = await self._change_image(request, image_id, write)
        return _json(request, self._view(context, image))

    async def _edit_locations(
        self, image: Image, changes: list[Change], update: ImageUpdate
    ) -> Image:
        """Apply location changes in order; save them with C{update}."""
        edit = LocationEdit(image, self.stores)
        for change in changes:
            if change.op == "add":
                new: NewLocation = change.value
                await edit.add(
                    new.url,
                    store_id=new.store,
                    position=change.position,
                    validation=new.validation,
                    metadata=new.metadata,
                )
            elif change.op == "replace":
                await edit.replace(
                    [Location(n.url, n.store, n.metadata) for n in change.value]
                )
            else:
                edit.remove(change.position)
        return await edit.save(self.registry, update)

    @app.route("/images/<image_id>", methods=["DELETE"])
    async def delete(self, request: IRequest, image_id: str) -> bytes:
        """Preconditions are evaluated as for PATCH."""

        async def write(context: RequestContext, image: Image) -> None:
            self.policy.check_deletable(context, image)
            check_preconditions(request, self._document(context, image)[1])
            await self._delete(image)
            # Its documents are of no more use here.
            for located in (False, True):
                self._documents.pop((image.id, located), None)

        await self._change_image(request, image_id, write)
        return _no_content(request)

    @app.route("/stores/<store_id>/<image_id>", methods=["DELETE"])
    async def delete_from_store(self, request: IRequest, store_id: str, image_id: str) -> bytes:
        """
        Glance's delete-from-store (v2.10): remove an active image's data
        from one store, keeping its copies in the others; through the same
        L{LocationEdit} as PATCH's remove, so the data there is deleted
        once the record no longer names it.
        """
        if store_id not in self.stores.stores:
            raise Conflict(f"The selected store {store_id} is not available on this node.")

        async def write(context: RequestContext, image: Image) -> None:
            self.policy.check_delete_location(context, image)
            if image.status != images.ACTIVE:
                raise Conflict(
                    "It's not allowed to remove image data from store if image status is not 'active'"
                )
            held = [n for n, location in enumerate(image.locations) if location.store == store_id]
            if not held:
                raise Conflict(f"Image {image.id} is not present in store {store_id}")
            if len(image.locations) == 1:
                raise Forbidden(
                    "Cannot delete image data from the only store containing it. Consider "
                    "deleting the image instead if you want to remove all image data"
                )
            edit = LocationEdit(image, self.stores)
            edit.remove(held[0])
            await edit.save(self.registry)

        await self._change_image(request, image_id, write)
        return _no_content(request)

    # -- image data -----------------------------------------------------------

    async def _begin_upload(self, request: IRequest, image_id: str) -> Upload:
        """Every check an upload needs before its first byte, then start it."""
        self._check_octet_stream(request)
        expected_size = self._declared_size(request)

        async def start(context: RequestContext, image: Image) -> Upload:
            self.policy.check_upload(context, image)
            if image.status != images.QUEUED:
                raise Conflict(
                    f"Image {image.id} is {image.status}; data can only be uploaded "
                    "to a queued image"
                )
            missing = images.missing_formats(image)
            if missing:
                noun = "Property" if len(missing) == 1 else "Properties"
                raise BadRequest(f"{noun} {', '.join(missing)} must be set prior to saving data.")
            # A queued image's data has no representation yet (a GET is a 204).
            check_preconditions(request, None)
            return await self.uploader.start(
                image,
                store_id=_header(request, b"x-image-meta-store") or None,
                expected_size=expected_size,
                failure_status=images.QUEUED,
                expected_version=image.version,
            )

        return await self._change_image(request, image_id, start)

    def _declared_size(self, request: IRequest) -> int | None:
        """
        The size the client declares, in x-openstack-image-size (chunked
        uploads) or Content-Length; both must agree and fit the cap.
        """
        declared = _header(request, b"x-openstack-image-size")
        length = _header(request, b"content-length")
        return self.uploader.check_declared_size(
            "x-openstack-image-size",
            parse_int("x-openstack-image-size", declared) if declared else None,
            parse_int("Content-Length", length) if length else None,
        )

    @uploads.route("/images/<image_id>/file", "PUT", start=_begin_upload)
    async def upload(self, request: StreamingRequest, image_id: str) -> bytes:
        if request.upload_started is not None:
            upload = await request.upload_started
        else:
            # An empty body never reaches the upload route: an empty image.
            upload = await self._begin_upload(request, image_id)
        await upload.finish()
        return _no_content(request)

    # -- interoperable import -------------------------------------------------

    def _check_octet_stream(self, request: IRequest) -> None:
        content_type = (_header(request, b"content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/octet-stream":
            raise UnsupportedMediaType(
                "Image data must be sent as application/octet-stream, not "
                + (content_type or "no content type")
            )

    def _importer(self, method: str) -> Importer:
        if self.importer is None or method not in self.importer.offered:
            raise NotFound(f"The {method} import method is not enabled")
        return self.importer

    async def _begin_stage(self, request: IRequest, image_id: str) -> Upload:
        """
        A stage is an upload that leaves the image uploading, its data
        staged (L{glance_tx.imports}); it is neither inspected nor hashed
        until it is imported.
        """
        importer = self._importer(GLANCE_DIRECT)
        self._check_octet_stream(request)
        expected_size = self._declared_size(request)

        async def start(context: RequestContext, image: Image) -> Upload:
            self.policy.check_modifiable(context, image)
            if image.status != images.QUEUED:
                raise Conflict(f"Image {image.id} is {image.status}; only a queued image can be staged")
            return await self.uploader.start(
                image,
                store_id=importer.staging_store_id,
                expected_size=expected_size,
                failure_status=images.QUEUED,
                expected_version=image.version,
                working_status=images.UPLOADING,
                record=staged_record,
                key=staging_key(image.id),
                stages=(),
                size_limit="image_stage_total",
            )

        return await self._change_image(request, image_id, start)

    @uploads.route("/images/<image_id>/stage", "PUT", start=_begin_stage)
    async def stage(self, request: StreamingRequest, image_id: str) -> bytes:
        if request.upload_started is not None:
            upload = await request.upload_started
        else:
            upload = await self._begin_stage(request, image_id)
        await upload.finish()
        return _no_content(request)

    @app.route("/images/<image_id>/import", methods=["POST"])
    async def import_image(self, request: IRequest, image_id: str) -> bytes:
        """
        Check the import as Glance does, move the image on (glance-direct:
        uploading -> importing, web-download: queued -> importing,
        copy-image: stays active) and answer 202; the data moves in the
        background (L{Importer.start}).
        """
        body = _read_object(request)
        if self.importer is None:
            raise NotFound("Image import is not enabled")
        asked = parse_import(
            body, _header(request, b"x-image-meta-store"), self.importer.offered, self.stores
        )
        importer = self.importer

        async def begin(context: RequestContext, image: Image) -> ImportJob | None:
            stores = asked.stores
            if asked.method == COPY_IMAGE:
                self.policy.check_copy(context, image)
                if image.status != images.ACTIVE:
                    raise Conflict("Only images with status active can be targeted for copying")
                held = {loc.store for loc in image.locations}
                if asked.all_stores:
                    stores = tuple(s for s in stores if s not in held)
                    if not stores:
                        return None  # already everywhere, as Glance
                else:
                    for store_id in stores:
                        if store_id in held:
                            raise BadRequest(f"Image is already present at store '{store_id}'")
                if image.properties.get(IMPORTING_TO_STORES):
                    raise Conflict(f"Image {image.id} is being copied already")
                if not image.locations:
                    raise Conflict(f"Image {image.id} has no data to copy")
                source = image.locations[0]
                expected = images.ACTIVE
                fields: dict[str, Any] = {}
            else:
                self.policy.check_modifiable(context, image)
                if image.status == images.ACTIVE:
                    raise Conflict("Image with status active cannot be target for import")
                if asked.method == WEB_DOWNLOAD and image.status != images.QUEUED:
                    raise Conflict(f"Image needs to be in 'queued' state to use '{asked.method}' method")
                if asked.method == GLANCE_DIRECT and (
                    image.status != images.UPLOADING or not image.locations
                ):
                    raise Conflict("Image needs to be staged before 'glance-direct' method can be used")
                for name in ("container_format", "disk_format"):
                    if not getattr(image, name):
                        raise Conflict(f"'{name}' needs to be set before import")
                source = (
                    image.locations[0] if asked.method == GLANCE_DIRECT else Location(asked.uri or "")
                )
                expected = image.status
                fields = {"status": images.IMAGE_IMPORTING}
            # Leased before the image moves on, so an importing image never
            # lacks its lease (L{glance_tx.imports}).
            await importer.hold(image.id, asked.method)
            try:
                image = await self.registry.update(
                    image.id,
                    ImageUpdate(
                        fields=fields,
                        properties={IMPORTING_TO_STORES: ",".join(stores), FAILED_IMPORT: ""},
                    ),
                    expected_status=frozenset({expected}),
                    expected_version=image.version,
                )
                task_id = await self._import_task(request, context, image, body, stores)
            except BaseException:
                await importer.release(image.id)
                raise
            return ImportJob(
                image=image,
                method=asked.method,
                source=source,
                stores=stores,
                all_stores_must_succeed=asked.all_stores_must_succeed,
                task_id=task_id,
            )

        job = await self._change_image(request, image_id, begin)
        if job is not None:
            importer.start(job)
        request.setResponseCode(202)
        return b""

    async def _import_task(
        self,
        request: IRequest,
        context: RequestContext,
        image: Image,
        body: dict[str, Any],
        stores: tuple[str, ...],
    ) -> str | None:
        """
        The import's C{api_image_import} task, in Glance's shape (its input
        the image id, the request's body and the stores; its request id the
        one this response carries), or None if it could not be recorded:
        the import goes on without one.
        """
        if self.tasks is None:
            return None
        request_ids = request.responseHeaders.getRawHeaders(REQUEST_ID_HEADER)
        try:
            task = await self.tasks.new(
                API_IMAGE_IMPORT,
                owner=context.project_id,
                input={"image_id": image.id, "import_req": body, "backend": list(stores)},
                image_id=image.id,
                user_id=context.user_id,
                request_id=request_ids[0].decode("ascii") if request_ids else None,
            )
        except GlanceError as e:
            log.warn("Import task of {image_id} not recorded: {e}", image_id=image.id, e=e.message)
            return None
        return task.id

    # -- tasks ------------------------------------------------------------------

    def _tasks(self) -> TaskLog:
        if self.tasks is None:
            raise NotFound("The tasks API is not enabled")
        return self.tasks

    @app.route("/images/<image_id>/tasks", methods=["GET"])
    async def image_tasks(self, request: IRequest, image_id: str) -> bytes:
        """
        The image's tasks (Images API 2.12), as Glance's C{get_task_info}:
        for whoever may see the image, the tasks an admin or the task's
        own project sees.
        """
        forbid_storing(request)
        context, image = await self._image(request, image_id)
        found = await self._tasks().registry.list_tasks(TaskQuery(image_id=image.id, sort_dir="asc"))
        admin = self.policy.is_admin(context)
        return _json(
            request,
            {
                "tasks": [
                    v2_tasks.image_task_view(task)
                    for task in found
                    if admin or task.owner is None or task.owner == context.project_id
                ]
            },
        )

    @app.route("/tasks", branch=True)
    def task_routes(self, request: IRequest) -> Any:
        """The tasks API, its own Klein app (L{glance_tx.api.v2_task_routes})."""
        if self.tasks_api is None:
            raise NotFound("The tasks API is not enabled")
        return self.tasks_api.resource()

    @app.route("/images/<image_id>/file", methods=["GET", "HEAD"])
    async def download(self, request: IRequest, image_id: str) -> bytes | None:
        forbid_storing(request)
        context, image = await self._image(request, image_id)
        self.policy.check_download(context, image)
        if image.status == images.DEACTIVATED and not self.policy.is_admin(context):
            raise Forbidden(
                "The requested image has been deactivated. Image data download is forbidden."
            )
        if not image.locations or image.status not in (images.ACTIVE, images.DEACTIVATED):
            return _no_content(request)
        await serve_data(
            request, image, self.stores, data_validators(image, self.cache), hex_md5=True
        )
        return None

    # -- tags -------------------------------------------------------------------

    @app.route("/images/<image_id>/tags/<tag>", methods=["PUT"])
    async def add_tag(self, request: IRequest, image_id: str, tag: str) -> bytes:
        context, image = await self._image(request, image_id)
        self.policy.check_modifiable(context, image)
        v2_schemas.validate_image({"tags": [tag]})
        await self.registry.add_tag(image.id, tag)
        return _no_content(request)

    @app.route("/images/<image_id>/tags/<tag>", methods=["DELETE"])
    async def delete_tag(self, request: IRequest, image_id: str, tag: str) -> bytes:
        context, image = await self._image(request, image_id)
        self.policy.check_modifiable(context, image)
        await self.registry.remove_tag(image.id, tag)
        return _no_content(request)

    # -- members ----------------------------------------------------------------

    async def _shared(self, request: IRequest, image_id: str) -> tuple[RequestContext, Image]:
        context, image = await self._image(request, image_id)
        if image.visibility != "shared":
            raise Forbidden(f"Only shared images have members; image {image.id} is {image.visibility}.")
        return context, image

    def _manages_members(self, context: RequestContext, image: Image) -> bool:
        return self.policy.manages_members(context, image)

    @app.route("/images/<image_id>/members", methods=["POST"])
    async def add_member(self, request: IRequest, image_id: str) -> bytes:
        body = _read_object(request)
        if "member" not in body:
            raise BadRequest("Member to be added not specified")
        member_id = body["member"]
        if not member_id:
            raise BadRequest("Member can't be empty")
        if not isinstance(member_id, str) or len(member_id) > 255:
            raise BadRequest("Member must be a project id of at most 255 characters")
        context, image = await self._shared(request, image_id)
        if not self._manages_members(context, image):
            raise Forbidden(f"Not allowed to create members for image {image.id}.")
        member = await self.registry.add_member(image.id, member_id)
        return _json(request, member_view(member))

    @app.route("/images/<image_id>/members", methods=["GET"])
    async def list_members(self, request: IRequest, image_id: str) -> bytes:
        context, image = await self._shared(request, image_id)
        members = await self.registry.list_members(image.id)
        if not self.policy.reads_members(context, image):
            # A member sees its own membership only.
            members = [m for m in members if m.member_id == context.project_id]
        return _json(
            request,
            {"members": [member_view(m) for m in members], "schema": "/v2/schemas/members"},
        )

    @app.route("/images/<image_id>/members/<member_id>", methods=["GET"])
    async def show_member(self, request: IRequest, image_id: str, member_id: str) -> bytes:
        try:
            context, image = await self._shared(request, image_id)
        except Forbidden as e:
            # As Glance: no hint that an image the caller may see exists.
            raise NotFound(e.message) from None
        if not (self.policy.reads_members(context, image) or member_id == context.project_id):
            raise NotFound(f"{member_id} not found in the member list of the image {image.id}.")
        return _json(request, member_view(await self.registry.get_member(image.id, member_id)))

    @app.route("/images/<image_id>/members/<member_id>", methods=["PUT"])
    async def update_member(self, request: IRequest, image_id: str, member_id: str) -> bytes:
        body = _read_object(request)
        if "status" not in body:
            raise BadRequest("Status not specified")
        status = body["status"]
        if not isinstance(status, str) or status not in images.MEMBER_STATUSES:
            raise BadRequest('Status must be "pending", "accepted" or "rejected".')
        context, image = await self._shared(request, image_id)
        if not (self._manages_members(context, image) or member_id == context.project_id):
            raise NotFound(f"{member_id} not found in the member list of the image {image.id}.")
        await self.registry.get_member(image.id, member_id)
        if not self.policy.may_answer_for(context, image, member_id):
            raise Forbidden(
                f"Not allowed to update members for image {image.id}: only the "
                "member itself accepts or rejects an image."
            )
        member = await self.registry.update_member(image.id, member_id, status)
        return _json(request, member_view(member))

    @app.route("/images/<image_id>/members/<member_id>", methods=["DELETE"])
    async def remove_member(self, request: IRequest, image_id: str, member_id: str) -> bytes:
        context, image = await self._shared(request, image_id)
        if not (self._manages_members(context, image) or member_id == context.project_id):
            raise NotFound(f"{member_id} not found in the member list of the image {image.id}.")
        await self.registry.get_member(image.id, member_id)
        if not self._manages_members(context, image):
            raise Forbidden(f"Not allowed to delete members for image {image.id}.")
        await self.registry.remove_member(image.id, member_id)
        return _no_content(request)

    # -- actions ----------------------------------------------------------------

    @app.route("/images/<image_id>/actions/deactivate", methods=["POST"])
    async def deactivate(self, request: IRequest, image_id: str) -> bytes:
        await self._transition(request, image_id, "deactivate", images.ACTIVE, images.DEACTIVATED)
        return _no_content(request)

    @app.route("/images/<image_id>/actions/reactivate", methods=["POST"])
    async def reactivate(self, request: IRequest, image_id: str) -> bytes:
        await self._transition(request, image_id, "reactivate", images.DEACTIVATED, images.ACTIVE)
        return _no_content(request)

    async def _transition(
        self, request: IRequest, image_id: str, action: str, source: str, target: str
    ) -> None:
        """Glance's actions (C{deactivate}/C{reactivate} rules); a no-op when already done; 403 otherwise."""
        context, image = await self._image(request, image_id)
        self.policy.check_action(context, image, action)
        if image.status == target:
            return
        if image.status != source:
            raise Forbidden(f"Not allowed to {action} image in status '{image.status}'")
        try:
            await self.registry.update(
                image.id,
                ImageUpdate(fields={"status": target}),
                expected_status=frozenset({source}),
            )
        except Conflict:
            current = await self.registry.get(image.id)
            if current.status != target:
                raise
