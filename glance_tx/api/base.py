"""
What the v1 and v2 Klein apps share: their collaborators, and the one way
an API finds out who is asking and which image they may see, so that both
versions answer a request for an image alike.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from attrs import define, field
from klein import Klein
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from glance_tx import images
from glance_tx.config import CacheConfig, ImageFormatConfig
from glance_tx.context import RequestContext
from glance_tx.errors import BadRequest, NotFound, VersionConflict
from glance_tx.identity.interface import IIdentityResolver
from glance_tx.images import Image, ImageUpdate, Member
from glance_tx.locations import delete_data
from glance_tx.policy import Policy
from glance_tx.registry.interface import IRegistry
from glance_tx.store.backends import StoreMap
from glance_tx.uploads import Uploader

log = Logger()

T = TypeVar("T")

#: How many times a write to an image is made from a fresh read when other
#: changes keep landing between its read and its write (see
#: L{ImagesAPI._change_image}); past that, the registry's 409 is answered.
WRITE_ATTEMPTS = 5

#: The attribute of a request that keeps who asks (L{ImagesAPI._context}).
CONTEXT_ATTRIBUTE = "glance_tx_context"


@define
class ImagesAPI:
    """
    A Klein app over the images; subclasses set C{app}. Collaborators are
    injected; nothing global.
    """

    registry: IRegistry
    stores: StoreMap
    uploader: Uploader
    #: Who is asking (C{auth_strategy}'s provider, L{glance_tx.identity}).
    identity: IIdentityResolver
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    #: How responses are marked for caches (see glance_tx.api.http_cache).
    cache: CacheConfig = field(factory=CacheConfig)
    #: Glance's delayed delete: a deleted active image is left pending
    #: delete, its data for the scrubber (L{glance_tx.scrubber}).
    delayed_delete: bool = False
    #: The rules every decision asks (Glance's defaults, an operator's file).
    policy: Policy = field(factory=Policy)
    #: C{[image_format]}: the formats an image may declare, among others.
    image_format: ImageFormatConfig = field(factory=ImageFormatConfig)

    app: ClassVar[Klein]

    def resource(self) -> Any:
        return self.app.resource()

    async def _context(self, request: IRequest) -> RequestContext:
        """
        Who asks: the one place the API asks the identity provider. The
        answer is kept on the request (L{CONTEXT_ATTRIBUTE}), so a request
        whose handling asks more than once (an upload started before its
        route runs) costs one resolution (with Keystone, at most one
        validation). On the request rather than in a C{WeakKeyDictionary}
        keyed by it: no weak reference made and hashed per lookup.
        """
        context: RequestContext | None = getattr(request, CONTEXT_ATTRIBUTE, None)
        if context is None:
            context = await self.identity.resolve(request)
            setattr(request, CONTEXT_ATTRIBUTE, context)
        return context

    async def _image(
        self, request: IRequest, image_id: str, show_pending: bool = False
    ) -> tuple[RequestContext, Image]:
        """
        Who asks, and the image if they may see it; otherwise, as for an id
        that is no UUID or names no image, a 404 (as in Glance, v1 and v2).
        With C{show_pending}, an admin also sees an image pending delete
        (deleted, its data not yet scrubbed), as Glance's v1 shows admins.
        """
        context = await self._context(request)
        try:
            canonical = images.validate_image_id(image_id)
        except BadRequest:
            raise NotFound(f"No image found with ID {image_id}") from None
        try:
            image = await self.registry.get(canonical)
        except NotFound:
            if not (show_pending and context.is_admin):
                raise
            image = await self.registry.get(canonical, include_deleted=True)
            if image.status != images.PENDING_DELETE:
                raise
            return context, image
        if not self.policy.can_see(context, image):
            self.policy.check_visible(context, image, await self._membership(context, image))
        return context, image

    async def _change_image(
        self,
        request: IRequest,
        image_id: str,
        write: Callable[[RequestContext, Image], Awaitable[T]],
        show_pending: bool = False,
    ) -> T:
        """
        Read the image (as L{_image}) and hand it to C{write}, which makes
        its checks (policy, preconditions) against that record and writes
        with C{expected_version=image.version}. If another change landed
        in between (L{VersionConflict}), start again from a fresh read, so
        the checks hold for the record actually written: an C{If-Match}
        naming the representation read first is then a 412, a PATCH is
        applied to the new record (a property removed meanwhile is not
        brought back), a DELETE of an image protected meanwhile is a 403.
        Retried rather than a 409 at once: two requests that change
        different things do not conflict, and Glance applies both. At
        most L{WRITE_ATTEMPTS} reads; then the registry's 409.
        C{show_pending} as for L{_image}.
        """
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            context, image = await self._image(request, image_id, show_pending)
            try:
                return await write(context, image)
            except VersionConflict:
                if attempt == WRITE_ATTEMPTS:
                    raise
                log.debug(
                    "Image {image_id} changed during a write; retrying",
                    image_id=image.id,
                )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _delete(self, image: Image) -> None:
        """
        Remove the image's record if it is still the one read (else
        L{VersionConflict}), then its data from every store; with
        C{delayed_delete}, an active image with data is only marked
        C{pending_delete} (as Glance's C{Image.delete}), its data left for
        the scrubber. Either way it is gone for readers, and caching
        proxies are purged now (L{glance_tx.registry.purging}).
        """
        if self.delayed_delete and image.locations and image.status == images.ACTIVE:
            await self.registry.update(
                image.id,
                ImageUpdate(fields={"status": images.PENDING_DELETE}),
                expected_status=frozenset({images.ACTIVE}),
                expected_version=image.version,
            )
            return
        await self.registry.delete(image.id, expected_version=image.version)
        await delete_data(self.stores, image.id, image.locations)

    async def _membership(self, context: RequestContext, image: Image) -> Member | None:
        """The caller's project's membership of a shared image, if any."""
        if image.visibility != "shared" or context.project_id is None:
            return None
        try:
            return await self.registry.get_member(image.id, context.project_id)
        except NotFound:
            return None
