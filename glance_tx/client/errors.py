"""
What can go wrong for a client, as exceptions a caller can catch by kind.

A refusal from the server becomes an L{HTTPError} subclass chosen by its
status, carrying the status and the server's own message. The message is
read from whichever shape the server sent: glance-tx's (and Keystone's)
C{{"error": {"code", "title", "message"}}}, webob's flat JSON
C{{"code", "title", "message"}}, or the text and HTML pages OpenStack
Glance answers with (webob's C{"404 Not Found\\n\\nNo image found..."}).

These are not L{glance_tx.errors.GlanceError}: those are refusals the
server raises to answer with; these are answers a client received, and a
server that also uses the client (a proxy, a replicator) must not answer
with one by accident.
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any

from twisted.web.http import stringToDatetime

__all__ = [
    "BadRequest",
    "ClientError",
    "Conflict",
    "ConnectionFailed",
    "CorruptDownload",
    "DownloadInterrupted",
    "Forbidden",
    "HTTPError",
    "NoImageData",
    "NotFound",
    "PreconditionFailed",
    "RequestEntityTooLarge",
    "ServiceUnavailable",
    "TimedOut",
    "Unauthorized",
    "error_for",
    "server_message",
]


class ClientError(Exception):
    """Base class of everything the client raises on purpose."""


class HTTPError(ClientError):
    """
    The server refused: C{status} is its HTTP status, C{message} what it
    said about why (or the status phrase when it said nothing readable).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {_phrase(status)}: {message}")
        self.status = status
        self.message = message


class BadRequest(HTTPError):
    """400: the request was malformed or a value was refused."""


class Unauthorized(HTTPError):
    """401: no token, or one the identity service does not accept."""


class Forbidden(HTTPError):
    """403: the caller may not do this (or the attribute is read-only)."""


class NotFound(HTTPError):
    """404: no such image, member or tag visible to the caller."""


class Conflict(HTTPError):
    """409: the image is not in a state that allows this."""


class PreconditionFailed(HTTPError):
    """
    412: an C{If-Match} did not hold; for a resumed download, the image's
    data is no longer the data the first bytes came from.
    """


class RequestEntityTooLarge(HTTPError):
    """413: more data than the server's C{image_size_cap} or quota allows."""


class ServiceUnavailable(HTTPError):
    """
    503: the server (or a store or registry behind it) is not answering;
    C{retry_after} is the wait in seconds it asked for, if it did.
    """

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(status, message)
        self.retry_after = retry_after


_BY_STATUS: dict[int, type[HTTPError]] = {
    HTTPStatus.BAD_REQUEST: BadRequest,
    HTTPStatus.UNAUTHORIZED: Unauthorized,
    HTTPStatus.FORBIDDEN: Forbidden,
    HTTPStatus.NOT_FOUND: NotFound,
    HTTPStatus.CONFLICT: Conflict,
    HTTPStatus.PRECONDITION_FAILED: PreconditionFailed,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: RequestEntityTooLarge,
    HTTPStatus.SERVICE_UNAVAILABLE: ServiceUnavailable,
}


class ConnectionFailed(ClientError):
    """
    No answer came: the server could not be reached (refused, no such
    host) or the connection was lost before the answer's head arrived.
    The message names the server's address, never a credential.
    """


class TimedOut(ConnectionFailed):
    """No answer's head came within the client's C{timeout}."""


class NoImageData(ClientError):
    """The image has no data to download (Glance answers 204)."""

    def __init__(self, image_id: str) -> None:
        super().__init__(f"Image {image_id} has no data")
        self.image_id = image_id


class CorruptDownload(ClientError):
    """
    The bytes received do not hash to what the image's metadata says
    (C{os_hash_value} under C{os_hash_algo}, or the md5 C{checksum}), or
    are not as many as its C{size}. Nothing was kept at a destination path.
    """

    def __init__(self, image_id: str, algorithm: str, expected: str, actual: str) -> None:
        super().__init__(
            f"Image {image_id}: data {algorithm} is {actual}, expected {expected}"
        )
        self.image_id = image_id
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual


class DownloadInterrupted(ClientError):
    """
    The connection dropped more often than the client resumes a download;
    C{received} bytes had arrived. Nothing was kept at a destination path.
    """

    def __init__(self, image_id: str, received: int, attempts: int, reason: str) -> None:
        super().__init__(
            f"Image {image_id}: download interrupted after {received} bytes "
            f"and {attempts} attempts ({reason})"
        )
        self.image_id = image_id
        self.received = received
        self.attempts = attempts


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _json_message(document: Any) -> str | None:
    if not isinstance(document, dict):
        return None
    inner = document.get("error")
    if isinstance(inner, dict) and isinstance(inner.get("message"), str):
        return str(inner["message"])
    if isinstance(document.get("message"), str):
        return str(document["message"])
    return None


def _text_message(status: int, text: str) -> str:
    """
    The message of a text or HTML page: tags gone, lines stripped, the
    status line and title webob repeats dropped.
    """
    text = re.sub(r"<[^>]*>", "\n", text)
    skip = {f"{status} {_phrase(status)}".lower(), _phrase(status).lower()}
    lines: list[str] = []
    for line in (part.strip() for part in text.splitlines()):
        if line and line.lower() not in skip and line not in lines:
            lines.append(line)
    return " ".join(lines)


def server_message(status: int, content_type: str | None, body: bytes) -> str:
    """What the server said in an error body, or the status phrase."""
    text = body.decode("utf-8", "replace").strip()
    if "json" in (content_type or "").lower() or text.startswith("{"):
        try:
            message = _json_message(json.loads(text))
        except ValueError:
            message = None
        if message:
            return message
    return _text_message(status, text) or _phrase(status)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """
    Seconds to wait from a C{Retry-After} value: delay-seconds or an HTTP
    date (RFC 9110 10.2.3), at C{now} (POSIX seconds).
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, stringToDatetime(value.encode("latin-1")) - now)
    except ValueError:
        return None


def error_for(
    status: int,
    body: bytes,
    content_type: str | None = None,
    retry_after: str | None = None,
    now: float = 0.0,
) -> HTTPError:
    """The typed error for a refusal with C{status} and C{body}."""
    message = server_message(status, content_type, body)
    cls = _BY_STATUS.get(status, HTTPError)
    if cls is ServiceUnavailable:
        return ServiceUnavailable(status, message, parse_retry_after(retry_after, now))
    return cls(status, message)
