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
pool for as long as SQLite says that nothing was committed to the
database since before it was read: C{PRAGMA data_version}, asked on a
connection of our own that never writes, changes whenever any other
connection -- a pool thread of this process, another worker, another
API node on the same file -- commits. The value is taken before the read
is handed to the pool, so a commit that lands while the read runs also
makes it stale. Any commit makes every kept record stale: the check is
one cheap question of the whole database, not of one row, and the pool
answers until the next read has been kept. Another API node's write is
never missed, as the database is read after the request came.

That question is the only thing run on the reactor thread: it reads no
table (a shared read lock on the wal-index taken and dropped with
non-blocking C{fcntl}, the file's size, and after a change the header
page, from the OS's cache), on a connection whose busy timeout is 0, so
a locked database is an answer of "cannot tell" at once, never a wait;
"cannot tell" (an error, a lock, the connection still opening) reads
through the pool. The connection is opened and closed on the pool. As
the pool's connections do (L{glance_tx.registry.sql.engine}), it checks
that the database is still the file it opened: one replaced (restored
from a backup) is dropped, with what was kept.

Only for a SQLite file: an in-memory database has no second connection,
and PostgreSQL has no question this cheap (every statement is a round
trip to the server), so there every read goes to the pool.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from glance_tx.images import Image
from glance_tx.registry.sql.engine import existing_file_connection, file_inode

log = Logger()

#: How many records are kept (all are dropped at the database's next change).
FRESH_KEPT = 4096

#: What the probe connection may answer: the database's state, as
#: (which connection asked, its C{data_version}).
Version = tuple[int, int]


@define
class FreshImages:
    """
    The image records read since the database last changed (see the
    module docstring). Every method but C{connect} runs on the reactor
    thread.
    """

    #: The database file.
    path: str
    #: Runs a blocking call off the reactor thread (the registry's runner):
    #: where the probe connection is opened and closed.
    run: Callable[..., Deferred[Any]]
    #: Opens the probe connection (blocking: called through C{run}).
    connect: Callable[[], sqlite3.Connection] = field()
    _probe: sqlite3.Connection | None = field(default=None, init=False)
    #: The file the probe opened (device, inode).
    _inode: tuple[int, int] | None = field(default=None, init=False)
    #: Counts the probes opened: a new one's data_version starts afresh.
    _generation: int = field(default=0, init=False)
    _opening: bool = field(default=False, init=False)
    _closed: bool = field(default=False, init=False)
    #: The version the kept records were read at or after.
    _version: Version | None = field(default=None, init=False)
    _kept: dict[str, Image] = field(factory=dict, init=False)

    @connect.default
    def _connect_file(self) -> Callable[[], sqlite3.Connection]:
        return lambda: existing_file_connection(
            self.path, check_same_thread=False, timeout=0, isolation_level=None
        )

    def version(self) -> Version | None:
        """
        The database's version now, or None when it cannot be told at once
        (read through the pool then). A change drops every kept record.
        """
        probe = self._probe
        if probe is None:
            self._open()
            return None
        try:
            if file_inode(self.path) != self._inode:
                raise sqlite3.OperationalError(f"{self.path} was removed or replaced")
            row = probe.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error as e:
            log.info("Image records read through the pool: {reason}", reason=str(e))
            self._drop()
            return None
        version = (self._generation, row[0])
        if version != self._version:
            self._kept.clear()
            self._version = version
        return version

    def kept(self, image_id: str) -> Image | None:
        """The record of C{image_id}, if one was kept at the last L{version}."""
        return self._kept.get(image_id)

    def keep(self, image: Image, image_id: str, version: Version) -> Image:
        """
        Keep C{image}, read for C{image_id} after the database was at
        C{version}, if it still is (the pool may have read a later one: a
        commit since, which the next L{version} sees). Returns C{image}.
        """
        if version == self._version:
            if len(self._kept) >= FRESH_KEPT:
                self._kept.clear()
            self._kept[image_id] = image
        return image

    def close(self) -> None:
        """Drop everything and close the probe (through C{run})."""
        self._closed = True
        self._drop()

    def _forget(self) -> None:
        self._kept.clear()
        self._version = None

    def _drop(self) -> None:
        probe, self._probe = self._probe, None
        self._forget()
        if probe is not None:
            self.run(probe.close).addErrback(
                lambda f: log.failure("Closing the registry's probe connection", f)
            )

    def _open(self) -> None:
        if self._opening or self._closed:
            return
        self._opening = True

        def opened(result: tuple[sqlite3.Connection, tuple[int, int] | None]) -> None:
            self._opening = False
            probe, inode = result
            if self._closed:
                self.run(probe.close)
                return
            self._probe, self._inode = probe, inode
            self._generation += 1

        def failed(reason: Any) -> None:
            # Tried again at the next read; the pool's reads say what is wrong.
            self._opening = False

        self.run(self._connected).addCallbacks(opened, failed)

    def _connected(self) -> tuple[sqlite3.Connection, tuple[int, int] | None]:
        # The inode first: a file replaced between the two is then
        # noticed at the first version().
        inode = file_inode(self.path)
        return self.connect(), inode
