"""Parsing of integer values in headers and query strings, for every API."""

from __future__ import annotations

from glance_tx.errors import BadRequest


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
