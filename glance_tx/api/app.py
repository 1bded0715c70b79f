"""Assembles the HTTP site from a registry, stores and a runner."""

from __future__ import annotations

from typing import Any, cast

from glance_tx.api.channel import DEFAULT_MAX_HEADER_LINE
from glance_tx.api.root import V1_PREFIXES, V2_PREFIXES, RootAPI
from glance_tx.api.site import GlanceSite
from glance_tx.api.v1 import V1API
from glance_tx.api.v2 import V2API
from glance_tx.config import (
    HEALTHCHECK_PROBE_INTERVAL,
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
from glance_tx.metadefs.api import MetadefsAPI, MetadefsMount
from glance_tx.metadefs.interface import IMetadefRegistry
from glance_tx.policy import Policy
from glance_tx.project_limits import FixedLimits, ILimitSource, ProjectLimiter
from glance_tx.registry.interface import IRegistry
from glance_tx.registry.quotas import QuotaRegistry
from glance_tx.store.backends import StoreMap
from glance_tx.store.http import HTTPStore
from glance_tx.store.interface import IStore
from glance_tx.task_log import TaskLog
from glance_tx.tasks import DEFAULT_TIME_TO_LIVE_HOURS
from glance_tx.threads import BlockingRunner
from glance_tx.uploads import Uploader, UploadSlots, upload_budget


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
    limit_source: ILimitSource | None = None,
    client_limits: ClientLimits | None = None,
    max_concurrent_uploads: int | None = None,
    upload_buffer_budget: int | None = None,
    import_methods: tuple[str, ...] = IMPORT_METHODS,
    web_download: IStore | None = None,
    converter: Converter | None = None,
    metadefs: IMetadefRegistry | None = None,
    task_time_to_live: float = DEFAULT_TIME_TO_LIVE_HOURS,
    healthcheck_probe_interval: float = HEALTHCHECK_PROBE_INTERVAL,
) -> GlanceSite:
    """
    The API's site. Who is asking comes from C{identity}; without one, from
    the headers, with C{default_project} for requests that have none
    (C{auth_strategy = noauth}). What they may do is C{policy}'s to say
    (by default Glance's rules); v1 and v2 share it. web-download URLs are
    read by C{web_download}, by default the enabled HTTP store (its guard),
    if any. Metadata definitions are kept in C{metadefs}, by default the
    registry if it keeps them too. Each project's limits come from
    C{limit_source} (Keystone's unified limits), by default
    C{project_limits} for all. Tasks (imports', the tasks API's) expire C{task_time_to_live}
    hours after they end. The health check probes the registry and the
    stores at most once per C{healthcheck_probe_interval} seconds.
    """
    policy = policy or Policy()
    if metadefs is None and IMetadefRegistry.providedBy(registry):
        metadefs = cast(IMetadefRegistry, registry)
    cache = cache or CacheConfig()
    image_format = image_format or ImageFormatConfig()
    # Every change the APIs make passes the per-image quotas, and every
    # create and upload the per-project limits.
    limiter = ProjectLimiter(
        registry, limit_source or FixedLimits(project_limits or ProjectLimits())
    )
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
        image_format=image_format,
        limiter=limiter,
        slots=UploadSlots(max_concurrent_uploads),
        budget=upload_budget(upload_buffer_budget),
    )
    if web_download is None:
        web_download = next((s for s in stores.stores.values() if isinstance(s, HTTPStore)), None)
    tasks = TaskLog(registry, task_time_to_live)
    importer = Importer(
        registry=registry,
        stores=stores,
        uploader=uploader,
        web=web_download,
        methods=import_methods,
        converter=converter,
        tasks=tasks,
        leases=leases,
    )
    v1 = V1API(
        registry=registry,
        stores=stores,
        uploader=uploader,
        identity=identity,
        cache=cache,
        delayed_delete=delayed_delete,
        policy=policy,
        image_format=image_format,
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
        image_format=image_format,
        tasks=tasks,
    )
    v2_resource = v2.resource()
    if metadefs is not None:
        definitions = MetadefsAPI(registry=metadefs, identity=identity, policy=policy)
        v2_resource = MetadefsMount(v2_resource, definitions.resource())
    root = RootAPI(
        registry=registry, stores=stores, v1=v1.resource(), v2=v2_resource, clock=reactor,
        show_image=v2.show, list_images=v2.list_images,
        healthcheck_probe_interval=healthcheck_probe_interval,
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
    site.v2 = v2
    return site
