"""
The store writer every writable store shares, and the contract its backend
fulfils.

A store says only how bytes reach its backend, by providing
L{IWriteBackend}: write a batch, commit, discard. L{StoreWriter} does the
rest of L{IStoreWriter}: it queues the bytes handed to C{write}, pauses the
registered producer while more than the high watermark is queued (see
L{glance_tx.backpressure}), sends the backend one operation at a time, in
order, gathering everything queued meanwhile into the next batch, and runs
the writer's state machine::

    open --commit()--> committing --> committed
      |                    |    `----> failed     (a write or the commit failed)
      `------abort()-------+---------> aborted    (abort wins until commit fires)

An abort before the commit has fired wins: whatever the backend holds is
discarded (also data it has just committed) and the commit fails. After an
abort or a failed write, further bytes are dropped; the failure surfaces at
C{commit}. A failed write discards at once, to give the space back.

The backend's operations are serialised here and nowhere else: a backend
needs no lock of its own, and one on a thread pool uses the plain
L{glance_tx.threads.BlockingRunner.run}.
"""

from __future__ import annotations

from collections import deque
from typing import Any, cast

from attrs import field, mutable
from twisted.internet.defer import Deferred, DeferredLock, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IProducer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from glance_tx.backpressure import PauseGate, SharedBudget, Watermarks
from glance_tx.errors import GlanceError, StoreError, os_error
from glance_tx.store.describe import describe
from glance_tx.store.interface import IStoreWriter, StoredData

__all__ = ["NETWORK_BUDGET_WEIGHT", "IWriteBackend", "Observers", "StoreWriter"]

#: L{StoreWriter.budget_weight} of the stores across the network (S3, Swift).
NETWORK_BUDGET_WEIGHT = 2

_log = Logger()


class IWriteBackend(Interface):
    """
    How one image's bytes reach a store's backend: a partial file, an S3
    multipart upload, a set of Swift segments.

    L{StoreWriter} calls these one at a time, never starting one before the
    Deferred of the last has fired, in the order C{write}* then at most one
    C{commit}, with C{discard} at most once, at any point (also after a
    failed C{write} or C{commit}, and after a C{commit} that succeeded, when
    an abort came in while it was in flight). A failure may be any
    exception: a L{glance_tx.errors.GlanceError} reaches the client as it
    is, anything else as a L{StoreError} saying what went wrong (an
    L{OSError} without its file names; one of a full disk as
    L{glance_tx.errors.StorageFull}, a 413).
    """

    location = Attribute("The location the data will have once committed (str).")

    def write(chunks: list[bytes]) -> Deferred[None]:
        """Append C{chunks}, in order, to what was written before."""

    def commit() -> Deferred[None]:
        """
        Every byte is written: make the data durable (fsync, complete the
        multipart upload, put the manifest) and visible at C{location}.
        On failure, leave no more than C{discard} can remove.
        """

    def discard() -> Deferred[None]:
        """
        Remove everything written, and the committed data too if
        C{commit} succeeded. Data already gone is not an error.
        """


@mutable
class Observers:
    """A result that any number of callers can wait for, before or after."""

    _result: object = field(default=None, init=False)
    _fired: bool = field(default=False, init=False)
    _waiting: list[Deferred[Any]] = field(factory=list, init=False)

    def when(self) -> Deferred[Any]:
        """A Deferred that fires with the result (at once if it is known)."""
        if not self._fired:
            d: Deferred[Any] = Deferred()
            self._waiting.append(d)
            return d
        if isinstance(self._result, Failure):
            return fail(self._result)
        return succeed(self._result)

    def fire(self, result: object) -> None:
        """Give every waiter, and every later one, C{result}."""
        self._result, self._fired = result, True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)


OPEN = "open"
COMMITTING = "committing"
COMMITTED = "committed"
FAILED = "failed"
ABORTED = "aborted"

#: The L{PauseGate} reason for a queue above its high watermark.
_QUEUE = "queue"


def _as_store_error(failure: Failure, doing: str) -> GlanceError:
    """
    The error a client sees for C{failure}: its own, L{StorageFull} for a
    full disk (L{glance_tx.errors.os_error}), or a L{StoreError}.
    """
    cause = failure.value
    if isinstance(cause, GlanceError):
        return cause
    if isinstance(cause, OSError):
        error = os_error(cause, doing)
    else:
        error = StoreError(f"{doing}: {describe(cause)}")
    error.__cause__ = cause
    return error


@implementer(IStoreWriter)
@mutable
class StoreWriter:
    """
    Writes one image through C{backend}; see the module docstring.

    Bytes passed to C{write} wait in C{_pending} until the next write
    operation takes all of them; C{_queued} counts those plus the ones being
    written, and drives the producer's pause and resume.

    @ivar budget_weight: What each queued byte costs of the shared budget
        (L{share}). A store across the network sets 2: its queue drains at
        the store's pace, not the disk's, so with many uploads in flight
        the writers' queues are what fill the budget, and at 2 they hold
        at most half of it together. 20 uploads of 32 MiB at once
        (2026-12-03): glance-tx's peak RSS S3 154 -> 144 MiB, Swift 156 ->
        148, no slower. A single upload never reaches the budget either way.
    """

    backend: IWriteBackend
    watermarks: Watermarks
    budget_weight: int = 1

    _state: str = field(default=OPEN, init=False)
    _lock: DeferredLock = field(factory=DeferredLock, init=False)
    _pending: deque[bytes] = field(factory=deque, init=False)
    _queued: int = field(default=0, init=False)
    _write_scheduled: bool = field(default=False, init=False)
    _written: int = field(default=0, init=False)
    _error: Failure | None = field(default=None, init=False)
    _discarded: bool = field(default=False, init=False)
    _aborted: Observers | None = field(default=None, init=False)
    _gate: PauseGate = field(factory=PauseGate, init=False)
    _budget: SharedBudget | None = field(default=None, init=False)
    #: How much of C{_queued} the budget has been told of.
    _counted: int = field(default=0, init=False)

    @property
    def error(self) -> GlanceError | None:
        """See L{IStoreWriter.error}."""
        if self._error is None:
            return None
        return _as_store_error(self._error, "Could not store image data")

    @property
    def state(self) -> str:
        """One of C{open}, C{committing}, C{committed}, C{failed}, C{aborted}."""
        return self._state

    # IConsumer

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self._gate.producer is not None:
            raise RuntimeError("A producer is already registered")
        if not streaming:
            raise ValueError("A store writer takes only streaming (push) producers")
        self._gate.attach(cast(IPushProducer, producer))

    def unregisterProducer(self) -> None:
        self._gate.detach()

    def write(self, data: bytes) -> None:
        """
        Queue C{data}. After C{abort}, or once a write has failed (C{commit}
        will say so), data is dropped; after C{commit} this raises.
        """
        if self._state == ABORTED or self._error is not None:
            return
        if self._state != OPEN:
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
        self._flow()

    # IStoreWriter

    def share(self, budget: SharedBudget) -> None:
        self._budget = budget
        self._flow()

    def commit(self) -> Deferred[StoredData]:
        if self._state == ABORTED:
            return fail(StoreError("The upload was aborted"))
        if self._state != OPEN:
            return fail(StoreError("commit() was already called"))
        self._state = COMMITTING
        return Deferred.fromCoroutine(self._commit())

    def abort(self) -> Deferred[None]:
        if self._state == COMMITTED:
            return succeed(None)
        if self._aborted is None:
            self._state = ABORTED
            self._drop_pending()
            # Nothing is kept any more: let the producer run (its data is
            # dropped) rather than leave it paused for ever.
            self._flow()
            self._aborted = Observers()
            self._lock.run(self._discard).addBoth(self._aborted.fire)
        return self._aborted.when()

    # The rest runs under the lock or on its results.

    async def _commit(self) -> StoredData:
        await self._lock.run(self._finish)
        if self._state == ABORTED:
            raise StoreError("The upload was aborted")
        if self._error is not None:
            self._state = FAILED
            raise _as_store_error(self._error, "Could not store image data")
        self._state = COMMITTED
        return StoredData(location=self.backend.location, size=self._written)

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
                self._flow()
                # Give the space back now, not at commit().
                return self._discard().addErrback(self._log_discard_failure)
            self._written += size
            self._flow()
            return None

        return maybeDeferred(self.backend.write, chunks).addBoth(written)

    def _finish(self) -> Deferred[None]:
        if self._state == ABORTED:
            return succeed(None)  # abort()'s discard is queued behind us
        if self._error is not None:
            return self._discard().addErrback(self._log_discard_failure)

        def failed(failure: Failure) -> Deferred[None]:
            self._error = failure
            return self._discard().addErrback(self._log_discard_failure)

        return maybeDeferred(self.backend.commit).addErrback(failed)

    def _discard(self) -> Deferred[None]:
        if self._discarded:
            return succeed(None)
        self._discarded = True

        def failed(failure: Failure) -> Failure:
            raise _as_store_error(failure, "Could not remove image data")

        return maybeDeferred(self.backend.discard).addErrback(failed)

    def _log_unexpected(self, failure: Failure) -> None:
        _log.failure("Unexpected error in a store writer", failure=failure)

    def _log_discard_failure(self, failure: Failure) -> None:
        _log.failure(
            "Could not remove the incomplete data for {location}",
            failure=failure,
            location=self.backend.location,
        )

    def _drop_pending(self) -> None:
        self._queued -= sum(map(len, self._pending))
        self._pending.clear()

    def _flow(self) -> None:
        """Called after every change of C{_queued}."""
        self.watermarks.apply(self._gate, _QUEUE, self._queued)
        charge = self._queued * self.budget_weight
        if self._budget is not None and self._counted != charge:
            self._budget.add(charge - self._counted)
            self._counted = charge
