"""
The interface every image store provides.

It is shaped for streaming: bytes go into a writer as they arrive, with
backpressure, and come out of C{read} as a producer registered on the
caller's consumer. Locations are URIs whose scheme names the store
(C{file:///...}, C{s3://...}, C{swift://...}, C{http://...}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from zope.interface import Attribute, Interface

from glance_tx.backpressure import SharedBudget


@frozen
class StoredData:
    """Where committed image data now lives, and how many bytes it has."""

    location: str
    size: int


class IStoreWriter(IConsumer):
    """
    Receives one image's bytes, in order.

    As an L{IConsumer} it takes the upstream producer through
    C{registerProducer(producer, streaming=True)} (a pull producer is
    refused) and pauses it while its own queue of unwritten bytes is above a
    high watermark, resuming it below a low one. Nothing is visible at the
    final location until C{commit}. Bytes written after C{abort}, or after a
    write has failed, are dropped; the failure surfaces at C{commit}, and
    at once as C{error}, so that the upload can stop before the rest of
    the body comes.
    """

    error = Attribute(
        "The L{glance_tx.errors.GlanceError} a failed write left, which"
        " C{commit} will raise (the disk is full: a StorageFull); None while"
        " every write has succeeded."
    )

    def commit() -> Deferred[StoredData]:
        """
        After the last C{write}: make the data durable (fsync or the remote
        equivalent), move it to its final location and fire with a
        L{StoredData}. On failure the partial data is removed.
        """

    def abort() -> Deferred[None]:
        """
        Give up: remove everything written so far. Safe at any moment, also
        while writes are queued, and more than once; after C{commit} has
        fired it does nothing. An abort before the commit has fired wins:
        the commit then fails with L{glance_tx.errors.StoreError}.
        """

    def share(budget: SharedBudget) -> None:
        """
        Count the bytes queued here against C{budget} too (the one every
        upload in flight shares), from now until they are written or
        dropped; called before the first C{write}.
        """


class IStore(Interface):
    """Keeps image bytes; one provider per kind of storage."""

    scheme = Attribute("The URI scheme of the locations this store owns.")

    def open_writer(image_id: str, size: int | None = None) -> Deferred[IStoreWriter]:
        """
        Start writing the data of one image. C{size} is the size the upload
        announced, if it did (the upload itself refuses a body of another
        size); a store may use it to choose how to write (the S3 store: one
        PUT or a multipart upload). The writer does not rely on it.
        """

    def read(
        location: str,
        consumer: IConsumer,
        offset: int = 0,
        length: int | None = None,
    ) -> Deferred[None]:
        """
        Write bytes C{[offset, offset + length)} (to the end when C{length}
        is C{None}) of the data at C{location} to C{consumer}, registering a
        streaming producer on it so a slow consumer pauses the store. Fires
        once the last byte is written and the producer unregistered; an
        offset at or past the end writes nothing. Fails with
        L{glance_tx.errors.NotFound} (before registering anything) if there
        is no such data, and with L{glance_tx.errors.BadRequest} for a
        negative offset or length or a location that is not this store's.
        If the consumer stops the producer, it fires with C{None} early and
        does not unregister (twisted.web's request refuses that once its
        connection is gone).
        """

    def delete(location: str) -> Deferred[None]:
        """Remove the data; data that is already gone is not an error."""

    def size(location: str) -> Deferred[int]:
        """Fire with the size in bytes, or fail with NotFound."""

    def locations() -> Deferred[frozenset[str]]:
        """Fire with every location this store holds committed data for."""

    def discard_incomplete(image_id: str | None = None) -> Deferred[int]:
        """
        Remove data left by writes that never committed or aborted (a crash
        mid-upload); fire with how many were removed. Without C{image_id},
        every such write, those still open included: run it only where no
        other process writes to the store. With it, only the writes of that
        image: what a node reclaiming a dead node's upload removes
        (L{glance_tx.recovery}), leaving other images' uploads alone.
        """

    def ping() -> Deferred[None]:
        """Fire when the store can be read and written; fail when not."""


@frozen
class FileRange:
    """
    Bytes C{[offset, offset + length)} of an open file, for a sender that
    copies them to a socket in the kernel (L{glance_tx.api.sendfile}).
    C{close} releases the file (on the store's runner); call it once.
    """

    file: IO[bytes]
    offset: int
    length: int
    closer: Callable[[], Deferred[None]]
    #: Reads C{(offset, length)} of the file into the page cache off the
    #: reactor thread and fires once the pages are there (at once when
    #: they already are), so a sender on the reactor thread never waits
    #: for the disk; or None (the sender then sends without waiting for it).
    load: Callable[[int, int], Deferred[None]] | None = None
    #: How many bytes from C{offset} the open already loaded.
    loaded: int = 0

    def close(self) -> Deferred[None]:
        return self.closer()


class IFileRanges(Interface):
    """
    A store whose data are local files (the filesystem store), so a
    download on plain TCP can be sent with C{os.sendfile} instead of read
    into memory block by block.
    """

    def open_range(
        location: str, offset: int = 0, length: int | None = None
    ) -> Deferred[FileRange]:
        """
        Open the data at C{location} for bytes C{[offset, offset + length)}
        (to the end when C{length} is C{None}; fewer if the data is
        shorter), with the checks and failures of L{IStore.read}.
        """


class IBodySink(Interface):
    """
    A consumer that can also take a network store's response body straight
    from the response's connection, past user space (the API's, for a
    client on plain TCP: L{glance_tx.api.splice}). A store that reads
    through a C{twisted.web} client offers it the response before it
    streams the body itself (L{glance_tx.store.response.relay_body}).
    """

    def relay(
        response: object, length: int, origin: str, timeout: float | None
    ) -> Deferred[None] | None:
        """
        Send the first C{length} bytes of C{response}'s body (an
        C{IResponse} whose body is unread and framed by its
        C{Content-Length}, at least C{length} long) to the client, with
        what L{IStore.read} promises of the bytes it writes; the
        response's connection is closed after them, not reused. C{origin}
        names the server for errors (no credential); C{timeout}: seconds
        the server may send nothing while the client wants more (None: no
        limit). C{None}, the body untouched, when the connection cannot be
        relayed this way (TLS): the caller streams it.
        """
