"""
Request ids (C{x-openstack-request-id}), and the one an API node is working
for, so that what it asks the registry server carries the API request's id
and the registry's log line names it: one request can be followed across
nodes by grepping one id.

The id travels in a L{ContextVar}, not as an argument: the site sets it
while it handles a request, and every coroutine Twisted runs
(C{Deferred.fromCoroutine}) keeps the context it was started in, so the
registry calls and upload steps of that request see its id however many
callbacks later, and none of L{glance_tx.registry.interface.IRegistry}'s
methods (nor the code between the route and the registry) needs an extra
parameter. Work no request started (the purger, lease renewals) has none.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from contextvars import ContextVar

#: The header: sent on every API response, and by API nodes to the registry.
HEADER = b"x-openstack-request-id"

#: The form OpenStack gives request ids (oslo.context's global request id):
#: anything else a caller sends is ignored, so nothing odd reaches a log.
_FORM = re.compile(r"req-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

_current: ContextVar[str | None] = ContextVar("glance_tx_request_id", default=None)


#: Random bytes read from the kernel at a time: 256 request ids.
_RANDOM_BATCH = 16 * 256


class _RandomBytes:
    """
    16 random bytes at a time from one C{os.urandom} call in 256: a
    C{uuid4} per request was a C{getrandom} system call per request (5% of
    an image GET's CPU under wrk, py-spy). A forked child starts afresh, so
    no two processes hand out the same bytes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self._buffer = b""
        self._offset = _RANDOM_BATCH

    def take16(self) -> bytes:
        with self._lock:
            if self._offset >= len(self._buffer):
                self._buffer, self._offset = os.urandom(_RANDOM_BATCH), 0
            offset = self._offset
            self._offset = offset + 16
            return self._buffer[offset : offset + 16]


_random = _RandomBytes()
os.register_at_fork(after_in_child=_random.reset)


def new_request_id() -> str:
    """A new C{req-<uuid4>} id (random, version 4, RFC 4122's variant)."""
    h = _random.take16().hex()
    variant = "89ab"[int(h[16], 16) & 3]
    return f"req-{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"


def parse_request_id(values: Sequence[bytes] | None) -> str | None:
    """The one request id in a header's C{values}, or None if not exactly one valid id."""
    if not values or len(values) != 1:
        return None
    value = values[0].decode("latin-1").strip()
    return value if _FORM.fullmatch(value) else None


def current_request_id() -> str | None:
    """The id of the request the running code works for, if any."""
    return _current.get()


class working_for:  # lower case: used as the function it was, with working_for(id)
    """
    Run the block, and whatever coroutines it starts, for C{request_id}.
    A class rather than a C{@contextmanager} generator: every request
    enters one, and the generator's machinery cost four times as much.
    """

    __slots__ = ("_request_id", "_token")

    def __init__(self, request_id: str) -> None:
        self._request_id = request_id

    def __enter__(self) -> None:
        self._token = _current.set(self._request_id)

    def __exit__(self, *exc_info: object) -> None:
        _current.reset(self._token)
