"""Parsing of values in headers, query strings and JSON bodies, for every API."""

from __future__ import annotations

import json
from typing import Any

from twisted.web.iweb import IRequest

from glance_tx.errors import BadRequest, RequestEntityTooLarge

#: Deepest nesting of arrays and objects a request body may have. Image
#: metadata is flat and a patch value is at most a location with its metadata
#: dict; the limit keeps a hostile C{[[[[...]]]]} from costing more than
#: one walk.
MAX_JSON_DEPTH = 32


def parse_int(name: str, value: str, maximum: int | None = None) -> int:
    """
    A non-negative integer (at most C{maximum}), or a 400 that names the
    parameter.
    """
    try:
        number = int(value.strip())
    except ValueError:
        raise BadRequest(f"{name} must be an integer, not {value!r}") from None
    if number < 0:
        raise BadRequest(f"{name} cannot be negative")
    if maximum is not None and number > maximum:
        raise BadRequest(f"{name} must be between 0 and {maximum}")
    return number


def parse_json(data: bytes, what: str = "request body") -> Any:
    """
    A JSON document, or a 400 that says what is wrong with C{what}: not
    UTF-8, not JSON, or nested deeper than L{MAX_JSON_DEPTH}.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(f"{what[0].upper()}{what[1:]} is not UTF-8.") from None
    try:
        document = json.loads(text)
    except RecursionError:
        # The C decoder gives up at the interpreter's recursion limit.
        document = None
        too_deep = True
    except ValueError:
        raise BadRequest(f"Malformed JSON in {what}.") from None
    else:
        too_deep = _depth_exceeds(document, MAX_JSON_DEPTH)
    if too_deep:
        raise BadRequest(
            f"JSON in {what} is nested deeper than {MAX_JSON_DEPTH} levels."
        )
    return document


def _depth_exceeds(document: Any, limit: int) -> bool:
    """Whether C{document} nests arrays and objects more than C{limit} deep."""
    level = [document]
    for _ in range(limit + 1):
        children: list[Any] = []
        for value in level:
            if isinstance(value, dict):
                children.extend(value.values())
            elif isinstance(value, list):
                children.extend(value)
        if not children:
            return False
        level = children
    return True


#: What a JSON request body may weigh.
MAX_JSON_BODY = 1 << 20


def json_answer(request: IRequest, document: Any, status: int = 200) -> bytes:
    """C{document} as the JSON response, with C{status}."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(document).encode("utf-8")


def request_body(request: IRequest) -> bytes:
    """The request body, up to L{MAX_JSON_BODY} (else 413)."""
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data: bytes = content.read(MAX_JSON_BODY + 1)
    if len(data) > MAX_JSON_BODY:
        raise RequestEntityTooLarge(f"Request body is larger than {MAX_JSON_BODY} bytes")
    return data


def read_json(request: IRequest) -> Any:
    """The body as JSON; an empty one is Glance's 400."""
    data = request_body(request)
    if not data.strip():
        raise BadRequest("Body expected in request.")
    return parse_json(data)


def read_object(request: IRequest) -> dict[str, Any]:
    """The body as a JSON object (else 400)."""
    document = read_json(request)
    if not isinstance(document, dict):
        raise BadRequest("Request body must be a JSON object.")
    return document
