"""
``twistd glance``: options and the service tree.

    MultiService
     `- GlanceService   starts its thread pool (database, file and hashing
                        work), opens the registry (running migrations),
                        builds the stores, recovers from a crash, then
                        listens; on stop, stops listening, closes the
                        registry, and only then stops the pool

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
        from glance_tx.registry.sql import open_sql_registry

        os.makedirs(self.config.data_dir, exist_ok=True)
        self._registry = registry = await open_sql_registry(
            self.config.sql_connection, self.runner
        )
        stores = await build_store_map(self.config, self.runner)
        await recover(registry, stores)
        site = build_site(
            registry=registry,
            stores=stores,
            runner=self.runner,
            image_size_cap=self.config.image_size_cap,
            default_project=self.config.default_project,
            reactor=self.reactor,
        )
        endpoint = serverFromString(self.reactor, self.config.endpoint)
        self._port = await endpoint.listen(site)
        log.info("glance-tx serving on {address}", address=self._port.getHost())

    def _failed(self, failure: Any) -> None:
        log.failure("glance-tx could not start", failure)
        if self.reactor.running:
            self.reactor.stop()

    async def _stop(self) -> None:
        try:
            if self._port is not None:
                await cast("Deferred[None]", self._port.stopListening())
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
