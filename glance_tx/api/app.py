"""Assembles the HTTP site from a registry, stores and a runner."""

from __future__ import annotations

from typing import Any

from glance_tx.api.root import RootAPI
from glance_tx.api.site import GlanceSite
from glance_tx.api.v1 import V1API
from glance_tx.api.v2 import V2API
from glance_tx.config import CacheConfig
from glance_tx.leases import UploadLeases
from glance_tx.registry.interface import IRegistry
from glance_tx.store.backends import StoreMap
from glance_tx.threads import BlockingRunner
from glance_tx.uploads import Uploader


def build_site(
    *,
    registry: IRegistry,
    stores: StoreMap,
    runner: BlockingRunner,
    image_size_cap: int,
    default_project: str,
    reactor: Any,
    cache: CacheConfig | None = None,
    leases: UploadLeases | None = None,
    hashing_algorithm: str = "sha512",
) -> GlanceSite:
    cache = cache or CacheConfig()
    uploader = Uploader(
        registry=registry,
        stores=stores,
        runner=runner,
        size_cap=image_size_cap,
        hash_algo=hashing_algorithm,
        leases=leases,
    )
    v1 = V1API(
        registry=registry,
        stores=stores,
        uploader=uploader,
        default_project=default_project,
        cache=cache,
    )
    v2 = V2API(
        registry=registry,
        stores=stores,
        uploader=uploader,
        default_project=default_project,
        cache=cache,
    )
    root = RootAPI(registry=registry, stores=stores, v1=v1.resource(), v2=v2.resource())
    site = GlanceSite(
        root.resource(),
        upload_routes=v1.upload_routes() + v2.upload_routes(),
        reactor=reactor,
    )
    site.displayTracebacks = False
    return site
