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
for all of them; L{Watermarks} turns a queue's length into a reason.
"""

from __future__ import annotations

from attrs import field, frozen, mutable, validators
from twisted.internet.interfaces import IPushProducer

__all__ = ["PauseGate", "Watermarks"]


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
