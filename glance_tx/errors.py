"""
Typed errors, each carrying the HTTP status it is answered with.

Library code raises these; the API layer maps them to a response in one
place (``glance_tx.api.errors``), so every refusal has the same JSON shape.
"""

from __future__ import annotations

import errno
from http import HTTPStatus


class GlanceError(Exception):
    """Base class: a refusal with a message meant for the client."""

    status: int = HTTPStatus.INTERNAL_SERVER_ERROR
    #: Seconds a client is told to wait before trying again (Retry-After).
    retry_after: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def title(self) -> str:
        return HTTPStatus(self.status).phrase


class BadRequest(GlanceError):
    status = HTTPStatus.BAD_REQUEST


class Unauthorized(GlanceError):
    """
    The caller is not known: no token, or one the identity service
    refuses. C{challenge} is the C{WWW-Authenticate} value that says where
    to get a token (Keystone's C{Keystone uri="..."}).
    """

    status = HTTPStatus.UNAUTHORIZED

    def __init__(self, message: str, challenge: str | None = None) -> None:
        super().__init__(message)
        self.challenge = challenge


class Forbidden(GlanceError):
    status = HTTPStatus.FORBIDDEN


class NotFound(GlanceError):
    status = HTTPStatus.NOT_FOUND


class MethodNotAllowed(GlanceError):
    status = HTTPStatus.METHOD_NOT_ALLOWED


class RequestTimeout(GlanceError):
    """The client took too long to send its request (L{glance_tx.api.deadlines})."""

    status = HTTPStatus.REQUEST_TIMEOUT


class Conflict(GlanceError):
    status = HTTPStatus.CONFLICT


class VersionConflict(Conflict):
    """
    The record is no longer at the version the caller read (another
    change landed in between): read it again and decide again.
    """


class LengthRequired(GlanceError):
    status = HTTPStatus.LENGTH_REQUIRED


class PreconditionFailed(GlanceError):
    status = HTTPStatus.PRECONDITION_FAILED


class RequestEntityTooLarge(GlanceError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class StorageFull(RequestEntityTooLarge):
    """
    The store has no room for the data (C{ENOSPC}, C{EDQUOT}, C{EFBIG}):
    a 413 with Glance's message, as glance_store's C{StorageFull}.
    """

    def __init__(
        self,
        message: str = (
            "Image storage media is full: "
            "There is not enough disk space on the image storage media."
        ),
    ) -> None:
        super().__init__(message)


class UnsupportedMediaType(GlanceError):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE


class InvalidImageData(UnsupportedMediaType):
    """
    Image data whose content contradicts its C{disk_format}, or that is not
    safe to boot (Glance's C{InvalidImageData}): 415 in v2, 400 in v1.
    """


class RangeNotSatisfiable(GlanceError):
    status = HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE


class ServiceUnavailable(GlanceError):
    """
    A service this one needs (the registry, its database, Keystone) is not
    answering.
    """

    status = HTTPStatus.SERVICE_UNAVAILABLE
    retry_after = 5


class Overloaded(ServiceUnavailable):
    """
    This node is at one of its limits (C{max_connections},
    C{max_concurrent_uploads}): another node, or this one a little later,
    will take the request.
    """

    retry_after = 2


class StoreError(GlanceError):
    """
    A store failed to read, write or delete; the client sees a 503. Most
    such failures pass (a dropped connection, a busy object store), so the
    client is told when to try again.
    """

    status = HTTPStatus.SERVICE_UNAVAILABLE
    retry_after = 5


#: The errnos that mean the store has no room (glance_store's StorageFull).
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def os_error(error: OSError, doing: str) -> GlanceError:
    """
    What a client is told of a store's L{OSError} while C{doing} something:
    L{StorageFull} when the media is full, else a L{StoreError} (503: a
    read-only or unreadable store is the operator's to mend, and the client
    may try again) with the error's C{strerror} but not the file names it
    may carry.
    """
    if error.errno in FULL_ERRNOS:
        return StorageFull()
    return StoreError(f"{doing}: {error.strerror or type(error).__name__}")
