"""
``twistd glance``: options and the service tree.

    MultiService
     `- GlanceService   starts its thread pool (database, file and hashing
                        work), opens the registry (running migrations),
                        builds the stores, recovers from a crash (unless
                        recover_on_start is false), then listens; on
                        stop, stops listening, lets pending proxy purges
                        finish (a few seconds at most), closes the
                        registry, and only then stops the pool

With ``[cache] purge_urls`` set, the registry the API sees is a
L{glance_tx.registry.purging.PurgingRegistry} whose L{glance_tx.purge.Purger}
sends PURGE requests through a treq client with its own connection pool.

This is the only module that touches the global reactor.
"""

from __future__ import annotations

import os
from typing import Any, cast

from attrs import define, field
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from glance_tx.config import Config, ConfigError, load_config
from glance_tx.purge import Purger
from glance_tx.store.backends import build_store_map
from glance_tx.threads import ThreadPoolRunner

log = Logger()


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
    ]

    def postOptions(self) -> None:
        try:
            self.config: Config = load_config(
                self["config"], endpoint=self["port"], data_dir=self["data-dir"]
            )
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


@define
class GlanceService(Service):
    """Brings the API up once the registry and stores are ready."""

    config: Config
    reactor: Any
    pool: ThreadPool
    runner: ThreadPoolRunner = field(init=False)
    _port: IListeningPort | None = field(default=None, init=False)
    _registry: Any = field(default=None, init=False)
    ready: Deferred[None] | None = field(default=None, init=False)
    #: How long pending purges may go on (retries included) at shutdown.
    purge_grace: float = 5.0
    purger: Purger | None = field(default=None, init=False)
    _http_pool: Any = field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self.runner = ThreadPoolRunner(self.reactor, self.pool)

    def startService(self) -> None:
        Service.startService(self)
        self.pool.start()
        self.ready = Deferred.fromCoroutine(self._start())
        self.ready.addErrback(self._failed)

    async def _start(self) -> None:
        from glance_tx.api.app import build_site
        from glance_tx.recovery import recover
        from glance_tx.registry.interface import IRegistry
        from glance_tx.registry.purging import PurgingRegistry
        from glance_tx.registry.sql import open_sql_registry

        os.makedirs(self.config.data_dir, exist_ok=True)
        self._registry = sql_registry = await open_sql_registry(
            self.config.sql_connection, self.runner
        )
        registry: IRegistry = sql_registry
        if self.config.cache.purge_urls:
            registry = PurgingRegistry(sql_registry, self._start_purger(), clock=self.reactor)
        stores = await build_store_map(self.config, self.runner, self.reactor)
        if self.config.recover_on_start:
            await recover(registry, stores)
        else:
            log.info("Start-up recovery skipped: recover_on_start is false")
        site = build_site(
            registry=registry,
            stores=stores,
            runner=self.runner,
            image_size_cap=self.config.image_size_cap,
            default_project=self.config.default_project,
            reactor=self.reactor,
            cache=self.config.cache,
        )
        endpoint = serverFromString(self.reactor, self.config.endpoint)
        self._port = await endpoint.listen(site)
        log.info("glance-tx serving on {address}", address=self._port.getHost())

    def _start_purger(self) -> Purger:
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
            proxies=self.config.cache.purge_urls,
            attempts=self.config.cache.purge_attempts,
            repeat_delay=self.config.cache.purge_repeat_delay,
        )
        return self.purger

    def _failed(self, failure: Any) -> None:
        log.failure("glance-tx could not start", failure)
        if self.reactor.running:
            self.reactor.stop()

    async def _stop(self) -> None:
        try:
            if self._port is not None:
                await cast("Deferred[None]", self._port.stopListening())
            if self.purger is not None:
                await self.purger.stop(self.purge_grace)
                await self._http_pool.closeCachedConnections()
            if self._registry is not None:
                await self._registry.close()
        finally:
            # Last: closing the registry itself runs on the pool.
            self.pool.stop()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    config: Config = options.config
    top = MultiService()
    pool = ThreadPool(minthreads=2, maxthreads=config.thread_pool_size, name="glance-tx")
    GlanceService(config, reactor, pool).setServiceParent(top)
    return top
