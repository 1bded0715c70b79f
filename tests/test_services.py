"""
Tests for L{glance_tx.services}: the ready protocol of L{ServiceChain} and
L{ReadyService} (start in order, each once the one before is ready; stop in
reverse, each once the next has stopped; a failed start ends the start), and
what each service starts and stops.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from attrs import define, field
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    connectProtocol,
)
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface.verify import verifyObject

from glance_tx.api.site import GlanceSite, IGracefulFactory
from glance_tx.config import ClientLimits, load_config
from glance_tx.errors import NotFound
from glance_tx.identity.headers import HeaderIdentity
from glance_tx.identity.interface import IIdentityResolver
from glance_tx.identity.keystone import KeystoneIdentity
from glance_tx.registry.interface import IRegistry
from glance_tx.services import (
    IdentityService,
    ListenerService,
    ReadyService,
    RecoveryService,
    RegistryService,
    ServiceChain,
    ThreadPoolService,
)
from glance_tx.store.backends import StoreMap, build_store_map
from glance_tx.threads import SynchronousRunner, ThreadPoolRunner


@define(eq=False)
class Step(ReadyService[str]):
    """A service that records its start and stop, each gated by a Deferred."""

    label: str
    events: list[str]
    gate: Deferred[None] | None = None
    stop_gate: Deferred[None] | None = None
    broken: bool = False

    async def start(self) -> str:
        self.events.append(f"start {self.label}")
        if self.gate is not None:
            await self.gate
        if self.broken:
            raise RuntimeError(f"{self.label} is broken")
        self.events.append(f"ready {self.label}")
        return self.label

    async def stop(self) -> None:
        self.events.append(f"stop {self.label}")
        if self.stop_gate is not None:
            await self.stop_gate
        self.events.append(f"stopped {self.label}")


@define
class Pending:
    """A fake L{glance_tx.services.Ready} whose product the test hands over."""

    waiting: list[Deferred[object]] = field(factory=list)

    def when_ready(self) -> Deferred[object]:
        d: Deferred[object] = Deferred()
        self.waiting.append(d)
        return d

    def give(self, product: object) -> None:
        for d in self.waiting:
            d.callback(product)


def chain(*children: Service) -> ServiceChain:
    top = ServiceChain()
    for child in children:
        child.setServiceParent(top)
    return top


class ServiceChainTests(SynchronousTestCase):
    """The order in which a ServiceChain starts and stops its children."""

    def test_each_child_starts_once_the_one_before_is_ready(self) -> None:
        """
        A child starts only after the one before it is ready: a slow start
        (a migration, say) holds back everything after it, and the chain
        is ready once the last child is.
        """
        events: list[str] = []
        gate: Deferred[None] = Deferred()
        top = chain(Step("a", events, gate=gate), Step("b", events), Step("c", events))
        ready = top.when_ready()
        top.startService()
        self.assertEqual(events, ["start a"])
        self.assertNoResult(ready)
        gate.callback(None)
        self.assertEqual(
            events, ["start a", "ready a", "start b", "ready b", "start c", "ready c"]
        )
        self.assertIsNone(self.successResultOf(ready))

    def test_children_stop_in_reverse_each_once_the_next_has_stopped(self) -> None:
        """
        Stopping stops the last child first and the next one only when it
        has finished stopping (the pool must outlive the registry's close).
        """
        events: list[str] = []
        stop_gate: Deferred[None] = Deferred()
        top = chain(Step("a", events), Step("b", events), Step("c", events, stop_gate=stop_gate))
        top.startService()
        del events[:]
        stopped = top.stopService()
        self.assertEqual(events, ["stop c"])
        self.assertNoResult(stopped)
        stop_gate.callback(None)
        self.assertEqual(
            events, ["stop c", "stopped c", "stop b", "stopped b", "stop a", "stopped a"]
        )
        self.successResultOf(stopped)

    def test_failed_start_ends_the_start(self) -> None:
        """
        A child that fails to start: the ones after it never start, the
        chain's when_ready fails with its error, and stopping stops what
        was started (the failed child included, to release what it took).
        """
        events: list[str] = []
        top = chain(Step("a", events), Step("b", events, broken=True), Step("c", events))
        ready = top.when_ready()
        top.startService()
        self.failureResultOf(ready, RuntimeError)
        self.assertEqual(events, ["start a", "ready a", "start b"])
        del events[:]
        self.successResultOf(top.stopService())
        self.assertEqual(events, ["stop b", "stopped b", "stop a", "stopped a"])

    def test_stop_during_start_waits_for_the_child_starting(self) -> None:
        """
        A stop asked while a child is still starting waits for that start
        to end, starts nothing more, and stops what was started.
        """
        events: list[str] = []
        gate: Deferred[None] = Deferred()
        top = chain(Step("a", events, gate=gate), Step("b", events))
        top.startService()
        stopped = top.stopService()
        self.assertEqual(events, ["start a"])
        self.assertNoResult(stopped)
        gate.callback(None)
        self.assertEqual(events, ["start a", "ready a", "stop a", "stopped a"])
        self.successResultOf(stopped)

    def test_a_child_that_fails_to_stop_does_not_keep_the_rest_running(self) -> None:
        """
        A child whose stop fails is logged, and the children before it are
        still stopped: the thread pool must stop whatever else went wrong.
        """
        events: list[str] = []
        stop_gate: Deferred[None] = Deferred()
        top = chain(Step("a", events), Step("b", events, stop_gate=stop_gate))
        top.startService()
        stopped = top.stopService()
        stop_gate.errback(RuntimeError("b would not stop"))
        self.successResultOf(stopped)
        self.assertIn("stopped a", events)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_plain_services_count_as_ready_once_started(self) -> None:
        """A child that is not a ReadyService is ready as soon as it is started."""
        events: list[str] = []
        plain = Service()
        top = chain(plain, Step("a", events))
        top.startService()
        self.assertTrue(plain.running)
        self.assertEqual(events, ["start a", "ready a"])
        self.successResultOf(top.stopService())
        self.assertFalse(plain.running)


class ReadyServiceTests(SynchronousTestCase):
    """when_ready hands the product to every caller, before or after the start."""

    def test_when_ready_before_and_after_start(self) -> None:
        """
        Asked before the start, when_ready waits for it; asked after, it
        fires at once; every caller gets the product.
        """
        gate: Deferred[None] = Deferred()
        step = Step("a", [], gate=gate)
        early = [step.when_ready(), step.when_ready()]
        step.startService()
        for d in early:
            self.assertNoResult(d)
        gate.callback(None)
        self.assertEqual([self.successResultOf(d) for d in early], ["a", "a"])
        self.assertEqual(self.successResultOf(step.when_ready()), "a")

    def test_failure_goes_to_every_caller(self) -> None:
        """A failed start fails every when_ready, early or late."""
        step = Step("a", [], broken=True)
        early = step.when_ready()
        step.startService()
        self.failureResultOf(early, RuntimeError)
        self.failureResultOf(step.when_ready(), RuntimeError)


class ThreadPoolServiceTests(SynchronousTestCase):
    def test_starts_and_stops_the_pool(self) -> None:
        """The pool runs from the service's start to its stop; the runner is the pool's."""
        pool = ThreadPool(minthreads=0, maxthreads=1)
        service = ThreadPoolService(object(), pool)  # type: ignore[arg-type]
        self.assertFalse(pool.started)
        service.startService()
        runner = self.successResultOf(service.when_ready())
        self.assertIsInstance(runner, ThreadPoolRunner)
        self.assertTrue(pool.started)
        self.successResultOf(service.stopService())
        self.assertTrue(pool.joined)
        self.assertIs(service.registry_runner, service.runner)

    def test_starts_and_stops_the_registry_pool(self) -> None:
        """A registry pool runs from start to stop; the registry runner is its."""
        pool = ThreadPool(minthreads=0, maxthreads=1)
        registry_pool = ThreadPool(minthreads=0, maxthreads=1)
        service = ThreadPoolService(object(), pool, registry_pool)  # type: ignore[arg-type]
        self.assertIs(service.registry_runner.pool, registry_pool)
        self.assertIs(service.runner.pool, pool)
        service.startService()
        self.successResultOf(service.when_ready())
        self.assertTrue(registry_pool.started)
        self.successResultOf(service.stopService())
        self.assertTrue(registry_pool.joined)
        self.assertTrue(pool.joined)


class RegistryPoolTests(TestCase):
    """The registry's calls do not wait for bulk work (issue 14)."""

    async def _registry_answers_while_bulk_blocked(self, separate: bool) -> bool:
        from twisted.internet import reactor

        pool = ThreadPool(minthreads=0, maxthreads=2)
        registry_pool = ThreadPool(minthreads=0, maxthreads=1) if separate else None
        threads = ThreadPoolService(reactor, pool, registry_pool)
        url = "sqlite:///" + os.path.join(os.path.abspath(self.mktemp()), "glance.sqlite")
        service = RegistryService(url, threads.registry_runner)
        threads.startService()
        await threads.when_ready()
        self.addCleanup(threads.stopService)
        service.startService()
        registry = await service.when_ready()
        self.addCleanup(service.stopService)
        release = threading.Event()
        self.addCleanup(release.set)
        holding = []
        left = []

        def hold() -> None:
            holding.append(threading.get_ident())
            release.wait(60)
            left.append(threading.get_ident())

        # Every bulk thread blocked, as by slow hash or write batches.
        blocked = [threads.runner.run(hold) for _ in range(pool.max)]
        # Only once they all hold a thread: until then a registry thread
        # still finishing the start's last call (a draining runner's) could
        # take the read from its queue on the shared pool, and the control
        # would answer.
        while len(holding) < pool.max:
            await deferLater(reactor, 0.01, lambda: None)
        # A metadata GET's read (of an image that is not there: any read).
        read = registry.get("4c7f4b4e-8a0b-4d8e-9e57-2b1d3f0a5c6d")
        read.addErrback(lambda f: f.trap(NotFound))
        if separate:
            # Polled with a generous bound (a loaded machine may take a
            # while to start the registry's thread): answered, and while
            # every bulk job still held its thread.
            for _ in range(3000):
                if read.called:
                    break
                await deferLater(reactor, 0.01, lambda: None)
            answered = read.called and not left
        else:
            answered = await deferLater(reactor, 0.5, lambda: read.called)
        release.set()
        for d in blocked:
            await d
        await read
        return answered

    async def test_registry_call_while_bulk_threads_are_busy(self) -> None:
        """
        With every bulk thread held by a slow job, a registry call on its
        own pool still completes.
        """
        self.assertTrue(await self._registry_answers_while_bulk_blocked(separate=True))

    async def test_shared_pool_waits(self) -> None:
        """The control: on one pool the same call waits for the bulk jobs."""
        self.assertFalse(await self._registry_answers_while_bulk_blocked(separate=False))


class RegistryServiceTests(SynchronousTestCase):
    def test_opens_and_closes_the_registry(self) -> None:
        """
        The service makes the SQLite file's directory, opens (migrates) the
        registry there, hands it on as an IRegistry and closes it at stop.
        """
        directory = os.path.join(os.path.abspath(self.mktemp()), "new", "dir")
        service = RegistryService(f"sqlite:///{directory}/glance.sqlite", SynchronousRunner())
        service.startService()
        registry = self.successResultOf(service.when_ready())
        self.assertTrue(verifyObject(IRegistry, registry))
        self.successResultOf(registry.ping())
        self.assertTrue(os.path.exists(os.path.join(directory, "glance.sqlite")))
        self.successResultOf(service.stopService())
        self.assertIsNone(service.registry)

    def test_in_memory_database(self) -> None:
        """An in-memory database needs no directory."""
        service = RegistryService("sqlite://", SynchronousRunner())
        service.startService()
        self.successResultOf(self.successResultOf(service.when_ready()).ping())
        self.successResultOf(service.stopService())


class RecoveryServiceTests(SynchronousTestCase):
    def stores(self) -> StoreMap:
        config = load_config(data_dir=os.path.abspath(self.mktemp()))
        return self.successResultOf(
            Deferred.fromCoroutine(build_store_map(config, SynchronousRunner(), MemoryReactorClock()))
        )

    def test_recovers_once_registry_and_stores_are_ready(self) -> None:
        """Recovery waits for the registry and the stores, and is ready once it ran."""
        registry_service = RegistryService("sqlite://", SynchronousRunner())
        registry_service.startService()
        self.addCleanup(registry_service.stopService)
        stores = Pending()
        recovery = RecoveryService(registry_service, stores, Clock(), "node", 60)
        recovery.startService()
        ready = recovery.when_ready()
        self.assertNoResult(ready)
        stores.give(self.stores())
        self.successResultOf(ready)

    def test_disabled(self) -> None:
        """
        With recover_on_start false it is ready at once, without waiting for
        (or touching) the registry or the stores.
        """
        recovery = RecoveryService(Pending(), Pending(), Clock(), "node", 60, enabled=False)  # type: ignore[arg-type]
        recovery.startService()
        self.successResultOf(recovery.when_ready())


class ListenerServiceTests(TestCase):
    """A real endpoint on the reactor: listening exactly from ready to stop."""

    async def test_listens_once_the_factory_is_made_until_stopped(self) -> None:
        """
        Nothing listens until the factory is made; then connections are
        accepted; after the stop they are refused.
        """
        from twisted.internet import reactor

        made: Deferred[Factory] = Deferred()
        listener = ListenerService(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
            lambda: made,
            "test",
        )
        listener.startService()
        self.assertIsNone(listener.port)
        made.callback(Factory.forProtocol(Protocol))
        port = await listener.when_ready()
        address = port.getHost()
        client = TCP4ClientEndpoint(reactor, "127.0.0.1", address.port)
        connected = await client.connect(Factory.forProtocol(Protocol))
        assert connected.transport is not None
        connected.transport.loseConnection()
        await listener.stopService()
        with self.assertRaises(ConnectionRefusedError):
            await client.connect(Factory.forProtocol(Protocol))


class _Slow(Resource):
    """C{/slow} is answered when the test says; anything else at once."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.arrived: Deferred[Request] = Deferred()

    def render(self, request: Request) -> Any:
        if request.path == b"/slow":
            self.arrived.callback(request)
            return NOT_DONE_YET
        return b"ok"


class _Raw(Protocol):
    """A client that keeps every byte and fires C{closed} at the end."""

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()
        self.more: Deferred[None] | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        more, self.more = self.more, None
        if more is not None:
            more.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)

    async def until(self, ending: bytes) -> None:
        while not self.received.endswith(ending):
            self.more = Deferred()
            await self.more


class GracefulStopTests(TestCase):
    """
    A GlanceSite behind a ListenerService on a real socket: at stop,
    requests in flight are answered, idle connections closed, and what
    is left after graceful_shutdown_timeout aborted.
    """

    timeout = 20

    async def serve(self, grace: float | None = 30.0) -> tuple[ListenerService, _Slow, int]:
        from twisted.internet import reactor

        resource = _Slow()
        site = GlanceSite(
            resource,
            reactor=reactor,
            client_limits=ClientLimits(graceful_shutdown_timeout=grace),
        )
        listener = ListenerService(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), lambda: succeed(site), "test"
        )
        listener.startService()
        port = await listener.when_ready()
        return listener, resource, port.getHost().port

    async def connect(self, port: int) -> _Raw:
        from twisted.internet import reactor

        client = _Raw()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        return client

    async def test_request_in_flight_is_answered_then_closed(self) -> None:
        """
        A request in flight when the stop begins is answered 200 with
        Connection: close, then its connection closes; the stop waits for
        it, and a new connection is refused meanwhile.
        """
        from twisted.internet import reactor

        verifyObject(IGracefulFactory, GlanceSite(Resource()))
        listener, resource, port = await self.serve()
        client = await self.connect(port)
        assert client.transport is not None
        client.transport.write(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n")
        request = await resource.arrived
        stopping = listener.stopService()
        await deferLater(reactor, 0.05)
        self.assertNoResult(stopping)
        with self.assertRaises(ConnectionRefusedError):
            await self.connect(port)
        request.setHeader(b"Content-Length", b"4")
        request.write(b"done")
        request.finish()
        await client.closed
        await stopping
        head, _, body = client.received.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertIn(b"connection: close", head.lower())
        self.assertEqual(body, b"done")

    async def test_idle_connection_closed_at_once(self) -> None:
        """
        A kept connection between requests is closed as the stop begins;
        the stop does not wait for graceful_shutdown_timeout (30 s here,
        longer than the test's timeout).
        """
        listener, resource, port = await self.serve(grace=30.0)
        client = await self.connect(port)
        assert client.transport is not None
        client.transport.write(b"GET /fast HTTP/1.1\r\nHost: h\r\n\r\n")
        await client.until(b"ok")
        self.assertNotIn(b"connection: close", client.received.lower())
        await listener.stopService()
        await client.closed

    async def test_grace_period_aborts_a_stalled_request(self) -> None:
        """
        A request whose body stalls is cut once graceful_shutdown_timeout
        has passed, and the stop then ends.
        """
        from twisted.internet import reactor

        listener, resource, port = await self.serve(grace=0.5)
        client = await self.connect(port)
        assert client.transport is not None
        client.transport.write(
            b"PUT /fast HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\nsome"
        )
        await deferLater(reactor, 0.05)  # the server has the head
        started = reactor.seconds()
        await listener.stopService()
        await client.closed
        self.assertGreaterEqual(reactor.seconds() - started, 0.45)
        self.assertEqual(client.received, b"")


class IdentityServiceTests(SynchronousTestCase):
    """The identity part of the tree makes auth_strategy's provider."""

    def make(self, text: str) -> object:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        service = IdentityService(MemoryReactorClock(), load_config(path), SynchronousRunner())
        service.startService()
        resolver = self.successResultOf(service.when_ready())
        self.assertTrue(verifyObject(IIdentityResolver, resolver))
        self.addCleanup(lambda: self.successResultOf(service.stopService()))
        return resolver

    def test_noauth(self) -> None:
        """noauth (the default): the headers, with default_project."""
        resolver = self.make("[DEFAULT]\ndefault_project = p0\n")
        self.assertEqual(resolver, HeaderIdentity("p0"))

    def test_keystone(self) -> None:
        """keystone: the Keystone provider, challenging with www_authenticate_uri."""
        resolver = self.make(
            "[DEFAULT]\nauth_strategy = keystone\n[keystone_authtoken]\n"
            "auth_url = http://ks:5000\nusername = u\npassword = p\nproject_name = s\n"
            "www_authenticate_uri = https://ks.example\n"
        )
        assert isinstance(resolver, KeystoneIdentity)
        self.assertEqual(resolver.challenge, 'Keystone uri="https://ks.example"')
