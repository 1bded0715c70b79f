"""
The behaviour every L{IRegistry} provider must have, as one test mixin.

Mix L{RegistryConformanceMixin} into a test case and implement
C{make_registry} to return a new, empty registry (or a Deferred of one). The
tests use nothing but the interface, so the same suite runs against
L{glance_tx.registry.sql.SQLRegistry} on SQLite and PostgreSQL and against
the HTTP registry client.

Each test is a coroutine. Mixed into a L{SynchronousTestCase}, it is run to
completion at once and must not wait on anything (a registry on a
synchronous runner); mixed into a trial L{TestCase}, its Deferred is returned
to trial, so the registry may use a real thread pool, database or network.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from attrs import evolve
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from glance_tx.errors import (
    BadRequest,
    Conflict,
    GlanceError,
    NotFound,
    VersionConflict,
)
from glance_tx.images import (
    ACTIVE,
    DEACTIVATED,
    DELETED,
    IMAGE_IMPORTING,
    KILLED,
    PENDING_DELETE,
    QUEUED,
    SAVING,
    SORT_KEYS,
    UPLOADING,
    Comparison,
    Image,
    ImageQuery,
    ImageUpdate,
    Location,
    Member,
    ProjectUsage,
    Viewer,
    new_image_id,
)
from glance_tx.registry.interface import HeldClaim, IRegistry
from glance_tx.tasks import API_IMAGE_IMPORT, Task, TaskChange, TaskQuery, new_task_id
from glance_tx.tasks import FAILURE as TASK_FAILURE
from glance_tx.tasks import IMPORT as TASK_IMPORT
from glance_tx.tasks import PENDING as TASK_PENDING
from glance_tx.tasks import PROCESSING as TASK_PROCESSING
from glance_tx.tasks import SUCCESS as TASK_SUCCESS

if TYPE_CHECKING:
    _Base = SynchronousTestCase
else:
    _Base = object

E = TypeVar("E", bound=GlanceError)

T0 = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def make_image(**fields: Any) -> Image:
    """A valid queued image with a fresh id; C{fields} override anything."""
    values: dict[str, Any] = {
        "id": new_image_id(),
        "status": QUEUED,
        "created_at": T0,
        "updated_at": T0,
    }
    values.update(fields)
    return Image(**values)


def _compare(left: Any, right: Any) -> int:
    """Compare with NULL (None) before every value."""
    if left is None or right is None:
        return (left is not None) - (right is not None)
    return (left > right) - (left < right)


def expected_order(
    images: Iterable[Image], sort: Sequence[tuple[str, str]]
) -> list[str]:
    """
    The ids of C{images} in the order a listing sorted by C{sort} must have:
    NULL first ascending and last descending, the id breaking ties in the
    direction of the last key.
    """
    keys = list(sort)
    if "id" not in {name for name, _ in keys}:
        keys.append(("id", keys[-1][1] if keys else "asc"))

    def compare(left: Image, right: Image) -> int:
        for name, direction in keys:
            order = _compare(getattr(left, name), getattr(right, name))
            if order:
                return -order if direction == "desc" else order
        return 0

    return [image.id for image in sorted(images, key=functools.cmp_to_key(compare))]


def conformance(
    test: Callable[[Any, Any], Coroutine[Any, Any, None]],
) -> Callable[[Any], Any]:
    """
    Make a test method out of a coroutine taking a fresh registry. Its
    docstring (what the test pins) becomes the test's description.
    """

    @functools.wraps(test)
    def run(self: RegistryConformanceMixin) -> Any:
        async def body() -> None:
            registry = await maybeDeferred(self.make_registry)
            await test(self, registry)

        d = Deferred.fromCoroutine(body())
        if isinstance(self, TestCase):
            return d
        return self.successResultOf(d)

    return run


class RegistryConformanceMixin(_Base):
    """The L{IRegistry} contract; see the module docstring."""

    def make_registry(self) -> Any:
        """
        Return a new, empty L{IRegistry} provider, or a Deferred firing with
        one. Tear-down is the implementer's business (C{addCleanup}).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement make_registry")

    async def assertFails(self, d: Deferred[Any], kind: type[E]) -> E:
        """Await C{d} and return the C{kind} error it fails with."""
        try:
            value = await d
        except kind as e:
            return e
        self.fail(f"expected {kind.__name__}, got {value!r}")

    async def create_all(self, registry: Any, images: Iterable[Image]) -> list[Image]:
        return [await registry.create(image) for image in images]

    async def list_all(self, registry: Any, query: ImageQuery, page: int) -> list[str]:
        """Every id of a listing, following markers C{page} images at a time."""
        ids: list[str] = []
        marker = None
        for _ in range(1000):
            images = await registry.list(evolve(query, marker=marker, limit=page))
            self.assertLessEqual(len(images), page)
            if not images:
                return ids
            ids.extend(image.id for image in images)
            marker = images[-1].id
        self.fail("pagination did not end")

    async def ids(self, registry: Any, **query: Any) -> list[str]:
        return [
            image.id for image in await registry.list(ImageQuery(limit=1000, **query))
        ]

    # -- the interface ---------------------------------------------------------

    @conformance
    async def test_provides_interface(self, registry: Any) -> None:
        """The registry provides every IRegistry method with its signature."""
        self.assertTrue(verifyObject(IRegistry, registry))

    @conformance
    async def test_ping(self, registry: Any) -> None:
        """ping fires with None when the registry answers."""
        self.assertIsNone(await registry.ping())

    # -- create and get --------------------------------------------------------

    @conformance
    async def test_create_get_round_trip(self, registry: Any) -> None:
        """
        Every field of a record survives create and get unchanged, including
        microseconds of aware UTC datetimes, properties, the order of
        locations, and tags; create fires with the stored record.
        """
        image = make_image(
            name="cirros",
            status=ACTIVE,
            size=13_287_936,
            virtual_size=117_440_512,
            checksum="443b7623e27ecf03dc9e01ee93f67afe",
            os_hash_algo="sha512",
            os_hash_value="6513f21e" * 16,
            disk_format="qcow2",
            container_format="bare",
            visibility="public",
            owner="project-a",
            min_ram=512,
            min_disk=1,
            protected=True,
            os_hidden=True,
            locations=(
                Location("file:///var/lib/b", "fast"),
                Location("swift://c/a", "obj", {"foo": "bar", "n": [1, {"x": None}]}),
                Location("file:///var/lib/a"),
            ),
            properties={"os_distro": "cirros", "hw_disk_bus": "virtio"},
            tags={"tiny", "test"},
            created_at=T0,
            updated_at=T0 + timedelta(seconds=1, microseconds=1),
        )
        created = await registry.create(image)
        self.assertEqual(created, image)
        fetched = await registry.get(image.id)
        self.assertEqual(fetched, image)
        self.assertEqual(fetched.created_at.utcoffset(), timedelta(0))
        self.assertEqual(fetched.locations, image.locations)

    @conformance
    async def test_location_stores(self, registry: Any) -> None:
        """
        Each location keeps the id of the store holding it (or none) through
        create, update and get; a bare URL is a location with no store.
        """
        image = await registry.create(make_image(locations=("file:///a",)))
        self.assertEqual(image.locations, (Location("file:///a", None),))
        moved = (Location("s3://bucket/key", "bulk"), Location("file:///b", "fast"))
        await registry.update(image.id, ImageUpdate(fields={"locations": moved}))
        self.assertEqual((await registry.get(image.id)).locations, moved)

    @conformance
    async def test_create_minimal_round_trip(self, registry: Any) -> None:
        """A record with every optional field unset (None, defaults) round-trips."""
        image = make_image()
        self.assertEqual(await registry.create(image), image)
        self.assertEqual(await registry.get(image.id), image)

    @conformance
    async def test_datetimes_normalized_to_utc(self, registry: Any) -> None:
        """Aware datetimes in another zone come back as the same instant in UTC."""
        plus_two = timezone(timedelta(hours=2))
        moment = datetime(2024, 1, 1, 14, 0, 0, 5, tzinfo=plus_two)
        image = make_image(created_at=moment, updated_at=moment)
        await registry.create(image)
        fetched = await registry.get(image.id)
        self.assertEqual(fetched.created_at, moment)
        self.assertEqual(fetched.created_at.tzinfo, UTC)
        self.assertEqual(fetched.created_at.hour, 12)

    @conformance
    async def test_create_duplicate_conflict(self, registry: Any) -> None:
        """Creating a second image with an existing id fails with Conflict."""
        image = await registry.create(make_image(name="first"))
        error = await self.assertFails(
            registry.create(make_image(id=image.id, name="second")), Conflict
        )
        self.assertIn(image.id, error.message)
        self.assertEqual((await registry.get(image.id)).name, "first")

    @conformance
    async def test_create_invalid_bad_request(self, registry: Any) -> None:
        """A record failing check_image is refused with BadRequest and not stored."""
        image = make_image(visibility="everyone")
        await self.assertFails(registry.create(image), BadRequest)
        await self.assertFails(registry.get(image.id), NotFound)

    @conformance
    async def test_get_unknown_not_found(self, registry: Any) -> None:
        """get of an id never stored fails with NotFound naming the id."""
        image_id = new_image_id()
        error = await self.assertFails(registry.get(image_id), NotFound)
        self.assertIn(image_id, error.message)

    # -- update ----------------------------------------------------------------

    @conformance
    async def test_update_fields(self, registry: Any) -> None:
        """
        update changes exactly the named core fields; a new location list
        replaces the old one; the result is what get then returns.
        """
        image = await registry.create(
            make_image(name="old", locations=("file:///a", "file:///b"), min_ram=1)
        )
        updated = await registry.update(
            image.id,
            ImageUpdate(
                fields={
                    "name": "new",
                    "status": SAVING,
                    "size": 42,
                    "checksum": "0" * 32,
                    "disk_format": "raw",
                    "container_format": "bare",
                    "visibility": "community",
                    "owner": "project-b",
                    "protected": True,
                    "locations": ("file:///c",),
                }
            ),
        )
        self.assertEqual(updated.name, "new")
        self.assertEqual(updated.status, SAVING)
        self.assertEqual(updated.size, 42)
        self.assertEqual(updated.checksum, "0" * 32)
        self.assertEqual(updated.disk_format, "raw")
        self.assertEqual(updated.container_format, "bare")
        self.assertEqual(updated.visibility, "community")
        self.assertEqual(updated.owner, "project-b")
        self.assertTrue(updated.protected)
        self.assertEqual(updated.locations, (Location("file:///c"),))
        self.assertEqual(updated.min_ram, 1)
        self.assertEqual(updated.created_at, image.created_at)
        self.assertEqual(await registry.get(image.id), updated)

    @conformance
    async def test_update_field_to_none(self, registry: Any) -> None:
        """A nullable field can be cleared by updating it to None."""
        image = await registry.create(make_image(name="named", size=3))
        updated = await registry.update(
            image.id, ImageUpdate(fields={"name": None, "size": None})
        )
        self.assertIsNone(updated.name)
        self.assertIsNone((await registry.get(image.id)).size)

    @conformance
    async def test_update_properties(self, registry: Any) -> None:
        """
        Properties named in the update are added or changed, a None value
        removes one, and unnamed properties are kept.
        """
        image = await registry.create(
            make_image(properties={"keep": "1", "change": "2", "drop": "3"})
        )
        updated = await registry.update(
            image.id,
            ImageUpdate(
                properties={"change": "two", "drop": None, "add": "4", "nope": None}
            ),
        )
        expected = {"keep": "1", "change": "two", "add": "4"}
        self.assertEqual(dict(updated.properties), expected)
        self.assertEqual(dict((await registry.get(image.id)).properties), expected)

    @conformance
    async def test_update_purge_properties(self, registry: Any) -> None:
        """With purge_properties, only the properties named (and not None) remain."""
        image = await registry.create(
            make_image(properties={"a": "1", "b": "2", "c": "3"})
        )
        updated = await registry.update(
            image.id,
            ImageUpdate(
                properties={"a": "one", "b": None, "d": "4"}, purge_properties=True
            ),
        )
        self.assertEqual(dict(updated.properties), {"a": "one", "d": "4"})
        self.assertEqual(await registry.get(image.id), updated)

    @conformance
    async def test_update_tags(self, registry: Any) -> None:
        """A tag set replaces the tags; tags=None leaves them alone."""
        image = await registry.create(make_image(tags={"a", "b"}))
        kept = await registry.update(image.id, ImageUpdate(fields={"name": "x"}))
        self.assertEqual(kept.tags, frozenset({"a", "b"}))
        replaced = await registry.update(
            image.id, ImageUpdate(tags=frozenset({"b", "c"}))
        )
        self.assertEqual(replaced.tags, frozenset({"b", "c"}))
        cleared = await registry.update(image.id, ImageUpdate(tags=frozenset()))
        self.assertEqual((await registry.get(image.id)).tags, frozenset())
        self.assertEqual(cleared.tags, frozenset())

    @conformance
    async def test_update_bumps_updated_at(self, registry: Any) -> None:
        """Every update moves updated_at forward (aware UTC); created_at stays."""
        image = await registry.create(make_image())
        first = await registry.update(image.id, ImageUpdate(fields={"name": "a"}))
        second = await registry.update(image.id, ImageUpdate(fields={"name": "b"}))
        self.assertGreater(first.updated_at, image.updated_at)
        self.assertGreater(second.updated_at, first.updated_at)
        self.assertEqual(second.updated_at.tzinfo, UTC)
        self.assertEqual(second.created_at, image.created_at)

    @conformance
    async def test_update_allowed_transitions(self, registry: Any) -> None:
        """Status changes the state machine allows are applied in turn."""
        image = await registry.create(make_image(status=QUEUED))
        for status in (UPLOADING, IMAGE_IMPORTING, ACTIVE, DEACTIVATED, ACTIVE):
            updated = await registry.update(
                image.id, ImageUpdate(fields={"status": status})
            )
            self.assertEqual(updated.status, status)

    @conformance
    async def test_update_illegal_transition_conflict(self, registry: Any) -> None:
        """A status change the state machine forbids is a Conflict; nothing changes."""
        image = await registry.create(make_image(status=ACTIVE, name="same"))
        await self.assertFails(
            registry.update(
                image.id, ImageUpdate(fields={"status": QUEUED, "name": "x"})
            ),
            Conflict,
        )
        killed = await registry.create(make_image(status=KILLED))
        await self.assertFails(
            registry.update(killed.id, ImageUpdate(fields={"status": ACTIVE})), Conflict
        )
        self.assertEqual(await registry.get(image.id), image)

    @conformance
    async def test_update_expected_status(self, registry: Any) -> None:
        """
        With expected_status, the update applies only from one of those
        statuses; otherwise Conflict names the current status and nothing
        changes.
        """
        image = await registry.create(make_image(status=QUEUED))
        error = await self.assertFails(
            registry.update(
                image.id,
                ImageUpdate(fields={"status": SAVING}),
                expected_status=frozenset({ACTIVE, DEACTIVATED}),
            ),
            Conflict,
        )
        self.assertIn(QUEUED, error.message)
        self.assertEqual(await registry.get(image.id), image)
        updated = await registry.update(
            image.id,
            ImageUpdate(fields={"status": SAVING}),
            expected_status=frozenset({QUEUED}),
        )
        self.assertEqual(updated.status, SAVING)

    @conformance
    async def test_expected_status_admits_one_of_concurrent_updates(
        self, registry: Any
    ) -> None:
        """
        Of several updates from queued to saving issued at once, each
        expecting queued, exactly one succeeds and the others are Conflicts:
        the check and the write are one transaction.
        """
        image = await registry.create(make_image(status=QUEUED))
        results = await DeferredList(
            [
                registry.update(
                    image.id,
                    ImageUpdate(fields={"status": SAVING, "name": f"upload-{n}"}),
                    expected_status=frozenset({QUEUED}),
                )
                for n in range(6)
            ],
            consumeErrors=True,
        )
        winners = [value for ok, value in results if ok]
        losers = [value for ok, value in results if not ok]
        self.assertEqual(len(winners), 1)
        for failure in losers:
            failure.trap(Conflict)
        self.assertEqual((await registry.get(image.id)).name, winners[0].name)

    @conformance
    async def test_version_counts_changes_of_the_record(self, registry: Any) -> None:
        """
        A new record is at version 1 (whatever it said); every change of
        the record moves it up by one: an update, a new tag, a removed tag,
        the delete. Adding a tag it has, and membership changes, do not.
        """
        image = await registry.create(make_image(version=7))
        self.assertEqual(image.version, 1)
        self.assertEqual((await registry.get(image.id)).version, 1)
        updated = await registry.update(image.id, ImageUpdate(fields={"name": "x"}))
        self.assertEqual(updated.version, 2)
        self.assertEqual((await registry.add_tag(image.id, "a")).version, 3)
        self.assertEqual((await registry.add_tag(image.id, "a")).version, 3)
        self.assertEqual((await registry.remove_tag(image.id, "a")).version, 4)
        await registry.add_member(image.id, "p")
        await registry.update_member(image.id, "p", "accepted")
        await registry.remove_member(image.id, "p")
        self.assertEqual((await registry.get(image.id)).version, 4)
        self.assertEqual((await registry.delete(image.id)).version, 5)
        self.assertEqual((await registry.get(image.id, include_deleted=True)).version, 5)

    @conformance
    async def test_update_expected_version(self, registry: Any) -> None:
        """
        With expected_version, an update applies only to the record at that
        version: a caller that read an older one gets VersionConflict (a
        Conflict the API can tell from others), naming the
        current version, and nothing changes.
        """
        image = await registry.create(make_image())
        changed = await registry.update(image.id, ImageUpdate(fields={"name": "first"}))
        error = await self.assertFails(
            registry.update(
                image.id, ImageUpdate(fields={"name": "stale"}), expected_version=1
            ),
            VersionConflict,
        )
        self.assertIn("version 2", error.message)
        self.assertEqual(await registry.get(image.id), changed)
        updated = await registry.update(
            image.id, ImageUpdate(fields={"name": "second"}), expected_version=2
        )
        self.assertEqual((updated.name, updated.version), ("second", 3))

    @conformance
    async def test_expected_version_admits_one_of_concurrent_updates(
        self, registry: Any
    ) -> None:
        """
        Of several updates issued at once by callers that all read version
        1, exactly one succeeds and the others are VersionConflicts: they cannot
        all win, whichever node each runs on.
        """
        image = await registry.create(make_image())
        results = await DeferredList(
            [
                registry.update(
                    image.id,
                    ImageUpdate(fields={"name": f"writer-{n}"}, tags=frozenset({f"t{n}"})),
                    expected_version=1,
                )
                for n in range(6)
            ],
            consumeErrors=True,
        )
        winners = [value for ok, value in results if ok]
        losers = [value for ok, value in results if not ok]
        self.assertEqual(len(winners), 1)
        for failure in losers:
            failure.trap(VersionConflict)
        stored = await registry.get(image.id)
        self.assertEqual(stored, winners[0])
        self.assertEqual(stored.version, 2)

    @conformance
    async def test_delete_expected_version(self, registry: Any) -> None:
        """
        A delete with expected_version deletes only the record at that
        version: a stale one is a VersionConflict and the image stays.
        """
        image = await registry.create(make_image())
        await registry.add_tag(image.id, "moved")
        await self.assertFails(
            registry.delete(image.id, expected_version=1), VersionConflict
        )
        self.assertFalse((await registry.get(image.id)).deleted)
        deleted = await registry.delete(image.id, expected_version=2)
        self.assertTrue(deleted.deleted)

    @conformance
    async def test_repeated_write_answered_as_made(self, registry: Any) -> None:
        """
        An update repeated with its write_id (its answer was lost) changes
        nothing and answers the record, though its expected_version and
        expected_status no longer hold; another write that read the same
        version is still a VersionConflict.
        """
        image = await registry.create(make_image())
        first = await registry.update(
            image.id,
            ImageUpdate(fields={"status": SAVING}, properties={"n": "1"}),
            expected_status=frozenset({QUEUED}),
            expected_version=1,
            write_id="write-1",
        )
        again = await registry.update(
            image.id,
            ImageUpdate(fields={"status": SAVING}, properties={"n": "1"}),
            expected_status=frozenset({QUEUED}),
            expected_version=1,
            write_id="write-1",
        )
        self.assertEqual(again, first)
        self.assertEqual(await registry.get(image.id), first)
        await self.assertFails(
            registry.update(
                image.id, ImageUpdate(fields={"name": "x"}), expected_version=1,
                write_id="write-2",
            ),
            VersionConflict,
        )
        # Once another identified write came after it, it is no longer the
        # last: a repeat then is decided as any write.
        await registry.update(image.id, ImageUpdate(fields={"name": "later"}), write_id="write-3")
        await self.assertFails(
            registry.update(
                image.id, ImageUpdate(fields={"name": "x"}), expected_version=1,
                write_id="write-1",
            ),
            VersionConflict,
        )

    @conformance
    async def test_repeated_delete_answers_the_deleted_record(self, registry: Any) -> None:
        """
        A delete repeated with its write_id answers the deleted record (not
        NotFound, not a VersionConflict); without one, it is NotFound.
        """
        image = await registry.create(make_image())
        deleted = await registry.delete(image.id, expected_version=1, write_id="del-1")
        self.assertEqual(
            await registry.delete(image.id, expected_version=1, write_id="del-1"), deleted
        )
        await self.assertFails(registry.delete(image.id, write_id="del-2"), NotFound)

    @conformance
    async def test_write_id_checked(self, registry: Any) -> None:
        """A write_id that is empty or over 64 characters is a BadRequest."""
        image = await registry.create(make_image())
        for bad in ("", "w" * 65):
            await self.assertFails(
                registry.update(image.id, ImageUpdate(fields={"name": "x"}), write_id=bad),
                BadRequest,
            )
            await self.assertFails(registry.delete(image.id, write_id=bad), BadRequest)

    @conformance
    async def test_expected_version_must_be_an_integer(self, registry: Any) -> None:
        """An expected_version that is not an integer is a BadRequest."""
        image = await registry.create(make_image())
        for bad in (True, 1.5):
            await self.assertFails(
                registry.update(
                    image.id, ImageUpdate(fields={"name": "x"}), expected_version=bad
                ),
                BadRequest,
            )
            await self.assertFails(registry.delete(image.id, expected_version=bad), BadRequest)
        self.assertEqual(await registry.get(image.id), image)

    @conformance
    async def test_update_invalid_bad_request(self, registry: Any) -> None:
        """An update leaving a record that fails check_image is a BadRequest."""
        image = await registry.create(make_image())
        await self.assertFails(
            registry.update(image.id, ImageUpdate(fields={"visibility": "everyone"})),
            BadRequest,
        )
        await self.assertFails(
            registry.update(image.id, ImageUpdate(fields={"min_ram": -1})), BadRequest
        )
        self.assertEqual(await registry.get(image.id), image)

    @conformance
    async def test_update_unknown_or_deleted_not_found(self, registry: Any) -> None:
        """update of an unknown id, or of a deleted image, fails with NotFound."""
        await self.assertFails(
            registry.update(new_image_id(), ImageUpdate(fields={"name": "x"})), NotFound
        )
        image = await registry.create(make_image())
        await registry.delete(image.id)
        await self.assertFails(
            registry.update(image.id, ImageUpdate(fields={"name": "x"})), NotFound
        )

    @conformance
    async def test_update_to_deleted_is_a_delete(self, registry: Any) -> None:
        """
        An update to status deleted leaves the record as delete would: marked
        deleted, locations cleared, no longer found or listed.
        """
        image = await registry.create(
            make_image(status=ACTIVE, locations=("file:///a",))
        )
        updated = await registry.update(
            image.id, ImageUpdate(fields={"status": DELETED})
        )
        self.assertTrue(updated.deleted)
        self.assertIsNotNone(updated.deleted_at)
        self.assertEqual(updated.locations, ())
        await self.assertFails(registry.get(image.id), NotFound)
        self.assertEqual(await self.ids(registry, exclude_statuses=frozenset()), [])

    # -- delete ----------------------------------------------------------------

    @conformance
    async def test_delete(self, registry: Any) -> None:
        """
        delete marks the record deleted (status, flag, deleted_at), clears
        its locations and fires with it; the image is then not found, not
        listed, still readable with include_deleted, and its id is never
        reused.
        """
        image = await registry.create(
            make_image(status=ACTIVE, locations=("file:///x",), properties={"a": "b"})
        )
        deleted = await registry.delete(image.id)
        self.assertEqual(deleted.status, DELETED)
        self.assertTrue(deleted.deleted)
        self.assertEqual(deleted.locations, ())
        self.assertEqual(deleted.deleted_at.tzinfo, UTC)
        self.assertGreater(deleted.updated_at, image.updated_at)
        self.assertEqual(dict(deleted.properties), {"a": "b"})
        await self.assertFails(registry.get(image.id), NotFound)
        self.assertEqual(await registry.get(image.id, include_deleted=True), deleted)
        self.assertEqual(
            await self.ids(
                registry, exclude_statuses=frozenset(), filters={"status": DELETED}
            ),
            [],
        )
        self.assertEqual(await self.ids(registry, exclude_statuses=frozenset()), [])
        await self.assertFails(registry.create(make_image(id=image.id)), Conflict)

    @conformance
    async def test_delete_not_found(self, registry: Any) -> None:
        """delete of an unknown or already deleted image fails with NotFound."""
        await self.assertFails(registry.delete(new_image_id()), NotFound)
        image = await registry.create(make_image())
        await registry.delete(image.id)
        await self.assertFails(registry.delete(image.id), NotFound)

    # -- delayed delete --------------------------------------------------------

    @conformance
    async def test_pending_delete(self, registry: Any) -> None:
        """
        An update to pending_delete marks the image deleted (not found, not
        listed) but keeps its locations, held against the orphan sweep;
        pending_deletes finds it once older than asked; delete then deletes
        it for good, locations cleared, and it is pending no more.
        """
        image = await registry.create(
            make_image(status=ACTIVE, locations=("file:///p",))
        )
        pending = await registry.update(
            image.id, ImageUpdate(fields={"status": PENDING_DELETE})
        )
        self.assertEqual(pending.status, PENDING_DELETE)
        self.assertTrue(pending.deleted)
        self.assertIsNotNone(pending.deleted_at)
        self.assertEqual(pending.locations, (Location("file:///p"),))
        await self.assertFails(registry.get(image.id), NotFound)
        self.assertEqual(await registry.get(image.id, include_deleted=True), pending)
        self.assertEqual(await self.ids(registry, exclude_statuses=frozenset()), [])
        self.assertEqual(await registry.all_locations(), frozenset({"file:///p"}))
        await self.assertFails(
            registry.update(image.id, ImageUpdate(fields={"name": "x"})), NotFound
        )
        self.assertEqual(await registry.pending_deletes(3600), [])
        self.assertEqual(await registry.pending_deletes(0), [pending])

        deleted = await registry.delete(image.id)
        self.assertEqual((deleted.status, deleted.locations), (DELETED, ()))
        self.assertTrue(deleted.deleted)
        self.assertEqual(await registry.pending_deletes(0), [])
        self.assertEqual(await registry.all_locations(), frozenset())
        await self.assertFails(registry.delete(image.id), NotFound)

    @conformance
    async def test_pending_deletes_oldest_first(self, registry: Any) -> None:
        """pending_deletes lists only images pending delete, oldest first."""
        ids = []
        for _ in range(3):
            image = await registry.create(make_image(status=ACTIVE, locations=("file:///x",)))
            await registry.update(image.id, ImageUpdate(fields={"status": PENDING_DELETE}))
            ids.append(image.id)
        other = await registry.create(make_image(status=ACTIVE))
        await registry.delete(other.id)
        self.assertEqual([i.id for i in await registry.pending_deletes(0)], ids)

    # -- all_locations ---------------------------------------------------------

    @conformance
    async def test_all_locations(self, registry: Any) -> None:
        """
        all_locations holds every location of images neither deleted nor
        killed, and nothing else.
        """
        await registry.create(
            make_image(status=ACTIVE, locations=("file:///a1", "file:///a2"))
        )
        await registry.create(
            make_image(status=PENDING_DELETE, locations=("file:///p",))
        )
        await registry.create(make_image(status=KILLED, locations=("file:///k",)))
        gone = await registry.create(
            make_image(status=ACTIVE, locations=("file:///d",))
        )
        await registry.delete(gone.id)
        self.assertEqual(
            await registry.all_locations(),
            frozenset({"file:///a1", "file:///a2", "file:///p"}),
        )

    @conformance
    async def test_all_locations_empty(self, registry: Any) -> None:
        """An empty registry holds no locations."""
        self.assertEqual(await registry.all_locations(), frozenset())

    # -- project_usage -----------------------------------------------------------

    @conformance
    async def test_project_usage(self, registry: Any) -> None:
        """
        project_usage counts one project's images that are not deleted:
        sizes of those not killed, sizes staged (uploading, importing),
        all of them, and those with data on its way in (saving, uploading,
        importing); other projects' images and deleted ones count nothing.
        """
        mine = "p-usage"
        await registry.create(make_image(owner=mine, status=ACTIVE, size=100, locations=("file:///1",)))
        await registry.create(make_image(owner=mine, status=KILLED, size=7))
        await registry.create(make_image(owner=mine, status=SAVING))
        await registry.create(make_image(owner=mine, status=UPLOADING, size=30))
        await registry.create(make_image(owner=mine, status=IMAGE_IMPORTING, size=5))
        await registry.create(make_image(owner=mine, status=QUEUED))
        gone = await registry.create(make_image(owner=mine, status=ACTIVE, size=1000))
        await registry.delete(gone.id)
        await registry.create(make_image(owner="someone-else", status=ACTIVE, size=50))
        self.assertEqual(
            await registry.project_usage(mine),
            ProjectUsage(
                image_size_total=135,
                image_stage_total=35,
                image_count_total=6,
                image_count_uploading=3,
            ),
        )

    @conformance
    async def test_project_usage_none(self, registry: Any) -> None:
        """A project with no images (an id with a slash too) holds nothing."""
        self.assertEqual(await registry.project_usage("nobody"), ProjectUsage())
        self.assertEqual(await registry.project_usage("a/b c"), ProjectUsage())

    # -- list: filters ---------------------------------------------------------

    @conformance
    async def test_list_filter_each_field(self, registry: Any) -> None:
        """Each core filter field selects exactly the images with that value."""
        wanted = make_image(
            name="alpha",
            status=ACTIVE,
            container_format="ovf",
            disk_format="vmdk",
            min_ram=512,
            min_disk=10,
            visibility="public",
            owner="project-a",
            protected=True,
            os_hidden=True,
            checksum="a" * 32,
        )
        other = make_image(
            name="beta",
            status=QUEUED,
            container_format="bare",
            disk_format="raw",
            visibility="private",
            owner="project-b",
            checksum="b" * 32,
        )
        await self.create_all(registry, [wanted, other])
        for name in (
            "id",
            "name",
            "status",
            "container_format",
            "disk_format",
            "min_ram",
            "min_disk",
            "visibility",
            "owner",
            "protected",
            "os_hidden",
            "checksum",
        ):
            self.assertEqual(
                await self.ids(registry, filters={name: getattr(wanted, name)}),
                [wanted.id],
                f"filter on {name}",
            )

    @conformance
    async def test_list_filters_combine(self, registry: Any) -> None:
        """Several filters must all match."""
        a = make_image(name="x", disk_format="raw")
        b = make_image(name="x", disk_format="qcow2")
        c = make_image(name="y", disk_format="raw")
        await self.create_all(registry, [a, b, c])
        self.assertEqual(
            await self.ids(registry, filters={"name": "x", "disk_format": "raw"}),
            [a.id],
        )

    @conformance
    async def test_list_filter_any_of(self, registry: Any) -> None:
        """A frozenset filter value matches any of its members."""
        public = make_image(visibility="public")
        private = make_image(visibility="private")
        shared = make_image(visibility="shared")
        await self.create_all(registry, [public, private, shared])
        found = await self.ids(
            registry, filters={"visibility": frozenset({"private", "shared"})}
        )
        self.assertEqual(sorted(found), sorted([private.id, shared.id]))

    @conformance
    async def test_list_hides_killed_unless_asked(self, registry: Any) -> None:
        """
        Killed images are left out by default, listed with an empty
        exclude_statuses, and listed when filtered for by status; other
        exclusions apply as given.
        """
        killed = make_image(status=KILLED, created_at=T0)
        queued = make_image(status=QUEUED, created_at=T0 + timedelta(seconds=1))
        await self.create_all(registry, [killed, queued])
        self.assertEqual(await self.ids(registry), [queued.id])
        self.assertEqual(
            await self.ids(registry, exclude_statuses=frozenset()),
            [queued.id, killed.id],
        )
        self.assertEqual(
            await self.ids(registry, filters={"status": KILLED}), [killed.id]
        )
        self.assertEqual(
            await self.ids(registry, exclude_statuses=frozenset({QUEUED})), [killed.id]
        )

    @conformance
    async def test_list_property_filters(self, registry: Any) -> None:
        """
        Every named property must be present with exactly that value, even
        when two values share a long common prefix.
        """
        long = "v" * 300
        a = make_image(properties={"os_distro": "ubuntu", "arch": "x86_64"})
        b = make_image(properties={"os_distro": "ubuntu", "arch": "aarch64"})
        c = make_image(properties={"os_distro": "debian", "arch": "x86_64"})
        d = make_image(properties={"note": long + "1"})
        e = make_image(properties={"note": long + "2"})
        await self.create_all(registry, [a, b, c, d, e])
        self.assertEqual(
            set(await self.ids(registry, properties={"os_distro": "ubuntu"})),
            {a.id, b.id},
        )
        self.assertEqual(
            await self.ids(
                registry, properties={"os_distro": "ubuntu", "arch": "x86_64"}
            ),
            [a.id],
        )
        self.assertEqual(
            await self.ids(registry, properties={"os_distro": "fedora"}), []
        )
        self.assertEqual(await self.ids(registry, properties={"missing": "x"}), [])
        self.assertEqual(
            await self.ids(registry, properties={"note": long + "2"}), [e.id]
        )
        self.assertEqual(await self.ids(registry, properties={"note": long}), [])

    @conformance
    async def test_list_size_range(self, registry: Any) -> None:
        """size_min and size_max are inclusive bounds; unknown sizes never match them."""
        sizes = {size: make_image(size=size) for size in (1, 5, 10)}
        unsized = make_image()
        await self.create_all(registry, [*sizes.values(), unsized])
        self.assertEqual(
            set(await self.ids(registry, size_min=5)), {sizes[5].id, sizes[10].id}
        )
        self.assertEqual(
            set(await self.ids(registry, size_max=5)), {sizes[1].id, sizes[5].id}
        )
        self.assertEqual(
            await self.ids(registry, size_min=5, size_max=5), [sizes[5].id]
        )
        self.assertEqual(await self.ids(registry, size_min=11), [])
        self.assertEqual(len(await self.ids(registry)), 4)

    @conformance
    async def test_list_loads_each_images_children(self, registry: Any) -> None:
        """A page returns each image with its own properties, locations and tags."""
        images = [
            make_image(
                created_at=T0 + timedelta(seconds=n),
                properties={"n": str(n), f"only-{n}": "x"},
                locations=tuple(f"file:///{n}/{k}" for k in range(n)),
                tags={f"t{n}", "common"},
            )
            for n in range(4)
        ]
        await self.create_all(registry, images)
        listed = await registry.list(ImageQuery(sort=(("created_at", "asc"),)))
        self.assertEqual(listed, images)

    # -- list: order and pages -------------------------------------------------

    def sort_fixture(self) -> list[Image]:
        """
        Images whose sort-key values repeat, and whose nullable keys are
        NULL for some, so that ties and NULL placement are exercised.
        """
        names = ["b", None, "a", "b", None, "c", "a", "b", None, "a"]
        statuses = [
            QUEUED,
            ACTIVE,
            SAVING,
            ACTIVE,
            UPLOADING,
            ACTIVE,
            DEACTIVATED,
            QUEUED,
        ]
        visibilities = ["public", "private", "shared", "community"]
        images = []
        for n, name in enumerate(names):
            images.append(
                make_image(
                    name=name,
                    status=statuses[n % len(statuses)],
                    disk_format=[None, "raw", "qcow2"][n % 3],
                    container_format=["bare", None, "ovf", "bare"][n % 4],
                    size=[10, None, 5, 10, None, 7][n % 6],
                    created_at=T0 + timedelta(seconds=n // 2),
                    updated_at=T0 + timedelta(seconds=n % 3, microseconds=n % 2),
                    visibility=visibilities[n % 4],
                    owner=[None, "p1", "p2"][n % 3],
                    min_ram=(n % 3) * 128,
                    min_disk=n % 2,
                )
            )
        return images

    @conformance
    async def test_list_sorted_by_each_key(self, registry: Any) -> None:
        """
        Sorted by any sort key in either direction, a listing has NULLs first
        ascending and last descending, ties broken by id in the same
        direction, both as one page and when paged two at a time by marker.
        """
        images = self.sort_fixture()
        await self.create_all(registry, images)
        for key in sorted(SORT_KEYS):
            for direction in ("asc", "desc"):
                sort = ((key, direction),)
                expected = expected_order(images, sort)
                query = ImageQuery(sort=sort, limit=1000)
                listed = [image.id for image in await registry.list(query)]
                self.assertEqual(listed, expected, f"sorted by {key} {direction}")
                paged = await self.list_all(registry, query, page=2)
                self.assertEqual(paged, expected, f"paged by {key} {direction}")

    @conformance
    async def test_list_mixed_direction_pages(self, registry: Any) -> None:
        """
        Multi-key sorts with mixed directions over NULL-bearing keys page
        through every image exactly once, in order, at any page size.
        """
        images = self.sort_fixture()
        await self.create_all(registry, images)
        for sort in (
            (("name", "asc"), ("size", "desc")),
            (("name", "desc"), ("size", "asc")),
            (("size", "desc"), ("name", "desc"), ("created_at", "asc")),
            (("status", "asc"), ("owner", "desc")),
            (("created_at", "asc"), ("id", "desc"), ("name", "asc")),
        ):
            expected = expected_order(images, sort)
            for page in (1, 3, 4):
                self.assertEqual(
                    await self.list_all(registry, ImageQuery(sort=sort), page),
                    expected,
                    f"sorted by {sort}, {page} a page",
                )

    @conformance
    async def test_list_default_order(self, registry: Any) -> None:
        """Without a sort, the newest image comes first (created_at desc, id desc)."""
        images = self.sort_fixture()
        await self.create_all(registry, images)
        self.assertEqual(
            await self.ids(registry), expected_order(images, (("created_at", "desc"),))
        )

    @conformance
    async def test_list_pages_with_filters(self, registry: Any) -> None:
        """Paging a filtered listing yields exactly the matching images, in order."""
        images = self.sort_fixture()
        await self.create_all(registry, images)
        query = ImageQuery(sort=(("name", "desc"),), viewer=Viewer("p1"), size_min=6)
        expected = expected_order(
            [
                i
                for i in images
                if (i.visibility == "public" or i.owner == "p1")
                and i.size is not None
                and i.size >= 6
            ],
            query.sort,
        )
        self.assertTrue(expected)
        self.assertEqual(await self.list_all(registry, query, page=1), expected)

    @conformance
    async def test_list_limit(self, registry: Any) -> None:
        """A page holds at most limit images; limit 0 gives an empty page."""
        await self.create_all(registry, self.sort_fixture())
        self.assertEqual(len(await registry.list(ImageQuery(limit=3))), 3)
        self.assertEqual(await registry.list(ImageQuery(limit=0)), [])

    @conformance
    async def test_list_marker_last_image(self, registry: Any) -> None:
        """The page after the last image is empty."""
        images = await self.create_all(registry, self.sort_fixture())
        last = expected_order(images, (("created_at", "desc"),))[-1]
        self.assertEqual(await registry.list(ImageQuery(marker=last)), [])

    @conformance
    async def test_list_marker_need_not_match_filters(self, registry: Any) -> None:
        """
        A marker image that no longer matches the filters (it was renamed
        between pages) still marks the position.
        """
        images = self.sort_fixture()
        await self.create_all(registry, images)
        order = expected_order(images, (("created_at", "desc"),))
        marker = order[3]
        await registry.update(marker, ImageUpdate(fields={"name": "renamed"}))
        after = await self.ids(registry, marker=marker, filters={"name": "a"})
        self.assertEqual(
            after,
            [i for i in order[4:] if next(x for x in images if x.id == i).name == "a"],
        )

    @conformance
    async def test_list_bad_marker(self, registry: Any) -> None:
        """
        A marker naming no image, a deleted image, or an image the listing
        may not see fails with BadRequest.
        """
        hidden = await registry.create(make_image(visibility="private", owner="other"))
        gone = await registry.create(make_image())
        await registry.delete(gone.id)
        for marker, viewer in (
            (new_image_id(), None),
            ("not-a-uuid", None),
            (gone.id, None),
            (hidden.id, Viewer("mine")),
        ):
            error = await self.assertFails(
                registry.list(ImageQuery(marker=marker, viewer=viewer)),
                BadRequest,
            )
            self.assertIn("marker", error.message.lower())
        self.assertEqual(await registry.list(ImageQuery(marker=hidden.id)), [])
        self.assertEqual(
            await registry.list(
                ImageQuery(marker=hidden.id, viewer=Viewer("mine", is_admin=True))
            ),
            [],
        )

    @conformance
    async def test_list_sort_by_updated_at_follows_updates(self, registry: Any) -> None:
        """An updated image moves to the front of an updated_at desc listing."""
        images = await self.create_all(
            registry,
            [make_image(updated_at=T0 + timedelta(seconds=n)) for n in range(3)],
        )
        await registry.update(images[0].id, ImageUpdate(fields={"name": "touched"}))
        self.assertEqual(
            await self.ids(registry, sort=(("updated_at", "desc"),)),
            [images[0].id, images[2].id, images[1].id],
        )

    # -- list: tags and comparisons --------------------------------------------

    @conformance
    async def test_list_tags_all_required(self, registry: Any) -> None:
        """
        An image is listed only if it carries every tag asked for; a tag is
        matched whole (not as a prefix), and no tags means no condition.
        """
        a = make_image(tags={"a"})
        ab = make_image(tags={"a", "b"})
        b = make_image(tags={"b", "bb"})
        abc = make_image(tags={"a", "b", "c"})
        untagged = make_image()
        await self.create_all(registry, [a, ab, b, abc, untagged])
        for tags, expected in (
            ({"a"}, [a, ab, abc]),
            ({"a", "b"}, [ab, abc]),
            ({"a", "b", "c"}, [abc]),
            ({"c", "bb"}, []),
            ({"d"}, []),
            ({"bb"}, [b]),
            (set(), [a, ab, b, abc, untagged]),
        ):
            found = await self.ids(registry, tags=frozenset(tags))
            self.assertEqual(set(found), {i.id for i in expected}, f"tags {tags}")

    @conformance
    async def test_list_tags_with_other_filters(self, registry: Any) -> None:
        """Tags combine with core and property filters, and follow deletes."""
        hit = make_image(name="x", tags={"gpu"}, properties={"os": "linux"})
        wrong_name = make_image(name="y", tags={"gpu"}, properties={"os": "linux"})
        wrong_property = make_image(name="x", tags={"gpu"}, properties={"os": "bsd"})
        gone = make_image(name="x", tags={"gpu"}, properties={"os": "linux"})
        await self.create_all(registry, [hit, wrong_name, wrong_property, gone])
        await registry.delete(gone.id)
        self.assertEqual(
            await self.ids(
                registry,
                tags=frozenset({"gpu"}),
                filters={"name": "x"},
                properties={"os": "linux"},
            ),
            [hit.id],
        )

    @conformance
    async def test_list_comparisons_each_operator(self, registry: Any) -> None:
        """
        Each operator on each comparable field selects the images whose value
        compares so with the given one: datetimes as instants to the
        microsecond (the value may be in any zone), sizes as integers. An
        unknown size matches no comparison, not even neq.
        """
        plus_two = timezone(timedelta(hours=2))
        images = [
            make_image(
                created_at=T0 + timedelta(microseconds=n),
                updated_at=T0 + timedelta(days=1, seconds=-n),
                size=size,
            )
            for n, size in enumerate([10, 20, 30, None])
        ]
        await self.create_all(registry, images)
        operators: dict[str, Callable[[Any, Any], bool]] = {
            "gt": lambda a, b: a > b,
            "gte": lambda a, b: a >= b,
            "eq": lambda a, b: a == b,
            "neq": lambda a, b: a != b,
            "lt": lambda a, b: a < b,
            "lte": lambda a, b: a <= b,
        }
        middle = images[1]
        values = {
            "created_at": middle.created_at.astimezone(plus_two),
            "updated_at": middle.updated_at,
            "size": middle.size,
        }
        for name, value in values.items():
            for op, compare in operators.items():
                expected = {
                    i.id
                    for i in images
                    if getattr(i, name) is not None and compare(getattr(i, name), value)
                }
                found = await self.ids(
                    registry, comparisons=(Comparison(name, op, value),)
                )
                self.assertEqual(set(found), expected, f"{name} {op} {value}")
                self.assertTrue(0 < len(found) < len(images), (name, op))

    @conformance
    async def test_list_comparisons_combine(self, registry: Any) -> None:
        """
        Several comparisons must all hold (a range on one field), and they
        combine with size_min/size_max and with a page order.
        """
        images = [
            make_image(created_at=T0 + timedelta(hours=n), size=n * 10)
            for n in range(6)
        ]
        await self.create_all(registry, images)
        comparisons = (
            Comparison("created_at", "gte", T0 + timedelta(hours=1)),
            Comparison("created_at", "lt", T0 + timedelta(hours=5)),
            Comparison("size", "neq", 30),
        )
        self.assertEqual(
            await self.ids(
                registry,
                comparisons=comparisons,
                size_max=40,
                sort=(("created_at", "asc"),),
            ),
            [images[1].id, images[2].id, images[4].id],
        )
        query = ImageQuery(comparisons=comparisons, sort=(("size", "desc"),))
        self.assertEqual(
            await self.list_all(registry, query, page=1),
            [images[4].id, images[2].id, images[1].id],
        )

    # -- list: who sees what -----------------------------------------------------

    async def scope_fixture(self, registry: Any) -> dict[str, str]:
        """
        Images of each visibility owned by "me", "other" and nobody; shared
        images of "other" that "me" is a member of with each status, one
        only "third" is a member of, and a private one "me" is an accepted
        member of (which must not make it visible). A deleted shared image
        "me" accepted is never listed. Returns the ids by name.
        """
        owners = {
            "public_mine": ("public", "me"),
            "public_other": ("public", "other"),
            "private_mine": ("private", "me"),
            "private_other": ("private", "other"),
            "private_other_member": ("private", "other"),
            "private_unowned": ("private", None),
            "shared_mine": ("shared", "me"),
            "shared_accepted": ("shared", "other"),
            "shared_pending": ("shared", "other"),
            "shared_rejected": ("shared", "other"),
            "shared_third": ("shared", "other"),
            "community_mine": ("community", "me"),
            "community_other": ("community", "other"),
            "community_unowned": ("community", None),
            "deleted": ("shared", "other"),
        }
        ids = {}
        for n, (name, (visibility, owner)) in enumerate(owners.items()):
            image = await registry.create(
                make_image(
                    name=name,
                    visibility=visibility,
                    owner=owner,
                    created_at=T0 + timedelta(seconds=n),
                )
            )
            ids[name] = image.id
        for name, member, status in (
            ("shared_accepted", "me", "accepted"),
            ("shared_pending", "me", "pending"),
            ("shared_rejected", "me", "rejected"),
            ("shared_third", "third", "accepted"),
            ("shared_mine", "other", "accepted"),
            ("private_other_member", "me", "accepted"),
            ("deleted", "me", "accepted"),
        ):
            await registry.add_member(ids[name], member)
            if status != "pending":
                await registry.update_member(ids[name], member, status)
        await registry.delete(ids.pop("deleted"))
        return ids

    async def assertScope(
        self,
        registry: Any,
        ids: dict[str, str],
        cases: Iterable[tuple[Viewer | None, str | None, set[str], set[str]]],
    ) -> None:
        """
        For each (viewer, visibility, member statuses, expected names), the
        listing holds exactly the expected images.
        """
        names = {image_id: name for name, image_id in ids.items()}
        for viewer, visibility, statuses, expected in cases:
            found = await self.ids(
                registry,
                viewer=viewer,
                visibility=visibility,
                member_statuses=frozenset(statuses),
            )
            self.assertEqual(
                {names[i] for i in found},
                expected,
                f"{viewer} visibility={visibility} member_statuses={statuses}",
            )
            self.assertEqual(len(found), len(expected))

    @conformance
    async def test_scope_non_admin(self, registry: Any) -> None:
        """
        A project sees, by default, public images, its own (any visibility)
        and shared images it accepted; "all" adds every community image;
        "public"/"community" are those visibilities; "shared" is its own
        shared images and those it accepted; "private" its own private ones.
        """
        ids = await self.scope_fixture(registry)
        me = Viewer("me")
        public = {"public_mine", "public_other"}
        own = {"public_mine", "private_mine", "shared_mine", "community_mine"}
        default = public | own | {"shared_accepted"}
        community = {"community_mine", "community_other", "community_unowned"}
        accepted = {"accepted"}
        await self.assertScope(
            registry,
            ids,
            [
                (me, None, accepted, default),
                (me, "all", accepted, default | community),
                (me, "public", accepted, public),
                (me, "community", accepted, community),
                (me, "shared", accepted, {"shared_mine", "shared_accepted"}),
                (me, "private", accepted, {"private_mine"}),
                (Viewer("third"), None, accepted, public | {"shared_third"}),
                (Viewer("nobody"), None, accepted, public),
                (Viewer("nobody"), "shared", accepted, set()),
            ],
        )

    @conformance
    async def test_scope_member_statuses(self, registry: Any) -> None:
        """
        Which memberships count follows member_statuses: pending, accepted,
        rejected, several at once, or none; in the default, "all" and
        "shared" scopes alike. Membership of a non-shared image never counts.
        """
        ids = await self.scope_fixture(registry)
        me = Viewer("me")
        base = {
            "public_mine",
            "public_other",
            "private_mine",
            "shared_mine",
            "community_mine",
        }
        community = {"community_other", "community_unowned"}
        every = {"pending", "accepted", "rejected"}
        cases: list[tuple[Viewer | None, str | None, set[str], set[str]]] = []
        for statuses, members in (
            ({"pending"}, {"shared_pending"}),
            ({"accepted"}, {"shared_accepted"}),
            ({"rejected"}, {"shared_rejected"}),
            ({"pending", "rejected"}, {"shared_pending", "shared_rejected"}),
            (every, {"shared_pending", "shared_accepted", "shared_rejected"}),
            (set(), set()),
        ):
            cases.append((me, None, statuses, base | members))
            cases.append((me, "all", statuses, base | community | members))
            cases.append((me, "shared", statuses, {"shared_mine"} | members))
        await self.assertScope(registry, ids, cases)

    @conformance
    async def test_scope_admin(self, registry: Any) -> None:
        """
        An admin sees every image in the chosen visibility whoever owns it
        and whatever the memberships; by default everything but other
        projects' community images (unowned ones included).
        """
        ids = await self.scope_fixture(registry)
        everything = set(ids)
        admin = Viewer("me", is_admin=True)
        by_visibility = {
            v: {name for name in ids if name.startswith(v)}
            for v in ("public", "private", "shared", "community")
        }
        cases: list[tuple[Viewer | None, str | None, set[str], set[str]]] = [
            (
                admin,
                None,
                {"accepted"},
                everything - {"community_other", "community_unowned"},
            ),
            (admin, "all", {"accepted"}, everything),
            (admin, "shared", {"pending"}, by_visibility["shared"]),
            (admin, "shared", set(), by_visibility["shared"]),
        ]
        for visibility, expected in by_visibility.items():
            cases.append((admin, visibility, {"accepted"}, expected))
        cases.append(
            (
                Viewer(None, is_admin=True),
                None,
                {"accepted"},
                everything - by_visibility["community"],
            )
        )
        await self.assertScope(registry, ids, cases)

    @conformance
    async def test_scope_without_project_or_viewer(self, registry: Any) -> None:
        """
        A non-admin viewer with no project owns nothing and is a member of
        nothing: public images, plus community ones with "all". With no
        viewer at all nothing is hidden, and a visibility is a plain filter.
        """
        ids = await self.scope_fixture(registry)
        nobody = Viewer(None)
        public = {"public_mine", "public_other"}
        community = {"community_mine", "community_other", "community_unowned"}
        everything = set(ids)
        accepted = {"accepted"}
        await self.assertScope(
            registry,
            ids,
            [
                (nobody, None, accepted, public),
                (nobody, "all", accepted, public | community),
                (nobody, "shared", accepted, set()),
                (nobody, "private", accepted, set()),
                (nobody, "community", accepted, community),
                (None, None, accepted, everything),
                (None, "all", set(), everything),
                (None, "community", accepted, community),
                (
                    None,
                    "shared",
                    set(),
                    {n for n in everything if n.startswith("shared")},
                ),
            ],
        )

    @conformance
    async def test_scope_combines_with_filters(self, registry: Any) -> None:
        """
        Filters narrow the scope and never widen it: a visibility or owner
        filter cannot reach images the viewer may not see.
        """
        ids = await self.scope_fixture(registry)
        names = {image_id: name for name, image_id in ids.items()}
        me = Viewer("me")
        for filters, expected in (
            ({"visibility": "public"}, {"public_mine", "public_other"}),
            ({"visibility": "private"}, {"private_mine"}),
            ({"owner": "other"}, {"public_other", "shared_accepted"}),
            (
                {"visibility": frozenset({"shared", "community"})},
                {"shared_mine", "shared_accepted", "community_mine"},
            ),
        ):
            found = await self.ids(registry, viewer=me, filters=filters)
            self.assertEqual({names[i] for i in found}, expected, filters)

    @conformance
    async def test_scope_pages_and_markers(self, registry: Any) -> None:
        """
        A scoped listing pages through exactly its images, in order; a
        marker must be an image within the listing's scope
        (a pending membership, another project's community image) and is
        refused with BadRequest otherwise.
        """
        images = self.sort_fixture()
        await self.create_all(registry, images)
        shared = [i for i in images if i.visibility == "shared" and i.owner != "p1"]
        self.assertGreaterEqual(len(shared), 2)
        for image, status in zip(shared, ["accepted", "pending"], strict=False):
            await registry.add_member(image.id, "p1")
            if status != "pending":
                await registry.update_member(image.id, "p1", status)
        p1 = Viewer("p1")
        admin = Viewer("p1", is_admin=True)
        for scope in (
            ImageQuery(viewer=p1),
            ImageQuery(viewer=p1, visibility="all"),
            ImageQuery(
                viewer=p1,
                visibility="shared",
                member_statuses=frozenset({"pending", "accepted"}),
            ),
            ImageQuery(viewer=Viewer("p2", is_admin=True)),
        ):
            for sort in (
                (("name", "desc"),),
                (("size", "asc"), ("created_at", "desc")),
            ):
                query = evolve(scope, sort=sort, limit=1000)
                one_page = [i.id for i in await registry.list(query)]
                visible = set(one_page)
                self.assertTrue(0 < len(visible) < len(images), scope)
                expected = expected_order([i for i in images if i.id in visible], sort)
                self.assertEqual(one_page, expected, (scope, sort))
                self.assertEqual(await self.list_all(registry, query, 2), expected)
        pending = shared[1].id
        community = next(
            i.id for i in images if i.visibility == "community" and i.owner != "p1"
        )
        for query in (
            ImageQuery(marker=pending, viewer=p1),
            ImageQuery(marker=community, viewer=p1),
            ImageQuery(marker=community, viewer=admin),
        ):
            await self.assertFails(registry.list(query), BadRequest)
        for query in (
            ImageQuery(
                marker=pending, viewer=p1, member_statuses=frozenset({"pending"})
            ),
            ImageQuery(marker=community, viewer=p1, visibility="all"),
            ImageQuery(marker=community, viewer=admin, visibility="all"),
        ):
            await registry.list(query)

    # -- members -----------------------------------------------------------------

    @conformance
    async def test_add_member(self, registry: Any) -> None:
        """
        add_member stores a pending membership and fires with it: aware UTC
        timestamps, created_at equal to updated_at; get_member and
        list_members then return it.
        """
        image = await registry.create(make_image(visibility="shared"))
        member = await registry.add_member(image.id, "project-b")
        self.assertIsInstance(member, Member)
        self.assertEqual(
            (member.image_id, member.member_id, member.status),
            (image.id, "project-b", "pending"),
        )
        self.assertEqual(member.created_at.tzinfo, UTC)
        self.assertEqual(member.created_at, member.updated_at)
        self.assertEqual(await registry.get_member(image.id, "project-b"), member)
        self.assertEqual(await registry.list_members(image.id), [member])

    @conformance
    async def test_add_member_twice_conflict(self, registry: Any) -> None:
        """
        Adding a project that is already a member is a Conflict, whatever
        its status, and leaves the membership as it was.
        """
        image = await registry.create(make_image(visibility="shared"))
        await registry.add_member(image.id, "b")
        accepted = await registry.update_member(image.id, "b", "accepted")
        error = await self.assertFails(registry.add_member(image.id, "b"), Conflict)
        self.assertIn("b", error.message)
        self.assertEqual(await registry.get_member(image.id, "b"), accepted)
        self.assertEqual(await registry.list_members(image.id), [accepted])

    @conformance
    async def test_add_member_concurrently_one_wins(self, registry: Any) -> None:
        """
        Of several add_member calls for one project issued at once, exactly
        one succeeds and the others are Conflicts; one membership results.
        """
        image = await registry.create(make_image(visibility="shared"))
        results = await DeferredList(
            [registry.add_member(image.id, "b") for _ in range(6)],
            consumeErrors=True,
        )
        winners = [value for ok, value in results if ok]
        self.assertEqual(len(winners), 1)
        for failure in [value for ok, value in results if not ok]:
            failure.trap(Conflict)
        self.assertEqual(await registry.list_members(image.id), winners)

    @conformance
    async def test_add_member_unknown_image_not_found(self, registry: Any) -> None:
        """add_member to an unknown or deleted image fails with NotFound."""
        await self.assertFails(registry.add_member(new_image_id(), "b"), NotFound)
        image = await registry.create(make_image(visibility="shared"))
        await registry.delete(image.id)
        await self.assertFails(registry.add_member(image.id, "b"), NotFound)

    @conformance
    async def test_get_member_not_found(self, registry: Any) -> None:
        """
        get_member fails with NotFound for an unknown image, a project that
        is not a member, and a project that is a member of another image.
        """
        image = await registry.create(make_image(visibility="shared"))
        other = await registry.create(make_image(visibility="shared"))
        await registry.add_member(other.id, "b")
        await self.assertFails(registry.get_member(new_image_id(), "b"), NotFound)
        await self.assertFails(registry.get_member(image.id, "b"), NotFound)
        await self.assertFails(registry.get_member(image.id, "c"), NotFound)
        self.assertEqual((await registry.get_member(other.id, "b")).member_id, "b")

    @conformance
    async def test_list_members_oldest_first(self, registry: Any) -> None:
        """
        list_members gives the image's members only, oldest first (the
        order they were added); an image without members gives [].
        """
        image = await registry.create(make_image(visibility="shared"))
        other = await registry.create(make_image(visibility="shared"))
        self.assertEqual(await registry.list_members(image.id), [])
        added = [await registry.add_member(image.id, m) for m in ("m3", "m1", "m2")]
        await registry.add_member(other.id, "m4")
        listed = await registry.list_members(image.id)
        self.assertEqual(listed, added)
        self.assertEqual(
            [m.member_id for m in await registry.list_members(other.id)], ["m4"]
        )

    @conformance
    async def test_list_members_unknown_image_not_found(self, registry: Any) -> None:
        """list_members of an unknown image fails with NotFound."""
        await self.assertFails(registry.list_members(new_image_id()), NotFound)

    @conformance
    async def test_update_member(self, registry: Any) -> None:
        """
        update_member sets each status in turn, moves updated_at forward and
        keeps created_at; get_member and list_members agree.
        """
        image = await registry.create(make_image(visibility="shared"))
        previous = await registry.add_member(image.id, "b")
        for status in ("accepted", "rejected", "pending", "accepted"):
            updated = await registry.update_member(image.id, "b", status)
            self.assertEqual(updated.status, status)
            self.assertGreater(updated.updated_at, previous.updated_at)
            self.assertEqual(updated.created_at, previous.created_at)
            self.assertEqual(updated.updated_at.tzinfo, UTC)
            self.assertEqual(await registry.get_member(image.id, "b"), updated)
            self.assertEqual(await registry.list_members(image.id), [updated])
            previous = updated

    @conformance
    async def test_update_member_bad_status(self, registry: Any) -> None:
        """A status outside pending/accepted/rejected is a BadRequest; nothing changes."""
        image = await registry.create(make_image(visibility="shared"))
        member = await registry.add_member(image.id, "b")
        for status in ("maybe", "Accepted", "", "all"):
            await self.assertFails(
                registry.update_member(image.id, "b", status), BadRequest
            )
        self.assertEqual(await registry.get_member(image.id, "b"), member)

    @conformance
    async def test_update_member_not_found(self, registry: Any) -> None:
        """update_member of an absent membership or unknown image is NotFound."""
        image = await registry.create(make_image(visibility="shared"))
        await self.assertFails(
            registry.update_member(image.id, "b", "accepted"), NotFound
        )
        await self.assertFails(
            registry.update_member(new_image_id(), "b", "accepted"), NotFound
        )
        self.assertEqual(await registry.list_members(image.id), [])

    @conformance
    async def test_remove_member(self, registry: Any) -> None:
        """
        remove_member fires with None and the membership is gone (get is
        NotFound, list leaves it out, removing again is NotFound); the
        project can then be added again, pending anew.
        """
        image = await registry.create(make_image(visibility="shared"))
        await registry.add_member(image.id, "b")
        await registry.update_member(image.id, "b", "accepted")
        kept = await registry.add_member(image.id, "c")
        self.assertIsNone(await registry.remove_member(image.id, "b"))
        await self.assertFails(registry.get_member(image.id, "b"), NotFound)
        self.assertEqual(await registry.list_members(image.id), [kept])
        await self.assertFails(registry.remove_member(image.id, "b"), NotFound)
        again = await registry.add_member(image.id, "b")
        self.assertEqual(again.status, "pending")
        await self.assertFails(registry.remove_member(new_image_id(), "b"), NotFound)

    @conformance
    async def test_remove_member_repeated(self, registry: Any) -> None:
        """
        A membership removal repeated with its write_id (its answer was
        lost) succeeds again; a new removal of the absent member, with
        another write_id, is still NotFound.
        """
        image = await registry.create(make_image(visibility="shared"))
        await registry.add_member(image.id, "b")
        self.assertIsNone(await registry.remove_member(image.id, "b", write_id="rm-1"))
        self.assertIsNone(await registry.remove_member(image.id, "b", write_id="rm-1"))
        await self.assertFails(registry.get_member(image.id, "b"), NotFound)
        await self.assertFails(
            registry.remove_member(image.id, "b", write_id="rm-2"), NotFound
        )
        await self.assertFails(registry.remove_member(image.id, "b"), NotFound)

    @conformance
    async def test_members_of_deleted_image_not_found(self, registry: Any) -> None:
        """
        Once the image is deleted, every member method fails with NotFound,
        and its memberships no longer list it for the member.
        """
        image = await registry.create(make_image(visibility="shared", owner="a"))
        await registry.add_member(image.id, "b")
        await registry.update_member(image.id, "b", "accepted")
        self.assertEqual(await self.ids(registry, viewer=Viewer("b")), [image.id])
        await registry.delete(image.id)
        for call in (
            lambda: registry.get_member(image.id, "b"),
            lambda: registry.list_members(image.id),
            lambda: registry.update_member(image.id, "b", "rejected"),
            lambda: registry.remove_member(image.id, "b"),
            lambda: registry.add_member(image.id, "c"),
        ):
            await self.assertFails(call(), NotFound)
        self.assertEqual(await self.ids(registry, viewer=Viewer("b")), [])

    @conformance
    async def test_members_are_per_image(self, registry: Any) -> None:
        """
        One project's memberships of two images are independent: a status
        change or removal on one leaves the other alone.
        """
        first = await registry.create(make_image(visibility="shared"))
        second = await registry.create(make_image(visibility="shared"))
        await registry.add_member(first.id, "b")
        untouched = await registry.add_member(second.id, "b")
        await registry.update_member(first.id, "b", "accepted")
        self.assertEqual(await registry.get_member(second.id, "b"), untouched)
        await registry.remove_member(first.id, "b")
        self.assertEqual(await registry.get_member(second.id, "b"), untouched)

    # -- tags --------------------------------------------------------------------

    @conformance
    async def test_add_tag(self, registry: Any) -> None:
        """
        add_tag fires with the record carrying the new tag, as get then
        shows it, and moves updated_at; adding a tag the image has changes
        nothing, updated_at included.
        """
        image = await registry.create(make_image(tags={"a"}))
        tagged = await registry.add_tag(image.id, "b")
        self.assertEqual(tagged.tags, frozenset({"a", "b"}))
        self.assertGreater(tagged.updated_at, image.updated_at)
        self.assertEqual(await registry.get(image.id), tagged)
        self.assertEqual(await registry.add_tag(image.id, "b"), tagged)
        self.assertEqual(await registry.get(image.id), tagged)

    @conformance
    async def test_remove_tag(self, registry: Any) -> None:
        """
        remove_tag fires with the record without the tag, as get then shows
        it, and moves updated_at; removing a tag the image does not have is
        NotFound and changes nothing.
        """
        image = await registry.create(make_image(tags={"a", "b"}))
        untagged = await registry.remove_tag(image.id, "a")
        self.assertEqual(untagged.tags, frozenset({"b"}))
        self.assertGreater(untagged.updated_at, image.updated_at)
        self.assertEqual(await registry.get(image.id), untagged)
        await self.assertFails(registry.remove_tag(image.id, "a"), NotFound)
        self.assertEqual(await registry.get(image.id), untagged)

    @conformance
    async def test_remove_tag_repeated(self, registry: Any) -> None:
        """
        A tag removal repeated with its write_id (its answer was lost)
        answers the record as it is, the version moved once; a new removal
        of the absent tag, with another write_id, is still NotFound, and a
        write between the two makes the old id a new removal again.
        """
        image = await registry.create(make_image(tags={"a", "b"}))
        untagged = await registry.remove_tag(image.id, "a", write_id="untag-1")
        self.assertEqual(untagged.version, 2)
        self.assertEqual(await registry.remove_tag(image.id, "a", write_id="untag-1"), untagged)
        self.assertEqual(await registry.get(image.id), untagged)
        await self.assertFails(registry.remove_tag(image.id, "a", write_id="untag-2"), NotFound)
        await registry.update(image.id, ImageUpdate(fields={"name": "n"}), write_id="w")
        await self.assertFails(registry.remove_tag(image.id, "a", write_id="untag-1"), NotFound)
        await self.assertFails(registry.remove_tag(image.id, "b", write_id=""), BadRequest)

    @conformance
    async def test_tags_of_unknown_or_deleted_image_not_found(
        self, registry: Any
    ) -> None:
        """add_tag and remove_tag on an unknown or deleted image are NotFound."""
        await self.assertFails(registry.add_tag(new_image_id(), "a"), NotFound)
        await self.assertFails(registry.remove_tag(new_image_id(), "a"), NotFound)
        image = await registry.create(make_image(tags={"a"}))
        await registry.delete(image.id)
        await self.assertFails(registry.add_tag(image.id, "b"), NotFound)
        await self.assertFails(registry.remove_tag(image.id, "a"), NotFound)

    @conformance
    async def test_add_tag_invalid_bad_request(self, registry: Any) -> None:
        """
        A tag that is empty, longer than 255 characters or not a string is a
        BadRequest, and the image is unchanged; 255 characters is allowed.
        """
        image = await registry.create(make_image())
        for tag in ("", "t" * 256, 7, None):
            await self.assertFails(registry.add_tag(image.id, tag), BadRequest)
        self.assertEqual(await registry.get(image.id), image)
        longest = await registry.add_tag(image.id, "t" * 255)
        self.assertEqual(longest.tags, frozenset({"t" * 255}))

    @conformance
    async def test_tags_are_per_image(self, registry: Any) -> None:
        """Tagging or untagging one image leaves another with that tag alone."""
        first = await registry.create(make_image(tags={"a"}))
        second = await registry.create(make_image(tags={"a"}))
        await registry.add_tag(first.id, "b")
        await registry.remove_tag(first.id, "a")
        self.assertEqual(await registry.get(second.id), second)

    @conformance
    async def test_concurrent_tag_changes_all_take_effect(self, registry: Any) -> None:
        """
        Many add_tag and remove_tag calls on one image, for distinct tags,
        issued at once, all succeed and all take effect: none undoes
        another, as a read of the tag set followed by a write of the whole
        set would (on a real thread pool the reads would overlap).
        """
        kept = {f"kept-{n}" for n in range(5)}
        dropped = [f"dropped-{n}" for n in range(10)]
        added = [f"added-{n}" for n in range(20)]
        image = await registry.create(make_image(tags=kept | set(dropped)))
        results = await DeferredList(
            [registry.add_tag(image.id, tag) for tag in added]
            + [registry.remove_tag(image.id, tag) for tag in dropped],
            consumeErrors=True,
        )
        for ok, value in results:
            if not ok:
                value.raiseException()
        self.assertEqual((await registry.get(image.id)).tags, kept | set(added))

    # -- upload leases -------------------------------------------------------------

    async def saving(self, registry: Any) -> Image:
        image = await registry.create(make_image())
        return await registry.update(image.id, ImageUpdate(fields={"status": SAVING}))

    @conformance
    async def test_live_lease_is_not_reclaimed(self, registry: Any) -> None:
        """
        An upload whose node holds a lease that has not expired is never
        reclaimed (nor by a node naming another node as dead); once that
        lease is released, it is.
        """
        image = await self.saving(registry)
        await registry.hold_uploads("node-a", {image.id: QUEUED}, 3600)
        self.assertEqual(await registry.reclaim_uploads(), [])
        self.assertEqual(await registry.reclaim_uploads("node-b"), [])
        self.assertEqual((await registry.get(image.id)).status, SAVING)
        await registry.release_upload(image.id, "node-a")
        await registry.release_upload(image.id, "node-a")  # no lease: no error
        [reclaimed] = await registry.reclaim_uploads()
        self.assertEqual((reclaimed.id, reclaimed.status), (image.id, KILLED))

    @conformance
    async def test_expired_lease_is_reclaimed_once(self, registry: Any) -> None:
        """
        An upload whose lease has expired is reclaimed: its image takes the
        status the lease names (queued, as a v2 abort sets), updated_at
        moves, and a second reclaim (another node's) finds nothing.
        Images not saving are never touched.
        """
        image = await self.saving(registry)
        other = await registry.create(make_image())
        await registry.hold_uploads("node-a", {image.id: QUEUED, other.id: KILLED}, 0)
        [reclaimed] = await registry.reclaim_uploads()
        self.assertEqual(reclaimed.status, QUEUED)
        self.assertGreater(reclaimed.updated_at, image.updated_at)
        self.assertEqual(await registry.get(image.id), reclaimed)
        self.assertEqual(await registry.reclaim_uploads(), [])
        self.assertEqual(await registry.get(other.id), other)

    @conformance
    async def test_renewal_keeps_an_upload(self, registry: Any) -> None:
        """
        hold_uploads renews a node's leases, all in one call: an expired
        lease renewed before anyone reclaims is live again.
        """
        first, second = await self.saving(registry), await self.saving(registry)
        await registry.hold_uploads("node-a", {first.id: KILLED, second.id: KILLED}, 0)
        await registry.hold_uploads("node-a", {first.id: KILLED, second.id: KILLED}, 3600)
        self.assertEqual(await registry.reclaim_uploads(), [])

    @conformance
    async def test_dead_node_leases_count_as_expired(self, registry: Any) -> None:
        """
        reclaim_uploads(dead_node_id) reclaims that node's uploads although
        their leases hold (a restarted node's own uploads from before), and
        leaves another node's live upload alone.
        """
        mine, theirs = await self.saving(registry), await self.saving(registry)
        await registry.hold_uploads("node-a", {mine.id: KILLED}, 3600)
        await registry.hold_uploads("node-b", {theirs.id: KILLED}, 3600)
        reclaimed = await registry.reclaim_uploads("node-a")
        self.assertEqual([image.id for image in reclaimed], [mine.id])
        self.assertEqual((await registry.get(theirs.id)).status, SAVING)

    @conformance
    async def test_another_nodes_lease_keeps_an_upload(self, registry: Any) -> None:
        """
        Leases are per node: a second node that tried to start the same
        upload and released its lease leaves the first node's lease, so the
        upload is not reclaimed.
        """
        image = await self.saving(registry)
        await registry.hold_uploads("node-a", {image.id: KILLED}, 3600)
        await registry.hold_uploads("node-b", {image.id: KILLED}, 3600)
        await registry.release_upload(image.id, "node-b")
        self.assertEqual(await registry.reclaim_uploads(), [])

    @conformance
    async def test_lease_on_unknown_or_deleted_image_skipped(self, registry: Any) -> None:
        """
        hold_uploads skips ids of unknown or deleted images (no error) and
        still holds the rest; a bad node id or status is a BadRequest.
        """
        image = await self.saving(registry)
        deleted = await registry.create(make_image())
        await registry.delete(deleted.id)
        await registry.hold_uploads(
            "node-a", {image.id: KILLED, deleted.id: KILLED, new_image_id(): KILLED}, 3600
        )
        self.assertEqual(await registry.reclaim_uploads(), [])
        await self.assertFails(registry.hold_uploads("", {image.id: KILLED}, 60), BadRequest)
        await self.assertFails(
            registry.hold_uploads("node-a", {image.id: "nonsense"}, 60), BadRequest
        )

    # -- node claims ---------------------------------------------------------------

    @conformance
    async def test_node_claim_held_by_a_live_instance(self, registry: Any) -> None:
        """
        A node id claimed by one instance is not another's while the claim
        holds: the other is told who holds it and for how long, and nothing
        changes; the holder renews it freely.
        """
        self.assertIsNone(await registry.claim_node("node-a", "first", 3600))
        held = await registry.claim_node("node-a", "second", 3600)
        self.assertIsInstance(held, HeldClaim)
        self.assertEqual(held.instance, "first")
        self.assertGreater(held.seconds_left, 3500)
        self.assertLessEqual(held.seconds_left, 3600)
        self.assertIsNone(await registry.claim_node("node-a", "first", 3600))
        self.assertEqual(
            (await registry.claim_node("node-a", "second", 60)).instance, "first"
        )
        # Other ids are other nodes.
        self.assertIsNone(await registry.claim_node("node-b", "second", 3600))

    @conformance
    async def test_node_claim_taken_over_from_a_stopped_instance(
        self, registry: Any
    ) -> None:
        """
        A claim is taken over, unexpired, only from the instance the caller
        names as stopped (C{replacing}); naming another changes nothing.
        """
        await registry.claim_node("node-a", "crashed", 3600)
        held = await registry.claim_node("node-a", "new", 3600, replacing="someone-else")
        self.assertEqual(held.instance, "crashed")
        self.assertIsNone(await registry.claim_node("node-a", "new", 3600, replacing="crashed"))
        self.assertEqual((await registry.claim_node("node-a", "crashed", 3600)).instance, "new")

    @conformance
    async def test_node_claim_expires_or_is_released(self, registry: Any) -> None:
        """
        An expired claim (its process stopped renewing) passes to the next
        instance that claims the id, and so does a released one; releasing
        another instance's claim, or none, changes nothing.
        """
        self.assertIsNone(await registry.claim_node("node-a", "crashed", 0))
        self.assertIsNone(await registry.claim_node("node-a", "restarted", 3600))
        await registry.release_node("node-a", "crashed")
        self.assertIsNotNone(await registry.claim_node("node-a", "third", 3600))
        await registry.release_node("node-a", "restarted")
        await registry.release_node("node-a", "restarted")
        self.assertIsNone(await registry.claim_node("node-a", "third", 3600))

    @conformance
    async def test_node_claim_refusals(self, registry: Any) -> None:
        """A node id or instance that is empty or too long is a BadRequest."""
        for node_id, instance in (("", "i"), ("n" * 256, "i"), ("n", ""), ("n", "i" * 256)):
            await self.assertFails(registry.claim_node(node_id, instance, 60), BadRequest)

    @conformance
    async def test_one_of_concurrent_node_claims_wins(self, registry: Any) -> None:
        """
        Of several instances claiming a fresh node id at once (two nodes
        started with one node_id), exactly one gets it.
        """
        results = await DeferredList(
            [registry.claim_node("node-a", f"instance-{n}", 3600) for n in range(6)],
            consumeErrors=True,
        )
        self.assertTrue(all(ok for ok, _ in results), results)
        self.assertEqual([value for _, value in results].count(None), 1)

    async def importing(self, registry: Any, status: str = IMAGE_IMPORTING) -> Image:
        """An image mid-import: staged data first, then a copy recorded."""
        image = await registry.create(make_image(disk_format="raw", container_format="bare"))
        staged = Location("file:///staging/x", "file")
        await registry.update(image.id, ImageUpdate(fields={"status": UPLOADING, "locations": (staged,)}))
        fields: dict[str, Any] = {"locations": (staged, Location("file:///second/x", "second"))}
        if status == IMAGE_IMPORTING:
            fields["status"] = IMAGE_IMPORTING
        return await registry.update(
            image.id,
            ImageUpdate(fields=fields, properties={"os_glance_importing_to_stores": "third",
                                                   "os_glance_failed_import": "fourth"}),
        )

    @conformance
    async def test_reclaimed_imports(self, registry: Any) -> None:
        """
        An import whose node is gone: glance-direct's lease (uploading)
        puts the image back to uploading with its staged data only;
        web-download's (queued) to queued with no data; either way the
        stores still to do join os_glance_failed_import and none is left
        importing. An importing image with no lease (from before leases) is
        queued. A live lease keeps an import.
        """
        direct, web, unleased, live = [await self.importing(registry) for _ in range(4)]
        await registry.hold_uploads("node-a", {direct.id: UPLOADING, web.id: QUEUED}, 0)
        await registry.hold_uploads("node-b", {live.id: QUEUED}, 3600)
        reclaimed = {image.id: image for image in await registry.reclaim_uploads()}
        self.assertEqual(set(reclaimed), {direct.id, web.id, unleased.id})
        self.assertEqual(reclaimed[direct.id].status, UPLOADING)
        self.assertEqual(reclaimed[direct.id].locations, (Location("file:///staging/x", "file"),))
        for image in reclaimed.values():
            self.assertEqual(image.properties["os_glance_importing_to_stores"], "")
            self.assertEqual(image.properties["os_glance_failed_import"], "fourth,third")
            self.assertEqual(await registry.get(image.id), image)
        for image_id in (web.id, unleased.id):
            self.assertEqual((reclaimed[image_id].status, reclaimed[image_id].locations), (QUEUED, ()))
        self.assertEqual(await registry.get(live.id), live)
        self.assertEqual(await registry.reclaim_uploads(), [])

    @conformance
    async def test_reclaimed_stages_and_copies(self, registry: Any) -> None:
        """
        A stage whose node is gone (uploading, no data recorded yet) is
        queued again; a stage that had ended (its data recorded, its lease
        release lost) is left alone. A copy-image whose node is gone leaves
        the image active with its copies, the store it was copying to
        failed; an active image's stale upload lease changes nothing. Each
        expired lease is dropped: a second reclaim finds nothing.
        """
        stage = await registry.update(
            (await registry.create(make_image())).id, ImageUpdate(fields={"status": UPLOADING})
        )
        staged = await self.importing(registry, status=UPLOADING)
        copy = await self.importing(registry)
        copy = await registry.update(copy.id, ImageUpdate(fields={"status": ACTIVE}))
        stale = await registry.create(make_image(status=ACTIVE))
        await registry.hold_uploads(
            "node-a", {stage.id: QUEUED, staged.id: QUEUED, copy.id: ACTIVE, stale.id: QUEUED}, 0
        )
        reclaimed = {image.id: image for image in await registry.reclaim_uploads()}
        self.assertEqual(set(reclaimed), {stage.id, copy.id})
        self.assertEqual(reclaimed[stage.id].status, QUEUED)
        self.assertEqual(reclaimed[copy.id].status, ACTIVE)
        self.assertEqual(reclaimed[copy.id].locations, copy.locations)
        self.assertEqual(reclaimed[copy.id].properties["os_glance_failed_import"], "fourth,third")
        self.assertEqual(await registry.get(staged.id), staged)
        self.assertEqual(await registry.get(stale.id), stale)
        self.assertEqual(await registry.reclaim_uploads(), [])

    # -- tasks ---------------------------------------------------------------------

    async def make_tasks(self, registry: Any, count: int, **fields: Any) -> list[Task]:
        made = []
        for index in range(count):
            values: dict[str, Any] = {
                "id": new_task_id(),
                "type": TASK_IMPORT,
                "status": TASK_PENDING,
                "created_at": T0 + timedelta(seconds=index),
                "updated_at": T0 + timedelta(seconds=index),
                "owner": "project-a",
            }
            values.update(fields)
            made.append(await registry.create_task(Task(**values)))
        return made

    @conformance
    async def test_task_round_trip(self, registry: Any) -> None:
        """
        A task is stored as given, every field (its JSON input and result,
        the image, request and user it was made for) read back equal.
        """
        task = Task(
            id=new_task_id(),
            type=API_IMAGE_IMPORT,
            status=TASK_PROCESSING,
            created_at=T0,
            updated_at=T0 + timedelta(microseconds=1),
            owner="project-a",
            input={"image_id": "x", "import_req": {"method": {"name": "web-download"}}},
            result={"image_id": "y"},
            message="half way",
            expires_at=datetime.now(UTC) + timedelta(days=3),
            image_id=new_image_id(),
            request_id="req-" + "a" * 36,
            user_id="user-a",
        )
        before = datetime.now(UTC) - timedelta(minutes=1)
        stored = await registry.create_task(task)
        # Created and updated by the registry's clock.
        self.assertEqual(stored.created_at, stored.updated_at)
        self.assertGreater(stored.created_at, before)
        self.assertEqual(evolve(stored, created_at=T0, updated_at=T0), evolve(task, updated_at=T0))
        self.assertEqual(await registry.get_task(task.id), stored)
        await self.assertFails(registry.create_task(task), Conflict)
        await self.assertFails(registry.get_task(new_task_id()), NotFound)

    @conformance
    async def test_task_refusals(self, registry: Any) -> None:
        """A task of no known type or status, a naive time or a long owner is a 400."""
        [task] = await self.make_tasks(registry, 1)
        for bad in (
            evolve(task, id=new_task_id(), type="convert"),
            evolve(task, id=new_task_id(), status="running"),
            evolve(task, id=new_task_id(), expires_at=T0.replace(tzinfo=None)),
            evolve(task, id=new_task_id(), owner="o" * 256),
        ):
            await self.assertFails(registry.create_task(bad), BadRequest)

    @conformance
    async def test_task_moves_as_glance_allows(self, registry: Any) -> None:
        """
        pending -> processing -> success, with the result and an expiry
        set by the registry's clock from expires_in; an ended task moves
        no more (409, unchanged); pending -> failure keeps the message.
        """
        first, second = await self.make_tasks(registry, 2)
        processing = await registry.update_task(first.id, TaskChange(TASK_PROCESSING))
        self.assertEqual(processing.status, TASK_PROCESSING)
        self.assertIsNone(processing.expires_at)
        self.assertGreaterEqual(processing.updated_at, first.updated_at)
        done = await registry.update_task(
            first.id, TaskChange(TASK_SUCCESS, result={"image_id": "i"}, expires_in=3600)
        )
        self.assertEqual((done.status, done.result), (TASK_SUCCESS, {"image_id": "i"}))
        assert done.expires_at is not None
        self.assertAlmostEqual(
            (done.expires_at - done.updated_at).total_seconds(), 3600, delta=60
        )
        await self.assertFails(registry.update_task(first.id, TaskChange(TASK_FAILURE)), Conflict)
        self.assertEqual(await registry.get_task(first.id), done)
        failed = await registry.update_task(second.id, TaskChange(TASK_FAILURE, message="gone"))
        self.assertEqual((failed.status, failed.message), (TASK_FAILURE, "gone"))
        await self.assertFails(registry.update_task(new_task_id(), TaskChange(TASK_FAILURE)), NotFound)

    @conformance
    async def test_expired_task_is_gone(self, registry: Any) -> None:
        """
        A task past its expires_at is neither found, listed nor moved;
        delete_expired_tasks deletes it (and only it) for good.
        """
        task, kept, ended = await self.make_tasks(registry, 3)
        await registry.update_task(task.id, TaskChange(TASK_FAILURE, expires_in=0))
        await registry.update_task(ended.id, TaskChange(TASK_FAILURE, expires_in=3600))
        await self.assertFails(registry.get_task(task.id), NotFound)
        await self.assertFails(registry.update_task(task.id, TaskChange(TASK_FAILURE)), NotFound)
        self.assertEqual({t.id for t in await registry.list_tasks(TaskQuery())}, {kept.id, ended.id})
        self.assertEqual(await registry.delete_expired_tasks(), 1)
        self.assertEqual(await registry.delete_expired_tasks(), 0)
        self.assertEqual({t.id for t in await registry.list_tasks(TaskQuery())}, {kept.id, ended.id})

    @conformance
    async def test_list_tasks_filters_sorts_and_pages(self, registry: Any) -> None:
        """
        Listings are newest first by default, filter by type, status,
        image and owner, sort by a key with created_at and id breaking
        ties, and page after a marker to the end; a marker naming no task
        the query could list is a 400.
        """
        image_id = new_image_id()
        made = await self.make_tasks(registry, 5)
        other = await self.make_tasks(
            registry, 2, owner="project-b", type=API_IMAGE_IMPORT, image_id=image_id
        )
        await registry.update_task(made[1].id, TaskChange(TASK_PROCESSING))

        async def ids(**query: Any) -> list[str]:
            return [t.id for t in await registry.list_tasks(TaskQuery(**query))]

        everything = sorted(made + other, key=lambda t: (t.created_at, t.id), reverse=True)
        self.assertEqual(await ids(), [t.id for t in everything])
        self.assertEqual(await ids(owner="project-b"), [t.id for t in reversed(other)])
        self.assertEqual(await ids(image_id=image_id, sort_dir="asc"), [t.id for t in other])
        self.assertEqual(await ids(type=TASK_IMPORT, status=TASK_PROCESSING), [made[1].id])
        by_status = await ids(sort_key="status", sort_dir="asc", owner="project-a")
        self.assertEqual(by_status[0], made[0].id)  # pending < processing
        self.assertEqual(by_status[-1], made[1].id)
        paged: list[str] = []
        marker = None
        for _ in range(10):
            page = await ids(limit=2, marker=marker)
            if not page:
                break
            paged += page
            marker = page[-1]
        self.assertEqual(paged, [t.id for t in everything])
        await self.assertFails(registry.list_tasks(TaskQuery(marker=new_task_id())), BadRequest)
        await self.assertFails(
            registry.list_tasks(TaskQuery(owner="project-a", marker=other[0].id)), BadRequest
        )
        await self.assertFails(registry.list_tasks(TaskQuery(sort_key="message")), BadRequest)
        await self.assertFails(registry.list_tasks(TaskQuery(status="done")), BadRequest)
