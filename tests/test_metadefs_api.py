"""
The metadata definitions API (/v2/metadefs, /v2/schemas/metadefs) in
memory: a real site over an in-memory SQLite registry, requests in the
shapes Tempest's image metadef clients send.
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import RequestTraversalAgent
from twisted.internet.task import Clock

from glance_tx.registry.client import HTTPRegistryClient
from glance_tx.registry.server import RegistryServer
from tests.api_fixtures import Answer, SiteTestCase

ADMIN = {"X-Project-Id": "admin", "X-Roles": "admin"}
PROJECT_A = {"X-Project-Id": "project-a", "X-Roles": "reader"}
PROJECT_B = {"X-Project-Id": "project-b", "X-Roles": "member"}
NS = "/v2/metadefs/namespaces"


class MetadefsTestCase(SiteTestCase):
    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Answer:
        sent = dict(ADMIN if headers is None else headers)
        data = None
        if body is not None:
            sent["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        return self.request(method, path, headers=sent, data=data)

    def namespace(self, name: str = "OS::Test::NS", **fields: Any) -> dict[str, Any]:
        answer = self.call("POST", NS, {"namespace": name, **fields})
        self.assertEqual(answer.code, 201, answer.body)
        return answer.json()  # type: ignore[no-any-return]


class NamespaceTests(MetadefsTestCase):
    def test_create_show_list_update_delete(self) -> None:
        """Tempest's namespace flow: 201, listed, shown, protected 403, updated, deleted."""
        created = self.namespace(
            "OS::Tempest::NS",
            visibility="public",
            description="Tempest",
            display_name="NS",
            protected=True,
            resource_type_associations=[{"name": "OS::Glance::Image", "prefix": "hw_"}],
        )
        self.assertEqual(created["namespace"], "OS::Tempest::NS")
        self.assertEqual(created["schema"], "/v2/schemas/metadefs/namespace")
        self.assertEqual(created["self"], f"{NS}/OS::Tempest::NS")
        self.assertEqual(created["owner"], "admin")
        listed = self.call("GET", NS).json()
        self.assertIn("OS::Tempest::NS", [n["namespace"] for n in listed["namespaces"]])
        self.assertEqual(listed["schema"], "/v2/schemas/metadefs/namespaces")
        shown = self.call("GET", f"{NS}/OS::Tempest::NS").json()
        self.assertEqual(shown["visibility"], "public")
        self.assertEqual(shown["resource_type_associations"][0]["name"], "OS::Glance::Image")
        self.assertEqual(self.call("DELETE", f"{NS}/OS::Tempest::NS").code, 403)
        updated = self.call(
            "PUT",
            f"{NS}/OS::Tempest::NS",
            {"namespace": "OS::Tempest::NS", "visibility": "private", "protected": False,
             "description": "Tempest", "display_name": "NS"},
        )
        self.assertEqual(updated.code, 200, updated.body)
        self.assertEqual(updated.json()["visibility"], "private")
        self.assertIs(updated.json()["protected"], False)
        self.assertEqual(self.call("DELETE", f"{NS}/OS::Tempest::NS").code, 204)
        self.assertEqual(self.call("GET", f"{NS}/OS::Tempest::NS").code, 404)

    def test_duplicate_is_409(self) -> None:
        """A second namespace of one name is a 409, and so is a rename onto one."""
        self.namespace("OS::A")
        self.namespace("OS::B")
        self.assertEqual(self.call("POST", NS, {"namespace": "OS::A"}).code, 409)
        self.assertEqual(self.call("PUT", f"{NS}/OS::B", {"namespace": "OS::A"}).code, 409)

    def test_rename(self) -> None:
        """An update may rename a namespace; what it held follows."""
        self.namespace("OS::Old", properties={"p": {"title": "P", "type": "string"}})
        self.assertEqual(self.call("PUT", f"{NS}/OS::Old", {"namespace": "OS::New"}).code, 200)
        self.assertEqual(self.call("GET", f"{NS}/OS::Old").code, 404)
        shown = self.call("GET", f"{NS}/OS::New").json()
        self.assertEqual(shown["properties"], {"p": {"title": "P", "type": "string"}})

    def test_read_only_attribute_is_403(self) -> None:
        """Glance refuses a body that sets self, schema or a timestamp with a 403."""
        answer = self.call("POST", NS, {"namespace": "OS::X", "created_at": "now"})
        self.assertEqual(answer.code, 403)
        self.assertIn("read-only", answer.json()["error"]["message"])

    def test_bad_body_is_400(self) -> None:
        """A body the namespace schema refuses is a 400 saying why."""
        answer = self.call("POST", NS, {"namespace": "OS::X", "visibility": "shared"})
        self.assertEqual(answer.code, 400)
        self.assertIn("visibility", answer.json()["error"]["message"])
        self.assertEqual(self.call("POST", NS, {"display_name": "no name"}).code, 400)

    def test_only_admin_creates(self) -> None:
        """A project member may not create a namespace (metadef_admin)."""
        answer = self.call("POST", NS, {"namespace": "OS::Mine"}, headers=PROJECT_B)
        self.assertEqual(answer.code, 403)

    def test_detail_holds_contents_prefixed_for_a_resource_type(self) -> None:
        """A namespace's detail shows its objects, properties and tags; ?resource_type= prefixes them."""
        self.namespace(
            "OS::Compute::Test",
            resource_type_associations=[{"name": "OS::Nova::Flavor", "prefix": "hw:"}],
            properties={"cpu_policy": {"title": "CPU", "type": "string"}},
            objects=[{"name": "Obj", "properties": {"x": {"title": "X", "type": "integer"}},
                      "required": ["x"]}],
            tags=[{"name": "t1"}],
        )
        shown = self.call("GET", f"{NS}/OS::Compute::Test").json()
        self.assertEqual(list(shown["properties"]), ["cpu_policy"])
        self.assertEqual(shown["objects"][0]["name"], "Obj")
        self.assertEqual(shown["tags"], [{"name": "t1"}])
        flavor = self.call("GET", f"{NS}/OS::Compute::Test?resource_type=OS::Nova::Flavor").json()
        self.assertEqual(list(flavor["properties"]), ["hw:cpu_policy"])
        self.assertEqual(flavor["objects"][0]["required"], ["hw:x"])


class VisibilityTests(MetadefsTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.namespace("OS::Private::A", visibility="private", owner="project-a")
        self.namespace("OS::Public", visibility="public", owner="project-a")

    def names(self, headers: dict[str, str]) -> list[str]:
        answer = self.call("GET", NS, headers=headers)
        self.assertEqual(answer.code, 200, answer.body)
        return sorted(n["namespace"] for n in answer.json()["namespaces"])

    def test_listing(self) -> None:
        """Each project lists the public namespaces and its own; the admin all."""
        self.assertEqual(self.names(PROJECT_A), ["OS::Private::A", "OS::Public"])
        self.assertEqual(self.names(PROJECT_B), ["OS::Public"])
        self.assertEqual(self.names(ADMIN), ["OS::Private::A", "OS::Public"])

    def test_other_projects_private_namespace_is_404(self) -> None:
        """Another project's private namespace is not there for the caller, contents included."""
        self.assertEqual(self.call("GET", f"{NS}/OS::Private::A", headers=PROJECT_A).code, 200)
        self.assertEqual(self.call("GET", f"{NS}/OS::Private::A", headers=PROJECT_B).code, 404)
        self.assertEqual(
            self.call("GET", f"{NS}/OS::Private::A/objects", headers=PROJECT_B).code, 404
        )
        self.assertEqual(self.call("GET", f"{NS}/OS::Public", headers=PROJECT_B).code, 200)

    def test_readers_do_not_change(self) -> None:
        """The owner project's reader sees its namespace but may not change it."""
        answer = self.call(
            "POST", f"{NS}/OS::Private::A/tags/t", headers=PROJECT_A
        )
        self.assertEqual(answer.code, 403)
        self.assertEqual(self.call("DELETE", f"{NS}/OS::Private::A", headers=PROJECT_A).code, 403)

    def test_visibility_filter(self) -> None:
        """?visibility= keeps only that visibility; a value Glance does not know is a 400."""
        answer = self.call("GET", f"{NS}?visibility=public").json()
        self.assertEqual([n["namespace"] for n in answer["namespaces"]], ["OS::Public"])
        self.assertEqual(self.call("GET", f"{NS}?visibility=shared").code, 400)


class PagingTests(MetadefsTestCase):
    def test_pages_by_marker(self) -> None:
        """limit and marker walk the listing in sort order, with a next link while pages are full."""
        for name in ("OS::C", "OS::A", "OS::B"):
            self.namespace(name)
        first = self.call("GET", f"{NS}?limit=2&sort_key=namespace&sort_dir=asc").json()
        self.assertEqual([n["namespace"] for n in first["namespaces"]], ["OS::A", "OS::B"])
        self.assertIn("marker=OS%3A%3AB", first["next"])
        self.assertEqual(first["first"], f"{NS}?limit=2&sort_key=namespace&sort_dir=asc")
        second = self.call("GET", first["next"]).json()
        self.assertEqual(second["first"], first["first"])
        self.assertEqual([n["namespace"] for n in second["namespaces"]], ["OS::C"])
        self.assertNotIn("next", second)
        desc = self.call("GET", f"{NS}?sort_key=namespace&sort_dir=desc").json()
        self.assertEqual([n["namespace"] for n in desc["namespaces"]], ["OS::C", "OS::B", "OS::A"])

    def test_bad_parameters_are_400(self) -> None:
        """An unknown sort key or direction, or a limit that is no number, is a 400."""
        for query in ("sort_dir=up", "sort_key=colour", "limit=many"):
            self.assertEqual(self.call("GET", f"{NS}?{query}").code, 400, query)

    def test_unknown_marker_is_404(self) -> None:
        """A marker that names no namespace is a 404, as Glance."""
        self.assertEqual(self.call("GET", f"{NS}?marker=OS::Nothing").code, 404)

    def test_resource_types_filter(self) -> None:
        """?resource_types= lists only namespaces associated with one of them."""
        self.namespace("OS::Img", resource_type_associations=[{"name": "OS::Glance::Image"}])
        self.namespace("OS::Vol", resource_type_associations=[{"name": "OS::Cinder::Volume"}])
        self.namespace("OS::None")
        answer = self.call("GET", f"{NS}?resource_types=OS::Glance::Image,OS::Nova::Flavor").json()
        self.assertEqual([n["namespace"] for n in answer["namespaces"]], ["OS::Img"])


class ObjectTests(MetadefsTestCase):
    def test_crud(self) -> None:
        """Tempest's object flow: create 201, show, rename by PUT, list, delete 204."""
        self.namespace()
        created = self.call(
            "POST", f"{NS}/OS::Test::NS/objects",
            {"name": "CPU Limits", "description": "d",
             "properties": {"quota:cpu": {"title": "Q", "type": "integer"}}},
        )
        self.assertEqual(created.code, 201, created.body)
        self.assertEqual(created.json()["self"], f"{NS}/OS::Test::NS/objects/CPU%20Limits")
        self.assertEqual(created.json()["required"], [])
        shown = self.call("GET", f"{NS}/OS::Test::NS/objects/CPU%20Limits").json()
        self.assertEqual(shown["properties"]["quota:cpu"]["type"], "integer")
        updated = self.call("PUT", f"{NS}/OS::Test::NS/objects/CPU%20Limits", {"name": "Renamed"})
        self.assertEqual(updated.code, 200)
        self.assertEqual(updated.json()["name"], "Renamed")
        listed = self.call("GET", f"{NS}/OS::Test::NS/objects").json()
        self.assertEqual([o["name"] for o in listed["objects"]], ["Renamed"])
        self.assertEqual(self.call("DELETE", f"{NS}/OS::Test::NS/objects/Renamed").code, 204)
        self.assertEqual(self.call("GET", f"{NS}/OS::Test::NS/objects/Renamed").code, 404)

    def test_duplicate_is_409(self) -> None:
        """A second object of one name is a 409."""
        self.namespace()
        self.call("POST", f"{NS}/OS::Test::NS/objects", {"name": "o"})
        self.assertEqual(self.call("POST", f"{NS}/OS::Test::NS/objects", {"name": "o"}).code, 409)

    def test_protected_namespace_keeps_its_objects(self) -> None:
        """Nothing in a protected namespace is deleted: one object or all, 403."""
        self.namespace(protected=True, objects=[{"name": "o"}])
        self.assertEqual(self.call("DELETE", f"{NS}/OS::Test::NS/objects/o").code, 403)
        self.assertEqual(self.call("DELETE", f"{NS}/OS::Test::NS/objects").code, 403)
        self.assertEqual(self.call("GET", f"{NS}/OS::Test::NS/objects/o").code, 200)

    def test_unknown_namespace_is_404(self) -> None:
        """Objects of a namespace that does not exist: 404."""
        self.assertEqual(self.call("POST", f"{NS}/OS::Nothing/objects", {"name": "o"}).code, 404)


class PropertyTests(MetadefsTestCase):
    def test_crud(self) -> None:
        """Tempest's property flow, a title and enum kept, name included in the answer."""
        self.namespace()
        enum = ["xen", "qemu", "kvm"]
        created = self.call(
            "POST", f"{NS}/OS::Test::NS/properties",
            {"name": "hypervisor_type", "title": "HV", "type": "string", "enum": enum},
        )
        self.assertEqual(created.code, 201, created.body)
        self.assertEqual(created.json(), {"name": "hypervisor_type", "title": "HV", "type": "string", "enum": enum})
        self.assertEqual(self.call("GET", f"{NS}/OS::Test::NS/properties/hypervisor_type").json()["name"], "hypervisor_type")
        updated = self.call(
            "PUT", f"{NS}/OS::Test::NS/properties/hypervisor_type",
            {"name": "hypervisor_type", "title": "New", "type": "string", "enum": enum},
        )
        self.assertEqual(updated.json()["title"], "New")
        listed = self.call("GET", f"{NS}/OS::Test::NS/properties").json()
        self.assertEqual(listed["properties"]["hypervisor_type"]["title"], "New")
        self.assertEqual(self.call("DELETE", f"{NS}/OS::Test::NS/properties/hypervisor_type").code, 204)
        self.assertEqual(self.call("GET", f"{NS}/OS::Test::NS/properties").json()["properties"], {})

    def test_needs_title_and_type(self) -> None:
        """A property without a title, or of a type JSON Schema has not, is a 400."""
        self.namespace()
        path = f"{NS}/OS::Test::NS/properties"
        self.assertEqual(self.call("POST", path, {"name": "p", "type": "string"}).code, 400)
        self.assertEqual(self.call("POST", path, {"name": "p", "title": "P", "type": "text"}).code, 400)

    def test_prefixed_name_found(self) -> None:
        """A property is also found by the name a resource type gives it (hw_ + name)."""
        self.namespace(
            resource_type_associations=[{"name": "OS::Glance::Image", "prefix": "hw_"}],
            properties={"watchdog": {"title": "W", "type": "string"}},
        )
        shown = self.call("GET", f"{NS}/OS::Test::NS/properties/hw_watchdog")
        self.assertEqual(shown.code, 200)
        self.assertEqual(shown.json()["title"], "W")


class TagTests(MetadefsTestCase):
    def test_bulk_and_single(self) -> None:
        """Tempest's tag flows: three at once, one more, renamed, deleted, all deleted."""
        self.namespace()
        tags = [{"name": "sample-tag1"}, {"name": "sample-tag2"}, {"name": "sample-tag3"}]
        created = self.call("POST", f"{NS}/OS::Test::NS/tags", {"tags": tags})
        self.assertEqual(created.code, 201)
        self.assertEqual(created.json(), {"tags": tags})
        self.assertEqual(len(self.call("GET", f"{NS}/OS::Test::NS/tags").json()["tags"]), 3)
        one = self.call("POST", f"{NS}/OS::Test::NS/tags/extra")
        self.assertEqual(one.code, 201)
        self.assertEqual(one.json()["name"], "extra")
        self.assertIn("created_at", one.json())
        self.assertEqual(self.call("GET", f"{NS}/OS::Test::NS/tags/extra").json()["name"], "extra")
        renamed = self.call("PUT", f"{NS}/OS::Test::NS/tags/extra", {"name": "renamed"})
        self.assertEqual(renamed.json()["name"], "renamed")
        self.assertEqual(self.call("DELETE", f"{NS}/OS::Test::NS/tags/renamed").code, 204)
        self.assertEqual(self.call("DELETE", f"{NS}/OS::Test::NS/tags").code, 204)
        self.assertEqual(self.call("GET", f"{NS}/OS::Test::NS/tags").json()["tags"], [])

    def test_replace_or_append(self) -> None:
        """A bulk create replaces the tags, unless X-Openstack-Append says to add."""
        self.namespace(tags=[{"name": "old"}])
        self.call("POST", f"{NS}/OS::Test::NS/tags", {"tags": [{"name": "a"}]})
        self.assertEqual([t["name"] for t in self.call("GET", f"{NS}/OS::Test::NS/tags").json()["tags"]], ["a"])
        headers = {**ADMIN, "X-Openstack-Append": "True"}
        self.call("POST", f"{NS}/OS::Test::NS/tags", {"tags": [{"name": "b"}]}, headers=headers)
        self.assertEqual([t["name"] for t in self.call("GET", f"{NS}/OS::Test::NS/tags").json()["tags"]], ["a", "b"])

    def test_duplicates_are_409(self) -> None:
        """A tag given twice, or added again, is a 409 and nothing changes."""
        self.namespace(tags=[{"name": "a"}])
        self.assertEqual(self.call("POST", f"{NS}/OS::Test::NS/tags/a").code, 409)
        twice = self.call("POST", f"{NS}/OS::Test::NS/tags", {"tags": [{"name": "x"}, {"name": "x"}]})
        self.assertEqual(twice.code, 409)
        self.assertEqual([t["name"] for t in self.call("GET", f"{NS}/OS::Test::NS/tags").json()["tags"]], ["a"])


class ResourceTypeTests(MetadefsTestCase):
    def test_associations(self) -> None:
        """Tempest's association flow; the resource type is listed once known."""
        self.namespace()
        created = self.call(
            "POST", f"{NS}/OS::Test::NS/resource_types", {"name": "OS::Nova::Flavor", "prefix": "hw:"}
        )
        self.assertEqual(created.code, 201, created.body)
        self.assertEqual(created.json()["name"], "OS::Nova::Flavor")
        self.assertEqual(created.json()["prefix"], "hw:")
        types = self.call("GET", "/v2/metadefs/resource_types").json()["resource_types"]
        self.assertEqual([t["name"] for t in types], ["OS::Nova::Flavor"])
        listed = self.call("GET", f"{NS}/OS::Test::NS/resource_types").json()
        self.assertEqual([a["name"] for a in listed["resource_type_associations"]], ["OS::Nova::Flavor"])
        again = self.call("POST", f"{NS}/OS::Test::NS/resource_types", {"name": "OS::Nova::Flavor"})
        self.assertEqual(again.code, 409)
        self.assertEqual(self.call("DELETE", f"{NS}/OS::Test::NS/resource_types/OS::Nova::Flavor").code, 204)
        listed = self.call("GET", f"{NS}/OS::Test::NS/resource_types").json()
        self.assertEqual(listed["resource_type_associations"], [])
        self.assertEqual(self.call("DELETE", f"{NS}/OS::Test::NS/resource_types/OS::Nova::Flavor").code, 404)


class SchemaTests(MetadefsTestCase):
    def test_every_schema_names_itself_as_glance(self) -> None:
        """Each /v2/schemas/metadefs/ document answers with Glance's name, to a reader too."""
        expected = {
            "namespace": "namespace", "namespaces": "namespaces", "object": "object",
            "objects": "objects", "property": "property", "properties": "properties",
            "tag": "tag", "tags": "tags", "resource_type": "resource_type_association",
            "resource_types": "resource_type_associations",
        }
        for path, name in expected.items():
            answer = self.call("GET", f"/v2/schemas/metadefs/{path}", headers=PROJECT_A)
            self.assertEqual(answer.code, 200, path)
            self.assertEqual(answer.json()["name"], name)
        self.assertEqual(self.call("GET", "/v2/schemas/metadefs/nothing").code, 404)

    def test_images_api_still_answers(self) -> None:
        """The mount leaves the images app its routes: /v2/schemas/image, /v2/images."""
        self.assertEqual(self.call("GET", "/v2/schemas/image").json()["name"], "image")
        self.assertEqual(self.call("GET", "/v2/images").code, 200)


class _ThroughRegistryServer:
    """The API over a registry client of a registry server (registry_url), in memory."""

    registry: Any

    def api_registry(self) -> Any:
        server = RegistryServer(self.registry, token="t")
        return HTTPRegistryClient(
            agent=RequestTraversalAgent(server.resource()),
            url="http://registry.example",
            clock=Clock(),
            token="t",
        )


class NamespacesThroughRegistryServerTests(_ThroughRegistryServer, NamespaceTests):
    """The namespace flows, with the definitions kept behind a registry server."""


class TagsThroughRegistryServerTests(_ThroughRegistryServer, TagTests):
    """The tag flows, with the definitions kept behind a registry server."""


class ResourceTypesThroughRegistryServerTests(_ThroughRegistryServer, ResourceTypeTests):
    """The association flow, with the definitions kept behind a registry server."""


class PagingThroughRegistryServerTests(_ThroughRegistryServer, PagingTests):
    """Listing pages and filters, with the definitions kept behind a registry server."""
