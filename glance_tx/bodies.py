"""
A request body already in memory, for the small JSON and XML documents the
registry client and the S3 client send. twisted.web's C{FileBodyProducer}
would schedule a cooperator task per request for what one write does.
"""

from __future__ import annotations

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer


@implementer(IBodyProducer)
@frozen
class BytesBody:
    """C{data} as a request body, written at once."""

    data: bytes

    @property
    def length(self) -> int:
        return len(self.data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass
