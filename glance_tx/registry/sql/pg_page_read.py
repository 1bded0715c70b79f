"""
A PostgreSQL listing page in one statement, compiled once per query shape
and run on the pool's DBAPI connection.

Through SQLAlchemy a deep page was six round trips (the pool's ping, BEGIN,
the marker's sort values, the page's rows, their properties, locations and
tags, COMMIT) and 3.4 ms of the registry thread's CPU, mostly building,
compiling and mapping statements whose SQL depends only on the query's
shape (bench/registry.py's listings at 100,000 images). Here the shape's
statement is compiled once to SQL text; a page is the pool's ping and that
one statement, in autocommit: one statement is one snapshot, as the
REPEATABLE READ transaction of the SQLAlchemy path gave, so the marker,
the page and its children still agree.

The statement reads the marker's sort values in a CTE and the page in a
LATERAL subquery after them (one UNION ALL branch per index range of
L{segments}, each the same ordered index scan as before, with the row
comparison PostgreSQL estimates well), then each image's properties,
locations and tags as JSON text (evaluated after the LIMIT: for the page's
rows only). The index ranges depend on which of the marker's sort values
are NULL, unknown until it is read: the statement is compiled for the
pattern last seen for the shape, and run again with the marker's own when
that was not it (only a listing whose marker moved between a NULL and a
value pays for two statements).
"""

from __future__ import annotations

import builtins
from collections.abc import Hashable
from typing import Any

from attrs import field, frozen
from sqlalchemy import (
    Engine,
    Integer,
    Select,
    bindparam,
    false,
    literal,
    select,
    true,
    union_all,
)

from glance_tx.errors import BadRequest
from glance_tx.images import Image, ImageQuery
from glance_tx.registry.schema import (
    images,
)
from glance_tx.registry.sql.image_read import (
    Records,
    autocommit_rows,
    postgres_children,
)
from glance_tx.registry.sql.page_read import SHAPES_KEPT, Compiled, shape_key
from glance_tx.registry.sql.query import (
    SortKey,
    child_condition,
    child_filters,
    filter_conditions,
    scope_condition,
    segments,
    sort_keys,
)

#: The bound parameters that vary between queries of one shape.
_PROJECT, _MARKER, _LIMIT = "glance_project", "glance_marker", "glance_limit"


@frozen
class _Shape:
    """The statements of one query shape, by pattern of the marker's NULLs."""

    keys: tuple[SortKey, ...]
    #: Key: None without a marker, else which of its sort values are NULL.
    pages: dict[tuple[bool, ...] | None, Compiled] = field(factory=dict)
    #: The pattern of the last marker met (the guess for the next).
    last: list[tuple[bool, ...]] = field(factory=list)


@frozen
class PostgresPageReader:
    """Reads listing pages of a PostgreSQL registry (see the module)."""

    engine: Engine
    records: Records
    #: The engine's dialect with positional parameters (C{%s}), as
    #: L{Compiled} keeps statements.
    _dialect: Any
    _shapes: dict[Hashable, _Shape] = field(factory=dict, init=False)

    @classmethod
    def for_engine(cls, engine: Engine) -> PostgresPageReader | None:
        """A reader for C{engine}, or None where it does not apply."""
        if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
            return None
        dialect = type(engine.dialect)(paramstyle="format")  # type: ignore[call-arg]
        return cls(engine, Records.for_dialect(engine.dialect), dialect)

    def list(self, query: ImageQuery, rare: int) -> builtins.list[Image] | None:
        """
        The page C{query} asks for, or None if its shape is not kept (the
        caller builds it with SQLAlchemy). C{rare} is not used: PostgreSQL's
        planner chooses how to read a child filter from its statistics.
        Blocking: call it on the registry's runner.
        """
        key = shape_key(query)
        if key is None:
            return None
        shape = self._shapes.get(key)
        if shape is None:
            shape = _Shape(tuple(sort_keys(query.sort)))
            if len(self._shapes) >= SHAPES_KEPT:
                self._shapes.clear()
            self._shapes[key] = shape
        supplied: dict[str, Any] = {
            _PROJECT: None if query.viewer is None else query.viewer.project_id,
            _MARKER: query.marker,
            _LIMIT: query.limit,
        }
        if query.marker is None:
            return self._images(self._run(self._statement(query, shape, None), supplied), 0)
        count = len(shape.keys)
        guess = shape.last[0] if shape.last else (False,) * count
        rows = self._run(self._statement(query, shape, guess), supplied)
        if not rows:
            raise BadRequest(f"Invalid marker: image {query.marker} not found")
        pattern = tuple(value is None for value in rows[0][:count])
        shape.last[:] = [pattern]
        if pattern != guess:
            rows = self._run(self._statement(query, shape, pattern), supplied)
            if not rows:  # deleted in between
                raise BadRequest(f"Invalid marker: image {query.marker} not found")
        return self._images(rows, count)

    def _images(self, rows: builtins.list[Any], skip: int) -> builtins.list[Image]:
        """The images of C{rows}, after C{skip} marker values and the range's number."""
        start = skip + 1
        return [self.records.image(row[start:]) for row in rows if row[start] is not None]

    def _run(self, statement: Compiled, supplied: dict[str, Any]) -> builtins.list[Any]:
        """C{statement}'s rows, in autocommit: one statement, one snapshot."""
        return autocommit_rows(self.engine, statement.sql, statement.parameters(supplied))

    def _statement(
        self, query: ImageQuery, shape: _Shape, pattern: tuple[bool, ...] | None
    ) -> Compiled:
        compiled = shape.pages.get(pattern)
        if compiled is None:
            supplied = {_PROJECT, _LIMIT} | ({_MARKER} if pattern is not None else set())
            compiled = shape.pages[pattern] = Compiled.of(
                page_statement(query, shape.keys, pattern), self._dialect, supplied
            )
        return compiled


def page_statement(
    query: ImageQuery, keys: tuple[SortKey, ...], pattern: tuple[bool, ...] | None
) -> Select[Any]:
    """
    The page's one statement (see the module): the marker's sort values
    (if C{pattern} is not None: the marker's NULLs), the index range's
    number, the images' columns and their children as JSON text.
    """
    scope = scope_condition(query, bindparam(_PROJECT, type_=images.c.owner.type))
    conditions = filter_conditions(
        query,
        scope,
        # PostgreSQL's planner reads a rare child filter from its index.
        [child_condition(child, False) for child in child_filters(query, "postgresql")],
    )
    limit = bindparam(_LIMIT, type_=Integer())
    order_by = [key.order_by(leading=index == 0) for index, key in enumerate(keys)]
    marker = None
    values = None
    if pattern is not None:
        marker = (
            select(*(key.column.label(f"marker_{i}") for i, key in enumerate(keys)))
            .where(
                images.c.id == bindparam(_MARKER, type_=images.c.id.type),
                images.c.deleted == false(),
                scope,
            )
            .cte("marker")
        )
        values = tuple(
            None if null else marker.c[f"marker_{i}"] for i, null in enumerate(pattern)
        )
    branches = [
        select(literal(index, Integer).label("glance_range"), *images.c)
        .where(*conditions, segment)
        .order_by(*order_by)
        .limit(limit)
        for index, segment in enumerate(segments(keys, values, row_values=True))
    ]
    ranges = branches[0] if len(branches) == 1 else union_all(*branches)
    page: Any
    if marker is not None:
        page = ranges.lateral("page")
        source: Any = marker.outerjoin(page, true())
        leading: list[Any] = list(marker.c)
    else:
        page = ranges.subquery("page")
        source = page
        leading = []
    children = postgres_children(page.c.id)
    page_order: list[Any] = [page.c.glance_range] + [
        SortKey(page.c[key.column.name], key.descending).order_by(leading=False)  # type: ignore[arg-type]
        for key in keys
    ]
    return (
        select(*leading, *page.c, *children)
        .select_from(source)
        .order_by(*page_order)
        .limit(limit)
    )

