"""
The documents of C{GET /v2/info/stores} and C{/v2/info/stores/detail}:
which stores an upload may name (C{X-Image-Meta-Store}), and for admins
how each is set up, in the shape Glance 33 answers with, so that clients
written for it (C{glance stores-info}, openstacksdk's C{stores()}) read
them unchanged.

Glance writes its flags as the strings C{"true"}, and leaves a false one
out; so do we.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from glance_tx.store.backends import StoreInfo, StoreMap
from glance_tx.store.filesystem import FilesystemStore
from glance_tx.store.interface import IStore
from glance_tx.store.swift import SwiftStore

if TYPE_CHECKING:
    from glance_tx.store.s3 import S3Store


def _store_view(info: StoreInfo) -> dict[str, Any]:
    view: dict[str, Any] = {"id": info.id}
    if info.description:
        view["description"] = info.description
    if info.default:
        view["default"] = "true"
    if info.read_only:
        view["read-only"] = "true"
    return view


def stores_document(stores: StoreMap) -> dict[str, Any]:
    """Every enabled store, in C{enabled_backends} order."""
    return {"stores": [_store_view(info) for info in stores.info()]}


def stores_detail_document(stores: StoreMap) -> dict[str, Any]:
    """As L{stores_document}, with each store's type and set-up."""
    detailed = []
    for info in stores.info():
        view = _store_view(info)
        view["type"] = info.type
        view["properties"] = _properties(info.type, stores.stores[info.id])
        # Glance weighs stores for its import order; all weigh the same here.
        view["weight"] = 0
        detailed.append(view)
    return {"stores": detailed}


def _properties(store_type: str, store: IStore) -> dict[str, Any]:
    """
    What Glance shows of a store of each kind, read from the store as it
    runs (defaults applied). Sizes are in bytes, as glance_store holds them.
    The HTTP store, like Glance's, has nothing worth showing.
    """
    if isinstance(store, FilesystemStore):
        return {
            "data_dir": store.root.path,
            "chunk_size": store.block_size,
            "thin_provisioning": False,
        }
    if isinstance(store, SwiftStore):
        return {
            "container": store.container,
            "large_object_size": store.large_object_size,
            "large_object_chunk_size": store.chunk_size,
        }
    if store_type == "s3":
        # By type: the S3 store's module (and botocore) is imported only
        # where one is configured (L{glance_tx.store.backends}).
        s3 = cast("S3Store", store)
        return {
            "s3_store_large_object_size": s3.large_object_size,
            "s3_store_large_object_chunk_size": s3.part_size,
            # One part is sent while the next fills: one upload thread's worth.
            "s3_store_thread_pools": 1,
        }
    return {}
