"""
The one interface every image registry provides.

The API layer sees only this: whether the records live in SQLite, PostgreSQL
or behind a separate registry server is the deployment's business. Every
method returns a L{Deferred} that fires on the reactor thread; providers do
their blocking work elsewhere.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping

from attrs import frozen
from twisted.internet.defer import Deferred
from zope.interface import Interface

from glance_tx.images import Image, ImageQuery, ImageUpdate, Member, ProjectUsage
from glance_tx.tasks import Task, TaskChange, TaskQuery


@frozen
class HeldClaim:
    """Another process's unexpired claim on a node id (L{IRegistry.claim_node})."""

    instance: str
    #: Until it expires, by the registry's clock.
    seconds_left: float


class IRegistry(Interface):
    """Stores L{glance_tx.images.Image} records."""

    def create(image: Image) -> Deferred[Image]:
        """
        Store a new image record as given (id, status, timestamps included;
        its C{version} is 1 whatever it says) and fire with the record as
        stored.

        Fails with L{glance_tx.errors.Conflict} if an image (even a deleted
        one) already has that id, and L{glance_tx.errors.BadRequest} if the
        record does not pass L{glance_tx.images.check_image}.
        """

    def get(image_id: str, include_deleted: bool = False) -> Deferred[Image]:
        """
        Fire with the image, or fail with L{glance_tx.errors.NotFound}. A
        deleted image is not found unless C{include_deleted}.
        """

    def list(query: ImageQuery) -> Deferred[builtins.list[Image]]:
        """
        Fire with one page of images matching a L{glance_tx.images.ImageQuery},
        in its order. Deleted images are never listed. A C{marker} that names
        no listable image fails with L{glance_tx.errors.BadRequest}.
        """

    def update(
        image_id: str,
        update: ImageUpdate,
        expected_status: frozenset[str] | None = None,
        expected_version: int | None = None,
        write_id: str | None = None,
    ) -> Deferred[Image]:
        """
        Apply an L{glance_tx.images.ImageUpdate} atomically, bump
        C{updated_at} and C{version}, and fire with the new record.

        A status change must be allowed by
        L{glance_tx.images.check_transition} (else
        L{glance_tx.errors.Conflict}). With C{expected_status}, the update
        happens only if the current status is one of those, checked and
        written in one transaction (else L{glance_tx.errors.Conflict}): this
        is how two uploads to one image are kept from both starting. With
        C{expected_version}, it happens only if the record is still at that
        L{glance_tx.images.Image.version} (else
        L{glance_tx.errors.VersionConflict}, a Conflict, and nothing
        changes): of two callers
        that read the same record and then write, whichever node they run
        on, only the first wins.

        C{write_id} (up to 64 characters) names this write, the same on a
        repeat of it: when the image's last write that came with an id was
        this one, nothing changes (no condition is checked) and the record
        is answered as it is, so a write repeated because its answer was
        lost succeeds as the first did, instead of failing its own
        C{expected_version} or C{expected_status}.

        An update to status C{pending_delete} also marks the image deleted
        (C{deleted}, C{deleted_at}) and keeps its locations, for the
        scrubber (see L{pending_deletes}).

        Every change of an image's record (C{update}, C{delete}, a tag added
        or removed) moves its C{version} up by one; a new record is at 1.
        Memberships are not part of the record and leave it alone.
        """

    def delete(
        image_id: str, expected_version: int | None = None, write_id: str | None = None
    ) -> Deferred[Image]:
        """
        Mark the image deleted (status C{deleted}, C{deleted=True},
        C{deleted_at} set, locations cleared) and fire with the record.
        The row is kept, so the id is never reused. C{expected_version} and
        C{write_id} as for L{update} (a repeated delete answers the deleted
        record, not NotFound). An image pending delete (see
        L{pending_deletes}), though deleted for every other call, is deleted
        for good here: the scrubber's last step once its data is gone.
        """

    def all_locations() -> Deferred[frozenset[str]]:
        """
        Fire with every location held by an image that is not deleted or
        killed, or that is pending delete: what a store may keep when it
        sweeps out orphaned data.
        """

    def pending_deletes(older_than: float) -> Deferred[builtins.list[Image]]:
        """
        Fire with the images pending delete (with C{delayed_delete}, a
        delete is an L{update} to status C{pending_delete}, which also sets
        C{deleted} and C{deleted_at} but keeps the locations) whose
        C{deleted_at} is at least C{older_than} seconds ago by the
        registry's clock, oldest first: what the scrubber may remove now.
        """

    def add_tag(image_id: str, tag: str) -> Deferred[Image]:
        """
        Tag the image and fire with the record; C{updated_at} moves only if
        the tag is new (adding a tag the image has changes nothing). Fails
        with L{glance_tx.errors.NotFound} for an unknown or deleted image and
        L{glance_tx.errors.BadRequest} for a tag that is not a string of 1
        to 255 characters.

        Atomic: concurrent calls for one image never undo each other, as a
        read of the image and an C{update} of its whole tag set would.
        """

    def remove_tag(
        image_id: str, tag: str, write_id: str | None = None
    ) -> Deferred[Image]:
        """
        Untag the image, bump C{updated_at} and fire with the record;
        atomic, as L{add_tag}. NotFound for an unknown or deleted image, or
        a tag it does not have (as Glance's tag delete answers 404).

        C{write_id} as for L{update}: a removal repeated because its answer
        was lost is answered with the record as it is, not NotFound for the
        tag it removed the first time.
        """

    def add_member(image_id: str, member_id: str) -> Deferred[Member]:
        """
        Share the image with project C{member_id}, status C{pending}. Fails
        with L{glance_tx.errors.NotFound} for an unknown or deleted image and
        L{glance_tx.errors.Conflict} if that project is already a member.
        """

    def get_member(image_id: str, member_id: str) -> Deferred[Member]:
        """Fire with the membership, or fail with NotFound."""

    def list_members(image_id: str) -> Deferred[builtins.list[Member]]:
        """Fire with the image's members, oldest first (NotFound if no image)."""

    def update_member(image_id: str, member_id: str, status: str) -> Deferred[Member]:
        """
        Set a membership's status (one of L{glance_tx.images.MEMBER_STATUSES},
        else BadRequest), bump its C{updated_at}; NotFound if absent.
        """

    def remove_member(
        image_id: str, member_id: str, write_id: str | None = None
    ) -> Deferred[None]:
        """
        Remove a membership; NotFound if absent. C{write_id} as for
        L{remove_tag}: the repeat of a removal succeeds as the first did.
        It counts as the image's last identified write (L{update}), though
        it leaves the record alone.
        """

    def hold_uploads(
        node_id: str, uploads: Mapping[str, str], seconds: float
    ) -> Deferred[None]:
        """
        Record, or renew, node C{node_id}'s lease on each upload in
        C{uploads} (image id -> the status the image takes if the upload is
        reclaimed: what its own abort would set), held until C{seconds} from
        now by the registry's clock (so API nodes' clocks need not agree).
        One call renews all of a node's uploads. Ids of images that are
        unknown or deleted are skipped: their uploads are failing anyway.
        """

    def release_upload(image_id: str, node_id: str) -> Deferred[None]:
        """
        Drop C{node_id}'s lease on the upload of C{image_id} (once the upload
        has finished or failed); no lease is not an error, and another
        node's lease on that image stays.
        """

    def reclaim_uploads(dead_node_id: str | None = None) -> Deferred[builtins.list[Image]]:
        """
        Reclaim every upload, stage and import whose node is gone: each
        image in C{saving} or C{importing} on which no node holds a lease
        any more (none recorded, or all expired by the registry's clock;
        leases of C{dead_node_id}, a node known to have stopped, count as
        expired), and each C{uploading} or C{active} image whose leases have
        all expired, is put back as the lease says and loses its leases: an
        upload takes the lease's status (C{killed} without one); a stage
        not yet recorded is C{queued} again; an import is C{uploading}
        again with its staged data (glance-direct's lease) or C{queued}
        with none, and a copy-image leaves its image C{active}, the stores
        still to do added to C{os_glance_failed_import} (see
        C{glance_tx.registry.sql.provider._reclaimed}). Each image is checked
        and changed in one transaction that holds its row, so of several
        nodes reclaiming at once only one reclaims each image, and an upload
        whose lease is renewed meanwhile is left alone. Fires with the
        reclaimed images' new records; removing their partial data is the
        caller's business.
        """

    def claim_node(
        node_id: str, instance: str, seconds: float, replacing: str | None = None
    ) -> Deferred[HeldClaim | None]:
        """
        Claim node id C{node_id} for the process C{instance} (new at each
        start) until C{seconds} from now by the registry's clock, or renew
        its claim; fire with None. If another instance holds an unexpired
        claim on that id, change nothing and fire with that claim (a live
        process holding it renews it before it expires, a dead one does
        not) -- unless that instance is C{replacing}, one the caller knows
        has stopped: then the claim is taken over. Checked and written in
        one transaction, so of two processes claiming one id at once only
        one gets it. BadRequest for an id or instance that is not a string
        of 1 to 255 characters.
        """

    def release_node(node_id: str, instance: str) -> Deferred[None]:
        """
        Drop C{instance}'s claim on C{node_id} (at a clean stop, so the
        node may start again at once); another instance's claim stays, and
        no claim is not an error.
        """

    def project_usage(project_id: str) -> Deferred[ProjectUsage]:
        """
        Fire with what C{project_id}'s images hold (L{ProjectUsage}): the
        counts Glance's per-project limits are checked against. A project
        with no images holds nothing (not NotFound).
        """

    def create_task(task: Task) -> Deferred[Task]:
        """
        Store a new task record as given, but created and updated now by the
        registry's clock (so tasks and images compare on one clock, however
        nodes' clocks disagree), and fire with it as stored;
        L{glance_tx.errors.Conflict} if a task has that id,
        L{glance_tx.errors.BadRequest} if it does not pass
        L{glance_tx.tasks.check_task}.
        """

    def get_task(task_id: str) -> Deferred[Task]:
        """Fire with the task, or fail with NotFound (expired tasks included)."""

    def list_tasks(query: TaskQuery) -> Deferred[builtins.list[Task]]:
        """
        Fire with one page of the tasks a L{glance_tx.tasks.TaskQuery}
        matches, in its order; expired tasks are never listed. A marker
        that names no task the query could list is a BadRequest.
        """

    def update_task(task_id: str, change: TaskChange) -> Deferred[Task]:
        """
        Move the task on (L{glance_tx.tasks.changed}, with C{updated_at}
        and any C{expires_in} by the registry's clock) and fire with the
        new record, checked and written in one transaction: a move Glance
        does not allow (a task that has ended already) is a Conflict and
        changes nothing. NotFound for an unknown or expired task.
        """

    def delete_expired_tasks() -> Deferred[int]:
        """
        Delete for good every task whose C{expires_at} has passed by the
        registry's clock (they are found and listed no more already); fire
        with how many. The scrubber's rounds call it, so the table holds
        only the tasks still shown.
        """

    def ping() -> Deferred[None]:
        """Fire when the registry answers; fail with the reason when not."""
