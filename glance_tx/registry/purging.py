"""
A registry that purges caching proxies when an image stops being readable
by someone who could read it before.

L{PurgingRegistry} wraps another L{IRegistry}: it answers exactly as the
wrapped one does, and after a change that takes an image away from some
readers it asks an L{IPurger} to make the proxies forget the image. The
API code sees only an L{IRegistry}, so it needs no change to purge.
"""

from __future__ import annotations

from typing import TypeVar

from attrs import define
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.components import proxyForInterface

from glance_tx.images import (
    DEACTIVATED,
    DELETED,
    PENDING_DELETE,
    Image,
    ImageUpdate,
    Member,
)
from glance_tx.purge import IPurger
from glance_tx.registry.interface import IRegistry

log = Logger()
T = TypeVar("T")

#: Statuses in which an image's data is no longer served.
UNSERVED_STATUSES = frozenset({DEACTIVATED, PENDING_DELETE, DELETED})

#: Visibilities a shared cache may not serve to everyone: an image that
#: becomes one of these may have been cached while public or community.
RESTRICTED_VISIBILITIES = frozenset({"shared", "private"})

#: The member status that gives a project access; any other takes it away.
ACCEPTED = "accepted"


def hides_image(update: ImageUpdate, image: Image) -> bool:
    """
    Whether C{update}, which left the image as C{image}, may have taken it
    away from someone a proxy could have served it to: it was deleted or
    deactivated (or is pending delete), or its visibility was set to shared
    or private. A visibility set to its old value also counts: the registry
    does not say what it was, and a needless purge is harmless.
    """
    if "status" in update.fields and image.status in UNSERVED_STATUSES:
        return True
    return "visibility" in update.fields and image.visibility in RESTRICTED_VISIBILITIES


# mypy cannot see through a base class made at run time; the class is
# checked as an IRegistry provider by verifyObject in the tests instead.
@define
class PurgingRegistry(proxyForInterface(IRegistry, "registry")):  # type: ignore[misc]
    """
    An L{IRegistry} that purges after a successful:

      - C{delete}, or C{update} to status deleted;
      - C{update} to status deactivated or pending_delete;
      - C{update} that sets visibility to shared or private;
      - C{remove_member}, or C{update_member} to any status but accepted.

    The purge starts after the wrapped registry has committed; a purge never
    fails the operation. With a C{clock}, the result waits for the purge's
    first round for at most C{answer_wait} seconds (retries, and the
    purger's second round, go on in the background), so that a client's
    next request through a proxy does not find the stale copy; without one
    it is passed on at once. Every other method is the wrapped registry's
    own (L{proxyForInterface}).
    """

    registry: IRegistry
    purger: IPurger
    clock: IReactorTime | None = None
    answer_wait: float = 2.0

    def _purge(self, image_id: str) -> Deferred[None]:
        try:
            purged = self.purger.purge(image_id)
        except Exception:
            log.failure("Could not start purging image {image_id}", image_id=image_id)
            return succeed(None)
        if self.clock is None:
            return succeed(None)
        answer: Deferred[None] = Deferred()

        def done(_: object = None) -> None:
            if timer.active():
                timer.cancel()
            if not answer.called:
                answer.callback(None)

        timer = self.clock.callLater(self.answer_wait, done)
        purged.addBoth(done)
        return answer

    def _after_purge(self, image_id: str, result: T) -> Deferred[T]:
        return self._purge(image_id).addCallback(lambda _: result)

    def update(
        self,
        image_id: str,
        update: ImageUpdate,
        expected_status: frozenset[str] | None = None,
        expected_version: int | None = None,
        write_id: str | None = None,
    ) -> Deferred[Image]:
        def updated(image: Image) -> Image | Deferred[Image]:
            if hides_image(update, image):
                return self._after_purge(image.id, image)
            return image

        return self.registry.update(
            image_id, update, expected_status, expected_version, write_id
        ).addCallback(updated)

    def delete(
        self, image_id: str, expected_version: int | None = None, write_id: str | None = None
    ) -> Deferred[Image]:
        return self.registry.delete(image_id, expected_version, write_id).addCallback(
            lambda image: self._after_purge(image.id, image)
        )

    def update_member(self, image_id: str, member_id: str, status: str) -> Deferred[Member]:
        def updated(member: Member) -> Member | Deferred[Member]:
            if member.status != ACCEPTED:
                return self._after_purge(member.image_id, member)
            return member

        return self.registry.update_member(image_id, member_id, status).addCallback(updated)

    def remove_member(
        self, image_id: str, member_id: str, write_id: str | None = None
    ) -> Deferred[None]:
        def removed(result: None) -> Deferred[None]:
            return self._after_purge(image_id, result)

        return self.registry.remove_member(image_id, member_id, write_id).addCallback(
            removed
        )
