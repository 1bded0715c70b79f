"""
A SQLite listing page from statements compiled once per query shape, run
on the pool's DBAPI connection.

Building a page's statement with SQLAlchemy (the scope, the filters, the
keyset conditions, then its cache key and the expansion of its IN lists)
cost more than SQLite reading the page: 1,166 us of CPU per 25-image page
(bench/metadata.py --in-process), of which about 500 were building and
compiling. The statement depends on the query's shape: everything but the
viewer's project, the marker's sort values and the limit, which become
bound parameters. Each shape's statements (the marker's lookup, one per
index range of L{segments}) are compiled once to SQL text and kept, with
the values they carry processed as SQLAlchemy would bind them; a page is
then those texts run inside one read transaction on one connection, and
the page's images read by the L{ImageReader} in the same transaction.

A query with property or tag filters has one more statement per filter,
kept with the rest: the count of the images it matches (up to the
registry's C{rare_filter_images}), which decides the form of its
condition (see L{glance_tx.registry.sql.query.child_condition}); the page's
statements are kept for each outcome of the counts. PostgreSQL keeps the
SQLAlchemy path, whose own compiled cache serves it.

On a SQLite file, a page read while the database has not changed since
is answered again on the reactor thread (L{FreshPages}), as an image's
record is (L{glance_tx.registry.sql.fresh}): told by the same inotify
watch, dropped at the same change.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Hashable
from typing import Any

from attrs import define, field, frozen
from sqlalchemy import Integer, Select, bindparam, false, select
from twisted.internet.defer import Deferred, succeed

from glance_tx.errors import BadRequest
from glance_tx.images import Image, ImageQuery
from glance_tx.registry.schema import images
from glance_tx.registry.sql.fresh import FreshImages
from glance_tx.registry.sql.image_read import ImageReader
from glance_tx.registry.sql.query import (
    ChildFilter,
    SortKey,
    child_condition,
    child_filters,
    count_matches,
    filter_conditions,
    scope_condition,
    segments,
    sort_keys,
)

#: How many query shapes L{PageReader} keeps the statements of.
SHAPES_KEPT = 512

#: How many pages L{FreshPages} keeps (all are dropped at the database's
#: next change).
PAGES_KEPT = 1024

#: The bound parameters that vary between queries of one shape.
_PROJECT, _MARKER, _LIMIT = "glance_project", "glance_marker", "glance_limit"
#: How many matches a child filter's count reads at most.
_RARE = "glance_rare"


def _marker_value(index: int) -> str:
    return f"glance_marker_{index}"


@frozen
class Compiled:
    """
    One statement as SQLite text: each placeholder is either a value fixed
    when it was built (already processed for binding) or, by name, one of
    the values a query of its shape supplies.
    """

    sql: str
    #: For each placeholder in order: (name of a supplied value, None) or
    #: (None, the fixed value).
    slots: tuple[tuple[str | None, Any], ...]

    @classmethod
    def of(cls, statement: Select[Any], dialect: Any, supplied: set[str]) -> Compiled:
        """C{statement} for C{dialect}, whose paramstyle must be positional."""
        compiled = statement.compile(dialect=dialect)
        expanded = compiled.construct_expanded_state(dict.fromkeys(supplied))
        base = {
            name: base_name
            for base_name, names in expanded.parameter_expansion.items()
            for name in names
        }
        slots: list[tuple[str | None, Any]] = []
        for name in expanded.positiontup or ():
            if name in supplied:
                slots.append((name, None))
                continue
            value = expanded.parameters[name]
            process = (
                compiled.binds[base.get(name, name)]
                .type.dialect_impl(dialect)
                .bind_processor(dialect)
            )
            slots.append((None, value if process is None or value is None else process(value)))
        return cls(expanded.statement, tuple(slots))

    def parameters(self, supplied: dict[str, Any]) -> list[Any]:
        return [supplied[name] if name is not None else value for name, value in self.slots]


@frozen
class Shape:
    """The compiled statements of one query shape."""

    keys: tuple[SortKey, ...]
    #: The marker's sort values, or None if it is not an image this
    #: listing's scope shows.
    marker: Compiled
    #: The query's property and tag filters, and the count of each's
    #: matches (up to L{_RARE}).
    children: tuple[ChildFilter, ...]
    counts: tuple[Compiled, ...]
    #: The page's index ranges, for each outcome of the counts (whether
    #: each child filter matches few images) and each pattern of NULLs
    #: among the marker's values (None: no marker). Filled as met.
    pages: dict[
        tuple[tuple[bool, ...], tuple[bool, ...] | None], tuple[Compiled, ...]
    ] = field(factory=dict)


def shape_key(query: ImageQuery) -> Hashable | None:
    """
    What a query's statements depend on, or None if they are not kept.
    Values are keyed with their type: C{True == 1}, yet only one of them
    is a valid boolean filter.
    """
    viewer = query.viewer
    key = (
        tuple(
            (name, _typed(value)) for name, value in sorted(query.filters.items())
        ),
        _typed(query.size_min),
        _typed(query.size_max),
        tuple((c.field, c.op, _typed(c.value)) for c in query.comparisons),
        query.sort,
        query.exclude_statuses,
        None if viewer is None else (viewer.project_id is None, viewer.is_admin),
        query.visibility,
        query.member_statuses,
        tuple((name, _typed(value)) for name, value in sorted(query.properties.items())),
        frozenset(map(_typed, query.tags)),
    )
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _typed(value: Any) -> Any:
    if isinstance(value, frozenset):
        return frozenset(map(_typed, value))
    return (type(value), value)


@frozen
class PageReader:
    """Reads listing pages of a SQLite registry (see the module)."""

    reader: ImageReader
    _shapes: dict[Hashable, Shape] = field(factory=dict, init=False)

    def list(self, query: ImageQuery, rare: int) -> builtins.list[Image] | None:
        """
        The page C{query} asks for, or None if its shape is not kept (the
        caller builds it with SQLAlchemy); a child filter that at most
        C{rare} images match is read from its value's index. Blocking:
        call it on the registry's runner.
        """
        key = shape_key(query)
        if key is None:
            return None
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shape(query)
            if len(self._shapes) >= SHAPES_KEPT:
                self._shapes.clear()
            self._shapes[key] = shape
        supplied: dict[str, Any] = {
            _PROJECT: None if query.viewer is None else query.viewer.project_id,
            _RARE: rare + 1,
        }
        connection = self.reader.engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                cursor.execute("BEGIN")
                try:
                    few = tuple(
                        cursor.execute(count.sql, count.parameters(supplied)).fetchone()[0]
                        <= rare
                        for count in shape.counts
                    )
                    ids = self._ids(cursor, query, shape, supplied, few)
                    found = self.reader.get_many(connection, ids)
                except BaseException:
                    cursor.execute("ROLLBACK")
                    raise
                cursor.execute("COMMIT")
            finally:
                cursor.close()
        finally:
            connection.close()
        return found

    def _ids(
        self,
        cursor: Any,
        query: ImageQuery,
        shape: Shape,
        supplied: dict[str, Any],
        few: tuple[bool, ...],
    ) -> builtins.list[str]:
        pattern: tuple[bool, ...] | None = None
        if query.marker is not None:
            # The marker must be an image this listing's scope shows; it
            # need not match the filters (it may have been renamed since).
            cursor.execute(
                shape.marker.sql, shape.marker.parameters({**supplied, _MARKER: query.marker})
            )
            found = cursor.fetchone()
            if found is None:
                raise BadRequest(f"Invalid marker: image {query.marker} not found")
            # The values as stored, so they need no processing to compare.
            for index, value in enumerate(found):
                supplied[_marker_value(index)] = value
            pattern = tuple(value is None for value in found)
        pages = shape.pages.get((few, pattern))
        if pages is None:
            pages = shape.pages[few, pattern] = self._pages(query, shape, pattern, few)
        ids: builtins.list[str] = []
        for page in pages:
            wanted = query.limit - len(ids)
            if wanted <= 0:
                break
            supplied[_LIMIT] = wanted
            cursor.execute(page.sql, page.parameters(supplied))
            ids.extend(row[0] for row in cursor.fetchall())
        return ids

    def _shape(self, query: ImageQuery) -> Shape:
        keys = tuple(sort_keys(query.sort))
        marker = select(*(key.column for key in keys)).where(
            images.c.id == bindparam(_MARKER, type_=images.c.id.type),
            images.c.deleted == false(),
            self._scope(query),
        )
        children = tuple(child_filters(query, self.reader.engine.dialect.name))
        return Shape(
            keys,
            Compiled.of(marker, self.reader.engine.dialect, {_PROJECT, _MARKER}),
            children,
            tuple(
                Compiled.of(
                    count_matches(child, bindparam(_RARE, type_=Integer())),
                    self.reader.engine.dialect,
                    {_RARE},
                )
                for child in children
            ),
        )

    def _scope(self, query: ImageQuery) -> Any:
        return scope_condition(query, bindparam(_PROJECT, type_=images.c.owner.type))

    def _pages(
        self,
        query: ImageQuery,
        shape: Shape,
        pattern: tuple[bool, ...] | None,
        few: tuple[bool, ...],
    ) -> tuple[Compiled, ...]:
        """
        The statements of a page whose marker has C{pattern} of NULLs, and
        whose child filters match C{few} images or not.
        """
        keys = shape.keys
        marker = None
        supplied = {_PROJECT, _LIMIT}
        if pattern is not None:
            marker = tuple(
                None if null else bindparam(_marker_value(index), type_=key.column.type)
                for index, (key, null) in enumerate(zip(keys, pattern, strict=True))
            )
            supplied.update(_marker_value(index) for index in range(len(keys)))
        conditions = filter_conditions(
            query,
            self._scope(query),
            [
                child_condition(child, f)
                for child, f in zip(shape.children, few, strict=True)
            ],
        )
        order_by = [key.order_by(leading=index == 0) for index, key in enumerate(keys)]
        return tuple(
            Compiled.of(
                select(images.c.id)
                .where(*conditions, segment)
                .order_by(*order_by)
                .limit(bindparam(_LIMIT, type_=Integer())),
                self.reader.engine.dialect,
                supplied,
            )
            for segment in segments(keys, marker)
        )


def page_key(query: ImageQuery) -> Hashable | None:
    """
    What a query's page depends on besides the database, or None if it
    cannot be a key: its shape (L{shape_key}), the viewer's project, the
    marker and the limit.
    """
    shape = shape_key(query)
    if shape is None:
        return None
    viewer = query.viewer
    return (shape, None if viewer is None else viewer.project_id, query.marker, query.limit)


@define
class FreshPages:
    """
    Listing pages read since the database last changed, answered without
    the pool while it has not (L{FreshImages} tells, as for an image).

    A 25-image page read through the pool cost the reactor thread the
    hand-off there and back and the pool thread its statements and the
    images' stamps: 0.55 of the 1.5 ms a page took (bench/metadata.py
    --in-process, cProfile). Compute nodes and dashboards ask for the same
    first pages again and again, and images change rarely next to that.
    As for an image's record, the version is taken before the read is
    handed to the pool, and its answer kept only if the database is still
    at that version when it comes back: a commit that lands while the read
    runs leaves it not kept.
    """

    fresh: FreshImages
    #: The version the kept pages were read at.
    _version: int | None = field(default=None, init=False)
    _kept: dict[Hashable, builtins.list[Image]] = field(factory=dict, init=False)

    def list(
        self,
        query: ImageQuery,
        read: Callable[[ImageQuery], Deferred[builtins.list[Image]]],
    ) -> Deferred[builtins.list[Image]]:
        """
        The page C{query} asks for: the one kept, if the database is still
        at the version it was read at, else C{read(query)} (through the
        pool), kept if the database has not changed meanwhile.
        """
        version = self.fresh.version()
        key = None if version is None else page_key(query)
        if key is None:
            return read(query)
        if version != self._version:
            self._kept.clear()
            self._version = version
        page = self._kept.get(key)
        if page is not None:
            # A copy: the caller may change its list, not the one kept.
            return succeed(builtins.list(page))
        return read(query).addCallback(self._keep, key, version)

    def _keep(
        self, page: builtins.list[Image], key: Hashable, version: int
    ) -> builtins.list[Image]:
        if self.fresh.version() == version:
            if version != self._version:
                self._kept.clear()
                self._version = version
            if len(self._kept) >= PAGES_KEPT:
                self._kept.clear()
            self._kept[key] = builtins.list(page)
        return page
