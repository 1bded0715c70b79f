"""
Images API v1: the original ``x-image-meta-*`` header API.

Served under ``/v1/images`` and, as the first Glance did, ``/images``; the
root resource strips the version prefix, so routes here start at
``/images``. Uploads with a body stream to the store as they arrive (see
L{glance_tx.api.upload_routes}); the route handlers then only finish them.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import define
from klein import Klein
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from glance_tx import images
from glance_tx.api.base import ImagesAPI
from glance_tx.api.downloads import check_downloadable, serve_data
from glance_tx.api.errors import json_errors
from glance_tx.api.http_cache import (
    Validators,
    check_preconditions,
    forbid_storing,
    listing_validators,
    not_modified,
    serve_document,
)
from glance_tx.api.params import parse_int
from glance_tx.api.site import StreamingRequest
from glance_tx.api.upload_routes import UploadRoutes
from glance_tx.api.urls import site_url
from glance_tx.api.v1_meta import (
    V1Meta,
    brief_document,
    image_document,
    image_validators,
    parse_bool,
    parse_headers,
    set_image_headers,
)
from glance_tx.context import RequestContext
from glance_tx.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    GlanceError,
    InvalidImageData,
    LengthRequired,
    NotFound,
    UnsupportedMediaType,
)
from glance_tx.images import Image, ImageQuery, ImageUpdate, Viewer
from glance_tx.locations import LocationEdit, Validation
from glance_tx.uploads import Upload

_V1_FILTERS = ("name", "status", "container_format", "disk_format")
_V1_INT_FILTERS = ("min_ram", "min_disk")
_V1_SORT_KEYS = (
    "id", "name", "status", "disk_format", "container_format", "size",
    "created_at", "updated_at",
)


def _json(request: IRequest, document: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(document).encode("utf-8")


async def _finished(upload: Upload) -> Image:
    """Finish an upload; content refused is a 400 in v1 (v2 says 415)."""
    try:
        return await upload.finish()
    except InvalidImageData as e:
        raise BadRequest(e.message) from None


#: Glance v1's words for a format an image lacks (its
#: C{_validate_image_for_activation}).
_UNSPECIFIED = {
    "disk_format": "Disk format is not specified.",
    "container_format": "Container format is not specified.",
}


def _check_formats(image: Image) -> None:
    """
    Image data, uploaded or at a location, needs both formats set: in the
    record, or by this request's headers (C{image} is the record as the
    request leaves it). A 400 before anything is stored, as in Glance.
    """
    missing = images.missing_formats(image)
    if missing:
        raise BadRequest(" ".join(_UNSPECIFIED[name] for name in missing))


def _arg(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode("utf-8"))
    return values[-1].decode("utf-8") if values else None


@define
class V1API(ImagesAPI):
    """The v1 Klein app."""

    app = json_errors(Klein())
    #: The requests whose bodies are image data (see upload_routes).
    uploads = UploadRoutes(app)

    # -- helpers ------------------------------------------------------------

    def _representation(self, image: Image) -> tuple[Headers, Validators]:
        """
        The x-image-meta-* headers a GET or HEAD of the image sends, and
        its validators.
        """
        metadata = Headers()
        set_image_headers(metadata, image)
        return metadata, image_validators(image, metadata, self.cache)

    def _base_url(self, request: IRequest) -> str:
        return site_url(request) + "/v1"

    def _check_upload_request(self, request: IRequest, meta: V1Meta) -> int | None:
        """Refusals that need no lookup: content type, declared sizes."""
        content_type = request.requestHeaders.getRawHeaders(b"content-type")
        if content_type and content_type[0].split(b";")[0].strip().lower() != b"application/octet-stream":
            raise UnsupportedMediaType(
                "Image data must be sent as application/octet-stream, not "
                + content_type[0].decode("latin-1")
            )
        if meta.location is not None:
            raise BadRequest(
                "Send either image data in the body or x-image-meta-location, not both"
            )
        length = request.requestHeaders.getRawHeaders(b"content-length")
        content_length = (
            parse_int("Content-Length", length[0].decode("latin-1")) if length else None
        )
        return self.uploader.check_declared_size("x-image-meta-size", meta.size, content_length)

    def _new_image(self, context: RequestContext, meta: V1Meta) -> Image:
        self.policy.check_create(context, meta.core.get("owner"))
        self.policy.check_visibility(context, None, meta.core.get("visibility"))
        core = dict(meta.core)
        core.setdefault("owner", context.project_id)
        now = self.clock()
        image = Image(
            id=meta.image_id or images.new_image_id(),
            status=images.QUEUED,
            created_at=now,
            updated_at=now,
            properties=meta.properties,
            **core,
        )
        images.check_image(image)
        return image

    def _changes(
        self, request: IRequest, context: RequestContext, image: Image, meta: V1Meta
    ) -> ImageUpdate:
        """
        What a PUT of C{image} asks to change, once the caller may change
        it and the request's preconditions hold against what a HEAD of
        this record sends. The caller writes with C{expected_version}
        (see L{ImagesAPI._change_image}), so they hold for what is written.
        """
        purge = parse_bool("purge-props", _header(request, b"x-glance-registry-purge-props") or "false")
        self.policy.check_modifiable(context, image)
        self.policy.check_visibility(context, image, meta.core.get("visibility"))
        if "owner" in meta.core:
            self.policy.check_owner_change(context, image, meta.core["owner"])
        check_preconditions(request, self._representation(image)[1])
        return ImageUpdate(fields=meta.core, properties=meta.properties, purge_properties=purge)

    async def _register_location(self, image: Image, meta: V1Meta, update: ImageUpdate) -> Image:
        """
        Make a queued image active with data that already lives elsewhere
        (v1 sets the one location of an image that has none).
        """
        assert meta.location is not None
        if image.status != images.QUEUED:
            raise Conflict(f"Image {image.id} is {image.status}; a location can only be set on a queued image")
        edit = LocationEdit(image, self.stores)
        await edit.add(
            meta.location,
            store_id=meta.store,
            declared_size=meta.size,
            validation=Validation(checksum=meta.checksum),
        )
        return await edit.save(self.registry, update)

    # -- uploads, started before the body arrives ---------------------------

    async def _start_create(self, request: StreamingRequest) -> Upload:
        context = await self._context(request)
        meta = parse_headers(request.requestHeaders, self.image_format)
        expected_size = self._check_upload_request(request, meta)
        image = self._new_image(context, meta)
        _check_formats(image)
        return await self._start_upload(await self.registry.create(image), meta, expected_size, None)

    async def _start_update(self, request: StreamingRequest, image_id: str) -> Upload:
        meta = parse_headers(request.requestHeaders, self.image_format)
        expected_size = self._check_upload_request(request, meta)

        async def start(context: RequestContext, image: Image) -> Upload:
            changes = self._changes(request, context, image, meta)
            self.policy.check_upload(context, image)
            _check_formats(images.apply_update(image, changes))
            return await self._start_upload(image, meta, expected_size, changes)

        return await self._change_image(request, image_id, start)

    async def _start_upload(
        self, image: Image, meta: V1Meta, expected_size: int | None, changes: ImageUpdate | None
    ) -> Upload:
        """
        v1 uploads: a failed one leaves the image killed. Only from the
        record read (C{expected_version}).
        """
        return await self.uploader.start(
            image,
            store_id=meta.store,
            expected_size=expected_size,
            expected_checksum=meta.checksum,
            failure_status=images.KILLED,
            changes=changes,
            expected_version=image.version,
        )

    # -- routes ---------------------------------------------------------------

    @app.route("/images", methods=["GET", "HEAD"])
    async def list_brief(self, request: IRequest) -> bytes:
        forbid_storing(request)
        found = await self.registry.list(await self._query(request))
        return self._listing(request, found, [brief_document(i) for i in found])

    @app.route("/images/detail", methods=["GET", "HEAD"])
    async def list_detail(self, request: IRequest) -> bytes:
        forbid_storing(request)
        found = await self.registry.list(await self._query(request))
        return self._listing(request, found, [image_document(i) for i in found])

    def _listing(self, request: IRequest, found: list[Image], documents: list[Any]) -> bytes:
        """A listing, with validators: it is only ever the caller's."""
        body = json.dumps({"images": documents}).encode("utf-8")
        validators = listing_validators(body, found, self.cache)
        return serve_document(request, body, b"application/json", validators)

    async def _query(self, request: IRequest) -> ImageQuery:
        context = await self._context(request)
        self.policy.check_list(context)
        filters: dict[str, Any] = {}
        for name in _V1_FILTERS:
            value = _arg(request, name)
            if value is not None:
                filters[name] = value
        for name in _V1_INT_FILTERS:
            value = _arg(request, name)
            if value is not None:
                filters[name] = parse_int(name, value, images.MAX_INT)
        viewer = Viewer(context.project_id, self.policy.is_admin(context))
        # Glance v1's default: what the caller can use (public, own, shared
        # and accepted); is_public=none widens to everything visible.
        visibility = None
        is_public = _arg(request, "is_public")
        if is_public is not None:
            if is_public.lower() == "none":
                visibility = "all"
            elif parse_bool("is_public", is_public):
                filters["visibility"] = "public"
            else:
                filters["visibility"] = frozenset({"private", "shared", "community"})
        properties = {
            key.decode("utf-8")[len("property-"):]: values[-1].decode("utf-8")
            for key, values in request.args.items()
            if key.startswith(b"property-")
        }
        sizes: dict[str, int] = {}
        for name in ("size_min", "size_max"):
            value = _arg(request, name)
            if value is not None:
                sizes[name] = parse_int(name, value, images.MAX_SIZE)
        sort_key = _arg(request, "sort_key") or "created_at"
        if sort_key not in _V1_SORT_KEYS:
            raise BadRequest(f"sort_key must be one of {', '.join(_V1_SORT_KEYS)}")
        sort_dir = (_arg(request, "sort_dir") or "desc").lower()
        if sort_dir not in ("asc", "desc"):
            raise BadRequest("sort_dir must be asc or desc")
        marker = _arg(request, "marker")
        limit = _arg(request, "limit")
        return ImageQuery(
            filters=filters,
            properties=properties,
            sort=((sort_key, sort_dir),),
            marker=images.validate_image_id(marker) if marker is not None else None,
            limit=parse_int("limit", limit, images.MAX_LIMIT) if limit is not None else images.DEFAULT_LIMIT,
            viewer=viewer,
            visibility=visibility,
            size_min=sizes.get("size_min"),
            size_max=sizes.get("size_max"),
        )

    @uploads.route("/images", "POST", start=_start_create)
    async def create(self, request: StreamingRequest) -> bytes:
        if request.upload_started is not None:
            image = await _finished(await request.upload_started)
        else:
            _check_framed(request)
            context = await self._context(request)
            meta = parse_headers(request.requestHeaders, self.image_format)
            if meta.location is not None:
                self.policy.check_set_location(context)
            image = self._new_image(context, meta)
            if meta.location is not None:
                _check_formats(image)
            image = await self.registry.create(image)
            if meta.location is not None:
                try:
                    image = await self._register_location(image, meta, ImageUpdate())
                except GlanceError:
                    await self.registry.update(image.id, ImageUpdate(fields={"status": images.KILLED}))
                    raise
        request.setHeader(b"Location", f"{self._base_url(request)}/images/{image.id}".encode())
        return _json(request, {"image": image_document(image)}, 201)

    @uploads.route("/images/<image_id>", "PUT", start=_start_update)
    async def update(self, request: StreamingRequest, image_id: str) -> bytes:
        if request.upload_started is not None:
            image = await _finished(await request.upload_started)
            return _json(request, {"image": image_document(image)})
        _check_framed(request)
        meta = parse_headers(request.requestHeaders, self.image_format)
        if meta.location is not None:
            self.policy.check_set_location(await self._context(request))

        async def write(context: RequestContext, image: Image) -> Image:
            changes = self._changes(request, context, image, meta)
            if meta.location is not None:
                _check_formats(images.apply_update(image, changes))
                return await self._register_location(image, meta, changes)
            return await self.registry.update(
                image.id, changes, expected_version=image.version
            )

        image = await self._change_image(request, image_id, write)
        return _json(request, {"image": image_document(image)})

    @app.route("/images/<image_id>", methods=["GET", "HEAD"])
    async def show(self, request: IRequest, image_id: str) -> bytes:
        """
        GET sends the data, HEAD the headers GET would send; both describe
        the image in x-image-meta-* headers. HEAD also describes an image
        with no data to send (GET refuses it), and, to admins, one pending
        delete (a GET of it is a 404, as in Glance).
        """
        forbid_storing(request)
        context, image = await self._image(request, image_id, show_pending=True)
        if image.deleted and request.method != b"HEAD":
            raise NotFound(f"No image found with ID {image.id}")
        if request.method != b"HEAD":
            self.policy.check_download(context, image)
            check_downloadable(image)
        metadata, validators = self._representation(image)
        if image.status == images.ACTIVE:
            await serve_data(request, image, self.stores, validators, metadata=metadata)
            return b""
        if not_modified(request, validators):
            return b""
        for name, values in metadata.getAllRawHeaders():
            request.responseHeaders.setRawHeaders(name, values)
        validators.apply(request)
        request.setHeader(b"Content-Type", b"application/octet-stream")
        return b""

    @app.route("/images/<image_id>", methods=["DELETE"])
    async def delete(self, request: IRequest, image_id: str) -> bytes:
        """
        Preconditions are evaluated as for PUT. An image pending delete
        cannot be deleted again (403 to an admin, who sees it; 404 to
        others), as in Glance.
        """

        async def write(context: RequestContext, image: Image) -> None:
            if image.status == images.PENDING_DELETE:
                raise Forbidden(f"Forbidden to delete a {image.status} image.")
            self.policy.check_deletable(context, image)
            check_preconditions(request, self._representation(image)[1])
            await self._delete(image)

        await self._change_image(request, image_id, write, show_pending=True)
        request.setResponseCode(200)
        return b""


def _check_framed(request: IRequest) -> None:
    """
    A request that says it carries image data but gives neither a
    Content-Length nor chunked encoding has no body HTTP can find.
    """
    headers = request.requestHeaders
    content_type = headers.getRawHeaders(b"content-type")
    if (
        content_type
        and content_type[0].split(b";")[0].strip().lower() == b"application/octet-stream"
        and not headers.hasHeader(b"content-length")
        and not headers.hasHeader(b"transfer-encoding")
    ):
        raise LengthRequired(
            "Image data needs a Content-Length or chunked Transfer-Encoding"
        )


def _header(request: IRequest, name: bytes) -> str | None:
    values = request.requestHeaders.getRawHeaders(name)
    return values[-1].decode("utf-8") if values else None
