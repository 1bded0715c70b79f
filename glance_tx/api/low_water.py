"""
Reading an upload's body a batch at a time: the socket's receive low-water
mark (C{SO_RCVLOWAT}).

The reactor reads a socket as soon as any byte of it is there. A client
slower than the server (any client across a real network, and a
rate-limited or paused one on loopback) then arrives in reads of whatever
came since the last one, 64 KiB from curl: sixteen rounds of the HTTP
parser and the upload pipeline per MiB where one would do. With the mark
at a batch, the kernel reports the socket readable only once that many
bytes wait (or the peer closes, or its buffer would otherwise stall the
sender): with curl held to 20 MiB/s, 1,700-1,800 reads per GiB of a
Content-Length upload instead of 5,800-13,000, and 1.52 reactor CPU s/GiB
instead of 2.08-2.88; at 60 MiB/s the server's CPU per GiB 0.92x
(bench/RESULTS.md, "Upload reads a batch at a time").

Only where the body's length is known (so the mark never waits for bytes
that will not come: L{glance_tx.api.site.StreamingRequest} keeps it at
most what is left of the body) and only on a plain TCP socket on Linux;
everywhere else nothing changes. Bytes that wait below the mark do not
reach the channel, so its body timeout asks L{release} before it calls a
client silent: a body that stops is cut off between one and two
C{client_socket_timeout} after its last byte was read (bytes that came
after it, below the mark, are read then and count as its last).
"""

from __future__ import annotations

import array
import fcntl
import socket
import sys
import termios
from typing import Any

__all__ = ["release", "wait_for"]

#: Whether this system's TCP honours the mark in poll and epoll (Linux).
SUPPORTED = sys.platform.startswith("linux") and hasattr(socket, "SO_RCVLOWAT")


def _tcp_socket(transport: Any) -> socket.socket | None:
    """The TCP socket under C{transport}, if it is a plain TCP transport."""
    get = getattr(transport, "getHandle", None)
    handle = get() if get is not None else None
    if (
        isinstance(handle, socket.socket)
        and handle.family in (socket.AF_INET, socket.AF_INET6)
        and handle.type == socket.SOCK_STREAM
    ):
        return handle
    return None  # TLS (the handle is OpenSSL's), UNIX sockets, test transports


def wait_for(transport: Any, size: int) -> bool:
    """
    Have C{transport}'s socket reported readable only once C{size} bytes
    wait (1: as soon as any does, the default). False, and nothing done,
    where there is no such socket or the system refuses.
    """
    sock = _tcp_socket(transport) if SUPPORTED else None
    if sock is None:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, max(1, size))
    except OSError:
        return False
    return True


def release(transport: Any) -> bool:
    """
    If bytes wait unread in C{transport}'s socket (held below a mark set by
    L{wait_for}), lower the mark to 1, so the reactor reads them at once,
    and say so: the client has not been silent.
    """
    sock = _tcp_socket(transport) if SUPPORTED else None
    if sock is None:
        return False
    waiting = array.array("i", [0])
    try:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, waiting)
    except OSError:
        return False
    if waiting[0] <= 0:
        return False
    return wait_for(transport, 1)
