"""
How long a client may keep a connection waiting on it.

A public endpoint meets clients that open a connection and send nothing,
send a request's head a byte a minute, stop in the middle of a body, stop
reading a download, or keep an idle connection for ever. Each holds a
socket and memory; hundreds of them must not crowd out the clients that
do their part. Twisted's own idle timeout (C{HTTPChannel.timeOut}) is one
period for all of these, restarted by every byte (so a byte a minute keeps
a head open for ever) and off while a response is written (so a reader
that stops reading is never cut off). L{ConnectionDeadline} instead keeps
one timer per connection, armed for what the connection waits on
(L{Phase}); the channel (L{glance_tx.api.channel.GlanceChannel}) moves it
from phase to phase. Time the server itself takes (routing, the store, a
body paused by backpressure) never counts against the client.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from attrs import define, field
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from glance_tx.config import ClientLimits


class Phase(enum.Enum):
    """What a connection waits on the client for."""

    #: A request's head: complete within C{client_header_timeout} of the
    #: connection's opening or the head's first byte; bytes do not extend it.
    HEAD = "head"
    #: The next bytes of a body: silence of C{client_socket_timeout}.
    BODY = "body"
    #: The client to read what waits for it (the transport's buffer is
    #: full): C{client_socket_timeout} with nothing read.
    SEND = "send"
    #: A kept connection's next request: C{http_keepalive_timeout}.
    KEEPALIVE = "keepalive"

    def seconds(self, limits: ClientLimits) -> float | None:
        """This phase's timeout under C{limits} (None: none)."""
        if self is Phase.HEAD:
            return limits.client_header_timeout
        if self is Phase.KEEPALIVE:
            return limits.http_keepalive_timeout
        return limits.client_socket_timeout


#: A timer that fires this close to its phase's end (float rounding of the
#: clock) ends the phase rather than waiting the remainder.
_SLACK = 0.001


@define
class ConnectionDeadline:
    """
    One connection's timer: C{arm} starts a phase, C{touch} restarts an idle
    phase's period (a body's bytes), C{clear} leaves the connection waiting
    on the server, C{stop} ends the timer with the connection. C{expired}
    is called with the phase that ran out.

    A kept-alive connection moves through four phases per request; creating
    and cancelling a C{DelayedCall} for each (a heap push, and cancellations
    that make the reactor rebuild its heap) was a twentieth of an image
    GET's CPU. So the one call is lazy: a phase only records when it ends
    (C{_due}), the call is moved only when that end is sooner than the
    call's time (rare: the phases' timeouts rarely shrink), and a call that
    fires early, or finds no phase, arms itself for the rest or lapses.
    """

    clock: IReactorTime
    limits: ClientLimits
    expired: Callable[[Phase], object]
    phase: Phase | None = field(default=None, init=False)
    _due: float = field(default=0.0, init=False)
    _call: IDelayedCall | None = field(default=None, init=False)

    def arm(self, phase: Phase) -> None:
        """Wait on the client for C{phase}, from now."""
        self.phase = phase
        seconds = phase.seconds(self.limits)
        if seconds is not None:
            self._end_in(seconds)

    def touch(self) -> None:
        """The client did its part: an idle phase starts its period again."""
        if self.phase in (Phase.BODY, Phase.SEND):
            seconds = self.phase.seconds(self.limits)
            assert seconds is not None
            self._end_in(seconds)

    def clear(self) -> None:
        """Wait on nothing the client does (the server is working)."""
        self.phase = None  # a pending call finds no phase and lapses

    def stop(self) -> None:
        """The connection is gone: no call stays behind."""
        self.phase = None
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _end_in(self, seconds: float) -> None:
        now = self.clock.seconds()
        self._due = due = now + seconds
        call = self._call
        if call is None:
            self._call = self.clock.callLater(seconds, self._fire)
        elif call.getTime() > due:
            call.reset(seconds)

    def _fire(self) -> None:
        self._call = None
        phase = self.phase
        if phase is None or phase.seconds(self.limits) is None:
            return
        left = self._due - self.clock.seconds()
        if left > _SLACK:
            self._call = self.clock.callLater(left, self._fire)
            return
        self.phase = None
        self.expired(phase)
