"""
The parts of a node, each a Twisted service, and the chain that runs them.

A twistd plugin's C{makeService} builds a L{ServiceChain} of these, in the
order they depend on each other (``twistd glance``: threads, registry,
node, stores, recovery, leases, identity, scrubber, purger, listener; a
registry server can take threads, registry and listener).

The ready protocol, which Twisted's L{MultiService} does not have (it
starts every child at once and does not wait for a start that takes time):

  - A L{ReadyService} starts with a coroutine, L{ReadyService.start}, which
    returns what the service makes (the runner, the registry, the stores,
    the listening port). L{ReadyService.when_ready} gives a Deferred of
    it, or of the start's failure: it may be asked before the service
    starts, and as often as wanted. This is how one service hands another
    what it made: the later one is given the earlier one and awaits its
    C{when_ready()}.
  - A L{ServiceChain} starts its children one at a time, each once the one
    before it is ready, and stops them in reverse order, each once the one
    after it has stopped. A child that fails to start ends the start: the
    children after it are not started, and the chain's own C{when_ready()}
    fails with that failure. A stop asked during the start waits for the
    child starting then and stops only what was started.

Nothing here imports the global reactor: it is passed in.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar, cast

from attrs import define, field
from sqlalchemy.engine import make_url
from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IReactorFromThreads,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from glance_tx.api.site import IGracefulFactory
from glance_tx.config import CacheConfig, Config
from glance_tx.identity.headers import HeaderIdentity
from glance_tx.identity.interface import IIdentityResolver
from glance_tx.leases import UploadLeases
from glance_tx.node_claim import NodeClaim
from glance_tx.once import Once
from glance_tx.policy import Policy, PolicyFile
from glance_tx.project_limits import FixedLimits, ILimitSource
from glance_tx.purge import Purger
from glance_tx.recovery import Reclaimer
from glance_tx.registry.interface import IRegistry
from glance_tx.registry.sql import SQLRegistry, open_sql_registry
from glance_tx.scrubber import Scrubber
from glance_tx.store.backends import StoreMap, build_store_map
from glance_tx.task_log import TaskLog
from glance_tx.tasks import DEFAULT_TIME_TO_LIVE_HOURS
from glance_tx.threads import BlockingRunner, ThreadPoolRunner

log = Logger()
T = TypeVar("T")


class Ready(Protocol[T]):
    """Something that will have made a C{T}: a L{ReadyService}, or a fake."""

    def when_ready(self) -> Deferred[T]:
        """Fires with the C{T} once made, or fails as making it did."""


@define(eq=False)
class ReadyService(Service, Generic[T]):
    """
    A service whose start takes time and makes something (see the module's
    ready protocol). Subclasses write L{start} and L{stop}.

    A failed start's failure goes to C{when_ready()}'s callers only (a
    L{ServiceChain} passes it on through its own).
    """

    _ready: Once[T] = field(factory=Once, init=False)
    _starting: Deferred[None] | None = field(default=None, init=False)

    async def start(self) -> T:
        """Start; return what this service makes."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Release what L{start} took, all of it or the part a failed start took."""

    def when_ready(self) -> Deferred[T]:
        return self._ready.observe()

    def startService(self) -> None:
        Service.startService(self)
        self._starting = Deferred.fromCoroutine(self.start()).addBoth(self._ready.fire)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_once_started())

    async def _stop_once_started(self) -> None:
        if self._starting is not None:
            await self._starting
        await self.stop()


@define(eq=False)
class ServiceChain(MultiService):
    """
    A L{MultiService} that starts its children in order, each once the one
    before is ready, and stops them in reverse, each once the next has
    stopped (see the module's ready protocol). Children that are not
    L{ReadyService}s count as ready once started. C{when_ready()} fires
    when every child is ready (or a stop has ended the start early), and
    fails as the first child that failed to start.
    """

    _ready: Once[None] = field(factory=Once, init=False)
    _starting: Deferred[None] | None = field(default=None, init=False)
    #: The log observer for twistd to use (L{glance_tx.log_buffer}), if
    #: not its own: set on the application this chain joins, where
    #: twistd's logger looks for one when it starts.
    log_observer: ILogObserver | None = field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        MultiService.__init__(self)

    def setServiceParent(self, parent: Any) -> None:
        if (
            self.log_observer is not None
            and isinstance(parent, Componentized)
            and parent.getComponent(ILogObserver) is None
        ):
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)

    @classmethod
    def of(cls, children: Mapping[str, IService]) -> ServiceChain:
        """A chain of C{children} in their order, each named by its key."""
        chain = cls()
        for name, child in children.items():
            child.setName(name)
            child.setServiceParent(chain)
        return chain

    def when_ready(self) -> Deferred[None]:
        return self._ready.observe()

    def startService(self) -> None:
        # Not MultiService.startService: it would start every child at once.
        Service.startService(self)
        self._starting = Deferred.fromCoroutine(self._start_in_order()).addBoth(
            self._ready.fire
        )

    async def _start_in_order(self) -> None:
        for child in list(self):
            if not self.running:
                return
            child.startService()
            if isinstance(child, ReadyService):
                await child.when_ready()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop_in_reverse())

    async def _stop_in_reverse(self) -> None:
        if self._starting is not None:
            await self._starting
        for child in reversed(list(self)):
            if not child.running:
                continue
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                # The rest must still stop: the thread pool last of all.
                log.failure("Could not stop {service}", service=child.name)


def stop_reactor_on_failure(top: ServiceChain, reactor: IReactorCore, label: str) -> None:
    """
    When C{top} fails to start, log why and stop the reactor (the process
    has nothing to serve).
    """

    def failed(failure: Failure) -> None:
        log.failure("{label} could not start", failure, label=label)
        if top.running:
            reactor.callWhenRunning(reactor.stop)

    top.when_ready().addErrback(failed)


@define(eq=False)
class ThreadPoolService(ReadyService[BlockingRunner]):
    """
    The thread pools that every blocking call runs on: started first,
    stopped last (closing the registry itself runs on them). Makes the
    L{runner} the other services take and the L{registry_runner} the
    registry takes; tests give them a L{glance_tx.threads.SynchronousRunner}
    instead.

    With a C{registry_pool}, the registry's database calls have threads of
    their own: on the one pool, a metadata GET's read queued behind every
    upload's hash and write batches and every download's reads (up to 342
    ms in the pool's queue with 50 downloads and 20 uploads in flight).
    Without one, the registry shares C{pool}.
    """

    reactor: IReactorFromThreads
    pool: ThreadPool
    registry_pool: ThreadPool | None = None
    runner: ThreadPoolRunner = field(init=False)
    registry_runner: ThreadPoolRunner = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.runner = ThreadPoolRunner(self.reactor, self.pool)
        self.registry_runner = (
            self.runner
            if self.registry_pool is None
            else ThreadPoolRunner(self.reactor, self.registry_pool)
        )

    async def start(self) -> BlockingRunner:
        self.pool.start()
        if self.registry_pool is not None:
            self.registry_pool.start()
        return self.runner

    async def stop(self) -> None:
        if self.registry_pool is not None:
            self.registry_pool.stop()
        self.pool.stop()


def _database_directory(url: str) -> str | None:
    """The directory a SQLite file database lives in (None for the rest)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return os.path.dirname(os.path.abspath(cast(str, parsed.database)))


#: How many pool threads at most run the SQLite registry's calls at once:
#: its calls queue and the threads that run them take the next ones (see
#: SerialPoolRunner), rather than each call waking a sleeping thread. A
#: SQLite call is tens of microseconds of work under the GIL; a few threads
#: still let a slow one (a write waiting for another process's lock) not
#: hold up the rest.
SQLITE_DRAINING_THREADS = 4


@define(eq=False)
class RegistryService(ReadyService[IRegistry]):
    """
    Opens the SQL registry at C{url} (creating a SQLite file's directory,
    running the migrations) and closes it at stop.
    """

    url: str
    runner: BlockingRunner
    #: Database connections to keep open: the runner's thread count, so
    #: that every thread that can be in a transaction at once finds one
    #: pooled. With SQLAlchemy's default of 5 for 16 threads, wrk's 8
    #: concurrent GETs made the registry open and close a PostgreSQL
    #: connection on most requests: 11% of its CPU in a py-spy profile.
    connections: int | None = None
    #: Metadata definition files loaded once migrated (C{load_metadefs}),
    #: or None; the directory, or C{""} for the ones glance-tx ships.
    metadefs_path: str | None = None
    #: Reads a SQLite file's change events (see L{open_sql_registry}).
    reactor: Any = None
    registry: SQLRegistry | None = field(default=None, init=False)

    async def start(self) -> IRegistry:
        directory = _database_directory(self.url)
        if directory is not None:
            await self.runner.run(os.makedirs, directory, exist_ok=True)
        options = {} if self.connections is None else {"pool_size": self.connections}
        runner = self.runner
        if isinstance(runner, ThreadPoolRunner) and self.url.startswith("sqlite"):
            runner = runner.draining(SQLITE_DRAINING_THREADS)
        self.registry = await open_sql_registry(
            self.url, runner, engine_options=options, reactor=self.reactor
        )
        if self.metadefs_path is not None:
            from glance_tx.metadefs.load import SHIPPED, load_definitions

            report = await load_definitions(
                self.registry, self.runner, self.metadefs_path or SHIPPED
            )
            log.info(
                "Metadata definitions: {loaded} namespaces loaded, {skipped} already there",
                loaded=len(report.loaded),
                skipped=len(report.skipped),
            )
        return self.registry

    async def stop(self) -> None:
        if self.registry is not None:
            registry, self.registry = self.registry, None
            await registry.close()


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@define(eq=False)
class HTTPRegistryService(ReadyService[IRegistry]):
    """
    The registry of C{registry_url}: an HTTP client of a glance-registry
    server (L{glance_tx.registry.client}), its connections closed at stop.
    It does not wait for the registry to answer: a node whose registry is
    down starts, answers 503 and recovers by itself once it is back.
    """

    reactor: Any
    config: Config
    runner: BlockingRunner
    registry: Any = field(default=None, init=False)

    async def start(self) -> IRegistry:
        from glance_tx.registry.client import open_http_registry

        config = self.config
        assert config.registry_url is not None
        ca = None
        if config.registry_client_ca_file is not None:
            ca = await self.runner.run(_read_bytes, config.registry_client_ca_file)
        self.registry = open_http_registry(
            self.reactor,
            config.registry_url,
            token=config.registry_token,
            timeout=config.registry_client_timeout,
            retries=config.registry_client_retries,
            ca_certificate=ca,
            pool_maxsize=config.registry_client_pool_maxsize,
            pool_unused_timeout=config.registry_client_pool_unused_timeout,
        )
        return cast(IRegistry, self.registry)

    async def stop(self) -> None:
        if self.registry is not None:
            registry, self.registry = self.registry, None
            await registry.close()


def registry_service(config: Config, reactor: Any, runner: BlockingRunner) -> ReadyService[IRegistry]:
    """
    The registry a node uses: a client of C{registry_url} when set, else
    the SQL registry of C{sql_connection}.
    """
    if config.registry_url is not None:
        return HTTPRegistryService(reactor, config, runner)
    # Connections for every thread that can run a registry call: the
    # registry's own pool on an API node, the one pool on a registry server.
    connections = max(config.thread_pool_size, config.registry_thread_pool_size)
    return RegistryService(
        config.sql_connection, runner, connections, metadefs_path(config), reactor
    )


def metadefs_path(config: Config) -> str | None:
    """What L{RegistryService} loads at start: None unless C{load_metadefs}."""
    if not config.load_metadefs:
        return None
    return config.metadata_source_path or ""


@define(eq=False)
class StoresService(ReadyService[StoreMap]):
    """Makes every enabled store (L{build_store_map})."""

    config: Config
    runner: BlockingRunner
    #: The reactor: remote stores' HTTP connections and timeouts.
    reactor: Any

    async def start(self) -> StoreMap:
        return await build_store_map(self.config, self.runner, self.reactor)


@define(eq=False)
class LeasesService(ReadyService[UploadLeases]):
    """
    This node's L{UploadLeases} on the registry, renewed on C{clock} while
    the service runs.
    """

    registry: Ready[IRegistry]
    clock: IReactorTime
    node_id: str
    seconds: float
    leases: UploadLeases | None = field(default=None, init=False)

    async def start(self) -> UploadLeases:
        self.leases = UploadLeases(
            await self.registry.when_ready(), self.clock, self.node_id, self.seconds
        )
        self.leases.start()
        return self.leases

    async def stop(self) -> None:
        if self.leases is not None:
            self.leases.stop()


@define(eq=False)
class NodeClaimService(ReadyService[NodeClaim]):
    """
    This process's claim on its C{node_id} (L{glance_tx.node_claim}): taken
    before anything acts as that node, so a second live process with the
    same id fails to start (L{NodeIdInUse}); renewed while the service
    runs, released when it stops.
    """

    registry: Ready[IRegistry]
    clock: IReactorTime
    node_id: str
    seconds: float
    claim: NodeClaim | None = field(default=None, init=False)

    async def start(self) -> NodeClaim:
        claim = self.claim = NodeClaim(
            await self.registry.when_ready(), self.clock, self.node_id, self.seconds
        )
        await claim.take()
        claim.start()
        return claim

    def stopService(self) -> Deferred[None]:
        # A start waiting out another claim ends now, not when it expires.
        if self.claim is not None:
            self.claim.give_up()
        return super().stopService()

    async def stop(self) -> None:
        if self.claim is not None:
            await self.claim.stop()


@define(eq=False)
class RecoveryService(ReadyService[None]):
    """
    Crash recovery (L{glance_tx.recovery}): a first round at start (ready
    once it is done), then one every C{period} seconds on C{clock}. With
    C{enabled} false (C{recover_on_start}), it only says it skipped.
    """

    registry: Ready[IRegistry]
    stores: Ready[StoreMap]
    clock: IReactorTime
    node_id: str
    period: float
    enabled: bool = True
    #: Glance's C{task_time_to_live} (hours), for the tasks of reclaimed
    #: imports.
    task_time_to_live: float = DEFAULT_TIME_TO_LIVE_HOURS
    reclaimer: Reclaimer | None = field(default=None, init=False)

    async def start(self) -> None:
        if not self.enabled:
            log.info("Recovery skipped: recover_on_start is false")
            return
        registry = await self.registry.when_ready()
        self.reclaimer = Reclaimer(
            registry,
            await self.stores.when_ready(),
            self.clock,
            self.node_id,
            self.period,
            tasks=TaskLog(registry, self.task_time_to_live),
        )
        await self.reclaimer.start()

    async def stop(self) -> None:
        if self.reclaimer is not None:
            self.reclaimer.stop()


def scrubber_service(
    registry: Ready[IRegistry],
    stores: Ready[StoreMap],
    clock: IReactorTime,
    scrub_time: float,
    wakeup_time: float,
) -> TimerService:
    """
    The scrubber of delayed delete (L{glance_tx.scrubber}): a round at
    start and every C{wakeup_time} seconds on C{clock}. At stop, a round
    in progress is waited for.
    """

    async def scrub() -> None:
        scrubber = Scrubber(await registry.when_ready(), await stores.when_ready(), scrub_time)
        await scrubber.scrub()

    service = TimerService(wakeup_time, lambda: Deferred.fromCoroutine(scrub()))
    service.clock = clock
    return service


@define(eq=False)
class PurgerService(ReadyService[Purger]):
    """
    The L{Purger} of C{[cache] purge_urls}, with a connection pool of its
    own. At stop, purges still pending may go on (retries included) for
    C{grace} seconds, then the pool's connections are closed.
    """

    #: The reactor: the clock of the purger and of its HTTP connections.
    reactor: Any
    cache: CacheConfig
    grace: float = 5.0
    purger: Purger | None = field(default=None, init=False)
    _http_pool: Any = field(default=None, init=False)

    async def start(self) -> Purger:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        self._http_pool = pool = HTTPConnectionPool(self.reactor)
        # Reuse connections within a burst of PURGEs (nine per proxy per
        # image), but drop them before the proxy would (Varnish closes idle
        # ones after 5 s): a PURGE is not retried on a stale connection by
        # the pool, so it would fail and be logged before our own retry.
        pool.maxPersistentPerHost = 4
        pool.cachedConnectionTimeout = 2
        self.purger = Purger(
            client=HTTPClient(Agent(self.reactor, pool=pool)),
            clock=self.reactor,
            proxies=self.cache.purge_urls,
            attempts=self.cache.purge_attempts,
            repeat_delay=self.cache.purge_repeat_delay,
        )
        return self.purger

    async def stop(self) -> None:
        if self.purger is not None:
            await self.purger.stop(self.grace)
        if self._http_pool is not None:
            await self._http_pool.closeCachedConnections()


async def keystone_http(
    reactor: Any,
    runner: BlockingRunner,
    *,
    cafile: str | None,
    insecure: bool,
    timeout: float,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> tuple[Any, Any]:
    """
    A treq client for Keystone and its connection pool (close it at stop):
    the one agent recipe of internal peers, trusting C{cafile} (read on
    C{runner}) or, with C{insecure}, checking no certificate; presenting
    C{certfile} (its key in C{keyfile} or the same file) when asked.
    """
    from treq.client import HTTPClient

    from glance_tx.registry.client import registry_http_client
    from glance_tx.store.tls import KEYSTONE_TLS, load_tls_policy

    policy = await load_tls_policy(
        {
            "cafile": cafile or "",
            "insecure": "true" if insecure else "false",
            "certfile": certfile or "",
            "keyfile": keyfile or "",
        },
        KEYSTONE_TLS,
        runner,
    )
    agent, pool = registry_http_client(reactor, connect_timeout=timeout, tls_policy=policy)
    return HTTPClient(agent), pool


@define(eq=False)
class IdentityService(ReadyService[IIdentityResolver]):
    """
    Who is asking, as C{config}'s C{auth_strategy} says: for keystone, a
    L{glance_tx.identity.keystone.KeystoneIdentity} with a connection pool
    of its own (closed at stop) that trusts C{[keystone_authtoken] cafile}
    when set; for noauth, the headers with C{default_project}.
    """

    reactor: Any
    config: Config
    runner: BlockingRunner
    _http_pool: Any = field(default=None, init=False)

    async def start(self) -> IIdentityResolver:
        keystone = self.config.keystone
        if self.config.auth_strategy != "keystone" or keystone is None:
            return HeaderIdentity(self.config.default_project)
        from glance_tx.identity.keystone import keystone_identity

        http, self._http_pool = await keystone_http(
            self.reactor,
            self.runner,
            cafile=keystone.cafile,
            insecure=keystone.insecure,
            timeout=keystone.http_connect_timeout,
            certfile=keystone.certfile,
            keyfile=keystone.keyfile,
        )
        return keystone_identity(self.reactor, keystone, http)

    async def stop(self) -> None:
        if self._http_pool is not None:
            pool, self._http_pool = self._http_pool, None
            await pool.closeCachedConnections()


@define(eq=False)
class LimitsService(ReadyService[ILimitSource]):
    """
    Where each project's limits come from: C{[project_limits]}, or with
    C{use_keystone_limits}, Keystone's unified limits as C{[oslo_limit]}
    says (L{glance_tx.keystone_limits}), through a connection pool of its
    own (closed at stop). Keystone is first asked at the first check, so a
    node starts while Keystone is down.
    """

    reactor: Any
    config: Config
    runner: BlockingRunner
    _http_pool: Any = field(default=None, init=False)

    async def start(self) -> ILimitSource:
        limits = self.config.keystone_limits
        if limits is None:
            return FixedLimits(self.config.project_limits)
        from glance_tx.identity.keystone_client import KeystoneClient
        from glance_tx.keystone_limits import KeystoneLimits

        http, self._http_pool = await keystone_http(
            self.reactor,
            self.runner,
            cafile=limits.cafile,
            insecure=limits.insecure,
            timeout=limits.timeout,
            certfile=limits.certfile,
            keyfile=limits.keyfile,
        )
        client = KeystoneClient(
            http=http,
            clock=self.reactor,
            auth_url=limits.auth_url,
            credentials=limits.credentials,
            timeout=limits.timeout,
            section="oslo_limit",
        )
        return KeystoneLimits(client=client, clock=self.reactor, config=limits)

    async def stop(self) -> None:
        if self._http_pool is not None:
            pool, self._http_pool = self._http_pool, None
            await pool.closeCachedConnections()


#: Seconds between looks at the policy file's mtime (a stat on the pool;
#: oslo.policy itself stats on every enforcement, on the caller's thread).
POLICY_CHECK_SECONDS = 5.0


@define(eq=False)
class PolicyService(ReadyService[Policy]):
    """
    The rules in force: Glance's defaults over which C{[oslo_policy]
    policy_file} is read at start (a file that does not parse fails the
    start) and reread on the pool when it changes; a change that does not
    parse is logged and the rules stay as they were.
    """

    reactor: IReactorTime
    policy_file: str | None
    runner: BlockingRunner
    _file: PolicyFile | None = field(default=None, init=False)
    _loop: Any = field(default=None, init=False)

    async def start(self) -> Policy:
        from twisted.internet.task import LoopingCall

        self._file = PolicyFile(self.policy_file, self.runner)
        await self._file.refresh()
        if self.policy_file is not None:
            self._loop = LoopingCall(lambda: Deferred.fromCoroutine(self._refresh()))
            self._loop.clock = self.reactor
            self._loop.start(POLICY_CHECK_SECONDS, now=False)
        return self._file.policy

    async def _refresh(self) -> None:
        assert self._file is not None
        try:
            if await self._file.refresh():
                log.info("Reloaded policy file {path}", path=self.policy_file)
        except Exception:
            log.failure("Policy file {path} not reloaded", path=self.policy_file)

    async def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()


@define(eq=False)
class ListenerService(ReadyService[IListeningPort]):
    """
    Listens on C{endpoint} with the factory C{factory} makes once awaited
    (so it can wait for what the site needs), and logs "C{label} serving
    on ADDRESS". At stop it stops listening; a factory that provides
    L{IGracefulFactory} then ends its connections without cutting the
    requests in flight (for at most its C{graceful_shutdown_timeout});
    then C{drain} is awaited.
    """

    endpoint: IStreamServerEndpoint
    factory: Callable[[], Awaitable[IProtocolFactory]]
    label: str
    #: Run at stop once no longer listening: what the site still does in
    #: the background (imports) gets to end.
    drain: Callable[[], Awaitable[None]] | None = None
    #: Before listening, move every object the process holds (its modules,
    #: the site, the registry's statements) out of the cyclic collector's
    #: sight (C{gc.freeze}): each full collection walked them all, and
    #: that was 18% of the reactor thread's GIL time under a load of image
    #: GETs (py-spy --native). A server process's choice, not a test's.
    freeze_heap: bool = False
    port: IListeningPort | None = field(default=None, init=False)
    _serving: IProtocolFactory | None = field(default=None, init=False)

    async def start(self) -> IListeningPort:
        self._serving = factory = await self.factory()
        if self.freeze_heap:
            gc.collect()  # what is garbage now is not kept for ever
            gc.freeze()
        self.port = port = await self.endpoint.listen(factory)
        log.info("{label} serving on {address}", label=self.label, address=port.getHost())
        return port

    async def stop(self) -> None:
        if self.port is not None:
            port, self.port = self.port, None
            await maybeDeferred(port.stopListening)
        factory, self._serving = self._serving, None
        if IGracefulFactory.providedBy(factory):
            await IGracefulFactory(factory).close_connections()
        if self.drain is not None:
            await self.drain()
