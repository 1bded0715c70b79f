"""
Tests for L{glance_tx.registry.wire}: every registry value survives a trip
through JSON text exactly, over many generated values, and errors come back
as the class that was raised.
"""

from __future__ import annotations

import json
import random
import string
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from glance_tx import errors
from glance_tx.errors import (
    BadRequest,
    Conflict,
    GlanceError,
    NotFound,
    ServiceUnavailable,
    StoreError,
)
from glance_tx.images import (
    COMPARABLE_FIELDS,
    COMPARISON_OPERATORS,
    CONTAINER_FORMATS,
    DISK_FORMATS,
    LIST_VISIBILITIES,
    MEMBER_STATUSES,
    SORT_KEYS,
    STATUSES,
    VISIBILITIES,
    Comparison,
    Image,
    ImageQuery,
    ImageUpdate,
    Location,
    Member,
    Viewer,
    new_image_id,
)
from glance_tx.metadefs.model import (
    Association,
    Definition,
    Namespace,
    NamespaceContent,
    NamespaceQuery,
    ResourceType,
)
from glance_tx.registry import wire
from glance_tx.registry.interface import HeldClaim
from glance_tx.tasks import (
    API_IMAGE_IMPORT,
    FAILURE,
    IMPORT,
    PENDING,
    Task,
    TaskChange,
    TaskQuery,
    new_task_id,
)

#: How many generated values each round-trip test tries.
EXAMPLES = 300


def through_json(value: Any) -> Any:
    """What the other end parses: the value as JSON text and back."""
    return json.loads(json.dumps(value))


class Values:
    """Random registry values from a seeded generator (reproducible)."""

    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    def maybe(self, value: Any) -> Any:
        return value if self.r.random() < 0.7 else None

    def text(self, length: int = 12) -> str:
        alphabet = string.ascii_letters + string.digits + " /%?#&=+\"'\\é€☃"
        return "".join(
            self.r.choice(alphabet) for _ in range(self.r.randint(1, length))
        )

    def moment(self) -> datetime:
        zone = self.r.choice(
            [
                UTC,
                timezone(timedelta(hours=2)),
                timezone(timedelta(hours=-5, minutes=-30)),
            ]
        )
        return datetime(2000, 1, 1, tzinfo=UTC).astimezone(zone) + timedelta(
            seconds=self.r.randint(0, 10**9), microseconds=self.r.randint(0, 999_999)
        )

    def image(self) -> Image:
        deleted = self.r.random() < 0.2
        return Image(
            id=new_image_id(),
            status=self.r.choice(sorted(STATUSES)),
            created_at=self.moment(),
            updated_at=self.moment(),
            name=self.maybe(self.text()),
            size=self.maybe(self.r.randint(0, 2**50)),
            virtual_size=self.maybe(self.r.randint(0, 2**50)),
            checksum=self.maybe(self.text(32)),
            os_hash_algo=self.maybe("sha512"),
            os_hash_value=self.maybe(self.text(128)),
            disk_format=self.maybe(self.r.choice(sorted(DISK_FORMATS))),
            container_format=self.maybe(self.r.choice(sorted(CONTAINER_FORMATS))),
            visibility=self.r.choice(sorted(VISIBILITIES)),
            owner=self.maybe(self.text()),
            min_ram=self.r.randint(0, 2**31 - 1),
            min_disk=self.r.randint(0, 2**31 - 1),
            protected=self.r.random() < 0.5,
            os_hidden=self.r.random() < 0.5,
            locations=[self.location() for _ in range(self.r.randint(0, 4))],
            properties={self.text(): self.text() for _ in range(self.r.randint(0, 5))},
            tags={self.text() for _ in range(self.r.randint(0, 5))},
            deleted_at=self.moment() if deleted else None,
            deleted=deleted,
        )

    def location(self) -> Location:
        return Location(self.text(40), self.maybe(self.text()))

    def scalar(self) -> Any:
        return self.r.choice(
            [
                None,
                True,
                False,
                self.r.randint(-(2**40), 2**40),
                self.text(),
                self.moment(),
            ]
        )

    def filter_value(self) -> Any:
        if self.r.random() < 0.3:
            return frozenset(self.text() for _ in range(self.r.randint(0, 4)))
        return self.scalar()

    def update(self) -> ImageUpdate:
        fields: dict[str, Any] = {}
        for name in self.r.sample(["name", "status", "size", "protected", "owner"], 3):
            fields[name] = self.scalar()
        if self.r.random() < 0.5:
            fields["locations"] = tuple(
                self.location() for _ in range(self.r.randint(0, 3))
            )
        return ImageUpdate(
            fields=fields,
            properties={self.text(): self.maybe(self.text()) for _ in range(3)},
            purge_properties=self.r.random() < 0.5,
            tags=self.maybe(
                frozenset(self.text() for _ in range(self.r.randint(0, 3)))
            ),
        )

    def query(self) -> ImageQuery:
        sort = tuple(
            (key, self.r.choice(["asc", "desc"]))
            for key in self.r.sample(sorted(SORT_KEYS), self.r.randint(0, 3))
        )
        comparisons = tuple(
            Comparison(
                name,
                self.r.choice(sorted(COMPARISON_OPERATORS)),
                self.r.randint(0, 10**9) if name == "size" else self.moment(),
            )
            for name in self.r.sample(sorted(COMPARABLE_FIELDS), self.r.randint(0, 3))
        )
        viewer = self.maybe(Viewer(self.maybe(self.text()), self.r.random() < 0.5))
        return ImageQuery(
            filters={
                name: self.filter_value()
                for name in self.r.sample(["name", "status", "owner", "min_ram"], 2)
            },
            properties={self.text(): self.text() for _ in range(self.r.randint(0, 3))},
            size_min=self.maybe(self.r.randint(0, 100)),
            size_max=self.maybe(self.r.randint(100, 10**12)),
            comparisons=comparisons,
            tags=frozenset(self.text() for _ in range(self.r.randint(0, 3))),
            sort=sort,
            marker=self.maybe(new_image_id()),
            limit=self.r.randint(0, 1000),
            exclude_statuses=frozenset(self.r.sample(sorted(STATUSES), 2)),
            viewer=viewer,
            visibility=self.maybe(self.r.choice(sorted(LIST_VISIBILITIES))),
            member_statuses=frozenset(self.r.sample(sorted(MEMBER_STATUSES), 2)),
        )

    def member(self) -> Member:
        return Member(
            image_id=new_image_id(),
            member_id=self.text(),
            status=self.r.choice(sorted(MEMBER_STATUSES)),
            created_at=self.moment(),
            updated_at=self.moment(),
        )


class RoundTripTests(SynchronousTestCase):
    """decode(through_json(encode(value))) == value, exactly."""

    def test_images(self) -> None:
        """
        Images with every field set or unset, datetimes in several zones
        with microseconds, unicode and URL-hostile text, come back equal,
        with the same offsets and the same order of locations.
        """
        values = Values(1)
        for _ in range(EXAMPLES):
            image = values.image()
            back = wire.decode_image(through_json(wire.encode_image(image)))
            self.assertEqual(back, image)
            self.assertEqual(back.locations, image.locations)
            self.assertEqual(back.created_at.utcoffset(), image.created_at.utcoffset())
            self.assertEqual(back.updated_at.microsecond, image.updated_at.microsecond)

    def test_updates(self) -> None:
        """
        Updates keep each field value's type (None, bools apart from ints,
        times, location sequences), property removals (None) and a tag set
        that is absent apart from one that is empty.
        """
        values = Values(2)
        for _ in range(EXAMPLES):
            update = values.update()
            back = wire.decode_update(through_json(wire.encode_update(update)))
            self.assertEqual(back, update)
            for name, value in update.fields.items():
                self.assertIs(type(back.fields[name]), type(value), name)
        empty = ImageUpdate(tags=frozenset())
        self.assertEqual(
            wire.decode_update(wire.encode_update(empty)).tags, frozenset()
        )

    def test_queries(self) -> None:
        """
        Queries keep filters (scalars and any-of sets), properties, size
        bounds, comparisons with times and sizes, tags, the sort order,
        marker and limit, the statuses left out, and the viewer's scope.
        """
        values = Values(3)
        for _ in range(EXAMPLES):
            query = values.query()
            back = wire.decode_query(through_json(wire.encode_query(query)))
            self.assertEqual(back, query)
            for name, value in query.filters.items():
                self.assertIs(type(back.filters[name]), type(value), name)

    def test_default_query(self) -> None:
        """The default query (no viewer, default scope and order) round-trips."""
        self.assertEqual(
            wire.decode_query(wire.encode_query(ImageQuery())), ImageQuery()
        )

    def test_members(self) -> None:
        """Members round-trip with their times exact."""
        values = Values(4)
        for _ in range(EXAMPLES):
            member = values.member()
            self.assertEqual(
                wire.decode_member(through_json(wire.encode_member(member))), member
            )


    def test_tasks(self) -> None:
        """
        Tasks (JSON input and result, times in their zones, every optional
        field set or not), task changes and task queries round-trip.
        """
        now = datetime(2026, 12, 3, 11, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
        full = Task(
            id=new_task_id(),
            type=API_IMAGE_IMPORT,
            status=FAILURE,
            created_at=now,
            updated_at=now + timedelta(microseconds=7),
            owner="p",
            input={"import_req": {"method": {"name": "web-download", "uri": "http://x/\u00e9"}}, "n": [1, None]},
            result={"image_id": "i"},
            message="it \u2014 failed",
            expires_at=now + timedelta(hours=48),
            image_id="i",
            request_id="req-1",
            user_id="u",
        )
        bare = Task(id=new_task_id(), type=IMPORT, status=PENDING, created_at=now, updated_at=now)
        for task in (full, bare):
            self.assertEqual(wire.decode_task(through_json(wire.encode_task(task))), task)
        for change in (TaskChange(PENDING), TaskChange(FAILURE, result={"a": 1}, message="m", expires_in=3600.0)):
            self.assertEqual(wire.decode_task_change(through_json(wire.encode_task_change(change))), change)
        for query in (TaskQuery(), TaskQuery("import", "success", "i", "p", "status", "asc", "m", 5)):
            self.assertEqual(wire.decode_task_query(through_json(wire.encode_task_query(query))), query)


class DecodingRefusalTests(SynchronousTestCase):
    """What the server receives is checked: bad input is a BadRequest, not a 500."""

    def test_tasks(self) -> None:
        """Malformed tasks, task changes and task queries are BadRequests."""
        for value in ([], {"id": "x"}, {"id": "x", "type": "import", "status": "pending",
                                        "created_at": "yesterday", "updated_at": None},
                      {"input": []}):
            self.assertRaises(BadRequest, wire.decode_task, value)
        for value in ([], {}, {"status": 1}, {"status": "success", "message": 2},
                      {"status": "success", "expires_in": -1}, {"status": "success", "result": "x"}):
            self.assertRaises(BadRequest, wire.decode_task_change, value)
        for value in ([], {"limit": "5"}, {"limit": True}, {"owner": 3}, {"colour": "red"}):
            self.assertRaises(BadRequest, wire.decode_task_query, value)

    def test_leases(self) -> None:
        """
        A lease renewal round-trips; one whose uploads are not an object of
        statuses, or whose seconds are not a number of 0 or more, is a
        BadRequest.
        """
        uploads = {"a" * 36: "killed", "b" * 36: "queued"}
        self.assertEqual(
            wire.decode_leases(json.loads(json.dumps(wire.encode_leases(uploads, 60)))),
            (uploads, 60.0),
        )
        bad: Any
        for bad in (
            None,
            {"uploads": ["x"], "seconds": 1},
            {"uploads": {"x": 1}, "seconds": 1},
            {"uploads": {}, "seconds": -1},
            {"uploads": {}, "seconds": True},
            {"uploads": {}, "seconds": "60"},
        ):
            self.assertRaises(BadRequest, wire.decode_leases, bad)

    def test_node_claims(self) -> None:
        """
        A node claim and its two answers round-trip; a claim whose instance
        or replacing is not a string, or whose seconds are not a number of
        0 or more, and an answer whose claim is malformed, are BadRequests.
        """
        def through_json(value: Any) -> Any:
            return json.loads(json.dumps(value))

        self.assertEqual(
            wire.decode_claim(through_json(wire.encode_claim("h:1:x", 60, None))),
            ("h:1:x", 60.0, None),
        )
        self.assertEqual(
            wire.decode_claim(through_json(wire.encode_claim("h:1:x", 6, "h:2:y"))),
            ("h:1:x", 6.0, "h:2:y"),
        )
        self.assertIsNone(wire.decode_claim_answer(through_json(wire.encode_claim_answer(None))))
        held = HeldClaim("h:2:y", 12.5)
        self.assertEqual(
            wire.decode_claim_answer(through_json(wire.encode_claim_answer(held))), held
        )
        bad: Any
        for bad in (
            None,
            {"instance": 1, "seconds": 1},
            {"instance": "i", "seconds": -1},
            {"instance": "i", "seconds": 1, "replacing": 2},
        ):
            self.assertRaises(BadRequest, wire.decode_claim, bad)
        for bad in ({"held": []}, {"held": {"instance": None, "seconds_left": 1}}):
            self.assertRaises(BadRequest, wire.decode_claim_answer, bad)

    def test_write_id(self) -> None:
        """A write_id is a string or absent; anything else is a BadRequest."""
        self.assertEqual(wire.decode_write_id("w"), "w")
        self.assertIsNone(wire.decode_write_id(None))
        for bad in (1, ["w"], {"w": 1}):
            self.assertRaises(BadRequest, wire.decode_write_id, bad)

    def test_invalid_query(self) -> None:
        """
        A query the registry would refuse (unknown filter, bad sort, limit
        out of range, malformed comparisons) decodes to BadRequest.
        """
        body: Any
        for body in (
            {"filters": {"colour": "red"}},
            {"sort": [["colour", "asc"]]},
            {"sort": "name"},
            {"limit": 10**6},
            {"comparisons": [["size", "gt"]]},
            {"comparisons": [["colour", "gt", 1]]},
            {"tags": "a"},
            {"unknown": 1},
            {"viewer": "me"},
            [],
        ):
            self.assertRaises(BadRequest, wire.decode_query, body)

    def test_invalid_records(self) -> None:
        """Records with missing or unknown fields or bad times are BadRequest."""
        good = wire.encode_image(Values(5).image())
        for body in (
            {k: v for k, v in good.items() if k != "id"},
            dict(good, colour="red"),
            dict(good, created_at="yesterday"),
            dict(good, updated_at=12),
            dict(good, tags="a"),
            dict(good, locations="file:///a"),
            dict(good, locations=[{"url": 1}]),
            dict(good, locations=[{"url": "file:///a", "store": 2}]),
            "image",
        ):
            self.assertRaises(BadRequest, wire.decode_image, body)
        self.assertRaises(BadRequest, wire.decode_member, {"image_id": "x"})
        self.assertRaises(BadRequest, wire.decode_update, {"fields": {"id": "x"}})
        self.assertRaises(BadRequest, wire.decode_value, [1, 2])
        self.assertRaises(BadRequest, wire.decode_value, {"colour": 1})

    def test_bare_url_location(self) -> None:
        """A location sent as a bare URL string decodes as one with no store."""
        body = dict(wire.encode_image(Values(6).image()), locations=["file:///a"])
        self.assertEqual(wire.decode_image(body).locations, (Location("file:///a"),))

    def test_path_segment(self) -> None:
        """
        A path segment is the quoted string (slashes and all); what cannot
        be one (empty, not a string) is a BadRequest, as the registry would
        answer.
        """
        self.assertEqual(wire.path_segment("a/b c%", "tag"), "a%2Fb%20c%25")
        for value in ("", None, 7):
            self.assertRaises(BadRequest, wire.path_segment, value, "tag")


class FormsTests(SynchronousTestCase):
    """Where each image's form is in a read's body (wire.FORMS_HEADER)."""

    def test_joined_forms_split_again(self) -> None:
        """The body is the JSON of the forms, and the header finds each in it."""
        import json

        forms = [b'{"id":"a","p":"x,y"}', b"{}", b'{"id":"c"}']
        body, header = wire.join_forms(b'{"images":[', forms, b"]}")
        self.assertEqual(json.loads(body), {"images": [json.loads(f) for f in forms]})
        self.assertEqual(wire.split_forms(header, body), forms)
        self.assertEqual(wire.split_forms(*reversed(wire.join_forms(b"[", [], b"]"))), [])

    def test_header_not_fitting_the_body(self) -> None:
        """No header, or one the body does not fit: None (parse the body whole)."""
        body, header = wire.join_forms(b'{"image":', [b'{"id":"a"}'], b"}")
        self.assertIsNone(wire.split_forms(None, body))
        for bad in (b"8+10", b"1+3", b"x", b"1+2+3", b"-1+2", b"9+100"):
            self.assertIsNone(wire.split_forms(bad, body), bad)


class ErrorTests(SynchronousTestCase):
    """Errors are carried by class, not guessed from the status."""

    def test_every_error_class_round_trips(self) -> None:
        """
        Each GlanceError class in glance_tx.errors comes back as itself with
        its message, including StoreError and ServiceUnavailable, which
        share a status.
        """
        kinds = [
            v
            for v in vars(errors).values()
            if isinstance(v, type) and issubclass(v, GlanceError)
        ]
        self.assertIn(StoreError, kinds)
        for kind in kinds:
            error = kind(f"the {kind.__name__} message ☃")
            body = through_json(wire.encode_error(error))
            self.assertEqual(body["error"]["code"], error.status)
            back = wire.decode_error(error.status, body)
            self.assertIs(type(back), kind)
            self.assertEqual(back.message, error.message)

    def test_unknown_body_is_unavailable(self) -> None:
        """
        A body naming no known class (a proxy's HTML page, an unknown type,
        JSON of another shape) is ServiceUnavailable, even with a 404 or 409
        status, so a stray page is never taken for the registry's answer.
        """
        for status, body in (
            (502, None),
            (404, {"error": {"type": "Nonesuch", "message": "x"}}),
            (409, {"error": "conflict"}),
            (400, ["error"]),
        ):
            self.assertIsInstance(wire.decode_error(status, body), ServiceUnavailable)

    def test_statuses_alone_do_not_decide(self) -> None:
        """The class named wins over the status code given."""
        body = wire.encode_error(NotFound("gone"))
        self.assertIsInstance(wire.decode_error(409, body), NotFound)
        self.assertNotIsInstance(wire.decode_error(409, body), Conflict)


class MetadefWireTests(SynchronousTestCase):
    """Metadata definition records on the registry wire."""

    def trip(self, value: Any) -> Any:
        return json.loads(json.dumps(value))

    def test_records_round_trip(self) -> None:
        """Every metadef record, its times to the microsecond and its document, comes back equal."""
        when = datetime(2026, 12, 3, 11, 0, 0, 123456, tzinfo=UTC)
        namespace = Namespace(
            namespace="OS::X", display_name="X", description="d", visibility="public",
            protected=True, owner="p", created_at=when, updated_at=when + timedelta(seconds=1),
        )
        definition = Definition(
            kind="object", name="o", document={"required": ["a"], "properties": {"a": {"type": "integer"}}},
            created_at=when, updated_at=when,
        )
        association = Association(name="OS::Glance::Image", prefix="hw_", properties_target=None, created_at=when)
        resource_type = ResourceType(name="OS::Nova::Flavor", protected=True, created_at=when, updated_at=when)
        self.assertEqual(wire.decode_namespace(self.trip(wire.encode_record(namespace))), namespace)
        self.assertEqual(wire.decode_definition(self.trip(wire.encode_record(definition))), definition)
        self.assertEqual(wire.decode_association(self.trip(wire.encode_record(association))), association)
        self.assertEqual(wire.decode_resource_type(self.trip(wire.encode_record(resource_type))), resource_type)
        content = NamespaceContent(namespace, (association,), (definition,))
        self.assertEqual(wire.decode_content(self.trip(wire.encode_content(content))), content)
        query = NamespaceQuery(project_id="p", limit=3, marker="OS::A", sort_key="namespace",
                               sort_dir="asc", visibility="public", resource_types=("a", "b"))
        self.assertEqual(wire.decode_namespace_query(self.trip(wire.encode_namespace_query(query))), query)
        plain = NamespaceQuery(project_id=None, is_admin=True)
        self.assertEqual(wire.decode_namespace_query(self.trip(wire.encode_namespace_query(plain))), plain)

    def test_refusals(self) -> None:
        """Records that are not objects, with unknown fields, or a bad limit, are BadRequest."""
        self.assertRaises(BadRequest, wire.decode_namespace, ["OS::X"])
        self.assertRaises(BadRequest, wire.decode_namespace, {"namespace": "x", "colour": 1})
        self.assertRaises(BadRequest, wire.decode_definition, {"kind": "tag", "name": "t", "document": []})
        self.assertRaises(BadRequest, wire.decode_namespace_query, {"project_id": None, "limit": "9"})
        self.assertRaises(BadRequest, wire.decode_content, {"namespace": {"namespace": "x"}, "definitions": {}})
