"""
The L{IMetadefRegistry} contract, one mixin run against every provider
(the SQL registry on SQLite and PostgreSQL, the HTTP registry client over
a registry server), as L{tests.registry_conformance} is for images.
"""

from __future__ import annotations

from typing import Any

from zope.interface.verify import verifyObject

from glance_tx.errors import BadRequest, Conflict, NotFound
from glance_tx.metadefs.interface import IMetadefRegistry
from glance_tx.metadefs.model import (
    OBJECT,
    PROPERTY,
    TAG,
    Association,
    Definition,
    Namespace,
    NamespaceContent,
    NamespaceQuery,
)
from tests.registry_conformance import conformance


async def _fails(d: Any, error: type[Exception]) -> Exception:
    try:
        await d
    except error as e:
        return e
    raise AssertionError(f"expected {error.__name__}")


def content(name: str = "OS::Test", **fields: Any) -> NamespaceContent:
    associations = fields.pop("associations", ())
    definitions = fields.pop("definitions", ())
    return NamespaceContent(
        namespace=Namespace(namespace=name, **fields),
        associations=tuple(associations),
        definitions=tuple(definitions),
    )


PROP = Definition(kind=PROPERTY, name="cpu_policy", document={"title": "CPU", "type": "string", "enum": ["a", "b"]})


class MetadefConformanceMixin:
    """Every provider of L{IMetadefRegistry} passes these."""

    def make_registry(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement make_registry")

    @conformance
    async def test_provides_interface(self, registry: Any) -> None:
        """The provider declares and implements every IMetadefRegistry method."""
        assert verifyObject(IMetadefRegistry, registry)

    @conformance
    async def test_namespace_round_trip(self, registry: Any) -> None:
        """A namespace is stored with its fields, contents and timestamps, and read back."""
        created = await registry.create_namespace(
            content(
                "OS::Compute::Pin",
                display_name="Pinning",
                description="d",
                visibility="public",
                protected=True,
                owner="admin",
                associations=[Association(name="OS::Glance::Image", prefix="hw_")],
                definitions=[PROP, Definition(kind=TAG, name="t")],
            )
        )
        assert created.created_at is not None and created.updated_at is not None
        got = await registry.get_namespace("OS::Compute::Pin")
        assert got == created, (got, created)
        assert (got.visibility, got.protected, got.owner) == ("public", True, "admin")
        props = await registry.list_definitions("OS::Compute::Pin", PROPERTY)
        assert [(p.name, dict(p.document)) for p in props] == [(PROP.name, dict(PROP.document))]
        tags = await registry.list_definitions("OS::Compute::Pin", TAG)
        assert [t.name for t in tags] == ["t"]
        assocs = await registry.list_associations(["OS::Compute::Pin", "OS::None"])
        assert [(a.name, a.prefix) for a in assocs["OS::Compute::Pin"]] == [("OS::Glance::Image", "hw_")]
        assert assocs["OS::None"] == []
        types = await registry.list_resource_types()
        assert [t.name for t in types] == ["OS::Glance::Image"]

    @conformance
    async def test_duplicates_conflict(self, registry: Any) -> None:
        """A namespace name taken, or a definition name twice, is a Conflict that changes nothing."""
        await registry.create_namespace(content())
        await _fails(registry.create_namespace(content()), Conflict)
        await _fails(
            registry.create_namespace(content("OS::Two", definitions=[PROP, PROP])), Conflict
        )
        await _fails(registry.get_namespace("OS::Two"), NotFound)
        await registry.create_definition("OS::Test", PROP)
        await _fails(registry.create_definition("OS::Test", PROP), Conflict)

    @conformance
    async def test_replace(self, registry: Any) -> None:
        """With replace, a namespace of that name is replaced with all it held."""
        await registry.create_namespace(content(definitions=[PROP]))
        await registry.create_namespace(content(description="new"), replace=True)
        assert (await registry.get_namespace("OS::Test")).description == "new"
        assert await registry.list_definitions("OS::Test", PROPERTY) == []

    @conformance
    async def test_update_and_rename(self, registry: Any) -> None:
        """An update replaces the fields and may rename; a taken name is a Conflict."""
        first = await registry.create_namespace(content(definitions=[PROP]))
        await registry.create_namespace(content("OS::Other"))
        await _fails(
            registry.update_namespace("OS::Test", Namespace(namespace="OS::Other")), Conflict
        )
        renamed = await registry.update_namespace(
            "OS::Test", Namespace(namespace="OS::Renamed", visibility="public")
        )
        assert renamed.visibility == "public"
        assert renamed.created_at == first.created_at
        assert renamed.updated_at >= first.updated_at
        await _fails(registry.get_namespace("OS::Test"), NotFound)
        assert len(await registry.list_definitions("OS::Renamed", PROPERTY)) == 1
        await _fails(registry.update_namespace("OS::Nothing", Namespace(namespace="x")), NotFound)

    @conformance
    async def test_delete_takes_contents(self, registry: Any) -> None:
        """Deleting a namespace removes it and what it held; its name is free again."""
        await registry.create_namespace(
            content(definitions=[PROP], associations=[Association(name="OS::Nova::Flavor")])
        )
        await registry.delete_namespace("OS::Test")
        await _fails(registry.get_namespace("OS::Test"), NotFound)
        await _fails(registry.list_definitions("OS::Test", PROPERTY), NotFound)
        await _fails(registry.delete_namespace("OS::Test"), NotFound)
        await registry.create_namespace(content())
        assert await registry.list_definitions("OS::Test", PROPERTY) == []

    @conformance
    async def test_definitions(self, registry: Any) -> None:
        """Definitions are created, read, renamed, deleted; their documents kept as given."""
        await registry.create_namespace(content())
        obj = Definition(
            kind=OBJECT,
            name="CPU Limits",
            document={"description": "d", "required": ["x"], "properties": {"x": {"title": "X", "type": "integer"}}},
        )
        created = await registry.create_definition("OS::Test", obj)
        assert dict(created.document) == dict(obj.document)
        got = await registry.get_definition("OS::Test", OBJECT, "CPU Limits")
        assert got == created
        # Kinds do not collide: a tag may share an object's name.
        await registry.create_definition("OS::Test", Definition(kind=TAG, name="CPU Limits"))
        renamed = await registry.update_definition(
            "OS::Test", "CPU Limits", Definition(kind=OBJECT, name="Renamed", document={"description": "e"})
        )
        assert (renamed.name, renamed.document["description"]) == ("Renamed", "e")
        await _fails(registry.get_definition("OS::Test", OBJECT, "CPU Limits"), NotFound)
        await registry.delete_definition("OS::Test", OBJECT, "Renamed")
        await _fails(registry.delete_definition("OS::Test", OBJECT, "Renamed"), NotFound)
        assert [d.name for d in await registry.list_definitions("OS::Test", TAG)] == ["CPU Limits"]
        await _fails(registry.get_definition("OS::Test", "thing", "x"), BadRequest)

    @conformance
    async def test_replace_definitions(self, registry: Any) -> None:
        """Bulk tags replace or append; a duplicate is a Conflict that leaves the tags as they were."""
        await registry.create_namespace(content(definitions=[Definition(kind=TAG, name="old")]))
        tags = [Definition(kind=TAG, name=n) for n in ("a", "b")]
        written = await registry.replace_definitions("OS::Test", TAG, tags)
        assert [d.name for d in written] == ["a", "b"]
        await registry.replace_definitions("OS::Test", TAG, [Definition(kind=TAG, name="c")], True)
        await _fails(
            registry.replace_definitions("OS::Test", TAG, [Definition(kind=TAG, name="a")], True),
            Conflict,
        )
        names = [d.name for d in await registry.list_definitions("OS::Test", TAG)]
        assert names == ["a", "b", "c"], names
        await registry.replace_definitions("OS::Test", TAG, [])
        assert await registry.list_definitions("OS::Test", TAG) == []

    @conformance
    async def test_associations(self, registry: Any) -> None:
        """An association creates its resource type; a second is a Conflict; delete, NotFound after."""
        await registry.create_namespace(content())
        made = await registry.create_association(
            "OS::Test", Association(name="OS::Cinder::Volume", prefix="hw_", properties_target="image")
        )
        assert (made.name, made.prefix, made.properties_target) == ("OS::Cinder::Volume", "hw_", "image")
        await _fails(registry.create_association("OS::Test", Association(name="OS::Cinder::Volume")), Conflict)
        await _fails(registry.create_association("OS::Nothing", Association(name="x")), NotFound)
        await registry.delete_association("OS::Test", "OS::Cinder::Volume")
        await _fails(registry.delete_association("OS::Test", "OS::Cinder::Volume"), NotFound)
        # The resource type stays known.
        assert [t.name for t in await registry.list_resource_types()] == ["OS::Cinder::Volume"]

    @conformance
    async def test_listing_scope_order_and_pages(self, registry: Any) -> None:
        """A listing shows what the caller sees, in order, a page after the marker."""
        for name, visibility, owner in (
            ("OS::A", "public", "p1"),
            ("OS::B", "private", "p1"),
            ("OS::C", "private", "p2"),
            ("OS::D", "private", None),
        ):
            await registry.create_namespace(content(name, visibility=visibility, owner=owner))

        async def names(**query: Any) -> list[str]:
            query.setdefault("project_id", "p1")
            query.setdefault("sort_key", "namespace")
            query.setdefault("sort_dir", "asc")
            return [n.namespace for n in await registry.list_namespaces(NamespaceQuery(**query))]

        assert await names() == ["OS::A", "OS::B", "OS::D"]
        assert await names(project_id="p2") == ["OS::A", "OS::C", "OS::D"]
        assert await names(project_id=None, is_admin=True) == ["OS::A", "OS::B", "OS::C", "OS::D"]
        assert await names(limit=2) == ["OS::A", "OS::B"]
        assert await names(marker="OS::B") == ["OS::D"]
        assert await names(sort_dir="desc", marker="OS::D") == ["OS::B", "OS::A"]
        assert await names(visibility="private") == ["OS::B", "OS::D"]
        await _fails(registry.list_namespaces(NamespaceQuery(project_id="p1", marker="OS::C")), NotFound)
        await registry.create_association("OS::B", Association(name="OS::Glance::Image"))
        assert await names(resource_types=("OS::Glance::Image", "OS::X")) == ["OS::B"]
        assert await names(project_id="p2", resource_types=("OS::Glance::Image",)) == []
        # Sorted by a nullable key, NULLs first ascending.
        assert await names(project_id=None, is_admin=True, sort_key="owner") == [
            "OS::D", "OS::A", "OS::B", "OS::C",
        ]

    @conformance
    async def test_concurrent_creates_share_a_new_resource_type(self, registry: Any) -> None:
        """
        Namespaces created at once (on a thread pool, truly concurrent on
        PostgreSQL), each associated with one new resource type, all
        succeed and make that resource type once.
        """
        creates = [
            registry.create_namespace(
                content(f"OS::Concurrent::{n}", associations=[Association(name="OS::New::Type")])
            )
            for n in range(6)
        ]
        for created in creates:
            await created
        assert [t.name for t in await registry.list_resource_types()] == ["OS::New::Type"]
        found = await registry.list_associations([f"OS::Concurrent::{n}" for n in range(6)])
        assert all(len(a) == 1 for a in found.values()), found

    @conformance
    async def test_bad_records_are_400(self, registry: Any) -> None:
        """What the tables cannot hold is a BadRequest, not a database error."""
        await _fails(registry.create_namespace(content("x" * 81)), BadRequest)
        await _fails(registry.create_namespace(content(visibility="shared")), BadRequest)
        await registry.create_namespace(content())
        await _fails(
            registry.create_definition("OS::Test", Definition(kind=TAG, name="t" * 81)), BadRequest
        )
        await _fails(
            registry.list_namespaces(NamespaceQuery(project_id=None, sort_key="colour")), BadRequest
        )
