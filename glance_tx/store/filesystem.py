"""
The filesystem store: image data as plain files in one directory.

Committed data lives at C{<root>/<image id>} and is named by the location
C{file://<root>/<image id>} (the path percent-encoded, so a plain path reads
as itself). A write goes to C{<root>/incoming/<image id>.<random>.partial}
and is fsynced and renamed into place only at commit, so a crash never
leaves half an image at a final name; L{FilesystemStore.discard_incomplete}
removes what a crash leaves in C{incoming/}.

Every file system call runs on the L{BlockingRunner}, never on the reactor
thread. Only the parsing of a location happens inline: a location is
accepted only when it is a C{file:} URI with no host, query or fragment,
whose path is already normal (no C{.}, C{..} or empty segments, after
percent-decoding), whose last segment is a canonical image id and whose
directory resolves (symlinks included) to the store's root. The file itself
is then opened at C{<real root>/<image id>} without following a symlink.
"""

from __future__ import annotations

import errno
import os
import posixpath
import secrets
import stat
import tempfile
from collections import deque
from typing import IO, Any, ClassVar, cast
from urllib.parse import quote, unquote, urlsplit

from attrs import field, frozen, mutable, validators
from twisted.internet.defer import Deferred, DeferredLock, fail, succeed
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from zope.interface import implementer

from glance_tx.errors import BadRequest, NotFound, StoreError
from glance_tx.images import validate_image_id
from glance_tx.store.interface import IStore, IStoreWriter, StoredData
from glance_tx.threads import BlockingRunner

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_HIGH_WATERMARK",
    "DEFAULT_LOW_WATERMARK",
    "FilesystemStore",
]

MiB = 1024 * 1024

#: How many bytes one read of committed data asks for.
DEFAULT_BLOCK_SIZE = 1 * MiB
#: A writer pauses its producer when more unwritten bytes than this are queued.
DEFAULT_HIGH_WATERMARK = 4 * MiB
#: ... and resumes it once no more than this many are left.
DEFAULT_LOW_WATERMARK = 1 * MiB

INCOMING = "incoming"
PARTIAL_SUFFIX = ".partial"

_log = Logger()


def _as_filepath(root: FilePath[Any] | str | os.PathLike[str]) -> FilePath[str]:
    if isinstance(root, FilePath):
        return root.asTextMode()
    return FilePath(os.fspath(root))


def _positive(instance: object, attribute: Any, value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, not {value}")


def _describe(error: BaseException | None) -> str:
    """What went wrong, without the file names an OSError may carry."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error or "") or type(error).__name__


def _is_image_id(name: str) -> bool:
    try:
        return validate_image_id(name) == name
    except BadRequest:
        return False


# Blocking helpers. Each runs on the runner; none touches the reactor.


def _resolve(root: str, directory: str, image_id: str) -> str:
    """The path to open for C{directory/image_id}, if that is in C{root}."""
    real_root = os.path.realpath(root)
    if os.path.realpath(directory) != real_root:
        raise BadRequest("The location is not in this store")
    return os.path.join(real_root, image_id)


def _nofollow_opener(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def _open_for_read(
    root: str, directory: str, image_id: str, offset: int, length: int | None
) -> tuple[IO[bytes], int]:
    """Open the data and seek to C{offset}; also say how many bytes to read."""
    path = _resolve(root, directory, image_id)
    try:
        f = open(path, "rb", buffering=0, opener=_nofollow_opener)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        raise NotFound(f"No image data for image {image_id}") from e
    except OSError as e:
        if e.errno == errno.ELOOP:  # a symlink at the image's name
            raise NotFound(f"No image data for image {image_id}") from e
        raise StoreError(f"Could not read image data: {_describe(e)}") from e
    try:
        size = os.fstat(f.fileno()).st_size
        available = max(0, size - offset)
        remaining = available if length is None else min(length, available)
        if remaining:
            f.seek(offset)
    except OSError as e:
        f.close()
        raise StoreError(f"Could not read image data: {_describe(e)}") from e
    except BaseException:
        f.close()
        raise
    return f, remaining


def _read_block(f: IO[bytes], size: int) -> bytes:
    return f.read(size) or b""


def _size(root: str, directory: str, image_id: str) -> int:
    path = _resolve(root, directory, image_id)
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise NotFound(f"No image data for image {image_id}") from e
    except OSError as e:
        raise StoreError(f"Could not read image data: {_describe(e)}") from e
    if not stat.S_ISREG(st.st_mode):
        raise NotFound(f"No image data for image {image_id}")
    return st.st_size


def _delete(root: str, directory: str, image_id: str) -> None:
    path = _resolve(root, directory, image_id)
    try:
        os.unlink(path)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as e:
        raise StoreError(f"Could not delete image data: {_describe(e)}") from e


def _list_images(root: str) -> list[str]:
    try:
        with os.scandir(root) as entries:
            return [
                entry.name
                for entry in entries
                if _is_image_id(entry.name) and entry.is_file(follow_symlinks=False)
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise StoreError(f"Could not list image data: {_describe(e)}") from e


def _discard_incoming(incoming: str) -> int:
    removed = 0
    try:
        with os.scandir(incoming) as scan:
            entries = list(scan)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                continue
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed += 1
    except (FileNotFoundError, NotADirectoryError):
        return removed
    except OSError as e:
        raise StoreError(f"Could not remove incomplete data: {_describe(e)}") from e
    return removed


def _ping(root: str) -> None:
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise StoreError(f"The image directory {root} does not exist") from None
    except OSError as e:
        raise StoreError(
            f"Cannot reach the image directory {root}: {_describe(e)}"
        ) from e
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"The image directory {root} is not a directory")
    if not os.access(root, os.R_OK | os.X_OK):
        raise StoreError(f"The image directory {root} is not readable")
    try:
        fd, probe = tempfile.mkstemp(prefix=".ping-", dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise StoreError(
            f"The image directory {root} is not writable: {_describe(e)}"
        ) from e


def _open_partial(incoming: str, image_id: str) -> tuple[IO[bytes], str]:
    try:
        os.makedirs(incoming, exist_ok=True)
        while True:
            path = os.path.join(
                incoming, f"{image_id}.{secrets.token_hex(8)}{PARTIAL_SUFFIX}"
            )
            try:
                return open(path, "xb", buffering=0, opener=_nofollow_opener), path
            except FileExistsError:
                continue
    except OSError as e:
        raise StoreError(f"Could not start writing image data: {_describe(e)}") from e


def _write_chunks(f: IO[bytes], chunks: list[bytes]) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            written = f.write(view)
            if written is None:  # only a non-blocking file does this
                raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
            view = view[written:]


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _finish(f: IO[bytes], partial: str, final: str) -> None:
    """Make the partial file durable and move it to its final name."""
    try:
        os.fsync(f.fileno())
    finally:
        f.close()
    os.replace(partial, final)
    try:
        _fsync_directory(os.path.dirname(final))
    except BaseException:
        # The rename may not survive a crash: withdraw it rather than
        # report data as committed that is not durable.
        os.unlink(final)
        raise


def _discard(f: IO[bytes], partial: str, final: str | None) -> None:
    try:
        f.close()
    except OSError:
        pass  # the data is being thrown away: a failed flush does not matter
    for path in (partial, final):
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _close(f: IO[bytes]) -> None:
    f.close()


# Reactor-side objects.


@frozen
class _Location:
    """A location that passed the lexical checks, not yet resolved."""

    directory: str
    image_id: str


@implementer(IStore)
@frozen
class FilesystemStore:
    """
    Image data as files in C{root}, all file system calls made on C{runner}.

    @ivar root: The directory holding the data; created (with
        C{incoming/}) at the first write.
    @ivar runner: Where blocking calls run: a L{ThreadPoolRunner} in
        production, a synchronous or manual runner in tests.
    @ivar block_size: How many bytes each read asks for.
    @ivar high_watermark: A writer pauses its producer while more unwritten
        bytes than this are queued...
    @ivar low_watermark: ... and resumes it once no more than this are left.
    """

    scheme: ClassVar[str] = "file"

    root: FilePath[str] = field(converter=_as_filepath)
    runner: BlockingRunner
    block_size: int = field(default=DEFAULT_BLOCK_SIZE, validator=_positive)
    high_watermark: int = field(default=DEFAULT_HIGH_WATERMARK, validator=_positive)
    low_watermark: int = field(
        default=DEFAULT_LOW_WATERMARK, validator=validators.ge(0)
    )

    def __attrs_post_init__(self) -> None:
        if self.low_watermark > self.high_watermark:
            raise ValueError(
                f"low_watermark ({self.low_watermark}) is above "
                f"high_watermark ({self.high_watermark})"
            )

    @property
    def incoming(self) -> FilePath[str]:
        """Where data being written waits for its commit."""
        return self.root.child(INCOMING)

    def location_for(self, image_id: str) -> str:
        """The location committed data of C{image_id} gets."""
        return "file://" + quote(posixpath.join(self.root.path, image_id))

    def _parse(self, location: object) -> _Location:
        """
        The lexical half of checking a location (see the module docstring);
        the other half, resolving symlinks, runs on the runner.
        """
        if not isinstance(location, str):
            raise BadRequest(f"Location {location!r} is not a string")
        refusal = f"{location!r} is not a location in this store"
        try:
            parts = urlsplit(location)
            path = unquote(parts.path, errors="strict")
        except (ValueError, UnicodeDecodeError):
            raise BadRequest(refusal) from None
        if (
            parts.scheme != self.scheme
            or parts.netloc
            or parts.query
            or parts.fragment
            or not path.startswith("/")
            or path.startswith("//")
            or "\0" in path
            or posixpath.normpath(path) != path
        ):
            raise BadRequest(refusal)
        directory, name = posixpath.split(path)
        if not _is_image_id(name):
            raise BadRequest(refusal)
        return _Location(directory, name)

    def open_writer(self, image_id: str) -> Deferred[IStoreWriter]:
        try:
            image_id = validate_image_id(image_id)
        except BadRequest:
            return fail()
        final = self.root.child(image_id).path
        d = self.runner.run(_open_partial, self.incoming.path, image_id)

        def opened(result: tuple[IO[bytes], str]) -> IStoreWriter:
            f, partial = result
            return _FilesystemWriter(
                runner=self.runner.serial(),
                file=f,
                partial=partial,
                final=final,
                location=self.location_for(image_id),
                high_watermark=self.high_watermark,
                low_watermark=self.low_watermark,
            )

        return d.addCallback(opened)

    def read(
        self,
        location: str,
        consumer: IConsumer,
        offset: int = 0,
        length: int | None = None,
    ) -> Deferred[None]:
        """
        See L{IStore.read}. An C{offset} at or past the end of the data, or
        a C{length} of 0, writes nothing: the producer is registered and
        unregistered and the Deferred fires with C{None}. A negative
        C{offset} or C{length} fails with L{BadRequest} before any I/O.
        """
        try:
            where = self._parse(location)
            if not isinstance(offset, int) or offset < 0:
                raise BadRequest(f"Invalid offset {offset!r}")
            if length is not None and (not isinstance(length, int) or length < 0):
                raise BadRequest(f"Invalid length {length!r}")
        except BadRequest:
            return fail()
        d = self.runner.run(
            _open_for_read,
            self.root.path,
            where.directory,
            where.image_id,
            offset,
            length,
        )

        def opened(result: tuple[IO[bytes], int]) -> Deferred[None]:
            f, remaining = result
            producer = _FileProducer(
                runner=self.runner,
                consumer=consumer,
                file=f,
                remaining=remaining,
                block_size=self.block_size,
            )
            return producer.start()

        return d.addCallback(opened)

    def delete(self, location: str) -> Deferred[None]:
        try:
            where = self._parse(location)
        except BadRequest:
            return fail()
        return self.runner.run(_delete, self.root.path, where.directory, where.image_id)

    def size(self, location: str) -> Deferred[int]:
        try:
            where = self._parse(location)
        except BadRequest:
            return fail()
        return self.runner.run(_size, self.root.path, where.directory, where.image_id)

    def locations(self) -> Deferred[frozenset[str]]:
        d = self.runner.run(_list_images, self.root.path)
        return d.addCallback(lambda names: frozenset(map(self.location_for, names)))

    def discard_incomplete(self) -> Deferred[int]:
        """
        See L{IStore.discard_incomplete}: removes every file in
        C{<root>/incoming}, including those of writers still open, so run it
        only before the store is in use.
        """
        return self.runner.run(_discard_incoming, self.incoming.path)

    def ping(self) -> Deferred[None]:
        """
        Fire when the root is a readable directory in which a file can be
        created and removed; otherwise fail with a L{StoreError} naming the
        directory and the problem.
        """
        return self.runner.run(_ping, self.root.path)


@mutable
class _Observers:
    """A result that any number of callers can wait for, before or after."""

    _result: object = field(default=None, init=False)
    _fired: bool = field(default=False, init=False)
    _waiting: list[Deferred[Any]] = field(factory=list, init=False)

    def when(self) -> Deferred[Any]:
        if not self._fired:
            d: Deferred[Any] = Deferred()
            self._waiting.append(d)
            return d
        if isinstance(self._result, Failure):
            return fail(self._result)
        return succeed(self._result)

    def fire(self, result: object) -> None:
        self._result, self._fired = result, True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)


_OPEN = "open"
_COMMITTING = "committing"
_COMMITTED = "committed"
_FAILED = "failed"
_ABORTED = "aborted"


@implementer(IStoreWriter)
@mutable
class _FilesystemWriter:
    """
    Writes one image into its partial file.

    Every file operation (a batch of queued writes, the commit, the discard)
    runs under C{_lock}, so they happen strictly one at a time and in order.
    Bytes passed to C{write} wait in C{_pending} until the next write
    operation takes all of them; C{_queued} counts those plus the ones being
    written, and drives the producer's pause and resume.
    """

    runner: BlockingRunner
    file: IO[bytes]
    partial: str
    final: str
    location: str
    high_watermark: int
    low_watermark: int

    _state: str = field(default=_OPEN, init=False)
    _lock: DeferredLock = field(factory=DeferredLock, init=False)
    _pending: deque[bytes] = field(factory=deque, init=False)
    _queued: int = field(default=0, init=False)
    _write_scheduled: bool = field(default=False, init=False)
    _written: int = field(default=0, init=False)
    _error: Failure | None = field(default=None, init=False)
    _renamed: bool = field(default=False, init=False)
    _discarded: bool = field(default=False, init=False)
    _aborted: _Observers | None = field(default=None, init=False)
    _producer: IPushProducer | None = field(default=None, init=False)
    _paused: bool = field(default=False, init=False)

    # IConsumer

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError("A producer is already registered")
        if not streaming:
            raise ValueError("A store writer takes only streaming (push) producers")
        self._producer, self._paused = cast(IPushProducer, producer), False
        self._maybe_pause()

    def unregisterProducer(self) -> None:
        self._producer, self._paused = None, False

    def write(self, data: bytes) -> None:
        """
        Queue C{data}. After C{abort}, or once a write has failed (C{commit}
        will say so), data is dropped; after C{commit} this raises.
        """
        if self._state == _ABORTED or self._error is not None:
            return
        if self._state != _OPEN:
            raise RuntimeError("write() after commit()")
        if not isinstance(data, bytes):
            data = bytes(data)
        if not data:
            return
        self._pending.append(data)
        self._queued += len(data)
        if not self._write_scheduled:
            self._write_scheduled = True
            self._lock.run(self._write_pending).addErrback(self._log_unexpected)
        self._maybe_pause()

    # IStoreWriter

    def commit(self) -> Deferred[StoredData]:
        if self._state == _ABORTED:
            return fail(StoreError("The upload was aborted"))
        if self._state != _OPEN:
            return fail(StoreError("commit() was already called"))
        self._state = _COMMITTING
        return Deferred.fromCoroutine(self._commit())

    def abort(self) -> Deferred[None]:
        if self._state == _COMMITTED:
            return succeed(None)
        if self._aborted is None:
            self._state = _ABORTED
            self._drop_pending()
            # Nothing is kept any more: let the producer run (its data is
            # dropped) rather than leave it paused for ever.
            self._maybe_resume()
            self._aborted = _Observers()
            self._lock.run(self._discard).addBoth(self._aborted.fire)
        return self._aborted.when()

    # The rest runs under the lock or on its results.

    async def _commit(self) -> StoredData:
        await self._lock.run(self._finish)
        if self._state == _ABORTED:
            raise StoreError("The upload was aborted")
        if self._error is not None:
            self._state = _FAILED
            cause = self._error.value
            raise StoreError(
                f"Could not store image data: {_describe(cause)}"
            ) from cause
        self._state = _COMMITTED
        return StoredData(location=self.location, size=self._written)

    def _write_pending(self) -> Deferred[None]:
        self._write_scheduled = False
        chunks = list(self._pending)
        self._pending.clear()
        if not chunks:  # dropped by abort() or after an error
            return succeed(None)
        size = sum(map(len, chunks))

        def written(result: object) -> Deferred[None] | None:
            self._queued -= size
            if isinstance(result, Failure):
                self._error = self._error or result
                self._drop_pending()
                self._maybe_resume()
                # Give the disk space back now, not at commit().
                return self._discard().addErrback(self._log_discard_failure)
            self._written += size
            self._maybe_resume()
            return None

        return self.runner.run(_write_chunks, self.file, chunks).addBoth(written)

    def _finish(self) -> Deferred[None]:
        if self._state == _ABORTED:
            return succeed(None)  # abort()'s discard is queued behind us
        if self._error is not None:
            return self._discard().addErrback(self._log_discard_failure)

        def failed(failure: Failure) -> Deferred[None]:
            self._error = failure
            return self._discard().addErrback(self._log_discard_failure)

        def renamed(_: None) -> None:
            self._renamed = True

        d = self.runner.run(_finish, self.file, self.partial, self.final)
        return d.addCallbacks(renamed, failed)

    def _discard(self) -> Deferred[None]:
        if self._discarded:
            return succeed(None)
        self._discarded = True
        final = self.final if self._renamed else None
        d = self.runner.run(_discard, self.file, self.partial, final)

        def failed(failure: Failure) -> Failure:
            raise StoreError(
                f"Could not remove image data: {_describe(failure.value)}"
            ) from failure.value

        return d.addErrback(failed)

    def _log_unexpected(self, failure: Failure) -> None:
        _log.failure("Unexpected error in a store writer", failure=failure)

    def _log_discard_failure(self, failure: Failure) -> None:
        _log.failure(
            "Could not remove the partial file {partial}",
            failure=failure,
            partial=self.partial,
        )

    def _drop_pending(self) -> None:
        self._queued -= sum(map(len, self._pending))
        self._pending.clear()

    def _maybe_pause(self) -> None:
        if (
            self._producer is not None
            and not self._paused
            and self._queued > self.high_watermark
        ):
            self._paused = True
            self._producer.pauseProducing()

    def _maybe_resume(self) -> None:
        if (
            self._producer is not None
            and self._paused
            and self._queued <= self.low_watermark
        ):
            self._paused = False
            self._producer.resumeProducing()


@implementer(IPushProducer)
@mutable
class _FileProducer:
    """
    Streams C{remaining} bytes of C{file} to C{consumer}, one block read at a
    time.

    At most one read is in flight, and at most one block is held while the
    consumer has paused us, so memory stays at about one block whatever the
    image size and however slow the consumer. That one block is read ahead
    while paused, so that on resume the socket is not kept waiting for the
    disk. C{_pump} is a loop rather than
    a recursion so that a runner that answers at once does not grow the
    stack with every block.
    """

    runner: BlockingRunner
    consumer: IConsumer
    file: IO[bytes]
    remaining: int
    block_size: int

    _done: Deferred[None] = field(factory=Deferred, init=False)
    _held: bytes | None = field(default=None, init=False)
    _error: Failure | None = field(default=None, init=False)
    _paused: bool = field(default=False, init=False)
    _stopped: bool = field(default=False, init=False)
    _reading: bool = field(default=False, init=False)
    _pumping: bool = field(default=False, init=False)
    _finished: bool = field(default=False, init=False)

    def start(self) -> Deferred[None]:
        try:
            self.consumer.registerProducer(self, True)
        except BaseException:
            self._error = Failure()
            self._finish(unregister=False)
            return self._done
        self._pump()
        return self._done

    # IPushProducer

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        self._stopped = True
        self._pump()

    # Internals

    def _pump(self) -> None:
        if self._pumping:
            return  # the loop below, further up the stack, carries on
        self._pumping = True
        try:
            while not (self._finished or self._reading):
                if self._stopped:
                    self._finish(unregister=False)
                elif self._error is not None:
                    self._finish(unregister=True)
                elif self._held is None and self.remaining == 0:
                    # All written: finish even if the consumer just paused us.
                    self._finish(unregister=True)
                elif self._held is not None:
                    if self._paused:
                        return
                    data, self._held = self._held, None
                    try:
                        self.consumer.write(data)
                    except BaseException:
                        self._error = Failure()
                else:
                    self._reading = True
                    size = min(self.block_size, self.remaining)
                    d = self.runner.run(_read_block, self.file, size)
                    d.addBoth(self._got_block)
        finally:
            self._pumping = False

    def _got_block(self, result: bytes | Failure) -> None:
        self._reading = False
        if isinstance(result, Failure):
            error = StoreError(f"Could not read image data: {_describe(result.value)}")
            error.__cause__ = result.value
            self._error = Failure(error)
        elif not result:
            self._error = Failure(StoreError("The image data ended early"))
        else:
            self.remaining -= len(result)
            self._held = result
        self._pump()

    def _finish(self, unregister: bool) -> None:
        self._finished = True
        self._held = None
        outcome: object = None if self._stopped else self._error

        def closed(result: object) -> None:
            nonlocal outcome
            if isinstance(result, Failure):
                _log.failure("Could not close image data", failure=result)
            if unregister and not self._stopped:
                try:
                    self.consumer.unregisterProducer()
                except BaseException:
                    outcome = outcome or Failure()
            if isinstance(outcome, Failure):
                self._done.errback(outcome)
            else:
                self._done.callback(None)

        self.runner.run(_close, self.file).addBoth(closed)
