"""
What the v1 and v2 Klein apps share: their collaborators, and the one way
an API finds out who is asking and which image they may see, so that both
versions answer a request for an image alike.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

from attrs import define, field
from klein import Klein
from twisted.web.iweb import IRequest

from glance_tx import images, policy
from glance_tx.config import CacheConfig
from glance_tx.context import RequestContext
from glance_tx.errors import BadRequest, NotFound
from glance_tx.images import Image, ImageUpdate, Member
from glance_tx.locations import delete_data
from glance_tx.registry.interface import IRegistry
from glance_tx.store.backends import StoreMap
from glance_tx.uploads import Uploader


@define
class ImagesAPI:
    """
    A Klein app over the images; subclasses set C{app}. Collaborators are
    injected; nothing global.
    """

    registry: IRegistry
    stores: StoreMap
    uploader: Uploader
    default_project: str
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    #: How responses are marked for caches (see glance_tx.api.http_cache).
    cache: CacheConfig = field(factory=CacheConfig)
    #: Glance's delayed delete: a deleted active image is left pending
    #: delete, its data for the scrubber (L{glance_tx.scrubber}).
    delayed_delete: bool = False

    app: ClassVar[Klein]

    def resource(self) -> Any:
        return self.app.resource()

    def _context(self, request: IRequest) -> RequestContext:
        return RequestContext.from_request(request, self.default_project)

    async def _image(
        self, request: IRequest, image_id: str, show_pending: bool = False
    ) -> tuple[RequestContext, Image]:
        """
        Who asks, and the image if they may see it; otherwise, as for an id
        that is no UUID or names no image, a 404 (as in Glance, v1 and v2).
        With C{show_pending}, an admin also sees an image pending delete
        (deleted, its data not yet scrubbed), as Glance's v1 shows admins.
        """
        context = self._context(request)
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
        if not policy.can_see(context, image):
            policy.check_visible(context, image, await self._membership(context, image))
        return context, image

    async def _delete(self, image: Image) -> None:
        """
        Remove the image's record, then its data from every store; with
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
            )
            return
        await self.registry.delete(image.id)
        await delete_data(self.stores, image.id, image.locations)

    async def _membership(self, context: RequestContext, image: Image) -> Member | None:
        """The caller's project's membership of a shared image, if any."""
        if image.visibility != "shared" or context.project_id is None:
            return None
        try:
            return await self.registry.get_member(image.id, context.project_id)
        except NotFound:
            return None
