"""
The hottest requests answered without Klein: a route's own handler called
from a plain twisted.web leaf.

Compute nodes ask for an image's metadata on every boot, and load
balancers poll the health check. For those requests Klein's machinery --
werkzeug's URL map bound and matched per request, the Deferreds around the
handler, its error-handler chain -- cost as much CPU as the handler itself
(bench/metadata.py --in-process: 40% of a C{GET /versions}). L{DirectRoute}
runs the same handler and answers as Klein would: the bytes it returns, a
typed refusal through the same JSON error handler
(L{glance_tx.api.errors.handle_glance_error}), anything else through the
site's last resort, and the handler cancelled if the client goes away.

L{glance_tx.api.root.RootDispatch} sends a request here only when it is
exactly a direct route's (its method and plain path segments); everything
else, including the same paths with other methods, still goes to Klein.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from glance_tx import twisted_private
from glance_tx.api.errors import handle_glance_error
from glance_tx.errors import GlanceError

#: A route handler as the Klein apps define them: the request, then the
#: path's arguments; it returns the body.
Handler = Callable[..., Coroutine[Any, Any, bytes] | bytes]


class DirectRoute(Resource):
    """A leaf that answers with C{handler(request, *arguments)}."""

    isLeaf = True

    def __init__(self, handler: Handler, *arguments: str) -> None:
        super().__init__()
        self._handler = handler
        self._arguments = arguments

    def render(self, request: Any) -> Any:
        try:
            result = self._handler(request, *self._arguments)
        except Exception:
            result = _raised(Failure())
        if isinstance(result, bytes):
            return result
        d = Deferred.fromCoroutine(result)
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addCallbacks(partial(_answer, request), partial(_fail, request))
        return NOT_DONE_YET


async def _raised(failure: Failure) -> bytes:
    failure.raiseException()
    raise AssertionError("unreachable")  # pragma: no cover


def _answer(request: Any, body: bytes) -> None:
    if request.finished or twisted_private.client_gone(request):
        return
    request.write(body)
    request.finish()


def _fail(request: Any, failure: Failure) -> None:
    """Answer C{failure} as the Klein apps answer it."""
    if request.finished or twisted_private.client_gone(request):
        return
    if failure.check(GlanceError):
        _answer(request, handle_glance_error(request, failure))
    else:
        request.processingFailed(failure)
