"""
One process per node id: the claim an API node takes on its C{node_id}
before it acts as that node.

Upload leases (L{glance_tx.leases}) name their node, and a starting node
reclaims the uploads of its own id at once, as left over from before its
restart. Two live processes configured with one C{node_id} would therefore
reclaim (fail, and delete the partial data of) each other's uploads. So
each process claims its id in the registry (L{IRegistry.claim_node}) with
an instance id of its own, renews the claim every third of
C{upload_lease_seconds} while it runs and releases it when it stops.

At start, an id claimed by another instance is either a live duplicate or
a predecessor that died without releasing it (SIGKILL). An instance names
its host and process id, so a predecessor on this host whose process is
gone is known dead and its claim is taken over at once (a node restarted
after a crash reclaims its uploads without delay). Otherwise the claim
alone cannot tell: the new process waits until that claim would have
expired (at most the other's C{upload_lease_seconds}) and claims again: a
dead predecessor did not renew, so the id is free; a live process did, and
this one refuses to start with L{NodeIdInUse}. A node stopped cleanly
releases its claim and starts again at once.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable

from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from glance_tx.errors import GlanceError
from glance_tx.registry.interface import HeldClaim, IRegistry

log = Logger()

#: Waited beyond another claim's expiry before claiming again, so that the
#: registry's clock has passed it.
MARGIN_SECONDS = 1.0


class NodeIdInUse(Exception):
    """Another live process runs with this node's C{node_id}."""


def process_running(pid: int) -> bool:
    """Whether a process C{pid} runs on this host (signal 0 probes it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: running
    return True


@frozen
class Instance:
    """One process: where it runs, and a random part new at every start."""

    host: str
    pid: int
    token: str = field(factory=lambda: secrets.token_hex(8))

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.token}"

    @classmethod
    def parse(cls, value: str) -> Instance | None:
        host, _, rest = value.rpartition(":")
        host, _, pid = host.rpartition(":")
        if not host or not pid.isdigit():
            return None
        return cls(host, int(pid), rest)

    @classmethod
    def this_process(cls) -> Instance:
        # Hostnames have no colon; the column holds 255 characters.
        return cls(socket.gethostname()[:200], os.getpid())


@define
class NodeClaim:
    """This process's claim on C{node_id}, renewed on C{clock}."""

    registry: IRegistry
    clock: IReactorTime
    node_id: str
    seconds: float
    me: Instance = field(factory=Instance.this_process)
    #: Probes whether a process of this host runs (tests pass a fake).
    running: Callable[[int], bool] = process_running
    _renewal: LoopingCall | None = field(default=None, init=False)
    _waiting: Deferred[None] | None = field(default=None, init=False)

    async def take(self) -> None:
        """
        Claim the id, taking over from a predecessor known dead or waiting
        out another claim (see the module docstring).

        @raise NodeIdInUse: another process holds it and is alive.
        """
        held = await self._claim()
        if held is None:
            return
        if self._stopped(held.instance):
            log.info(
                "node_id {node_id!r}: taking over the claim of {instance}, "
                "which no longer runs",
                node_id=self.node_id,
                instance=held.instance,
            )
            held = await self._claim(replacing=held.instance)
            if held is None:
                return
        log.warn(
            "node_id {node_id!r} is claimed by {instance} for {seconds:.0f}s "
            "more; waiting to see whether it is still running (a node that "
            "crashed leaves its claim until it expires)",
            node_id=self.node_id,
            instance=held.instance,
            seconds=held.seconds_left,
        )
        self._waiting = deferLater(
            self.clock, held.seconds_left + MARGIN_SECONDS, lambda: None
        )
        try:
            await self._waiting
        finally:
            self._waiting = None
        held = await self._claim()
        if held is None:
            return
        raise NodeIdInUse(
            f"node_id {self.node_id!r} is in use by another running glance-tx "
            f"process ({held.instance}: it renewed its claim while this one "
            "waited). Every API node sharing a registry needs a node_id of "
            "its own, or they reclaim each other's uploads: set node_id in "
            "this node's configuration, or stop the other process."
        )

    def _claim(self, replacing: str | None = None) -> Deferred[HeldClaim | None]:
        return self.registry.claim_node(
            self.node_id, str(self.me), self.seconds, replacing
        )

    def _stopped(self, instance: str) -> bool:
        """Whether C{instance} is a process of this host that no longer runs."""
        other = Instance.parse(instance)
        if other is None or other.host != self.me.host:
            return False
        # Our own pid on this host is not it (a restarted container's
        # process is often pid 1 again).
        return other.pid == self.me.pid or not self.running(other.pid)

    def give_up(self) -> None:
        """Stop waiting, if L{take} is (the process is stopping): it fails."""
        if self._waiting is not None:
            self._waiting.cancel()

    async def renew(self) -> None:
        """Renew the claim; a claim lost to another process is logged loudly."""
        try:
            held = await self._claim()
        except GlanceError as e:
            log.warn("node_id claim not renewed: {e}", e=e.message)
            return
        except Exception:
            # Logged, not raised: a failure would stop the timer for good.
            log.failure("node_id claim not renewed")
            return
        if held is not None:
            log.error(
                "node_id {node_id!r} was claimed by another process while this "
                "one could not renew its claim: two processes now run with "
                "one node_id",
                node_id=self.node_id,
            )

    def start(self) -> None:
        """Renew every third of the claim's time, from now on."""
        self._renewal = LoopingCall(lambda: Deferred.fromCoroutine(self.renew()))
        self._renewal.clock = self.clock
        self._renewal.start(self.seconds / 3, now=False)

    async def stop(self) -> None:
        """Stop renewing and release the claim, so the node may restart at once."""
        if self._renewal is not None and self._renewal.running:
            self._renewal.stop()
        self._renewal = None
        try:
            await self.registry.release_node(self.node_id, str(self.me))
        except GlanceError as e:
            log.info("node_id claim not released ({e}); it will expire", e=e.message)
