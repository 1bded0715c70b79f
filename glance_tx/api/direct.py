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

A handler that is a coroutine is run to its first wait here, as
C{Deferred.fromCoroutine} would run it; most finish without one (an image
whose record the registry keeps fresh, L{glance_tx.registry.sql.fresh})
and are answered at once, with none of the Deferreds that would carry the
answer and the cancellation (about 12 us of a 200 us GET). One that waits
goes on under C{fromCoroutine} from there (L{_resumed}), in the same
C{contextvars} context as its first step.

L{glance_tx.api.root.RootDispatch} sends a request here only when it is
exactly a direct route's (its method and plain path segments); everything
else, including the same paths with other methods, still goes to Klein.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Generator
from contextvars import Context, copy_context
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
        context = copy_context()
        try:
            waiting = context.run(result.send, None)
        except StopIteration as done:
            _answer(request, done.value)
            return NOT_DONE_YET
        except Exception:
            _fail(request, Failure())
            return NOT_DONE_YET
        d = Deferred.fromCoroutine(_resumed(context, result, waiting))
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addCallbacks(partial(_answer, request), partial(_fail, request))
        return NOT_DONE_YET


def _resumed(
    context: Context, coroutine: Coroutine[Any, Any, bytes], waiting: Any
) -> Generator[Any, Any, bytes]:
    """
    The rest of C{coroutine}, which has yielded C{waiting} (the Deferred it
    awaits) from its first step: a generator that
    C{Deferred.fromCoroutine} steps as it would have stepped the coroutine
    (results sent, failures and cancellation thrown in), each step run in
    C{context}.
    """
    while True:
        try:
            result = yield waiting
        except GeneratorExit:
            coroutine.close()
            raise
        except BaseException as error:
            step: Callable[[Any], Any] = coroutine.throw
            result = error
        else:
            step = coroutine.send
        try:
            waiting = context.run(step, result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


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
