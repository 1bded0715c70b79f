"""
Who may see and change an image: Glance's default rules, in one place.

An admin sees and changes everything. Others see public and community
images and their own; they change only their own, and only an admin makes an
image public.
"""

from __future__ import annotations

from glance_tx.context import RequestContext
from glance_tx.errors import Forbidden, NotFound
from glance_tx.images import Image


def can_see(context: RequestContext, image: Image) -> bool:
    return (
        context.is_admin
        or image.visibility in ("public", "community")
        or (image.owner is not None and image.owner == context.project_id)
    )


def check_visible(context: RequestContext, image: Image) -> Image:
    """An image the caller may not see is, to them, not there at all."""
    if not can_see(context, image):
        raise NotFound(f"No image found with ID {image.id}")
    return image


def check_modifiable(context: RequestContext, image: Image) -> None:
    if not (context.is_admin or (image.owner is not None and image.owner == context.project_id)):
        raise Forbidden(f"You are not permitted to modify image {image.id}")


def check_publicize(context: RequestContext, visibility: str | None) -> None:
    if visibility == "public" and not context.is_admin:
        raise Forbidden("Only an admin can make an image public")


def check_deletable(context: RequestContext, image: Image) -> None:
    check_modifiable(context, image)
    if image.protected:
        raise Forbidden(f"Image {image.id} is protected and cannot be deleted")
