"""
The reactor for code that runs none: started in a thread of its own, and
calls into it that block the calling thread until they are done.

L{ReactorThread} runs a reactor (the global one, for a script) in a
daemon thread, without signal handlers (those belong to the main
thread). A reactor that already runs (a Twisted program calling the
blocking client from one of its worker threads, as the tests do) is used
as it is.

The reactor thread is a daemon, and so are the threads it starts (its
thread pool, which resolves names and does file I/O): a script exits as
soon as its main thread ends, whatever the reactor is doing. Before the
interpreter goes, an C{atexit} handler stops the reactor and waits (a few
seconds at most) for it, so that its shutdown triggers run: the thread
pool is stopped between two tasks rather than frozen in one.

C{crochet} does the same; it would bring an C{EventualResult} API, a
logging bridge and a global C{setup()} for the one thing needed here,
which is this small module on Twisted's public API.
"""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

__all__ = ["ReactorThread"]


@define
class ReactorThread:
    """Runs C{reactor} in a thread when nothing else does; calls into it."""

    reactor: Any
    _thread: threading.Thread | None = field(default=None, init=False)
    _lock: threading.Lock = field(factory=threading.Lock, init=False)

    def ensure_running(self) -> None:
        """Start the reactor in a daemon thread, unless it runs already."""
        with self._lock:
            if self.reactor.running or self._thread is not None:
                return
            started = threading.Event()
            self.reactor.callWhenRunning(started.set)
            self._thread = threading.Thread(
                target=self.reactor.run,
                kwargs={"installSignalHandlers": False},
                name="glance-tx reactor",
                daemon=True,
            )
            self._thread.start()
            atexit.register(self._stop)
            started.wait()

    def _stop(self, timeout: float = 5.0) -> None:
        """Stop the reactor this started, and wait a while for it to end."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        try:
            self.reactor.callFromThread(self.reactor.stop)
        except Exception:
            return  # already stopping
        thread.join(timeout)

    def call(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """
        Run C{f(*args, **kwargs)} on the reactor thread and return its
        result, waiting for it if it is a coroutine or a Deferred; raise
        what it raised. Interrupted (Ctrl-C), the work is cancelled.
        """
        if _in_reactor_thread(self.reactor):
            raise RuntimeError(
                "A blocking call from the reactor thread would wait for itself: "
                "use the async Client there"
            )
        self.ensure_running()
        outcome: queue.Queue[Any] = queue.Queue(maxsize=1)
        running: list[Deferred[Any]] = []

        def start() -> None:
            d = maybeDeferred(_run, f, args, kwargs)
            running.append(d)
            d.addBoth(outcome.put)

        self.reactor.callFromThread(start)
        try:
            result = outcome.get()
        except BaseException:
            # callFromThread keeps order: start() has run by then.
            self.reactor.callFromThread(lambda: running[0].cancel())
            raise
        if isinstance(result, Failure):
            result.raiseException()
        return result


def _run(f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    result = f(*args, **kwargs)
    if hasattr(result, "__await__") and not isinstance(result, Deferred):
        return Deferred.fromCoroutine(_awaited(result))
    return result


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _in_reactor_thread(reactor: Any) -> bool:
    """Whether this thread is the one running C{reactor}."""
    from twisted.python import threadable

    return bool(reactor.running) and threadable.isInIOThread()
