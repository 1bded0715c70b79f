"""Fakes shared by several test modules."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from attrs import define, field
from twisted.internet.defer import Deferred, fail
from twisted.python.components import proxyForInterface
from twisted.python.failure import Failure

from glance_tx.registry.interface import IRegistry
from glance_tx.store.interface import IStore
from glance_tx.threads import SynchronousRunner

T = TypeVar("T")


class Pacer(Protocol):
    """Steps the I/O of a paced store by hand."""

    def pending(self) -> int:
        """How many I/O steps are waiting to run."""

    def run_one(self) -> None:
        """Run the oldest waiting step and deliver its result."""


@define
class ManualRunner:
    """
    A L{glance_tx.threads.BlockingRunner} that runs nothing until told to:
    each call waits in a queue until L{run_one} runs it (on the calling
    thread) and fires its Deferred. Also a L{Pacer}.
    """

    _calls: deque[
        tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]
    ] = field(factory=deque, init=False)

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        d: Deferred[T] = Deferred()
        self._calls.append((d, f, args, kwargs))
        return d

    def serial(self) -> ManualRunner:
        return self  # runs its calls in order already

    def pending(self) -> int:
        return len(self._calls)

    def run_one(self) -> None:
        d, f, args, kwargs = self._calls.popleft()
        try:
            result = f(*args, **kwargs)
        except BaseException:
            d.errback(Failure())
        else:
            d.callback(result)

    def run_all(self, limit: int = 100_000) -> None:
        """Run steps, including those they queue, until none is left."""
        drain(self, limit)


def drain(pacer: Pacer, limit: int = 100_000) -> None:
    """Run the pacer's steps until none is left."""
    for _ in range(limit):
        if not pacer.pending():
            return
        pacer.run_one()
    raise AssertionError(f"Still {pacer.pending()} steps pending after {limit}")


#: What a bug's exception says; no client may ever see it.
SECRET_DETAIL = "internal detail: /srv/glance/secret.conf"


# mypy cannot see through a base class made at run time (proxyForInterface).
class BrokenRegistry(proxyForInterface(IRegistry, "registry")):  # type: ignore[misc]
    """
    The wrapped L{IRegistry}, except that C{get} and C{list} fail with a
    C{RuntimeError}, as a bug would.
    """

    def get(self, image_id: str, include_deleted: bool = False) -> Deferred[Any]:
        return fail(RuntimeError(SECRET_DETAIL))

    def list(self, query: Any) -> Deferred[Any]:
        return fail(RuntimeError(SECRET_DETAIL))


class BrokenReadStore(proxyForInterface(IStore, "store")):  # type: ignore[misc]
    """
    The wrapped L{IStore}, except that C{read} writes C{sent} bytes and then
    fails with C{error} (by default a C{RuntimeError}, as a bug would; a
    L{glance_tx.errors.StoreError}, as a disk that breaks mid-download).
    """

    sent = 1000

    def __init__(self, store: IStore, error: Exception | None = None) -> None:
        super().__init__(store)
        self.error = error or RuntimeError(SECRET_DETAIL)

    def read(
        self, location: str, consumer: Any, offset: int = 0, length: int | None = None
    ) -> Deferred[None]:
        consumer.write(b"x" * self.sent)
        return fail(self.error)


@define
class RecordingRunner:
    """
    A synchronous runner that knows when it is running something, so a
    test can tell database work inside C{run} from work outside it.
    """

    calls: int = 0
    inside: bool = False

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        self.calls += 1
        self.inside = True
        try:
            return SynchronousRunner().run(f, *args, **kwargs)
        finally:
            self.inside = False

    def serial(self) -> RecordingRunner:
        return self  # synchronous: in order already
