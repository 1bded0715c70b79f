"""
``twistd glance-scrubber``: delayed delete's scrubber on its own, as
Glance's ``glance-scrubber --daemon``, for a deployment that would rather
scrub from one process than from every API node (which scrub too; several
scrubbers at once do no harm, see L{glance_tx.scrubber}).

    ServiceChain        (glance_tx.services)
     |- threads         the thread pool: database and file work
     |- registry        the SQL registry (or, with registry_url, a client
     |                  of glance-registry)
     |- stores          the enabled stores, to delete data from
     `- scrubber        a round at start, then every wakeup_time

It reads the API nodes' configuration file (``scrub_time``, ``wakeup_time``,
the registry and the stores) and listens on nothing.

Like L{glance_tx.tap}, this entry point is where the global reactor is
taken; everything it builds is given it.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.application.service import IService
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from glance_tx.config import Config, ConfigError, load_config
from glance_tx.services import (
    ServiceChain,
    StoresService,
    ThreadPoolService,
    registry_service,
    scrubber_service,
    stop_reactor_on_failure,
)
from glance_tx.threads import BlockingRunner


class Options(usage.Options):
    """Command-line options; each overrides the INI file's setting."""

    synopsis = "[options]"
    longdesc = (
        "Remove the data of images pending delete (delayed_delete) once "
        "scrub_time has passed, every wakeup_time seconds."
    )
    optParameters = [
        ["data-dir", "d", None, "Directory of the SQLite database and the filesystem "
         "store [default: ./glance-data]"],
        ["config", "c", None, "INI configuration file (Glance option names)"],
    ]

    def postOptions(self) -> None:
        try:
            self.config: Config = load_config(self["config"], data_dir=self["data-dir"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def scrubber_chain(
    config: Config,
    reactor: Any,
    threads: ThreadPoolService,
    runner: BlockingRunner | None = None,
) -> ServiceChain:
    """
    The service tree of a scrubber (see the module docstring); blocking
    work on C{runner}, by default the pool's.
    """
    if runner is None:
        runner = threads.runner
    registry = registry_service(config, reactor, runner)
    stores = StoresService(config, runner, reactor)
    return ServiceChain.of(
        {
            "threads": threads,
            "registry": registry,
            "stores": stores,
            "scrubber": scrubber_service(
                registry, stores, reactor, config.scrub_time, config.wakeup_time
            ),
        }
    )


def makeService(options: Options) -> IService:
    from twisted.internet import reactor as global_reactor

    reactor = cast(Any, global_reactor)
    config: Config = options.config
    pool = ThreadPool(minthreads=1, maxthreads=4, name="glance-scrubber")
    top = scrubber_chain(config, reactor, ThreadPoolService(reactor, pool))
    stop_reactor_on_failure(top, reactor, "glance-scrubber")
    return top
