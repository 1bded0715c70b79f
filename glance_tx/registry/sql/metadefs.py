"""
L{IMetadefRegistry} in SQL: the metadef half of L{SQLRegistry}, which
inherits these methods. Every call is one transaction run through the
registry's runner, as the image calls are.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    CursorResult,
    RowMapping,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    true,
)
from sqlalchemy import update as sql_update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from twisted.internet.defer import Deferred

from glance_tx.errors import BadRequest, Conflict, NotFound
from glance_tx.metadefs.model import (
    PUBLIC,
    SORT_KEYS,
    VISIBILITIES,
    Association,
    Definition,
    Namespace,
    NamespaceContent,
    NamespaceQuery,
    ResourceType,
    check_kind,
    check_name,
)
from glance_tx.registry.schema import (
    metadef_associations,
    metadef_definitions,
    metadef_namespaces,
    metadef_resource_types,
)

T = TypeVar("T")

_NAMESPACE_FIELDS = ("namespace", "display_name", "description", "visibility", "protected", "owner")


def _namespace(row: RowMapping) -> Namespace:
    return Namespace(
        namespace=row["namespace"],
        display_name=row["display_name"],
        description=row["description"],
        visibility=row["visibility"],
        protected=bool(row["protected"]),
        owner=row["owner"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _definition(row: RowMapping) -> Definition:
    return Definition(
        kind=row["kind"],
        name=row["name"],
        document=json.loads(row["document"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _inserted_id(result: CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _check_namespace(namespace: Namespace) -> None:
    """What the columns hold: a 400 before the database refuses it."""
    check_name(namespace.namespace, "namespace")
    if namespace.display_name is not None and len(namespace.display_name) > 80:
        raise BadRequest("display_name is longer than 80 characters")
    if namespace.visibility not in VISIBILITIES:
        raise BadRequest(f"Invalid visibility {namespace.visibility!r}")
    if namespace.owner is not None and len(namespace.owner) > 255:
        raise BadRequest("owner is longer than 255 characters")


def _duplicates(names: Sequence[str]) -> builtins.list[str]:
    seen: set[str] = set()
    return sorted({name for name in names if name in seen or seen.add(name)})  # type: ignore[func-returns-value]


def _scope(query: NamespaceQuery) -> ColumnElement[bool]:
    """Who sees what, as L{glance_tx.metadefs.model.visible}."""
    if query.is_admin:
        return true()
    c = metadef_namespaces.c
    return or_(c.visibility == PUBLIC, c.owner.is_(None), c.owner == query.project_id)


def _sort_column(key: str) -> ColumnElement[Any]:
    column = metadef_namespaces.c[key]
    # NULLs sort as the empty string, so a keyset condition can compare them.
    return func.coalesce(column, "") if column.nullable else column  # type: ignore[no-any-return]


class SQLMetadefs:
    """The metadef calls; mixed into L{glance_tx.registry.sql.SQLRegistry}."""

    if TYPE_CHECKING:
        now: Callable[[], datetime]

        def _run(self, f: Callable[..., T], *args: Any) -> Deferred[T]: ...
        def _read(self) -> AbstractContextManager[Connection]: ...
        def _write(self) -> AbstractContextManager[Connection]: ...

    # IMetadefRegistry

    def create_namespace(
        self, content: NamespaceContent, replace: bool = False
    ) -> Deferred[Namespace]:
        return self._run(self._create_namespace, content, replace)

    def get_namespace(self, name: str) -> Deferred[Namespace]:
        return self._run(self._get_namespace, name)

    def list_namespaces(self, query: NamespaceQuery) -> Deferred[builtins.list[Namespace]]:
        return self._run(self._list_namespaces, query)

    def update_namespace(self, name: str, namespace: Namespace) -> Deferred[Namespace]:
        return self._run(self._update_namespace, name, namespace)

    def delete_namespace(self, name: str) -> Deferred[None]:
        return self._run(self._delete_namespace, name)

    def list_definitions(self, namespace: str, kind: str) -> Deferred[builtins.list[Definition]]:
        return self._run(self._list_definitions, namespace, kind)

    def get_definition(self, namespace: str, kind: str, name: str) -> Deferred[Definition]:
        return self._run(self._get_definition, namespace, kind, name)

    def create_definition(self, namespace: str, definition: Definition) -> Deferred[Definition]:
        return self._run(self._create_definition, namespace, definition)

    def update_definition(
        self, namespace: str, name: str, definition: Definition
    ) -> Deferred[Definition]:
        return self._run(self._update_definition, namespace, name, definition)

    def delete_definition(self, namespace: str, kind: str, name: str) -> Deferred[None]:
        return self._run(self._delete_definition, namespace, kind, name)

    def replace_definitions(
        self, namespace: str, kind: str, definitions: Sequence[Definition], append: bool = False
    ) -> Deferred[builtins.list[Definition]]:
        return self._run(self._replace_definitions, namespace, kind, tuple(definitions), append)

    def list_resource_types(self) -> Deferred[builtins.list[ResourceType]]:
        return self._run(self._list_resource_types)

    def list_associations(
        self, namespaces: Sequence[str]
    ) -> Deferred[Mapping[str, builtins.list[Association]]]:
        return self._run(self._list_associations, tuple(namespaces))

    def create_association(
        self, namespace: str, association: Association
    ) -> Deferred[Association]:
        return self._run(self._create_association, namespace, association)

    def delete_association(self, namespace: str, resource_type: str) -> Deferred[None]:
        return self._run(self._delete_association, namespace, resource_type)

    # blocking implementations

    def _namespace_id(self, connection: Connection, name: str, lock: bool = False) -> int:
        statement = select(metadef_namespaces.c.id).where(metadef_namespaces.c.namespace == name)
        if lock:
            statement = statement.with_for_update()
        found = connection.execute(statement).scalar()
        if found is None:
            raise NotFound(f"Metadata definition namespace={name} was not found.")
        return int(found)

    def _create_namespace(self, content: NamespaceContent, replace: bool) -> Namespace:
        namespace = content.namespace
        _check_namespace(namespace)
        for definition in content.definitions:
            check_kind(definition.kind)
            check_name(definition.name, f"{definition.kind} name")
        for kind in {d.kind for d in content.definitions}:
            twice = _duplicates([d.name for d in content.definitions if d.kind == kind])
            if twice:
                raise Conflict(f"Duplicate {kind} names in namespace: {', '.join(twice)}")
        twice = _duplicates([a.name for a in content.associations])
        if twice:
            raise Conflict(f"Duplicate resource type associations: {', '.join(twice)}")
        now = self.now()
        with self._write() as connection:
            taken = connection.execute(
                select(metadef_namespaces.c.id).where(
                    metadef_namespaces.c.namespace == namespace.namespace
                )
            ).scalar()
            if taken is not None:
                if not replace:
                    raise Conflict(
                        f"A metadata definition namespace with name={namespace.namespace}"
                        " already exists."
                    )
                connection.execute(
                    delete(metadef_namespaces).where(metadef_namespaces.c.id == taken)
                )
            values = {name: getattr(namespace, name) for name in _NAMESPACE_FIELDS}
            try:
                namespace_id = _inserted_id(
                    connection.execute(
                        insert(metadef_namespaces).values(
                            **values, created_at=now, updated_at=now
                        )
                    )
                )
            except IntegrityError:
                raise Conflict(
                    f"A metadata definition namespace with name={namespace.namespace}"
                    " already exists."
                ) from None
            for definition in content.definitions:
                self._insert_definition(connection, namespace_id, definition, now)
            for association in content.associations:
                self._insert_association(connection, namespace_id, association, now)
            return _namespace(
                connection.execute(
                    select(metadef_namespaces).where(metadef_namespaces.c.id == namespace_id)
                ).mappings().one()
            )

    def _get_namespace(self, name: str) -> Namespace:
        with self._read() as connection:
            row = connection.execute(
                select(metadef_namespaces).where(metadef_namespaces.c.namespace == name)
            ).mappings().first()
            if row is None:
                raise NotFound(f"Metadata definition namespace={name} was not found.")
            return _namespace(row)

    def _list_namespaces(self, query: NamespaceQuery) -> builtins.list[Namespace]:
        if query.sort_key not in SORT_KEYS:
            raise BadRequest(f"Invalid sort key: {query.sort_key}")
        if query.sort_dir not in ("asc", "desc"):
            raise BadRequest(f"Invalid sort direction: {query.sort_dir}")
        c = metadef_namespaces.c
        key = _sort_column(query.sort_key)
        ascending = query.sort_dir == "asc"
        conditions: builtins.list[ColumnElement[bool]] = [_scope(query)]
        if query.visibility is not None:
            conditions.append(c.visibility == query.visibility)
        with self._read() as connection:
            if query.resource_types is not None:
                conditions.append(
                    c.id.in_(
                        select(metadef_associations.c.namespace_id)
                        .join(metadef_resource_types)
                        .where(metadef_resource_types.c.name.in_(query.resource_types))
                    )
                )
            if query.marker is not None:
                found = connection.execute(
                    select(key).where(c.namespace == query.marker, _scope(query))
                ).first()
                if found is None:
                    raise NotFound(
                        f"Metadata definition namespace={query.marker} was not found."
                    )
                value = found[0]
                if ascending:
                    after = or_(key > value, and_(key == value, c.namespace > query.marker))
                else:
                    after = or_(key < value, and_(key == value, c.namespace < query.marker))
                conditions.append(after)
            order = (key.asc(), c.namespace.asc()) if ascending else (key.desc(), c.namespace.desc())
            rows = connection.execute(
                select(metadef_namespaces)
                .where(*conditions)
                .order_by(*order)
                .limit(query.limit)
            ).mappings()
            return [_namespace(row) for row in rows]

    def _update_namespace(self, name: str, namespace: Namespace) -> Namespace:
        _check_namespace(namespace)
        with self._write() as connection:
            namespace_id = self._namespace_id(connection, name, lock=True)
            if namespace.namespace != name:
                taken = connection.execute(
                    select(metadef_namespaces.c.id).where(
                        metadef_namespaces.c.namespace == namespace.namespace
                    )
                ).scalar()
                if taken is not None:
                    raise Conflict(
                        "Invalid update. It would result in a duplicate metadata"
                        f" definition namespace with the same name of {namespace.namespace}"
                    )
            connection.execute(
                sql_update(metadef_namespaces)
                .where(metadef_namespaces.c.id == namespace_id)
                .values(
                    **{field: getattr(namespace, field) for field in _NAMESPACE_FIELDS},
                    updated_at=self.now(),
                )
            )
            return _namespace(
                connection.execute(
                    select(metadef_namespaces).where(metadef_namespaces.c.id == namespace_id)
                ).mappings().one()
            )

    def _delete_namespace(self, name: str) -> None:
        with self._write() as connection:
            namespace_id = self._namespace_id(connection, name, lock=True)
            # Children first: SQLite enforces ON DELETE CASCADE only with
            # foreign keys on, which the engine sets, but say it anyway.
            for table in (metadef_definitions, metadef_associations):
                connection.execute(delete(table).where(table.c.namespace_id == namespace_id))
            connection.execute(
                delete(metadef_namespaces).where(metadef_namespaces.c.id == namespace_id)
            )

    def _list_definitions(self, namespace: str, kind: str) -> builtins.list[Definition]:
        check_kind(kind)
        with self._read() as connection:
            namespace_id = self._namespace_id(connection, namespace)
            return self._definitions(connection, namespace_id, kind)

    def _definitions(
        self, connection: Connection, namespace_id: int, kind: str
    ) -> builtins.list[Definition]:
        d = metadef_definitions.c
        rows = connection.execute(
            select(metadef_definitions)
            .where(d.namespace_id == namespace_id, d.kind == kind)
            .order_by(d.name)
        ).mappings()
        return [_definition(row) for row in rows]

    def _find_definition(
        self, connection: Connection, namespace_id: int, kind: str, name: str
    ) -> RowMapping:
        d = metadef_definitions.c
        row = connection.execute(
            select(metadef_definitions).where(
                d.namespace_id == namespace_id, d.kind == kind, d.name == name
            )
        ).mappings().first()
        if row is None:
            raise NotFound(f"Metadata definition {kind}={name} was not found.")
        return row

    def _get_definition(self, namespace: str, kind: str, name: str) -> Definition:
        check_kind(kind)
        with self._read() as connection:
            namespace_id = self._namespace_id(connection, namespace)
            return _definition(self._find_definition(connection, namespace_id, kind, name))

    def _definition_taken(
        self, connection: Connection, namespace_id: int, definition: Definition
    ) -> bool:
        """Whether the namespace already has a C{definition.kind} of its name."""
        d = metadef_definitions.c
        taken = connection.execute(
            select(d.id).where(
                d.namespace_id == namespace_id,
                d.kind == definition.kind,
                d.name == definition.name,
            )
        ).first()
        return taken is not None

    def _insert_definition(
        self, connection: Connection, namespace_id: int, definition: Definition, now: datetime
    ) -> None:
        check_kind(definition.kind)
        check_name(definition.name, f"{definition.kind} name")
        if self._definition_taken(connection, namespace_id, definition):
            raise Conflict(
                f"A metadata definition {definition.kind} with name={definition.name}"
                " already exists in this namespace."
            )
        connection.execute(
            insert(metadef_definitions).values(
                namespace_id=namespace_id,
                kind=definition.kind,
                name=definition.name,
                document=json.dumps(dict(definition.document)),
                created_at=now,
                updated_at=now,
            )
        )

    def _create_definition(self, namespace: str, definition: Definition) -> Definition:
        with self._write() as connection:
            namespace_id = self._namespace_id(connection, namespace, lock=True)
            self._insert_definition(connection, namespace_id, definition, self.now())
            return _definition(
                self._find_definition(connection, namespace_id, definition.kind, definition.name)
            )

    def _update_definition(self, namespace: str, name: str, definition: Definition) -> Definition:
        check_kind(definition.kind)
        check_name(definition.name, f"{definition.kind} name")
        with self._write() as connection:
            namespace_id = self._namespace_id(connection, namespace, lock=True)
            row = self._find_definition(connection, namespace_id, definition.kind, name)
            if definition.name != name:
                if self._definition_taken(connection, namespace_id, definition):
                    raise Conflict(
                        f"Invalid update. It would result in a duplicate metadata definition"
                        f" {definition.kind} with the same name={definition.name}"
                    )
            connection.execute(
                sql_update(metadef_definitions)
                .where(metadef_definitions.c.id == row["id"])
                .values(
                    name=definition.name,
                    document=json.dumps(dict(definition.document)),
                    updated_at=self.now(),
                )
            )
            return _definition(
                self._find_definition(connection, namespace_id, definition.kind, definition.name)
            )

    def _delete_definition(self, namespace: str, kind: str, name: str) -> None:
        check_kind(kind)
        with self._write() as connection:
            namespace_id = self._namespace_id(connection, namespace, lock=True)
            row = self._find_definition(connection, namespace_id, kind, name)
            connection.execute(
                delete(metadef_definitions).where(metadef_definitions.c.id == row["id"])
            )

    def _replace_definitions(
        self, namespace: str, kind: str, definitions: tuple[Definition, ...], append: bool
    ) -> builtins.list[Definition]:
        check_kind(kind)
        if any(d.kind != kind for d in definitions):
            raise BadRequest(f"Every definition must be a {kind}")
        twice = _duplicates([d.name for d in definitions])
        if twice:
            raise Conflict(f"Duplicate {kind} names: {', '.join(twice)}")
        now = self.now()
        with self._write() as connection:
            namespace_id = self._namespace_id(connection, namespace, lock=True)
            if not append:
                d = metadef_definitions.c
                connection.execute(
                    delete(metadef_definitions).where(
                        d.namespace_id == namespace_id, d.kind == kind
                    )
                )
            for definition in definitions:
                self._insert_definition(connection, namespace_id, definition, now)
            names = {d.name for d in definitions}
            return [
                d for d in self._definitions(connection, namespace_id, kind) if d.name in names
            ]

    def _list_resource_types(self) -> builtins.list[ResourceType]:
        with self._read() as connection:
            rows = connection.execute(
                select(metadef_resource_types).order_by(metadef_resource_types.c.name)
            ).mappings()
            return [
                ResourceType(
                    name=row["name"],
                    protected=bool(row["protected"]),
                    created_at=row["created_at"],
                    updated_at=row["updated_at"],
                )
                for row in rows
            ]

    def _list_associations(
        self, namespaces: tuple[str, ...]
    ) -> Mapping[str, builtins.list[Association]]:
        found: dict[str, builtins.list[Association]] = {name: [] for name in namespaces}
        if not namespaces:
            return found
        a, r, n = metadef_associations.c, metadef_resource_types.c, metadef_namespaces.c
        with self._read() as connection:
            rows = connection.execute(
                select(n.namespace, r.name, a.prefix, a.properties_target, a.created_at, a.updated_at)
                .select_from(metadef_associations.join(metadef_resource_types).join(metadef_namespaces))
                .where(n.namespace.in_(namespaces))
                .order_by(n.namespace, r.name)
            ).mappings()
            for row in rows:
                found[row["namespace"]].append(
                    Association(
                        name=row["name"],
                        prefix=row["prefix"],
                        properties_target=row["properties_target"],
                        created_at=row["created_at"],
                        updated_at=row["updated_at"],
                    )
                )
        return found

    def _resource_type_id(self, connection: Connection, name: str, now: datetime) -> int:
        """
        The resource type's id, created (unprotected) if unknown. Two
        namespaces created at once on two nodes may both create it: the
        insert does nothing if the other's is there (rather than fail with
        a unique violation, which on PostgreSQL would end the transaction).
        """
        r = metadef_resource_types.c
        found = connection.execute(select(r.id).where(r.name == name)).scalar()
        if found is None:
            dialect_insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
            connection.execute(
                dialect_insert(metadef_resource_types)
                .values(name=name, protected=False, created_at=now, updated_at=now)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            found = connection.execute(select(r.id).where(r.name == name)).scalar_one()
        return int(found)

    def _insert_association(
        self, connection: Connection, namespace_id: int, association: Association, now: datetime
    ) -> None:
        check_name(association.name, "resource type name")
        for value, what in ((association.prefix, "prefix"), (association.properties_target, "properties_target")):
            if value is not None and (not isinstance(value, str) or len(value) > 80):
                raise BadRequest(f"{what} must be a string of at most 80 characters")
        resource_type_id = self._resource_type_id(connection, association.name, now)
        a = metadef_associations.c
        taken = connection.execute(
            select(a.namespace_id).where(
                a.namespace_id == namespace_id, a.resource_type_id == resource_type_id
            )
        ).first()
        if taken is not None:
            raise Conflict(
                f"The metadata definition resource-type association of"
                f" resource-type={association.name} to the namespace already exists."
            )
        connection.execute(
            insert(metadef_associations).values(
                namespace_id=namespace_id,
                resource_type_id=resource_type_id,
                prefix=association.prefix,
                properties_target=association.properties_target,
                created_at=now,
                updated_at=now,
            )
        )

    def _create_association(self, namespace: str, association: Association) -> Association:
        now = self.now()
        with self._write() as connection:
            namespace_id = self._namespace_id(connection, namespace, lock=True)
            self._insert_association(connection, namespace_id, association, now)
        return Association(
            name=association.name,
            prefix=association.prefix,
            properties_target=association.properties_target,
            created_at=now,
            updated_at=now,
        )

    def _delete_association(self, namespace: str, resource_type: str) -> None:
        a, r = metadef_associations.c, metadef_resource_types.c
        with self._write() as connection:
            namespace_id = self._namespace_id(connection, namespace, lock=True)
            gone = connection.execute(
                delete(metadef_associations).where(
                    a.namespace_id == namespace_id,
                    a.resource_type_id.in_(select(r.id).where(r.name == resource_type)),
                )
            )
            if gone.rowcount == 0:
                raise NotFound(
                    f"Failed to find resource type {resource_type} associated"
                    f" with namespace {namespace}"
                )
