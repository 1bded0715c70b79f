"""
A TCP relay in front of a server that cuts image downloads short: the
network failure a resuming client must survive.

L{CuttingRelay} forwards every connection to the server byte for byte
(with flow control both ways, as twisted's port forwarder does). The
first C{cuts} connections that carry a data download (v2's C{GET .../file},
v1's C{GET /v1/images/ID}) are closed after
C{cut_after} bytes of the answer (head included) have been passed on, as
a dropped link would close them (or, with C{stall}, kept open with
nothing more sent, as a dead link would be); later ones pass whole. Every request
head it saw is kept, so a test can check what the client asked for when
it came back.
"""

from __future__ import annotations

import re
from typing import Any

from attrs import define, field
from twisted.internet.interfaces import IListeningPort
from twisted.protocols import portforward

__all__ = ["CuttingRelay"]


_V1_DATA = re.compile(rb"/v1/images/[^/]+")


def _is_data_get(request_line: bytes) -> bool:
    """Whether a request line downloads image data: v2's C{.../file}, v1's C{/v1/images/ID}."""
    method, _, rest = request_line.partition(b" ")
    path = rest.split(b" ")[0].split(b"?")[0]
    return method == b"GET" and (
        path.endswith(b"/file")
        or (_V1_DATA.fullmatch(path) is not None and path != b"/v1/images/detail")
    )


class _Backend(portforward.ProxyClient):
    """The relay's connection to the server: passes the answer on, or cuts."""

    def dataReceived(self, data: bytes) -> None:
        front = self.peer
        assert isinstance(front, _Front)
        if front.cut_at is None:
            front.transport.write(data)
            return
        room = front.cut_at - front.sent
        if room <= 0:
            return
        data = data[:room]
        front.sent += len(data)
        front.transport.write(data)
        if front.sent >= front.cut_at and not front.stall:
            # loseConnection, not abort: what was written still arrives,
            # then the client sees the connection close mid-body. Each
            # side is first unregistered as the other's producer: a
            # transport that drains its buffer resumes a paused producer
            # instead of closing.
            front.transport.unregisterProducer()
            self.transport.unregisterProducer()
            front.transport.loseConnection()
            self.transport.loseConnection()


class _BackendFactory(portforward.ProxyClientFactory):
    protocol = _Backend


class _Front(portforward.ProxyServer):
    """The client's connection to the relay."""

    clientProtocolFactory = _BackendFactory
    noisy = False
    cut_at: int | None = None
    stall = False
    sent = 0
    _head_seen = False

    def dataReceived(self, data: bytes) -> None:
        if not self._head_seen:
            self._head_seen = True
            relay: CuttingRelay = self.factory.relay  # type: ignore[attr-defined]
            head = data.split(b"\r\n\r\n", 1)[0]
            relay.heads.append(head)
            if _is_data_get(head.split(b"\r\n", 1)[0]) and relay.cuts_left > 0:
                relay.cuts_left -= 1
                self.cut_at = relay.cut_after
                self.stall = relay.stall
        super().dataReceived(data)


@define
class CuttingRelay:
    """A relay to C{127.0.0.1:backend_port}, listening on a loopback port."""

    cut_after: int
    cuts_left: int
    #: Instead of closing a cut connection, keep it open and send nothing
    #: more on it: a link that stalls.
    stall: bool = False
    port: IListeningPort | None = None
    #: Every request head that came through, in order.
    heads: list[bytes] = field(factory=list)

    @classmethod
    def start(
        cls, reactor: Any, backend_port: int, cut_after: int, cuts: int = 1, stall: bool = False
    ) -> CuttingRelay:
        relay = cls(cut_after=cut_after, cuts_left=cuts, stall=stall)
        factory = portforward.ProxyFactory("127.0.0.1", backend_port)
        factory.protocol = _Front
        factory.noisy = False
        factory.relay = relay  # type: ignore[attr-defined]
        relay.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        return relay

    @property
    def url(self) -> str:
        assert self.port is not None
        return f"http://127.0.0.1:{self.port.getHost().port}"

    def file_requests(self) -> list[bytes]:
        """The heads of the data downloads, in order."""
        return [head for head in self.heads if _is_data_get(head.split(b"\r\n", 1)[0])]

    async def stop(self) -> None:
        if self.port is not None:
            await self.port.stopListening()
