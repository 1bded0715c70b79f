"""
Where blocking work runs.

The reactor thread never touches a file or the database. Library code takes a
L{BlockingRunner} instead of a thread pool so that tests can run the same code
synchronously and deterministically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class BlockingRunner(Protocol):
    """Runs a blocking callable somewhere that is not the reactor thread."""

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """Run C{f(*args, **kwargs)}; the Deferred fires on the reactor thread."""


@frozen
class ThreadPoolRunner:
    """Production runner: a thread pool the service starts and stops."""

    reactor: IReactorFromThreads
    pool: ThreadPool

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        return deferToThreadPool(self.reactor, self.pool, f, *args, **kwargs)


@frozen
class SynchronousRunner:
    """Test runner: runs the callable at once, on the calling thread."""

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        try:
            return succeed(f(*args, **kwargs))
        except BaseException:
            return fail(Failure())
