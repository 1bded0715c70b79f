"""
Every private detail of Twisted that glance-tx relies on, in one place.

Twisted (through 26.x) has no public API for what these do: stream a
request body before routing, tell whether a request's client has gone,
tell where a TCP server endpoint would listen, or
tune how much one socket read or send may take, or tell whether a
transport has sent everything written to it (so a sender may write to its
socket directly, as L{glance_tx.api.sendfile} does), or find the connection
under a client response (so a relay may read its socket directly, as
L{glance_tx.api.splice} does). Each function names the
detail it uses and why; C{tests/test_twisted_private.py} pins each one, so
a Twisted release that changes any of them fails loudly there rather than
quietly here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.web.http import _ChunkedTransferDecoder

#: twisted.web's decoder of a chunked body (private), which
#: L{glance_tx.api.chunked.ChunkedDecoder} extends: its state machine, its
#: C{_buffer}, C{state}, C{length}, C{dataCallback} and C{finishCallback}.
ChunkedTransferDecoder = _ChunkedTransferDecoder

__all__ = [
    "ChunkedTransferDecoder",
    "body_transport",
    "client_gone",
    "decode_chunks_with",
    "request_line",
    "request_version",
    "response_connection",
    "set_read_size",
    "set_send_limit",
    "tcp_listen_address",
    "unsent_bytes",
    "widen_body_reads",
]


def request_line(channel: Any) -> tuple[bytes, bytes]:
    """
    The method and URI of the request whose headers C{channel} (an
    C{HTTPChannel}) has just parsed. At C{gotLength} time, before the body,
    they are only on the private C{_command} and C{_path}; the public
    C{Request.method} and C{uri} are set after the last body byte.
    """
    return channel._command, channel._path


def request_version(channel: Any) -> bytes:
    """The HTTP version of that request (private C{_version}, as above)."""
    version: bytes = channel._version
    return version


def client_gone(request: Any) -> bool:
    """
    Whether a C{twisted.web} request's connection was lost (private
    C{_disconnected}): there is no public flag, and finishing or writing
    to a gone request raises.
    """
    return bool(getattr(request, "_disconnected", False))


def decode_chunks_with(channel: Any, decoder: Callable[..., Any]) -> None:
    """
    Make C{channel} (an C{HTTPChannel} that has just read a request's
    head) decode a chunked body with C{decoder}, called as Twisted calls
    its C{_ChunkedTransferDecoder}: with the data and finish callbacks.
    HTTPChannel keeps the body's decoder in its private C{_transferDecoder},
    chosen while the headers are read; a body of any other kind keeps its own.
    """
    current = getattr(channel, "_transferDecoder", None)
    if type(current) is ChunkedTransferDecoder:
        channel._transferDecoder = decoder(current.dataCallback, current.finishCallback)


def set_read_size(transport: Any, size: int | None) -> None:
    """
    Make a TCP C{transport} read C{size} bytes per C{recv()}; C{None} gives
    it back the class default. C{twisted.internet.tcp.Connection} reads its
    C{bufferSize} (64 KiB), a class attribute meant to be overridable per
    instance. Anything without one (an in-memory test transport) is left
    as it is.
    """
    if transport is None or not isinstance(getattr(transport, "bufferSize", None), int):
        return
    if size is None:
        vars(transport).pop("bufferSize", None)
    else:
        transport.bufferSize = size


def set_send_limit(transport: Any, limit: int) -> None:
    """
    Let a transport send up to C{limit} bytes per C{send()}.
    C{twisted.internet.abstract.FileDescriptor} sends at most its class
    attribute C{SEND_LIMIT} (128 KiB) and asks its producer for more only
    once its buffer is empty.
    """
    if transport is not None and isinstance(getattr(transport, "SEND_LIMIT", None), int):
        transport.SEND_LIMIT = limit


def body_transport(consumer: Any) -> Any:
    """
    The connection under the consumer C{twisted.web} client gives a
    request's body producer: a private C{LengthEnforcingConsumer} (its
    C{_consumer}) for a body of known length, a C{ChunkedEncoder} (its
    C{transport}) otherwise. C{None} for anything else.
    """
    for name in ("_consumer", "transport"):
        inner = getattr(consumer, name, None)
        if inner is not None:
            return inner
    return None


def widen_body_reads(transport: Any, size: int) -> None:
    """
    Let the TCP connection under a client response body's C{transport}
    read at least C{size} bytes per C{recv()}. The body's transport
    (C{twisted.web._newclient.TransportProxyProducer}) holds the
    connection as the private C{_producer}; its C{bufferSize} is as in
    L{set_read_size}.
    """
    connection = getattr(transport, "_producer", None)
    if connection is not None and isinstance(getattr(connection, "bufferSize", None), int):
        connection.bufferSize = max(size, connection.bufferSize)


def response_connection(response: Any) -> Any:
    """
    The connection a C{twisted.web} client response's body comes on (for
    a plain TCP server a C{twisted.internet.tcp.Client}; for TLS the TLS
    protocol over it), or C{None}. A treq response wraps the agent's as
    its public C{original}; C{twisted.web._newclient.Response} keeps the
    body's C{TransportProxyProducer} as the private C{_transport}, and
    that holds the connection as its private C{_producer} (C{None} once
    the response's parser has let go of it).
    """
    response = getattr(response, "original", response)
    proxy = getattr(response, "_transport", None)
    return getattr(proxy, "_producer", None)


def unsent_bytes(transport: Any) -> int:
    """
    How many bytes written to a TCP C{transport} it has not yet handed to
    the kernel. C{twisted.internet.abstract.FileDescriptor} keeps them in
    its private C{dataBuffer} (from C{offset} on) and C{_tempDataBuffer}
    (C{_tempDataLen} bytes), and sends them only from C{doWrite}; there is
    no public way to ask. Bytes written to the socket around the transport
    must wait until this is 0, or they would overtake these.
    """
    pending: int = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    return pending


def tcp_listen_address(endpoint: Any) -> tuple[str, int, int, Any] | None:
    """
    Where a C{tcp:}, C{tcp6:} or C{ssl:} server endpoint (as
    C{serverFromString} makes them) would listen: its interface, port,
    backlog and TLS context factory (C{None} for plain TCP); C{None} for
    any other endpoint. C{TCP4ServerEndpoint}, C{TCP6ServerEndpoint} and
    C{SSL4ServerEndpoint} keep them as the private C{_interface},
    C{_port}, C{_backlog} and C{_sslContextFactory}, and the endpoint
    string's syntax (escapes, defaults) is Twisted's to parse. The workers'
    supervisor binds the sockets itself (C{SO_REUSEPORT}), so it needs them.
    """
    from twisted.internet.endpoints import (
        SSL4ServerEndpoint,
        TCP4ServerEndpoint,
        TCP6ServerEndpoint,
    )

    if isinstance(endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint)):
        return endpoint._interface, endpoint._port, endpoint._backlog, None
    if isinstance(endpoint, SSL4ServerEndpoint):
        return (
            endpoint._interface,
            endpoint._port,
            endpoint._backlog,
            endpoint._sslContextFactory,
        )
    return None
