"""
The metadata definitions API, C{/v2/metadefs/...} and its schemas
C{/v2/schemas/metadefs/...}, as Glance 33 serves them: a Klein app of its
own, mounted beside the images app by L{MetadefsMount}.

Who may do what is Glance's: a namespace a caller does not see
(L{glance_tx.metadefs.model.visible}) is a 404, as if absent; the metadef
policy rules decide the rest (by default, readers read and admins
change), and nothing in a C{protected} namespace may be deleted (403)
until an update makes it unprotected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from attrs import define
from klein import Klein
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from glance_tx.api.errors import json_errors
from glance_tx.api.params import parse_int
from glance_tx.api.v2 import _header, _json, _no_content, _read_object  # as v2 answers
from glance_tx.context import RequestContext
from glance_tx.errors import BadRequest, Forbidden, NotFound
from glance_tx.identity.interface import IIdentityResolver
from glance_tx.images import MAX_LIMIT
from glance_tx.metadefs import schemas, views
from glance_tx.metadefs.interface import IMetadefRegistry
from glance_tx.metadefs.model import (
    DEFAULT_LIMIT,
    OBJECT,
    PROPERTY,
    SORT_KEYS,
    TAG,
    VISIBILITIES,
    Definition,
    Namespace,
    NamespaceQuery,
    check_name,
    visible,
)
from glance_tx.policy import Policy


def _arg(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    return values[-1].decode("utf-8", "replace") if values else None


def _target(namespace: Namespace) -> dict[str, Any]:
    """What a metadef rule may name about a namespace (Glance's keys)."""
    return {
        "project_id": namespace.owner,
        "owner": namespace.owner,
        "visibility": namespace.visibility,
        "protected": namespace.protected,
    }


@define
class MetadefsAPI:
    """The Klein app; collaborators injected, nothing global."""

    registry: IMetadefRegistry
    identity: IIdentityResolver
    policy: Policy

    app = json_errors(Klein())

    def resource(self) -> IResource:
        return self.app.resource()  # type: ignore[no-any-return]

    # -- who asks, and which namespace they see ------------------------------------

    async def _context(self, request: IRequest, rule: str) -> RequestContext:
        context = await self.identity.resolve(request)
        self.policy.enforce(rule, context, {"project_id": context.project_id})
        return context

    async def _namespace(
        self, request: IRequest, name: str, rule: str
    ) -> tuple[RequestContext, Namespace]:
        """The namespace if the caller sees it (else 404) and C{rule} allows (else 403)."""
        context = await self.identity.resolve(request)
        namespace = await self.registry.get_namespace(name)
        if not visible(namespace, context.project_id, self.policy.is_admin(context)):
            raise NotFound(f"Namespace {name} not found")
        self.policy.enforce(rule, context, _target(namespace))
        return context, namespace

    def _unprotected(self, namespace: Namespace, what: str) -> None:
        if namespace.protected:
            raise Forbidden(
                f"Namespace {namespace.namespace} is protected: {what} cannot be deleted"
            )

    # -- schemas ------------------------------------------------------------------

    @app.route("/schemas/metadefs/<name>", methods=["GET"])
    def schema(self, request: IRequest, name: str) -> bytes:
        make = schemas.SCHEMAS.get(name)
        if make is None:
            raise NotFound(f"No schema named metadefs/{name}")
        return _json(request, make())

    # -- namespaces ----------------------------------------------------------------

    def _query(self, request: IRequest, context: RequestContext) -> NamespaceQuery:
        limit = _arg(request, "limit")
        sort_key = _arg(request, "sort_key") or "created_at"
        if sort_key not in SORT_KEYS:
            raise BadRequest(f"Invalid sort key: {sort_key}")
        sort_dir = _arg(request, "sort_dir") or "desc"
        if sort_dir not in ("asc", "desc"):
            raise BadRequest(f"Invalid sort direction: {sort_dir}")
        visibility = _arg(request, "visibility")
        if visibility is not None and visibility not in VISIBILITIES:
            raise BadRequest(f"Invalid visibility value: {visibility}")
        resource_types = _arg(request, "resource_types")
        return NamespaceQuery(
            project_id=context.project_id,
            is_admin=self.policy.is_admin(context),
            limit=min(parse_int("limit", limit), MAX_LIMIT) if limit else DEFAULT_LIMIT,
            marker=_arg(request, "marker"),
            sort_key=sort_key,
            sort_dir=sort_dir,
            visibility=visibility,
            resource_types=tuple(resource_types.split(",")) if resource_types else None,
        )

    @app.route("/metadefs/namespaces", methods=["GET"])
    async def list_namespaces(self, request: IRequest) -> bytes:
        context = await self._context(request, "get_metadef_namespaces")
        query = self._query(request, context)
        page = await self.registry.list_namespaces(query)
        associations = await self.registry.list_associations([n.namespace for n in page])
        # As Glance: first is the request without its marker, next with the
        # page's last namespace as the marker.
        params = {
            key.decode("utf-8", "replace"): values[-1].decode("utf-8", "replace")
            for key, values in (request.args or {}).items()
            if key != b"marker" and values
        }
        first = "/v2/metadefs/namespaces"
        document: dict[str, Any] = {
            "namespaces": [
                views.namespace_view(n, associations.get(n.namespace, ())) for n in page
            ],
            "first": f"{first}?{urlencode(params)}" if params else first,
            "schema": "/v2/schemas/metadefs/namespaces",
        }
        if page and len(page) == query.limit:
            params["marker"] = page[-1].namespace
            document["next"] = f"{first}?{urlencode(params)}"
        return _json(request, document)

    @app.route("/metadefs/namespaces", methods=["POST"])
    async def create_namespace(self, request: IRequest) -> bytes:
        context = await self._context(request, "add_metadef_namespace")
        content = views.parse_namespace(_read_object(request), context.project_id)
        if content.namespace.owner != context.project_id and not self.policy.is_admin(context):
            raise Forbidden("Only an admin may create a namespace for another owner")
        created = await self.registry.create_namespace(content)
        view = views.namespace_view(created, content.associations)
        self._add_contents(view, created.namespace, content.definitions)
        return _json(request, view, 201)

    def _add_contents(
        self, view: dict[str, Any], namespace: str, definitions: Sequence[Definition], prefix: str = ""
    ) -> None:
        """A namespace's detail: its objects, properties and tags, when it has any."""
        objects = [views.object_view(namespace, d, prefix) for d in definitions if d.kind == OBJECT]
        properties = [d for d in definitions if d.kind == PROPERTY]
        tags = [{"name": d.name} for d in definitions if d.kind == TAG]
        if objects:
            view["objects"] = objects
        if properties:
            view["properties"] = views.properties_view(properties, prefix)
        if tags:
            view["tags"] = tags

    @app.route("/metadefs/namespaces/<namespace>", methods=["GET"])
    async def show_namespace(self, request: IRequest, namespace: str) -> bytes:
        _, found = await self._namespace(request, namespace, "get_metadef_namespace")
        associations = (await self.registry.list_associations([namespace]))[namespace]
        definitions = [
            d
            for kind in (OBJECT, PROPERTY, TAG)
            for d in await self.registry.list_definitions(namespace, kind)
        ]
        # ?resource_type=X shows names as that resource type has them.
        wanted = _arg(request, "resource_type")
        prefix = next((a.prefix or "" for a in associations if a.name == wanted), "")
        view = views.namespace_view(found, associations)
        self._add_contents(view, namespace, definitions, prefix)
        return _json(request, view)

    @app.route("/metadefs/namespaces/<namespace>", methods=["PUT"])
    async def update_namespace(self, request: IRequest, namespace: str) -> bytes:
        context, found = await self._namespace(request, namespace, "modify_metadef_namespace")
        content = views.parse_namespace(_read_object(request), found.owner or context.project_id)
        if content.namespace.owner != found.owner and not self.policy.is_admin(context):
            raise Forbidden("Only an admin may give a namespace to another owner")
        updated = await self.registry.update_namespace(namespace, content.namespace)
        associations = (await self.registry.list_associations([updated.namespace]))[
            updated.namespace
        ]
        return _json(request, views.namespace_view(updated, associations))

    @app.route("/metadefs/namespaces/<namespace>", methods=["DELETE"])
    async def delete_namespace(self, request: IRequest, namespace: str) -> bytes:
        _, found = await self._namespace(request, namespace, "delete_metadef_namespace")
        self._unprotected(found, "it")
        await self.registry.delete_namespace(namespace)
        return _no_content(request)

    # -- objects, properties and tags: one shape -------------------------------------

    async def _delete_all(self, request: IRequest, namespace: str, kind: str, rule: str) -> bytes:
        _, found = await self._namespace(request, namespace, rule)
        self._unprotected(found, f"its {kind}s")
        await self.registry.replace_definitions(namespace, kind, ())
        return _no_content(request)

    async def _delete_one(
        self, request: IRequest, namespace: str, kind: str, name: str, rule: str
    ) -> bytes:
        _, found = await self._namespace(request, namespace, rule)
        self._unprotected(found, f"{kind} {name}")
        await self.registry.delete_definition(namespace, kind, name)
        return _no_content(request)

    @app.route("/metadefs/namespaces/<namespace>/objects", methods=["GET"])
    async def list_objects(self, request: IRequest, namespace: str) -> bytes:
        await self._namespace(request, namespace, "get_metadef_objects")
        found = await self.registry.list_definitions(namespace, OBJECT)
        return _json(
            request,
            {
                "objects": [views.object_view(namespace, d) for d in found],
                "schema": "v2/schemas/metadefs/objects",
            },
        )

    @app.route("/metadefs/namespaces/<namespace>/objects", methods=["POST"])
    async def create_object(self, request: IRequest, namespace: str) -> bytes:
        await self._namespace(request, namespace, "add_metadef_object")
        definition = views.parse_object(_read_object(request))
        created = await self.registry.create_definition(namespace, definition)
        return _json(request, views.object_view(namespace, created), 201)

    @app.route("/metadefs/namespaces/<namespace>/objects", methods=["DELETE"])
    async def delete_objects(self, request: IRequest, namespace: str) -> bytes:
        return await self._delete_all(request, namespace, OBJECT, "delete_metadef_namespace")

    @app.route("/metadefs/namespaces/<namespace>/objects/<name>", methods=["GET"])
    async def show_object(self, request: IRequest, namespace: str, name: str) -> bytes:
        await self._namespace(request, namespace, "get_metadef_object")
        found = await self.registry.get_definition(namespace, OBJECT, name)
        return _json(request, views.object_view(namespace, found))

    @app.route("/metadefs/namespaces/<namespace>/objects/<name>", methods=["PUT"])
    async def update_object(self, request: IRequest, namespace: str, name: str) -> bytes:
        await self._namespace(request, namespace, "modify_metadef_object")
        definition = views.parse_object(_read_object(request))
        updated = await self.registry.update_definition(namespace, name, definition)
        return _json(request, views.object_view(namespace, updated))

    @app.route("/metadefs/namespaces/<namespace>/objects/<name>", methods=["DELETE"])
    async def delete_object(self, request: IRequest, namespace: str, name: str) -> bytes:
        return await self._delete_one(request, namespace, OBJECT, name, "delete_metadef_object")

    @app.route("/metadefs/namespaces/<namespace>/properties", methods=["GET"])
    async def list_properties(self, request: IRequest, namespace: str) -> bytes:
        await self._namespace(request, namespace, "get_metadef_properties")
        found = await self.registry.list_definitions(namespace, PROPERTY)
        return _json(request, {"properties": views.properties_view(found)})

    @app.route("/metadefs/namespaces/<namespace>/properties", methods=["POST"])
    async def create_property(self, request: IRequest, namespace: str) -> bytes:
        await self._namespace(request, namespace, "add_metadef_property")
        definition = views.parse_property(_read_object(request))
        created = await self.registry.create_definition(namespace, definition)
        return _json(request, views.property_view(created), 201)

    @app.route("/metadefs/namespaces/<namespace>/properties", methods=["DELETE"])
    async def delete_properties(self, request: IRequest, namespace: str) -> bytes:
        return await self._delete_all(request, namespace, PROPERTY, "delete_metadef_namespace")

    @app.route("/metadefs/namespaces/<namespace>/properties/<name>", methods=["GET"])
    async def show_property(self, request: IRequest, namespace: str, name: str) -> bytes:
        await self._namespace(request, namespace, "get_metadef_property")
        # Glance also finds "prefix+name" of an associated resource type.
        found = await self._find_property(namespace, name)
        return _json(request, views.property_view(found))

    async def _find_property(self, namespace: str, name: str) -> Definition:
        try:
            return await self.registry.get_definition(namespace, PROPERTY, name)
        except NotFound:
            associations = (await self.registry.list_associations([namespace]))[namespace]
            for association in associations:
                prefix = association.prefix
                if prefix and name.startswith(prefix) and len(name) > len(prefix):
                    try:
                        return await self.registry.get_definition(
                            namespace, PROPERTY, name[len(prefix):]
                        )
                    except NotFound:
                        continue
            raise

    @app.route("/metadefs/namespaces/<namespace>/properties/<name>", methods=["PUT"])
    async def update_property(self, request: IRequest, namespace: str, name: str) -> bytes:
        await self._namespace(request, namespace, "modify_metadef_property")
        definition = views.parse_property(_read_object(request))
        updated = await self.registry.update_definition(namespace, name, definition)
        return _json(request, views.property_view(updated))

    @app.route("/metadefs/namespaces/<namespace>/properties/<name>", methods=["DELETE"])
    async def delete_property(self, request: IRequest, namespace: str, name: str) -> bytes:
        return await self._delete_one(
            request, namespace, PROPERTY, name, "remove_metadef_property"
        )

    @app.route("/metadefs/namespaces/<namespace>/tags", methods=["GET"])
    async def list_tags(self, request: IRequest, namespace: str) -> bytes:
        await self._namespace(request, namespace, "get_metadef_tags")
        found = await self.registry.list_definitions(namespace, TAG)
        return _json(request, {"tags": [views.tag_view(d) for d in found]})

    @app.route("/metadefs/namespaces/<namespace>/tags", methods=["POST"])
    async def create_tags(self, request: IRequest, namespace: str) -> bytes:
        """All the namespace's tags replaced, or with X-Openstack-Append added to."""
        await self._namespace(request, namespace, "add_metadef_tags")
        tags = views.parse_tags(_read_object(request))
        append = (_header(request, b"X-Openstack-Append") or "").lower() in ("true", "1", "yes")
        written = await self.registry.replace_definitions(namespace, TAG, tags, append)
        return _json(request, {"tags": [{"name": d.name} for d in written]}, 201)

    @app.route("/metadefs/namespaces/<namespace>/tags", methods=["DELETE"])
    async def delete_tags(self, request: IRequest, namespace: str) -> bytes:
        return await self._delete_all(request, namespace, TAG, "delete_metadef_tags")

    @app.route("/metadefs/namespaces/<namespace>/tags/<name>", methods=["POST"])
    async def create_tag(self, request: IRequest, namespace: str, name: str) -> bytes:
        await self._namespace(request, namespace, "add_metadef_tag")
        definition = Definition(kind=TAG, name=check_name(name, "tag name"))
        created = await self.registry.create_definition(namespace, definition)
        return _json(request, views.tag_view(created), 201)

    @app.route("/metadefs/namespaces/<namespace>/tags/<name>", methods=["GET"])
    async def show_tag(self, request: IRequest, namespace: str, name: str) -> bytes:
        await self._namespace(request, namespace, "get_metadef_tag")
        found = await self.registry.get_definition(namespace, TAG, name)
        return _json(request, views.tag_view(found))

    @app.route("/metadefs/namespaces/<namespace>/tags/<name>", methods=["PUT"])
    async def update_tag(self, request: IRequest, namespace: str, name: str) -> bytes:
        await self._namespace(request, namespace, "modify_metadef_tag")
        definition = views.parse_tag(_read_object(request))
        updated = await self.registry.update_definition(namespace, name, definition)
        return _json(request, views.tag_view(updated))

    @app.route("/metadefs/namespaces/<namespace>/tags/<name>", methods=["DELETE"])
    async def delete_tag(self, request: IRequest, namespace: str, name: str) -> bytes:
        return await self._delete_one(request, namespace, TAG, name, "delete_metadef_tag")

    # -- resource types -------------------------------------------------------------

    @app.route("/metadefs/resource_types", methods=["GET"])
    async def list_resource_types(self, request: IRequest) -> bytes:
        await self._context(request, "list_metadef_resource_types")
        found = await self.registry.list_resource_types()
        return _json(request, {"resource_types": [views.resource_type_view(r) for r in found]})

    @app.route("/metadefs/namespaces/<namespace>/resource_types", methods=["GET"])
    async def list_associations(self, request: IRequest, namespace: str) -> bytes:
        await self._namespace(request, namespace, "list_metadef_resource_types")
        found = (await self.registry.list_associations([namespace]))[namespace]
        return _json(
            request, {"resource_type_associations": [views.association_view(a) for a in found]}
        )

    @app.route("/metadefs/namespaces/<namespace>/resource_types", methods=["POST"])
    async def create_association(self, request: IRequest, namespace: str) -> bytes:
        await self._namespace(request, namespace, "add_metadef_resource_type_association")
        association = views.parse_association(_read_object(request))
        created = await self.registry.create_association(namespace, association)
        return _json(request, views.association_view(created), 201)

    @app.route("/metadefs/namespaces/<namespace>/resource_types/<name>", methods=["DELETE"])
    async def delete_association(self, request: IRequest, namespace: str, name: str) -> bytes:
        _, found = await self._namespace(
            request, namespace, "remove_metadef_resource_type_association"
        )
        self._unprotected(found, f"its association with {name}")
        await self.registry.delete_association(namespace, name)
        return _no_content(request)


class MetadefsMount(Resource):
    """
    C{/v2}'s resource: C{metadefs/...} and C{schemas/metadefs/...} to the
    metadefs app, the rest to the images app, by plain traversal (as
    L{glance_tx.api.root.RootDispatch}, so an image request is routed once).
    """

    isLeaf = True

    def __init__(self, images: IResource, metadefs: IResource) -> None:
        super().__init__()
        self._images = images
        self._metadefs = metadefs

    def _chosen(self, request: Any) -> IResource:
        rest = request.postpath
        if rest[:1] == [b"metadefs"] or rest[:2] == [b"schemas", b"metadefs"]:
            return self._metadefs
        return self._images

    def render(self, request: Any) -> bytes:
        return self._chosen(request).render(request)  # type: ignore[no-any-return]
