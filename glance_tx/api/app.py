"""Assembles the HTTP site from a registry, stores and a runner."""

from __future__ import annotations

from typing import Any, cast

from glance_tx.api.channel import DEFAULT_MAX_HEADER_LINE
from glance_tx.api.root import V1_PREFIXES, V2_PREFIXES, RootAPI
from glance_tx.api.site import GlanceSite
from glance_tx.api.v1 import V1API
from glance_tx.api.v2 import V2API
from glance_tx.config import (
    CacheConfig,
    ClientLimits,
    ImageFormatConfig,
    ImageQuotas,
    ProjectLimits,
)
from glance_tx.formats.conversion import Converter
from glance_tx.identity.headers import HeaderIdentity
from glance_tx.identity.interface import IIdentityResolver
from glance_tx.imports import IMPORT_METHODS, Importer
from glance_tx.leases import UploadLeases
from glance_tx.policy import Policy
from glance_tx.project_limits import ProjectLimiter
from glance_tx.registry.interface import IRegistry
from glance_tx.registry.quotas import QuotaRegistry
from glance_tx.store.backends import StoreMap
from glance_tx.store.http import HTTPStore
from glance_tx.store.interface import IStore
from glance_tx.threads import BlockingRunner
from glance_tx.uploads import Uploader, UploadSlots


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
    show_multiple_locations: bool = False,
    show_image_direct_url: bool = False,
    max_header_line: int = DEFAULT_MAX_HEADER_LINE,
    quotas: ImageQuotas | None = None,
    identity: IIdentityResolver | None = None,
    delayed_delete: bool = False,
    image_format: ImageFormatConfig | None = None,
    hashing_algorithm: str = "sha512",
    policy: Policy | None = None,
    project_limits: ProjectLimits | None = None,
    client_limits: ClientLimits | None = None,
    max_concurrent_uploads: int | None = None,
    import_methods: tuple[str, ...] = IMPORT_METHODS,
    web_download: IStore | None = None,
    converter: Converter | None = None,
) -> GlanceSite:
    """
    The API's site. Who is asking comes from C{identity}; without one, from
    the headers, with C{default_project} for requests that have none
    (C{auth_strategy = noauth}). What they may do is C{policy}'s to say
    (by default Glance's rules); v1 and v2 share it. web-download URLs are
    read by C{web_download}, by default the enabled HTTP store (its guard),
    if any.
    """
    policy = policy or Policy()
    cache = cache or CacheConfig()
    # Every change the APIs make passes the per-image quotas, and every
    # create and upload the per-project limits.
    limiter = ProjectLimiter(registry, project_limits or ProjectLimits())
    registry = cast(IRegistry, QuotaRegistry(registry, quotas or ImageQuotas(), limiter))
    if identity is None:
        identity = HeaderIdentity(default_project)
    uploader = Uploader(
        registry=registry,
        stores=stores,
        runner=runner,
        size_cap=image_size_cap,
        hashing_algorithm=hashing_algorithm,
        leases=leases,
        image_format=image_format or ImageFormatConfig(),
        limiter=limiter,
        slots=UploadSlots(max_concurrent_uploads),
    )
    if web_download is None:
        web_download = next((s for s in stores.stores.values() if isinstance(s, HTTPStore)), None)
    importer = Importer(
        registry=registry,
        stores=stores,
        uploader=uploader,
        web=web_download,
        methods=import_methods,
        converter=converter,
    )
    v1 = V1API(
        registry=registry,
        stores=stores,
        uploader=uploader,
        identity=identity,
        cache=cache,
        delayed_delete=delayed_delete,
        policy=policy,
    )
    v2 = V2API(
        registry=registry,
        stores=stores,
        uploader=uploader,
        identity=identity,
        cache=cache,
        policy=policy,
        limiter=limiter,
        show_multiple_locations=show_multiple_locations,
        show_image_direct_url=show_image_direct_url,
        delayed_delete=delayed_delete,
        importer=importer,
    )
    root = RootAPI(
        registry=registry, stores=stores, v1=v1.resource(), v2=v2.resource(), show_image=v2.show
    )
    site = GlanceSite(
        root.resource(),
        upload_routes=v1.uploads.bound(v1, V1_PREFIXES) + v2.uploads.bound(v2, V2_PREFIXES),
        max_header_line=max_header_line,
        reactor=reactor,
        client_limits=client_limits,
    )
    site.displayTracebacks = False
    site.importer = importer
    return site
