"""
Tests for L{glance_tx.store.backends}: building the enabled stores through
one factory per type, and the L{StoreMap} the API and recovery use.
"""

from __future__ import annotations

import os
from typing import Any

from attrs import define, field
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from glance_tx.config import Config, ConfigError, StoreConfig, load_config
from glance_tx.errors import BadRequest, StoreError
from glance_tx.store.backends import (
    STORE_FACTORIES,
    StoreInfo,
    StoreMap,
    build_store_map,
)
from glance_tx.store.factory import StoreServices
from glance_tx.store.filesystem import FilesystemStore
from glance_tx.store.interface import IStore
from glance_tx.threads import SynchronousRunner
from tests.memory_store import MemoryStore


@define
class RecordingFactory:
    """A factory for C{memory} stores that keeps what it was given."""

    calls: list[tuple[StoreConfig, StoreServices]] = field(factory=list)

    async def __call__(self, config: StoreConfig, services: StoreServices) -> IStore:
        self.calls.append((config, services))
        return MemoryStore(services.runner)


class BuildStoreMapTests(SynchronousTestCase):
    def config(self, ini: str) -> Config:
        data_dir = FilePath(self.mktemp())
        path = data_dir.sibling(data_dir.basename() + ".ini")
        path.setContent(ini.encode("utf-8"))
        return load_config(path.path, data_dir=data_dir.path)

    def build(self, config: Config, **kwargs: Any) -> Deferred[StoreMap]:
        return Deferred.fromCoroutine(
            build_store_map(config, SynchronousRunner(), MemoryReactorClock(), **kwargs)
        )

    def test_file_store_defaults(self) -> None:
        """
        With no configuration the one store is C{file}, a filesystem store
        whose directory, C{images} under the data directory, is created.
        """
        config = self.config("")
        self.assertEqual(config.store("file").options, {})
        stores = self.successResultOf(self.build(config))
        store = stores.get(None)
        assert isinstance(store, FilesystemStore)
        self.assertEqual(store.root.path, os.path.join(config.data_dir, "images"))
        self.assertTrue(store.root.isdir())
        self.assertEqual(
            stores.info(), (StoreInfo(id="file", type="file", description=None, default=True),)
        )

    def test_file_store_datadir(self) -> None:
        """C{filesystem_store_datadir} in a store's section is its directory."""
        root = FilePath(self.mktemp())
        config = self.config(
            "[DEFAULT]\nenabled_backends = fast:file\n"
            f"[fast]\nfilesystem_store_datadir = {root.path}\n"
        )
        store = self.successResultOf(self.build(config)).get("fast")
        assert isinstance(store, FilesystemStore)
        self.assertEqual(store.root, root)
        self.assertTrue(root.isdir())

    def test_unknown_type(self) -> None:
        """A type no factory builds is a L{ConfigError} naming store and types."""
        config = self.config("[DEFAULT]\nenabled_backends = odd:floppy\n")
        failure = self.failureResultOf(self.build(config), ConfigError)
        self.assertEqual(
            str(failure.value),
            "store 'odd' has unknown type 'floppy'; known types are "
            + ", ".join(sorted(STORE_FACTORIES)),
        )

    def test_factory_registry(self) -> None:
        """
        Each store is built by the factory of its type, given its own
        section and the shared services: the runner, the reactor, the HTTP
        client and the data directory. The map describes every store, with
        its C{store_description}, in C{enabled_backends} order.
        """
        config = self.config(
            "[DEFAULT]\nenabled_backends = fast:file, ram:memory, more:memory\n"
            "default_backend = ram\n"
            "[ram]\nstore_description = Quick but forgetful\nsize = 5\n"
        )
        factory = RecordingFactory()
        client = HTTPClient(object())  # type: ignore[arg-type]
        factories = {**STORE_FACTORIES, "memory": factory}
        stores = self.successResultOf(
            self.build(config, http_client=client, factories=factories)
        )
        [(ram, services), (more, _)] = factory.calls
        self.assertEqual(ram.options, {"store_description": "Quick but forgetful", "size": "5"})
        self.assertEqual(more.id, "more")
        self.assertIs(services.http_client, client)
        self.assertIsInstance(services.reactor, MemoryReactorClock)
        self.assertIsInstance(services.runner, SynchronousRunner)
        self.assertEqual(services.data_dir, config.data_dir)
        self.assertIsInstance(stores.get(None), MemoryStore)
        self.assertIsInstance(stores.get("fast"), FilesystemStore)
        self.assertEqual(
            stores.info(),
            (
                StoreInfo("fast", "file", None, False),
                StoreInfo("ram", "memory", "Quick but forgetful", True),
                StoreInfo("more", "memory", None, False),
            ),
        )

    def test_default_http_client(self) -> None:
        """Without a client given, the factories get a treq client."""
        factory = RecordingFactory()
        config = self.config("[DEFAULT]\nenabled_backends = ram:memory\n")
        self.successResultOf(self.build(config, factories={"memory": factory}))
        [(_, services)] = factory.calls
        self.assertIsInstance(services.http_client, HTTPClient)


class StoreMapTests(SynchronousTestCase):
    def test_lookup(self) -> None:
        """
        C{get} finds a store by id (C{None}: the default) and refuses an
        unknown id with L{BadRequest} listing the enabled ones;
        C{for_location} finds the store owning a location's scheme.
        """
        memory = MemoryStore(SynchronousRunner())
        files = FilesystemStore(self.mktemp(), SynchronousRunner())
        stores = StoreMap({"ram": memory, "disk": files}, "disk")
        self.assertIs(stores.get(None), files)
        self.assertIs(stores.get("ram"), memory)
        error = self.assertRaises(BadRequest, stores.get, "tape")
        self.assertIn("enabled stores are disk, ram", error.message)
        self.assertIs(stores.for_location("memory:///x"), memory)
        self.assertIs(stores.for_location("file:///x"), files)
        self.assertRaises(StoreError, stores.for_location, "s3://bucket/key")
        self.assertEqual(
            stores.info(),
            (StoreInfo("ram", "memory", None, False), StoreInfo("disk", "file", None, True)),
        )

    def test_default_enabled(self) -> None:
        """The default store must be one of the enabled ones."""
        self.assertRaises(ValueError, StoreMap, {"a": MemoryStore(SynchronousRunner())}, "b")
