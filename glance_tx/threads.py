"""
Where blocking work runs.

The reactor thread never touches a file or the database (it reads sockets,
pipes and an inotify descriptor, which never block). Library code takes a
L{BlockingRunner} instead of a thread pool so that tests can run the same code
synchronously and deterministically.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")

log = Logger()


class BlockingRunner(Protocol):
    """Runs a blocking callable somewhere that is not the reactor thread."""

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """Run C{f(*args, **kwargs)}; the Deferred fires on the reactor thread."""

    def serial(self) -> BlockingRunner:
        """
        A runner whose calls run one at a time, in the order they were
        made: what one stream of writes or hash updates needs.
        """


@frozen
class ThreadPoolRunner:
    """Production runner: a thread pool the service starts and stops."""

    reactor: IReactorFromThreads
    pool: ThreadPool

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        return deferToThreadPool(self.reactor, self.pool, f, *args, **kwargs)

    def serial(self) -> SerialPoolRunner:
        return SerialPoolRunner(self.reactor, self.pool)

    def draining(self, width: int) -> SerialPoolRunner:
        """
        A runner whose calls queue here and are drained by at most
        C{width} pool threads at once (see L{SerialPoolRunner}).
        """
        return SerialPoolRunner(self.reactor, self.pool, width)


_Call = tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class SerialPoolRunner:
    """
    Runs calls on a thread pool, started in the order they were made, at
    most C{width} at once: with the default of 1, one at a time, in order.

    The pool thread that finishes a call takes the next queued one itself.
    An upload's hash updates and writes are such a stream: chained through
    the reactor (a L{DeferredLock} around L{ThreadPoolRunner.run}) each call
    would wait for the reactor thread to see the last one finish and to
    hand the next to the pool, and that hand-off costs the reactor thread
    more than the bytes it receives. Short database reads are another
    (L{ThreadPoolRunner.draining}): handing each to a sleeping pool thread
    wakes it (C{Condition.notify}, a futex across vCPUs), and that wake was
    38% of the reactor thread's GIL time per image GET under wrk (py-spy);
    while a draining thread is busy, a new call only joins the queue.
    After C{fair_share} calls in a row the thread goes back to the end of
    the pool's queue, so one busy stream cannot keep a thread from other
    work for long.

    The way back is batched too: results wait in one queue, and only the
    first that finds no delivery pending asks the reactor
    (C{callFromThread}, a write to its waker and a wake of C{epoll}); the
    reactor then fires every result that has arrived by the time it runs,
    in the order they finished.
    """

    fair_share = 8

    def __init__(self, reactor: IReactorFromThreads, pool: ThreadPool, width: int = 1) -> None:
        self._reactor = reactor
        self._pool = pool
        self._width = width
        self._calls: deque[_Call] = deque()
        self._lock = threading.Lock()
        self._draining = 0
        self._done: deque[tuple[Deferred[Any], bool, Any]] = deque()
        self._delivering = False

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        d: Deferred[T] = Deferred()
        with self._lock:
            self._calls.append((d, f, args, kwargs))
            # Another thread only if there are more calls waiting than
            # threads draining, each of which takes the next one.
            if self._draining >= self._width or len(self._calls) <= self._draining:
                return d
            self._draining += 1
        self._pool.callInThread(self._drain)
        return d

    def serial(self) -> SerialPoolRunner:
        return self if self._width == 1 else SerialPoolRunner(self._reactor, self._pool)

    def _drain(self) -> None:
        for _ in range(self.fair_share):
            with self._lock:
                if not self._calls:
                    self._draining -= 1
                    return
                d, f, args, kwargs = self._calls.popleft()
            try:
                outcome: tuple[Deferred[Any], bool, Any] = (d, True, f(*args, **kwargs))
            except BaseException:
                outcome = (d, False, Failure())
            with self._lock:
                self._done.append(outcome)
                if self._delivering:
                    continue
                self._delivering = True
            self._reactor.callFromThread(self._deliver)
        self._pool.callInThread(self._drain)

    def _deliver(self) -> None:
        """On the reactor thread: fire every result that has arrived."""
        with self._lock:
            done = list(self._done)
            self._done.clear()
            self._delivering = False
        for d, ok, value in done:
            try:
                if ok:
                    d.callback(value)
                else:
                    d.errback(value)
            except Exception:
                # As callFromThread would: one caller's trouble is logged,
                # and the other results are still delivered.
                log.failure("Delivering a pool call's result")


#: The highest niceness Linux has (the lowest priority).
MAX_NICE = 19


def lower_priority(increment: int) -> None:
    """
    Make the calling thread C{increment} nicer (lower priority), to at most
    L{MAX_NICE}. Linux only, where niceness belongs to each thread: with
    C{PRIO_PROCESS} and a thread's id, C{setpriority} changes that thread
    alone (elsewhere the id would name a process: nothing is done). A
    refusal is logged; the thread runs on as it was.
    """
    if increment <= 0 or not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    try:
        nice = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(MAX_NICE, nice + increment))
    except OSError as e:
        log.warn("Could not lower a pool thread's priority: {e}", e=e)


def nicer_threads(increment: int) -> type[threading.Thread]:
    """
    A C{ThreadPool.threadFactory} whose threads run C{increment} nicer than
    the thread that made them (L{lower_priority}).

    For the pool of bulk work (hashing, writing and reading image data):
    with 20 uploads in flight its threads are up to C{thread_pool_size}
    runnable threads, and the kernel gives each the same share of the
    CPUs as the reactor thread, which must parse, answer and hand off for
    every client. A metadata GET waits for the reactor several times (to
    read the request, to hear back from the registry's thread, to send the
    answer), and each wait was mostly the reactor thread runnable but not
    running (bench/RESULTS.md, "A metadata GET behind uploads: waiting for
    a CPU"). Nicer bulk threads give way to the reactor and the registry's
    threads when the CPUs are short, and use them fully when they are not.
    """

    class NicerThread(threading.Thread):
        def run(self) -> None:
            lower_priority(increment)
            super().run()

    return NicerThread


@frozen
class SynchronousRunner:
    """Test runner: runs the callable at once, on the calling thread."""

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        try:
            return succeed(f(*args, **kwargs))
        except BaseException:
            return fail(Failure())

    def serial(self) -> SynchronousRunner:
        return self
