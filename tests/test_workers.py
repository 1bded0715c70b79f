"""
``twistd glance --workers N`` (L{glance_tx.workers}): the options, and a
real supervisor with two workers on one port, one of them killed.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import time
from unittest import SkipTest

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import clientFromString, connectProtocol, wrapClientTLS
from twisted.internet.error import ProcessTerminated
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.protocols.wire import Echo
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from glance_tx import tap
from glance_tx.workers import (
    LISTEN_FD,
    READY_FD,
    RESTART_DELAY,
    REUSEPORT_BALANCES,
    ListenAddress,
    Supervisor,
    WorkerPool,
    listening_sockets,
    worker_endpoint,
)
from tests.test_registry_http import write_tls_files
from tests.twistd_process import TwistdProcess, start_twistd

log = Logger()

_SERVED_BY = re.compile(r'"GET /versions" \d+ \d+ [0-9.]+s worker (\d+) pid (\d+)')
#: A request of the test's clients that the server read and then lost.
_CUT = re.compile(r'"GET (/versions|/healthcheck\?kept)" .*\(connection lost\)')
_READY = re.compile(r"Worker (\d+) \(pid (\d+)\) serving on socket")


class OptionsTests(SynchronousTestCase):
    def parse(self, *argv: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(["--data-dir", self.mktemp(), *argv])
        return options

    def test_default_is_one_process(self) -> None:
        """Without --workers, makeService is the node itself, no supervisor."""
        options = self.parse()
        self.assertEqual(options["workers"], 1)

    def test_workers_make_a_supervisor(self) -> None:
        """--workers 2 makes a tree whose one child is the Supervisor of 2."""
        options = self.parse("--workers", "2", "--port", "tcp:0:interface=127.0.0.1")
        top = tap.makeService(options)
        supervisor = top.getServiceNamed("supervisor")  # type: ignore[attr-defined]
        self.assertIsInstance(supervisor, Supervisor)
        self.assertEqual(supervisor.count, 2)
        self.assertEqual(supervisor.endpoint, "tcp:0:interface=127.0.0.1")

    def test_bad_workers_refused(self) -> None:
        """0 workers, a word, or workers on a unix: endpoint are usage errors."""
        for argv in (("--workers", "0"), ("--workers", "many")):
            self.assertRaises(usage.UsageError, self.parse, *argv)
        error = self.assertRaises(
            usage.UsageError,
            self.parse,
            "--workers", "2", "--port", "unix:/tmp/glance.sock",
        )
        self.assertIn("tcp:", str(error))


class SupervisorTests(TestCase):
    timeout = 120

    async def served_by(self, process: TwistdProcess, http: HTTPClient, want: set[int]) -> set[int]:
        """GET /versions on fresh connections until the pids in C{want} all answered."""
        seen: set[int] = set()
        deadline = time.monotonic() + 30
        while not want <= seen and time.monotonic() < deadline:
            response = await http.get(process.url + "/versions")
            await response.content()
            await deferLater(reactor, 0.05, lambda: None)
            seen = {int(pid) for _, pid in _SERVED_BY.findall(process.output)}
        return seen

    async def test_two_workers_one_port_and_a_dead_one_replaced(self) -> None:
        """
        Two worker processes answer on the one port (each request's log
        line names the worker's pid); a worker killed with SIGKILL is
        replaced by a new process, which answers too; at stop every worker
        is gone.
        """
        process = await start_twistd(self, "glance", "", ["--workers", "2"])
        http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        deadline = time.monotonic() + 30
        while len(_READY.findall(process.output)) < 2 and time.monotonic() < deadline:
            await deferLater(reactor, 0.1, lambda: None)
        workers = {int(i): int(pid) for i, pid in _READY.findall(process.output)}
        self.assertEqual(sorted(workers), [0, 1])
        self.assertNotIn(os.getpid(), workers.values())
        seen = await self.served_by(process, http, set(workers.values()))
        self.assertEqual(seen, set(workers.values()), process.output)

        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        replacement = None
        while replacement is None and time.monotonic() < deadline:
            await deferLater(reactor, 0.1, lambda: None)
            for i, pid in _READY.findall(process.output):
                if int(i) == 0 and int(pid) != workers[0]:
                    replacement = int(pid)
        self.assertIsNotNone(replacement, process.output)
        assert replacement is not None
        seen = await self.served_by(process, http, {replacement})
        self.assertIn(replacement, seen, process.output)

        await process.stop()
        for pid in (replacement, workers[1]):
            self.assertRaises(ProcessLookupError, os.kill, pid, 0)

    async def test_sighup_restarts_without_refusing_a_connection(self) -> None:
        """
        SIGHUP to the supervisor replaces both workers with new processes
        (numbered 2 and 3), one after the other, while clients send
        requests back to back: one GET /versions on a new connection each
        time, four GET /healthcheck keeping their connections. Every request is answered, the last
        ones by the new workers, and the old workers end.

        A kept connection that a stopping worker closes between two
        requests may take the next request with it unread: the client sees
        the connection end before any byte of an answer, and (as every HTTP
        client does for an idempotent request on a reused connection)
        sends it again on a new one. Those are counted apart; that the
        server read none of them is checked from its side: no request was
        logged as cut ("connection lost").
        """
        # Every health check probes, so that a request spends time in flight.
        process = await start_twistd(
            self, "glance", "[DEFAULT]\nhealthcheck_probe_interval = 0\n", ["--workers", "2"]
        )
        http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        deadline = time.monotonic() + 30
        while len(_READY.findall(process.output)) < 2 and time.monotonic() < deadline:
            await deferLater(reactor, 0.1, lambda: None)
        first = {int(pid) for _, pid in _READY.findall(process.output)}
        self.assertEqual(len(first), 2, process.output)

        def restarted() -> bool:
            if len(_READY.findall(process.output)) < 4:
                return False
            try:
                for pid in first:
                    os.kill(pid, 0)
            except ProcessLookupError:
                return all(not _alive(pid) for pid in first)
            return False

        codes: list[int] = []
        errors: list[str] = []
        retried: list[int] = []
        done: list[bool] = []
        kept = [_keep_alive_loop(process.url, codes, errors, retried, done) for _ in range(4)]
        process.protocol.transport.signalProcess("HUP")
        deadline = time.monotonic() + 60
        after = 0
        while after < 20 and time.monotonic() < deadline:
            try:
                response = await http.get(process.url + "/versions", timeout=10)
                await response.content()
                codes.append(response.code)
            except Exception as e:
                errors.append(repr(e))
            if restarted():
                after += 1
        done.append(True)
        await DeferredList(kept, fireOnOneErrback=True)
        self.assertEqual(errors, [], process.output)
        self.assertEqual(set(codes), {200, 300})
        self.assertEqual(_CUT.findall(process.output), [], process.output)
        log.info("{retried} kept-connection requests retried", retried=len(retried))
        ready = _READY.findall(process.output)
        self.assertEqual([i for i, _ in ready[2:]], ["2", "3"], process.output)
        second = {int(pid) for _, pid in ready[2:]}
        self.assertEqual(second & first, set())
        # The 20 requests sent once the old workers had ended can only have
        # been served by the new ones. Counted, not taken as the log's last
        # lines: the supervisor relays each worker's output as it reads it,
        # and a dead worker's last (buffered) lines may come after newer
        # ones; the new workers' own lines may still be on their way.
        def by_second() -> int:
            served = [int(pid) for _, pid in _SERVED_BY.findall(process.output)]
            return sum(pid in second for pid in served)

        deadline = time.monotonic() + 10
        while by_second() < 20 and time.monotonic() < deadline:
            await deferLater(reactor, 0.1, lambda: None)
        self.assertGreaterEqual(by_second(), 20, process.output)


class _Cut(Exception):
    """The connection ended before a whole answer; C{received} bytes of it came."""

    def __init__(self, received: int) -> None:
        super().__init__(received)
        self.received = received


class _KeptConnection(Protocol):
    """GET /healthcheck on one kept connection, one request at a time."""

    def __init__(self) -> None:
        self.buffer = b""
        self.answer: Deferred[bool] | None = None
        self.gone = False

    def get(self) -> Deferred[bool]:
        """The answer's code is 200: whether it closes the connection."""
        if self.gone:
            raise _Cut(0)
        self.buffer = b""
        self.answer = Deferred()
        assert self.transport is not None
        self.transport.write(b"GET /healthcheck?kept HTTP/1.1\r\nHost: h\r\n\r\n")
        return self.answer

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        head, ended, body = self.buffer.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length: *(\d+)", head)
        if not ended:
            return
        if length is None:  # chunked
            if not body.endswith(b"0\r\n\r\n"):
                return
        elif len(body) < int(length.group(1)):
            return
        answer, self.answer = self.answer, None
        if answer is None:
            return
        if not head.startswith(b"HTTP/1.1 200 "):
            answer.errback(AssertionError(head))
        else:
            answer.callback(b"connection: close" in head.lower())

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.gone = True
        answer, self.answer = self.answer, None
        if answer is not None:
            answer.errback(_Cut(len(self.buffer)))


def _keep_alive_loop(
    url: str, codes: list[int], errors: list[str], retried: list[int], done: list[bool]
) -> Deferred[None]:
    """
    GET /healthcheck (it waits on the registry's thread: a request spends
    time in flight) back to back on a kept connection, a new one when the
    server closes it, until C{done}; a request the server closed its
    connection on before any byte of the answer, on a connection that had
    served before, is retried (counted in C{retried}); any other failure
    goes to C{errors}.
    """
    endpoint = clientFromString(reactor, "tcp:" + url.rsplit("/", 1)[-1])

    async def loop() -> None:
        connection: _KeptConnection | None = None
        served = 0
        while not done:
            try:
                if connection is None or connection.gone:
                    connection = await connectProtocol(endpoint, _KeptConnection())
                    served = 0
                closes = await connection.get()
            except _Cut as cut:
                if served and not cut.received:
                    retried.append(1)
                else:
                    errors.append(f"cut after {served} answers, {cut.received} bytes in")
                connection = None
                continue
            except Exception as e:
                errors.append(repr(e))
                connection = None
                continue
            codes.append(200)
            served += 1
            if closes:
                assert connection.transport is not None
                connection.transport.loseConnection()
                connection = None
        if connection is not None and connection.transport is not None:
            connection.transport.loseConnection()

    return Deferred.fromCoroutine(loop())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class ListeningSocketsTests(SynchronousTestCase):
    """L{listening_sockets}: the supervisor's sockets on one address."""

    def sockets(self, count: int, reuseport: bool, port: int = 0) -> list[socket.socket]:
        made = listening_sockets(ListenAddress("127.0.0.1", port, 50), count, reuseport)
        for sock in made:
            self.addCleanup(sock.close)
        return made

    def test_a_socket_each_sharing_out_connections(self) -> None:
        """
        With SO_REUSEPORT: one socket per worker, all on the port the first
        one picked (port 0 asked), and the kernel puts new connections on
        each of them.
        """
        if not REUSEPORT_BALANCES:
            raise SkipTest("no SO_REUSEPORT that balances here")
        made = self.sockets(2, reuseport=True)
        ports = {sock.getsockname()[1] for sock in made}
        self.assertEqual(len(made), 2)
        self.assertEqual(len(ports), 1)
        port = ports.pop()
        self.assertNotEqual(port, 0)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(32)]
        for client in clients:
            self.addCleanup(client.close)
        accepted = [_accept_all(sock) for sock in made]
        self.assertEqual(sum(accepted), 32)
        self.assertNotIn(0, accepted)  # all on one: 1 chance in 2**31

    def test_one_shared_socket_without_reuseport(self) -> None:
        """Without SO_REUSEPORT, one socket for every worker."""
        made = self.sockets(3, reuseport=False)
        self.assertEqual(len(made), 1)
        self.assertNotEqual(made[0].getsockname()[1], 0)

    def test_a_port_in_use_is_an_error(self) -> None:
        """A port another process listens on is refused, not shared."""
        with socket.socket() as other:
            other.bind(("127.0.0.1", 0))
            other.listen()
            self.assertRaises(
                OSError, self.sockets, 2, REUSEPORT_BALANCES, other.getsockname()[1]
            )


def _accept_all(sock: socket.socket) -> int:
    count = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            sock.accept()[0].close()
            count += 1
        except BlockingIOError:
            if count and not select.select([sock], [], [], 0.2)[0]:
                return count
    return count


class _FakeProcess:
    """The transport of a process L{_Spawning} pretends to start."""

    def __init__(self, spawning: _Spawning, number: int) -> None:
        self.spawning = spawning
        self.number = number
        self.pid = 1000 + len(spawning.spawned)

    def signalProcess(self, name: str | int) -> None:
        self.spawning.events.append(f"{name} {self.number}")


class _Spawning(MemoryReactorClock):
    """A reactor whose spawnProcess only records the worker it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.spawned: list[tuple[ProcessProtocol, dict[int, object]]] = []

    def spawnProcess(self, protocol: ProcessProtocol, executable: str, args: list[str],
                     env: object = None, childFDs: dict[int, object] | None = None) -> _FakeProcess:
        number = int(args[args.index("--worker-index") + 1])
        process = _FakeProcess(self, number)
        self.events.append(f"spawn {number}")
        self.spawned.append((protocol, dict(childFDs or {})))
        protocol.makeConnection(process)  # type: ignore[arg-type]
        return process


class WorkerPoolTests(SynchronousTestCase):
    """L{WorkerPool}'s order of starts and stops, over a fake spawnProcess."""

    def setUp(self) -> None:
        self.reactor = _Spawning()
        self.sockets = [socket.socket(), socket.socket()]
        for sock in self.sockets:
            self.addCleanup(sock.close)
        self.pool = WorkerPool(self.reactor, self.sockets, 2, ["twistd"], env={})
        self.addCleanup(signal.signal, signal.SIGHUP, signal.getsignal(signal.SIGHUP))

    def ready(self, index: int) -> None:
        protocol, _ = self.reactor.spawned[index]
        protocol.childDataReceived(READY_FD, b"%d\n" % (1000 + index,))

    def end(self, index: int) -> None:
        protocol, _ = self.reactor.spawned[index]
        protocol.processEnded(Failure(ProcessTerminated(signal="TERM")))

    def start(self) -> None:
        self.pool.startService()
        self.ready(0)
        self.ready(1)

    def test_each_worker_its_own_socket(self) -> None:
        """Worker I gets socket I as its listening descriptor."""
        self.start()
        fds = [child[LISTEN_FD] for _, child in self.reactor.spawned]
        self.assertEqual(fds, [sock.fileno() for sock in self.sockets])

    def test_restart_starts_the_new_before_stopping_the_old(self) -> None:
        """
        A restart starts worker 2 on socket 0 and stops worker 0 only once
        2 serves, then the same for 3 and 1; a second restart goes back to
        0 and 1.
        """
        self.start()
        done = self.pool.restart()
        self.assertEqual(self.reactor.events, ["spawn 0", "spawn 1", "spawn 2"])
        self.ready(2)
        self.assertEqual(self.reactor.events[3:], ["TERM 0"])
        self.end(0)
        self.assertEqual(self.reactor.events[4:], ["spawn 3"])
        self.ready(3)
        self.end(1)
        self.assertEqual(self.reactor.events[4:], ["spawn 3", "TERM 1"])
        self.successResultOf(done)
        self.assertEqual(self.reactor.spawned[2][1][LISTEN_FD], self.sockets[0].fileno())
        self.assertEqual(self.reactor.spawned[3][1][LISTEN_FD], self.sockets[1].fileno())
        self.pool.restart()
        self.assertEqual(self.reactor.events[-1], "spawn 0")

    def test_a_replacement_that_fails_keeps_the_old(self) -> None:
        """A new worker that ends before it serves: the old one is not stopped."""
        self.start()
        done = self.pool.restart()
        self.end(2)
        self.assertEqual(self.reactor.events[3:], ["spawn 3"])
        self.ready(3)
        self.end(1)
        self.successResultOf(done)
        self.assertNotIn("TERM 0", self.reactor.events)
        self.assertEqual(self.pool.workers[0].number, 0)

    def test_a_dead_worker_started_again(self) -> None:
        """A worker that dies is started again after RESTART_DELAY, same number."""
        self.start()
        self.end(1)
        self.assertEqual(self.reactor.events, ["spawn 0", "spawn 1"])
        self.reactor.advance(RESTART_DELAY)
        self.assertEqual(self.reactor.events, ["spawn 0", "spawn 1", "spawn 1"])
        self.assertEqual(self.reactor.spawned[2][1][LISTEN_FD], self.sockets[1].fileno())

    def test_stop_ends_every_worker_then_closes_the_sockets(self) -> None:
        """At stop every worker, a starting replacement too, gets SIGTERM."""
        self.start()
        self.pool.restart()
        stopped = self.pool.stopService()
        self.assertEqual(sorted(self.reactor.events[3:]), ["TERM 0", "TERM 1", "TERM 2"])
        self.assertNoResult(stopped)
        for index in range(3):
            self.end(index)
        self.successResultOf(stopped)
        self.assertEqual([sock.fileno() for sock in self.sockets], [-1, -1])


class WorkerEndpointTests(TestCase):
    """L{worker_endpoint}: a worker's port on the socket its supervisor made."""

    async def connect_and_echo(self, endpoint: str, tls: bool, ca: bytes = b"") -> bytes:
        [sock] = listening_sockets(ListenAddress("127.0.0.1", 0, 50), 1, reuseport=False)
        self.addCleanup(sock.close)
        server_gone: Deferred[None] = Deferred()

        class Serving(Echo):
            def connectionLost(self, reason: object = None) -> None:
                server_gone.callback(None)

        port = await worker_endpoint(reactor, os.dup(sock.fileno()), endpoint).listen(
            Factory.forProtocol(Serving)
        )
        self.addCleanup(port.stopListening)
        address = f"tcp:127.0.0.1:{sock.getsockname()[1]}"
        client = clientFromString(reactor, address)
        if tls:
            client = wrapClientTLS(
                optionsForClientTLS("localhost", Certificate.loadPEM(ca)), client
            )
        received: Deferred[bytes] = Deferred()
        client_gone: Deferred[None] = Deferred()

        class Once(Protocol):
            def connectionLost(self, reason: object = None) -> None:
                client_gone.callback(None)

            def connectionMade(self) -> None:
                self.transport.write(b"hello")  # type: ignore[union-attr]

            def dataReceived(self, data: bytes) -> None:
                received.callback(data)
                self.transport.loseConnection()  # type: ignore[union-attr]

        await client.connect(Factory.forProtocol(Once))
        data = await received
        await client_gone
        await server_gone
        return data

    async def test_tcp(self) -> None:
        """On a tcp: endpoint the worker serves plain TCP on the socket."""
        self.assertEqual(await self.connect_and_echo("tcp:0", tls=False), b"hello")

    async def test_tls(self) -> None:
        """On an ssl: endpoint the worker speaks TLS with its certificate."""
        directory = FilePath(self.mktemp())
        directory.makedirs()
        ca, key, cert = write_tls_files(directory)
        endpoint = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        self.assertEqual(await self.connect_and_echo(endpoint, tls=True, ca=ca), b"hello")
