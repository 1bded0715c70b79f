"""Image data: the L{IStore} interface and its providers."""

from glance_tx.store.interface import IStore, IStoreWriter, StoredData

__all__ = ["IStore", "IStoreWriter", "StoredData"]
