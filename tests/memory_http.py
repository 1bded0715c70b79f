"""
In-memory HTTP for tests: a treq client talking to a real Site through real
HTTP parsing on both sides, with no socket.

treq.testing.StubTreq builds its own Site around a resource; glance-tx's
uploads stream through the GlanceSite's own request factory, so this agent
takes the Site itself. Otherwise it works as treq's RequestTraversalAgent.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from treq.client import HTTPClient
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.web.client import Agent
from twisted.web.iweb import (
    UNKNOWN_LENGTH,
    IAgent,
    IAgentEndpointFactory,
    IBodyProducer,
)
from zope.interface import implementer


@implementer(IAgentEndpointFactory)
@define
class _MemoryEndpoints:
    reactor: MemoryReactorClock

    def endpointForURI(self, uri: Any) -> TCP4ClientEndpoint:
        return TCP4ClientEndpoint(self.reactor, "127.0.0.1", uri.port)


@implementer(IBodyProducer)
@define
class ChunkedBody:
    """
    A body produced at once, in chunks of C{chunk_size}; with C{known_length}
    false it is sent with chunked transfer-encoding.
    """

    body: bytes
    chunk_size: int = 65536
    known_length: bool = True
    length: Any = field(init=False)

    def __attrs_post_init__(self) -> None:
        self.length = len(self.body) if self.known_length else UNKNOWN_LENGTH

    def startProducing(self, consumer: Any) -> Deferred[None]:
        for start in range(0, len(self.body), self.chunk_size):
            consumer.write(self.body[start : start + self.chunk_size])
        return succeed(None)

    def stopProducing(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


@implementer(IAgent)
@define
class SiteAgent:
    site: Any
    reactor: MemoryReactorClock = field(factory=MemoryReactorClock)
    pumps: list[iosim.IOPump] = field(factory=list)

    def request(
        self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None
    ) -> Deferred[Any]:
        agent = Agent.usingEndpointFactory(self.reactor, _MemoryEndpoints(self.reactor))
        response = agent.request(method, uri, headers, bodyProducer)
        _, port, factory, _, _ = self.reactor.tcpClients[-1]
        server_address = IPv4Address("TCP", "127.0.0.1", port)
        client_address = IPv4Address("TCP", "127.0.0.1", 31337)
        server = self.site.buildProtocol(client_address)
        client = factory.buildProtocol(None)
        pump = iosim.connect(
            server,
            iosim.FakeTransport(server, isServer=True, hostAddress=server_address, peerAddress=client_address),
            client,
            iosim.FakeTransport(client, isServer=False, hostAddress=client_address, peerAddress=server_address),
        )
        self.pumps.append(pump)
        return response

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()


def _body_producer(data: Any) -> IBodyProducer:
    return data if IBodyProducer.providedBy(data) else ChunkedBody(data)


def memory_client(site: Any) -> tuple[HTTPClient, SiteAgent]:
    agent = SiteAgent(site)
    return HTTPClient(agent, data_to_body_producer=_body_producer), agent
