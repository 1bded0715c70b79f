"""
The one shape every refusal takes on the wire:

    {"error": {"code": 404, "title": "Not Found", "message": "..."}}

An unexpected exception is the same shape too: a 500 that carries the
request id and nothing of the exception, whose traceback goes to the log
under that id (L{unexpected_error}). A failure after the response has begun
(a store read that breaks mid-download) cannot change a status already sent;
the connection is dropped instead, so the client sees a truncated body, never
a body with an error document glued on (L{render_error}).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException

from glance_tx.errors import GlanceError, Unauthorized

log = Logger()


def error_document(status: int, message: str) -> bytes:
    return json.dumps(
        {
            "error": {
                "code": status,
                "title": HTTPStatus(status).phrase,
                "message": message,
            }
        }
    ).encode("utf-8")


def render_error(request: IRequest, status: int, message: str) -> bytes:
    """
    Set the status and content type on C{request}; return the body. If the
    response has begun, drop the connection and return nothing.
    """
    if getattr(request, "startedWriting", False):
        drop_connection(request)
        return b""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return error_document(status, message)


def drop_connection(request: IRequest) -> None:
    """
    Abort C{request}'s connection: its response has begun and cannot be
    completed truthfully. The status is set for the request's log line only.
    """
    request.setResponseCode(500)
    channel: Any = getattr(request, "channel", None)
    transport = channel.transport if channel is not None else None
    if transport is not None:
        transport.abortConnection()


def unexpected_error(request: IRequest, failure: Failure) -> GlanceError:
    """
    Log C{failure} with its traceback under the request's id, and return what
    the client is told instead: a 500 naming that id and nothing of the
    failure (whose text may name paths, hosts or worse).
    """
    request_id = getattr(request, "request_id", None) or "-"
    log.failure(
        "Unexpected error answering {method} {path} (request {request_id})",
        failure,
        method=(request.method or b"-").decode("ascii", "replace"),
        path=(request.path or b"-").decode("utf-8", "replace"),
        request_id=request_id,
    )
    return GlanceError(
        "The server failed to answer this request; its log has the details "
        f"under request id {request_id}."
    )


def handle_unexpected_error(request: IRequest, failure: Failure) -> bytes:
    """The last resort for any exception no other handler took."""
    error = unexpected_error(request, failure)
    return render_error(request, error.status, error.message)


def json_errors(app: Klein) -> Klein:
    """
    Give a Klein app the JSON error handlers: typed errors and routing
    misses (404, 405) answer in one shape. Returns the app, for use as
    C{app = json_errors(Klein())} in a class body.
    """
    app.handle_errors(GlanceError)(lambda _app, request, failure: handle_glance_error(request, failure))
    app.handle_errors(HTTPException)(lambda _app, request, failure: handle_routing_error(request, failure))
    return app


def handle_glance_error(request: IRequest, failure: Failure) -> bytes:
    """Klein error handler for L{GlanceError}."""
    error = failure.value
    assert isinstance(error, GlanceError)
    if error.retry_after is not None:
        request.setHeader(b"Retry-After", str(error.retry_after).encode("ascii"))
    if isinstance(error, Unauthorized) and error.challenge is not None:
        request.setHeader(b"WWW-Authenticate", error.challenge.encode("utf-8"))
    return render_error(request, error.status, error.message)


def handle_routing_error(request: IRequest, failure: Failure) -> bytes:
    """Klein error handler for routing misses (404, 405) in our JSON shape."""
    error = failure.value
    assert isinstance(error, HTTPException)
    status = error.code or 500
    if status == HTTPStatus.NOT_FOUND:
        message = f"No such resource: {request.path.decode('utf-8', 'replace')}"
    elif status == HTTPStatus.METHOD_NOT_ALLOWED:
        allowed = getattr(error, "valid_methods", None) or []
        if allowed:
            request.setHeader(b"Allow", ", ".join(allowed).encode("ascii"))
        message = (
            f"Method {request.method.decode('ascii', 'replace')} is not allowed "
            f"on {request.path.decode('utf-8', 'replace')}"
        )
    else:
        message = error.description or HTTPStatus(status).phrase
    return render_error(request, status, message)
