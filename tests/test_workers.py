"""
``twistd glance --workers N`` (L{glance_tx.workers}): the options, and a
real supervisor with two workers on one port, one of them killed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time

from treq.client import HTTPClient
from twisted.internet import reactor, tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface import implementer

from glance_tx import tap
from glance_tx.workers import SharedSocketEndpoint, Supervisor
from tests.twistd_process import TwistdProcess, start_twistd

_SERVED_BY = re.compile(r'"GET /versions" \d+ \d+ [0-9.]+s worker (\d+) pid (\d+)')
_READY = re.compile(r"Worker (\d+) \(pid (\d+)\) serving")


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
        """0 workers, a word, or workers on a TLS endpoint are usage errors."""
        for argv in (("--workers", "0"), ("--workers", "many")):
            self.assertRaises(usage.UsageError, self.parse, *argv)
        error = self.assertRaises(
            usage.UsageError,
            self.parse,
            "--workers", "2", "--port", "ssl:9292:privateKey=k:certKey=c",
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

    async def test_sighup_restarts_every_worker(self) -> None:
        """
        SIGHUP to the supervisor replaces both workers with new processes,
        one after the other, and the service answers throughout.
        """
        process = await start_twistd(self, "glance", "", ["--workers", "2"])
        http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        deadline = time.monotonic() + 30
        while len(_READY.findall(process.output)) < 2 and time.monotonic() < deadline:
            await deferLater(reactor, 0.1, lambda: None)
        first = {int(pid) for _, pid in _READY.findall(process.output)}
        process.protocol.transport.signalProcess("HUP")
        deadline = time.monotonic() + 60
        codes = []
        while len(_READY.findall(process.output)) < 4 and time.monotonic() < deadline:
            response = await http.get(process.url + "/versions")
            await response.content()
            codes.append(response.code)
            await deferLater(reactor, 0.05, lambda: None)
        ready = _READY.findall(process.output)
        self.assertEqual([i for i, _ in ready[2:]], ["0", "1"], process.output)
        self.assertEqual({int(pid) for _, pid in ready[2:]} & first, set())
        self.assertEqual(set(codes), {300})


class SharedSocketEndpointTests(SynchronousTestCase):
    """
    L{SharedSocketEndpoint}: a worker's port takes one connection per
    read, and once it holds one, pauses before taking the next, so the
    other workers on the socket get theirs.
    """

    def test_pauses_after_a_second_connection(self) -> None:
        """
        The first connection is taken at once and the port keeps reading;
        after the second it stops reading for C{pause} seconds.
        """
        clock = MemoryReactorClock()

        @implementer(IStreamServerEndpoint)
        class Listening:
            def listen(self, factory: Factory) -> Deferred[tcp.Port]:
                port = tcp.Port(0, factory, interface="127.0.0.1", reactor=clock)
                port.startListening()
                return succeed(port)

        endpoint = SharedSocketEndpoint(Listening(), clock, pause=0.5)
        port = self.successResultOf(endpoint.listen(Factory.forProtocol(Protocol)))
        self.addCleanup(port.socket.close)
        clients = [
            socket.create_connection(("127.0.0.1", port.getHost().port)) for _ in range(3)
        ]
        for client in clients:
            self.addCleanup(client.close)
        port.doRead()
        self.assertEqual(port.sessionno, 1)
        self.assertIn(port, clock.getReaders())
        port.doRead()
        self.assertEqual(port.sessionno, 2)
        self.assertNotIn(port, clock.getReaders())
        clock.advance(0.5)
        self.assertIn(port, clock.getReaders())
        port.doRead()
        self.assertEqual(port.sessionno, 3)
