"""
``twistd glance --workers N``: N reactor processes on one listening socket.

One Python process holds one GIL, so one reactor uses about one core for
its HTTP parsing, routing, JSON and logging. With C{--workers N} the
``twistd`` process becomes a supervisor, L{WorkerPool}:

  - It opens the listening socket itself, from the configured endpoint
    (C{tcp:} or C{tcp6:} only), and never accepts on it.
  - It starts N workers, one after the other, each ``twistd -n glance`` with the socket as an
    inherited descriptor, which it adopts (C{AdoptedStreamServerEndpoint},
    i.e. C{reactor.adoptStreamPort}) instead of listening. Each worker is
    a whole API node: its own thread pool, registry connections, stores,
    and node id (C{<node_id>-w<index>}, so their upload leases and node
    claims are apart).
  - A worker that dies is started again (after L{RESTART_DELAY}).
  - SIGHUP restarts the workers one at a time: each is stopped (SIGTERM: it
    stops accepting, then its services stop), then its replacement is
    started and the next waits until it is ready. Requests in flight on
    the stopped worker are cut; new connections meanwhile wait in the one
    accept queue and the other workers take them, so none is refused.
  - At stop it stops every worker, then closes the socket.

One shared socket rather than C{SO_REUSEPORT} (a socket per worker): the
socket outlives every worker, so a restart never drops the connections
queued on a dying worker's own socket, the port is known before any worker
starts (port 0 works), and an idle worker takes the next connection
rather than the one the kernel's hash picked.

Each worker accepts one connection per wakeup of its reactor
(L{SharedSocketEndpoint}): Twisted's port accepts every queued connection
at once, so the first worker awake took them all; with keep-alive clients
(wrk's 16 connections) one worker served everything and two workers gave
1.25x the rate of one.

A worker tells the supervisor it is ready by writing its pid on another
inherited descriptor; its log goes to the supervisor's standard output.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.tcp import Port
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from glance_tx.services import ReadyService
from glance_tx.twisted_private import accept_one_at_a_time

log = Logger()

__all__ = [
    "LISTEN_FD",
    "READY_FD",
    "RESTART_DELAY",
    "SharedSocketEndpoint",
    "Supervisor",
    "WorkerPool",
    "announce_ready",
    "listen_for_workers",
    "worker_argv",
]

#: The descriptor number a worker finds the listening socket on...
LISTEN_FD = 3
#: ... and the one it writes its pid to once it serves.
READY_FD = 4
#: How long after a worker died its replacement starts (a worker that fails
#: at once is not restarted in a tight loop).
RESTART_DELAY = 1.0
#: How long a worker that holds connections already waits after it accepted
#: one before it accepts again (see L{SharedSocketEndpoint}).
ACCEPT_PAUSE = 0.001
#: How long a stopping worker has before it is killed.
STOP_SECONDS = 30.0


def check_worker_endpoint(endpoint: str) -> None:
    """Refuse an endpoint workers cannot share (see the module docstring)."""
    if endpoint.split(":", 1)[0] not in ("tcp", "tcp6"):
        raise ValueError(
            f"--workers needs a tcp: or tcp6: endpoint, not {endpoint!r}; "
            "terminate TLS in front of the workers"
        )


async def listen_for_workers(reactor: Any, endpoint: str) -> Port:
    """
    Listen on C{endpoint} without accepting: the socket is the workers'.
    """
    from twisted.internet.endpoints import serverFromString

    check_worker_endpoint(endpoint)
    port: IListeningPort = await serverFromString(reactor, endpoint).listen(Factory())
    assert isinstance(port, Port)
    port.stopReading()  # the workers accept; this process only holds it
    return port


@implementer(IStreamServerEndpoint)
@define
class SharedSocketEndpoint:
    """
    A worker's endpoint on the supervisor's socket (C{endpoint}, usually an
    C{AdoptedStreamServerEndpoint}) whose port accepts one connection at a
    time, so that the workers sharing the socket share its connections;
    a worker that holds connections already then stops accepting for
    C{pause} seconds. On a busy 2-core machine the other worker, woken by
    the same connection, may wait for a core until this one sleeps: with
    one accept at a time alone, wrk's 16 connections still all went to one
    worker. A worker with no other connection (clients that connect for
    each request) accepts at once.
    """

    endpoint: IStreamServerEndpoint
    reactor: Any
    pause: float = ACCEPT_PAUSE

    async def _listen(self, factory: Any) -> IListeningPort:
        port = await self.endpoint.listen(factory)
        idle = len(self.reactor.getReaders())

        def accepted() -> None:
            # Holding another connection already: let the other workers,
            # which may be waiting for a core, take the next one.
            if len(self.reactor.getReaders()) > idle + 1:
                port.stopReading()  # type: ignore[attr-defined]
                self.reactor.callLater(self.pause, resume)

        def resume() -> None:
            if port.connected:  # type: ignore[attr-defined]
                port.startReading()  # type: ignore[attr-defined]

        accept_one_at_a_time(port, accepted)
        return port

    def listen(self, protocolFactory: Any) -> Deferred[IListeningPort]:
        return Deferred.fromCoroutine(self._listen(protocolFactory))


@define(eq=False)
class _Worker(ProcessProtocol):
    """One worker process, as the supervisor sees it."""

    index: int
    pool: WorkerPool
    ready: Deferred[int] = field(factory=Deferred)
    ended: Deferred[None] = field(factory=Deferred)
    pid: int | None = None
    _ready_bytes: bytes = b""

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != READY_FD or self.ready.called:
            return
        self._ready_bytes += data
        if b"\n" in self._ready_bytes:
            self.ready.callback(int(self._ready_bytes.split(b"\n")[0]))

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(reason)
            self.ready.addErrback(lambda _: None)
        self.ended.callback(None)
        self.pool.worker_ended(self, reason)

    def signal(self, name: str) -> None:
        if not self.ended.called:
            try:
                self.transport.signalProcess(name)  # type: ignore[union-attr]
            except Exception:  # already gone: processEnded is on its way
                pass


@define(eq=False)
class WorkerPool(Service):
    """
    Runs C{count} workers on C{port} (see the module docstring).

    @ivar argv: The command of one worker, to which the supervisor adds
        C{--worker-index I}.
    """

    reactor: Any
    port: Port
    count: int
    argv: Sequence[str]
    env: dict[str, str] | None = None
    workers: dict[int, _Worker] = field(factory=dict, init=False)
    _restarts: dict[int, IDelayedCall] = field(factory=dict, init=False)
    _stopping: bool = field(default=False, init=False)
    _rolling: Deferred[None] | None = field(default=None, init=False)

    def startService(self) -> None:
        Service.startService(self)
        self._rolling = Deferred.fromCoroutine(self._start_all())
        signal.signal(signal.SIGHUP, self._on_sighup)

    async def _start_all(self) -> None:
        """
        Start the workers one after the other, each once the one before
        serves: the first runs the registry's migrations alone.
        """
        for index in range(self.count):
            if self._stopping:
                return
            try:
                await self._spawn(index).ready
            except Exception:
                log.error("Worker {index} did not start", index=index)

    def _on_sighup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.restart)

    def restart(self) -> Deferred[None]:
        """Restart the workers one at a time (a restart under way is kept)."""
        if self._rolling is None or self._rolling.called:
            self._rolling = Deferred.fromCoroutine(self._restart_all())
        return self._rolling

    async def _restart_all(self) -> None:
        log.info("Restarting {count} workers one at a time", count=self.count)
        for index in range(self.count):
            if self._stopping:
                return
            old = self.workers.pop(index, None)
            if old is not None:
                old.signal("TERM")
                await old.ended
            worker = self._spawn(index)
            try:
                await worker.ready
            except Exception:
                log.error("Worker {index} did not start again", index=index)

    def _spawn(self, index: int) -> _Worker:
        self._restarts.pop(index, None)
        worker = _Worker(index, self)
        self.workers[index] = worker
        listen_fd = self.port.fileno()
        self.reactor.spawnProcess(
            worker,
            self.argv[0],
            [*self.argv, "--worker-index", str(index)],
            env=self.env if self.env is not None else dict(os.environ),
            childFDs={0: "w", 1: 1, 2: 2, LISTEN_FD: listen_fd, READY_FD: "r"},
        )
        worker.ready.addCallback(self._log_ready, worker)
        return worker

    def _log_ready(self, pid: int, worker: _Worker) -> int:
        log.info("Worker {index} (pid {pid}) serving", index=worker.index, pid=pid)
        return pid

    def worker_ended(self, worker: _Worker, reason: Failure) -> None:
        if self.workers.get(worker.index) is not worker:
            return  # stopped on purpose (a restart), already replaced
        del self.workers[worker.index]
        if self._stopping:
            return
        log.warn(
            "Worker {index} (pid {pid}) ended ({reason}); starting another",
            index=worker.index,
            pid=worker.pid,
            reason=reason.getErrorMessage(),
        )
        self._restarts[worker.index] = self.reactor.callLater(
            RESTART_DELAY, self._spawn, worker.index
        )

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        self._stopping = True
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        workers = list(self.workers.values())
        for worker in workers:
            worker.signal("TERM")
        kill = self.reactor.callLater(STOP_SECONDS, self._kill, workers)
        await DeferredList([w.ended for w in workers])
        if kill.active():
            kill.cancel()
        await self.port.stopListening()

    def _kill(self, workers: list[_Worker]) -> None:
        for worker in workers:
            worker.signal("KILL")


def worker_argv(options: Any) -> list[str]:
    """
    The command of one worker: ``twistd -n glance`` with the options the
    supervisor was given, its log on standard output.
    """
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    argv = [twistd, "--nodaemon", "--pidfile=", "--logfile=-", "glance"]
    for name in ("port", "data-dir", "config"):
        if options[name] is not None:
            argv += [f"--{name}", options[name]]
    argv += ["--worker-fd", str(LISTEN_FD), "--ready-fd", str(READY_FD)]
    return argv


def announce_ready(ready_fd: int) -> None:
    """A worker's word to its supervisor that it serves: its pid."""
    try:
        os.write(ready_fd, b"%d\n" % (os.getpid(),))
    finally:
        os.close(ready_fd)



@define(eq=False)
class Supervisor(ReadyService[WorkerPool]):
    """
    The supervisor's one service: listens (without accepting) on
    C{endpoint}, then runs a L{WorkerPool} of C{count} workers on it.
    """

    reactor: Any
    endpoint: str
    count: int
    argv: Sequence[str]
    pool: WorkerPool | None = field(default=None, init=False)

    async def start(self) -> WorkerPool:
        port = await listen_for_workers(self.reactor, self.endpoint)
        log.info(
            "glance-tx supervisor: {count} workers on {address}",
            count=self.count,
            address=port.getHost(),
        )
        self.pool = WorkerPool(self.reactor, port, self.count, self.argv)
        self.pool.startService()
        return self.pool

    async def stop(self) -> None:
        if self.pool is not None:
            await self.pool.stopService()
