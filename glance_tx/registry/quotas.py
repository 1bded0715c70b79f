"""
Glance's per-image quotas, enforced in one place for every API.

L{QuotaRegistry} wraps the registry the APIs use (v1, v2 and the uploader
all change images through it): a create, update, tag or member that would
leave an image with more members, properties, tags or locations than its
quota (L{glance_tx.config.ImageQuotas}) is refused with a 413 whose message
is Glance's ("... Attempted: N, Maximum: M"), before the wrapped registry is
asked, so nothing stored changes.

As in Glance, only growth past a quota is refused: an image already over
one (the quota was lowered) may still be changed, and shrink. The check
reads the image just before the change, so changes made at the same moment
can pass a quota together by what they add, as in Glance.
"""

from __future__ import annotations

from attrs import define
from twisted.internet.defer import Deferred
from twisted.python.components import proxyForInterface

from glance_tx.config import ImageQuotas
from glance_tx.errors import RequestEntityTooLarge
from glance_tx.images import Image, ImageUpdate, Member, apply_update
from glance_tx.project_limits import ProjectLimiter
from glance_tx.registry.interface import IRegistry

#: What each quota counts, in Glance's words.
_COUNTED = {
    "image_member_quota": "image members for this image",
    "image_property_quota": "image properties",
    "image_tag_quota": "image tags",
    "image_location_quota": "image locations",
}


class QuotaExceeded(RequestEntityTooLarge):
    """A change would put an image over one of its quotas."""

    def __init__(self, quota: str, attempted: int, maximum: int) -> None:
        super().__init__(
            f"The limit has been exceeded on the number of allowed {_COUNTED[quota]}. "
            f"Attempted: {attempted}, Maximum: {maximum}"
        )
        self.quota = quota


def _counts(image: Image) -> dict[str, int]:
    """What the image quotas count on C{image} (members are not on it)."""
    return {
        "image_property_quota": len(image.properties),
        "image_tag_quota": len(image.tags),
        "image_location_quota": len(image.locations),
    }


def check_growth(quotas: ImageQuotas, before: dict[str, int], after: dict[str, int]) -> None:
    """
    Refuse if a count in C{after} is over its quota and more than in
    C{before} (missing from C{before}: nothing before, a new image).
    """
    for quota, attempted in after.items():
        maximum: int = getattr(quotas, quota)
        if 0 <= maximum < attempted and attempted > before.get(quota, 0):
            raise QuotaExceeded(quota, attempted, maximum)


def _known_counts(update: ImageUpdate) -> dict[str, int] | None:
    """
    The counts an update sets whatever the image holds (a whole tag set, a
    whole location list, purged properties), or None when one depends on
    the image (properties merged into its own).
    """
    counts: dict[str, int] = {}
    if update.properties or update.purge_properties:
        if not update.purge_properties:
            return None
        counts["image_property_quota"] = sum(v is not None for v in update.properties.values())
    if update.tags is not None:
        counts["image_tag_quota"] = len(update.tags)
    if "locations" in update.fields:
        counts["image_location_quota"] = len(update.fields["locations"])
    return counts


# mypy cannot see through a base class made at run time; the class is
# checked as an IRegistry provider by verifyObject in the tests instead.
@define
class QuotaRegistry(proxyForInterface(IRegistry, "registry")):  # type: ignore[misc]
    """
    An L{IRegistry} that refuses, with L{QuotaExceeded}, a C{create},
    C{update}, C{add_tag} or C{add_member} that would pass a quota; every
    other method, and every change within the quotas, is the wrapped
    registry's own.
    """

    registry: IRegistry
    quotas: ImageQuotas
    #: Per-project limits: a create must fit the owner's image_count_total.
    limiter: ProjectLimiter | None = None

    def create(self, image: Image) -> Deferred[Image]:
        async def create() -> Image:
            check_growth(self.quotas, {}, _counts(image))
            if self.limiter is not None:
                await self.limiter.check_new_image(image.owner)
            return await self.registry.create(image)

        return Deferred.fromCoroutine(create())

    def update(
        self,
        image_id: str,
        update: ImageUpdate,
        expected_status: frozenset[str] | None = None,
        expected_version: int | None = None,
        write_id: str | None = None,
    ) -> Deferred[Image]:
        async def checked_update() -> Image:
            known = _known_counts(update)
            if known is None or any(
                0 <= getattr(self.quotas, quota) < count for quota, count in known.items()
            ):
                # Only then does the outcome depend on what the image holds.
                current = await self.registry.get(image_id)
                try:
                    after = apply_update(current, update)
                except TypeError:
                    after = current  # a malformed update: the registry says why
                check_growth(self.quotas, _counts(current), _counts(after))
            return await self.registry.update(
                image_id,
                update,
                expected_status=expected_status,
                expected_version=expected_version,
                write_id=write_id,
            )

        return Deferred.fromCoroutine(checked_update())

    def add_tag(self, image_id: str, tag: str) -> Deferred[Image]:
        async def add_tag() -> Image:
            if self.quotas.image_tag_quota >= 0:
                current = await self.registry.get(image_id)
                if tag not in current.tags:
                    check_growth(
                        self.quotas,
                        {"image_tag_quota": len(current.tags)},
                        {"image_tag_quota": len(current.tags) + 1},
                    )
            return await self.registry.add_tag(image_id, tag)

        return Deferred.fromCoroutine(add_tag())

    def add_member(self, image_id: str, member_id: str) -> Deferred[Member]:
        async def add_member() -> Member:
            if self.quotas.image_member_quota >= 0:
                members = await self.registry.list_members(image_id)
                if all(m.member_id != member_id for m in members):
                    check_growth(
                        self.quotas,
                        {"image_member_quota": len(members)},
                        {"image_member_quota": len(members) + 1},
                    )
            return await self.registry.add_member(image_id, member_id)

        return Deferred.fromCoroutine(add_member())

