"""Reading v2 listing query strings into an ImageQuery, without HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import parse_qs

from twisted.trial.unittest import SynchronousTestCase

from glance_tx import images
from glance_tx.api.v2_query import parse_query, parse_time, split_list, split_operator
from glance_tx.errors import BadRequest
from glance_tx.images import Comparison, ImageQuery, Viewer

VIEWER = Viewer("alice", is_admin=False)


def query(text: str) -> ImageQuery:
    """Parse C{text} as twisted.web would hand it over."""
    return parse_query(parse_qs(text.encode("utf-8"), keep_blank_values=True), VIEWER)


class DefaultsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """No parameters: newest first, 25 a page, hidden images left out,
        accepted shared images, the caller as viewer, deleted excluded."""
        q = query("")
        self.assertEqual(q.sort, (("created_at", "desc"),))
        self.assertEqual(q.limit, images.DEFAULT_LIMIT)
        self.assertEqual(dict(q.filters), {"os_hidden": False})
        self.assertEqual(q.member_statuses, frozenset({"accepted"}))
        self.assertEqual(q.viewer, VIEWER)
        self.assertIsNone(q.visibility)
        self.assertIsNone(q.marker)
        self.assertEqual(q.exclude_statuses, frozenset({images.DELETED}))


class FilterTests(SynchronousTestCase):
    def test_core_and_property_filters(self) -> None:
        """Core fields filter by equality, typed; the rest are properties."""
        q = query("name=cirros&min_ram=512&protected=true&os_hidden=TRUE&os_distro=ubuntu")
        self.assertEqual(
            dict(q.filters),
            {"name": "cirros", "min_ram": 512, "protected": True, "os_hidden": True},
        )
        self.assertEqual(dict(q.properties), {"os_distro": "ubuntu"})

    def test_in_and_eq(self) -> None:
        """in: gives a set (quotes keep commas); eq: is plain equality."""
        q = query('name=in:a, "b,c" ,d&status=eq:active')
        self.assertEqual(q.filters["name"], frozenset({"a", "b,c", "d"}))
        self.assertEqual(q.filters["status"], "active")

    def test_colon_in_a_value(self) -> None:
        """A value whose prefix is no operator is taken whole."""
        self.assertEqual(query("name=cirros:latest").filters["name"], "cirros:latest")

    def test_tags(self) -> None:
        """tag repeats; every one is required."""
        self.assertEqual(query("tag=a&tag=b&tag=a").tags, frozenset({"a", "b"}))

    def test_times(self) -> None:
        """created_at/updated_at take an operator and an ISO 8601 time."""
        q = query("created_at=gte:2026-01-02T03:04:05Z&updated_at=2026-01-02T03:04:05%2B02:00")
        self.assertEqual(
            q.comparisons,
            (
                Comparison("created_at", "gte", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
                Comparison("updated_at", "eq", datetime(2026, 1, 2, 1, 4, 5, tzinfo=UTC)),
            ),
        )

    def test_sizes(self) -> None:
        """size_min and size_max are integers."""
        q = query("size_min=10&size_max=20")
        self.assertEqual((q.size_min, q.size_max), (10, 20))

    def test_scope(self) -> None:
        """visibility and member_status (all = every status)."""
        q = query("visibility=all&member_status=all")
        self.assertEqual(q.visibility, "all")
        self.assertEqual(q.member_statuses, images.MEMBER_STATUSES)
        self.assertEqual(query("member_status=pending").member_statuses, frozenset({"pending"}))

    def test_limit_and_marker(self) -> None:
        """limit is capped at the maximum; marker is a canonical UUID."""
        q = query("limit=5000&marker=0AEBA3F4-1111-2222-3333-444444444444")
        self.assertEqual(q.limit, images.MAX_LIMIT)
        self.assertEqual(q.marker, "0aeba3f4-1111-2222-3333-444444444444")
        self.assertEqual(query("limit=0").limit, 0)

    def test_refusals(self) -> None:
        """Malformed parameters are BadRequests."""
        for text in (
            "limit=-1", "limit=x", "marker=nope", "visibility=nobody", "member_status=x",
            "os_hidden=1", "protected=no", "size_min=-1", "created_at=gt:noon",
            "created_at=in:a", "status=lt:active", "checksum=gte:x", "size=five", "deleted=true",
            "changes-since=x", "name=in:\"unterminated",
        ):
            self.assertRaises(BadRequest, query, text)


class SortTests(SynchronousTestCase):
    def test_classic(self) -> None:
        """One sort_dir applies to every key; several pair up with the keys."""
        self.assertEqual(query("sort_key=name").sort, (("name", "desc"),))
        self.assertEqual(
            query("sort_key=name&sort_key=size&sort_dir=asc").sort,
            (("name", "asc"), ("size", "asc")),
        )
        self.assertEqual(
            query("sort_key=name&sort_key=size&sort_dir=asc&sort_dir=desc").sort,
            (("name", "asc"), ("size", "desc")),
        )
        self.assertEqual(query("sort_dir=asc").sort, (("created_at", "asc"),))

    def test_new_syntax(self) -> None:
        """sort=key:dir,key (desc by default)."""
        self.assertEqual(
            query("sort=name:asc,size").sort, (("name", "asc"), ("size", "desc"))
        )

    def test_refusals(self) -> None:
        """Unknown keys and directions, mismatched counts, mixed syntaxes."""
        for text in (
            "sort_key=nope", "sort_dir=up", "sort=name:up", "sort=nope:asc",
            "sort=name&sort_dir=asc",
            "sort_key=a&sort_dir=asc&sort_dir=desc",
        ):
            self.assertRaises(BadRequest, query, text)


class HelperTests(SynchronousTestCase):
    def test_split_operator(self) -> None:
        """Known operators are split off; times keep their colons."""
        self.assertEqual(split_operator("gt:5"), ("gt", "5"))
        self.assertEqual(split_operator("2026-01-01T00:00:00Z"), ("eq", "2026-01-01T00:00:00Z"))
        self.assertEqual(split_operator("plain"), ("eq", "plain"))

    def test_split_list(self) -> None:
        """Comma-separated, double quotes protect commas."""
        self.assertEqual(split_list('x,"y,z"'), frozenset({"x", "y,z"}))

    def test_parse_time(self) -> None:
        """Times become aware UTC datetimes; a zoneless time is UTC."""
        self.assertEqual(parse_time("2026-05-06T07:08:09"), datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC))
        self.assertEqual(
            parse_time("2026-05-06T07:08:09-01:00"),
            datetime(2026, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=-1))),
        )
        self.assertRaises(BadRequest, parse_time, "soon")
