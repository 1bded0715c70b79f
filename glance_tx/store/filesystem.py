"""
The filesystem store: image data as plain files in one directory.

Committed data lives at C{<root>/<image id>} and is named by the location
C{file://<root>/<image id>} (the path percent-encoded, so a plain path reads
as itself). A write goes to C{<root>/incoming/<image id>.<random>.partial}
and is fsynced and renamed into place only at commit, so a crash never
leaves half an image at a final name; L{FilesystemStore.discard_incomplete}
removes what a crash leaves in C{incoming/}. While the data arrives, the
kernel is asked to start writing each L{WRITEBACK_STEP} of it to the disk
(L{_start_writeback}), so that the disk works during the upload and the
fsync at commit has little left to do.

The file-specific parts are L{_PartialFile}, the L{IWriteBackend} a
L{StoreWriter} writes through, and L{_OpenFile}, the L{IBlockSource} a
L{BlockProducer} reads from; queueing, backpressure and the writer's states
are theirs (L{glance_tx.store.writer}, L{glance_tx.store.reader}).

Every file system call runs on the L{BlockingRunner}, never on the reactor
thread. Only the parsing of a location happens inline: a location is
accepted only when it is a C{file:} URI with no host, query or fragment,
whose path is already normal (no C{.}, C{..} or empty segments, after
percent-decoding), whose last segment is a canonical image id and whose
directory resolves (symlinks included) to the store's root. The file itself
is then opened at C{<real root>/<image id>} without following a symlink.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import mmap
import os
import posixpath
import secrets
import stat
import tempfile
from collections.abc import Callable
from typing import IO, Any, ClassVar, TypeVar
from urllib.parse import quote, unquote, urlsplit

from attrs import field, frozen, mutable
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer
from twisted.python.filepath import FilePath
from zope.interface import implementer

from glance_tx.backpressure import Watermarks
from glance_tx.config import StoreConfig
from glance_tx.errors import BadRequest, NotFound, StoreError, os_error
from glance_tx.images import is_image_id, validate_image_id
from glance_tx.store.describe import describe
from glance_tx.store.factory import StoreServices
from glance_tx.store.interface import FileRange, IFileRanges, IStore, IStoreWriter
from glance_tx.store.reader import BlockProducer, IBlockSource, check_read_range
from glance_tx.store.writer import IWriteBackend, StoreWriter
from glance_tx.threads import BlockingRunner

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_HIGH_WATERMARK",
    "DEFAULT_LOW_WATERMARK",
    "LOAD_WINDOW",
    "FilesystemStore",
    "filesystem_datadir",
    "make_filesystem_store",
]

MiB = 1024 * 1024

_Opened = TypeVar("_Opened")

#: How many bytes one read of committed data asks for.
DEFAULT_BLOCK_SIZE = 1 * MiB
#: A writer pauses its producer when more unwritten bytes than this are queued.
DEFAULT_HIGH_WATERMARK = 4 * MiB
#: ... and resumes it once no more than this many are left.
DEFAULT_LOW_WATERMARK = 1 * MiB

#: Every this many bytes written, the kernel is asked to start writing them
#: to the disk (L{_start_writeback}).
WRITEBACK_STEP = 8 * MiB

INCOMING = "incoming"
PARTIAL_SUFFIX = ".partial"

def _as_filepath(root: FilePath[Any] | str | os.PathLike[str]) -> FilePath[str]:
    if isinstance(root, FilePath):
        return root.asTextMode()
    return FilePath(os.fspath(root))


def _positive(instance: object, attribute: Any, value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, not {value}")


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
        raise os_error(e, "Could not read image data") from e
    try:
        size = os.fstat(f.fileno()).st_size
        available = max(0, size - offset)
        remaining = available if length is None else min(length, available)
        if remaining:
            f.seek(offset)
    except OSError as e:
        f.close()
        raise os_error(e, "Could not read image data") from e
    except BaseException:
        f.close()
        raise
    return f, remaining


def _open_for_sendfile(
    root: str, directory: str, image_id: str, offset: int, length: int | None
) -> tuple[IO[bytes], int, bool]:
    """
    As L{_open_for_read}, then tell the kernel the range will be read in
    order and L{_load} its first L{LOAD_WINDOW}, so the sender (on the
    reactor thread: see L{glance_tx.api.sendfile}) starts from the page
    cache; and whether L{_resident} can be trusted for the file
    (L{_may_probe}).
    """
    f, remaining = _open_for_read(root, directory, image_id, offset, length)
    may_probe = False
    if remaining:
        try:
            may_probe = _may_probe(f)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(f.fileno(), offset, remaining, os.POSIX_FADV_SEQUENTIAL)
            _load(f, offset, min(remaining, LOAD_WINDOW))
        except OSError:
            pass  # the sender reads the same bytes, and says what failed
        except BaseException:
            f.close()
            raise
    return f, remaining, may_probe


#: How much of a range one L{_load} reads into the page cache.
LOAD_WINDOW = 8 * MiB


def _load(f: IO[bytes], offset: int, length: int) -> None:
    """
    Read C{(offset, length)} of C{f} into the page cache, returning once
    the pages are there (or the file ends): C{sendfile} to C{/dev/null},
    which waits for the disk like any read but copies nothing to user
    space (a cached window costs a few microseconds per MiB). Where the
    kernel refuses that, C{pread} it. The next C{length} is asked for
    first (C{WILLNEED}), so the disk reads on while the window is sent:
    one window at a time alone, cold downloads ran at half the speed.
    """
    end = offset + length
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(f.fileno(), end, length, os.POSIX_FADV_WILLNEED)
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            while offset < end:
                sent = os.sendfile(null, f.fileno(), offset, end - offset)
                if sent == 0:
                    return
                offset += sent
        finally:
            os.close(null)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        while offset < end:
            block = os.pread(f.fileno(), min(MiB, end - offset), offset)
            if not block:
                return
            offset += len(block)


@functools.cache
def _mincore() -> tuple[Any, Any, Any] | None:
    """
    libc's C{mmap}, C{mincore(2)} and C{munmap} (C{mincore} is not in
    C{os}; Python's C{mmap} module hides a read-only mapping's address),
    or None where there are none.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mmap_, mincore, munmap = libc.mmap, libc.mincore, libc.munmap
    except (OSError, AttributeError):
        return None
    mmap_.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64
    ]
    mmap_.restype = ctypes.c_void_p
    mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    mincore.restype = ctypes.c_int
    munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    munmap.restype = ctypes.c_int
    return mmap_, mincore, munmap


_PAGE = mmap.PAGESIZE
_MAP_FAILED = ctypes.c_void_p(-1).value
#: C{mincore}'s vector: only each byte's low bit says "resident".
_LOW_BIT = bytes(i & 1 for i in range(256))


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")
    ]


#: C{cachestat(2)}'s system call number (Linux 6.5; the same on every
#: architecture: the generic table's).
_NR_CACHESTAT = 451


@functools.cache
def _cachestat() -> Any | None:
    """libc's C{syscall}, for C{cachestat(2)} (not in C{os}), or None."""
    try:
        call = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    call.restype = ctypes.c_long
    return call


def _cached_pages(fd: int, start: int, size: int) -> int | None:
    """How many pages of C{(start, size)} C{cachestat} counts cached, or None."""
    call = _cachestat()
    if call is None:
        return None
    stat = _Cachestat()
    span = _CachestatRange(start, size)
    if call(
        ctypes.c_long(_NR_CACHESTAT), ctypes.c_int(fd), ctypes.byref(span),
        ctypes.byref(stat), ctypes.c_uint(0),
    ) != 0:
        return None  # ENOSYS before Linux 6.5, or refused
    return int(stat.nr_cache)


def _resident(fd: int, offset: int, length: int) -> bool:
    """
    Whether every page of C{(offset, length)} of C{fd} is in the page cache,
    told without touching the disk (so on the reactor thread): from
    C{cachestat(2)} (about 8 microseconds for 16 MiB), else C{mincore(2)}
    over a fresh read-only mapping of the range, which maps nothing in and
    reads nothing (about 260 microseconds for 16 MiB: a page at a time),
    where a pool load of a cached window is a thread round trip and a
    copy to C{/dev/null}. False where neither can tell. Only for a file
    this process may write (L{_may_probe}): Linux reports every page of
    any other file resident to C{mincore}.
    """
    if length <= 0:
        return False
    start = offset - offset % _PAGE
    size = offset + length - start
    pages = -(-size // _PAGE)
    cached = _cached_pages(fd, start, size)
    if cached is not None:
        return cached >= pages
    calls = _mincore()
    if calls is None:
        return False
    mmap_, mincore, munmap = calls
    address = mmap_(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, start)
    if address is None or address == _MAP_FAILED:
        return False
    try:
        vector = ctypes.create_string_buffer(pages)
        if mincore(address, size, vector) != 0:
            return False
        return b"\0" not in vector.raw.translate(_LOW_BIT)
    finally:
        munmap(address, size)


def _may_probe(f: IO[bytes]) -> bool:
    """
    Whether L{_resident} tells the truth for C{f}: since Linux 5.2 C{mincore}
    reports a file's pages as they are only to its owner or a process that
    may write it (root may), and every page resident to anyone else; a
    sender trusting that would read a cold file on the reactor thread.
    (C{cachestat} has no such rule, but one may come; the data directory's
    files are the service's own anyway.)
    """
    euid = os.geteuid()
    return euid == 0 or os.fstat(f.fileno()).st_uid == euid


def _read_block(f: IO[bytes], size: int) -> bytes:
    return f.read(size) or b""


def _size(root: str, directory: str, image_id: str) -> int:
    path = _resolve(root, directory, image_id)
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise NotFound(f"No image data for image {image_id}") from e
    except OSError as e:
        raise os_error(e, "Could not read image data") from e
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
        raise os_error(e, "Could not delete image data") from e


def _list_images(root: str) -> list[str]:
    try:
        with os.scandir(root) as entries:
            return [
                entry.name
                for entry in entries
                if is_image_id(entry.name) and entry.is_file(follow_symlinks=False)
            ]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise os_error(e, "Could not list image data") from e


def _discard_incoming(incoming: str, image_id: str | None) -> int:
    removed = 0
    try:
        with os.scandir(incoming) as scan:
            entries = list(scan)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                continue
            if image_id is not None and not entry.name.startswith(f"{image_id}."):
                continue
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed += 1
    except (FileNotFoundError, NotADirectoryError):
        return removed
    except OSError as e:
        raise os_error(e, "Could not remove incomplete data") from e
    return removed


def _ping(root: str) -> None:
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise StoreError(f"The image directory {root} does not exist") from None
    except OSError as e:
        raise StoreError(
            f"Cannot reach the image directory {root}: {describe(e)}"
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
            f"The image directory {root} is not writable: {describe(e)}"
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
        raise os_error(e, "Could not start writing image data") from e


def _write_chunks(f: IO[bytes], chunks: list[bytes]) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            written = f.write(view)
            if written is None:  # only a non-blocking file does this
                raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
            view = view[written:]


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's C{sync_file_range(2)} (not in C{os}), or None where there is none."""
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call  # type: ignore[no-any-return]


#: C{sync_file_range}'s C{SYNC_FILE_RANGE_WRITE}: start writeback, do not wait.
_SYNC_FILE_RANGE_WRITE = 2


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """
    Ask the kernel to start writing C{(offset, length)} of C{fd} to the
    disk now, while the upload goes on, rather than all of it in the fsync
    at commit: the disk works while the rest arrives, and the fsync that an
    upload's answer waits for has little left to do. Only a hint (the
    fsync still makes the data durable); where there is no
    C{sync_file_range}, or it fails, nothing happens.
    """
    call = _sync_file_range()
    if call is not None:
        call(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


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


# Building the store from its config section.


def filesystem_datadir(config: StoreConfig, data_dir: str) -> str:
    """
    The directory of a filesystem store: its C{filesystem_store_datadir},
    by default C{images} under the service's data directory.
    """
    return config.options.get("filesystem_store_datadir") or os.path.join(
        data_dir, "images"
    )


async def make_filesystem_store(
    config: StoreConfig, services: StoreServices
) -> FilesystemStore:
    """The L{glance_tx.store.factory.StoreFactory} of C{file} stores."""
    root = filesystem_datadir(config, services.data_dir)
    await services.runner.run(os.makedirs, root, exist_ok=True)
    return FilesystemStore(root, services.runner)


# Reactor-side objects.


@frozen
class _Location:
    """A location that passed the lexical checks, not yet resolved."""

    directory: str
    image_id: str


@implementer(IStore, IFileRanges)
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
    high_watermark: int = DEFAULT_HIGH_WATERMARK
    low_watermark: int = DEFAULT_LOW_WATERMARK

    def __attrs_post_init__(self) -> None:
        self.watermarks  # noqa: B018 -- refuse a bad pair now, not at the first upload

    @property
    def watermarks(self) -> Watermarks:
        """When each writer pauses and resumes its producer."""
        return Watermarks(high=self.high_watermark, low=self.low_watermark)

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
        if not is_image_id(name):
            raise BadRequest(refusal)
        return _Location(directory, name)

    def open_writer(self, image_id: str, size: int | None = None) -> Deferred[IStoreWriter]:
        try:
            image_id = validate_image_id(image_id)
        except BadRequest:
            return fail()
        final = self.root.child(image_id).path
        d = self.runner.run(_open_partial, self.incoming.path, image_id)

        def opened(result: tuple[IO[bytes], str]) -> IStoreWriter:
            f, partial = result
            backend = _PartialFile(
                runner=self.runner,
                file=f,
                partial=partial,
                final=final,
                location=self.location_for(image_id),
            )
            return StoreWriter(backend, self.watermarks)

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
        d = self._open(_open_for_read, location, offset, length)

        def opened(result: tuple[IO[bytes], int]) -> Deferred[None]:
            f, remaining = result
            producer = BlockProducer(
                source=_OpenFile(self.runner, f),
                consumer=consumer,
                remaining=remaining,
                block_size=self.block_size,
            )
            return producer.start()

        return d.addCallback(opened)

    def open_range(
        self, location: str, offset: int = 0, length: int | None = None
    ) -> Deferred[FileRange]:
        """See L{IFileRanges.open_range}: the file as L{read} opens it."""
        d = self._open(_open_for_sendfile, location, offset, length)

        def opened(result: tuple[IO[bytes], int, bool]) -> FileRange:
            f, remaining, may_probe = result
            end = offset + remaining

            def load(start: int, length: int) -> Deferred[None]:
                # A window already cached (a warm file, most downloads) needs
                # no pool load: sendfile will not wait for it. The next
                # window must be cached too, else the pool load still runs
                # for the WILLNEED it asks for the next one (cold speed).
                ahead = min(end, start + 2 * length) - start
                if may_probe and _resident(f.fileno(), start, ahead):
                    return succeed(None)
                return self.runner.run(_load, f, start, length)

            return FileRange(
                f,
                offset,
                remaining,
                lambda: self.runner.run(_close, f),
                load=load,
                loaded=min(remaining, LOAD_WINDOW),
            )

        return d.addCallback(opened)

    def _open(
        self,
        opener: Callable[[str, str, str, int, int | None], _Opened],
        location: str,
        offset: int,
        length: int | None,
    ) -> Deferred[_Opened]:
        """
        Check C{location} and the range before any I/O, then open the data
        with C{opener} on the runner (for L{read} and L{open_range} alike).
        """
        try:
            where = self._parse(location)
            check_read_range(offset, length)
        except BadRequest:
            return fail()
        return self.runner.run(
            opener, self.root.path, where.directory, where.image_id, offset, length
        )

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

    def discard_incomplete(self, image_id: str | None = None) -> Deferred[int]:
        """
        See L{IStore.discard_incomplete}: removes every file in
        C{<root>/incoming} (those of writers still open too), or with
        C{image_id} its C{<image id>.<random>.partial} files only.
        """
        return self.runner.run(_discard_incoming, self.incoming.path, image_id)

    def ping(self) -> Deferred[None]:
        """
        Fire when the root is a readable directory in which a file can be
        created and removed; otherwise fail with a L{StoreError} naming the
        directory and the problem.
        """
        return self.runner.run(_ping, self.root.path)


@implementer(IWriteBackend)
@mutable
class _PartialFile:
    """
    One image being written: to its partial file, then renamed to
    C{final} at commit. Every call runs on the runner; L{StoreWriter}
    makes them one at a time.
    """

    runner: BlockingRunner
    file: IO[bytes]
    partial: str
    final: str
    location: str
    writeback_step: int = WRITEBACK_STEP
    _renamed: bool = field(default=False, init=False)
    #: Bytes written, and where the range not yet given to
    #: L{_start_writeback} begins; both only touched on the runner.
    _written: int = field(default=0, init=False)
    _writeback_from: int = field(default=0, init=False)

    def write(self, chunks: list[bytes]) -> Deferred[None]:
        return self.runner.run(self._write, chunks)

    def _write(self, chunks: list[bytes]) -> None:
        """On the runner: append C{chunks}, and start the writeback of each step."""
        _write_chunks(self.file, chunks)
        self._written += sum(map(len, chunks))
        if self._written - self._writeback_from >= self.writeback_step:
            _start_writeback(
                self.file.fileno(), self._writeback_from, self._written - self._writeback_from
            )
            self._writeback_from = self._written

    def commit(self) -> Deferred[None]:
        d = self.runner.run(_finish, self.file, self.partial, self.final)
        return d.addCallback(self._did_rename)

    def _did_rename(self, _: None) -> None:
        self._renamed = True

    def discard(self) -> Deferred[None]:
        final = self.final if self._renamed else None
        return self.runner.run(_discard, self.file, self.partial, final)


@implementer(IBlockSource)
@frozen
class _OpenFile:
    """Committed data being read, a block at a time on the runner."""

    runner: BlockingRunner
    file: IO[bytes]

    def read_block(self, size: int) -> Deferred[bytes]:
        return self.runner.run(_read_block, self.file, size)

    def close(self) -> Deferred[None]:
        return self.runner.run(_close, self.file)
