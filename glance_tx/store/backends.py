"""
The enabled stores, by id and by the scheme of the locations they own.

An upload goes to a named store (or the default one); a download or delete
goes to whichever store owns the image's location.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from attrs import field, frozen

from glance_tx.config import Config, ConfigError
from glance_tx.errors import BadRequest, StoreError
from glance_tx.store.interface import IStore
from glance_tx.threads import BlockingRunner


def _frozen(value: Mapping[str, IStore]) -> Mapping[str, IStore]:
    return dict(value)


@frozen
class StoreMap:
    stores: Mapping[str, IStore] = field(converter=_frozen)
    default_id: str

    def __attrs_post_init__(self) -> None:
        if self.default_id not in self.stores:
            raise ValueError(f"default store {self.default_id!r} is not enabled")

    @property
    def default(self) -> IStore:
        return self.stores[self.default_id]

    def get(self, store_id: str | None) -> IStore:
        """The store to upload to; C{None} means the default one."""
        if store_id is None:
            return self.default
        try:
            return self.stores[store_id]
        except KeyError:
            raise BadRequest(
                f"Unknown store {store_id!r}; enabled stores are "
                + ", ".join(sorted(self.stores))
            ) from None

    def for_location(self, location: str) -> IStore:
        """The store that owns C{location}, judged by its URI scheme."""
        scheme = urlsplit(location).scheme
        for store in self.stores.values():
            if store.scheme == scheme:
                return store
        raise StoreError(f"No enabled store serves {scheme!r} locations")


async def build_store_map(config: Config, runner: BlockingRunner) -> StoreMap:
    """Make every enabled store from its config section."""
    from glance_tx.store.filesystem import FilesystemStore

    stores: dict[str, IStore] = {}
    for store_config in config.stores:
        if store_config.type == "file":
            root = store_config.options["filesystem_store_datadir"]
            await runner.run(os.makedirs, root, exist_ok=True)
            stores[store_config.id] = FilesystemStore(root, runner)
        else:
            raise ConfigError(
                f"store {store_config.id!r} has unknown type {store_config.type!r}"
            )
    return StoreMap(stores, config.default_backend)
