"""
A whole glance-tx site in memory: SQLite registry, filesystem store in a
temp dir, blocking work run synchronously, HTTP through real parsing.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from attrs import define
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from glance_tx.api.app import build_site
from glance_tx.config import CacheConfig, ImageQuotas
from glance_tx.identity.interface import IIdentityResolver
from glance_tx.registry.interface import IRegistry
from glance_tx.registry.sql import SQLRegistry, open_sql_registry
from glance_tx.store.backends import StoreMap
from glance_tx.store.filesystem import FilesystemStore
from glance_tx.threads import SynchronousRunner
from tests.memory_http import memory_client

BASE = "http://127.0.0.1:9292"

#: The v1 headers of an image's formats, which v1 needs before it takes the
#: image's data or a location.
V1_RAW_BARE = {"x-image-meta-disk-format": "raw", "x-image-meta-container-format": "bare"}


@define
class Answer:
    code: int
    headers: Any
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name.encode("ascii"))
        return values[0].decode("utf-8") if values else None

    def json(self) -> Any:
        return json.loads(self.body)


class SiteTestCase(SynchronousTestCase):
    """Builds a fresh site for every test."""

    size_cap = 1 << 40
    #: How responses are marked for caches; None: the service's defaults.
    cache: CacheConfig | None = None
    #: More keyword arguments for build_site (show_multiple_locations, ...).
    site_options: dict[str, Any] = {}
    #: The per-image quotas; None: Glance's defaults.
    quotas: ImageQuotas | None = None
    #: The os_hash_value's algorithm (the config's hashing_algorithm).
    hashing_algorithm = "sha512"

    def setUp(self) -> None:
        self.runner = SynchronousRunner()
        self.registry: SQLRegistry = self.open_registry()
        self.addCleanup(lambda: self.successResultOf(self.registry.close()))
        self.store_root = FilePath(self.mktemp())
        self.store_root.makedirs()
        self.store = FilesystemStore(self.store_root.path, self.runner)
        self.stores = self.make_stores()
        self.site = build_site(
            registry=self.api_registry(),
            stores=self.stores,
            runner=self.runner,
            image_size_cap=self.size_cap,
            default_project="admin",
            reactor=MemoryReactorClock(),
            cache=self.cache,
            **self.site_options,
            quotas=self.quotas,
            identity=self.make_identity(),
            hashing_algorithm=self.hashing_algorithm,
        )
        self.client, self.agent = memory_client(self.site)

    def api_registry(self) -> IRegistry:
        """What the API talks to; by default C{self.registry} itself."""
        return self.registry

    def make_identity(self) -> IIdentityResolver | None:
        """Who is asking; by default (None) the headers, as with noauth."""
        return None

    def open_registry(self) -> SQLRegistry:
        """The registry; by default an in-memory SQLite one."""
        return self.successResultOf(
            Deferred.fromCoroutine(open_sql_registry("sqlite://", self.runner))
        )

    def make_stores(self) -> StoreMap:
        """The enabled stores; by default the one filesystem store, C{file}."""
        return StoreMap({"file": self.store}, "file")

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        data: Any = None,
    ) -> Answer:
        d = self.client.request(
            method,
            BASE + path,
            headers={k: [v] for k, v in (headers or {}).items()},
            data=data,
        )
        self.agent.flush()
        response = self.successResultOf(d)
        body = treq.content(response)
        self.agent.flush()
        return Answer(response.code, response.headers, self.successResultOf(body))

    def stored_files(self) -> list[str]:
        """Every file under the store's root, incoming ones included."""
        return sorted(
            p.path for p in self.store_root.walk() if p.isfile()
        )
