"""
``twistd glance-registry``: the Registry API (L{glance_tx.registry.server})
over the SQL registry, for API nodes that share one registry (see
doc/registry.rst).

    ServiceChain        (glance_tx.services)
     |- threads         the thread pool the database work runs on
     |- registry        opens the SQL registry, running migrations
     `- listener        the Registry API's Site on the configured endpoint

It listens on ``127.0.0.1:9191`` unless told otherwise (``--port``, or
``bind_host``/``bind_port`` in its configuration file) and requires
``registry_token`` from API nodes when its configuration sets one.

Like L{glance_tx.tap}, this entry point is where the global reactor is
taken; everything it builds is given it.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Site

from glance_tx.config import Config, ConfigError, load_config
from glance_tx.services import (
    ListenerService,
    RegistryService,
    ServiceChain,
    ThreadPoolService,
    metadefs_path,
    stop_reactor_on_failure,
)
from glance_tx.threads import BlockingRunner

log = Logger()

DEFAULT_REGISTRY_PORT = 9191


class Options(usage.Options):
    """Command-line options; each overrides the INI file's setting."""

    synopsis = "[options]"
    longdesc = (
        "Serve the glance-tx Registry API (the image records of several API "
        "nodes) over the SQL registry. With no options: 127.0.0.1:9191 and "
        "SQLite under ./glance-data."
    )
    optParameters = [
        [
            "port",
            "p",
            None,
            "Endpoint to listen on, e.g. tcp:9191:interface=10.0.0.5 "
            "[default: tcp:9191:interface=127.0.0.1, or bind_host/bind_port from the config]",
        ],
        [
            "data-dir",
            "d",
            None,
            "Directory for the SQLite database [default: ./glance-data]",
        ],
        [
            "config",
            "c",
            None,
            "INI configuration file (sql_connection, "
            "registry_token, bind_host, bind_port, thread_pool_size)",
        ],
    ]

    def postOptions(self) -> None:
        try:
            self.config: Config = load_config(
                self["config"],
                endpoint=self["port"],
                data_dir=self["data-dir"],
                default_port=DEFAULT_REGISTRY_PORT,
            )
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def registry_service(
    config: Config,
    reactor: Any,
    threads: ThreadPoolService,
    runner: BlockingRunner | None = None,
) -> ServiceChain:
    """
    The service tree of a registry server (see the module docstring).
    Blocking work runs on C{runner}, by default the pool's.
    """
    if runner is None:
        runner = threads.runner
    registry = RegistryService(
        config.sql_connection, runner, config.thread_pool_size, metadefs_path(config), reactor
    )

    async def site() -> Site:
        from glance_tx.registry.server import RegistryServer, registry_site

        server = RegistryServer(
            await registry.when_ready(), token=config.registry_token
        )
        if config.registry_token is None:
            log.warn(
                "glance-registry has no registry_token: whoever reaches its "
                "port may change every image record"
            )
        return registry_site(server, reactor, max_header_line=config.max_header_line)

    return ServiceChain.of(
        {
            "threads": threads,
            "registry": registry,
            "listener": ListenerService(
                serverFromString(reactor, config.endpoint), site, "glance-registry",
                freeze_heap=True,
            ),
        }
    )


def makeService(options: Options) -> IService:
    from twisted.internet import reactor as global_reactor

    reactor = cast(Any, global_reactor)
    config: Config = options.config
    pool = ThreadPool(
        minthreads=2, maxthreads=config.thread_pool_size, name="glance-registry"
    )
    top = registry_service(config, reactor, ThreadPoolService(reactor, pool))
    stop_reactor_on_failure(top, reactor, "glance-registry")
    return top
