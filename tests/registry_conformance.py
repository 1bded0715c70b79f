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

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from glance_tx.errors import BadRequest, Conflict, GlanceError, NotFound
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
    Image,
    ImageQuery,
    ImageUpdate,
    new_image_id,
)
from glance_tx.registry.interface import IRegistry

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
            images = await registry.list(
                ImageQuery(
                    filters=query.filters,
                    properties=query.properties,
                    size_min=query.size_min,
                    size_max=query.size_max,
                    sort=query.sort,
                    exclude_statuses=query.exclude_statuses,
                    visible_to=query.visible_to,
                    marker=marker,
                    limit=page,
                )
            )
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
            locations=("file:///var/lib/b", "swift://c/a", "file:///var/lib/a"),
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
        image = make_image(disk_format="floppy")
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
        self.assertEqual(updated.locations, ("file:///c",))
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
    async def test_list_visible_to(self, registry: Any) -> None:
        """
        visible_to lists public images and the project's own, whatever their
        visibility; None lists everything.
        """
        public = make_image(visibility="public", owner="other")
        own_private = make_image(visibility="private", owner="mine")
        own_shared = make_image(visibility="shared", owner="mine")
        others = [
            make_image(visibility=v, owner="other")
            for v in ("private", "shared", "community")
        ]
        unowned = make_image(visibility="private", owner=None)
        await self.create_all(
            registry, [public, own_private, own_shared, *others, unowned]
        )
        self.assertEqual(
            set(await self.ids(registry, visible_to="mine")),
            {public.id, own_private.id, own_shared.id},
        )
        self.assertEqual(len(await self.ids(registry)), 7)

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
        query = ImageQuery(sort=(("name", "desc"),), visible_to="p1", size_min=6)
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
        for marker, visible_to in (
            (new_image_id(), None),
            ("not-a-uuid", None),
            (gone.id, None),
            (hidden.id, "mine"),
        ):
            error = await self.assertFails(
                registry.list(ImageQuery(marker=marker, visible_to=visible_to)),
                BadRequest,
            )
            self.assertIn("marker", error.message.lower())
        self.assertEqual(await registry.list(ImageQuery(marker=hidden.id)), [])

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
