"""
Tests for L{glance_tx.purge} and L{glance_tx.registry.purging}: which URLs
are purged and how failures are retried (in memory, on a L{Clock}); that
L{PurgingRegistry} is a faithful L{IRegistry} that purges after exactly the
right operations; and, end to end, that deleting an image through a real
glance-tx sends PURGE requests to a real HTTP server on loopback.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from attrs import Factory, define, field
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IAgent, IRequest
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from glance_tx.errors import Conflict, NotFound
from glance_tx.images import (
    ACTIVE,
    DEACTIVATED,
    DELETED,
    PENDING_DELETE,
    QUEUED,
    SAVING,
    ImageQuery,
    ImageUpdate,
)
from glance_tx.purge import IPurger, Purger, purge_paths
from glance_tx.registry.interface import IRegistry
from glance_tx.registry.purging import PurgingRegistry
from glance_tx.registry.sql import SQLRegistry, open_sql_registry
from glance_tx.threads import SynchronousRunner
from tests.registry_conformance import RegistryConformanceMixin, make_image
from tests.test_end_to_end import ServerTestCase

IMAGE = "6f1f3b52-3f0e-4c8e-9d6a-2b1c1f0e5a77"
VARNISH = "http://127.0.0.1:6081"
SQUID = "http://10.1.2.3:3128"

#: What must be purged for IMAGE on one proxy, spelled out.
PATHS = (
    f"/v1/images/{IMAGE}",
    f"/images/{IMAGE}",
    f"/v2/images/{IMAGE}/file",
    f"/v2/images/{IMAGE}",
    "/v1/images/detail",
    "/images/detail",
    "/v1/images",
    "/images",
    "/v2/images",
)


# -- fakes ---------------------------------------------------------------------


@define
class Seen:
    """One request a fake proxy received."""

    method: str
    host: str
    path: str

    @property
    def url(self) -> str:
        return f"http://{self.host}{self.path}"


class FakeProxy(Resource):
    """
    A caching proxy's PURGE handling: records every request; the Nth
    request for a URL is answered with C{codes[N-1]}, or C{then} once the
    codes are used up. With C{only}, just that path gets C{codes}.
    """

    isLeaf = True

    def __init__(
        self, codes: Sequence[int] = (), then: int = 200, only: str | None = None
    ) -> None:
        super().__init__()
        self.codes = list(codes)
        self.then = then
        self.only = only
        self.seen: list[Seen] = []
        self.waiters: list[tuple[int, Deferred[None]]] = []

    def count(self, url: str) -> int:
        return sum(1 for s in self.seen if s.url == url)

    def counts(self) -> Counter[str]:
        return Counter(s.url for s in self.seen)

    def wait_for(self, n: int) -> Deferred[None]:
        """Fire once C{n} requests have arrived."""
        if len(self.seen) >= n:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self.waiters.append((n, d))
        return d

    def render(self, request: IRequest) -> bytes:
        seen = Seen(
            method=request.method.decode("ascii"),
            host=(request.getHeader(b"host") or b"").decode("ascii"),
            path=request.uri.decode("ascii"),
        )
        self.seen.append(seen)
        n = self.count(seen.url)
        scripted = self.only is None or seen.path == self.only
        code = self.codes[n - 1] if scripted and n <= len(self.codes) else self.then
        request.setResponseCode(code)
        for waiter in [w for w in self.waiters if len(self.seen) >= w[0]]:
            self.waiters.remove(waiter)
            waiter[1].callback(None)
        return b"Purged" if code == 200 else b"Nope"


@implementer(IAgent)
@define
class FakeAgent:
    """
    An agent that never reaches a server: each request is recorded, then
    refused (C{hang=False}) or never answered (C{hang=True}; cancelling
    it is counted).
    """

    hang: bool = False
    requests: list[tuple[bytes, bytes]] = Factory(list)
    cancelled: int = 0

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Any = None,
        bodyProducer: Any = None,
    ) -> Deferred[Any]:
        self.requests.append((method, uri))
        if not self.hang:
            return fail(ConnectionRefusedError("refused"))

        def cancel(d: Deferred[Any]) -> None:
            self.cancelled += 1

        return Deferred(cancel)


@implementer(IPurger)
@define
class RecordingPurger:
    """An L{IPurger} that records what it is asked to purge."""

    purged: list[str] = Factory(list)
    #: Called with the image id before recording, to look at the registry.
    check: Callable[[str], None] | None = None

    def purge(self, image_id: str) -> Deferred[None]:
        if self.check is not None:
            self.check(image_id)
        self.purged.append(image_id)
        return Deferred()  # never fires: nobody may wait for it


@implementer(IPurger)
class BrokenPurger:
    """An L{IPurger} with a bug."""

    def purge(self, image_id: str) -> Deferred[None]:
        raise RuntimeError("purger bug")


def messages(events: Sequence[LogEvent], level: LogLevel) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_level") == level]


# -- the purger ----------------------------------------------------------------


@define
class PurgerHarness:
    """A L{Purger} on a L{Clock}, talking to a L{FakeProxy} through StubTreq."""

    proxy: FakeProxy
    clock: Clock = field(factory=Clock)
    proxies: tuple[str, ...] = (VARNISH, SQUID)
    attempts: int = 5
    purger: Purger = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.purger = Purger(
            client=StubTreq(self.proxy),
            clock=self.clock,
            proxies=self.proxies,
            attempts=self.attempts,
        )


class PurgerURLTests(SynchronousTestCase):
    """Where PURGE requests go."""

    def test_provides_interface(self) -> None:
        """Purger provides IPurger."""
        purger = PurgerHarness(FakeProxy()).purger
        self.assertTrue(verifyObject(IPurger, purger))

    def test_paths(self) -> None:
        """
        The paths purged for an image: v1 data/metadata (versioned and
        unversioned), v2 data, v2 metadata, and the listings.
        """
        self.assertEqual(purge_paths(IMAGE), PATHS)

    def test_purges_every_path_on_every_proxy(self) -> None:
        """
        purge sends one PURGE per path to each proxy, with the proxy's
        authority as Host, and fires once all are done; nothing is logged.
        """
        proxy = FakeProxy()
        harness = PurgerHarness(proxy)
        with capturedLogs() as events:
            d = harness.purger.purge(IMAGE)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(
            sorted((s.method, s.host, s.path) for s in proxy.seen),
            sorted(
                ("PURGE", host, path)
                for host in ("127.0.0.1:6081", "10.1.2.3:3128")
                for path in PATHS
            ),
        )
        self.assertEqual(harness.purger.urls(IMAGE), [p + path for p in (VARNISH, SQUID) for path in PATHS])
        self.assertEqual(harness.purger.pending, 0)
        self.assertEqual(messages(events, LogLevel.warn) + messages(events, LogLevel.error), [])

    def test_base_url_with_path_and_slash(self) -> None:
        """A proxy base URL may carry a path prefix and a trailing slash."""
        purger = PurgerHarness(FakeProxy(), proxies=("http://cache.example/glance/",)).purger
        self.assertEqual(
            purger.urls(IMAGE)[:2],
            [
                f"http://cache.example/glance/v1/images/{IMAGE}",
                f"http://cache.example/glance/images/{IMAGE}",
            ],
        )

    def test_no_proxies(self) -> None:
        """With no proxies configured, purge sends nothing and fires at once."""
        agent = FakeAgent()
        purger = Purger(client=HTTPClient(agent), clock=Clock(), proxies=())
        self.assertIsNone(self.successResultOf(purger.purge(IMAGE)))
        self.assertEqual(agent.requests, [])
        self.assertEqual(purger.pending, 0)


class PurgerRetryTests(SynchronousTestCase):
    """How answers and failures are handled, on a Clock."""

    def test_2xx_and_404_are_done(self) -> None:
        """204 and 404 (nothing cached) end a purge: no retry, no log."""
        for code in (200, 204, 404):
            proxy = FakeProxy(then=code)
            harness = PurgerHarness(proxy)
            with capturedLogs() as events:
                self.successResultOf(harness.purger.purge(IMAGE))
                harness.clock.advance(3600)
            self.assertEqual(len(proxy.seen), 2 * len(PATHS))
            self.assertEqual(messages(events, LogLevel.warn), [])

    def test_retry_with_exponential_backoff(self) -> None:
        """
        A failed PURGE is retried 1, 2, then 4 seconds after each failure,
        each failure logged as a warning, until it succeeds; purge fires
        only then.
        """
        proxy = FakeProxy(codes=[503, 500, 403])
        harness = PurgerHarness(proxy)
        url = VARNISH + PATHS[0]
        with capturedLogs() as events:
            d = harness.purger.purge(IMAGE)
            for wait, count in [(0, 1), (0.5, 1), (0.5, 2), (1.5, 2), (0.5, 3),
                                (3.5, 3), (0.5, 4), (3600, 4)]:
                harness.clock.advance(wait)
                self.assertEqual(proxy.count(url), count, f"after {harness.clock.seconds()}")
        self.successResultOf(d)
        self.assertEqual(set(proxy.counts().values()), {4})
        self.assertEqual(harness.purger.pending, 0)
        warnings = [m for m in messages(events, LogLevel.warn) if url + " " in m]
        self.assertEqual(len(warnings), 3)
        self.assertIn("attempt 1 of 5: HTTP 503); retrying in 1.0 s", warnings[0])
        self.assertIn("attempt 2 of 5: HTTP 500); retrying in 2.0 s", warnings[1])
        self.assertIn("attempt 3 of 5: HTTP 403); retrying in 4.0 s", warnings[2])
        self.assertEqual(messages(events, LogLevel.error), [])

    def test_backoff_is_capped(self) -> None:
        """The wait doubles up to max_delay and stays there."""
        agent = FakeAgent()
        clock = Clock()
        purger = Purger(
            client=HTTPClient(agent), clock=clock, proxies=(VARNISH,),
            attempts=8, first_delay=0.5, max_delay=5.0,
        )
        with capturedLogs() as events:
            purger.purge(IMAGE)
            clock.pump([0.5] * 100)
        delays = [
            e["delay"] for e in events
            if e.get("log_level") == LogLevel.warn and e.get("url") == VARNISH + PATHS[0]
        ]
        self.assertEqual(delays, [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0])

    def test_give_up(self) -> None:
        """
        After purge_attempts failures the purge gives up: an error names
        the URL, the image and the last reason; nothing more is sent and
        purge fires (it never fails).
        """
        proxy = FakeProxy(then=503)
        harness = PurgerHarness(proxy, proxies=(VARNISH,), attempts=3)
        with capturedLogs() as events:
            d = harness.purger.purge(IMAGE)
            harness.clock.advance(1)
            self.assertNoResult(d)
            harness.clock.advance(2)
            harness.clock.advance(3600)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(set(proxy.counts().values()), {3})
        errors = messages(events, LogLevel.error)
        self.assertEqual(len(errors), len(PATHS))
        self.assertIn(
            f"Giving up on PURGE {VARNISH}/v2/images/{IMAGE}/file for image {IMAGE} "
            "after 3 attempts (HTTP 503)",
            "\n".join(errors),
        )
        self.assertEqual(len(messages(events, LogLevel.warn)), 2 * len(PATHS))

    def test_connection_failure_is_retried(self) -> None:
        """A connection that cannot be made is a failed attempt, retried."""
        agent = FakeAgent()
        clock = Clock()
        purger = Purger(client=HTTPClient(agent), clock=clock, proxies=(VARNISH,), attempts=2)
        with capturedLogs() as events:
            d = purger.purge(IMAGE)
            self.assertEqual(len(agent.requests), len(PATHS))
            clock.advance(1)
        self.successResultOf(d)
        self.assertEqual(len(agent.requests), 2 * len(PATHS))
        self.assertEqual({m for m, _ in agent.requests}, {b"PURGE"})
        self.assertIn("ConnectionRefusedError", messages(events, LogLevel.warn)[0])
        self.assertEqual(len(messages(events, LogLevel.error)), len(PATHS))

    def test_timeout(self) -> None:
        """
        A proxy that never answers: the request is cancelled after
        request_timeout seconds, logged, and retried.
        """
        agent = FakeAgent(hang=True)
        clock = Clock()
        purger = Purger(
            client=HTTPClient(agent), clock=clock, proxies=(VARNISH,),
            attempts=2, request_timeout=10,
        )
        with capturedLogs() as events:
            d = purger.purge(IMAGE)
            clock.advance(9.5)
            self.assertEqual(agent.cancelled, 0)
            clock.advance(0.5)
            self.assertEqual(agent.cancelled, len(PATHS))
            clock.advance(1)
            self.assertEqual(len(agent.requests), 2 * len(PATHS))
            clock.advance(10)
        self.successResultOf(d)
        self.assertIn("TimeoutError", messages(events, LogLevel.warn)[0])
        self.assertEqual(len(messages(events, LogLevel.error)), len(PATHS))

    def test_purges_run_side_by_side(self) -> None:
        """Each URL retries on its own: one failing URL does not hold up another."""
        proxy = FakeProxy(codes=[503], only=PATHS[0])
        harness = PurgerHarness(proxy, proxies=(VARNISH,))
        first = VARNISH + PATHS[0]
        with capturedLogs():
            harness.purger.purge(IMAGE)
        self.assertEqual(harness.purger.pending, 1)
        self.assertEqual(proxy.count(first), 1)
        harness.clock.advance(1)
        self.assertEqual(harness.purger.pending, 0)
        self.assertEqual(proxy.count(first), 2)


class PurgerStopTests(SynchronousTestCase):
    """Shutting down with purges in flight."""

    def test_stop_cancels_retries(self) -> None:
        """
        stop() with no grace cancels the waits to retry, logs each purge as
        abandoned, and fires; nothing more is sent.
        """
        proxy = FakeProxy(then=503)
        harness = PurgerHarness(proxy, proxies=(VARNISH,))
        with capturedLogs() as events:
            d = harness.purger.purge(IMAGE)
            self.assertEqual(harness.purger.pending, len(PATHS))
            self.successResultOf(harness.purger.stop())
            harness.clock.advance(3600)
        self.successResultOf(d)
        self.assertEqual(harness.purger.pending, 0)
        self.assertEqual(len(proxy.seen), len(PATHS))
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        abandoned = [m for m in messages(events, LogLevel.warn) if "abandoned at shutdown" in m]
        self.assertEqual(len(abandoned), len(PATHS))

    def test_stop_cancels_requests_in_flight(self) -> None:
        """stop() cancels requests waiting for an answer."""
        agent = FakeAgent(hang=True)
        clock = Clock()
        purger = Purger(client=HTTPClient(agent), clock=clock, proxies=(VARNISH,))
        with capturedLogs() as events:
            purger.purge(IMAGE)
            self.successResultOf(purger.stop())
        self.assertEqual(agent.cancelled, len(PATHS))
        self.assertEqual(purger.pending, 0)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(len(messages(events, LogLevel.warn)), len(PATHS))
        self.assertEqual(messages(events, LogLevel.error), [])

    def test_stop_waits_for_grace(self) -> None:
        """
        stop(grace) lets retries go on for up to grace seconds, and fires as
        soon as the purges are done.
        """
        proxy = FakeProxy(codes=[503])
        harness = PurgerHarness(proxy, proxies=(VARNISH,))
        with capturedLogs() as events:
            harness.purger.purge(IMAGE)
            d = harness.purger.stop(grace=5)
            self.assertNoResult(d)
            harness.clock.advance(1)
        self.successResultOf(d)
        self.assertEqual(set(proxy.counts().values()), {2})
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        self.assertFalse([m for m in messages(events, LogLevel.warn) if "abandoned" in m])

    def test_stop_grace_runs_out(self) -> None:
        """After grace seconds, what is left is cancelled."""
        proxy = FakeProxy(then=503)
        harness = PurgerHarness(proxy, proxies=(VARNISH,))
        with capturedLogs() as events:
            harness.purger.purge(IMAGE)
            d = harness.purger.stop(grace=2)
            harness.clock.advance(1)  # second attempt, fails; next in 2 s
            self.assertNoResult(d)
            harness.clock.advance(1)
        self.successResultOf(d)
        self.assertEqual(set(proxy.counts().values()), {2})
        abandoned = [m for m in messages(events, LogLevel.warn) if "abandoned" in m]
        self.assertEqual(len(abandoned), len(PATHS))

    def test_purge_after_stop(self) -> None:
        """Once stopped, purge sends nothing, logs an error, and fires."""
        proxy = FakeProxy()
        harness = PurgerHarness(proxy)
        self.successResultOf(harness.purger.stop())
        with capturedLogs() as events:
            self.successResultOf(harness.purger.purge(IMAGE))
        self.assertEqual(proxy.seen, [])
        self.assertEqual(len(messages(events, LogLevel.error)), 1)


class PurgerSecondRoundTests(SynchronousTestCase):
    """
    The second round, for proxy fills that were in flight at the first:
    scheduled on the purger's clock, retried like the first, dropped at stop.
    """

    def harness(self, proxy: FakeProxy, repeat_delay: float = 5.0) -> PurgerHarness:
        harness = PurgerHarness(proxy, proxies=(VARNISH,))
        harness.purger.repeat_delay = repeat_delay
        return harness

    def test_second_round(self) -> None:
        """
        Every URL is purged at once, and again repeat_delay seconds later;
        purge fires after the first round, without waiting for the second.
        """
        proxy = FakeProxy()
        harness = self.harness(proxy)
        d = harness.purger.purge(IMAGE)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(set(proxy.counts().values()), {1})
        harness.clock.advance(4.9)
        self.assertEqual(len(proxy.seen), len(PATHS))
        harness.clock.advance(0.1)
        self.assertEqual(proxy.counts(), Counter({VARNISH + path: 2 for path in PATHS}))
        harness.clock.advance(3600)
        self.assertEqual(len(proxy.seen), 2 * len(PATHS))
        self.assertEqual(harness.clock.getDelayedCalls(), [])

    def test_second_round_retries(self) -> None:
        """A failed PURGE of the second round is retried with the same backoff."""
        proxy = FakeProxy(codes=[200, 503, 500])
        harness = self.harness(proxy)
        url = VARNISH + PATHS[0]
        with capturedLogs() as events:
            harness.purger.purge(IMAGE)
            for wait, count in [(5, 2), (0.9, 2), (0.1, 3), (1.9, 3), (0.1, 4), (3600, 4)]:
                harness.clock.advance(wait)
                self.assertEqual(proxy.count(url), count, f"after {harness.clock.seconds()}")
        self.assertEqual(harness.purger.pending, 0)
        warnings = [m for m in messages(events, LogLevel.warn) if url + " " in m]
        self.assertEqual(len(warnings), 2)
        self.assertIn("attempt 1 of 5: HTTP 503); retrying in 1.0 s", warnings[0])

    def test_purging_again_pushes_the_second_round_back(self) -> None:
        """
        Purging an image whose second round is still waiting sends a first
        round now and moves the one second round to repeat_delay from now.
        """
        proxy = FakeProxy()
        harness = self.harness(proxy)
        harness.purger.purge(IMAGE)
        harness.clock.advance(3)
        harness.purger.purge(IMAGE)
        self.assertEqual(len(harness.clock.getDelayedCalls()), 1)
        harness.clock.advance(2)
        self.assertEqual(set(proxy.counts().values()), {2})
        harness.clock.advance(3)
        self.assertEqual(set(proxy.counts().values()), {3})
        harness.clock.advance(3600)
        self.assertEqual(set(proxy.counts().values()), {3})

    def test_images_have_their_own_rounds(self) -> None:
        """Each image purged gets its own second round."""
        other = "0b3c4a2e-8b1f-4a47-9a2c-3c7e5f1d2a10"
        proxy = FakeProxy()
        harness = self.harness(proxy)
        harness.purger.purge(IMAGE)
        harness.clock.advance(1)
        harness.purger.purge(other)
        harness.clock.advance(4)
        self.assertEqual(proxy.count(f"{VARNISH}/v2/images/{IMAGE}/file"), 2)
        self.assertEqual(proxy.count(f"{VARNISH}/v2/images/{other}/file"), 1)
        harness.clock.advance(1)
        self.assertEqual(proxy.count(f"{VARNISH}/v2/images/{other}/file"), 2)

    def test_zero_disables(self) -> None:
        """With repeat_delay 0 there is one round and nothing is scheduled."""
        proxy = FakeProxy()
        harness = self.harness(proxy, repeat_delay=0)
        harness.purger.purge(IMAGE)
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        harness.clock.advance(3600)
        self.assertEqual(len(proxy.seen), len(PATHS))

    def test_stop_drops_waiting_rounds(self) -> None:
        """
        stop() cancels the second rounds not yet due, logging each as not
        sent, and leaves nothing on the clock; nothing more is sent.
        """
        proxy = FakeProxy()
        harness = self.harness(proxy)
        harness.purger.purge(IMAGE)
        with capturedLogs() as events:
            self.successResultOf(harness.purger.stop(grace=5))
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        harness.clock.advance(3600)
        self.assertEqual(len(proxy.seen), len(PATHS))
        self.assertEqual(
            messages(events, LogLevel.warn),
            [f"Second PURGE round for image {IMAGE} not sent: shutting down"],
        )

    def test_stop_during_second_round(self) -> None:
        """A second round under way at stop is given the grace, then cancelled."""
        proxy = FakeProxy(codes=[200], then=503)
        harness = self.harness(proxy)
        with capturedLogs() as events:
            harness.purger.purge(IMAGE)
            harness.clock.advance(5)
            self.assertEqual(harness.purger.pending, len(PATHS))
            d = harness.purger.stop(grace=2)
            harness.clock.advance(1)
            self.assertNoResult(d)
            harness.clock.advance(1)
        self.successResultOf(d)
        self.assertEqual(harness.clock.getDelayedCalls(), [])
        abandoned = [m for m in messages(events, LogLevel.warn) if "abandoned" in m]
        self.assertEqual(len(abandoned), len(PATHS))


# -- the purging registry ------------------------------------------------------


def memory_registry(case: SynchronousTestCase) -> SQLRegistry:
    """An empty SQLRegistry on in-memory SQLite, closed after the test."""
    registry = case.successResultOf(
        Deferred.fromCoroutine(open_sql_registry("sqlite://", SynchronousRunner()))
    )
    case.addCleanup(lambda: case.successResultOf(registry.close()))
    return registry


class PurgingRegistryConformanceTests(RegistryConformanceMixin, SynchronousTestCase):
    """The whole IRegistry contract holds through PurgingRegistry."""

    def make_registry(self) -> PurgingRegistry:
        return PurgingRegistry(memory_registry(self), RecordingPurger())


class PurgingRegistryTests(SynchronousTestCase):
    """Exactly the operations that take an image from someone purge it."""

    def setUp(self) -> None:
        self.purger = RecordingPurger()
        self.registry: IRegistry = PurgingRegistry(memory_registry(self), self.purger)

    def create(self, **fields: Any) -> str:
        return self.successResultOf(self.registry.create(make_image(**fields))).id

    def update(self, image_id: str, **fields: Any) -> None:
        self.successResultOf(self.registry.update(image_id, ImageUpdate(fields=fields)))

    def test_delete_purges(self) -> None:
        """A successful delete purges the image, after it is committed."""
        image_id = self.create(status=ACTIVE, visibility="public")
        states: list[str] = []
        self.purger.check = lambda i: states.append(
            self.successResultOf(self.registry.get(i, include_deleted=True)).status
        )
        self.successResultOf(self.registry.delete(image_id))
        self.assertEqual(self.purger.purged, [image_id])
        self.assertEqual(states, [DELETED])

    def test_status_changes(self) -> None:
        """
        An update to deleted, deactivated or pending_delete purges; to
        saving, active (upload or reactivation) does not.
        """
        for path, purges in [
            ([SAVING, ACTIVE], 0),
            ([ACTIVE, DEACTIVATED], 1),
            ([ACTIVE, DEACTIVATED, ACTIVE], 1),
            ([ACTIVE, PENDING_DELETE], 1),
            ([DELETED], 1),
            ([ACTIVE, DELETED], 1),
        ]:
            self.purger.purged.clear()
            image_id = self.create(status=QUEUED)
            for status in path:
                self.update(image_id, status=status)
            self.assertEqual(self.purger.purged, [image_id] * purges, path)

    def test_expected_status_update_purges(self) -> None:
        """A deactivation through expected_status (v2's action) purges."""
        image_id = self.create(status=ACTIVE)
        self.successResultOf(
            self.registry.update(
                image_id, ImageUpdate(fields={"status": DEACTIVATED}), frozenset({ACTIVE})
            )
        )
        self.assertEqual(self.purger.purged, [image_id])

    def test_visibility_changes(self) -> None:
        """Making an image shared or private purges it; wider visibility does not."""
        for old, new, purges in [
            ("public", "private", 1),
            ("public", "shared", 1),
            ("community", "private", 1),
            ("community", "shared", 1),
            ("shared", "private", 1),
            ("public", "community", 0),
            ("community", "public", 0),
            ("private", "public", 0),
            ("shared", "community", 0),
        ]:
            self.purger.purged.clear()
            image_id = self.create(status=ACTIVE, visibility=old)
            self.update(image_id, visibility=new)
            self.assertEqual(self.purger.purged, [image_id] * purges, (old, new))

    def test_other_updates_do_not_purge(self) -> None:
        """Metadata, property, tag and location changes purge nothing."""
        image_id = self.create(status=ACTIVE, visibility="public")
        self.update(image_id, name="renamed", min_ram=512, os_hidden=True)
        self.successResultOf(
            self.registry.update(image_id, ImageUpdate(properties={"a": "b"}, tags=frozenset({"t"})))
        )
        self.update(image_id, locations=("file:///elsewhere",))
        self.assertEqual(self.purger.purged, [])

    def test_members(self) -> None:
        """
        Removing a member, or a member status other than accepted, purges;
        adding a member or accepting does not.
        """
        image_id = self.create(status=ACTIVE, visibility="shared")
        self.successResultOf(self.registry.add_member(image_id, "p1"))
        self.successResultOf(self.registry.add_member(image_id, "p2"))
        self.assertEqual(self.purger.purged, [])
        self.successResultOf(self.registry.update_member(image_id, "p1", "accepted"))
        self.assertEqual(self.purger.purged, [])
        self.successResultOf(self.registry.update_member(image_id, "p1", "rejected"))
        self.assertEqual(self.purger.purged, [image_id])
        self.successResultOf(self.registry.update_member(image_id, "p2", "pending"))
        self.assertEqual(self.purger.purged, [image_id] * 2)
        self.successResultOf(self.registry.remove_member(image_id, "p2"))
        self.assertEqual(self.purger.purged, [image_id] * 3)

    def test_reads_and_creates_do_not_purge(self) -> None:
        """create, the reads and ping purge nothing."""
        image_id = self.create(status=ACTIVE, visibility="public", locations=("file:///x",))
        self.successResultOf(self.registry.add_member(image_id, "p1"))
        self.successResultOf(self.registry.get(image_id))
        self.successResultOf(self.registry.list(ImageQuery()))
        self.successResultOf(self.registry.all_locations())
        self.successResultOf(self.registry.get_member(image_id, "p1"))
        self.successResultOf(self.registry.list_members(image_id))
        self.successResultOf(self.registry.ping())
        self.assertEqual(self.purger.purged, [])

    def test_failures_pass_through_without_purging(self) -> None:
        """A failed operation fails as the wrapped registry's did, and purges nothing."""
        self.failureResultOf(self.registry.delete(IMAGE), NotFound)
        queued = self.create(status=QUEUED)
        self.failureResultOf(
            self.registry.update(queued, ImageUpdate(fields={"status": DEACTIVATED})), Conflict
        )
        active = self.create(status=ACTIVE)
        self.failureResultOf(
            self.registry.update(
                active, ImageUpdate(fields={"status": DELETED}), frozenset({QUEUED})
            ),
            Conflict,
        )
        self.failureResultOf(self.registry.remove_member(active, "nobody"), NotFound)
        self.failureResultOf(self.registry.update_member(active, "nobody", "rejected"), NotFound)
        self.assertEqual(self.purger.purged, [])

    def test_purger_bug_does_not_fail_the_operation(self) -> None:
        """A purger that raises is logged; the delete still succeeds."""
        registry = PurgingRegistry(memory_registry(self), BrokenPurger())
        image = self.successResultOf(registry.create(make_image(status=ACTIVE)))
        deleted = self.successResultOf(registry.delete(image.id))
        self.assertTrue(deleted.deleted)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_answer_waits_for_first_round_only(self) -> None:
        """
        With a clock, a delete answers once the first round is done; the
        second round goes on without holding up the answer.
        """
        proxy = FakeProxy()
        harness = PurgerHarness(proxy, proxies=(VARNISH,))
        harness.purger.repeat_delay = 5
        registry = PurgingRegistry(memory_registry(self), harness.purger, clock=harness.clock)
        image = self.successResultOf(registry.create(make_image(status=ACTIVE)))
        deleted = self.successResultOf(registry.delete(image.id))
        self.assertTrue(deleted.deleted)
        self.assertEqual(len(proxy.seen), len(PATHS))
        harness.clock.advance(5)
        self.assertEqual(len(proxy.seen), 2 * len(PATHS))

    def test_with_real_purger(self) -> None:
        """With a Purger behind it, a delete sends the image's PURGEs at once."""
        proxy = FakeProxy()
        harness = PurgerHarness(proxy, proxies=(VARNISH,))
        registry = PurgingRegistry(memory_registry(self), harness.purger)
        image = self.successResultOf(registry.create(make_image(status=ACTIVE)))
        self.successResultOf(registry.delete(image.id))
        self.assertEqual(
            sorted(s.path for s in proxy.seen), sorted(purge_paths(image.id))
        )


# -- end to end ----------------------------------------------------------------


class PurgeServerTestCase(ServerTestCase):
    """
    A real glance-tx configured with purge_urls pointing at a real HTTP
    server on loopback that records PURGE requests.
    """

    #: More of the [cache] section.
    cache_options = ""

    def setUp(self) -> Deferred[None]:
        self.proxy = FakeProxy()
        port = reactor.listenTCP(0, Site(self.proxy), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.proxy_host = f"127.0.0.1:{port.getHost().port}"
        self.config_text = (
            f"[cache]\npurge_urls = http://{self.proxy_host}/\n" + self.cache_options
        )
        return super().setUp()

    async def create_image(self) -> str:
        response = await self.treq.post(
            f"{self.base}/v1/images",
            headers={
                "Content-Type": "application/octet-stream",
                "x-image-meta-name": "cached",
                "x-image-meta-disk-format": "raw",
                "x-image-meta-container-format": "bare",
                "x-image-meta-is-public": "true",
            },
            data=b"image data" * 100,
        )
        self.assertEqual(response.code, 201)
        image_id: str = (await response.json())["image"]["id"]
        download = await self.treq.get(f"{self.base}/v2/images/{image_id}/file")
        self.assertEqual(download.code, 200)
        await download.content()
        return image_id

    def expected(self, image_id: str) -> list[tuple[str, str, str]]:
        return sorted(("PURGE", self.proxy_host, path) for path in purge_paths(image_id))

    def received(self) -> list[tuple[str, str, str]]:
        return sorted((s.method, s.host, s.path) for s in self.proxy.seen)


class PurgeEndToEndTests(PurgeServerTestCase):
    """Changes made through the API purge the image's URLs."""

    cache_options = "purge_repeat_delay = 0\n"

    async def test_delete_purges(self) -> None:
        """
        Creating and downloading an image sends no PURGE; deleting it
        through the v2 API sends one for each of its URLs.
        """
        self.assertIsNotNone(self.service.getServiceNamed("purger").purger)
        image_id = await self.create_image()
        self.assertEqual(self.proxy.seen, [])
        response = await self.treq.delete(f"{self.base}/v2/images/{image_id}")
        self.assertEqual(response.code, 204)
        await self.proxy.wait_for(len(PATHS))
        self.assertEqual(self.received(), self.expected(image_id))

    async def test_v1_delete_and_deactivate_purge(self) -> None:
        """A v1 DELETE and a v2 deactivation each purge the image's URLs."""
        first = await self.create_image()
        response = await self.treq.post(f"{self.base}/v2/images/{first}/actions/deactivate")
        self.assertEqual(response.code, 204)
        await self.proxy.wait_for(len(PATHS))
        self.assertEqual(self.received(), self.expected(first))
        self.proxy.seen.clear()
        second = await self.create_image()
        response = await self.treq.delete(f"{self.base}/v1/images/{second}")
        self.assertEqual(response.code, 200)
        await self.proxy.wait_for(len(PATHS))
        self.assertEqual(self.received(), self.expected(second))


class SecondRoundEndToEndTests(PurgeServerTestCase):
    """C{[cache] purge_repeat_delay} reaches the purger."""

    cache_options = "purge_repeat_delay = 1\n"

    async def test_delete_purges(self) -> None:
        """A delete sends every PURGE at once, and every one again a second later."""
        image_id = await self.create_image()
        response = await self.treq.delete(f"{self.base}/v2/images/{image_id}")
        self.assertEqual(response.code, 204)
        await self.proxy.wait_for(len(PATHS))
        self.assertEqual(self.received(), self.expected(image_id))
        await self.proxy.wait_for(2 * len(PATHS))
        self.assertEqual(self.received(), sorted(self.expected(image_id) * 2))


class WaitingRoundEndToEndTests(PurgeServerTestCase):
    """A second round still waiting when the service stops."""

    cache_options = "purge_repeat_delay = 600\n"

    async def test_stop_drops_the_waiting_round(self) -> None:
        """
        After a delete, the second round waits on the reactor; stopping
        the service (the test's cleanup) cancels it, or trial would report
        the pending call and fail this test.
        """
        image_id = await self.create_image()
        response = await self.treq.delete(f"{self.base}/v2/images/{image_id}")
        self.assertEqual(response.code, 204)
        await self.proxy.wait_for(len(PATHS))
        waiting = [c for c in reactor.getDelayedCalls() if c.getTime() - reactor.seconds() > 500]
        self.assertEqual(len(waiting), 1)


class NoPurgeEndToEndTests(ServerTestCase):
    """Without purge_urls there is no purger."""

    async def test_no_purger(self) -> None:
        """The service builds no purger and deleting an image still works."""
        self.assertNotIn("purger", [child.name for child in self.service])
        response = await self.treq.post(
            f"{self.base}/v1/images",
            headers={"x-image-meta-name": "x", "x-image-meta-disk-format": "raw",
                     "x-image-meta-container-format": "bare"},
        )
        image_id = (await response.json())["image"]["id"]
        response = await self.treq.delete(f"{self.base}/v1/images/{image_id}")
        self.assertEqual(response.code, 200)
