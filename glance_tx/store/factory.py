"""
How a store is built from its config section: one factory per store type.

A factory takes the store's L{StoreConfig} (its section, with Glance's
option names) and the L{StoreServices} the service owns, checks the
options (raising L{glance_tx.config.ConfigError} naming the bad one), does
any set-up I/O through the services, and fires with the L{IStore}. The
factories are registered by type in L{glance_tx.store.backends}.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from attrs import frozen
from treq.client import HTTPClient
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS

from glance_tx.config import StoreConfig
from glance_tx.store.interface import IStore
from glance_tx.threads import BlockingRunner

__all__ = ["StoreFactory", "StoreServices", "store_http_client"]


@frozen
class StoreServices:
    """
    What a store may use, handed to every factory, so that no store
    imports the reactor or makes a thread pool or connection pool of its
    own.

    @ivar runner: Where blocking calls (files, hashing) run.
    @ivar reactor: The reactor, for timeouts (C{IReactorTime}) and name
        resolution; only L{glance_tx.tap} passes the global one.
    @ivar http_client: The treq client a network store sends its requests
        through.
    @ivar data_dir: The service's data directory, under which a store may
        put data by default.
    """

    runner: BlockingRunner
    reactor: Any
    http_client: HTTPClient
    data_dir: str

    def http_client_for(self, tls_policy: IPolicyForHTTPS | None) -> HTTPClient:
        """
        The shared client, or, for a store with TLS options of its own
        (L{glance_tx.store.tls}), a client of its own that trusts what
        C{tls_policy} says.
        """
        if tls_policy is None:
            return self.http_client
        return store_http_client(self.reactor, tls_policy)


def store_http_client(reactor: Any, tls_policy: IPolicyForHTTPS | None = None) -> HTTPClient:
    """
    A client for stores' requests. Connections are not kept: a store's
    requests carry megabytes each, so a new connection costs little, and
    none is left open at shutdown.
    """
    return HTTPClient(
        Agent(
            reactor,
            contextFactory=tls_policy or BrowserLikePolicyForHTTPS(),
            pool=HTTPConnectionPool(reactor, persistent=False),
        )
    )


class StoreFactory(Protocol):
    """Builds one store from its config section."""

    def __call__(
        self, config: StoreConfig, services: StoreServices
    ) -> Awaitable[IStore]:
        """Check C{config}'s options, set the store up, fire with it."""
