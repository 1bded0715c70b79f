"""
``twistd glance --workers N``: N reactor processes on one port.

One Python process holds one GIL, so one reactor uses about one core for
its HTTP parsing, routing, JSON and logging. With C{--workers N} the
``twistd`` process becomes a supervisor, L{WorkerPool}:

  - It opens the listening sockets itself, from the configured endpoint
    (C{tcp:}, C{tcp6:} or C{ssl:}), and never accepts on them: on Linux N
    sockets bound with C{SO_REUSEPORT} to one address (the first picks
    the port, so port 0 works), one per worker, and the kernel hashes
    each new connection to one of them, so keep-alive clients are spread
    over the workers whichever is awake first. Elsewhere (C{SO_REUSEPORT}
    missing, or one that does not balance, as on the BSDs and macOS) one
    socket that every worker shares: they take its connections as they
    wake, unbalanced with keep-alive clients.
  - It starts N workers, one after the other, each ``twistd -n glance`` with
    its socket as an inherited descriptor, which it adopts
    (C{AdoptedStreamServerEndpoint}) instead of listening; on C{ssl:} the
    worker speaks TLS over it (L{worker_endpoint}). Each worker is a whole
    API node: its own thread pool, registry connections, stores, and node
    id (C{<node_id>-w<number>}, so their upload leases and node claims are
    apart).
  - A worker that dies is started again (after L{RESTART_DELAY}) on the
    same socket, under the same number; the connections the kernel puts on
    that socket meanwhile wait for it.
  - SIGHUP restarts the workers one at a time: for each socket a new
    worker is started (numbered C{index + N} and C{index} in turn, so that
    its node claim is not the old one's), and once it serves the old one
    is stopped (SIGTERM: it stops accepting, then its services stop). The
    sockets belong to the supervisor, so the connections queued on a
    stopping worker's socket stay queued for its replacement, which
    already accepts: none is refused. Requests in flight on the stopped
    worker are cut.
  - At stop it stops every worker, then closes the sockets.

A worker tells the supervisor it is ready by writing its pid on another
inherited descriptor; its log goes to the supervisor's standard output.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from attrs import define, field, frozen
from twisted.application.service import Service
from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from glance_tx.services import ReadyService
from glance_tx.twisted_private import tcp_listen_address

log = Logger()

__all__ = [
    "LISTEN_FD",
    "READY_FD",
    "RESTART_DELAY",
    "ListenAddress",
    "Supervisor",
    "WorkerPool",
    "announce_ready",
    "listen_address",
    "listening_sockets",
    "worker_argv",
    "worker_endpoint",
]

#: The descriptor number a worker finds its listening socket on...
LISTEN_FD = 3
#: ... and the one it writes its pid to once it serves.
READY_FD = 4
#: How long after a worker died its replacement starts (a worker that fails
#: at once is not restarted in a tight loop).
RESTART_DELAY = 1.0
#: How long a stopping worker has before it is killed, beyond the time its
#: requests in flight and imports get (the supervisor adds those).
STOP_SECONDS = 30.0
#: Whether the kernel spreads connections over sockets bound with
#: C{SO_REUSEPORT} (Linux); elsewhere the option only lets them share a port.
REUSEPORT_BALANCES = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")

#: The endpoint types workers can serve on: TCP, or TLS over TCP.
WORKER_ENDPOINTS = ("tcp", "tcp6", "ssl")


def check_worker_endpoint(endpoint: str) -> None:
    """Refuse an endpoint workers cannot share (see the module docstring)."""
    if endpoint.split(":", 1)[0] not in WORKER_ENDPOINTS:
        raise ValueError(
            f"--workers needs a tcp:, tcp6: or ssl: endpoint, not {endpoint!r}"
        )


@frozen
class ListenAddress:
    """Where a C{tcp:}, C{tcp6:} or C{ssl:} endpoint listens, and its TLS."""

    interface: str
    port: int
    backlog: int
    #: The endpoint's TLS context factory (C{ssl:}), or C{None}.
    tls: Any = None

    @property
    def family(self) -> int:
        return socket.AF_INET6 if isIPv6Address(self.interface) else socket.AF_INET


def listen_address(reactor: Any, endpoint: str) -> ListenAddress:
    """The address of C{endpoint} (an C{ssl:} one's certificate is read)."""
    check_worker_endpoint(endpoint)
    parsed = tcp_listen_address(serverFromString(reactor, endpoint))
    if parsed is None:
        raise ValueError(f"--workers cannot listen on {endpoint!r}")
    return ListenAddress(*parsed)


def _listening_socket(address: ListenAddress, port: int, reuseport: bool) -> socket.socket:
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted's
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address.interface, port))
        sock.listen(address.backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def listening_sockets(
    address: ListenAddress, count: int, reuseport: bool = REUSEPORT_BALANCES
) -> list[socket.socket]:
    """
    C{count} listening sockets on C{address} bound with C{SO_REUSEPORT}
    (the first one picks the port), or, without C{reuseport} or where the
    kernel refuses the option, one.
    """
    if reuseport:
        try:
            first = _listening_socket(address, address.port, reuseport=True)
        except OSError as e:
            if e.errno not in (errno.ENOPROTOOPT, errno.EINVAL):
                raise
            log.warn("SO_REUSEPORT refused ({error}): the workers share one socket", error=e)
        else:
            sockets = [first]
            try:
                for _ in range(count - 1):
                    sockets.append(
                        _listening_socket(address, first.getsockname()[1], reuseport=True)
                    )
            except BaseException:
                for sock in sockets:
                    sock.close()
                raise
            return sockets
    return [_listening_socket(address, address.port, reuseport=False)]


@implementer(IStreamServerEndpoint)
@frozen
class _TLSServerEndpoint:
    """TLS over the connections of C{endpoint}, as Twisted's C{listenSSL}."""

    endpoint: IStreamServerEndpoint
    context: Any

    def listen(self, protocolFactory: Any) -> Deferred[IListeningPort]:
        return self.endpoint.listen(TLSMemoryBIOFactory(self.context, False, protocolFactory))


def address_family_of(fd: int) -> int:
    """The address family of the listening socket on descriptor C{fd}."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        return int(sock.family)


def worker_endpoint(reactor: Any, fd: int, endpoint: str) -> IStreamServerEndpoint:
    """
    A worker's endpoint: the supervisor's socket on C{fd}, with the TLS of
    the configured C{endpoint} if it is C{ssl:}.
    """
    adopted = AdoptedStreamServerEndpoint(reactor, fd, address_family_of(fd))
    tls = listen_address(reactor, endpoint).tls
    return adopted if tls is None else _TLSServerEndpoint(adopted, tls)


@define(eq=False)
class _Worker(ProcessProtocol):
    """One worker process, as the supervisor sees it."""

    #: Which of the pool's sockets it serves on.
    index: int
    #: Its C{--worker-index}: its node id's and its log lines' number.
    number: int
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
    Runs C{count} workers on C{sockets}, worker I on socket I modulo their
    number (see the module docstring). The pool closes the sockets at stop.

    @ivar argv: The command of one worker, to which the supervisor adds
        C{--worker-index I}.
    @ivar workers: The worker serving each socket index.
    """

    reactor: Any
    sockets: Sequence[socket.socket]
    count: int
    argv: Sequence[str]
    env: dict[str, str] | None = None
    #: How long a worker has to stop before it is killed (None: for ever).
    stop_seconds: float | None = STOP_SECONDS
    workers: dict[int, _Worker] = field(factory=dict, init=False)
    #: Every worker process not yet ended, replacements starting included.
    processes: set[_Worker] = field(factory=set, init=False)
    _restarts: dict[int, IDelayedCall] = field(factory=dict, init=False)
    _stopping: bool = field(default=False, init=False)
    _rolling: Deferred[None] | None = field(default=None, init=False)

    @property
    def port(self) -> int:
        """The port every socket listens on."""
        return int(self.sockets[0].getsockname()[1])

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
            worker = self.workers[index] = self._spawn(index, index)
            try:
                await worker.ready
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
            old = self.workers.get(index)
            number = index + self.count if old is None or old.number == index else index
            new = self._spawn(index, number)
            try:
                await new.ready
            except Exception:
                log.error(
                    "Worker {number} did not start; worker {index} was kept",
                    number=number,
                    index=index,
                )
                continue
            if self._stopping:
                return  # _stop ends it with the others
            restart = self._restarts.pop(index, None)
            if restart is not None and restart.active():
                restart.cancel()  # the old one died meanwhile: this replaces it
            old = self.workers.get(index)
            self.workers[index] = new
            if old is not None:
                old.signal("TERM")
                await old.ended

    def _spawn(self, index: int, number: int) -> _Worker:
        self._restarts.pop(index, None)
        worker = _Worker(index, number, self)
        self.processes.add(worker)
        listen_fd = self.sockets[index % len(self.sockets)].fileno()
        self.reactor.spawnProcess(
            worker,
            self.argv[0],
            [*self.argv, "--worker-index", str(number)],
            env=self.env if self.env is not None else dict(os.environ),
            childFDs={0: "w", 1: 1, 2: 2, LISTEN_FD: listen_fd, READY_FD: "r"},
        )
        worker.ready.addCallback(self._log_ready, worker)
        return worker

    def _log_ready(self, pid: int, worker: _Worker) -> int:
        log.info(
            "Worker {number} (pid {pid}) serving on socket {index}",
            number=worker.number,
            pid=pid,
            index=worker.index,
        )
        return pid

    def worker_ended(self, worker: _Worker, reason: Failure) -> None:
        self.processes.discard(worker)
        if self.workers.get(worker.index) is not worker:
            return  # replaced (a restart), or a replacement that did not start
        del self.workers[worker.index]
        if self._stopping:
            return
        log.warn(
            "Worker {number} (pid {pid}) ended ({reason}); starting another",
            number=worker.number,
            pid=worker.pid,
            reason=reason.getErrorMessage(),
        )
        self._restarts[worker.index] = self.reactor.callLater(
            RESTART_DELAY, self._respawn, worker.index, worker.number
        )

    def _respawn(self, index: int, number: int) -> None:
        self.workers[index] = self._spawn(index, number)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        self._stopping = True
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        workers = list(self.processes)
        for worker in workers:
            worker.signal("TERM")
        kill = None
        if self.stop_seconds is not None:
            kill = self.reactor.callLater(self.stop_seconds, self._kill, workers)
        await DeferredList([w.ended for w in workers])
        if kill is not None and kill.active():
            kill.cancel()
        for sock in self.sockets:
            sock.close()

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
    The supervisor's one service: opens the sockets of C{endpoint}
    (L{listening_sockets}), then runs a L{WorkerPool} of C{count} workers
    on them.
    """

    reactor: Any
    endpoint: str
    count: int
    argv: Sequence[str]
    #: L{WorkerPool.stop_seconds}.
    stop_seconds: float | None = STOP_SECONDS
    pool: WorkerPool | None = field(default=None, init=False)

    async def start(self) -> WorkerPool:
        sockets = listening_sockets(listen_address(self.reactor, self.endpoint), self.count)
        self.pool = WorkerPool(
            self.reactor, sockets, self.count, self.argv, stop_seconds=self.stop_seconds
        )
        log.info(
            "glance-tx supervisor: {count} workers on port {port}, {how}",
            count=self.count,
            port=self.pool.port,
            how="a socket each (SO_REUSEPORT)" if len(sockets) > 1 else "one socket",
        )
        self.pool.startService()
        return self.pool

    async def stop(self) -> None:
        if self.pool is not None:
            await self.pool.stopService()
