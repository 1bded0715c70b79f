"""
Who may see and change an image: Glance's default rules, in one place.

An admin sees and changes everything. Others see public and community
images, their own, and shared images they are a member of (whatever the
membership's status: accepting only decides what a listing shows). They
change only their own, and only an admin makes an image public.
"""

from __future__ import annotations

from glance_tx.context import RequestContext
from glance_tx.errors import Forbidden, NotFound
from glance_tx.images import Image, Member


def is_owner(context: RequestContext, image: Image) -> bool:
    return image.owner is not None and image.owner == context.project_id


def can_see(context: RequestContext, image: Image, membership: Member | None = None) -> bool:
    """
    C{membership} is the caller's project's membership of C{image}, when
    the caller looked it up; without it shared images are the owner's.
    """
    return (
        context.is_admin
        or image.visibility in ("public", "community")
        or is_owner(context, image)
        or (
            image.visibility == "shared"
            and membership is not None
            and membership.image_id == image.id
            and membership.member_id == context.project_id
        )
    )


def check_visible(
    context: RequestContext, image: Image, membership: Member | None = None
) -> Image:
    """An image the caller may not see is, to them, not there at all."""
    if not can_see(context, image, membership):
        raise NotFound(f"No image found with ID {image.id}")
    return image


def check_modifiable(context: RequestContext, image: Image) -> None:
    if not (context.is_admin or is_owner(context, image)):
        raise Forbidden(f"You are not permitted to modify image {image.id}")


def check_publicize(context: RequestContext, visibility: str | None) -> None:
    if visibility == "public" and not context.is_admin:
        raise Forbidden("Only an admin can make an image public")


def check_owner_change(context: RequestContext, image: Image | None, owner: str | None) -> None:
    """Only an admin gives an image to another project."""
    current = image.owner if image is not None else context.project_id
    if owner != current and not context.is_admin:
        raise Forbidden("Only an admin can set an image's owner to another project")


def check_admin(context: RequestContext, action: str) -> None:
    if not context.is_admin:
        raise Forbidden(f"Only an admin can {action}")


def check_set_location(context: RequestContext) -> None:
    """
    Only an admin may point an image at data elsewhere (v1's
    C{x-image-meta-location}, v2's C{/locations}): the server fetches the
    URL, and however well the address guard keeps it off internal networks,
    a user should not make it fetch arbitrary URLs on their behalf
    (Glance's C{set_image_location} policy).
    """
    if not context.is_admin:
        raise Forbidden("Only an admin may set an image's location")


def check_deletable(context: RequestContext, image: Image) -> None:
    check_modifiable(context, image)
    if image.protected:
        raise Forbidden(f"Image {image.id} is protected and cannot be deleted")
