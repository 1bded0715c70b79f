"""
The enabled stores, by id and by the scheme of the locations they own,
and how they are built: one factory per store type (see
L{glance_tx.store.factory}), registered in L{STORE_FACTORIES}.

An upload goes to a named store (or the default one); a download or delete
goes to whichever store owns the image's location.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from attrs import field, frozen
from treq.client import HTTPClient

from glance_tx.config import Config, ConfigError, StoreConfig
from glance_tx.errors import BadRequest, StoreError
from glance_tx.images import Location, as_location
from glance_tx.store.factory import StoreFactory, StoreServices, store_http_client
from glance_tx.store.filesystem import make_filesystem_store
from glance_tx.store.http import make_http_store
from glance_tx.store.interface import IStore
from glance_tx.store.swift import make_swift_store
from glance_tx.threads import BlockingRunner

__all__ = ["STORE_FACTORIES", "StoreInfo", "StoreMap", "build_store_map"]

async def _make_s3_store(config: StoreConfig, services: StoreServices) -> IStore:
    """
    The S3 store's factory, imported when a deployment has an S3 store:
    its request signing is botocore's, whose import costs every other
    deployment 5 MiB of resident memory and 97 modules.
    """
    from glance_tx.store.s3 import make_s3_store

    return await make_s3_store(config, services)


#: The factory of each store type, as C{enabled_backends} names it.
STORE_FACTORIES: Mapping[str, StoreFactory] = {
    "file": make_filesystem_store,
    "http": make_http_store,
    "s3": _make_s3_store,
    "swift": make_swift_store,
}


def _frozen(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return dict(value)


@frozen
class StoreInfo:
    """One enabled store as C{/v2/info/stores} describes it."""

    id: str
    type: str
    description: str | None
    default: bool
    #: Serves data it did not store and takes no uploads (the HTTP store).
    read_only: bool = False


@frozen
class StoreMap:
    """
    The enabled stores by id, with the default one.

    @ivar types: Each store's type (C{file}, C{s3}, ...); a store missing
        here is described by its URI scheme.
    @ivar descriptions: Each store's C{store_description}, where it has one.
    """

    stores: Mapping[str, IStore] = field(converter=_frozen)
    default_id: str
    types: Mapping[str, str] = field(factory=dict, converter=_frozen)
    descriptions: Mapping[str, str] = field(factory=dict, converter=_frozen)

    def __attrs_post_init__(self) -> None:
        if self.default_id not in self.stores:
            raise ValueError(f"default store {self.default_id!r} is not enabled")

    @property
    def default(self) -> IStore:
        return self.stores[self.default_id]

    @property
    def several(self) -> bool:
        """
        More than one store is enabled: what Glance's C{enabled_backends}
        stands for in what it shows (an image's C{stores}, the versions).
        """
        return len(self.stores) > 1

    def get(self, store_id: str | None) -> IStore:
        """The store to upload to; C{None} means the default one."""
        return self.stores[self.checked_id(store_id)]

    def checked_id(self, store_id: str | None) -> str:
        """
        The id of the store to upload to (C{None}: the default's).

        @raise BadRequest: no store of that id is enabled, or it is
            read-only (before the image changes state or a byte is read).
        """
        if store_id is None:
            return self.default_id
        if store_id not in self.stores:
            raise BadRequest(
                f"Unknown store {store_id!r}; enabled stores are "
                + ", ".join(sorted(self.stores))
            )
        if is_read_only(self.stores[store_id]):
            raise BadRequest(f"Store {store_id!r} is read-only: it takes no uploads")
        return store_id

    def for_location(self, location: Location | str) -> IStore:
        """
        The store that holds C{location}: the one its store id names, or,
        for a location recorded without one, the store L{store_id_for} its
        URL.

        @raise StoreError: that store is not enabled (any more).
        """
        location = as_location(location)
        if location.store is None:
            return self.stores[self.store_id_for(location.url)]
        try:
            return self.stores[location.store]
        except KeyError:
            raise StoreError(
                f"The store {location.store!r} that holds this data is not enabled"
            ) from None

    def store_id_for(self, url: str) -> str:
        """
        The id of the store a URL without a recorded store belongs to,
        judged by its scheme (or schemes: the HTTP store reads C{http} and
        C{https}): the default store if it has that scheme, else the first
        enabled store that has. (Locations were recorded without a store
        id only while a URL's scheme was all that chose its store.)

        @raise StoreError: no enabled store has that scheme.
        """
        scheme = urlsplit(url).scheme
        if _serves(self.default, scheme):
            return self.default_id
        for store_id, store in self.stores.items():
            if _serves(store, scheme):
                return store_id
        raise StoreError(f"No enabled store serves {scheme!r} locations")

    def serves(self, store_id: str, url: str) -> bool:
        """Whether the enabled store C{store_id} reads locations like C{url}."""
        store = self.stores.get(store_id)
        return store is not None and _serves(store, urlsplit(url).scheme)

    def info(self) -> tuple[StoreInfo, ...]:
        """Every enabled store, in the order C{enabled_backends} names them."""
        return tuple(
            StoreInfo(
                id=store_id,
                type=self.types.get(store_id, store.scheme),
                description=self.descriptions.get(store_id),
                default=store_id == self.default_id,
                read_only=is_read_only(store),
            )
            for store_id, store in self.stores.items()
        )


def is_read_only(store: IStore | None) -> bool:
    """Whether C{store} refuses uploads (it says so with C{read_only})."""
    return bool(getattr(store, "read_only", False))


def _serves(store: IStore, scheme: str) -> bool:
    return scheme == store.scheme or scheme in getattr(store, "schemes", ())


async def build_store_map(
    config: Config,
    runner: BlockingRunner,
    reactor: Any,
    http_client: HTTPClient | None = None,
    factories: Mapping[str, StoreFactory] = STORE_FACTORIES,
) -> StoreMap:
    """
    Make every enabled store from its config section, through the factory
    of its type.

    @raise ConfigError: a store of a type no factory builds, or whatever
        its factory refuses.
    """
    services = StoreServices(
        runner=runner,
        reactor=reactor,
        http_client=http_client or store_http_client(reactor),
        data_dir=config.data_dir,
    )
    stores: dict[str, IStore] = {}
    descriptions: dict[str, str] = {}
    for store_config in config.stores:
        factory = factories.get(store_config.type)
        if factory is None:
            raise ConfigError(
                f"store {store_config.id!r} has unknown type {store_config.type!r}; "
                "known types are " + ", ".join(sorted(factories))
            )
        stores[store_config.id] = await factory(store_config, services)
        description = store_config.options.get("store_description")
        if description:
            descriptions[store_config.id] = description
    if is_read_only(stores.get(config.default_backend)):
        raise ConfigError(
            f"default_backend {config.default_backend!r} is read-only: "
            "uploads could go nowhere"
        )
    return StoreMap(
        stores,
        config.default_backend,
        types={s.id: s.type for s in config.stores},
        descriptions=descriptions,
    )
