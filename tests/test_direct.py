"""
Tests for L{glance_tx.api.direct}: a handler run from a plain leaf, to its
first wait in C{render}, and on from there as C{Deferred.fromCoroutine}
would run it.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from glance_tx.api.direct import DirectRoute, Handler
from glance_tx.api.site import GlanceSite
from glance_tx.errors import NotFound

_seen: ContextVar[str] = ContextVar("test_direct_seen", default="outside")


class DirectRouteTests(SynchronousTestCase):
    def serve(self, handler: Handler) -> tuple[Any, StringTransport]:
        """A connection to a site whose every path is C{handler}'s, its GET sent."""
        site = GlanceSite(DirectRoute(handler, "argument"), reactor=MemoryReactorClock())
        address = IPv4Address("TCP", "127.0.0.1", 9292)
        protocol = site.buildProtocol(address)
        transport = StringTransport(
            hostAddress=address, peerAddress=IPv4Address("TCP", "127.0.0.1", 40000)
        )
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        return protocol, transport

    def answer(self, transport: StringTransport) -> tuple[int, bytes]:
        head, _, body = transport.value().partition(b"\r\n\r\n")
        if b"chunked" in head.lower():
            size, _, rest = body.partition(b"\r\n")
            body = rest[: int(size, 16)]
        return int(head.split(b" ")[1]), body

    def test_finished_at_first_step(self) -> None:
        """A coroutine that never waits is answered before the request's bytes are handled."""

        async def handler(request: Any, argument: str) -> bytes:
            return argument.encode()

        _, transport = self.serve(handler)
        self.assertEqual(self.answer(transport), (200, b"argument"))

    def test_waits_then_answers(self) -> None:
        """A coroutine that waits is answered when what it awaits fires, with what it sent in."""
        waited: Deferred[bytes] = Deferred()

        async def handler(request: Any, argument: str) -> bytes:
            first = await waited
            second = await Deferred.fromCoroutine(self.later())
            return first + second

        _, transport = self.serve(handler)
        self.assertEqual(transport.value(), b"")
        waited.callback(b"one ")
        self.assertEqual(self.answer(transport), (200, b"one two"))

    async def later(self) -> bytes:
        return b"two"

    def test_failure_thrown_in(self) -> None:
        """A failure of what the coroutine awaits is raised where it awaits."""
        waited: Deferred[bytes] = Deferred()

        async def handler(request: Any, argument: str) -> bytes:
            try:
                return await waited
            except ValueError as e:
                return f"caught {e}".encode()

        _, transport = self.serve(handler)
        waited.errback(ValueError("it"))
        self.assertEqual(self.answer(transport), (200, b"caught it"))

    def test_refusals_before_and_after_a_wait(self) -> None:
        """A GlanceError raised in the first step or after a wait is the JSON error."""
        waited: Deferred[None] = Deferred()

        async def at_once(request: Any, argument: str) -> bytes:
            raise NotFound("none at once")

        async def after(request: Any, argument: str) -> bytes:
            await waited
            raise NotFound("none after")

        for handler, fire in ((at_once, False), (after, True)):
            _, transport = self.serve(handler)
            if fire:
                waited.callback(None)
            code, body = self.answer(transport)
            self.assertEqual(code, 404)
            self.assertIn("none", json.loads(body)["error"]["message"])

    def test_unexpected_error_is_the_500(self) -> None:
        """Any other exception, at once or after a wait, is the site's JSON 500."""
        waited: Deferred[None] = Deferred()

        async def at_once(request: Any, argument: str) -> bytes:
            raise RuntimeError("at once")

        async def after(request: Any, argument: str) -> bytes:
            await waited
            raise RuntimeError("after")

        for handler, fire in ((at_once, False), (after, True)):
            _, transport = self.serve(handler)
            if fire:
                waited.callback(None)
            self.assertEqual(self.answer(transport)[0], 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_client_gone_cancels_the_wait(self) -> None:
        """The client going away cancels what the coroutine awaits, raising CancelledError in it."""
        waited: Deferred[bytes] = Deferred()
        seen: list[type[BaseException]] = []

        async def handler(request: Any, argument: str) -> bytes:
            try:
                return await waited
            except CancelledError as e:
                seen.append(type(e))
                raise

        protocol, transport = self.serve(handler)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(seen, [CancelledError])

    def test_context_kept_across_waits(self) -> None:
        """
        The coroutine's steps share one context, its own: what it sets
        before a wait it sees after, and the caller's context is untouched.
        """
        waited: Deferred[None] = Deferred()
        seen: list[str] = []

        async def handler(request: Any, argument: str) -> bytes:
            _seen.set("inside")
            await waited
            seen.append(_seen.get())
            return b""

        self.serve(handler)
        self.assertEqual(_seen.get(), "outside")
        waited.callback(None)
        self.assertEqual(seen, ["inside"])
        self.assertEqual(_seen.get(), "outside")
