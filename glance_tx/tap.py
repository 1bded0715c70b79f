"""
``twistd glance``: options and the service tree.

    ServiceChain            (glance_tx.services: each child starts once the
     |                      one before is ready; stops in reverse order)
     |- threads             the thread pool: database, file, hashing work
     |- registry            opens the SQL registry, running migrations (or,
     |                      with registry_url, a client of glance-registry)
     |- node                claims node_id for this process (refusing to
     |                      start if another live process holds it)
     |- stores              builds the enabled stores
     |- recovery            reclaims uploads of nodes that are gone, at
     |                      start and every upload_lease_seconds (unless
     |                      recover_on_start is false)
     |- leases              this node's upload leases, renewed on a timer
     |- identity            who is asking (auth_strategy): the headers, or
     |                      Keystone's token validation with its connections
     |- scrubber            delayed delete's scrubber, every wakeup_time
     |- policy              Glance's rules over [oslo_policy] policy_file,
     |                      reread on the pool when the file changes
     |- limits              each project's limits: [project_limits], or
     |                      Keystone's unified limits (use_keystone_limits)
     |- purger              with [cache] purge_urls only: PURGEs, through
     |                      a connection pool of its own; at stop, pending
     |                      purges get a few seconds to finish
     `- listener            the API's Site on the configured endpoint; at
                            stop, imports in flight get a few seconds, then
                            fail (the image queued again)

So the API listens only once the registry, the stores and recovery are
ready; at stop it stops listening first, then purges finish, the registry
is closed, and the pool stops last. With a purger, the registry the API sees
is a L{glance_tx.registry.purging.PurgingRegistry} over the SQL one.

With C{--workers N} (N > 1) the tree is instead one
L{glance_tx.workers.Supervisor}, which runs N processes of the tree above
(each given C{--worker-fd}: its listener adopts its socket from the
supervisor).

A start that fails is logged and stops the reactor. This is the only module
that touches the global reactor.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, cast

from attrs import evolve
from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Site

from glance_tx import malloc
from glance_tx.config import Config, ConfigError, load_config
from glance_tx.log_buffer import twistd_observer
from glance_tx.services import (
    IdentityService,
    LeasesService,
    LimitsService,
    ListenerService,
    NodeClaimService,
    PolicyService,
    PurgerService,
    RecoveryService,
    ServiceChain,
    StoresService,
    ThreadPoolService,
    registry_service,
    scrubber_service,
    stop_reactor_on_failure,
)
from glance_tx.store.interface import IStore
from glance_tx.threads import BlockingRunner, nicer_threads
from glance_tx.workers import (
    STOP_SECONDS,
    Supervisor,
    announce_ready,
    check_worker_endpoint,
    worker_argv,
    worker_endpoint,
)

if TYPE_CHECKING:
    from glance_tx.formats.conversion import Converter

log = Logger()

#: Seconds an import still running at stop gets to end before it is
#: cancelled (and the image returned to queued).
IMPORT_DRAIN_SECONDS = 10.0


class Options(usage.Options):
    """Command-line options; each overrides the INI file's setting."""

    synopsis = "[options]"
    longdesc = (
        "Serve the OpenStack Images API (v1 and v2) with image data streamed to and "
        "from the configured stores. With no options: 127.0.0.1:9292, SQLite "
        "and the filesystem store under ./glance-data."
    )
    optParameters = [
        ["port", "p", None, "Endpoint to listen on, e.g. tcp:9292:interface=0.0.0.0 "
         "[default: tcp:9292:interface=127.0.0.1, or bind_host/bind_port from the config]"],
        ["data-dir", "d", None, "Directory for the SQLite database and the filesystem "
         "store [default: ./glance-data]"],
        ["config", "c", None, "INI configuration file (Glance option names)"],
        ["workers", "w", "1", "Reactor processes serving on one port, each on its "
         "own SO_REUSEPORT socket (tcp:, tcp6: or ssl: endpoints); SIGHUP restarts "
         "them one at a time [default: 1]"],
        # Given by the supervisor to its workers (glance_tx.workers), not by hand.
        ["worker-fd", None, None, "(internal) adopt the listening socket on this descriptor"],
        ["ready-fd", None, None, "(internal) write this worker's pid here once serving"],
        ["worker-index", None, None, "(internal) this worker's number"],
    ]

    def postOptions(self) -> None:
        try:
            self.config: Config = load_config(
                self["config"], endpoint=self["port"], data_dir=self["data-dir"]
            )
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        for name in ("workers", "worker-fd", "ready-fd", "worker-index"):
            value = self[name]
            if value is None:
                continue
            try:
                self[name] = int(value)
            except ValueError:
                raise usage.UsageError(f"--{name} must be a whole number, not {value!r}") from None
        if self["workers"] < 1:
            raise usage.UsageError("--workers must be at least 1")
        if self["workers"] > 1 and self["worker-fd"] is None:
            try:
                check_worker_endpoint(self.config.endpoint)
            except ValueError as e:
                raise usage.UsageError(str(e)) from None


def glance_service(
    config: Config,
    reactor: Any,
    threads: ThreadPoolService,
    runner: BlockingRunner | None = None,
    endpoint: IStreamServerEndpoint | None = None,
    log_suffix: str = "",
) -> ServiceChain:
    """
    The service tree of one API node (see the module docstring). Blocking
    work runs on C{runner}, by default the pool's; tests pass a
    L{glance_tx.threads.SynchronousRunner}. The API listens on C{endpoint},
    by default the configured one (a worker's is the socket its supervisor
    made); C{log_suffix} ends each request's log line.
    """
    registry_runner = threads.registry_runner if runner is None else runner
    if runner is None:
        runner = threads.runner
    registry = registry_service(config, reactor, registry_runner)
    stores = StoresService(config, runner, reactor)
    purger = PurgerService(reactor, config.cache) if config.cache.purge_urls else None
    identity = IdentityService(reactor, config, runner)
    policy = PolicyService(reactor, config.policy_file, runner)
    limits = LimitsService(reactor, config, runner)
    leases = LeasesService(
        registry, reactor, config.node_id, config.upload_lease_seconds
    )

    async def site() -> Site:
        from glance_tx.api.app import build_site
        from glance_tx.registry.purging import PurgingRegistry

        api_registry = await registry.when_ready()
        if purger is not None:
            api_registry = PurgingRegistry(
                api_registry, await purger.when_ready(), clock=reactor
            )
        built = build_site(
            registry=api_registry,
            stores=await stores.when_ready(),
            runner=runner,
            image_size_cap=config.image_size_cap,
            default_project=config.default_project,
            reactor=reactor,
            cache=config.cache,
            image_format=config.image_format,
            leases=await leases.when_ready(),
            show_multiple_locations=config.show_multiple_locations,
            show_image_direct_url=config.show_image_direct_url,
            max_header_line=config.max_header_line,
            quotas=config.quotas,
            identity=await identity.when_ready(),
            delayed_delete=config.delayed_delete,
            hashing_algorithm=config.hashing_algorithm,
            policy=await policy.when_ready(),
            limit_source=await limits.when_ready(),
            client_limits=config.clients,
            max_concurrent_uploads=config.max_concurrent_uploads,
            upload_buffer_budget=config.upload_buffer_budget,
            import_methods=config.enabled_import_methods,
            web_download=await web_download(),
            converter=await converter(),
            task_time_to_live=config.task_time_to_live,
            healthcheck_probe_interval=config.healthcheck_probe_interval,
        )
        built.log_suffix = log_suffix
        sites.append(built)
        return built

    #: The site once built (for the drain at stop).
    sites: list[Any] = []

    async def drain_imports() -> None:
        """At stop, imports in flight get IMPORT_DRAIN_SECONDS, then fail."""
        for built in sites:
            await built.importer.stop(reactor, IMPORT_DRAIN_SECONDS)

    async def converter() -> Converter | None:
        """With [image_conversion] output_format: the converter, work dir emptied."""
        from glance_tx.formats.conversion import Converter
        from glance_tx.store.filesystem import FilesystemStore

        options = config.image_conversion
        if options.output_format is None:
            return None
        made = Converter(
            reactor=reactor,
            work=FilesystemStore(
                options.work_dir or os.path.join(config.data_dir, "conversion"), runner
            ),
            output_format=options.output_format,
            timeout=options.timeout,
            memory_limit=options.memory_limit,
            size_limit=config.image_size_cap,
        )
        await made.clean()
        return made

    async def web_download() -> IStore | None:
        """The HTTP store if enabled, else one from [import_filtering_opts]."""
        from glance_tx.store.http import HTTPStore, load_http_store

        enabled = await stores.when_ready()
        if any(isinstance(s, HTTPStore) for s in enabled.stores.values()):
            return None  # build_site takes it
        return await load_http_store(
            "[import_filtering_opts]", config.import_filtering, runner, reactor
        )

    children: dict[str, IService] = {
        "threads": threads,
        "registry": registry,
        "node": NodeClaimService(
            registry, reactor, config.node_id, config.upload_lease_seconds
        ),
        "stores": stores,
        "recovery": RecoveryService(
            registry,
            stores,
            reactor,
            config.node_id,
            config.upload_lease_seconds,
            enabled=config.recover_on_start,
            task_time_to_live=config.task_time_to_live,
        ),
        "leases": leases,
        "identity": identity,
        "scrubber": scrubber_service(
            registry, stores, reactor, config.scrub_time, config.wakeup_time
        ),
        "policy": policy,
        "limits": limits,
    }
    if purger is not None:
        children["purger"] = purger
    if endpoint is None:
        endpoint = serverFromString(reactor, config.endpoint)
    children["listener"] = ListenerService(
        endpoint, site, "glance-tx", drain=drain_imports, freeze_heap=True
    )
    return ServiceChain.of(children)


def worker_stop_seconds(config: Config) -> float | None:
    """
    How long the supervisor lets a stopping worker take: its requests'
    graceful_shutdown_timeout and its imports' drain, plus STOP_SECONDS
    for the rest of its services (None: no limit, as the timeout's 0).
    """
    grace = config.clients.graceful_shutdown_timeout
    return None if grace is None else grace + IMPORT_DRAIN_SECONDS + STOP_SECONDS


def makeService(options: Options) -> IService:
    from twisted.internet import reactor as global_reactor

    reactor = cast(Any, global_reactor)
    config: Config = options.config
    if options["workers"] > 1 and options["worker-fd"] is None:
        supervisor = ServiceChain.of(
            {
                "supervisor": Supervisor(
                    reactor,
                    config.endpoint,
                    options["workers"],
                    worker_argv(options),
                    stop_seconds=worker_stop_seconds(config),
                )
            }
        )
        stop_reactor_on_failure(supervisor, reactor, "glance-tx supervisor")
        return supervisor
    endpoint = None
    log_suffix = ""
    if options["worker-fd"] is not None:
        index = options["worker-index"] or 0
        config = evolve(config, node_id=f"{config.node_id}-w{index}")
        endpoint = worker_endpoint(reactor, options["worker-fd"], config.endpoint)
        log_suffix = f" worker {index} pid {os.getpid()}"
    # Before the pool's threads allocate: see glance_tx.malloc.
    malloc.limit_arenas()
    malloc.tune_thresholds()
    pool = ThreadPool(minthreads=2, maxthreads=config.thread_pool_size, name="glance-tx")
    pool.threadFactory = nicer_threads(config.thread_pool_nice)
    registry_pool = ThreadPool(
        minthreads=1, maxthreads=config.registry_thread_pool_size, name="glance-tx-registry"
    )
    top = glance_service(
        config,
        reactor,
        ThreadPoolService(reactor, pool, registry_pool),
        endpoint=endpoint,
        log_suffix=log_suffix,
    )
    stop_reactor_on_failure(top, reactor, "glance-tx")
    top.log_observer = twistd_observer(getattr(options, "parent", None), reactor)
    ready_fd = options["ready-fd"]
    if ready_fd is not None:
        top.when_ready().addCallback(lambda _: announce_ready(ready_fd))
    return top
