"""
Where metadata definitions are kept: L{IMetadefRegistry}, beside
L{glance_tx.registry.interface.IRegistry} and provided by the same
registries (SQL, and the HTTP client of a registry server).

Only storage is decided here: names are unique (a L{Conflict} otherwise),
what is missing is L{NotFound}. Who may see or change a namespace, and the
C{protected} flag, are the API's to enforce. Every method returns a
L{Deferred} that fires on the reactor thread.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence

from twisted.internet.defer import Deferred
from zope.interface import Interface

from glance_tx.metadefs.model import (
    Association,
    Definition,
    Namespace,
    NamespaceContent,
    NamespaceQuery,
    ResourceType,
)


class IMetadefRegistry(Interface):
    """Stores namespaces, their definitions and resource type associations."""

    def create_namespace(content: NamespaceContent, replace: bool = False) -> Deferred[Namespace]:
        """
        Store a namespace with its definitions and associations (a resource
        type not yet known is created, unprotected) in one transaction, and
        fire with the namespace as stored (timestamps set). A namespace of
        that name already there is a L{Conflict}, unless C{replace}: then
        it and all it held are replaced. Two definitions of one kind and
        name, or two associations with one resource type, are a Conflict.
        """

    def get_namespace(name: str) -> Deferred[Namespace]:
        """Fire with the namespace, or fail with L{NotFound}."""

    def list_namespaces(query: NamespaceQuery) -> Deferred[builtins.list[Namespace]]:
        """
        Fire with one page of the namespaces C{query}'s caller sees
        (L{glance_tx.metadefs.model.visible}), in its order (the namespace
        name breaks ties). A marker that names no namespace the caller
        sees is a L{NotFound}.
        """

    def update_namespace(name: str, namespace: Namespace) -> Deferred[Namespace]:
        """
        Replace the namespace's fields with C{namespace}'s (its name too: a
        rename keeps what it holds), bump C{updated_at}, fire with the
        record. NotFound, or a Conflict if the new name is taken.
        """

    def delete_namespace(name: str) -> Deferred[None]:
        """Remove the namespace and everything it holds (NotFound if absent)."""

    def list_definitions(namespace: str, kind: str) -> Deferred[builtins.list[Definition]]:
        """The namespace's definitions of C{kind}, by name (NotFound: no namespace)."""

    def get_definition(namespace: str, kind: str, name: str) -> Deferred[Definition]:
        """Fire with the definition, or fail with NotFound."""

    def create_definition(namespace: str, definition: Definition) -> Deferred[Definition]:
        """Add a definition; Conflict if its kind and name are taken."""

    def update_definition(
        namespace: str, name: str, definition: Definition
    ) -> Deferred[Definition]:
        """
        Replace definition C{name} (of C{definition.kind}) by C{definition},
        renamed if its name differs; NotFound, or Conflict if that name is
        taken.
        """

    def delete_definition(namespace: str, kind: str, name: str) -> Deferred[None]:
        """Remove one definition; NotFound if absent."""

    def replace_definitions(
        namespace: str, kind: str, definitions: Sequence[Definition], append: bool = False
    ) -> Deferred[builtins.list[Definition]]:
        """
        Make C{definitions} the namespace's definitions of C{kind} (all
        others removed), or with C{append} add them to those there; fire
        with the ones written. A name given twice, or (appending) already
        there, is a Conflict and nothing changes. No definitions without
        C{append}: remove them all.
        """

    def list_resource_types() -> Deferred[builtins.list[ResourceType]]:
        """Every resource type, by name."""

    def list_associations(
        namespaces: Sequence[str],
    ) -> Deferred[Mapping[str, builtins.list[Association]]]:
        """
        Each named namespace's associations, by resource type name (a name
        with none, or no such namespace, maps to an empty list): one call
        for a whole listing page.
        """

    def create_association(namespace: str, association: Association) -> Deferred[Association]:
        """
        Associate the namespace with a resource type (created, unprotected,
        if unknown); NotFound for no namespace, Conflict if associated.
        """

    def delete_association(namespace: str, resource_type: str) -> Deferred[None]:
        """Remove an association; NotFound if absent."""
