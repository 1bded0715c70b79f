"""
The SQL of a listing: sort keys with keyset pagination, the filters, and
who may see what.

Listings use keyset pagination: the marker's sort values are looked up and
the next page starts strictly after them, so a page deep in a large listing
costs an index range scan of C{limit} rows rather than skipping an offset.
NULL sorts before every value (first in ascending order, last in descending).

Who may see what (L{ImageQuery}'s C{viewer}, C{visibility} and
C{member_statuses}) is one more condition on the same ordered scan: the
membership part is a correlated EXISTS probed through the C{(image_id,
member_id)} key of C{image_members}, so a page still stops after C{limit}
matching rows.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from attrs import define
from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Select,
    Table,
    and_,
    bindparam,
    exists,
    false,
    func,
    literal_column,
    or_,
    select,
    true,
    tuple_,
)

from glance_tx.errors import BadRequest
from glance_tx.images import Comparison, ImageQuery
from glance_tx.registry.schema import (
    PROPERTY_VALUE_INDEX_PREFIX,
    image_members,
    image_properties,
    image_tags,
    images,
    property_value_prefix,
)
from glance_tx.registry.sql.rows import BOOLEAN_FIELDS, INTEGER_FIELDS, MAX_BIGINT


def _coerce_filter(name: str, value: Any) -> Any:
    """
    Accept a filter value typed or as query-string text ("true", "512"), so
    a registry client can pass through what it was given.
    """
    if value is None:
        return None
    if name in BOOLEAN_FIELDS:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise BadRequest(f"Filter {name} must be true or false")
    if name in INTEGER_FIELDS:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.isdigit():
            return int(value)
        raise BadRequest(f"Filter {name} must be an integer")
    if not isinstance(value, str):
        raise BadRequest(f"Filter {name} must be a string")
    return value


# -- listing -------------------------------------------------------------------


@define(frozen=True)
class SortKey:
    column: Column[Any]
    descending: bool

    @property
    def nullable(self) -> bool:
        return bool(self.column.nullable)

    def order_by(self, leading: bool) -> ColumnElement[Any]:
        """
        The ORDER BY term. The leading key's NULLs are read by a query of
        their own (see L{segments}), so it needs no NULLS clause, and a
        plain B-tree index serves it in either direction.
        """
        term = self.column.desc() if self.descending else self.column.asc()
        if self.nullable and not leading:
            term = term.nulls_last() if self.descending else term.nulls_first()
        return term

    def equal(self, value: Any) -> ColumnElement[bool]:
        if value is None:
            return self.column.is_(None)
        return self.column == value

    def from_(self, value: Any) -> ColumnElement[bool]:
        """
        Non-NULL rows at or after the non-NULL C{value}: the start of an
        index range.
        """
        return self.column <= value if self.descending else self.column >= value

    def after(self, value: Any, nullable: bool) -> ColumnElement[bool]:
        """Rows strictly after C{value} in this key's order (NULL smallest)."""
        if value is None:
            return self.column.is_not(None) if not self.descending else false()
        if self.descending:
            if nullable:
                return or_(self.column < value, self.column.is_(None))
            return self.column < value
        return self.column > value


def sort_keys(sort: Sequence[tuple[str, str]]) -> builtins.list[SortKey]:
    """
    The query's ordering with the id as final tiebreak (in the direction of
    the last key). Keys after the id, and repeated keys, cannot change the
    order and are dropped.
    """
    keys: builtins.list[SortKey] = []
    seen: set[str] = set()
    for name, direction in sort:
        if name in seen:
            continue
        seen.add(name)
        keys.append(SortKey(images.c[name], direction == "desc"))
        if name == "id":
            return keys
    descending = keys[-1].descending if keys else False
    keys.append(SortKey(images.c.id, descending))
    return keys


def _keyset_after(
    keys: Sequence[SortKey], values: Sequence[Any], lead_nullable: bool
) -> ColumnElement[bool]:
    """
    The lexicographic "row comes after C{values}" condition for mixed
    directions: (k1 after v1) or (k1 = v1 and k2 after v2) or ... A row
    comparison C{(k1, k2) > (v1, v2)} cannot express mixed directions or
    NULLs. C{lead_nullable} is false where the first key is known not NULL.
    """
    alternatives = []
    for index, key in enumerate(keys):
        nullable = key.nullable if index else lead_nullable
        equal_so_far = [keys[j].equal(values[j]) for j in range(index)]
        alternatives.append(and_(*equal_so_far, key.after(values[index], nullable)))
    return or_(*alternatives)


def _values_after(
    keys: Sequence[SortKey], marker: Sequence[Any], row_values: bool
) -> ColumnElement[bool]:
    """
    Rows after C{marker} among those whose first key is not NULL, as the
    start of an index range on the keys.

    The general form is "k1 at or after v1, and lexicographically after".
    PostgreSQL estimates those two parts as if independent and so takes
    the square of the fraction of rows left: ten times too few, 10% deep,
    enough for it to give up the ordered scan for a hash join over every
    remaining row. Where the keys allow (one direction, none NULL, as with
    one sort key and the id), C{row_values} asks instead for a row
    comparison C{(k1, k2) < (v1, v2)}, which PostgreSQL estimates from
    the first key and scans as one index range. A value may be a column
    (the marker's, read in the same statement) or a bound parameter.
    """
    direction = keys[0].descending
    if (
        row_values
        and all(key.descending == direction for key in keys)
        and not any(key.nullable for key in keys[1:])
        and all(value is not None for value in marker)
    ):
        left = tuple_(*(key.column for key in keys))
        right = tuple_(
            *(
                value
                if isinstance(value, ColumnElement)
                else bindparam(None, value, type_=key.column.type)
                for key, value in zip(keys, marker, strict=True)
            )
        )
        return left < right if direction else left > right
    return and_(keys[0].from_(marker[0]), _keyset_after(keys, marker, False))


def segments(
    keys: Sequence[SortKey], marker: Sequence[Any] | None, row_values: bool = False
) -> builtins.list[ColumnElement[bool]]:
    """
    The conditions of the index ranges to read, in listing order, starting
    after C{marker} (the marker's sort values).

    When the leading sort key can be NULL, the listing is two ranges (the
    NULLs, and the values) read one after the other, so that each is a plain
    range condition an index serves directly: a single "value < m OR value
    IS NULL" condition would make a deep page scan from the start.
    C{row_values}: see L{_values_after}.
    """
    lead = keys[0]
    if not lead.nullable:
        if marker is None:
            return [true()]
        return [_values_after(keys, marker, row_values)]

    nulls_first = not lead.descending
    order = [True, False] if nulls_first else [False, True]
    if marker is None:
        return [_null_range(lead, nulls) for nulls in order]
    marker_in_nulls = marker[0] is None
    conditions = []
    for nulls in order[order.index(marker_in_nulls) :]:
        if nulls != marker_in_nulls:
            conditions.append(_null_range(lead, nulls))
        elif nulls:
            conditions.append(
                and_(
                    lead.column.is_(None),
                    _keyset_after(keys[1:], marker[1:], lead_nullable=keys[1].nullable),
                )
            )
        else:
            conditions.append(_values_after(keys, marker, row_values))
    return conditions


def _null_range(key: SortKey, nulls: bool) -> ColumnElement[bool]:
    return key.column.is_(None) if nulls else key.column.is_not(None)


def scope_condition(
    query: ImageQuery, project: ColumnElement[Any] | None = None
) -> ColumnElement[bool]:
    """
    The images the query's C{viewer} may list in its C{visibility}, by
    Glance's rules exactly as L{ImageQuery} states them. C{project}, if
    given, stands for the viewer's project id (a bound parameter of a
    statement kept for every viewer: L{glance_tx.registry.sql.page_read}).

    With no viewer (internal use) nothing is hidden, and a C{visibility}
    other than "all" is then a plain filter on that visibility. An owner of
    NULL is nobody's: a viewer whose project is None owns nothing and is
    a member of nothing.
    """
    viewer, visibility = query.viewer, query.visibility
    column = images.c.visibility
    if viewer is None:
        return true() if visibility in (None, "all") else column == visibility
    project_id: Any = None
    if viewer.project_id is not None:
        project_id = viewer.project_id if project is None else project
    own = images.c.owner == project_id if project_id is not None else false()
    if viewer.is_admin:
        if visibility is None:
            return or_(column != "community", own)
        return true() if visibility == "all" else column == visibility
    member = _member_of(project_id, query.member_statuses)
    if visibility is None:
        return or_(column == "public", own, and_(column == "shared", member))
    if visibility == "all":
        return or_(
            column.in_(["community", "public"]), own, and_(column == "shared", member)
        )
    if visibility in ("public", "community"):
        return column == visibility
    if visibility == "shared":
        return and_(column == "shared", or_(own, member))
    return and_(column == "private", own)


def _member_of(project: Any, statuses: frozenset[str]) -> ColumnElement[bool]:
    """
    "C{project} is a member of the image with one of C{statuses}": a
    correlated EXISTS, one probe of the (image_id, member_id) key per row.

    The C{OFFSET 0} keeps it that on PostgreSQL, which otherwise turns an
    EXISTS under an OR into a hashed subplan: every membership the project
    has read into a hash before the first row (3,900 of them for a member
    of a fifth of 25,000 shared images: 6.5 of a deep page's 8.2 ms in
    EXPLAIN ANALYZE), whereas a page probes only the shared rows it scans.
    """
    if project is None or not statuses:
        return false()
    return (
        select(literal_column("1"))
        .where(
            image_members.c.image_id == images.c.id,
            image_members.c.member_id == project,
            image_members.c.status.in_(sorted(statuses)),
        )
        .offset(0)
        .exists()
    )


#: A property or tag filter: the child table and what its row must match.
ChildFilter = tuple[Table, tuple[ColumnElement[bool], ...]]


def child_filters(query: ImageQuery, dialect: str) -> builtins.list[ChildFilter]:
    """The query's property filters, then its tag filters, each sorted."""
    children: builtins.list[ChildFilter] = []
    for name, value in sorted(query.properties.items()):
        if not isinstance(value, str):
            raise BadRequest(f"Property filter {name} must be a string")
        children.append((image_properties, _property_matches(dialect, name, value)))
    for tag in sorted(query.tags):
        if not isinstance(tag, str):
            raise BadRequest("Tag filters must be strings")
        children.append((image_tags, (image_tags.c.value == tag,)))
    return children


def count_matches(child: ChildFilter, limit: ColumnElement[Any] | int) -> Select[Any]:
    """
    How many images C{child} matches, up to C{limit}: read through the
    index that starts with the value (see L{child_condition}).
    """
    table, matches = child
    return select(func.count()).select_from(
        select(table.c.image_id).where(*matches).limit(limit).subquery()
    )


def few_matches(
    connection: Connection, children: Sequence[ChildFilter], rare: int
) -> builtins.list[bool]:
    """
    For each child filter, whether at most C{rare} images match it; only
    counted on SQLite (see L{child_condition}).
    """
    if connection.dialect.name != "sqlite":
        return [False] * len(children)
    return [
        connection.execute(count_matches(child, rare + 1)).scalar_one() <= rare
        for child in children
    ]


def child_condition(child: ChildFilter, few: bool) -> ColumnElement[bool]:
    """
    The condition "the image has a row in the child's table (a property or
    a tag) that matches".

    The usual form is a correlated EXISTS, probed through the table's key
    that starts with image_id for each row of the ordered index scan: the
    scan stops after one page, however many images match (every one of
    thousands for a common os_distro). When few images match, that scan
    would instead read the whole table; the images should be found through
    the index that starts with the value, and sorted. PostgreSQL's planner
    makes that choice from its statistics; SQLite's does not, so on SQLite
    the matches are counted first (L{few_matches}) and C{few} gets the IN
    form.
    """
    table, matches = child
    image_id = table.c.image_id
    if few:
        return images.c.id.in_(select(image_id).where(*matches))
    return exists().where(image_id == images.c.id, *matches)


def _property_matches(
    dialect: str, name: str, value: str
) -> tuple[ColumnElement[bool], ...]:
    """A property row's match for "property C{name} equal to C{value}"."""
    matches = [
        image_properties.c.name == name,
        property_value_prefix(image_properties.c.value)
        == value[:PROPERTY_VALUE_INDEX_PREFIX],
    ]
    # A value shorter than the indexed prefix is matched exactly by the
    # prefix alone. Comparing the whole value as well would make
    # PostgreSQL, which takes the two conditions for independent, expect
    # far fewer matches than there are (for one os_distro in five: 1,027
    # where 20,207 matched) and pick a plan for a rare value.
    if len(value) >= PROPERTY_VALUE_INDEX_PREFIX:
        whole = image_properties.c.value == value
        if dialect == "sqlite":
            # Given a bare "value = 'x'", SQLite substitutes 'x' into the
            # prefix expression, which then no longer matches the index's;
            # hide the column behind a no-op. (Not on PostgreSQL: there it
            # would hide the column's statistics from the planner.)
            whole = image_properties.c.value.op("||")(literal_column("''")) == value
        matches.append(whole)
    return tuple(matches)


#: SQL for each comparison operator.
_COMPARATORS: Mapping[str, Callable[[Any, Any], ColumnElement[bool]]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "eq": operator.eq,
    "neq": operator.ne,
    "lt": operator.lt,
    "lte": operator.le,
}


def _comparison(comparison: Comparison) -> ColumnElement[bool]:
    """
    The condition C{field op value}. Datetimes must be timezone-aware (they
    are compared as instants), sizes integers. An unknown (NULL) size
    matches no comparison, C{neq} included, as it matches no size range:
    nothing is known about it.
    """
    name, value = comparison.field, comparison.value
    if name == "size":
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest("size can only be compared with an integer")
        if not -MAX_BIGINT <= value <= MAX_BIGINT:
            raise BadRequest("size comparison value is out of range")
    elif not isinstance(value, datetime) or value.utcoffset() is None:
        raise BadRequest(f"{name} can only be compared with a timezone-aware datetime")
    return _COMPARATORS[comparison.op](images.c[name], value)


def filter_conditions(
    query: ImageQuery,
    scope: ColumnElement[bool],
    children: Sequence[ColumnElement[bool]] = (),
) -> builtins.list[Any]:
    """
    Every condition of a listing except the page position. C{children}:
    the L{child_condition} of each of the query's L{child_filters}.
    """
    conditions: builtins.list[Any] = [images.c.deleted == false(), scope]
    # A status asked for by name is listed even when it is normally hidden.
    if query.exclude_statuses and "status" not in query.filters:
        conditions.append(images.c.status.not_in(sorted(query.exclude_statuses)))
    for name, value in sorted(query.filters.items()):
        if isinstance(value, frozenset):
            # One of several values (v1's is_public=false, v2's in:).
            choices = sorted(_coerce_filter(name, v) for v in value)
            conditions.append(images.c[name].in_(choices))
        else:
            conditions.append(images.c[name] == _coerce_filter(name, value))
    conditions.extend(children)
    for bound in (query.size_min, query.size_max):
        if bound is not None and (
            isinstance(bound, bool) or not isinstance(bound, int)
        ):
            raise BadRequest("size_min and size_max must be integers")
    if query.size_min is not None:
        conditions.append(images.c.size >= query.size_min)
    if query.size_max is not None:
        conditions.append(images.c.size <= query.size_max)
    conditions.extend(_comparison(comparison) for comparison in query.comparisons)
    return conditions
