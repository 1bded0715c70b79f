"""
Image records answered on the reactor thread while the SQLite database
has not changed since they were read.

A single-image GET read its record on the registry's thread pool, and
the hand-off there and back (waking a pool thread, a C{callFromThread}
to come back, the Deferreds between) cost the reactor thread more than
the rest of the GET: 0.42 ms of CPU per GET with it, 0.22 without, against
0.17 for a bare twisted.web resource (bench/metadata.py, wrk, one worker).
The read itself is under a tenth of that.

So a record read through the pool is kept, and served again without the
pool for as long as nothing has written the database since before it
was read. What tells is Linux's inotify, watching the database file's
directory: every commit, by any connection on this machine -- a pool
thread of this process, another worker, another API node on the same
file -- writes the C{-wal} file (WAL mode, as the registry runs) or the
database itself and its C{-journal} (rollback journal) with C{pwrite},
and the kernel queues the event before that write, and so the commit,
returns. So a request that came after a commit finds the event unread
on the inotify descriptor. At each GET the descriptor is read without
blocking, as a socket is (no file or database is touched on the reactor
thread): any event for those names, an overflowed queue, or the watch
going away (the directory removed or moved) counts as a change and drops
every kept record (a generation counter moves on). The file replaced
(restored from a backup) or removed is an event of its name too. The
generation is taken before the read is handed to the pool, so a commit
that lands while the read runs makes its answer not kept. The descriptor
is also read by the reactor as events come, so the queue cannot fill
while idle. Spurious events (a checkpoint, a connection opened) only
send reads to the pool until the next one is kept.

The watch is set up on the pool. Where there is no inotify (not Linux,
the per-user limit of instances reached, the watch refused), that is
logged once and every read goes to the pool, as for an in-memory SQLite
database (no second connection writes it) and PostgreSQL (nothing cheap
to ask). Not covered: a database on a network filesystem written from
another machine, which raises no local event -- and which SQLite's
locking does not support anyway. Nor writes through a writable memory
map (SQLite only maps the file for writing when built with
SQLITE_MMAP_READWRITE, which Python's is not).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from glance_tx.images import Image
from glance_tx.registry.kept import Kept

log = Logger()

#: How many records are kept, the least recently used going first when full
#: (all are dropped at the database's next change).
FRESH_KEPT = 4096

# <sys/inotify.h>
IN_MODIFY = 0x2
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

#: The events of the directory's entries that may be a commit: a write
#: (IN_MODIFY, a truncate too), the file made, removed or renamed over.
#: Not IN_CLOSE_WRITE nor IN_ATTRIB, which no change needs (every write is
#: an IN_MODIFY first) and which readers raise: SQLite opens the file for
#: writing to read it, and run as root it fchowns the C{-wal} at a new
#: connection's first read, so every sqlite3 shell or backup reading the
#: file would drop the records for nothing.
CHANGES = IN_MODIFY | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
#: The events that end the watch (or lose events): a change, and no watch.
GONE = IN_Q_OVERFLOW | IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT
#: What the directory is watched for (the kernel always adds the rest of GONE).
WATCHED = CHANGES | IN_DELETE_SELF | IN_MOVE_SELF

_EVENT = struct.Struct("iIII")


def _libc() -> Any:
    # The process's own symbols: libc's, without find_library's ldconfig
    # subprocess (a tenth of a second, at every registry's start).
    return ctypes.CDLL(None, use_errno=True)


@define
class Watch:
    """
    An inotify descriptor watching a database file's directory. Made on
    the pool (L{open_watch}); read and closed on the reactor thread.
    """

    fd: int
    #: The entries of the directory that are the database: the file,
    #: its C{-wal} and C{-journal}.
    names: frozenset[bytes]
    #: Set once the watch went away (the directory removed or moved).
    gone: bool = False

    def changed(self) -> bool:
        """
        Whether any event for the database was queued since the last
        call: reads every queued event, never blocking.
        """
        changed = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return changed
            except OSError:
                self.gone = True
                return True
            if not data:
                return changed
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, mask, _, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                name = data[offset : offset + length].rstrip(b"\0")
                offset += length
                if mask & GONE:
                    self.gone = changed = True
                elif name in self.names:
                    changed = True

    def close(self) -> None:
        os.close(self.fd)


def open_watch(path: str) -> Watch:
    """
    Watch the directory of the database file at C{path} (blocking: run
    on the pool). OSError where inotify is missing or refuses.
    """
    try:
        libc = _libc()
        init, add = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError) as e:
        raise OSError(errno.ENOSYS, f"no inotify: {e}") from e
    add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    fd = init(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, "inotify_init1: " + os.strerror(err))
    directory, name = os.path.split(os.fsencode(path))
    if add(fd, directory, WATCHED) < 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, "inotify_add_watch: " + os.strerror(err))
    return Watch(fd, frozenset({name, name + b"-wal", name + b"-journal"}))


@implementer(IReadDescriptor)
@define(eq=False)
class _Reader:
    """The watch's descriptor in the reactor: events read as they come."""

    fresh: FreshImages
    fd: int

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        self.fresh.version()

    def connectionLost(self, reason: Failure) -> None:
        pass

    def logPrefix(self) -> str:
        return "FreshImages"


@define
class FreshImages:
    """
    The image records read since the database last changed (see the
    module docstring). Every method runs on the reactor thread.
    """

    #: The database file.
    path: str
    #: Runs a blocking call off the reactor thread (the registry's runner):
    #: where the watch is set up.
    run: Callable[..., Deferred[Any]]
    #: Reads the watch's events as they come; None: read only at each GET.
    reactor: IReactorFDSet | None = None
    #: Sets the watch up (blocking: called through C{run}).
    watch: Callable[[str], Watch] = open_watch
    _watch: Watch | None = field(default=None, init=False)
    _reader: _Reader | None = field(default=None, init=False)
    #: Moves on at each change: the version the kept records were read at.
    _generation: int = field(default=0, init=False)
    _opening: bool = field(default=False, init=False)
    #: Closed, or no inotify here: every read goes to the pool.
    _off: bool = field(default=False, init=False)
    #: By image id, the version each record was read at, and the record.
    _kept: Kept[int, Image] = field(factory=lambda: Kept(FRESH_KEPT), init=False)

    def version(self) -> int | None:
        """
        The database's version now, or None when it cannot be told (read
        through the pool then). A change drops every kept record.
        """
        watch = self._watch
        if watch is None:
            self._open()
            return None
        if watch.changed():
            self._generation += 1
            self._kept.clear()
            if watch.gone:
                self._unwatch()
                self._open()
                return None
        return self._generation

    def kept(self, image_id: str) -> Image | None:
        """The record of C{image_id}, if one was kept at the last L{version}."""
        kept = self._kept.get(image_id)
        return None if kept is None else kept[1]

    def keep(self, image: Image, image_id: str, version: int) -> Image:
        """
        Keep C{image}, read for C{image_id} after the database was at
        C{version}, if it still is. Returns C{image}.
        """
        if self.version() == version:
            self._kept.keep(image_id, version, image)
        return image

    def close(self) -> None:
        """Drop everything and close the watch."""
        self._off = True
        self._unwatch()

    def _unwatch(self) -> None:
        self._kept.clear()
        self._generation += 1
        watch, self._watch = self._watch, None
        reader, self._reader = self._reader, None
        if reader is not None and self.reactor is not None:
            self.reactor.removeReader(reader)
        if watch is not None:
            watch.close()

    def _open(self) -> None:
        if self._opening or self._off:
            return
        self._opening = True

        def opened(watch: Watch) -> None:
            self._opening = False
            if self._off:
                watch.close()
                return
            self._watch = watch
            self._generation += 1
            if self.reactor is not None:
                self._reader = _Reader(self, watch.fd)
                self.reactor.addReader(self._reader)

        def failed(reason: Failure) -> None:
            self._opening = False
            self._off = True
            log.info(
                "Image records read through the pool: cannot watch {path} ({reason})",
                path=self.path,
                reason=reason.getErrorMessage(),
            )

        self.run(self.watch, self.path).addCallbacks(opened, failed)
