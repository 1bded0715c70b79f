"""
Pausing an upstream producer while there is a reason to, and resuming it
when there is none left.

Every stage that holds bytes between a producer and a slower consumer (the
upload pipeline in front of its hashes and store, a store writer in front of
its backend, the multipart download in front of each part's producer) does
the same few things: it pauses the producer when a queue passes a high
watermark or when the stage itself is paused from downstream; it resumes
the producer only once every such reason has gone; and a producer that is
registered while a reason holds starts paused. L{PauseGate} does that once
for all of them; L{Watermarks} turns a queue's length into a reason, and
L{SharedBudget} the sum of many queues (every upload's) into a reason for
all of them.
"""

from __future__ import annotations

from attrs import field, frozen, mutable, validators
from twisted.internet.interfaces import IPushProducer

__all__ = ["PauseGate", "SharedBudget", "Watermarks"]


@mutable
class PauseGate:
    """
    Pauses one push producer while any reason to pause holds.

    The producer is told only of changes: C{pauseProducing} when the first
    reason appears, C{resumeProducing} when the last one goes. The reasons
    are kept while no producer is attached, so one attached later (or the
    next one, after the last was detached) starts paused if it should.
    """

    _producer: IPushProducer | None = field(default=None, init=False)
    _reasons: set[str] = field(factory=set, init=False)

    @property
    def producer(self) -> IPushProducer | None:
        """The producer attached now, if any."""
        return self._producer

    @property
    def paused(self) -> bool:
        """Whether any reason to pause holds."""
        return bool(self._reasons)

    def attach(self, producer: IPushProducer) -> None:
        """Take C{producer} as the one to pause, pausing it now if need be."""
        self._producer = producer
        if self._reasons:
            producer.pauseProducing()

    def detach(self) -> None:
        """Forget the producer; it is neither paused nor resumed any more."""
        self._producer = None

    def pause(self, reason: str) -> None:
        """Hold the producer for C{reason} (again: no change)."""
        if not self._reasons and self._producer is not None:
            self._producer.pauseProducing()
        self._reasons.add(reason)

    def resume(self, reason: str) -> None:
        """C{reason} has gone; resume the producer if it was the last."""
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons and self._producer is not None:
            self._producer.resumeProducing()


def _low_not_above_high(instance: Watermarks, attribute: object, low: int) -> None:
    if low > instance.high:
        raise ValueError(f"low watermark ({low}) is above high watermark ({instance.high})")


@frozen
class Watermarks:
    """
    Hysteresis for a queue: hold its producer once more than C{high} bytes
    are queued, and let it go once no more than C{low} are left. In
    between, whatever was decided last stands, so the producer is not
    paused and resumed for every chunk.
    """

    high: int = field(validator=validators.ge(1))
    low: int = field(validator=[validators.ge(0), _low_not_above_high])

    def apply(self, gate: PauseGate, reason: str, queued: int) -> None:
        """Pause or resume C{gate} for C{reason}, C{queued} bytes being queued."""
        if queued > self.high:
            gate.pause(reason)
        elif queued <= self.low:
            gate.resume(reason)


#: The L{PauseGate} reason of a L{SharedBudget} that is spent.
BUDGET = "budget"


@mutable
class SharedBudget:
    """
    One limit on the bytes queued by many stages together (the batches of
    every upload in flight, waiting for its hashes or its store), so that
    memory is bounded by one figure, not by the number of uploads times
    each one's watermarks.

    Stages C{add} what they queue and take (negative) as it changes; every
    gate C{join}ed is paused while more than C{watermarks.high} bytes are
    queued in all, and resumed together once no more than C{watermarks.low}
    are. A stage whose queue is empty keeps nothing in memory by waiting,
    and one that has bytes queued keeps its threads busy: pausing every
    upload's client costs no throughput while the machine is the limit.
    """

    watermarks: Watermarks
    _queued: int = field(default=0, init=False)
    _spent: bool = field(default=False, init=False)
    _gates: list[PauseGate] = field(factory=list, init=False)

    @property
    def queued(self) -> int:
        """The bytes queued in all now."""
        return self._queued

    def join(self, gate: PauseGate) -> None:
        """Pause C{gate} while the budget is spent (at once, if it is)."""
        self._gates.append(gate)
        if self._spent:
            gate.pause(BUDGET)

    def leave(self, gate: PauseGate) -> None:
        """Stop pausing C{gate} (and let it go if the budget held it)."""
        kept = [g for g in self._gates if g is not gate]  # gates' == is by value
        if len(kept) < len(self._gates):
            self._gates = kept
            gate.resume(BUDGET)

    @property
    def spent(self) -> bool:
        """Whether the joined gates are held now."""
        return self._spent

    def add(self, delta: int) -> None:
        """C{delta} more bytes are queued (fewer, if negative)."""
        self._queued += delta
        if not self._spent and self._queued > self.watermarks.high:
            self._spent = True
            for gate in list(self._gates):
                gate.pause(BUDGET)
        elif self._spent and self._queued <= self.watermarks.low:
            self._spent = False
            for gate in list(self._gates):
                gate.resume(BUDGET)
