"""
The client sends again the requests that may be repeated
(L{glance_tx.client.retry}), and only those.

In memory, against the real site: behind an agent that refuses the first
N connections, or a layer that answers the first N requests 503 with a
C{Retry-After}; the clock is a L{MemoryReactorClock}, so the waits are
read exactly. Over a real socket: through a relay that resets the first
N connections it accepts.
"""

from __future__ import annotations

import io
from collections.abc import Coroutine
from typing import Any, TypeVar

from attrs import define, field
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.protocols import portforward
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource, getChildForRequest
from zope.interface import implementer

from glance_tx.bodies import BytesBody
from glance_tx.client import Client, ConnectionFailed, ServiceUnavailable, TimedOut
from glance_tx.client.retry import RetryPolicy
from glance_tx.client.upload import FileBody
from glance_tx.threads import SynchronousRunner
from tests.api_fixtures import BASE
from tests.test_client import LiveClientTestCase, MemoryClientTestCase

T = TypeVar("T")


@implementer(IAgent)
@define
class RefusingAgent:
    """Refuses the next C{refusals} connections; notes every request and when."""

    agent: IAgent
    clock: IReactorTime
    refusals: int = 0
    sent: list[tuple[bytes, float]] = field(factory=list)

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None) -> Any:
        self.sent.append((method, self.clock.seconds()))
        if self.refusals:
            self.refusals -= 1
            return fail(ConnectionRefusedError("test refusal"))
        return self.agent.request(method, uri, headers, bodyProducer)

    def methods(self) -> list[bytes]:
        return [method for method, _ in self.sent]

    def waits(self) -> list[float]:
        """The time between each request and the one before."""
        times = [when for _, when in self.sent]
        return [later - earlier for earlier, later in zip(times, times[1:], strict=False)]


class Unavailable(Resource):
    """503 (with C{retry_after}, if any) to the next C{times} requests, then C{inner}'s answers."""

    isLeaf = True

    def __init__(self, inner: Any, times: int, retry_after: bytes | None) -> None:
        super().__init__()
        self.inner = inner
        self.times = times
        self.retry_after = retry_after

    def render(self, request: Any) -> Any:
        if not self.times:
            return getChildForRequest(self.inner, request).render(request)
        self.times -= 1
        request.setResponseCode(503)
        request.setHeader(b"Content-Type", b"application/json")
        if self.retry_after is not None:
            request.setHeader(b"Retry-After", self.retry_after)
        return b'{"error": {"code": 503, "message": "The registry is restarting"}}'


class RetryTests(MemoryClientTestCase):
    """Retries against the real site in memory, on an exact clock."""

    def setUp(self) -> None:
        super().setUp()
        self.refusing = RefusingAgent(self.agent, self.clock)
        self.api = Client(
            BASE, HTTPClient(self.refusing), self.clock, runner=SynchronousRunner(),
            retries=3, retry_delay=0.5,
        )

    def drive(self, coroutine: Coroutine[Any, Any, T]) -> Deferred[T]:
        """Run C{coroutine} a quarter second at a time until it ends."""
        d = Deferred.fromCoroutine(coroutine)
        for _ in range(400):
            if d.called:
                break
            self.agent.flush()
            self.clock.advance(0.25)
        return d

    def refused(self, times: int) -> None:
        """The next C{times} connections are refused; the record starts afresh."""
        self.refusing.refusals = times
        self.refusing.sent.clear()

    def unavailable(self, times: int, retry_after: bytes | None = b"2") -> None:
        """The next C{times} requests are answered 503."""
        self.site.resource = Unavailable(self.site.resource, times, retry_after)
        self.refusing.sent.clear()

    def test_get_retried_with_backoff(self) -> None:
        """Three refusals: three more GETs, 0.5, 1 and 2 seconds apart, then the image."""
        image = self.new_image(name="retried")
        self.refused(3)
        shown = self.successResultOf(self.drive(self.api.show(image.id)))
        self.assertEqual(shown.name, "retried")
        self.assertEqual(self.refusing.methods(), [b"GET"] * 4)
        self.assertEqual(self.refusing.waits(), [0.5, 1.0, 2.0])

    def test_gives_up_after_retries(self) -> None:
        """Refused every time: ConnectionFailed after the first try and C{retries} more."""
        self.refused(100)
        self.failureResultOf(self.drive(self.api.show("nope")), ConnectionFailed)
        self.assertEqual(self.refusing.methods(), [b"GET"] * 4)

    def test_retries_zero(self) -> None:
        """C{retries=0}: one try."""
        self.api = Client(BASE, HTTPClient(self.refusing), self.clock, runner=SynchronousRunner(), retries=0)
        self.refused(1)
        self.failureResultOf(self.drive(self.api.show("nope")), ConnectionFailed)
        self.assertEqual(self.refusing.methods(), [b"GET"])

    def test_delete_and_put_retried(self) -> None:
        """A DELETE, and a PUT with a JSON body or none, are sent again."""
        image = self.new_image(name="idempotent")
        self.refused(2)
        self.successResultOf(self.drive(self.api.add_tag(image.id, "kept")))
        self.assertEqual(self.refusing.methods(), [b"PUT"] * 3)
        self.refused(1)
        self.successResultOf(self.drive(self.api.delete(image.id)))
        self.assertEqual(self.refusing.methods(), [b"DELETE"] * 2)
        self.assertEqual(self.wait(self.all_images(name="idempotent")), [])

    def test_list_page_retried(self) -> None:
        """A page refused midway through a listing is fetched again; nothing is lost or doubled."""
        for n in range(3):
            self.new_image(name=f"paged-{n}", tags=["paged"])

        async def listing() -> list[str]:
            names = []
            async for image in self.api.list_images(page_size=1, tag="paged", sort_key="name", sort_dir="asc"):
                names.append(image.name)
                if len(names) == 1:
                    self.refused(1)
            return names

        names = self.successResultOf(self.drive(listing()))
        self.assertEqual(names, ["paged-0", "paged-1", "paged-2"])
        # The second page refused and fetched again, the third, the empty last.
        self.assertEqual(self.refusing.methods(), [b"GET"] * 4)

    def test_never_retried(self) -> None:
        """A create (POST), a patch and a streamed upload are tried once, whatever the failure."""
        image = self.new_image(name="once")
        for call in [
            lambda: self.api.create(name="once-more", disk_format="raw", container_format="bare"),
            lambda: self.api.update(image.id, {"name": "renamed"}),
            lambda: self.api.upload(image.id, io.BytesIO(b"data")),
            lambda: self.api.add_member(image.id, "project"),
        ]:
            self.refused(1)
            self.failureResultOf(self.drive(call()), ConnectionFailed)
            self.assertEqual(len(self.refusing.sent), 1, self.refusing.sent)
        self.assertEqual(self.wait(self.all_images(name="once-more")), [])
        self.assertEqual(self.wait(self.api.show(image.id)).name, "once")

    def test_503_retried_after_retry_after(self) -> None:
        """Two 503s asking for 2 s: two more GETs, 2 s apart each, then the image."""
        image = self.new_image(name="patient")
        self.unavailable(2, b"2")
        shown = self.successResultOf(self.drive(self.api.show(image.id)))
        self.assertEqual(shown.name, "patient")
        self.assertEqual(self.refusing.waits(), [2.0, 2.0])

    def test_503_without_a_usable_retry_after_raised(self) -> None:
        """A 503 without Retry-After, or asking for more than 10 s, is raised at once."""
        image = self.new_image(name="impatient")
        for retry_after, expected in [(None, None), (b"30", 30)]:
            self.unavailable(1, retry_after)
            error = self.failureResultOf(self.drive(self.api.show(image.id)), ServiceUnavailable).value
            self.assertEqual((error.retry_after, len(self.refusing.sent)), (expected, 1))

    def test_503_not_retried_for_create(self) -> None:
        """A create answered 503 is raised, even with a short Retry-After."""
        self.unavailable(1, b"1")
        self.failureResultOf(
            self.drive(self.api.create(name="x", disk_format="raw", container_format="bare")),
            ServiceUnavailable,
        )
        self.assertEqual(self.refusing.methods(), [b"POST"])


class RetryPolicyTests(SynchronousTestCase):
    """The rules, without a server."""

    def test_repeatable(self) -> None:
        """Idempotent methods with a body held whole, or none; nothing else."""
        policy = RetryPolicy()
        stream = FileBody(io.BytesIO(b"x"), SynchronousRunner())
        self.assertEqual(
            [
                policy.repeatable("GET", None), policy.repeatable("HEAD", None),
                policy.repeatable("DELETE", None), policy.repeatable("PUT", BytesBody(b"{}")),
                policy.repeatable("PUT", stream), policy.repeatable("POST", BytesBody(b"{}")),
                policy.repeatable("PATCH", BytesBody(b"[]")), policy.repeatable("POST", None),
            ],
            [True, True, True, True, False, False, False, False],
        )

    def test_wait(self) -> None:
        """
        Doubling waits up to C{longest}; Retry-After as asked, unless past
        C{longest}; no retry on a timeout or another error.
        """
        policy = RetryPolicy(retries=5, delay=1.0, longest=5.0)
        refused = ConnectionFailed("refused")
        self.assertEqual([policy.wait(n, refused) for n in range(1, 7)], [1, 2, 4, 5, 5, None])
        self.assertIsNone(policy.wait(1, TimedOut("slow")))
        self.assertEqual(policy.wait(1, ServiceUnavailable(503, "away", 3)), 3)
        self.assertEqual(policy.wait(1, ServiceUnavailable(503, "away", 0)), 0)
        self.assertIsNone(policy.wait(1, ServiceUnavailable(503, "away", None)))
        self.assertIsNone(policy.wait(1, ServiceUnavailable(503, "away", 6)))
        self.assertIsNone(policy.wait(1, ValueError()))


class _Reset(Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.abortConnection()


class ResettingRelay(portforward.ProxyFactory):
    """Forwards to C{port} on loopback, after resetting the first C{resets} connections."""

    def __init__(self, port: int, resets: int) -> None:
        super().__init__("127.0.0.1", port)
        self.resets = resets
        self.accepted = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.accepted += 1
        if self.accepted <= self.resets:
            return _Reset()
        return super().buildProtocol(addr)


class LiveRetryTests(LiveClientTestCase):
    """Over real sockets, to a real server behind a relay that resets connections."""

    def resetting(self, resets: int) -> tuple[ResettingRelay, Client]:
        relay = ResettingRelay(self.port, resets)
        port: IListeningPort = reactor.listenTCP(0, relay, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]
        return relay, self.client(url, retry_delay=0.01)

    async def test_show_through_resets(self) -> None:
        """Two connections reset: the GET succeeds on the third."""
        image = await self.api.create(name="reset", disk_format="raw", container_format="bare")
        relay, api = self.resetting(2)
        self.assertEqual((await api.show(image.id)).name, "reset")
        self.assertEqual(relay.accepted, 3)

    async def test_create_not_retried(self) -> None:
        """A create whose connection is reset: ConnectionFailed, one try, no image."""
        relay, api = self.resetting(1)
        with self.assertRaises(ConnectionFailed):
            await api.create(name="reset-create", disk_format="raw", container_format="bare")
        self.assertEqual(relay.accepted, 1)
        self.assertEqual([i async for i in self.api.list_images(name="reset-create")], [])
