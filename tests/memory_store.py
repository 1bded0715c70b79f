"""
A store that keeps image data in a dict, built from the shared store
pieces only: L{StoreWriter} over an L{IWriteBackend}, L{BlockProducer} over
an L{IBlockSource}. Every operation goes through a
L{glance_tx.threads.BlockingRunner}, so a L{tests.fakes.ManualRunner} paces
it as the conformance mixin's flow-control tests need.

It shows that the shared machinery is not tied to files, and is the
smallest example of the shape every store file has.
"""

from __future__ import annotations

import secrets
from typing import ClassVar

from attrs import define, field, frozen, mutable
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IConsumer
from zope.interface import implementer

from glance_tx.backpressure import Watermarks
from glance_tx.errors import BadRequest, NotFound
from glance_tx.images import validate_image_id
from glance_tx.store.interface import IStore, IStoreWriter
from glance_tx.store.reader import BlockProducer, IBlockSource, check_read_range
from glance_tx.store.writer import IWriteBackend, StoreWriter
from glance_tx.threads import BlockingRunner


@define
class _Memory:
    """What the store holds: committed data by location, incoming by token."""

    committed: dict[str, bytes] = field(factory=dict)
    incoming: dict[str, bytearray] = field(factory=dict)


@implementer(IWriteBackend)
@mutable
class _IncomingData:
    runner: BlockingRunner
    memory: _Memory
    token: str
    location: str
    _committed: bool = field(default=False, init=False)

    def write(self, chunks: list[bytes]) -> Deferred[None]:
        return self.runner.run(self._write, chunks)

    def _write(self, chunks: list[bytes]) -> None:
        self.memory.incoming[self.token].extend(b"".join(chunks))

    def commit(self) -> Deferred[None]:
        return self.runner.run(self._commit)

    def _commit(self) -> None:
        data = self.memory.incoming.pop(self.token)
        self.memory.committed[self.location] = bytes(data)
        self._committed = True

    def discard(self) -> Deferred[None]:
        return self.runner.run(self._discard)

    def _discard(self) -> None:
        self.memory.incoming.pop(self.token, None)
        if self._committed:
            self.memory.committed.pop(self.location, None)


@implementer(IBlockSource)
@mutable
class _DataSource:
    runner: BlockingRunner
    data: bytes
    offset: int

    def read_block(self, size: int) -> Deferred[bytes]:
        return self.runner.run(self._read, size)

    def _read(self, size: int) -> bytes:
        block = self.data[self.offset : self.offset + size]
        self.offset += len(block)
        return block

    def close(self) -> Deferred[None]:
        return self.runner.run(lambda: None)


@implementer(IStore)
@frozen
class MemoryStore:
    """Image data in memory; see the module docstring."""

    scheme: ClassVar[str] = "memory"

    runner: BlockingRunner
    block_size: int = 1 << 20
    watermarks: Watermarks = Watermarks(high=4 << 20, low=1 << 20)
    memory: _Memory = field(factory=_Memory)

    def _checked(self, location: object) -> str:
        if not isinstance(location, str) or not location.startswith("memory:"):
            raise BadRequest(f"{location!r} is not a location in this store")
        return location

    def open_writer(self, image_id: str, size: int | None = None) -> Deferred[IStoreWriter]:
        try:
            image_id = validate_image_id(image_id)
        except BadRequest:
            return fail()
        token = f"{image_id}/{secrets.token_hex(8)}"

        def opened() -> IStoreWriter:
            self.memory.incoming[token] = bytearray()
            backend = _IncomingData(self.runner, self.memory, token, f"memory:///{token}")
            return StoreWriter(backend, self.watermarks)

        return self.runner.run(opened)

    def read(
        self,
        location: str,
        consumer: IConsumer,
        offset: int = 0,
        length: int | None = None,
    ) -> Deferred[None]:
        try:
            location = self._checked(location)
            check_read_range(offset, length)
        except BadRequest:
            return fail()

        def found() -> tuple[bytes, int]:
            data = self.memory.committed.get(location)
            if data is None:
                raise NotFound("No image data")
            available = max(0, len(data) - offset)
            return data, available if length is None else min(length, available)

        def opened(result: tuple[bytes, int]) -> Deferred[None]:
            data, remaining = result
            source = _DataSource(self.runner, data, offset)
            return BlockProducer(source, consumer, remaining, self.block_size).start()

        return self.runner.run(found).addCallback(opened)

    def delete(self, location: str) -> Deferred[None]:
        try:
            location = self._checked(location)
        except BadRequest:
            return fail()
        return self.runner.run(self.memory.committed.pop, location, None).addCallback(
            lambda _: None
        )

    def size(self, location: str) -> Deferred[int]:
        try:
            location = self._checked(location)
        except BadRequest:
            return fail()

        def size() -> int:
            if location not in self.memory.committed:
                raise NotFound("No image data")
            return len(self.memory.committed[location])

        return self.runner.run(size)

    def locations(self) -> Deferred[frozenset[str]]:
        return self.runner.run(lambda: frozenset(self.memory.committed))

    def discard_incomplete(self, image_id: str | None = None) -> Deferred[int]:
        def discard() -> int:
            tokens = [
                token
                for token in self.memory.incoming
                if image_id in (None, token.split("/", 1)[0])
            ]
            for token in tokens:
                del self.memory.incoming[token]
            return len(tokens)

        return self.runner.run(discard)

    def ping(self) -> Deferred[None]:
        return self.runner.run(lambda: None)
