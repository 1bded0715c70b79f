"""
One process per node_id: a second live process with a node's id refuses to
start; a restart after a crash, or after a clean stop, takes the id over.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent

from glance_tx.node_claim import MARGIN_SECONDS, Instance, NodeClaim, NodeIdInUse
from glance_tx.registry.interface import IRegistry
from glance_tx.services import NodeClaimService, Ready
from tests.test_registry_sql import sync_open

LEASE = 60.0


class NodeClaimTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        # The registry's clock is the test's, so claims expire as it moves.
        self.registry = sync_open(
            "sqlite://", now=lambda: datetime.fromtimestamp(self.clock.seconds(), UTC)
        )
        self.addCleanup(lambda: self.successResultOf(self.registry.close()))
        #: Pids the fake process table says are running.
        self.running: set[int] = set()

    def claim(self, host: str = "host-a", pid: int = 100) -> NodeClaim:
        return NodeClaim(
            self.registry,
            self.clock,
            "node-a",
            LEASE,
            me=Instance(host, pid),
            running=lambda pid: pid in self.running,
        )

    def started(self, claim: NodeClaim) -> NodeClaim:
        self.successResultOf(Deferred.fromCoroutine(claim.take()))
        claim.start()
        self.addCleanup(lambda: self.successResultOf(Deferred.fromCoroutine(claim.stop())))
        return claim

    def test_live_duplicate_on_another_host_refused(self) -> None:
        """
        A second process with the node's id, on another host, waits out the
        first's claim; the first, alive, renews it meanwhile, so the second
        fails with NodeIdInUse naming the id, the holder and what to do.
        """
        self.started(self.claim("host-a"))
        second = Deferred.fromCoroutine(self.claim("host-b").take())
        self.assertNoResult(second)
        self.clock.pump([LEASE / 3] * 3 + [MARGIN_SECONDS])
        error = self.failureResultOf(second, NodeIdInUse).value
        self.assertIn("'node-a'", str(error))
        self.assertIn("host-a:100:", str(error))
        self.assertIn("node_id of its own", str(error))

    def test_live_duplicate_on_this_host_refused(self) -> None:
        """
        On one host, a holder whose process runs is taken for alive: the
        new process waits, and is refused when the claim was renewed.
        """
        self.running.add(100)
        self.started(self.claim(pid=100))
        second = Deferred.fromCoroutine(self.claim(pid=200).take())
        self.assertNoResult(second)
        self.clock.pump([LEASE / 3] * 3 + [MARGIN_SECONDS])
        self.failureResultOf(second, NodeIdInUse)

    def test_crashed_predecessor_on_this_host_taken_over_at_once(self) -> None:
        """
        A restart after SIGKILL on the same host: the old claim's process
        is gone, so the new process takes the id over without waiting (and
        so reclaims its own interrupted uploads at once); the old instance
        no longer holds it.
        """
        crashed = self.claim(pid=100)
        self.successResultOf(Deferred.fromCoroutine(crashed.take()))
        self.successResultOf(Deferred.fromCoroutine(self.claim(pid=200).take()))
        held = self.successResultOf(
            self.registry.claim_node("node-a", str(crashed.me), LEASE)
        )
        assert held is not None
        self.assertTrue(held.instance.startswith("host-a:200:"))

    def test_restarted_container_with_the_same_pid(self) -> None:
        """
        A claim of this host with this process's own pid is a predecessor
        (a container's process is pid 1 after every restart): taken over.
        """
        self.running.add(1)
        self.successResultOf(Deferred.fromCoroutine(self.claim(pid=1).take()))
        self.successResultOf(Deferred.fromCoroutine(self.claim(pid=1).take()))

    def test_crashed_predecessor_elsewhere_waited_out(self) -> None:
        """
        A claim left by a process on another host that died (it renews no
        more) is waited out, then taken: the start succeeds after at most
        the lease.
        """
        self.successResultOf(Deferred.fromCoroutine(self.claim("host-a").take()))
        with capturedLogs() as events:
            second = Deferred.fromCoroutine(self.claim("host-b").take())
        self.assertIn("waiting", formatEvent(events[-1]))
        self.clock.advance(LEASE)
        self.assertNoResult(second)
        self.clock.advance(MARGIN_SECONDS)
        self.successResultOf(second)

    def test_clean_stop_releases(self) -> None:
        """A node stopped cleanly releases its id: the next process, anywhere, starts at once."""
        first = self.claim("host-a")
        self.successResultOf(Deferred.fromCoroutine(first.take()))
        first.start()
        self.successResultOf(Deferred.fromCoroutine(first.stop()))
        self.successResultOf(Deferred.fromCoroutine(self.claim("host-b").take()))

    def test_renewal_keeps_the_claim_while_idle(self) -> None:
        """
        The claim is renewed every third of the lease even with no upload
        running, so an idle node's id is as much its own as a busy one's.
        """
        self.started(self.claim("host-a"))
        self.clock.pump([LEASE / 3] * 9)
        held = self.successResultOf(self.registry.claim_node("node-a", "other", LEASE))
        assert held is not None
        self.assertGreater(held.seconds_left, LEASE / 2)

    def test_renewal_finding_another_holder_is_an_error(self) -> None:
        """
        A node that could not renew for longer than the lease, and finds
        its id claimed by another process, logs it as an error.
        """
        claim = self.claim("host-a")
        self.successResultOf(Deferred.fromCoroutine(claim.take()))
        self.clock.advance(LEASE + 1)
        self.successResultOf(Deferred.fromCoroutine(self.claim("host-b").take()))
        with capturedLogs() as events:
            self.successResultOf(Deferred.fromCoroutine(claim.renew()))
        [event] = events
        self.assertIn("two processes now run with one node_id", formatEvent(event))


class NodeClaimServiceTests(SynchronousTestCase):
    """The service a node's chain starts before anything acts as the node."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = sync_open(
            "sqlite://", now=lambda: datetime.fromtimestamp(self.clock.seconds(), UTC)
        )
        self.addCleanup(lambda: self.successResultOf(self.registry.close()))

    def ready(self) -> Ready[IRegistry]:
        registry = self.registry

        class _Ready:
            def when_ready(self) -> Deferred[IRegistry]:
                return Deferred.fromCoroutine(_value(registry))

        return _Ready()

    def test_stop_while_waiting(self) -> None:
        """
        A stop asked while the start waits out another claim ends the wait
        at once (no minute-long shutdown); the start fails, cancelled.
        """
        self.successResultOf(self.registry.claim_node("node-a", "elsewhere:1:x", LEASE))
        service = NodeClaimService(self.ready(), self.clock, "node-a", LEASE)
        service.startService()
        ready = service.when_ready()
        self.assertNoResult(ready)
        stopped = service.stopService()
        self.failureResultOf(ready, CancelledError)
        self.successResultOf(stopped)

    def test_start_renew_release(self) -> None:
        """
        Started, the service holds the id (another process is refused it);
        stopped, it has released it (another takes it at once).
        """
        service = NodeClaimService(self.ready(), self.clock, "node-a", LEASE)
        service.startService()
        claim = self.successResultOf(service.when_ready())
        held = self.successResultOf(self.registry.claim_node("node-a", "other", LEASE))
        assert held is not None
        self.assertEqual(held.instance, str(claim.me))
        self.successResultOf(service.stopService())
        self.assertIsNone(
            self.successResultOf(self.registry.claim_node("node-a", "other", LEASE))
        )


async def _value(registry: IRegistry) -> IRegistry:
    return registry


class DuplicateProcessTests(TestCase):
    """Two real ``twistd glance`` processes sharing one registry and one node_id."""

    async def test_second_process_refuses_to_start(self) -> None:
        """
        With node A running, a second process configured with A's node_id
        (another port, so not A restarted) waits out A's claim, sees it
        renewed, and exits saying why, without ever listening; A serves on.
        """
        from twisted.internet import reactor

        from tests.twistd_process import spawn_twistd, start_twistd

        database = os.path.abspath(self.mktemp())
        config = (
            "[DEFAULT]\n"
            f"sql_connection = sqlite:///{database}\n"
            "node_id = the-same-node\n"
            "upload_lease_seconds = 3\n"
        )
        a = await start_twistd(self, "glance", config, name="node A")
        b = spawn_twistd(self, "glance", config, name="node B")
        timeout = reactor.callLater(30, b.protocol.ended.cancel)
        await b.protocol.ended
        timeout.cancel()
        self.assertIn("is in use by another running glance-tx process", b.output)
        self.assertIn("waiting to see whether it is still running", b.output)
        self.assertIn("glance-tx serving on", a.output)
        self.assertNotIn("glance-tx serving on", b.output)
        response = await HTTPClient(Agent(reactor)).get(a.url + "/healthcheck")
        self.assertEqual(response.code, 200)
        await response.content()
