"""
The client for scripts that run no reactor: every L{Client} method, as a
call that blocks until it is done.

    from glance_tx.client.blocking import BlockingClient

    with BlockingClient.connect("http://127.0.0.1:9292", token=token) as glance:
        image = glance.create(name="cirros", disk_format="qcow2",
                              container_format="bare")
        glance.upload(image.id, "cirros.qcow2")
        for image in glance.list_images(status="active"):
            print(image.id, image.name)

Each call runs the async client's coroutine on the reactor, which runs in
a thread of its own (L{glance_tx.client.reactor_thread}), so the transfers
stream exactly as they do for Twisted code: the calling thread only
waits. The values and errors are the async client's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

from attrs import define, field

from glance_tx.client.api import Client, Progress, Source
from glance_tx.client.reactor_thread import ReactorThread
from glance_tx.client.v1 import V1Client
from glance_tx.client.values import DownloadResult, ImageInfo, MemberInfo, StoreInfo

__all__ = ["BlockingClient"]


@define
class BlockingClient:
    """
    L{Client}'s methods (or L{V1Client}'s, the same ones), each blocking
    the calling thread until done.
    """

    client: Client | V1Client
    #: Closed with the client: the connections L{connect} opened.
    pool: Any = None
    _thread: ReactorThread = field(init=False)

    def __attrs_post_init__(self) -> None:
        self._thread = ReactorThread(self.client.reactor)

    @classmethod
    def connect(
        cls,
        url: str,
        token: str | None = None,
        *,
        timeout: float | None = 60.0,
        reactor: Any = None,
        version: int = 2,
        **settings: Any,
    ) -> BlockingClient:
        """
        A client of C{url} with a connection pool of its own, on the
        global reactor (started in a thread unless it runs already).
        C{timeout} (seconds) bounds every wait for an answer, so a script
        never hangs on a dead server; C{version} 1 speaks the Images API
        v1 (L{V1Client}); C{settings} are L{Client}'s.
        """
        if version not in (1, 2):
            raise ValueError(f"Images API version 1 or 2, not {version!r}")
        kind = V1Client if version == 1 else Client
        if reactor is None:
            from twisted.internet import reactor  # a script's one reactor
        thread = ReactorThread(reactor)

        def build() -> BlockingClient:
            from treq.client import HTTPClient
            from twisted.web.client import Agent, HTTPConnectionPool

            pool = HTTPConnectionPool(reactor)
            http = HTTPClient(Agent(reactor, pool=pool))
            client = kind(url, http, reactor, token=token, timeout=timeout, **settings)
            return cls(client, pool)

        built: BlockingClient = thread.call(build)
        return built

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        return self._thread.call(method, *args, **kwargs)

    def close(self) -> None:
        """Close the connections L{connect} opened."""
        if self.pool is not None:
            self._call(self.pool.closeCachedConnections)

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- images -------------------------------------------------------------

    def list_images(self, *, page_size: int | None = None, **filters: Any) -> Iterator[ImageInfo]:
        """As L{Client.list_images}: a page is fetched as the loop reaches it."""
        images = self.client.list_images(page_size=page_size, **filters)
        try:
            while True:
                try:
                    yield self._call(images.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            self._call(images.aclose)

    def show(self, image_id: str) -> ImageInfo:
        result: ImageInfo = self._call(self.client.show, image_id)
        return result

    def create(self, **fields: Any) -> ImageInfo:
        result: ImageInfo = self._call(self.client.create, **fields)
        return result

    def update(
        self,
        image_id: str,
        set: Mapping[str, Any] | None = None,
        remove: Iterable[str] = (),
    ) -> ImageInfo:
        result: ImageInfo = self._call(self.client.update, image_id, set, tuple(remove))
        return result

    def delete(self, image_id: str) -> None:
        self._call(self.client.delete, image_id)

    def deactivate(self, image_id: str) -> None:
        self._call(self.client.deactivate, image_id)

    def reactivate(self, image_id: str) -> None:
        self._call(self.client.reactivate, image_id)

    # -- tags and members ---------------------------------------------------

    def add_tag(self, image_id: str, tag: str) -> None:
        self._call(self.client.add_tag, image_id, tag)

    def remove_tag(self, image_id: str, tag: str) -> None:
        self._call(self.client.remove_tag, image_id, tag)

    def list_members(self, image_id: str) -> list[MemberInfo]:
        result: list[MemberInfo] = self._call(self.client.list_members, image_id)
        return result

    def show_member(self, image_id: str, member_id: str) -> MemberInfo:
        result: MemberInfo = self._call(self.client.show_member, image_id, member_id)
        return result

    def add_member(self, image_id: str, member_id: str) -> MemberInfo:
        result: MemberInfo = self._call(self.client.add_member, image_id, member_id)
        return result

    def update_member(self, image_id: str, member_id: str, status: str) -> MemberInfo:
        result: MemberInfo = self._call(self.client.update_member, image_id, member_id, status)
        return result

    def remove_member(self, image_id: str, member_id: str) -> None:
        self._call(self.client.remove_member, image_id, member_id)

    def stores(self) -> list[StoreInfo]:
        result: list[StoreInfo] = self._call(self.client.stores)
        return result

    # -- import ---------------------------------------------------------------

    def import_methods(self) -> list[str]:
        result: list[str] = self._call(self.client.import_methods)
        return result

    def import_image(
        self,
        image_id: str,
        method: str = "glance-direct",
        *,
        uri: str | None = None,
        stores: Iterable[str] | None = None,
        all_stores: bool | None = None,
        all_stores_must_succeed: bool | None = None,
    ) -> None:
        """As L{Client.import_image}: returns once the server accepted it."""
        self._call(
            self.client.import_image, image_id, method, uri=uri,
            stores=None if stores is None else list(stores), all_stores=all_stores,
            all_stores_must_succeed=all_stores_must_succeed,
        )

    def stage(
        self,
        image_id: str,
        source: Source,
        *,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> None:
        """As L{Client.stage}; C{progress} is called on the reactor thread."""
        self._call(self.client.stage, image_id, source, size=size, progress=progress)

    # -- data -----------------------------------------------------------------

    def upload(
        self,
        image_id: str,
        source: Source,
        *,
        size: int | None = None,
        store: str | None = None,
        progress: Progress | None = None,
    ) -> None:
        """As L{Client.upload}; C{progress} is called on the reactor thread."""
        self._call(
            self.client.upload, image_id, source, size=size, store=store, progress=progress
        )

    def download(
        self, image_id: str, dest: Source, *, progress: Progress | None = None
    ) -> DownloadResult:
        """As L{Client.download}; C{progress} is called on the reactor thread."""
        result: DownloadResult = self._call(
            self.client.download, image_id, dest, progress=progress
        )
        return result
