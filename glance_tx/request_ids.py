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

import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

#: The header: sent on every API response, and by API nodes to the registry.
HEADER = b"x-openstack-request-id"

#: The form OpenStack gives request ids (oslo.context's global request id):
#: anything else a caller sends is ignored, so nothing odd reaches a log.
_FORM = re.compile(r"req-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

_current: ContextVar[str | None] = ContextVar("glance_tx_request_id", default=None)


def new_request_id() -> str:
    return "req-" + str(uuid.uuid4())


def parse_request_id(values: Sequence[bytes] | None) -> str | None:
    """The one request id in a header's C{values}, or None if not exactly one valid id."""
    if not values or len(values) != 1:
        return None
    value = values[0].decode("latin-1").strip()
    return value if _FORM.fullmatch(value) else None


def current_request_id() -> str | None:
    """The id of the request the running code works for, if any."""
    return _current.get()


@contextmanager
def working_for(request_id: str) -> Iterator[None]:
    """Run the block, and whatever coroutines it starts, for C{request_id}."""
    token = _current.set(request_id)
    try:
        yield
    finally:
        _current.reset(token)
